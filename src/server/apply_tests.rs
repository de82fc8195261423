//! Applying diffs to a running server state: the order, what each change does to targets,
//! units and listeners, and that one failure does not stop the rest.

use super::*;
use crate::config::diff::diff;
use crate::config::{self, Config};
use crate::scsi::{Nexus, Sense};
use crate::server::Server;

const A: &str = "iqn.2026-11.org.example:a";
const B: &str = "iqn.2026-11.org.example:b";
const C: &str = "iqn.2026-11.org.example:c";

/// A configuration with its data in `dir`; unless `body` names portals, one on an ephemeral
/// loopback port (never the default 3260, which something else may hold).
fn config_in(dir: &std::path::Path, body: &str) -> Config {
    let portals = if body.contains("portals") {
        ""
    } else {
        "portals = [\"127.0.0.1:0\"]\n"
    };
    let text = format!(
        "[server]\ndata_dir = \"{}\"\nio_engine = \"threads\"\n{portals}{body}",
        dir.display()
    );
    config::parse(&text, "test").unwrap()
}

fn target(name: &str, extra: &str, luns: &[(u64, &str, &str)]) -> String {
    let mut text = format!("[[target]]\nname = \"{name}\"\n{extra}\n");
    for (lun, file, size) in luns {
        text += &format!("[[target.lun]]\nlun = {lun}\nfile = \"{file}\"\nsize = \"{size}\"\n");
    }
    text
}

/// The server state after applying `config` to an empty one.
async fn started(config: &Config) -> (Running, ApplyReport) {
    Running::start(config).await.unwrap()
}

fn names(running: &Running) -> Vec<String> {
    let targets = running.service().targets.list();
    targets.iter().map(|t| t.name.clone()).collect()
}

#[tokio::test]
async fn startup_is_the_diff_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "portals = [\"127.0.0.1:0\"]\n{}{}",
        target(A, "", &[(0, "a0.img", "1MiB"), (1, "a1.img", "1MiB")]),
        target(B, "", &[(0, "b0.img", "1MiB")])
    );
    let (running, report) = started(&config_in(dir.path(), &body)).await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(names(&running), [A, B]);
    let a = running.service().targets.get(A).unwrap();
    assert_eq!(a.device.luns().len(), 2);
    assert_eq!(running.local_addrs().len(), 1);
    assert_ne!(running.local_addrs()[0].port(), 0);
    // Listeners come last.
    assert!(
        report
            .done
            .last()
            .unwrap()
            .starts_with("listening on 127.0.0.1:")
    );
}

#[tokio::test]
async fn a_lun_that_cannot_open_is_reported_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[[target.lun]]\nlun = 7\nblock = \"/nonexistent/keel-test-device\"\n{}",
        target(A, "", &[(0, "a0.img", "1MiB")]),
        target(B, "", &[(0, "b0.img", "1MiB")])
    );
    let (running, report) = started(&config_in(dir.path(), &body)).await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(
        report.failed[0].starts_with(&format!(
            "target {A} LUN 7: cannot open /nonexistent/keel-test-device"
        )),
        "{report:?}"
    );
    assert_eq!(names(&running), [A, B]);
    let luns: Vec<u64> = running
        .service()
        .targets
        .get(A)
        .unwrap()
        .device
        .luns()
        .iter()
        .map(|l| l.lun())
        .collect();
    assert_eq!(luns, [0]);
    let failures: Vec<_> = running.lun_failures().collect();
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].0, failures[0].1), (A, 7));
    assert!(failures[0].2.contains("cannot open"));
}

#[tokio::test]
async fn a_server_that_cannot_open_a_lun_does_not_start_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "portals = [\"127.0.0.1:0\"]\n{}[[target.lun]]\nlun = 7\nblock = \"/nonexistent/keel-test-device\"\n",
        target(A, "", &[(0, "a0.img", "1MiB")]),
    );
    let Err(err) = Server::bind(&config_in(dir.path(), &body)).await else {
        panic!("a missing block device must stop the start");
    };
    assert!(
        format!("{err:#}").starts_with(&format!(
            "target {A} LUN 7: cannot open /nonexistent/keel-test-device"
        )),
        "{err:#}"
    );
}

#[tokio::test]
async fn a_reload_removes_changes_grows_and_adds_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_in(
        dir.path(),
        &format!(
            "{}{}{}",
            target(A, "", &[(0, "a0.img", "1MiB"), (1, "a1.img", "1MiB")]),
            target(B, "", &[(0, "b0.img", "1MiB")]),
            target(C, "", &[(0, "c0.img", "1MiB")]),
        ),
    );
    let (mut running, _) = started(&before).await;
    let a_before = running.service().targets.get(A).unwrap();
    let a0 = a_before.device.lun(0).unwrap();
    let c0 = running
        .service()
        .targets
        .get(C)
        .unwrap()
        .device
        .lun(0)
        .unwrap();
    let nexus = Nexus::for_test("iqn.i");
    assert_eq!(
        a0.unit_attentions().take(&nexus),
        Some(Sense::power_on_reset())
    );
    assert_eq!(
        c0.unit_attentions().take(&nexus),
        Some(Sense::power_on_reset())
    );

    // B removed, D added, A's allow list changed and its LUN 1 removed, C grown.
    let d = "iqn.2026-11.org.example:d";
    let after = config_in(
        dir.path(),
        &format!(
            "{}{}{}",
            target(
                A,
                "allowed_initiators = [\"iqn.i\"]",
                &[(0, "a0.img", "1MiB")]
            ),
            target(C, "", &[(0, "c0.img", "2MiB")]),
            target(d, "", &[(0, "d0.img", "1MiB")]),
        ),
    );
    let report = running.apply(&diff(&before, &after)).await;
    assert!(report.failed.is_empty(), "{report:?}");
    let order: Vec<&str> = report
        .done
        .iter()
        .map(|l| l.split(" (").next().unwrap_or(l))
        .collect();
    assert_eq!(
        order,
        [
            &format!("removed target {B}") as &str,
            &format!("removed target {A} LUN 1"),
            &format!("resized target {C} LUN 0 to 4096 blocks of 512"),
            &format!("changed access of target {A}"),
            &format!("added target {d} LUN 0"),
            &format!("added target {d}"),
        ]
    );
    assert_eq!(names(&running), [A, C, d]);

    // A: a new Target on the same device; sessions that hold the old one keep it.
    let a_after = running.service().targets.get(A).unwrap();
    assert!(Arc::ptr_eq(&a_before.device, &a_after.device));
    assert!(!Arc::ptr_eq(&a_before, &a_after));
    assert!(a_after.allowed.permits("iqn.i") && !a_after.allowed.permits("iqn.other"));
    assert!(a_before.allowed.permits("iqn.other"));
    assert_eq!(
        a0.unit_attentions().take(&nexus),
        Some(Sense::reported_luns_changed())
    );
    // C: grown in place, and every nexus is told.
    assert_eq!(c0.capacity_blocks(), 4096);
    assert_eq!(
        c0.unit_attentions().take(&nexus),
        Some(Sense::capacity_changed())
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("c0.img")).unwrap().len(),
        2 << 20
    );
    // B's data is never destroyed.
    assert!(dir.path().join("b0.img").exists());
}

#[tokio::test]
async fn removals_forget_the_metrics_of_what_was_removed() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_in(
        dir.path(),
        &format!(
            "{}{}",
            target(A, "", &[(0, "a0.img", "1MiB"), (1, "a1.img", "1MiB")]),
            target(B, "", &[(0, "b0.img", "1MiB")])
        ),
    );
    let (mut running, _) = started(&before).await;
    let metrics = &running.service().metrics;
    for (name, lun) in [(A, 0), (A, 1), (B, 0)] {
        let mut connection = metrics.connection(name);
        connection.record(lun, crate::scsi::CommandClass::Write, 512, 1);
    }
    metrics.count_login(B, 0);
    let after = config_in(dir.path(), &target(A, "", &[(0, "a0.img", "1MiB")]));
    let report = running.apply(&diff(&before, &after)).await;
    assert!(report.failed.is_empty(), "{report:?}");
    let metrics = &running.service().metrics;
    let counted: Vec<_> = metrics.lun_totals().into_keys().collect();
    assert_eq!(counted, [(A.to_owned(), 0)]);
    assert!(metrics.logins().is_empty());
}

#[tokio::test]
async fn shrinking_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_in(dir.path(), &target(A, "", &[(0, "a0.img", "2MiB")]));
    let (mut running, _) = started(&before).await;
    let after = config_in(dir.path(), &target(A, "", &[(0, "a0.img", "1MiB")]));
    let report = running.apply(&diff(&before, &after)).await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].contains("shrinking"), "{report:?}");
    let a0 = running
        .service()
        .targets
        .get(A)
        .unwrap()
        .device
        .lun(0)
        .unwrap();
    assert_eq!(a0.capacity_blocks(), 4096);
}

#[tokio::test]
async fn portals_close_and_open() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_in(dir.path(), "portals = [\"127.0.0.1:0\"]\n");
    let (mut running, _) = started(&before).await;
    let first = running.local_addrs()[0];
    let after = config_in(dir.path(), "portals = [\"127.0.2.1:0\"]\n");
    let report = running.apply(&diff(&before, &after)).await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.done[0], "closed portal 127.0.0.1:0");
    let now = running.local_addrs();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].ip().to_string(), "127.0.2.1");
    // The closed portal's port is free again.
    drop(tokio::net::TcpListener::bind(first).await.unwrap());
}

#[tokio::test]
async fn a_retry_grows_units_smaller_than_configured_and_leaves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let small = config_in(
        dir.path(),
        &target(A, "", &[(0, "a0.img", "1MiB"), (1, "a1.img", "1MiB")]),
    );
    let (mut running, _) = started(&small).await;
    let mut nothing = diff(&small, &small);
    running.retry(&small, &mut nothing);
    assert_eq!(nothing, ConfigDiff::default());

    // As after a grow that failed: the configuration says 2 MiB, the unit is 1 MiB.
    let grown = config_in(
        dir.path(),
        &target(A, "", &[(0, "a0.img", "2MiB"), (1, "a1.img", "1MiB")]),
    );
    let mut retried = ConfigDiff::default();
    running.retry(&grown, &mut retried);
    assert_eq!(retried.targets_changed.len(), 1);
    let resized: Vec<u64> = retried.targets_changed[0]
        .luns_resized
        .iter()
        .map(|l| l.lun)
        .collect();
    assert_eq!(resized, [0]);
    let report = running.apply(&retried).await;
    assert!(report.failed.is_empty(), "{report:?}");
    let a = running.service().targets.get(A).unwrap();
    assert_eq!(a.device.lun(0).unwrap().capacity_blocks(), (2 << 20) / 512);
    let mut after = ConfigDiff::default();
    running.retry(&grown, &mut after);
    assert_eq!(after, ConfigDiff::default());
}

#[tokio::test]
async fn a_lun_re_added_waits_for_its_removed_unit_to_retire() {
    let dir = tempfile::tempdir().unwrap();
    let before = config_in(dir.path(), &target(A, "", &[(0, "a0.img", "1MiB")]));
    // The same LUN number on another file: removed and added in one apply.
    let after = config_in(dir.path(), &target(A, "", &[(0, "a0b.img", "1MiB")]));
    let (running, _) = started(&before).await;
    let mut running = running.with_same_unit_wait(Duration::from_millis(300));
    let old = running
        .service()
        .targets
        .get(A)
        .unwrap()
        .device
        .lun(0)
        .unwrap();
    // A command still running on the old unit (an atomic write, say).
    let in_flight = old.task_set().join(
        Arc::new(Nexus::for_test("iqn.i")),
        crate::scsi::TaskFate::new(),
        CancellationToken::new(),
    );

    let report = running.apply(&diff(&before, &after)).await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].contains("still"), "{report:?}");
    let device = running.service().targets.get(A).unwrap().device.clone();
    assert!(device.lun(0).is_none());
    assert_eq!(running.lun_failures().count(), 1);

    // Once the old unit has drained and flushed, a reload's retry adds the new one.
    drop(in_flight);
    let mut retried = ConfigDiff::default();
    for _ in 0..100 {
        retried = ConfigDiff::default();
        running.retry(&after, &mut retried);
        let report = running.apply(&retried).await;
        if report.failed.is_empty() {
            break;
        }
    }
    assert!(device.lun(0).is_some(), "{retried:?}");
    assert_eq!(running.lun_failures().count(), 0);
}
