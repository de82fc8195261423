//! keel as a systemd `Type=notify` service: the real binary, with `$NOTIFY_SOCKET` naming a
//! datagram socket this test binds, says `READY=1` only once its portal accepts connections,
//! and `STOPPING=1` when told to stop (sd_notify(3)).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Kills keel if an assertion fails first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    // A recv with a timeout (SO_RCVTIMEO) is never restarted after a signal (signal(7)):
    // EINTR is not the timeout, so it is tried again. Seen once in a full test run.
    let n = loop {
        match socket.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.expect("a notification within the timeout"),
        }
    };
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// keel serving one file LUN on 127.0.0.1 (an ephemeral port) in `dir`, notifying a socket
/// returned beside it, its stderr in `dir/keel.log`; `journal` sets `$JOURNAL_STREAM` to
/// that file's device and inode, as systemd does for a service whose stderr is the journal.
fn start(dir: &Path, journal: bool) -> (Running, UnixDatagram) {
    let config = dir.join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\n\
             control_socket = \"{0}/keel.sock\"\n\
             [[target]]\nname = \"iqn.2026-11.org.example:notify\"\n\
             [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"16MiB\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log = std::fs::File::create(dir.join("keel.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("KEEL_LOG", "info")
        .env_remove("JOURNAL_STREAM");
    if journal {
        let stat = log.metadata().unwrap();
        command.env("JOURNAL_STREAM", format!("{}:{}", stat.dev(), stat.ino()));
    }
    let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    (Running(child), socket)
}

fn terminate(keel: &Running) {
    let killed = Command::new("kill")
        .args(["-TERM", &keel.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// A bounded wait for a clean exit.
fn wait_clean_exit(keel: &mut Running, log: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = keel.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "keel did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "keel exited with {status}: {log}");
}

#[test]
fn ready_only_once_the_portal_accepts_and_stopping_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keel, socket) = start(dir.path(), false);
    let log_path = dir.path().join("keel.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The first notification is READY=1; the portal it names (port 0 was asked for, so only
    // keel knows it) accepts a connection at once, without retrying.
    let ready = receive(&socket);
    assert_eq!(ready.lines().next(), Some("READY=1"), "{ready}\n{}", log());
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(keel.0.id().to_string().as_str())
    );
    let status = field(&ready, "STATUS").unwrap();
    let portal: SocketAddr = status
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("STATUS names the portal: {status}"));
    assert_ne!(portal.port(), 0);
    TcpStream::connect_timeout(&portal, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("portal {portal} refused after READY=1: {e}\n{}", log()));

    terminate(&keel);
    let stopping = receive(&socket);
    assert_eq!(stopping.lines().next(), Some("STOPPING=1"), "{stopping}");
    wait_clean_exit(&mut keel, &log());
    // Not under journald: the ordinary format, each line led by its timestamp.
    let text = log();
    assert!(
        text.lines()
            .all(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "{text}"
    );
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let (mut keel, socket) = start(dir.path(), true);
    let ready = receive(&socket);
    assert!(ready.starts_with("READY=1"), "{ready}");
    let log = || std::fs::read_to_string(dir.path().join("keel.log")).unwrap_or_default();
    terminate(&keel);
    wait_clean_exit(&mut keel, &log());
    let text = log();
    let listening = text
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("no listening line: {text}"));
    // journald reads <6> as the entry's priority (info) and stamps the entry itself.
    assert!(
        listening.starts_with("<6> INFO keel::server"),
        "{listening}"
    );
    assert!(
        text.lines()
            .all(|l| l.starts_with('<') && !l.contains('\x1b')),
        "{text}"
    );
}

/// Whether this test runs as root (then it can run keel as `nobody`, in a network namespace
/// of its own where the embedded default's port 3260 is free).
fn can_run_as_nobody() -> bool {
    let uid = Command::new("id").arg("-u").output();
    let root = uid.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let tools = ["unshare", "setpriv", "ip"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    root && tools
}

#[test]
fn the_embedded_default_serves_without_a_control_socket_it_cannot_bind() {
    if !can_run_as_nobody() {
        eprintln!("skipped: needs root, unshare, setpriv and ip to run keel as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let log_path = dir.path().join("keel.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    // No --config: the embedded default, whose socket /run/keel/keel.sock nobody cannot
    // bind. Each step execs the next, so the child's pid is keel's.
    let child = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && exec setpriv --reuid=nobody --regid=nogroup --clear-groups \
             \"$0\" serve",
            env!("CARGO_BIN_EXE_keel"),
        ])
        .current_dir(dir.path())
        .env("KEEL_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut keel = Running(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !log().contains("accepting connections") {
        if let Some(status) = keel.0.try_wait().unwrap() {
            panic!("keel exited with {status}: {}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "keel did not start: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log().contains("serving without a control socket"),
        "{}",
        log()
    );
    terminate(&keel);
    wait_clean_exit(&mut keel, &log());
}
