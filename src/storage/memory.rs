//! A RAM-backed medium, for unit tests and benchmarks of the layers above storage.

use std::sync::Mutex;

use bytes::Bytes;

use super::{BlockBackend, Extent, IoFuture, push_extent};

/// Allocation is tracked per unit of this many bytes (thin provisioning).
const UNIT: u64 = 512;

#[derive(Debug)]
struct Medium {
    data: Vec<u8>,
    /// One flag per [`UNIT`]: written since creation or the last whole-unit discard.
    mapped: Vec<bool>,
}

/// A medium held in memory; its content is lost when dropped. It starts deallocated (all
/// zeros); writes map the units they touch and discards of whole units deallocate them.
#[derive(Debug)]
pub struct MemoryBackend {
    medium: Mutex<Medium>,
    size: u64,
}

impl MemoryBackend {
    pub fn new(size: u64) -> Self {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        let units = usize::try_from(size.div_ceil(UNIT)).unwrap_or(usize::MAX);
        MemoryBackend {
            medium: Mutex::new(Medium {
                data: vec![0; len],
                mapped: vec![false; units],
            }),
            size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Medium> {
        self.medium.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The units touched by a byte range, and the units it covers entirely.
fn units(range: &std::ops::Range<usize>) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let unit = UNIT as usize;
    let touched = range.start / unit..range.end.div_ceil(unit);
    let whole = range.start.div_ceil(unit)..range.end / unit;
    (touched, whole)
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
            let medium = self.lock();
            Ok(Bytes::copy_from_slice(&medium.data[range]))
        })
    }

    fn write_at(&self, offset: u64, payload: Bytes, _fua: bool) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let range = range(offset, payload.len(), self.size)?;
            let mut medium = self.lock();
            let (touched, _) = units(&range);
            medium.data[range].copy_from_slice(&payload);
            medium.mapped[touched].fill(true);
            Ok(())
        })
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn describe(&self) -> String {
        format!("memory ({} bytes)", self.size)
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        Box::pin(async move {
            let len = usize::try_from(len).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "discard too long")
            })?;
            let range = range(offset, len, self.size)?;
            let mut medium = self.lock();
            let (_, whole) = units(&range);
            medium.data[range].fill(0);
            medium.mapped[whole].fill(false);
            Ok(())
        })
    }

    fn allocation(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        Box::pin(async move {
            let len = usize::try_from(len).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "range too long")
            })?;
            let range = range(offset, len, self.size)?;
            let medium = self.lock();
            let mut extents = Vec::new();
            let mut at = range.start;
            while at < range.end {
                let unit = at / UNIT as usize;
                let next = ((unit + 1) * UNIT as usize).min(range.end);
                let mapped = medium.mapped.get(unit).copied().unwrap_or(true);
                push_extent(&mut extents, (next - at) as u64, mapped);
                at = next;
            }
            Ok(extents)
        })
    }

    fn discard_granularity(&self) -> u64 {
        UNIT
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

    #[tokio::test]
    async fn tracks_allocation_and_discards_to_zero() {
        let m = MemoryBackend::new(4096);
        let all_free = vec![Extent {
            len: 4096,
            mapped: false,
        }];
        assert_eq!(m.allocation(0, 4096).await.unwrap(), all_free);
        m.write_at(600, Bytes::from(vec![1u8; 1000]), false)
            .await
            .unwrap();
        // Bytes 600..1600 touch units 1, 2 and 3.
        assert_eq!(
            m.allocation(0, 4096).await.unwrap(),
            vec![
                Extent {
                    len: 512,
                    mapped: false
                },
                Extent {
                    len: 1536,
                    mapped: true
                },
                Extent {
                    len: 2048,
                    mapped: false
                },
            ]
        );
        // Discarding 700..2048 zeroes it all but only frees the whole units 2 and 3.
        m.discard(700, 1348).await.unwrap();
        assert_eq!(m.read_at(600, 100).await.unwrap(), vec![1u8; 100]);
        assert_eq!(m.read_at(700, 1348).await.unwrap(), vec![0u8; 1348]);
        assert_eq!(
            m.allocation(512, 1024).await.unwrap(),
            vec![
                Extent {
                    len: 512,
                    mapped: true
                },
                Extent {
                    len: 512,
                    mapped: false
                },
            ]
        );
        assert!(m.discard(4000, 100).await.is_err());
        assert!(m.allocation(4000, 100).await.is_err());
    }
}
