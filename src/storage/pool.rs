//! Reusable buffers for large reads. A fresh 1 MiB buffer per read costs a memset and, as
//! the allocator hands large blocks back to the kernel, a page fault per 4 KiB page: about a
//! sixth of keel's CPU on 1 MiB reads in a profile. A pooled buffer is allocated and zeroed
//! once, filled by the read, handed out as the Data-In payload (`Bytes`), and comes back to
//! the pool when the last reference to that payload is dropped.
//!
//! Every buffer starts on a page boundary, so a block device opened with O_DIRECT can read
//! into it (see [`super::file`]); [`aligned_empty`] makes such buffers for the io_uring
//! engine and for write data that must be copied to meet the same rule.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::{Bytes, BytesMut};

/// Alignment of every pooled buffer's first byte: a page, which is at least the memory
/// alignment any block device asks of O_DIRECT (its logical block size at most, 4 KiB for
/// the devices keel opens that way).
pub const BUFFER_ALIGN: usize = 4096;

/// An empty buffer with room for `len` bytes whose first byte is at an address that is a
/// multiple of `align` (a power of two). It over-allocates by `align - 1` bytes and starts
/// past the padding, so no `unsafe` allocation is needed.
pub fn aligned_empty(len: usize, align: usize) -> BytesMut {
    let align = align.max(1);
    let mut raw = BytesMut::with_capacity(len + align - 1);
    let pad = (raw.as_ptr() as usize).wrapping_neg() & (align - 1);
    // `pad < align <= capacity`: the split stays inside the allocation, and the part after
    // it keeps at least `len` bytes of capacity without moving.
    raw.split_off(pad)
}

/// Whether `data` starts at an address that is a multiple of `align` (a power of two).
pub fn is_aligned(data: &[u8], align: usize) -> bool {
    (data.as_ptr() as usize) & (align.max(1) - 1) == 0
}

/// Buffers are kept by size class: powers of two from `MIN_CLASS` up.
const MIN_CLASS: usize = 64 * 1024;
/// Classes above this are not pooled (a read that large is rare and would pin much memory).
const MAX_CLASS: usize = 8 * 1024 * 1024;
/// Idle bytes kept per class at most.
const IDLE_BYTES_PER_CLASS: usize = 16 * 1024 * 1024;

/// Idle buffers, by class.
#[derive(Debug, Default)]
pub struct BufferPool {
    classes: Mutex<Vec<Vec<Vec<u8>>>>,
}

impl BufferPool {
    pub fn new() -> Arc<BufferPool> {
        Arc::new(BufferPool::default())
    }

    fn class_of(len: usize) -> Option<usize> {
        let size = len.max(MIN_CLASS).next_power_of_two();
        (size <= MAX_CLASS).then(|| (size / MIN_CLASS).trailing_zeros() as usize)
    }

    /// A buffer of `len` bytes whose contents are left over from earlier use: the caller
    /// must overwrite every byte (or drop it) before handing it on.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuffer {
        let class = Self::class_of(len);
        let reused = class.and_then(|c| {
            self.classes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(c)
                .and_then(Vec::pop)
        });
        let buf = reused
            .unwrap_or_else(|| vec![0u8; class.map_or(len, |c| MIN_CLASS << c) + BUFFER_ALIGN]);
        // A Vec's heap block never moves while it is not resized: the offset stays right.
        let start = (buf.as_ptr() as usize).wrapping_neg() & (BUFFER_ALIGN - 1);
        PooledBuffer {
            buf,
            start,
            len,
            pool: class.map(|_| Arc::downgrade(self)),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let size = buf.len().saturating_sub(BUFFER_ALIGN);
        let Some(class) = Self::class_of(size).filter(|c| MIN_CLASS << c == size) else {
            return;
        };
        let mut classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
        if classes.len() <= class {
            classes.resize_with(class + 1, Vec::new);
        }
        let idle = &mut classes[class];
        if (idle.len() + 1) * size <= IDLE_BYTES_PER_CLASS {
            idle.push(buf);
        }
    }

    /// Idle buffers held, over all classes.
    pub fn idle(&self) -> usize {
        self.classes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(Vec::len)
            .sum()
    }
}

/// A buffer from the pool, `len` bytes long from `start` (the first page boundary in `buf`);
/// back to the pool when dropped.
#[derive(Debug)]
pub struct PooledBuffer {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: Option<Weak<BufferPool>>,
}

impl PooledBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// The buffer as a payload; it returns to the pool when the last clone is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.as_ref().and_then(Weak::upgrade) {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_payload_is_dropped() {
        let pool = BufferPool::new();
        let mut b = pool.take(1 << 20);
        b.as_mut_slice().fill(7);
        let bytes = b.into_bytes();
        assert_eq!(bytes.len(), 1 << 20);
        let half = bytes.slice(..4096);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a slice still holds it");
        assert!(half.iter().all(|&x| x == 7));
        drop(half);
        assert_eq!(pool.idle(), 1);
        // Reused, with the length asked for.
        let again = pool.take(300 * 1024);
        assert_eq!(again.as_ref().len(), 300 * 1024);
        assert_eq!(pool.idle(), 1, "300 KiB is another class than 1 MiB");
        let again = pool.take(1 << 20);
        assert_eq!(pool.idle(), 0);
        drop(again);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn idle_memory_is_bounded_and_huge_reads_are_not_pooled() {
        let pool = BufferPool::new();
        let many: Vec<_> = (0..40).map(|_| pool.take(1 << 20)).collect();
        drop(many);
        assert_eq!(pool.idle(), IDLE_BYTES_PER_CLASS / (1 << 20));
        drop(pool.take(16 << 20));
        assert_eq!(pool.idle(), IDLE_BYTES_PER_CLASS / (1 << 20));
        // A pool that is gone lets its buffers go.
        let b = pool.take(1 << 20);
        drop(pool);
        drop(b);
    }

    #[test]
    fn buffers_start_on_a_page_boundary_new_or_reused() {
        let pool = BufferPool::new();
        for len in [1, 4096, 65536, 300 * 1024, 1 << 20, 9 << 20] {
            let mut b = pool.take(len);
            assert!(is_aligned(b.as_mut_slice(), BUFFER_ALIGN), "{len}");
            assert_eq!(b.as_ref().len(), len);
            drop(b);
            let again = pool.take(len);
            assert!(is_aligned(again.as_ref(), BUFFER_ALIGN), "{len} reused");
            let bytes = again.into_bytes();
            assert!(is_aligned(&bytes, BUFFER_ALIGN));
        }
        assert!(pool.idle() > 0, "pooled sizes came back");
    }

    #[test]
    fn aligned_empty_buffers_hold_len_bytes_at_an_aligned_address() {
        for align in [1, 512, 4096] {
            for len in [1, 511, 4096, 1 << 20] {
                let mut b = aligned_empty(len, align);
                assert!(b.is_empty() && b.capacity() >= len, "{align} {len}");
                assert!(is_aligned(&b, align), "{align} {len}");
                let before = b.as_ptr();
                b.extend_from_slice(&vec![7u8; len]);
                assert_eq!(b.as_ptr(), before, "filling it does not move it");
                assert!(b.freeze().iter().all(|&x| x == 7));
            }
        }
        assert!(is_aligned(&[0u8; 0][..], 1));
    }
}
