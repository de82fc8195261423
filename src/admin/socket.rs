//! The control socket: a unix stream socket speaking [`super::protocol`], one request per
//! line, replies in order.
//!
//! Who may connect. A missing directory is created 0750 (with `control_group`'s group; missing
//! parents 0755 so that the group can pass them) and the socket made 0600 (0660 and owned by
//! `control_group` when one is configured), and every peer is checked again with the
//! credentials the kernel recorded at connect(2): SO_PEERCRED for the uid and primary gid, and
//! SO_PEERGROUPS (Linux 4.13) for the supplementary groups. Root, keel's own user and members
//! of `control_group` are served; anyone else gets one `forbidden` line and is closed. We
//! chose SO_PEERGROUPS over the two alternatives: /proc/<pid>/status reads the groups of
//! whatever process holds that pid *now* (the peer may have exited and the pid been reused,
//! or changed its groups since), and getgrouplist(3) answers which groups the user would get
//! at a fresh login, not the groups of the process that connected (a process that dropped a
//! group with setgroups(2) would still be let in).
//!
//! Bounds, so that a hostile or broken peer costs little and never disturbs keel: at most
//! [`Limits::max_connections`] connections (beyond: one `busy` line, closed at once, nothing
//! spawned); a line longer than [`Limits::max_line`] gets `too_long` and the connection is
//! closed without reading the rest (the buffer never holds more than one line's bound); a
//! token bucket per connection ([`Limits::rate_per_sec`], [`Limits::burst`]) answers requests
//! beyond it with `rate_limited` without running them; a connection that does not complete a
//! request within [`Limits::idle_timeout`] of the previous reply (or of connecting), however
//! it trickles bytes, gets `timeout` and is closed, as does one that does not read a reply.
//!
//! A socket file nobody answers on (keel killed) is replaced at bind; a socket a live process
//! answers on is a startup error, so that two keels never fight over one socket.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::protocol::{
    Call, CallError, ErrorCode, MAX_LINE, encode_reply, parse_request, request_id,
};
use crate::config::ControlSettings;

/// The bounds of the control socket.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Longest request line, newline included.
    pub max_line: usize,
    /// Requests per second a connection may sustain.
    pub rate_per_sec: u32,
    /// Requests a connection may send at once before the rate applies.
    pub burst: u32,
    /// How long a connection may wait without sending a complete request or reading a reply.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_line: MAX_LINE,
            rate_per_sec: 50,
            burst: 100,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// How long a probe of an existing socket file waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest supplementary group list accepted from SO_PEERGROUPS (NGROUPS_MAX on Linux).
const MAX_GROUPS: usize = 65_536;

/// The control socket, bound and ready to serve.
pub struct ControlListener {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode), so that shutdown removes only our own file.
    identity: (u64, u64),
    access: Access,
    limits: Limits,
}

/// Binds the socket of `settings` (see [`ControlListener::bind`]) and serves it until
/// `shutdown`. Returns at once when the socket is disabled.
pub async fn serve(
    settings: ControlSettings,
    calls: mpsc::Sender<Call>,
    shutdown: CancellationToken,
) -> Result<()> {
    if let Some(listener) = ControlListener::bind(&settings).await? {
        listener.serve(calls, shutdown).await;
    }
    Ok(())
}

impl ControlListener {
    /// Creates the socket's directory when missing (0750, group `control_group`), replaces a
    /// stale socket file, binds, and sets the socket's group and mode (0600, or 0660 with the
    /// group) without following symlinks. `Ok(None)` when the socket is disabled; an error when
    /// the directory belongs to someone else than root or keel's user or is writable by its
    /// group or others, when a live process answers on the path, when the path is something
    /// else than a socket, or when binding fails.
    pub async fn bind(settings: &ControlSettings) -> Result<Option<ControlListener>> {
        let Some(path) = settings.socket.clone() else {
            return Ok(None);
        };
        let group = settings.group.as_ref().map(|g| g.gid);
        let own_uid = rustix::process::geteuid().as_raw();
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let Some(name) = path.file_name() else {
            bail!(
                "the control socket {} names no file (set [server] control_socket)",
                path.display()
            );
        };
        if !dir.exists() {
            create_dir(dir, group)?;
        }
        let dir_fd = open_socket_dir(dir, own_uid)?;
        if let Some(gid) = group {
            warn_if_group_cannot_search(dir, &dir_fd, gid);
        }
        replace_stale(&path).await?;
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
        let identity = set_socket_owner_and_mode(&dir_fd, name, group)
            .with_context(|| format!("cannot set up the control socket {}", path.display()))?;
        info!(socket = %path.display(), "control socket listening");
        Ok(Some(ControlListener {
            listener,
            path,
            identity,
            access: Access { own_uid, group },
            limits: Limits::default(),
        }))
    }

    /// Other bounds than the defaults (tests use a short idle timeout).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown`, hands every request to `calls`, then waits for
    /// the connections to end and removes the socket file (if it is still ours).
    pub async fn serve(self, calls: mpsc::Sender<Call>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(why) = self.access.check(&stream) {
                warn!("control socket: refused a peer: {why}");
                refuse(&stream, ErrorCode::Forbidden, why);
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                debug!("control socket: refused a connection: all slots busy");
                refuse(
                    &stream,
                    ErrorCode::Busy,
                    format!(
                        "too many control connections (at most {}); try again",
                        self.limits.max_connections
                    ),
                );
                continue;
            };
            tracker.spawn(connection(
                stream,
                permit,
                calls.clone(),
                self.limits.clone(),
                shutdown.clone(),
            ));
        }
        tracker.close();
        tracker.wait().await;
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            warn!(socket = %self.path.display(), "cannot remove the control socket: {e}");
        }
    }
}

fn gid_of(gid: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(gid)
}

/// Creates the socket's directory and any missing parents. The parents get 0755 so that a
/// group member can pass them (they hold nothing but the way down); the directory itself gets
/// 0750 and `group`, so that only root, keel and the group reach the socket.
fn create_dir(dir: &Path, group: Option<u32>) -> Result<()> {
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    missing.reverse();
    for (i, each) in missing.iter().enumerate() {
        let last = i + 1 == missing.len();
        let mode = if last { 0o750 } else { 0o755 };
        match std::fs::DirBuilder::new().mode(mode).create(each) {
            Ok(()) => {}
            // Created meanwhile by someone else: the checks of `bind` judge it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot create the control socket's directory {}",
                        each.display()
                    )
                });
            }
        }
        // The umask may have taken bits (a group member needs x to reach the socket).
        std::fs::set_permissions(each, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", each.display()))?;
        if last && let Some(gid) = group {
            rustix::fs::chown(*each, None, Some(gid_of(gid)))
                .with_context(|| format!("cannot give {} its group", each.display()))?;
        }
    }
    Ok(())
}

/// Opens the socket's directory and refuses one that someone other than root or keel could
/// write to: they could remove keel's socket and put another file, or a symlink, in its place
/// between bind and the chown and chmod that follow (or at any time later).
fn open_socket_dir(dir: &Path, own_uid: u32) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| {
        format!(
            "cannot open the control socket's directory {}",
            dir.display()
        )
    })?;
    let stat = rustix::fs::fstat(&fd).with_context(|| format!("cannot stat {}", dir.display()))?;
    let owner = stat.st_uid;
    if owner != 0 && owner != own_uid {
        bail!(
            "the control socket's directory {} belongs to uid {owner}, neither root nor keel's \
             user: its owner could replace the socket; refusing it (use a directory of root's \
             or keel's, or set [server] control_socket)",
            dir.display()
        );
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        bail!(
            "the control socket's directory {} is writable by its group or others (mode {mode:04o}): \
             they could replace the socket; refusing it (chmod go-w it, or set [server] \
             control_socket to a path in a directory of its own)",
            dir.display()
        );
    }
    Ok(fd)
}

/// Gives the just-bound socket file `name` in `dir` its group and mode without following a
/// symlink (the file is opened O_PATH|O_NOFOLLOW and must be a socket), and returns its
/// (device, inode). chmod has no no-follow form for sockets on Linux (fchmodat ignores
/// AT_SYMLINK_NOFOLLOW before fchmodat2, and fchmod of an O_PATH descriptor is EBADF), so the
/// mode goes through /proc/self/fd, which names the opened inode itself.
fn set_socket_owner_and_mode(
    dir: &OwnedFd,
    name: &OsStr,
    group: Option<u32>,
) -> Result<(u64, u64)> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .context("cannot open the socket file")?;
    let stat = rustix::fs::fstat(&fd).context("cannot stat the socket file")?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        bail!("the socket file was replaced by something else than a socket; refusing it");
    }
    let mode = match group {
        Some(gid) => {
            rustix::fs::chownat(&fd, "", None, Some(gid_of(gid)), AtFlags::EMPTY_PATH)
                .context("cannot give the socket its group")?;
            0o660
        }
        None => 0o600,
    };
    let by_descriptor = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::set_permissions(&by_descriptor, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the socket's mode (through {by_descriptor})"))?;
    Ok((stat.st_dev, stat.st_ino))
}

/// An existing directory keel did not create keeps its owner and mode (it may be /run, or
/// systemd's RuntimeDirectory, root:root 0750): say so when the group cannot pass it.
fn warn_if_group_cannot_search(dir: &Path, dir_fd: &OwnedFd, gid: u32) {
    let Ok(stat) = rustix::fs::fstat(dir_fd) else {
        return;
    };
    let mode = stat.st_mode;
    let group_may = stat.st_gid == gid && mode & 0o010 != 0;
    if !group_may && mode & 0o001 == 0 {
        warn!(
            "members of control_group (gid {gid}) cannot reach the control socket: its directory \
             {} is neither theirs to search nor open to others (give it the group, or mode g+x \
             or o+x; under systemd, RuntimeDirectoryMode=0755)",
            dir.display()
        );
    }
}

/// Removes a socket file nobody answers on; refuses to touch a live socket or another file.
async fn replace_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
    };
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        bail!(
            "{} exists and is not a socket; not replacing it (set [server] control_socket)",
            path.display()
        );
    }
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(_)) => bail!(
            "another keel is already serving the control socket {} (stop it, or set [server] \
             control_socket to another path or \"\")",
            path.display()
        ),
        Err(_) => bail!(
            "a process holds the control socket {} but does not answer (stop it, or set \
             [server] control_socket to another path)",
            path.display()
        ),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!(socket = %path.display(), "replacing a stale control socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
            }
        }
        Ok(Err(e)) => Err(e).with_context(|| format!("cannot probe {}", path.display())),
    }
}

/// Who may use the socket.
struct Access {
    /// keel's own effective uid: a process of the same user could ptrace keel anyway.
    own_uid: u32,
    group: Option<u32>,
}

impl Access {
    fn check(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
        let uid = cred.uid();
        if uid == 0 || uid == self.own_uid {
            return Ok(());
        }
        let Some(gid) = self.group else {
            return Err(format!(
                "uid {uid} may not use the control socket (root only; set [server] control_group \
                 to admit a group)"
            ));
        };
        if cred.gid() == gid {
            return Ok(());
        }
        let groups = peer_groups(stream.as_fd())
            .map_err(|e| format!("cannot read the groups of uid {uid}: {e}"))?;
        if groups.contains(&gid) {
            return Ok(());
        }
        Err(format!(
            "uid {uid} may not use the control socket (neither root nor in its group, gid {gid})"
        ))
    }
}

/// SO_PEERGROUPS's option number: 59 in the generic and MIPS Linux ABIs, 0x3d in SPARC's
/// (arch/*/include/uapi/asm/socket.h); the libc crate does not export it on every target.
#[cfg(not(target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 59;
#[cfg(target_arch = "sparc64")]
const SO_PEERGROUPS: libc::c_int = 0x003d;

/// The peer's supplementary groups as the kernel recorded them at connect(2) (SO_PEERGROUPS,
/// Linux 4.13). The kernel answers ERANGE with the size it needs when the buffer is short.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<libc::gid_t>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * GID)
            .map_err(|_| io::Error::other("group list too long"))?;
        // SAFETY: `fd` is an open socket borrowed for the duration of the call; `groups` is
        // `len` bytes of writable, aligned gid_t storage that lives across the call; the kernel
        // writes at most `len` bytes there and stores the size written (or needed) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let len = len as usize;
        if rc == 0 {
            groups.truncate(len / GID);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        let needed = len / GID;
        if err.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= MAX_GROUPS
        {
            groups.resize(needed, 0);
            continue;
        }
        return Err(err);
    }
}

/// Best effort, never waits: one error line to a peer that is not served, then it is closed.
fn refuse(stream: &UnixStream, code: ErrorCode, message: String) {
    let _ = stream.try_write(&encode_reply(None, &Err(CallError::new(code, message))));
}

/// A token bucket: `burst` requests at once, `rate` per second sustained.
struct TokenBucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            rate: f64::from(rate),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a connection ends.
enum End {
    Closed,
    Timeout,
    TooLong,
}

/// Serves one connection: reads lines (never more than one line's bound), answers each in
/// order, until the peer closes, a bound is crossed, or keel shuts down.
async fn connection(
    stream: UnixStream,
    _slot: OwnedSemaphorePermit,
    calls: mpsc::Sender<Call>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut bucket = TokenBucket::new(limits.rate_per_sec, limits.burst);
    // Received bytes not yet answered: at most `max_line`, since a read never asks for more
    // than the room left below the bound.
    let mut pending: Vec<u8> = Vec::new();
    // One deadline per request, not per read: a peer trickling a byte now and then must still
    // complete its line within the idle timeout, or it would hold its slot forever.
    let mut deadline = tokio::time::Instant::now() + limits.idle_timeout;
    let end = loop {
        let line_end = pending.iter().position(|&b| b == b'\n');
        let Some(line_end) = line_end else {
            if pending.len() >= limits.max_line {
                break End::TooLong;
            }
            let filled = pending.len();
            let room = (limits.max_line - filled).min(16 * 1024);
            pending.resize(filled + room, 0);
            let read = tokio::select! {
                _ = shutdown.cancelled() => break End::Closed,
                read = tokio::time::timeout_at(deadline, reader.read(&mut pending[filled..])) => read,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => break End::Closed,
                Ok(Ok(n)) => pending.truncate(filled + n),
                Err(_) => break End::Timeout,
            }
            continue;
        };
        let line: Vec<u8> = pending.drain(..=line_end).collect();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The token first: a line beyond the rate costs one pass to find its id, never the
        // parse (malformed lines count too, or a flood of them would bypass the limit).
        let (id, reply) = if !bucket.take() {
            let refused = CallError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests per second (burst {}); nothing was done",
                    limits.rate_per_sec, limits.burst
                ),
            );
            (request_id(&line), Err(refused))
        } else {
            match parse_request(&line) {
                Err((id, error)) => (id, Err(error)),
                Ok((id, command)) => {
                    let (tx, rx) = oneshot::channel();
                    let answer = async {
                        if calls.send(Call { command, reply: tx }).await.is_err() {
                            return unavailable();
                        }
                        rx.await.unwrap_or_else(|_| unavailable())
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => break End::Closed,
                        reply = answer => (id, reply),
                    }
                }
            }
        };
        let line = encode_reply(id, &reply);
        match tokio::time::timeout(limits.idle_timeout, writer.write_all(&line)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => break End::Closed,
        }
        deadline = tokio::time::Instant::now() + limits.idle_timeout;
    };
    let last = match end {
        End::Closed => return,
        End::Timeout => CallError::new(
            ErrorCode::Timeout,
            format!(
                "no complete request for {} s; closing",
                limits.idle_timeout.as_secs()
            ),
        ),
        End::TooLong => CallError::new(
            ErrorCode::TooLong,
            format!(
                "request line longer than {} bytes; closing",
                limits.max_line
            ),
        ),
    };
    // A short, bounded goodbye: a peer that does not read must not hold the slot.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        writer.write_all(&encode_reply(None, &Err(last))),
    )
    .await;
}

fn unavailable() -> Result<Value, CallError> {
    Err(CallError::new(
        ErrorCode::Unavailable,
        "keel is shutting down and takes no more commands",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..5).filter(|_| b.take()).count(), 5);
        assert!(!b.take());
        b.last -= Duration::from_millis(250);
        assert_eq!((0..5).filter(|_| b.take()).count(), 2);
        b.last -= Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.take()).count(), 5);
    }

    #[test]
    fn the_socket_mode_is_never_set_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("keel.sock")).unwrap();
        let dir_fd = open_socket_dir(dir.path(), rustix::process::geteuid().as_raw()).unwrap();
        let e = set_socket_owner_and_mode(&dir_fd, OsStr::new("keel.sock"), None).unwrap_err();
        assert!(format!("{e:#}").contains("than a socket"), "{e:#}");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644, "the symlink's target is untouched");
    }

    #[test]
    fn a_socket_directory_others_may_write_is_refused() {
        let own = rustix::process::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o770, 0o707, 0o1777] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = open_socket_dir(dir.path(), own).unwrap_err();
            assert!(
                format!("{e:#}").contains("writable by its group or others"),
                "{e:#}"
            );
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_socket_dir(dir.path(), own).is_ok());
        if own == 0 {
            rustix::fs::chown(dir.path(), Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let e = open_socket_dir(dir.path(), own).unwrap_err();
            assert!(format!("{e:#}").contains("belongs to uid 65534"), "{e:#}");
        }
    }

    #[tokio::test]
    async fn own_peer_groups_are_read() {
        let (a, _b) = UnixStream::pair().unwrap();
        let groups = peer_groups(a.as_fd()).unwrap();
        let mine = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = mine.lines().find(|l| l.starts_with("Groups:")).unwrap();
        let mut expected: Vec<u32> = line["Groups:".len()..]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut got = groups.clone();
        expected.sort();
        got.sort();
        assert_eq!(got, expected);
    }
}
