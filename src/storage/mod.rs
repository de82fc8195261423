//! Block backends behind one async trait.
//!
//! The SCSI layer sees a logical unit's medium only through [`BlockBackend`]: byte-addressed
//! reads, writes and flushes that never block the tokio runtime. Backends here: regular files
//! and block devices ([`file::FileBackend`], blocking syscalls on tokio's bounded blocking
//! pool) and RAM ([`memory::MemoryBackend`], for tests). The io_uring engine arrives with the
//! performance work behind the same trait.

pub mod file;
pub mod memory;

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;

pub use file::FileBackend;
pub use memory::MemoryBackend;

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

    /// A short description for logs, e.g. the path.
    fn describe(&self) -> String;

    // --- thin provisioning (issue3-sbc) ---

    /// Whether [`BlockBackend::discard`] can release space. Backends that answer false are
    /// reported fully provisioned (LBPME = 0) and never see UNMAP.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Deallocates `len` bytes at `offset`. Backends that support it guarantee that the range
    /// reads back as zeros afterwards (that is what keel reports as LBPRZ = 1, SBC-4 §4.7.4.2):
    /// a backend that cannot free space for part of the range zero-fills that part instead.
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
    // --- end thin provisioning (issue3-sbc) ---
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
