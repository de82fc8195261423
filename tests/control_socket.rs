//! The control socket end to end, with a stand-in for the server's control loop (it answers
//! `status` with a fixed report, `target.remove` of an unknown name with not_found, and every
//! other command with the command's name): round trips through the CLI's client functions,
//! hostile input (invalid JSON, unknown commands, a 10 MiB line, 1,000 connections at once, a
//! request flood), peers that are not root, the modes of the socket and its directory, stale
//! and live sockets at bind.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use keel::admin::client::{self, Client, ClientError};
use keel::admin::socket::{ControlListener, Limits};
use keel::admin::{Call, CallError, Command, ErrorCode};
use keel::config::{ControlGroup, ControlSettings};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn status_report() -> Value {
    json!({"targets": [{"name": "iqn.2026-11.io.keel:a", "luns": [], "sessions": []}],
           "totals": {"sessions": 0}})
}

/// Answers calls the way a control loop would, without a server behind it.
async fn fake_control_loop(mut calls: mpsc::Receiver<Call>) {
    while let Some(call) = calls.recv().await {
        let answer = match &call.command {
            Command::Status => Ok(status_report()),
            Command::TargetRemove { name, .. } if name == "missing" => Err(CallError::new(
                ErrorCode::NotFound,
                format!("no target {name:?}"),
            )),
            other => Ok(json!({"done": [other.name()]})),
        };
        let _ = call.reply.send(answer);
    }
}

/// The tests of this file run one at a time: one of them counts the process's descriptors,
/// which the others open and close.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Control {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    path: PathBuf,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Control {
    async fn start(limits: Limits) -> Control {
        Self::start_with(limits, None).await
    }

    async fn start_with(limits: Limits, group: Option<ControlGroup>) -> Control {
        let serial = SERIAL.lock().await;
        let dir = tempfile::tempdir().unwrap();
        // The socket's directory does not exist yet: bind creates it.
        let path = dir.path().join("run").join("keel.sock");
        let settings = ControlSettings {
            socket: Some(path.clone()),
            group,
        };
        let listener = ControlListener::bind(&settings)
            .await
            .unwrap()
            .expect("enabled")
            .with_limits(limits);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(fake_control_loop(rx));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(listener.serve(tx, shutdown.clone()));
        Control {
            _serial: serial,
            dir,
            path,
            shutdown,
            served,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.served)
            .await
            .expect("the socket stops at shutdown")
            .unwrap();
        assert!(
            !self.path.exists(),
            "the socket file is removed at shutdown"
        );
    }
}

/// Sends raw lines and reads one reply line each, on one connection.
fn exchange(path: &Path, lines: &[&[u8]]) -> Vec<Value> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut replies = Vec::new();
    for line in lines {
        s.write_all(line).unwrap();
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        replies.push(serde_json::from_str(&reply).unwrap());
    }
    replies
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("")
}

/// The distinct sockets the process has open. Only sockets: the runtimes of tests starting or
/// ending beside this one open and close their own epoll and event descriptors meanwhile (and
/// duplicates of tokio's one signal socket, which count once), and every socket of this
/// file's tests is opened under `SERIAL`.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_round_trip_through_the_client() {
    let c = Control::start(Limits::default()).await;
    let path = c.path.clone();
    blocking(move || {
        assert_eq!(
            client::call(&path, &Command::Status).unwrap(),
            status_report()
        );
        let mut client = Client::connect(&path).unwrap();
        let resized = client
            .call(&Command::LunResize {
                target: "iqn.2026-11.io.keel:a".into(),
                lun: 0,
                size: 1 << 30,
            })
            .unwrap();
        assert_eq!(resized, json!({"done": ["lun.resize"]}));
        match client.call(&Command::TargetRemove {
            name: "missing".into(),
            destroy_volumes: false,
        }) {
            Err(ClientError::Call(e)) => {
                assert_eq!(e.code, ErrorCode::NotFound);
                assert_eq!(e.message, "no target \"missing\"");
            }
            other => panic!("{other:?}"),
        }
        // The connection stays usable after an error.
        assert_eq!(client.call(&Command::Status).unwrap(), status_report());
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_and_socket_modes_are_0750_and_0600() {
    let c = Control::start(Limits::default()).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(c.path.parent().unwrap()), 0o750);
    assert_eq!(mode(&c.path), 0o600);
    c.stop().await;
}

/// Missing parents are made passable (0755); only the socket's own directory is closed to
/// others and given control_group, so that the group's members reach the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_parents_are_passable_and_the_last_directory_gets_the_group() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give a directory another group");
        return;
    }
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("keel.sock");
    let settings = ControlSettings {
        socket: Some(path.clone()),
        group: Some(ControlGroup {
            name: "nogroup".into(),
            gid: 65534,
        }),
    };
    let listener = ControlListener::bind(&settings).await.unwrap().unwrap();
    let meta = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.gid())
    };
    assert_eq!(meta(&dir.path().join("a")), (0o755, 0));
    assert_eq!(meta(path.parent().unwrap()), (0o750, 65534));
    assert_eq!(meta(&path), (0o660, 65534));
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_errors_and_change_nothing() {
    let c = Control::start(Limits::default()).await;
    let path = c.path.clone();
    let replies = blocking(move || {
        exchange(
            &path,
            &[
                b"{\"v\":1,\"cmd\":\n",
                b"not json at all\n",
                b"{\"v\":1,\"id\":9,\"cmd\":\"rm.rf\"}\n",
                b"{\"v\":3,\"id\":10,\"cmd\":\"status\"}\n",
                b"{\"v\":1,\"id\":11,\"cmd\":\"target.remove\",\"name\":\"x\",\"force\":true}\n",
                b"\xff\xfe\x00\n",
                b"{\"v\":1,\"id\":12,\"cmd\":\"status\"}\n",
            ],
        )
    })
    .await;
    let codes: Vec<&str> = replies.iter().map(code).collect();
    assert_eq!(
        codes,
        [
            "bad_request",
            "bad_request",
            "unknown_command",
            "unsupported_version",
            "bad_request",
            "bad_request",
            ""
        ]
    );
    assert_eq!(replies[2]["id"], 9);
    assert!(
        replies[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown command \"rm.rf\"")
    );
    assert!(
        replies[4]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no argument \"force\"")
    );
    assert_eq!(replies[6]["ok"], true);
    assert_eq!(replies[6]["result"], status_report());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mib_line_is_refused_and_the_connection_closed() {
    let c = Control::start(Limits::default()).await;
    let path = c.path.clone();
    blocking(move || {
        let s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut writer = s.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0usize;
            for _ in 0..10 {
                match writer.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
            sent
        });
        let mut r = BufReader::new(s);
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(code(&reply), "too_long");
        // Closed after the error: end of file, or a reset, since keel closes with the rest of
        // the line unread (unix(7) sockets report that as ECONNRESET).
        let mut rest = Vec::new();
        match r.read_to_end(&mut rest) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("still open: {other:?}"),
        }
        let sent = sender.join().unwrap();
        assert!(sent < 10 << 20, "keel read all 10 MiB ({sent})");
        // keel is fine.
        assert_eq!(
            client::call(&path, &Command::Status).unwrap(),
            status_report()
        );
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_are_bounded_and_leave_no_descriptor_behind() {
    let c = Control::start(Limits::default()).await;
    let path = c.path.clone();
    let before = open_fds();
    let (served, busy) = blocking(move || {
        let streams: Vec<UnixStream> = (0..1000)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut served = 0;
        let mut busy = 0;
        for s in &streams {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // A refused peer may already be closed: the write may fail, its reply is there.
            let _ = (&*s).write_all(b"{\"v\":1,\"cmd\":\"status\"}\n");
        }
        for s in &streams {
            let mut reply = String::new();
            BufReader::new(s).read_line(&mut reply).unwrap();
            let reply: Value = serde_json::from_str(&reply).unwrap();
            match code(&reply) {
                "" => served += 1,
                "busy" => busy += 1,
                other => panic!("{other}: {reply}"),
            }
        }
        drop(streams);
        (served, busy)
    })
    .await;
    assert_eq!((served, busy), (64, 936));
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_fds(), before, "descriptors left open");
    let path = c.path.clone();
    let status = blocking(move || client::call(&path, &Command::Status).unwrap()).await;
    assert_eq!(status, status_report());
    c.stop().await;
}

/// Sends 300 requests for `cmd` at once on one connection and counts the replies: those with
/// the code `answered` ("" for success) and the `rate_limited` ones.
async fn flood(path: &Path, cmd: &'static str, answered: &'static str) -> (usize, usize) {
    let path = path.to_owned();
    blocking(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let flood: Vec<u8> = (0..300)
            .flat_map(|i| format!("{{\"v\":1,\"id\":{i},\"cmd\":\"{cmd}\"}}\n").into_bytes())
            .collect();
        s.write_all(&flood).unwrap();
        let mut r = BufReader::new(s);
        let (mut served, mut limited) = (0, 0);
        for i in 0..300 {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let reply: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(reply["id"], i, "replies come in order with their ids");
            match code(&reply) {
                c if c == answered => served += 1,
                "rate_limited" => limited += 1,
                other => panic!("{other}"),
            }
        }
        (served, limited)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_rate_limited() {
    let c = Control::start(Limits::default()).await;
    let (ok, limited) = flood(&c.path, "status", "").await;
    // The burst of 100 and whatever 50/s refilled while the flood was answered.
    assert!((100..150).contains(&ok), "{ok} served");
    assert_eq!(ok + limited, 300);
    c.stop().await;
}

/// The token is taken before the line is parsed: a flood of malformed requests is limited
/// like one of good ones (each costs a parse otherwise), and the refusals keep their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_requests_is_rate_limited_too() {
    let c = Control::start(Limits::default()).await;
    let (refused, limited) = flood(&c.path, "no.such", "unknown_command").await;
    assert!((100..150).contains(&refused), "{refused} parsed");
    assert_eq!(refused + limited, 300);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let c = Control::start(Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let path = c.path.clone();
    blocking(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"{\"v\":1,").unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let reply: Value = serde_json::from_str(&all).unwrap();
        assert_eq!(code(&reply), "timeout");
    })
    .await;
    c.stop().await;
}

/// The idle timeout bounds a whole request, not each read: a peer trickling one byte at a time
/// (each well within the timeout) is still closed when its line is not complete in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_peer_is_closed_at_the_request_deadline() {
    let c = Control::start(Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    })
    .await;
    let path = c.path.clone();
    blocking(move || {
        let s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = std::time::Instant::now();
        let mut trickle = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            // 5 s of one space every 100 ms, or until keel closes.
            for _ in 0..50 {
                if trickle.write_all(b" ").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut all = String::new();
        BufReader::new(s).read_line(&mut all).unwrap();
        let elapsed = started.elapsed();
        let reply: Value = serde_json::from_str(&all).unwrap();
        assert_eq!(code(&reply), "timeout");
        assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
        writer.join().unwrap();
    })
    .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_is_an_error() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keel.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a killed keel leaves its socket file");
    let settings = ControlSettings::at(&path);
    let first = ControlListener::bind(&settings).await.unwrap().unwrap();
    let e = ControlListener::bind(&settings).await.err().unwrap();
    assert!(
        format!("{e:#}").contains("another keel is already serving"),
        "{e:#}"
    );
    drop(first);
    let file = dir.path().join("plain");
    std::fs::write(&file, b"data").unwrap();
    let e = ControlListener::bind(&ControlSettings::at(&file))
        .await
        .err()
        .unwrap();
    assert!(format!("{e:#}").contains("is not a socket"), "{e:#}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    assert!(
        ControlListener::bind(&ControlSettings::disabled())
            .await
            .unwrap()
            .is_none()
    );
}

/// Runs `keel --socket PATH status` as uid nobody with the given setpriv group options.
fn status_as_nobody(path: &Path, groups: &[&str]) -> (bool, String) {
    let out = Process::new("setpriv")
        .arg("--reuid=65534")
        .args(groups)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_keel"))
        .arg("--socket")
        .arg(path)
        .arg("status")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn running_as_root() -> bool {
    if rustix::process::geteuid().is_root() && Path::new("/usr/bin/setpriv").exists() {
        return true;
    }
    eprintln!("skipped: needs root and setpriv to run a client as another user");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_root_is_refused() {
    if !running_as_root() {
        return;
    }
    let c = Control::start(Limits::default()).await;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = c.path.clone();
    // The modes alone keep nobody out: the directory is 0750 root's.
    let (ok, err) = blocking({
        let path = path.clone();
        move || status_as_nobody(&path, &["--regid=65534", "--clear-groups"])
    })
    .await;
    assert!(!ok && err.contains("Permission denied"), "{err}");
    // With the modes opened by mistake, the credential check still refuses.
    for p in [path.parent().unwrap(), &path] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (ok, err) = blocking({
        let path = path.clone();
        move || status_as_nobody(&path, &["--regid=65534", "--clear-groups"])
    })
    .await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("forbidden: uid 65534 may not use the control socket"),
        "{err}"
    );
    // keel is fine.
    let status = blocking(move || client::call(&path, &Command::Status).unwrap()).await;
    assert_eq!(status, status_report());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_the_control_group_are_admitted_by_primary_or_supplementary_group() {
    if !running_as_root() {
        return;
    }
    let group = ControlGroup {
        name: "nogroup".into(),
        gid: 65534,
    };
    let c = Control::start_with(Limits::default(), Some(group)).await;
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.gid())
    };
    assert_eq!(meta(c.path.parent().unwrap()), (0o750, 65534));
    assert_eq!(meta(&c.path), (0o660, 65534));
    let path = c.path.clone();
    let runs = blocking(move || {
        [
            status_as_nobody(&path, &["--regid=65534", "--clear-groups"]),
            status_as_nobody(&path, &["--regid=1", "--groups=65534"]),
            status_as_nobody(&path, &["--regid=1", "--clear-groups"]),
        ]
    })
    .await;
    assert!(runs[0].0, "primary group: {}", runs[0].1);
    assert!(runs[1].0, "supplementary group: {}", runs[1].1);
    // Not in the group: the directory's mode stops it first.
    assert!(
        !runs[2].0 && runs[2].1.contains("Permission denied"),
        "{}",
        runs[2].1
    );
    c.stop().await;
}
