//! The io_uring engine: one ring on a dedicated thread, fed through a queue, answering
//! through oneshot channels.
//!
//! Design (DESIGN.md §3: io_uring bridged into tokio did 200k+ IOPS vs ~110k for
//! `spawn_blocking`):
//!
//! - A tokio task calls [`UringEngine::read`] and friends. The call builds an [`Op`] that owns
//!   everything the kernel will touch (the file, the buffer), pushes it onto a shared queue and
//!   returns a future that only awaits a oneshot receiver. Nothing the kernel uses lives in that
//!   future, so dropping it (a cancelled command, a closed connection) frees nothing the kernel
//!   still writes to: the op finishes on the ring thread and its buffer is released there.
//! - The ring thread drains the queue, puts every queued op in the in-flight table (a slab
//!   indexed by `user_data`) and submits them all with one `io_uring_enter` (batching), then
//!   sleeps in the same call until a completion arrives. A producer wakes a sleeping thread by
//!   writing an eventfd the ring polls; producers skip that syscall while the thread is awake.
//! - Short reads and writes are completed by resubmitting the rest; EINTR/EAGAIN are retried.
//!   Reads and writes larger than Linux's per-call cap (MAX_RW_COUNT) are split the same way.
//! - Direct I/O (a descriptor opened with O_DIRECT, see `storage::file`): the caller gives the
//!   alignment the device demands; reads then land in a buffer that starts at such an
//!   address, and split transfers are split at multiples of it. Write data must already be
//!   aligned (the caller copies it when it is not).
//! - FUA is a write with `RWF_DSYNC`; flush is `IORING_OP_FSYNC` with `DATASYNC`; discard is
//!   `IORING_OP_FALLOCATE` (the caller falls back to zero-filling where it is not supported);
//!   block devices are discarded with the `BLKDISCARD` ioctl of `blkdev`, which both engines
//!   run on the blocking pool (io_uring has no discard op on Linux 6.1).
//!
//! This is the only module (with its `blkdev` submodule) where `unsafe` is allowed. The
//! invariant every block here relies on: an op whose SQE was pushed stays in `Ring::slots`
//! (heap buffers unmoved: moving a `BytesMut` or `Bytes` handle does not move its bytes) until
//! its CQE is reaped; the thread exits only with no op in flight, and on an abnormal exit (a
//! panic) the in-flight ops are leaked, not freed.

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use io_uring::{IoUring, opcode, squeue, types};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::pool::aligned_empty;

pub(crate) mod blkdev;

/// Submission queue size; the completion queue is twice as large.
const RING_ENTRIES: u32 = 256;
/// Linux caps one read or write at MAX_RW_COUNT (INT_MAX rounded down to a page).
const MAX_CHUNK: usize = 0x7fff_f000;
/// `user_data` of the eventfd poll that wakes the thread.
const WAKE: u64 = u64::MAX;

/// One io_uring and the thread that drives it. Shared by every backend that uses it; the
/// thread ends when the last handle is dropped and every op in flight has completed.
pub struct UringEngine {
    shared: Arc<Shared>,
    fallocate: bool,
}

impl fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UringEngine")
            .field("fallocate", &self.fallocate)
            .finish()
    }
}

/// State shared between the producers (tokio tasks) and the ring thread.
struct Shared {
    queue: Mutex<Queue>,
    /// The thread is (about to be) asleep in `io_uring_enter`: a producer must write `wake`.
    sleeping: AtomicBool,
    wake: OwnedFd,
}

#[derive(Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Every handle is gone: finish what is in flight and stop.
    closed: bool,
    /// The thread has stopped; new ops are refused instead of waiting forever.
    dead: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock leaves the queue consistent (push/drain only).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self) {
        // EAGAIN (counter saturated) still leaves the eventfd readable: the thread wakes.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
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
    /// or where an opcode the engine needs is missing.
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
        let mut ring: IoUring = IoUring::builder().build(RING_ENTRIES)?;
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
            (opcode::PollAdd::CODE, "POLL_ADD"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel's io_uring lacks IORING_OP_{name}"),
                ));
            }
        }
        let fallocate = probe.is_supported(opcode::Fallocate::CODE);
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            sleeping: AtomicBool::new(false),
            wake,
        });
        let cap = (ring.params().cq_entries() as usize)
            .saturating_sub(1)
            .max(1);
        let mut thread = Ring {
            ring,
            shared: shared.clone(),
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            cap: cap.min(RING_ENTRIES as usize),
            backlog: VecDeque::new(),
            poll_armed: false,
            max_chunk,
        };
        std::thread::Builder::new()
            .name("keel-uring".into())
            .spawn(move || thread.run())?;
        Ok(Arc::new(UringEngine { shared, fallocate }))
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
        let refused = {
            let mut q = self.shared.lock();
            if q.dead {
                true
            } else {
                q.ops.push_back(op);
                false
            }
        };
        if !refused && self.shared.sleeping.swap(false, Ordering::SeqCst) {
            self.shared.wake();
        }
        async move {
            if refused {
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
        self.shared.lock().closed = true;
        self.shared.wake();
    }
}

/// The ring thread's state.
struct Ring {
    ring: IoUring,
    shared: Arc<Shared>,
    /// The in-flight table: `user_data` is the index.
    slots: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Ops in `slots` (each has exactly one SQE in the kernel or about to be submitted).
    in_flight: usize,
    /// Most ops in flight at once, so that completions never overflow the CQ.
    cap: usize,
    /// Ops taken from the queue, waiting for room in the ring.
    backlog: VecDeque<Op>,
    poll_armed: bool,
    max_chunk: usize,
}

impl Ring {
    fn run(&mut self) {
        let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(RING_ENTRIES as usize * 2);
        loop {
            let closed = {
                let mut q = self.shared.lock();
                self.backlog.extend(q.ops.drain(..));
                q.closed
            };
            if closed && self.backlog.is_empty() && self.in_flight == 0 {
                break;
            }
            if !self.poll_armed && !closed {
                let poll = opcode::PollAdd::new(
                    types::Fd(self.shared.wake.as_fd().as_raw_fd()),
                    libc::POLLIN as u32,
                )
                .build()
                .user_data(WAKE);
                // A poll references no memory; the eventfd lives in `shared`, which this
                // thread keeps alive until after the ring is dropped.
                self.push(&poll);
                self.poll_armed = true;
            }
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
            // Sleep in io_uring_enter unless new work arrived meanwhile.
            self.shared.sleeping.store(true, Ordering::SeqCst);
            let want = if self.shared.lock().ops.is_empty() {
                1
            } else {
                0
            };
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => {
                    error!("io_uring_enter failed: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            self.shared.sleeping.store(false, Ordering::SeqCst);
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result())),
            );
            for &(user_data, result) in &cqes {
                if user_data == WAKE {
                    self.poll_armed = false;
                    let mut counter = [0u8; 8];
                    // Resets the counter; EAGAIN (already zero) is fine.
                    let _ = rustix::io::read(&self.shared.wake, &mut counter);
                } else {
                    self.complete(user_data as usize, result);
                }
            }
        }
    }

    /// Pushes one SQE, submitting first if the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: every SQE built here points only into memory owned by an op in
            // `self.slots` (or into nothing), which stays there, unmoved on the heap, until the
            // SQE's completion is reaped in `complete` (see the module comment).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                ) {
                    error!("io_uring submit failed: {e}; retrying");
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
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
        self.push(&sqe.user_data(idx as u64));
    }

    /// Handles the completion of slot `idx`'s SQE.
    fn complete(&mut self, idx: usize, result: i32) {
        let Some(op) = self.slots.get_mut(idx).and_then(Option::as_mut) else {
            warn!("io_uring completion for an unknown op {idx}");
            return;
        };
        if result < 0 {
            let errno = -result;
            if errno == libc::EINTR || errno == libc::EAGAIN {
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
            // The receiver is gone if the caller dropped its future: nothing to tell.
            let _ = op.reply.send(result);
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // Only reachable by unwinding from a panic: the kernel may still write into these
            // buffers, so they must never be freed. Leak them.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
        let mut q = self.shared.lock();
        q.dead = true;
        // Dropping their senders tells the waiting callers that the engine stopped.
        q.ops.clear();
        self.backlog.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{IoEngine, select_engine};

    fn refused() -> io::Result<Arc<UringEngine>> {
        // What io_uring_setup answers under Docker's seccomp or kernel.io_uring_disabled = 2.
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    #[test]
    fn auto_uses_io_uring_when_the_kernel_allows_it() {
        let engine = select_engine(IoEngine::Auto, UringEngine::new).unwrap();
        assert!(engine.is_some());
    }

    #[test]
    fn auto_falls_back_to_threads_when_io_uring_is_refused() {
        assert!(select_engine(IoEngine::Auto, refused).unwrap().is_none());
        let enosys = || Err(io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(select_engine(IoEngine::Auto, enosys).unwrap().is_none());
    }

    #[test]
    fn forced_io_uring_that_is_refused_is_a_clear_error() {
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

    #[tokio::test]
    async fn nops_round_trip_and_the_thread_stops_after_the_last_op() {
        let engine = UringEngine::new().unwrap();
        engine.nop().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 8 << 20]).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        // Leave reads in flight, drop their futures and the engine: the thread finishes
        // them, then exits and releases the shared state.
        let pending: Vec<_> = (0..32)
            .map(|i| engine.read(&file, i << 18, 1 << 18))
            .collect();
        let shared = Arc::downgrade(&engine.shared);
        drop(pending);
        drop(engine);
        for _ in 0..500 {
            if shared.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the ring thread did not stop");
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
