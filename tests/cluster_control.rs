//! The control commands the CTDB event script runs (issue 14), against a real `keel serve`
//! through the CLI: `keel health` (monitor), `keel session close --portal IP` (releaseip)
//! and `keel reservations reload` (takeip).

mod common;

use std::process::{Command, Output};

use common::{KeelProcess, honest_session_at, still_serves};

fn cli(keel: &KeelProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--socket")
        .arg(keel.dir.path().join("keel.sock"))
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_when_a_lun_backing_is_gone() {
    let keel = std::sync::Arc::new(KeelProcess::start("4MiB", "").await);
    let k = keel.clone();
    let out = blocking(move || cli(&k, &["health"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("healthy"), "{}", text(&out));

    std::fs::remove_file(keel.dir.path().join("disk0.img")).unwrap();
    let k = keel.clone();
    let out = blocking(move || cli(&k, &["health", "--json"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    let problems = report["problems"].to_string();
    assert!(
        problems.contains("disk0.img") && problems.contains("gone"),
        "{problems}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_fails_when_keel_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--socket")
        .arg(dir.path().join("none.sock"))
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_by_portal_ip_ends_exactly_the_sessions_on_that_ip() {
    let keel = std::sync::Arc::new(KeelProcess::start("4MiB", "").await);
    let mut session = honest_session_at(keel.addr, 1).await;

    // Another IP, or another port of this IP: nobody.
    for portal in ["127.0.0.2", "127.0.0.1:1"] {
        let k = keel.clone();
        let out =
            blocking(move || cli(&k, &["session", "close", "--portal", portal, "--json"])).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("\"sessions\": 0"),
            "{portal}: {}",
            text(&out)
        );
    }
    still_serves(&mut session, 1).await;

    let k = keel.clone();
    let out =
        blocking(move || cli(&k, &["session", "close", "--portal", "127.0.0.1", "--json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"sessions\": 1"), "{}", text(&out));
    session.expect_closed().await;

    // And a fresh login is served again at once.
    let mut again = honest_session_at(keel.addr, 1).await;
    still_serves(&mut again, 2).await;

    let k = keel.clone();
    let out = blocking(move || cli(&k, &["session", "close", "--portal", "not-an-ip"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_reservations_without_a_cluster_reloads_nothing() {
    let keel = std::sync::Arc::new(KeelProcess::start("4MiB", "").await);
    let k = keel.clone();
    let out = blocking(move || cli(&k, &["reservations", "reload", "--json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"units\": 0"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_move_asks_sessions_to_log_out_and_redirects_their_next_login() {
    use keel::wire::Reply;
    let keel = std::sync::Arc::new(KeelProcess::start("4MiB", "").await);
    let mut session = honest_session_at(keel.addr, 1).await;

    let k = keel.clone();
    let out = blocking(move || {
        cli(
            &k,
            &[
                "session",
                "logout",
                "--portal",
                "127.0.0.1",
                "--redirect",
                "127.0.0.2:3260,1",
                "--json",
            ],
        )
    })
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("\"sessions\": 1"), "{}", text(&out));
    match session.recv().await {
        Some(Reply::Async(m)) => assert_eq!(m.event, 1, "logout requested"),
        other => panic!("expected an Async Message, got {other:?}"),
    }

    // The next login on that address is sent to the new one (0x0101 with TargetAddress).
    let mut again = common::Initiator::connect(keel.addr).await;
    let name = again.name.clone();
    let r = again
        .login_step(
            0,
            1,
            true,
            &[
                ("InitiatorName", &name),
                ("AuthMethod", "None"),
                ("TargetName", common::TARGET),
            ],
        )
        .await;
    assert_eq!((r.status_class, r.status_detail), (1, 1));
    let body = String::from_utf8_lossy(&r.data).to_string();
    assert!(body.contains("TargetAddress=127.0.0.2:3260,1"), "{body:?}");

    // A redirect needs the address it applies to, and a well-formed destination.
    for args in [
        &[
            "session",
            "logout",
            "--target",
            common::TARGET,
            "--redirect",
            "127.0.0.2:3260",
        ][..],
        &[
            "session",
            "logout",
            "--portal",
            "127.0.0.1",
            "--redirect",
            "127.0.0.2:0",
        ][..],
    ] {
        let k = keel.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let out = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&k, &args)
        })
        .await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
}
