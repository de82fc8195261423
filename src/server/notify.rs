//! Tells systemd what the service is doing, through the `sd_notify` datagram protocol
//! (sd_notify(3): newline-separated `KEY=VALUE` assignments sent to the datagram socket named
//! by `$NOTIFY_SOCKET`). The unit runs with `Type=notify`, so systemd counts keel as started
//! only on `READY=1`, which [`ready`] sends once every portal listens: units ordered after
//! keel (and `systemctl start keel`) then find the portals accepting connections.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every function here does nothing. A
//! failed send is logged, never fatal: the service works the same, only systemd's view of it
//! is late (it would time the start out).

use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::net::{self, UnixDatagram};

use tracing::{debug, warn};

/// The environment variable systemd sets for a `Type=notify` service.
const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Startup is over and every portal in `portals` listens; also sent after a reload has been
/// applied. Carries `MAINPID` (so systemd need not guess it) and a `STATUS` line that
/// `systemctl status keel` shows.
pub fn ready(portals: &[SocketAddr]) {
    send_from_env(&ready_message(std::process::id(), portals));
}

/// A reload starts: systemd shows the unit as `reloading` until the next [`ready`]. Call it
/// before the new configuration is read, and [`ready`] once its difference has been applied,
/// whether the reload succeeded or was refused (the service runs either way).
pub fn reloading() {
    match monotonic_usec() {
        Ok(now) => send_from_env(&reloading_message(now)),
        Err(e) => warn!("sd_notify: cannot read CLOCK_MONOTONIC: {e}"),
    }
}

/// Shutdown has begun (sessions are being finished): systemd shows `deactivating`.
pub fn stopping() {
    send_from_env("STOPPING=1\nSTATUS=stopping: finishing in-flight commands");
}

fn ready_message(pid: u32, portals: &[SocketAddr]) -> String {
    let listening: Vec<String> = portals.iter().map(ToString::to_string).collect();
    format!(
        "READY=1\nMAINPID={pid}\nSTATUS=listening on {}",
        if listening.is_empty() {
            "no portal".to_string()
        } else {
            listening.join(", ")
        }
    )
}

/// `MONOTONIC_USEC` lets systemd tell this reload from an earlier one whose `READY=1` it may
/// not have seen yet (sd_notify(3), required with `RELOADING=1` since systemd 253).
fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` against.
fn monotonic_usec() -> io::Result<u64> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let seconds = u64::try_from(now.tv_sec).map_err(|_| io::Error::other("negative clock"))?;
    let micros = u64::try_from(now.tv_nsec / 1_000).map_err(|_| io::Error::other("bad clock"))?;
    Ok(seconds.saturating_mul(1_000_000).saturating_add(micros))
}

fn send_from_env(message: &str) {
    let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    match send(&socket, message) {
        Ok(()) => debug!(message, "sd_notify"),
        Err(e) => warn!(
            "sd_notify to {}: {e} (systemd will not see: {})",
            socket.to_string_lossy(),
            message.lines().next().unwrap_or_default()
        ),
    }
}

/// Sends one notification datagram to `socket`: a filesystem path, or an abstract address
/// written with a leading `@` (systemd's notation, sd_notify(3)).
fn send(socket: &OsStr, message: &str) -> io::Result<()> {
    let address = notify_address(socket)?;
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(message.as_bytes(), &address)?;
    if sent != message.len() {
        return Err(io::Error::other(format!(
            "short send: {sent} of {} bytes",
            message.len()
        )));
    }
    Ok(())
}

fn notify_address(socket: &OsStr) -> io::Result<net::SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => net::SocketAddr::from_abstract_name(name),
        Some((b'/', _)) => net::SocketAddr::from_pathname(socket),
        // systemd also names vsock addresses here (`vsock:CID:PORT`, for VMs); keel runs on the
        // host it serves, so only unix sockets are expected.
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an abstract (@) address",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let portals: Vec<SocketAddr> = vec![
            "127.0.0.1:3260".parse().unwrap(),
            "[::1]:3261".parse().unwrap(),
        ];
        send(path.as_os_str(), &ready_message(42, &portals)).unwrap();
        assert_eq!(
            receive(&listener),
            "READY=1\nMAINPID=42\nSTATUS=listening on 127.0.0.1:3260, [::1]:3261"
        );
    }

    #[test]
    fn sends_to_an_abstract_address() {
        let name = format!("keel-notify-test-{}", std::process::id());
        let address = net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let before = monotonic_usec().unwrap();
        let message = reloading_message(before);
        let mut lines = message.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let stamp: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert_eq!(stamp, before);
        assert!(monotonic_usec().unwrap() >= before);
    }

    #[test]
    fn refuses_relative_and_empty_addresses() {
        for bad in ["", "notify.sock", "vsock:2:1234"] {
            let e = send(OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn ready_without_portals_says_so() {
        assert!(ready_message(1, &[]).ends_with("STATUS=listening on no portal"));
    }
}
