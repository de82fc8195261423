//! keel as a systemd `Type=notify` service: the real binary, with `$NOTIFY_SOCKET` naming a
//! datagram socket this test binds, says `READY=1` only once its portal accepts connections,
//! and `STOPPING=1` when told to stop (sd_notify(3)).

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
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
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn ready_only_once_the_portal_accepts_and_stopping_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n\
             [[target]]\nname = \"iqn.2026-11.org.example:notify\"\n\
             [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"16MiB\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log_path = dir.path().join("keel.log");
    let mut keel = Running(
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("KEEL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
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

    let killed = Command::new("kill")
        .args(["-TERM", &keel.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopping = receive(&socket);
    assert_eq!(stopping.lines().next(), Some("STOPPING=1"), "{stopping}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = keel.0.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "keel did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "keel exited with {status}: {}", log());
}
