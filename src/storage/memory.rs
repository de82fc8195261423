//! A RAM-backed medium, for unit tests and benchmarks of the layers above storage.

use std::sync::Mutex;

use bytes::Bytes;

use super::{BlockBackend, IoFuture};

/// A medium held in memory; its content is lost when dropped.
#[derive(Debug)]
pub struct MemoryBackend {
    data: Mutex<Vec<u8>>,
    size: u64,
}

impl MemoryBackend {
    pub fn new(size: u64) -> Self {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        MemoryBackend {
            data: Mutex::new(vec![0; len]),
            size,
        }
    }
}

fn range(offset: u64, len: usize, size: u64) -> std::io::Result<std::ops::Range<usize>> {
    let end = offset.checked_add(len as u64).filter(|&end| end <= size);
    match end {
        Some(end) => Ok(offset as usize..end as usize),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "access beyond the end of the medium",
        )),
    }
}

impl BlockBackend for MemoryBackend {
    fn size_bytes(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            let range = range(offset, len, self.size)?;
            let data = self.data.lock().unwrap_or_else(|e| e.into_inner());
            Ok(Bytes::copy_from_slice(&data[range]))
        })
    }

    fn write_at(&self, offset: u64, payload: Bytes, _fua: bool) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let range = range(offset, payload.len(), self.size)?;
            let mut data = self.data.lock().unwrap_or_else(|e| e.into_inner());
            data[range].copy_from_slice(&payload);
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_back_what_was_written_and_refuses_the_end() {
        let m = MemoryBackend::new(4096);
        m.write_at(512, Bytes::from_static(b"hello"), false)
            .await
            .unwrap();
        assert_eq!(&m.read_at(512, 5).await.unwrap()[..], b"hello");
        assert!(m.read_at(4094, 4).await.is_err());
        assert!(
            m.write_at(u64::MAX, Bytes::from_static(b"x"), false)
                .await
                .is_err()
        );
    }
}
