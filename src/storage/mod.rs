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
}
