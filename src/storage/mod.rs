//! Block backends behind one async trait.
//!
//! The SCSI layer sees a logical unit's medium only through [`BlockBackend`]: byte-addressed
//! reads, writes and flushes that never block the tokio runtime. Backends here: regular files
//! and block devices ([`file::FileBackend`], blocking syscalls on tokio's bounded blocking
//! pool, or an io_uring engine: [`uring::UringEngine`]) and RAM ([`memory::MemoryBackend`],
//! for tests). [`select_engine`] picks the engine at start.

pub mod device;
pub mod file;
pub mod memory;
pub mod pool;
pub mod uring;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub use file::{DirectIo, FileBackend};
pub use memory::MemoryBackend;
pub use uring::UringEngine;

/// Which engine serves file and block-device I/O (`io_engine` in `[server]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// io_uring when the kernel allows it, else the thread pool.
    #[default]
    Auto,
    /// io_uring, or fail to start.
    IoUring,
    /// Blocking syscalls on tokio's bounded blocking pool.
    Threads,
}

impl IoEngine {
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Auto => "auto",
            IoEngine::IoUring => "io_uring",
            IoEngine::Threads => "threads",
        }
    }
}

/// Picks the storage engine once at start: `open` creates the ring (normally
/// [`UringEngine::new`]; tests pass one that refuses). `Ok(None)` means the thread pool.
/// "auto" falls back (logging why, once); "io_uring" fails with a clear message instead.
pub fn select_engine(
    mode: IoEngine,
    open: impl FnOnce() -> io::Result<Arc<UringEngine>>,
) -> anyhow::Result<Option<Arc<UringEngine>>> {
    match mode {
        IoEngine::Threads => Ok(None),
        IoEngine::IoUring => match open() {
            Ok(engine) => Ok(Some(engine)),
            Err(e) => Err(anyhow::anyhow!(
                "io_engine = \"io_uring\" but io_uring is unavailable: {e} (the kernel may lack \
                 it, a seccomp profile such as Docker's may block it, or kernel.io_uring_disabled \
                 may be set); use io_engine = \"auto\" or \"threads\""
            )),
        },
        IoEngine::Auto => match open() {
            Ok(engine) => Ok(Some(engine)),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); storage I/O uses the thread pool");
                Ok(None)
            }
        },
    }
}

/// A boxed future returned by backend operations (the trait is object safe).
pub type IoFuture<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// The medium behind a logical unit. Offsets and lengths are in bytes; the SCSI layer has
/// already checked them against [`BlockBackend::size_bytes`].
pub trait BlockBackend: Send + Sync + std::fmt::Debug {
    /// Capacity in bytes.
    fn size_bytes(&self) -> u64;

    /// Reads exactly `len` bytes at `offset`. Reading past the end is an error.
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes>;

    /// Writes `data` at `offset`. With `fua` the data is on stable storage when the future
    /// completes (SBC-3 FUA bit); without it, it may sit in a volatile cache until
    /// [`BlockBackend::flush`].
    fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()>;

    /// Makes every completed write durable (SYNCHRONIZE CACHE; fdatasync for files).
    fn flush(&self) -> IoFuture<'_, ()>;

    /// Whether writes are refused by the medium itself (opened read-only).
    fn read_only(&self) -> bool {
        false
    }

    /// The file whose pages are the medium, when read data may go from them to a socket
    /// directly (sendfile) instead of through a buffer: a regular file on tmpfs or ramfs,
    /// whose pages are memory, so sending never waits for a disk. Offsets are the backend's.
    fn sendable_file(&self) -> Option<Arc<std::fs::File>> {
        None
    }

    /// A short description for logs, e.g. the path.
    fn describe(&self) -> String;

    /// Grows the medium to `bytes` while it serves and returns its new size. Never shrinks
    /// (data would be lost): a smaller size is refused. The default: not resizable.
    fn grow_to(&self, bytes: u64) -> IoFuture<'_, u64> {
        let _ = bytes;
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this medium cannot be resized",
            ))
        })
    }

    /// Whether [`BlockBackend::discard`] can release space. Backends that answer false are
    /// reported fully provisioned (LBPME = 0) and never see UNMAP.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Deallocates `len` bytes at `offset`. When [`Provisioning::discard_zeroes`] is set, the
    /// range reads back as zeros afterwards (what keel reports as LBPRZ = 1, SBC-4 §4.7.4.2):
    /// a backend that cannot free space for part of the range zero-fills that part instead.
    /// Without it, what the range reads back as is up to the device (LBPRZ = 0).
    fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        let _ = (offset, len);
        Box::pin(async {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "discard is not supported by this backend",
            ))
        })
    }

    /// The allocation state of `len` bytes at `offset`, as consecutive extents covering the
    /// range in order (GET LBA STATUS, SBC-4 §5.8). The default: everything is mapped.
    fn allocation(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        let _ = offset;
        Box::pin(async move { Ok(vec![Extent { len, mapped: true }]) })
    }

    /// Granularity in bytes at which [`BlockBackend::discard`] really frees space (the file
    /// system block size); smaller discards only zero.
    fn discard_granularity(&self) -> u64 {
        4096
    }

    /// What the medium can do about deallocation, for READ CAPACITY(16) and the block limits
    /// and logical block provisioning VPD pages. The default: what
    /// [`BlockBackend::supports_discard`] and [`BlockBackend::discard_granularity`] say, with
    /// discarded ranges reading back as zeros.
    fn provisioning(&self) -> Provisioning {
        Provisioning {
            discard: self.supports_discard(),
            discard_zeroes: true,
            granularity: self.discard_granularity(),
            alignment: 0,
            io_granularity: 0,
        }
    }
}

/// A medium's provisioning capabilities (see [`BlockBackend::provisioning`]); the SCSI layer
/// maps them to LBPME/LBPRZ, LBPU/LBPWS/LBPWS10 and the UNMAP and transfer granularities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Provisioning {
    /// [`BlockBackend::discard`] releases space (thin provisioning: LBPME, UNMAP).
    pub discard: bool,
    /// Discarded ranges read back as zeros (LBPRZ; WRITE SAME with UNMAP may deallocate).
    pub discard_zeroes: bool,
    /// Bytes: space is released in whole aligned granules of this size.
    pub granularity: u64,
    /// Bytes: the offset in the medium of the first granule boundary (a partition that does
    /// not start on one), below `granularity`.
    pub alignment: u64,
    /// Bytes: transfers that are not a multiple of this may be slow (a read-modify-write
    /// below it): a block device's preferred minimum I/O size, e.g. a zvol's volblocksize.
    /// 0 if unknown.
    pub io_granularity: u64,
}

impl Provisioning {
    /// A medium that cannot deallocate anything.
    pub const FULLY_PROVISIONED: Provisioning = Provisioning {
        discard: false,
        discard_zeroes: false,
        granularity: 0,
        alignment: 0,
        io_granularity: 0,
    };
}

/// A run of bytes with one allocation state (see [`BlockBackend::allocation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Backed by storage (`true`) or deallocated, reading as zeros (`false`).
    pub mapped: bool,
}

/// Appends an extent to `extents`, merging it into the last one when the state is the same.
pub fn push_extent(extents: &mut Vec<Extent>, len: u64, mapped: bool) {
    if len == 0 {
        return;
    }
    match extents.last_mut() {
        Some(last) if last.mapped == mapped => last.len += len,
        _ => extents.push(Extent { len, mapped }),
    }
}
