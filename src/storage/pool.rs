//! Reusable buffers for large reads. A fresh 1 MiB buffer per read costs a memset and, as
//! the allocator hands large blocks back to the kernel, a page fault per 4 KiB page: about a
//! sixth of keel's CPU on 1 MiB reads in a profile. A pooled buffer is allocated and zeroed
//! once, filled by the read, handed out as the Data-In payload (`Bytes`), and comes back to
//! the pool when the last reference to that payload is dropped.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;

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
        let buf = reused.unwrap_or_else(|| vec![0u8; class.map_or(len, |c| MIN_CLASS << c)]);
        PooledBuffer {
            buf,
            len,
            pool: class.map(|_| Arc::downgrade(self)),
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        let Some(class) = Self::class_of(buf.len()).filter(|c| MIN_CLASS << c == buf.len()) else {
            return;
        };
        let mut classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
        if classes.len() <= class {
            classes.resize_with(class + 1, Vec::new);
        }
        let idle = &mut classes[class];
        if (idle.len() + 1) * buf.len() <= IDLE_BYTES_PER_CLASS {
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

/// A buffer from the pool, `len` bytes long; back to the pool when dropped.
#[derive(Debug)]
pub struct PooledBuffer {
    buf: Vec<u8>,
    len: usize,
    pool: Option<Weak<BufferPool>>,
}

impl PooledBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }

    /// The buffer as a payload; it returns to the pool when the last clone is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
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
}
