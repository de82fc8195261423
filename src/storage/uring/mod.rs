//! The io_uring engine: a ring per runtime thread that submits. Callers submit on their own
//! thread; completions are reaped by the submitter when it enters the ring, or by a reaper
//! task on that thread's runtime that wakes on the ring's eventfd; results come back through
//! oneshot channels.
//!
//! Design (DESIGN.md §3: io_uring bridged into tokio did 200k+ IOPS vs ~110k for
//! `spawn_blocking`):
//!
//! - A tokio task calls [`UringEngine::read`] and friends. The call builds an [`Op`] that owns
//!   everything the kernel will touch (the file, the buffer), moves it into the in-flight table
//!   of the calling thread's ring (a slab indexed by `user_data`, behind the ring's mutex),
//!   pushes its SQE, then returns a future that only awaits a oneshot receiver. On a thread
//!   whose current-thread runtime reaps its ring (a connection thread), the ring's reaper
//!   submits what was pushed with one `io_uring_enter` once the submitting task yields, so
//!   that the commands of one receive share a system call and a block-layer plug; elsewhere
//!   the caller submits right there. Nothing the kernel uses lives in that future, so
//!   dropping it (a cancelled command, a closed connection) frees nothing the kernel still
//!   writes to: the op stays in the table until its completion is reaped, and its buffer is
//!   released then.
//! - Why a ring per thread, used on that thread: with one ring on a dedicated thread every I/O
//!   cost two cross-thread wake-ups more (the caller woke the ring thread; the ring thread,
//!   through which the kernel completes direct I/O, woke the caller's thread back). On a block
//!   device (a loop device, a zvol) that was most of an I/O's latency at queue depth 32. Now a
//!   connection thread (a runtime of its own, see `server::threads`) submits, the kernel runs
//!   the completion work on it (IORING_SETUP_COOP_TASKRUN: when it next enters or leaves the
//!   kernel, or wakes it from its sleep in epoll), posts the completion and signals the
//!   ring's eventfd (IORING_REGISTER_EVENTFD), which the same thread's reactor sees; the
//!   reaper task reaps and wakes the command, on the same thread. A thread's ring is made on
//!   its first submission; a thread with no runtime uses the ring made with the engine.
//! - Short reads and writes are completed by resubmitting the rest; EINTR/EAGAIN (and
//!   ECANCELED, which the engine never asks for: the kernel cancels a thread's requests when
//!   it exits) are retried. Reads and writes larger than Linux's per-call cap (MAX_RW_COUNT)
//!   are split the same way.
//! - Direct I/O (a descriptor opened with O_DIRECT, see `storage::file`): the caller gives the
//!   alignment the device demands; reads then land in a buffer that starts at such an
//!   address, and split transfers are split at multiples of it. Write data must already be
//!   aligned (the caller copies it when it is not).
//! - FUA is a write with `RWF_DSYNC`; flush is `IORING_OP_FSYNC` with `DATASYNC`; discard is
//!   `IORING_OP_FALLOCATE` (the caller falls back to zero-filling where it is not supported);
//!   block devices are discarded with the `BLKDISCARD` ioctl of `blkdev`, which both engines
//!   run on the blocking pool (io_uring has no discard op on Linux 6.1).
//! - The engine needs a tokio runtime (with I/O enabled) when it is created: the first ring's
//!   reaper runs on it. A ring's reaper ends when the engine is dropped (or the ring's thread
//!   exits) and nothing is in flight.
//!
//! This is the only module (with its `blkdev` submodule) where `unsafe` is allowed. The
//! invariant every block here relies on: an op whose SQE was pushed stays in `Ring::slots`
//! (heap buffers unmoved: moving a `BytesMut` or `Bytes` handle does not move its bytes) until
//! its CQE is reaped. A ring and its table are only touched under the ring's mutex. If the ring is
//! dropped with ops still in flight (the runtime shut down under them, or a panic), the table
//! and the ring are leaked, never freed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::{Bytes, BytesMut};
use io_uring::{IoUring, opcode, squeue, types};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::pool::aligned_empty;

pub(crate) mod blkdev;

/// Submission queue size; the completion queue is twice as large.
const RING_ENTRIES: u32 = 256;
/// Linux caps one read or write at MAX_RW_COUNT (INT_MAX rounded down to a page).
const MAX_CHUNK: usize = 0x7fff_f000;

/// One io_uring shared by every backend that uses it. The reaper task ends when the last
/// handle is dropped and every op in flight has completed.
pub struct UringEngine {
    /// Tells this engine's rings apart from other engines' in each thread's [`LOCAL_RINGS`].
    id: u64,
    /// The ring made with the engine, for threads that have no runtime of their own.
    home: Arc<Shared>,
    /// Every ring of this engine (one per thread that submitted), closed when it is dropped.
    rings: Mutex<Vec<Arc<Shared>>>,
    fallocate: bool,
    max_chunk: usize,
}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("fallocate", &self.fallocate)
            .finish()
    }
}

/// State shared between the submitters (tokio tasks) and the reaper task.
struct Shared {
    ring: Mutex<Ring>,
    /// Registered with the ring: the kernel signals it when it posts a completion. Written by
    /// the last handle's drop too, so that the reaper notices the engine is closing.
    events: OwnedFd,
    /// The reaper has stopped; new ops are refused instead of waiting forever. An atomic so
    /// that finding the calling thread's ring on every submission reads it without the
    /// lock; set under the lock (see `Drop for Dead`), so a submission that reads it under
    /// the lock never queues an op behind the backlog the reaper's end took away.
    dead: AtomicBool,
    /// The ring's reaper runs on a current-thread runtime: on the thread that owns the ring,
    /// so that thread's submissions can leave `io_uring_enter` to it (see `Ring::flush_asked`).
    reaped_here: bool,
    /// Wakes the reaper to submit what was pushed since it last entered the ring.
    flush: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding this lock leaves the table consistent: every op is either in
        // the backlog or in a slot with its SQE pushed, and nothing is freed while in flight.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No more ops will come: the reaper ends once those in flight have completed.
    fn close(&self) {
        self.lock().closed = true;
        self.signal();
    }

    fn signal(&self) {
        // EAGAIN (counter saturated) still leaves the eventfd readable: the reaper wakes.
        let _ = rustix::io::write(&self.events, &1u64.to_ne_bytes());
    }

    /// Runs what `f` does to the ring under its lock, then answers the ops that finished
    /// meanwhile (outside the lock: answering wakes their tasks).
    fn with_ring<T>(&self, f: impl FnOnce(&mut Ring) -> T) -> T {
        let (value, finished) = {
            let mut ring = self.lock();
            let value = f(&mut ring);
            (value, std::mem::take(&mut ring.finished))
        };
        for (reply, result) in finished {
            // The receiver is gone if the caller dropped its future: nothing to tell.
            let _ = reply.send(result);
        }
        value
    }
}

/// The eventfd as tokio's reactor sees it.
struct Events(Arc<Shared>);

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.0.events.as_raw_fd()
    }
}

/// What an op does, with the memory the kernel reads or writes.
enum Kind {
    /// `buf.len()` bytes are done; the kernel writes into its spare capacity.
    Read {
        buf: BytesMut,
        want: usize,
    },
    Write {
        data: Bytes,
        dsync: bool,
    },
    Fdatasync,
    Fallocate {
        mode: i32,
        len: u64,
    },
    Nop,
}

type Reply = io::Result<Option<Bytes>>;

struct Op {
    /// Keeps the descriptor open until the op completes, even if its backend is dropped.
    file: Option<Arc<File>>,
    offset: u64,
    /// Every piece of a split transfer is a multiple of this (1, or the device's O_DIRECT
    /// alignment), so that each piece's offset and address stay aligned.
    align: usize,
    /// Bytes already transferred (writes; reads track it in `buf.len()`).
    done: usize,
    kind: Kind,
    reply: oneshot::Sender<Reply>,
}

impl UringEngine {
    /// Creates a ring and proves it works by submitting a NOP: the call fails where the kernel
    /// lacks io_uring (ENOSYS), where seccomp or `kernel.io_uring_disabled` refuses it (EPERM),
    /// where an opcode the engine needs is missing, or outside a tokio runtime.
    pub fn new() -> io::Result<Arc<UringEngine>> {
        Self::build(MAX_CHUNK)
    }

    /// Like [`UringEngine::new`], but splitting every read and write into pieces of at most
    /// `max_chunk` bytes: tests use it to drive the short-transfer path.
    #[cfg(test)]
    pub(crate) fn with_max_chunk(max_chunk: usize) -> io::Result<Arc<UringEngine>> {
        Self::build(max_chunk.clamp(1, MAX_CHUNK))
    }

    fn build(max_chunk: usize) -> io::Result<Arc<UringEngine>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("the io_uring engine must be created on a tokio runtime")
        })?;
        let (home, fallocate) = open_ring(max_chunk, &runtime)?;
        Ok(Arc::new(UringEngine {
            id: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
            home: home.clone(),
            rings: Mutex::new(vec![home]),
            fallocate,
            max_chunk,
        }))
    }

    /// The ring of the calling thread: made on its first submission, with its reaper on the
    /// thread's runtime, so that for a connection thread (a runtime of its own) submission,
    /// the kernel's completion work, reaping and the command's wake-up all stay on it. A thread
    /// with no runtime uses the ring made with the engine.
    fn ring(&self) -> (Arc<Shared>, Ownership) {
        let home = || (self.home.clone(), Ownership::Shared);
        // None while the thread's locals are being destroyed: the shared ring serves then.
        let Ok(found) = LOCAL_RINGS.try_with(|rings| {
            let rings = rings.borrow();
            rings
                .0
                .iter()
                .find(|(id, _)| *id == self.id)
                .and_then(|(_, ring)| ring.upgrade())
                .filter(|ring| !ring.dead.load(Ordering::Acquire))
        }) else {
            return home();
        };
        if let Some(ring) = found {
            return (ring, Ownership::ThisThread);
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return home();
        };
        let ring = match open_ring(self.max_chunk, &runtime) {
            Ok((ring, _)) => ring,
            Err(e) => {
                warn!("io_uring engine: no ring of its own for this thread ({e}); sharing one");
                return home();
            }
        };
        {
            let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
            // Rings whose reaper has ended (their thread or runtime is gone) are let go.
            rings.retain(|r| !r.dead.load(Ordering::Acquire));
            rings.push(ring.clone());
        }
        let _ = LOCAL_RINGS.try_with(|rings| {
            let mut rings = rings.borrow_mut();
            rings
                .0
                .retain(|(id, r)| *id != self.id && r.strong_count() > 0);
            rings.0.push((self.id, Arc::downgrade(&ring)));
        });
        (ring, Ownership::ThisThread)
    }

    /// Whether discard can go through the ring (IORING_OP_FALLOCATE, Linux ≥ 5.6).
    pub fn supports_fallocate(&self) -> bool {
        self.fallocate
    }

    fn submit(
        &self,
        file: Option<&Arc<File>>,
        offset: u64,
        kind: Kind,
    ) -> impl Future<Output = Reply> + Send + 'static {
        self.submit_aligned(file, offset, kind, 1)
    }

    fn submit_aligned(
        &self,
        file: Option<&Arc<File>>,
        offset: u64,
        kind: Kind,
        align: usize,
    ) -> impl Future<Output = Reply> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let op = Op {
            file: file.cloned(),
            offset,
            align: align.max(1),
            done: 0,
            kind,
            reply,
        };
        let (shared, ownership) = self.ring();
        // On the thread whose runtime reaps this ring, the op's SQE is only pushed: the
        // reaper, woken once, submits every SQE pushed meanwhile in one `io_uring_enter`
        // when this task yields (the reader handles every PDU of a receive first). One
        // entry per op cost each 4 KiB write on a loop device a system call and, through
        // the block layer's plug of one request, most often a wake-up of the loop's worker
        // (profiled: a quarter of keel's CPU per write was under io_uring_enter).
        let defer = ownership == Ownership::ThisThread && shared.reaped_here;
        let (accepted, wake_reaper) = shared.with_ring(|ring| {
            if shared.dead.load(Ordering::Acquire) {
                return (false, false);
            }
            ring.backlog.push_back(op);
            ring.start_backlog();
            if defer {
                // Completions already posted are answered now, without a system call.
                ring.reap();
                let first = !ring.flush_asked;
                ring.flush_asked = true;
                (true, first)
            } else {
                // What completed meanwhile (this op, if the kernel did it inline) is
                // answered now.
                ring.pump();
                (true, false)
            }
        });
        if wake_reaper {
            shared.flush.notify_one();
        }
        async move {
            if !accepted {
                return Err(io::Error::other("the io_uring engine has stopped"));
            }
            rx.await
                .map_err(|_| io::Error::other("the io_uring engine stopped during the operation"))?
        }
    }

    /// Reads exactly `len` bytes at `offset`; reading past the end is an error.
    pub fn read(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<Bytes>> + Send + 'static {
        self.read_aligned(file, offset, len, 1)
    }

    /// [`UringEngine::read`] into a buffer whose address is a multiple of `align` (a power of
    /// two), split (if at all) at multiples of it: what a descriptor opened with O_DIRECT
    /// needs, with `offset` and `len` multiples of the device's block size.
    pub fn read_aligned(
        &self,
        file: &Arc<File>,
        offset: u64,
        len: usize,
        align: usize,
    ) -> impl Future<Output = io::Result<Bytes>> + Send + 'static {
        let fut = (len > 0).then(|| {
            let buf = if align > 1 {
                aligned_empty(len, align)
            } else {
                BytesMut::with_capacity(len)
            };
            self.submit_aligned(Some(file), offset, Kind::Read { buf, want: len }, align)
        });
        async move {
            match fut {
                None => Ok(Bytes::new()),
                Some(fut) => Ok(fut.await?.unwrap_or_default()),
            }
        }
    }

    /// Writes all of `data` at `offset`; with `dsync` it is durable on completion (RWF_DSYNC).
    pub fn write(
        &self,
        file: &Arc<File>,
        offset: u64,
        data: Bytes,
        dsync: bool,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        self.write_aligned(file, offset, data, dsync, 1)
    }

    /// [`UringEngine::write`] split (if at all) at multiples of `align`: for a descriptor
    /// opened with O_DIRECT, whose `data` the caller has placed at an aligned address.
    pub fn write_aligned(
        &self,
        file: &Arc<File>,
        offset: u64,
        data: Bytes,
        dsync: bool,
        align: usize,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = if data.is_empty() && !dsync {
            None
        } else if data.is_empty() {
            Some(self.submit_aligned(Some(file), 0, Kind::Fdatasync, 1))
        } else {
            Some(self.submit_aligned(Some(file), offset, Kind::Write { data, dsync }, align))
        };
        async move {
            if let Some(fut) = fut {
                fut.await?;
            }
            Ok(())
        }
    }

    /// `fdatasync`.
    pub fn fdatasync(
        &self,
        file: &Arc<File>,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = self.submit(Some(file), 0, Kind::Fdatasync);
        async move { fut.await.map(|_| ()) }
    }

    /// `fallocate(mode, offset, len)`. Check [`UringEngine::supports_fallocate`] first.
    pub fn fallocate(
        &self,
        file: &Arc<File>,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = self.submit(Some(file), offset, Kind::Fallocate { mode, len });
        async move { fut.await.map(|_| ()) }
    }

    /// A round trip through the ring (tests; liveness checks).
    pub fn nop(&self) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let fut = self.submit(None, 0, Kind::Nop);
        async move { fut.await.map(|_| ()) }
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        let rings = std::mem::take(&mut *self.rings.lock().unwrap_or_else(|p| p.into_inner()));
        for ring in rings {
            ring.close();
        }
    }
}

/// Whose ring a submission goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ownership {
    /// The calling thread's own ring.
    ThisThread,
    /// The engine's ring, shared by threads that have none of their own.
    Shared,
}

/// Engines are told apart in [`LOCAL_RINGS`] by a number of their own.
static NEXT_ENGINE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's ring of each engine it submitted to.
    static LOCAL_RINGS: RefCell<LocalRings> = const { RefCell::new(LocalRings(Vec::new())) };
}

/// A thread's rings; when the thread exits, they are closed (their reapers finish what is in
/// flight and end).
struct LocalRings(Vec<(u64, Weak<Shared>)>);

impl Drop for LocalRings {
    fn drop(&mut self) {
        for (_, ring) in self.0.drain(..) {
            if let Some(ring) = ring.upgrade() {
                ring.close();
            }
        }
    }
}

/// Creates a ring with its reaper task on `runtime`, and proves it works by submitting a NOP.
/// Also answers whether the kernel's io_uring has IORING_OP_FALLOCATE.
fn open_ring(
    max_chunk: usize,
    runtime: &tokio::runtime::Handle,
) -> io::Result<(Arc<Shared>, bool)> {
    // Cooperative task running: the kernel runs a completion's work when the submitting
    // thread next enters or leaves the kernel (or wakes it if it sleeps) instead of
    // interrupting it with an IPI; runtime workers make system calls all the time.
    let mut ring: IoUring = IoUring::builder()
        .setup_coop_taskrun()
        .build(RING_ENTRIES)
        .or_else(|_| IoUring::builder().build(RING_ENTRIES))?;
    let nop = opcode::Nop::new().build().user_data(0);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("io_uring submission queue full at start"))?;
    ring.submit_and_wait(1)?;
    match ring.completion().next() {
        Some(cqe) if cqe.result() >= 0 => {}
        Some(cqe) => return Err(io::Error::from_raw_os_error(-cqe.result())),
        None => return Err(io::Error::other("io_uring NOP did not complete")),
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    let fallocate = probe.is_supported(opcode::Fallocate::CODE);
    let events = rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
    )?;
    ring.submitter()
        .register_eventfd(events.as_fd().as_raw_fd())?;
    let cap = (ring.params().cq_entries() as usize)
        .saturating_sub(1)
        .clamp(1, RING_ENTRIES as usize);
    let shared = Arc::new(Shared {
        ring: Mutex::new(Ring {
            ring: ManuallyDrop::new(ring),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            cap,
            backlog: VecDeque::new(),
            finished: Vec::new(),
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
            max_chunk,
            closed: false,
            entries: 0,
            flush_asked: false,
        }),
        events,
        dead: AtomicBool::new(false),
        reaped_here: runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread,
        flush: tokio::sync::Notify::new(),
    });
    let events = {
        // Registering with the reactor needs the runtime's context.
        let _entered = runtime.enter();
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: `Events` answers the raw fd of `Shared::events`, an `OwnedFd` that is
        // never replaced and stays open as long as the `Arc<Shared>` inside `Events`.
        unsafe { AsyncFd::register_with_interest(Events(shared.clone()), interest) }?
    };
    runtime.spawn(reap(events, Dead(shared.clone())));
    Ok((shared, fallocate))
}

/// Marks a ring dead when its reaper task ends, however it ends: the runtime may drop it
/// mid-way, or before it ever ran (so this is made before the task starts). Its thread then
/// gets a new ring; ops for it from elsewhere are refused.
struct Dead(Arc<Shared>);

impl Drop for Dead {
    fn drop(&mut self) {
        let backlog = {
            let mut ring = self.0.lock();
            self.0.dead.store(true, Ordering::Release);
            std::mem::take(&mut ring.backlog)
        };
        // Never submitted, so nothing of theirs is in the kernel: dropping their senders
        // tells the waiting callers that the engine stopped.
        drop(backlog);
    }
}

/// The reaper task: reaps completions whenever the kernel signals the eventfd, and submits
/// the SQEs its thread pushed when asked to, until every handle is gone and nothing is in
/// flight.
async fn reap(events: AsyncFd<Events>, dead: Dead) {
    let _dead = dead;
    let shared = events.get_ref().0.clone();
    loop {
        tokio::select! {
            // A notification that comes while the reaper is busy is kept (Notify's permit).
            () = shared.flush.notified() => {}
            ready = events.readable() => {
                let mut ready = match ready {
                    Ok(ready) => ready,
                    Err(e) => {
                        error!("io_uring engine: waiting for completions failed: {e}");
                        return;
                    }
                };
                ready.clear_ready();
                // Resets the counter, so that the descriptor reads as ready again only when
                // the kernel signals it anew (EAGAIN: already zero).
                let mut counter = [0u8; 8];
                let _ = rustix::io::read(&shared.events, &mut counter);
            }
        }
        let stop = shared.with_ring(|ring| {
            ring.flush_asked = false;
            // Completions reaped here may start backlog ops or the rest of short transfers.
            ring.pump();
            ring.closed && ring.in_flight == 0 && ring.backlog.is_empty()
        });
        if stop {
            return;
        }
    }
}

/// The ring and its in-flight table; only touched under [`Shared::ring`]'s lock.
struct Ring {
    /// Dropped only when nothing is in flight (see `Drop for Ring`).
    ring: ManuallyDrop<IoUring>,
    /// The in-flight table: `user_data` is the index.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Ops in `slots` (each has exactly one SQE in the kernel or about to be submitted).
    in_flight: usize,
    /// Most ops in flight at once, so that completions never overflow the CQ and SQEs never
    /// overflow the SQ.
    cap: usize,
    /// Ops waiting for room in the ring.
    backlog: VecDeque<Op>,
    /// Ops retired under the lock, answered once it is released (see `Shared::with_ring`).
    finished: Vec<(oneshot::Sender<Reply>, Reply)>,
    /// Reused buffer for the completions of one reap.
    cqes: Vec<(u64, i32)>,
    max_chunk: usize,
    /// Every handle is gone: finish what is in flight and stop.
    closed: bool,
    /// `io_uring_enter` calls that submitted something (tests count them).
    entries: u64,
    /// SQEs were pushed without `io_uring_enter` and the reaper was woken to submit them
    /// (see `UringEngine::submit_aligned`); it clears this when it enters the ring.
    flush_asked: bool,
}

impl Ring {
    /// Moves backlog ops into the table and pushes their SQEs while there is room.
    fn start_backlog(&mut self) {
        while self.in_flight < self.cap {
            let Some(op) = self.backlog.pop_front() else {
                break;
            };
            let idx = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            self.slots[idx] = Some(op);
            self.in_flight += 1;
            self.start(idx);
        }
    }

    /// Submits the pushed SQEs (`io_uring_enter`). A busy kernel (EBUSY, EAGAIN: completions
    /// to reap first) leaves them queued for the next entry (see `pump`).
    fn enter(&mut self) {
        for _ in 0..2 {
            if self.ring.submission().is_empty() {
                return;
            }
            self.entries += 1;
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return;
                }
                Err(e) => {
                    error!("io_uring_enter failed: {e}");
                    return;
                }
            }
        }
    }

    /// Submits what is pushed and handles every completion the kernel has posted, until
    /// neither is left: a completion may push more (the rest of a short transfer, backlog
    /// ops that now have room), and an op the kernel does inline completes in the entry
    /// that submits it. Stops when a round reaps nothing; SQEs a busy kernel refused then
    /// wait for the next round, which the completions it is busy with bring (the eventfd).
    fn pump(&mut self) {
        loop {
            self.enter();
            if !self.reap() {
                return;
            }
        }
    }

    /// Handles every completion the kernel has posted, without a system call, and starts the
    /// backlog ops that now have room (their SQEs are pushed, not submitted). Whether there
    /// were any.
    fn reap(&mut self) -> bool {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        let any = !cqes.is_empty();
        for &(user_data, result) in &cqes {
            self.complete(user_data as usize, result);
        }
        self.cqes = cqes;
        if any {
            // Room freed in the table: ops waiting for it go now.
            self.start_backlog();
        }
        any
    }

    /// Pushes one SQE. The SQ holds at most one SQE per op in the table and the table holds at
    /// most `cap` ≤ SQ size ops, so it has room; should it not, it is submitted first, and
    /// the op fails if there is still none (its SQE never reached the kernel).
    fn push(&mut self, idx: usize, sqe: &squeue::Entry) {
        for _ in 0..3 {
            // SAFETY: every SQE built here points only into memory owned by an op in
            // `self.slots` (or into nothing), which stays there, unmoved on the heap, until the
            // SQE's completion is reaped in `complete` (see the module comment).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                warn!("io_uring submit with a full submission queue failed: {e}");
            }
        }
        self.finish(
            idx,
            Err(io::Error::other("the io_uring submission queue is full")),
        );
    }

    /// Submits (or resubmits, for the rest of a short transfer) the op in slot `idx`.
    fn start(&mut self, idx: usize) {
        let Some(op) = self.slots[idx].as_mut() else {
            return;
        };
        let fd = types::Fd(op.file.as_ref().map_or(-1, |f| f.as_raw_fd()));
        // A piece of a direct transfer must stay a whole number of aligned units.
        let max = if op.align > 1 {
            (self.max_chunk / op.align).max(1) * op.align
        } else {
            self.max_chunk
        };
        let sqe = match &mut op.kind {
            Kind::Read { buf, want } => {
                let done = buf.len();
                let n = (*want - done).min(max) as u32;
                let spare = buf.spare_capacity_mut();
                opcode::Read::new(fd, spare.as_mut_ptr().cast::<u8>(), n)
                    .offset(op.offset + done as u64)
                    .build()
            }
            Kind::Write { data, dsync } => {
                let rest = &data[op.done..];
                let n = rest.len().min(max) as u32;
                opcode::Write::new(fd, rest.as_ptr(), n)
                    .offset(op.offset + op.done as u64)
                    .rw_flags(if *dsync { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            Kind::Fdatasync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Kind::Fallocate { mode, len } => opcode::Fallocate::new(fd, *len)
                .offset(op.offset)
                .mode(*mode)
                .build(),
            Kind::Nop => opcode::Nop::new().build(),
        };
        self.push(idx, &sqe.user_data(idx as u64));
    }

    /// Handles the completion of slot `idx`'s SQE.
    fn complete(&mut self, idx: usize, result: i32) {
        let Some(op) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            warn!("io_uring completion for an unknown op {idx}");
            return;
        };
        if result < 0 {
            let errno = -result;
            if matches!(errno, libc::EINTR | libc::EAGAIN | libc::ECANCELED) {
                self.start(idx);
            } else {
                self.finish(idx, Err(io::Error::from_raw_os_error(errno)));
            }
            return;
        }
        let n = result as usize;
        match &mut op.kind {
            Kind::Read { buf, want } => {
                if n == 0 {
                    self.finish(
                        idx,
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "read past the end of the medium",
                        )),
                    );
                    return;
                }
                let filled = (buf.len() + n).min(*want);
                // SAFETY: the kernel reported `n` bytes written into the spare capacity that
                // starts at `buf.len()`, so the first `filled` bytes are initialized; `filled`
                // never exceeds the capacity (`want`) the buffer was allocated with.
                unsafe { buf.set_len(filled) };
                if filled < *want {
                    self.start(idx);
                } else {
                    let data = std::mem::take(buf).freeze();
                    self.finish(idx, Ok(Some(data)));
                }
            }
            Kind::Write { data, .. } => {
                if n == 0 {
                    self.finish(
                        idx,
                        Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the medium accepted no data",
                        )),
                    );
                    return;
                }
                op.done = (op.done + n).min(data.len());
                if op.done < data.len() {
                    self.start(idx);
                } else {
                    self.finish(idx, Ok(None));
                }
            }
            Kind::Fdatasync | Kind::Fallocate { .. } | Kind::Nop => self.finish(idx, Ok(None)),
        }
    }

    /// Retires slot `idx`: the kernel is done with it, so its memory may go.
    fn finish(&mut self, idx: usize, result: Reply) {
        if let Some(op) = self.slots.get_mut(idx).and_then(Option::take) {
            self.free.push(idx);
            self.in_flight -= 1;
            self.finished.push((op.reply, result));
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // The runtime stopped (or a panic unwound) with ops in flight: the kernel may
            // still write into their buffers, so neither they nor the ring may be freed.
            std::mem::forget(std::mem::take(&mut self.slots));
        } else {
            // SAFETY: the ring is dropped once, here, and never used after; nothing is in
            // flight, so no memory of ours is still referenced by the kernel.
            unsafe { ManuallyDrop::drop(&mut self.ring) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{IoEngine, select_engine};
    use std::time::Duration;

    fn refused() -> io::Result<Arc<UringEngine>> {
        // What io_uring_setup answers under Docker's seccomp or kernel.io_uring_disabled = 2.
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    #[tokio::test]
    async fn auto_uses_io_uring_when_the_kernel_allows_it() {
        let engine = select_engine(IoEngine::Auto, UringEngine::new).unwrap();
        assert!(engine.is_some());
    }

    #[test]
    fn auto_falls_back_to_threads_when_io_uring_is_refused() {
        assert!(select_engine(IoEngine::Auto, refused).unwrap().is_none());
        let enosys = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(select_engine(IoEngine::Auto, enosys).unwrap().is_none());
    }

    #[tokio::test]
    async fn forced_io_uring_that_is_refused_is_a_clear_error() {
        let err = select_engine(IoEngine::IoUring, refused).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("io_uring is unavailable"), "{shown}");
        assert!(shown.contains("seccomp"), "{shown}");
        assert!(
            select_engine(IoEngine::IoUring, UringEngine::new)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn threads_never_probes() {
        let engine = select_engine(IoEngine::Threads, || -> io::Result<Arc<UringEngine>> {
            panic!("threads must not create a ring")
        });
        assert!(engine.unwrap().is_none());
    }

    #[test]
    fn outside_a_runtime_the_engine_is_a_clear_error() {
        let err = UringEngine::new().unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }

    #[tokio::test]
    async fn nops_round_trip_and_the_reaper_stops_after_the_last_op() {
        let engine = UringEngine::new().unwrap();
        engine.nop().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 8 << 20]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        // Leave reads in flight, drop their futures and the engine: the reaper finishes
        // them, then exits and releases the shared state.
        let pending: Vec<_> = (0..32)
            .map(|i| engine.read(&file, i << 18, 1 << 18))
            .collect();
        let rings: Vec<_> = engine
            .rings
            .lock()
            .unwrap()
            .iter()
            .map(Arc::downgrade)
            .collect();
        assert_eq!(rings.len(), 2, "the engine's own ring and this thread's");
        drop(pending);
        drop(engine);
        for _ in 0..500 {
            if rings.iter().all(|ring| ring.upgrade().is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the reaper did not stop");
    }

    /// Many tasks on two workers submit at once, each on the thread it runs on, with every
    /// transfer split into odd pieces (the rest is resubmitted by whoever reaps): each one's
    /// data comes back intact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submitters_on_several_threads_each_get_their_own_data() {
        for engine in [
            UringEngine::new().unwrap(),
            UringEngine::with_max_chunk(1000).unwrap(),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("f");
            std::fs::write(&path, vec![0u8; 64 * 4096]).unwrap();
            let file = Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap(),
            );
            let tasks: Vec<_> = (0..64u64)
                .map(|i| {
                    let (engine, file) = (engine.clone(), file.clone());
                    tokio::spawn(async move {
                        let data = Bytes::from(vec![i as u8 + 1; 4096]);
                        for _ in 0..20 {
                            engine.write(&file, i * 4096, data.clone(), false).await?;
                            let back = engine.read(&file, i * 4096, 4096).await?;
                            assert_eq!(back, data, "block {i}");
                        }
                        io::Result::Ok(())
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap().unwrap();
            }
        }
    }

    /// A runtime that shuts down under ops in flight leaves their memory to the kernel (it is
    /// leaked, not freed); the engine, still held elsewhere, then refuses work with an error
    /// instead of hanging.
    #[test]
    fn an_engine_whose_runtime_stopped_refuses_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 8 << 20]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = runtime.block_on(async {
            let engine = UringEngine::new().unwrap();
            let pending: Vec<_> = (0..32)
                .map(|i| engine.read(&file, i << 18, 1 << 18))
                .collect();
            drop(pending);
            engine
        });
        drop(runtime);
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = other.block_on(engine.nop()).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }

    /// On a current-thread runtime (a connection thread), the ops a task starts before it
    /// yields reach the kernel together, in one `io_uring_enter` made by the reaper, and each
    /// gets its own data back.
    #[tokio::test]
    async fn ops_started_together_on_a_threads_own_ring_share_one_entry() {
        let engine = UringEngine::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let blocks: Vec<u8> = (0..32u8).flat_map(|i| [i; 4096]).collect();
        std::fs::write(&path, &blocks).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        engine.nop().await.unwrap();
        let (ring, ownership) = engine.ring();
        assert_eq!(ownership, Ownership::ThisThread);
        assert!(ring.reaped_here);
        let before = ring.lock().entries;
        let reads: Vec<_> = (0..32u64)
            .map(|i| engine.read(&file, i * 4096, 4096))
            .collect();
        assert_eq!(
            ring.lock().entries,
            before,
            "submitted before the task yielded"
        );
        for (i, read) in reads.into_iter().enumerate() {
            assert_eq!(read.await.unwrap(), vec![i as u8; 4096], "block {i}");
        }
        assert_eq!(
            ring.lock().entries,
            before + 1,
            "one entry for the 32 reads"
        );
    }

    #[tokio::test]
    async fn errors_come_back_as_errors() {
        let engine = UringEngine::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"abc").unwrap();
        // Opened read-only: the kernel answers EBADF to a write.
        let file = Arc::new(File::open(&path).unwrap());
        let err = engine
            .write(&file, 0, Bytes::from_static(b"x"), false)
            .await
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(&engine.read(&file, 0, 3).await.unwrap()[..], b"abc");
    }
}
