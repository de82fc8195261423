//! The ZFS backend against a stand-in `zfs`: a small shell script, written into a temp dir
//! by each test, that records its arguments and answers each call from canned files (by
//! call number). Real processes, no real ZFS.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::provision::settings::OnRemove;

const STUB: &str = r#"#!/bin/sh
# Stand-in for zfs: call N records its arguments in argv.N (one per line) and answers with
# stdout.N, stderr.N and status.N; kill.N makes it die by SIGKILL, sleep.N makes it hang.
dir=$(dirname "$0")
n=$(( $(cat "$dir/calls" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$dir/calls"
: > "$dir/argv.$n"
for arg in "$@"; do printf '%s\n' "$arg" >> "$dir/argv.$n"; done
if [ "$1" = program ] && [ -f "$3" ]; then cp "$3" "$dir/script.$n"; fi
if [ -f "$dir/stdout.$n" ]; then cat "$dir/stdout.$n"; fi
if [ -f "$dir/stderr.$n" ]; then cat "$dir/stderr.$n" >&2; fi
if [ -f "$dir/kill.$n" ]; then kill -9 $$; fi
if [ -f "$dir/sleep.$n" ]; then exec sleep "$(cat "$dir/sleep.$n")"; fi
exit "$(cat "$dir/status.$n" 2>/dev/null || echo 0)"
"#;

const LIST_23: &[u8] = include_bytes!("../../../tests/data/zfs/list-volumes-2.3.txt");
const GET_23: &[u8] = include_bytes!("../../../tests/data/zfs/get-snapshot-2.3.txt");

struct Stub {
    dir: tempfile::TempDir,
}

impl Stub {
    fn new() -> Stub {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("zfs"), STUB).unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        Stub { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn settings(&self) -> PoolSettings {
        PoolSettings {
            name: "tank".into(),
            kind: PoolKind::Zfs {
                parent: "tank/keel".into(),
                // Run through sh, like a wrapper prefix ("sudo -n zfs"); also never execs a
                // file just written (ETXTBSY when another test thread forks meanwhile).
                command: vec!["/bin/sh".into(), self.path("zfs").to_string_lossy().into()],
                device_root: self.path("dev"),
            },
            owner: "keel".into(),
            device_wait: Duration::from_secs(30),
        }
    }

    fn backend(&self) -> ZfsBackend {
        ZfsBackend::new(&self.settings())
            .unwrap()
            .with_script_dir(self.path("scripts"))
    }

    fn answer(&self, call: usize, stdout: &[u8], stderr: &str, status: i32) {
        std::fs::write(self.path(&format!("stdout.{call}")), stdout).unwrap();
        std::fs::write(self.path(&format!("stderr.{call}")), stderr).unwrap();
        std::fs::write(self.path(&format!("status.{call}")), status.to_string()).unwrap();
    }

    fn fail(&self, call: usize, stderr: &str) {
        self.answer(call, b"", stderr, 1);
    }

    fn kill(&self, call: usize) {
        std::fs::write(self.path(&format!("kill.{call}")), "").unwrap();
    }

    fn hang(&self, call: usize) {
        std::fs::write(self.path(&format!("sleep.{call}")), "30").unwrap();
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.path("calls"))
            .map(|n| n.trim().parse().unwrap())
            .unwrap_or(0)
    }

    fn argv(&self, call: usize) -> Vec<String> {
        std::fs::read_to_string(self.path(&format!("argv.{call}")))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }
}

fn spec(name: &str, size: u64, clone_of: Option<&str>) -> VolumeSpec {
    VolumeSpec {
        pool: "tank".into(),
        name: name.into(),
        size,
        clone_of: clone_of.map(String::from),
        volblocksize: None,
        sparse: true,
        on_remove: OnRemove::Destroy,
        lun_tag: format!("iqn.2026-01.org.example:{name} LUN 0 naa.6001405a1b2c3d4e"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn new_checks_its_settings() {
    let stub = Stub::new();
    let backend = stub.backend();
    assert_eq!(backend.describe(), "zfs tank/keel");
    assert_eq!(backend.parent(), "tank/keel");
    assert_eq!(
        backend.device_path("vm 01"),
        stub.path("dev").join("tank/keel/vm 01")
    );

    let mut files = stub.settings();
    files.kind = PoolKind::Files { dir: "/srv".into() };
    assert!(
        matches!(ZfsBackend::new(&files), Err(BackendError::Failed(m)) if m.contains("not of kind zfs"))
    );
    for (parent, command) in [
        ("tank//x", vec!["zfs".to_string()]),
        ("tank", vec![]),
        ("tank", vec![String::new()]),
    ] {
        let mut settings = stub.settings();
        settings.kind = PoolKind::Zfs {
            parent: parent.into(),
            command,
            device_root: "/dev/zvol".into(),
        };
        assert!(ZfsBackend::new(&settings).is_err(), "{parent}");
    }
}

#[tokio::test]
async fn list_runs_one_call_and_parses_the_capture() {
    let stub = Stub::new();
    stub.answer(1, LIST_23, "", 0);
    let observed = stub.backend().list().await.unwrap();
    assert_eq!(stub.calls(), 1);
    assert_eq!(
        stub.argv(1),
        [
            "list",
            "-H",
            "-p",
            "-o",
            "name,type,volsize,volblocksize,origin,keel:owner,keel:lun",
            "-t",
            "volume,snapshot",
            "-r",
            "tank/keel"
        ]
    );
    assert_eq!(observed.volumes.len(), 6);
    assert_eq!(
        observed.volumes["vm 01"].origin.as_deref(),
        Some("tank/keel/golden@v1")
    );
}

#[tokio::test]
async fn list_of_a_parent_not_yet_made_is_empty() {
    let stub = Stub::new();
    stub.fail(1, "cannot open 'tank/keel': dataset does not exist\n");
    assert_eq!(stub.backend().list().await.unwrap(), Observed::default());
}

#[tokio::test]
async fn list_failures_are_classified() {
    let stub = Stub::new();
    stub.answer(1, b"tank/keel/a\tvolume\t1\n", "", 0);
    stub.fail(
        2,
        "cannot open 'tank/keel': pool I/O is currently suspended\n",
    );
    stub.kill(3);
    stub.answer(4, b"tank/keel/a\tvolume\t1\t2\t-\t-\t-", "", 0);
    let backend = stub.backend();
    let err = backend.list().await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unknown(m) if m.contains("line 1")),
        "{err:?}"
    );
    let err = backend.list().await.unwrap_err();
    assert!(matches!(err, BackendError::Busy(_)), "{err:?}");
    let err = backend.list().await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unknown(m) if m.contains("signal 9")),
        "{err:?}"
    );
    let err = backend.list().await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Unknown(m) if m.contains("newline")),
        "{err:?}"
    );
}

#[tokio::test]
async fn create_sets_size_block_size_and_tags_in_one_call() {
    let stub = Stub::new();
    let backend = stub.backend();
    let mut thick = spec("group/vm 01", 1 << 30, None);
    thick.sparse = false;
    thick.volblocksize = Some(65536);
    backend.create(&thick, "keel").await.unwrap();
    assert_eq!(stub.calls(), 1);
    assert_eq!(
        stub.argv(1),
        [
            "create",
            "-p",
            "-V",
            "1073741824",
            "-b",
            "65536",
            "-o",
            "keel:owner=keel",
            "-o",
            "keel:lun=iqn.2026-01.org.example:group/vm 01 LUN 0 naa.6001405a1b2c3d4e",
            "tank/keel/group/vm 01"
        ]
    );
}

#[tokio::test]
async fn create_failures_are_classified() {
    let stub = Stub::new();
    stub.fail(1, "cannot create 'tank/keel/a': dataset is busy\n");
    stub.fail(2, "cannot create 'tank/keel/a': out of space\n");
    stub.kill(3);
    let backend = stub.backend();
    let a = spec("a", 1 << 20, None);
    assert!(matches!(
        backend.create(&a, "keel").await,
        Err(BackendError::Busy(_))
    ));
    assert_eq!(
        backend.create(&a, "keel").await,
        Err(BackendError::Failed(
            "cannot create 'tank/keel/a': out of space".into()
        ))
    );
    assert!(matches!(
        backend.create(&a, "keel").await,
        Err(BackendError::Unknown(_))
    ));
}

#[tokio::test]
async fn a_hung_call_is_killed_at_its_time_limit() {
    let stub = Stub::new();
    stub.hang(1);
    let backend = stub
        .backend()
        .with_command_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = backend
        .create(&spec("a", 1 << 20, None), "keel")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&err, BackendError::Unknown(m) if m.contains("did not finish")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_command_that_cannot_start_fails() {
    let stub = Stub::new();
    let mut settings = stub.settings();
    settings.kind = PoolKind::Zfs {
        parent: "tank/keel".into(),
        command: vec![stub.path("no-such-zfs").to_string_lossy().into()],
        device_root: stub.path("dev"),
    };
    let err = ZfsBackend::new(&settings)
        .unwrap()
        .list()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed(m) if m.contains("cannot run")),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_names_and_tags_are_refused_before_any_call() {
    let stub = Stub::new();
    let backend = stub.backend();
    let long = "x".repeat(246);
    for name in ["", "a@b", "/a", "a//b", long.as_str(), "a%b"] {
        let err = backend
            .create(&spec(name, 1 << 20, None), "keel")
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Failed(_)), "{name:?}");
    }
    let mut tab = spec("a", 1 << 20, None);
    tab.lun_tag = "a\tb".into();
    assert!(backend.create(&tab, "keel").await.is_err());
    assert!(backend.create(&spec("a", 1 << 20, None), "").await.is_err());
    assert!(
        backend
            .create(&spec("a", 1 << 20, Some("tank/g")), "keel")
            .await
            .is_err()
    );
    assert!(
        backend
            .create(&spec("a", 1 << 20, Some("other/g@1")), "keel")
            .await
            .is_err()
    );
    assert!(backend.destroy(&names(&["ok", "../x"])).await.is_err());
    assert!(
        backend
            .destroy_snapshots(&names(&["novolume"]))
            .await
            .is_err()
    );
    assert!(backend.grow("a/", 1).await.is_err());
    assert!(
        backend
            .wait_device("..", Duration::from_millis(1))
            .await
            .is_err()
    );
    assert_eq!(stub.calls(), 0);
}

#[tokio::test]
async fn clone_learns_the_snapshot_size_once_and_grows_in_the_same_call() {
    let stub = Stub::new();
    stub.answer(1, GET_23, "", 0);
    let backend = stub.backend();
    let snapshot = "tank/images/debian@2026-01";
    // 20 GiB + 1 byte: larger than the 10 GiB snapshot, rounded up to its 16 KiB blocks.
    backend
        .create(&spec("vm 01", (20 << 30) + 1, Some(snapshot)), "keel")
        .await
        .unwrap();
    assert_eq!(
        stub.argv(1),
        [
            "get",
            "-H",
            "-p",
            "-o",
            "name,property,value",
            "volsize,volblocksize",
            snapshot,
            "tank/images/debian"
        ]
    );
    assert_eq!(
        stub.argv(2),
        [
            "clone",
            "-p",
            "-o",
            "keel:owner=keel",
            "-o",
            "keel:lun=iqn.2026-01.org.example:vm 01 LUN 0 naa.6001405a1b2c3d4e",
            "-o",
            &format!("volsize={}", (20u64 << 30) + 16384),
            snapshot,
            "tank/keel/vm 01"
        ]
    );
    // The same size or smaller: no volsize, never below the snapshot's; no second get.
    backend
        .create(&spec("vm02", 1 << 30, Some(snapshot)), "keel")
        .await
        .unwrap();
    assert_eq!(stub.calls(), 3);
    assert_eq!(
        stub.argv(3),
        [
            "clone",
            "-p",
            "-o",
            "keel:owner=keel",
            "-o",
            "keel:lun=iqn.2026-01.org.example:vm02 LUN 0 naa.6001405a1b2c3d4e",
            snapshot,
            "tank/keel/vm02"
        ]
    );
}

#[tokio::test]
async fn a_failed_clone_forgets_the_snapshot_size() {
    let stub = Stub::new();
    stub.answer(1, GET_23, "", 0);
    stub.fail(
        2,
        "cannot open 'tank/images/debian@2026-01': dataset does not exist\n",
    );
    stub.answer(3, GET_23, "", 0);
    let backend = stub.backend();
    let clone = spec("vm 01", 1 << 30, Some("tank/images/debian@2026-01"));
    let err = backend.create(&clone, "keel").await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed(m) if m.contains("does not exist")),
        "{err:?}"
    );
    backend.create(&clone, "keel").await.unwrap();
    assert_eq!(stub.argv(3)[0], "get");
    assert_eq!(stub.argv(4)[0], "clone");
}

#[tokio::test]
async fn cloning_a_file_system_snapshot_is_refused() {
    let stub = Stub::new();
    stub.answer(
        1,
        b"tank/fs\tvolsize\t-\ntank/fs\tvolblocksize\t-\ntank/fs@1\tvolsize\t0\ntank/fs@1\tvolblocksize\t-\n",
        "",
        0,
    );
    let err = stub
        .backend()
        .create(&spec("a", 1 << 20, Some("tank/fs@1")), "keel")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed(m) if m.contains("not a snapshot of a volume")),
        "{err:?}"
    );
    assert_eq!(stub.calls(), 1);
}

#[tokio::test]
async fn snapshots_seen_in_a_listing_need_no_get() {
    let stub = Stub::new();
    stub.answer(1, LIST_23, "", 0);
    let backend = stub.backend();
    backend.list().await.unwrap();
    // golden@v1 is 1 GiB with 16 KiB blocks (from the listing): 2 GiB grows in the clone.
    backend
        .create(&spec("vm09", 2 << 30, Some("tank/keel/golden@v1")), "keel")
        .await
        .unwrap();
    assert_eq!(stub.calls(), 2);
    assert_eq!(stub.argv(2)[0], "clone");
    assert!(stub.argv(2).contains(&"volsize=2147483648".to_string()));
}

#[tokio::test]
async fn destroy_runs_one_channel_program_per_batch() {
    let stub = Stub::new();
    let backend = stub.backend().with_program_batch(2);
    let calls = backend
        .destroy(&names(&["vm 01", "vm02", "golden@v1", "golden", "x"]))
        .await
        .unwrap();
    assert_eq!(calls, 3);
    assert_eq!(stub.calls(), 3);
    let first = stub.argv(1);
    assert_eq!(first[..2], ["program", "tank"]);
    assert_eq!(first[3..], ["tank/keel/vm 01", "tank/keel/vm02"]);
    assert_eq!(
        stub.argv(2)[3..],
        ["tank/keel/golden@v1", "tank/keel/golden"]
    );
    assert_eq!(stub.argv(3)[3..], ["tank/keel/x"]);
    // The program file was the shared script, and is gone.
    let script = std::fs::read_to_string(stub.path("script.1")).unwrap();
    assert_eq!(script, command::DESTROY_PROGRAM);
    assert!(Path::new(&first[2]).starts_with(stub.path("scripts")));
    assert_eq!(std::fs::read_dir(stub.path("scripts")).unwrap().count(), 0);
    assert_eq!(backend.destroy(&[]).await, Ok(0));
    assert_eq!(stub.calls(), 3);
}

#[tokio::test]
async fn refused_channel_programs_fall_back_to_one_by_one_for_good() {
    let stub = Stub::new();
    stub.answer(1, b"", "unrecognized command 'program'\nusage: ...\n", 2);
    stub.fail(3, "cannot open 'tank/keel/b': dataset does not exist\n");
    let backend = stub.backend();
    assert_eq!(backend.destroy(&names(&["a", "b", "c@s"])).await, Ok(4));
    assert_eq!(stub.argv(2), ["destroy", "tank/keel/a"]);
    assert_eq!(stub.argv(3), ["destroy", "tank/keel/b"]);
    assert_eq!(stub.argv(4), ["destroy", "tank/keel/c@s"]);
    // Later batches do not try the program again.
    assert_eq!(backend.destroy(&names(&["d"])).await, Ok(1));
    assert_eq!(stub.argv(5), ["destroy", "tank/keel/d"]);
}

#[tokio::test]
async fn one_by_one_stops_at_the_first_real_failure() {
    let stub = Stub::new();
    stub.answer(1, b"", "Channel program execution failed:\nPermission denied. Channel programs must be run as root.\n", 1);
    stub.fail(3, "cannot destroy 'tank/keel/b': dataset is busy\n");
    let backend = stub.backend();
    let err = backend.destroy(&names(&["a", "b", "c"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Busy(_)), "{err:?}");
    assert_eq!(stub.calls(), 3);
}

#[tokio::test]
async fn a_refused_name_does_not_hold_up_its_batch() {
    let stub = Stub::new();
    stub.fail(
        1,
        "Channel program execution failed:\n[string \"channel program\"]:51: keel:destroy-batch: nothing destroyed\nfailed: 16 tank/keel/b\nstack traceback:\n\t[C]: in function 'error'\n",
    );
    let backend = stub.backend();
    let err = backend.destroy(&names(&["a", "b", "c"])).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Busy(m) if m.contains("'tank/keel/b'")),
        "{err:?}"
    );
    assert_eq!(stub.calls(), 2);
    assert_eq!(stub.argv(2)[3..], ["tank/keel/a", "tank/keel/c"]);
}

#[tokio::test]
async fn refusals_that_follow_from_a_refusal_are_left_out_too() {
    let stub = Stub::new();
    let refused = |names: &[&str]| {
        let lines: Vec<String> = names.iter().map(|n| format!("failed: 16 {n}")).collect();
        format!(
            "Channel program execution failed:\n[string \"channel program\"]:51: \
             keel:destroy-batch: nothing destroyed\n{}\nstack traceback:\n",
            lines.join("\n")
        )
    };
    // The busy clone b; then its snapshot g@1 and g (which has g@1) as a consequence.
    stub.fail(1, &refused(&["tank/keel/b"]));
    stub.fail(2, &refused(&["tank/keel/g@1", "tank/keel/g"]));
    let backend = stub.backend();
    let err = backend
        .destroy(&names(&["a", "b", "c", "g@1", "g"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Busy(m) if m.contains("'tank/keel/b'")),
        "{err:?}"
    );
    assert_eq!(stub.calls(), 3);
    assert_eq!(
        stub.argv(2)[3..],
        ["tank/keel/a", "tank/keel/c", "tank/keel/g@1", "tank/keel/g"]
    );
    assert_eq!(stub.argv(3)[3..], ["tank/keel/a", "tank/keel/c"]);
}

#[tokio::test]
async fn a_killed_program_is_an_unknown_outcome_not_a_fallback() {
    let stub = Stub::new();
    stub.kill(1);
    let backend = stub.backend();
    let err = backend.destroy(&names(&["a"])).await.unwrap_err();
    assert!(matches!(err, BackendError::Unknown(_)), "{err:?}");
    assert_eq!(stub.calls(), 1);
    // The program is still used next time.
    backend.destroy(&names(&["a"])).await.unwrap();
    assert_eq!(stub.argv(2)[0], "program");
}

#[tokio::test]
async fn an_unwritable_script_dir_falls_back_without_a_call() {
    let stub = Stub::new();
    let backend = stub.backend().with_script_dir(stub.path("missing-dir"));
    assert_eq!(backend.destroy(&names(&["a"])).await, Ok(1));
    assert_eq!(stub.argv(1), ["destroy", "tank/keel/a"]);
}

#[test]
fn program_files_of_dead_keels_are_swept_and_nothing_else() {
    let stub = Stub::new();
    let dir = stub.path("scripts");
    std::fs::create_dir_all(&dir).unwrap();
    // pid 2^31-1 is above any pid_max: that writer is surely gone.
    let dead = "keel-destroy-batch-2147483647-0123456789abcdef.lua";
    let mine = format!(
        "keel-destroy-batch-{}-0123456789abcdef.lua",
        std::process::id()
    );
    let live = "keel-destroy-batch-1-0123456789abcdef.lua"; // init is always running
    let others = [
        "keel-destroy-batch-2147483647-xyz.lua",
        "keel-destroy-batch--0123456789abcdef.lua",
        "notes.lua",
    ];
    for name in [dead, mine.as_str(), live].into_iter().chain(others) {
        std::fs::write(dir.join(name), "x").unwrap();
    }
    let backend = stub.backend();
    assert_eq!(backend.sweep_stale_program_files(), 1);
    assert!(!dir.join(dead).exists());
    for name in [mine.as_str(), live].into_iter().chain(others) {
        assert!(dir.join(name).exists(), "{name} was removed");
    }
    // No directory: nothing to do, no error.
    let missing = stub.backend().with_script_dir(stub.path("missing-dir"));
    assert_eq!(missing.sweep_stale_program_files(), 0);
}

#[tokio::test]
async fn snapshot_destroys_are_one_call_per_volume() {
    let stub = Stub::new();
    stub.fail(
        2,
        "could not find any snapshots to destroy; check snapshot names.\n",
    );
    let backend = stub.backend();
    let calls = backend
        .destroy_snapshots(&names(&["vm 01@a", "vm02@x", "vm 01@b c"]))
        .await
        .unwrap();
    assert_eq!(calls, 2);
    assert_eq!(stub.argv(1), ["destroy", "tank/keel/vm 01@a,b c"]);
    assert_eq!(stub.argv(2), ["destroy", "tank/keel/vm02@x"]);
    stub.fail(
        3,
        "cannot destroy snapshot tank/keel/g@v1: snapshot has dependent clones\n",
    );
    let err = backend
        .destroy_snapshots(&names(&["g@v1"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed(m) if m.contains("dependent clones")),
        "{err:?}"
    );
}

#[tokio::test]
async fn grow_reads_the_size_first_and_never_shrinks() {
    let stub = Stub::new();
    let sizes = b"tank/keel/a\tvolsize\t1073741824\ntank/keel/a\tvolblocksize\t16384\n";
    stub.answer(1, sizes, "", 0);
    stub.answer(3, sizes, "", 0);
    let backend = stub.backend();
    backend.grow("a", (2 << 30) + 1).await.unwrap();
    assert_eq!(stub.argv(1)[6..], ["tank/keel/a"]);
    assert_eq!(
        stub.argv(2),
        [
            "set",
            &format!("volsize={}", (2u64 << 30) + 16384),
            "tank/keel/a"
        ]
    );
    backend.grow("a", 1 << 20).await.unwrap();
    assert_eq!(stub.calls(), 3);
}

#[tokio::test]
async fn wait_device_polls_until_the_node_opens() {
    let stub = Stub::new();
    let backend = stub.backend();
    let node = stub.path("dev").join("tank/keel/vm 01");
    let creator = {
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            std::fs::create_dir_all(node.parent().unwrap()).unwrap();
            std::fs::write(&node, b"").unwrap();
        })
    };
    let started = Instant::now();
    let path = backend
        .wait_device("vm 01", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(path, node);
    assert!(started.elapsed() >= Duration::from_millis(150));
    creator.await.unwrap();

    let err = backend
        .wait_device("never", Duration::from_millis(120))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Failed(m) if m.contains("did not become readable")),
        "{err:?}"
    );
    assert_eq!(stub.calls(), 0);
}
