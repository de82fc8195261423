//! A PDU's data segment as the writer gets it: bytes in memory, or a range of a file whose
//! pages the writer hands to the socket with sendfile(2), so read data never passes through
//! a user-space buffer (RFC 7143 leaves how a target fills Data-In to the target).
//!
//! Nothing here reads the file; the connection's writer does, when the PDU's turn comes.

use std::any::Any;
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

/// `len` bytes of `file` at `offset`, with whatever must stay held until they are sent.
#[derive(Clone)]
pub struct FileSlice {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
    /// Dropped when the last PDU cut from this slice is gone: the logical unit's guard, so
    /// no WRITE ATOMIC lands in the range while its pages are being sent.
    pub hold: Arc<dyn Any + Send + Sync>,
}

impl FileSlice {
    /// `len` bytes at `start` within this slice (both checked by the caller).
    pub fn slice(&self, start: usize, len: usize) -> FileSlice {
        debug_assert!(start + len <= self.len);
        FileSlice {
            file: self.file.clone(),
            offset: self.offset + start as u64,
            len,
            hold: self.hold.clone(),
        }
    }
}

impl std::fmt::Debug for FileSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlice")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl PartialEq for FileSlice {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.offset == other.offset && self.len == other.len
    }
}

impl Eq for FileSlice {}

/// A data segment: in memory, or still in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Bytes(Bytes),
    File(FileSlice),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::File(f) => f.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, when they are in memory.
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Payload::Bytes(b) => Some(b),
            Payload::File(_) => None,
        }
    }

    /// `len` bytes at `start` (checked by the caller).
    pub fn slice(&self, start: usize, len: usize) -> Payload {
        match self {
            Payload::Bytes(b) => Payload::Bytes(b.slice(start..start + len)),
            Payload::File(f) => Payload::File(f.slice(start, len)),
        }
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::Bytes(Bytes::new())
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Payload::Bytes(bytes)
    }
}
