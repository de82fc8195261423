//! The intent journal that makes WRITE ATOMIC atomic across a crash (SBC-4 §4.29: an atomic
//! write that does not complete leaves none of its logical blocks changed, or all of them).
//!
//! One slot per logical unit, a file `<data_dir>/atomic-writes/<NAA in hex>.journal` (the
//! same stable key as the APTPL reservation files). An atomic write:
//! 1. writes a record (header, data, CRC32C over both) into the slot and fdatasyncs it;
//! 2. writes the data in place and fdatasyncs the medium;
//! 3. empties the slot (truncates it to 0) and fdatasyncs it.
//!
//! A crash before 1 is durable leaves the slot empty or holding a torn record, which fails
//! its checksum and is ignored: none of the blocks changed. A crash after 1 leaves a valid
//! record, which [`AtomicJournal::recover`] writes in place again before the unit serves
//! anything: all of the blocks changed. Replaying is idempotent, so a crash during recovery
//! is recovered the same way.
//!
//! Encoding and decoding are pure ([`encode_header`], [`decode_record`]) and tested without
//! files.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::BlockBackend;

/// `KEELAWJ` and a NUL: keel atomic write journal.
pub const MAGIC: [u8; 8] = *b"KEELAWJ\0";
/// Format version; a record of another version is not replayed.
pub const VERSION: u32 = 1;
/// Bytes before the data.
pub const HEADER_LEN: usize = 64;
/// Largest data a record may carry: the most any WRITE ATOMIC may write (see
/// [`super::limits::MAX_ATOMIC_BYTES`]), so a huge slot file is refused before it is read.
pub const MAX_RECORD_DATA: u64 = super::limits::MAX_ATOMIC_BYTES;

/// What a record describes: `blocks` logical blocks of `block_size` bytes at `lba` of the
/// unit whose NAA designator is `unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub unit: [u8; 16],
    pub block_size: u32,
    pub lba: u64,
    pub blocks: u32,
}

impl RecordHeader {
    /// Bytes of data the record carries.
    pub fn data_len(&self) -> u64 {
        u64::from(self.blocks) * u64::from(self.block_size)
    }

    /// Byte offset of the data on the medium, `None` if it overflows.
    pub fn offset(&self) -> Option<u64> {
        self.lba.checked_mul(u64::from(self.block_size))
    }
}

/// A decoded, checksum-verified record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub data: Bytes,
}

/// Why a slot's content is not a record to replay.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("shorter than a record header ({0} bytes)")]
    Short(usize),
    #[error("no journal magic")]
    Magic,
    #[error("unknown version {0}")]
    Version(u32),
    #[error("written for another logical unit ({0})")]
    OtherUnit(String),
    #[error("block size {0} is not supported")]
    BlockSize(u32),
    #[error("record length {found} does not match its header ({expected} bytes)")]
    Length { expected: u64, found: u64 },
    #[error("checksum mismatch (torn or corrupt record)")]
    Checksum,
}

/// Layout (big endian): magic 0..8, version 8..12, header length 12..16, unit NAA 16..32,
/// block size 32..36, blocks 36..40, LBA 40..48, data length 48..56, reserved 56..60,
/// CRC32C of bytes 0..60 and the data 60..64.
pub fn encode_header(h: &RecordHeader, data: &[u8]) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_be_bytes());
    b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_be_bytes());
    b[16..32].copy_from_slice(&h.unit);
    b[32..36].copy_from_slice(&h.block_size.to_be_bytes());
    b[36..40].copy_from_slice(&h.blocks.to_be_bytes());
    b[40..48].copy_from_slice(&h.lba.to_be_bytes());
    b[48..56].copy_from_slice(&(data.len() as u64).to_be_bytes());
    let crc = checksum(&b[..60], data);
    b[60..64].copy_from_slice(&crc.to_be_bytes());
    b
}

fn checksum(header: &[u8], data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), data)
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Hex of a NAA designator, as the slot file is named.
pub fn unit_key(unit: &[u8; 16]) -> String {
    unit.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes the whole content of a slot written for `unit`. An empty slot is `Ok(None)`.
pub fn decode_record(bytes: &Bytes, unit: &[u8; 16]) -> Result<Option<Record>, Invalid> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < HEADER_LEN {
        return Err(Invalid::Short(bytes.len()));
    }
    if field::<8>(bytes, 0) != MAGIC {
        return Err(Invalid::Magic);
    }
    let version = u32::from_be_bytes(field(bytes, 8));
    let header_len = u32::from_be_bytes(field(bytes, 12));
    if version != VERSION || header_len as usize != HEADER_LEN {
        return Err(Invalid::Version(version));
    }
    let header = RecordHeader {
        unit: field(bytes, 16),
        block_size: u32::from_be_bytes(field(bytes, 32)),
        blocks: u32::from_be_bytes(field(bytes, 36)),
        lba: u64::from_be_bytes(field(bytes, 40)),
    };
    let data_len = u64::from_be_bytes(field(bytes, 48));
    let found = (bytes.len() - HEADER_LEN) as u64;
    if data_len != header.data_len() || found != data_len {
        return Err(Invalid::Length {
            expected: header.data_len(),
            found,
        });
    }
    let crc = u32::from_be_bytes(field(bytes, 60));
    let data = bytes.slice(HEADER_LEN..);
    if checksum(&bytes[..60], &data) != crc {
        return Err(Invalid::Checksum);
    }
    // Only a record that checks out is judged on its content.
    if &header.unit != unit {
        return Err(Invalid::OtherUnit(unit_key(&header.unit)));
    }
    if !header.block_size.is_power_of_two() || !(512..=65536).contains(&header.block_size) {
        return Err(Invalid::BlockSize(header.block_size));
    }
    Ok(Some(Record { header, data }))
}

/// What [`AtomicJournal::recover`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// No record: the last atomic write completed (or there never was one).
    Empty,
    /// A valid record was written in place again.
    Replayed { lba: u64, blocks: u32 },
    /// The slot held something that is not a valid record (an atomic write that crashed
    /// before its record was durable); it was discarded.
    Ignored(Invalid),
}

/// The journal slot of one logical unit. Holding [`AtomicJournal::lock`] is the right to use
/// the slot: atomic writes of a unit run one at a time.
#[derive(Debug)]
pub struct AtomicJournal {
    dir: PathBuf,
    path: PathBuf,
    unit: [u8; 16],
    /// The open slot file (opened on first use), and the serialization of atomic writes.
    slot: tokio::sync::Mutex<Option<Arc<File>>>,
}

/// The slot, held by one atomic write at a time.
pub type SlotGuard<'a> = tokio::sync::MutexGuard<'a, Option<Arc<File>>>;

impl AtomicJournal {
    /// The slot of the unit with NAA designator `unit` under `data_dir`. Nothing is created
    /// until the first atomic write.
    pub fn new(data_dir: &Path, unit: [u8; 16]) -> Self {
        let dir = data_dir.join("atomic-writes");
        let path = dir.join(format!("{}.journal", unit_key(&unit)));
        AtomicJournal {
            dir,
            path,
            unit,
            slot: tokio::sync::Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn unit(&self) -> [u8; 16] {
        self.unit
    }

    /// Waits for the slot.
    pub async fn lock(&self) -> SlotGuard<'_> {
        self.slot.lock().await
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(io::Error::other)?
    }

    /// Writes `record` into the slot and makes it durable (step 1).
    pub async fn write(
        &self,
        slot: &mut SlotGuard<'_>,
        header: RecordHeader,
        data: Bytes,
    ) -> io::Result<()> {
        let file = match slot.as_ref() {
            Some(file) => Arc::clone(file),
            None => {
                let (dir, path) = (self.dir.clone(), self.path.clone());
                let file = Arc::new(Self::blocking(move || open_slot(&dir, &path)).await?);
                **slot = Some(Arc::clone(&file));
                file
            }
        };
        Self::blocking(move || {
            let head = encode_header(&header, &data);
            file.set_len(0)?;
            file.write_all_at(&head, 0)?;
            file.write_all_at(&data, HEADER_LEN as u64)?;
            file.sync_data()
        })
        .await
    }

    /// Empties the slot durably (step 3).
    pub async fn clear(&self, slot: &mut SlotGuard<'_>) -> io::Result<()> {
        match slot.as_ref() {
            Some(file) => {
                let file = Arc::clone(file);
                Self::blocking(move || {
                    file.set_len(0)?;
                    file.sync_data()
                })
                .await
            }
            None => {
                let path = self.path.clone();
                Self::blocking(move || clear_path(&path)).await
            }
        }
    }

    /// Run when the unit is opened, before it serves anything: replays a valid record onto
    /// `backend` (durably), discards an invalid one with a log line, and leaves the slot
    /// empty. Fails only when the slot or the medium cannot be read or written: then the
    /// unit must not be served, since the record may be all that holds a completed write.
    pub async fn recover(&self, backend: &dyn BlockBackend) -> io::Result<Recovery> {
        let path = self.path.clone();
        let content = Self::blocking(move || read_slot(&path)).await?;
        let Some(content) = content else {
            return Ok(Recovery::Empty);
        };
        let outcome = match content.and_then(|bytes| {
            decode_record(&bytes, &self.unit)?.map_or(Ok(None), |r| check_fits(r, backend))
        }) {
            Ok(None) => return Ok(Recovery::Empty),
            Err(why) => {
                tracing::warn!(
                    journal = %self.path.display(), %why,
                    "ignoring an invalid atomic write journal record (an atomic write that \
                     did not complete: none of its blocks were written)"
                );
                Recovery::Ignored(why)
            }
            Ok(Some(record)) => {
                let h = record.header;
                let offset = h.offset().unwrap_or(u64::MAX);
                backend.write_at(offset, record.data, true).await?;
                backend.flush().await?;
                tracing::info!(
                    journal = %self.path.display(), lba = h.lba, blocks = h.blocks,
                    "replayed an interrupted atomic write from the journal"
                );
                Recovery::Replayed {
                    lba: h.lba,
                    blocks: h.blocks,
                }
            }
        };
        let mut slot = self.lock().await;
        self.clear(&mut slot).await?;
        Ok(outcome)
    }
}

/// A record that would not fit the medium is not replayed (the medium shrank, or the file
/// belongs elsewhere).
fn check_fits(record: Record, backend: &dyn BlockBackend) -> Result<Option<Record>, Invalid> {
    let fits = record
        .header
        .offset()
        .and_then(|o| o.checked_add(record.header.data_len()))
        .is_some_and(|end| end <= backend.size_bytes());
    if fits {
        Ok(Some(record))
    } else {
        Err(Invalid::Length {
            expected: record.header.data_len(),
            found: backend.size_bytes(),
        })
    }
}

/// Opens (creating) the slot file; a new file's directory entry is made durable, or a
/// record written into it could vanish with it in a crash.
fn open_slot(dir: &Path, path: &Path) -> io::Result<File> {
    let existed = path.exists();
    if !existed {
        fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if !existed {
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(file)
}

/// The slot's content: `None` when there is no slot file, `Some(Err)` when it is too large to
/// be a record (not read).
fn read_slot(path: &Path) -> io::Result<Option<Result<Bytes, Invalid>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > HEADER_LEN as u64 + MAX_RECORD_DATA {
        return Ok(Some(Err(Invalid::Length {
            expected: MAX_RECORD_DATA,
            found: len,
        })));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(Some(Ok(Bytes::from(buf))))
}

fn clear_path(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            file.set_len(0)?;
            file.sync_data()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryBackend;

    const UNIT: [u8; 16] = [
        0x60, 0xA4, 0xB4, 0x50, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    fn header(lba: u64, blocks: u32) -> RecordHeader {
        RecordHeader {
            unit: UNIT,
            block_size: 512,
            lba,
            blocks,
        }
    }

    fn record_bytes(h: &RecordHeader, data: &[u8]) -> Bytes {
        let mut v = encode_header(h, data).to_vec();
        v.extend_from_slice(data);
        Bytes::from(v)
    }

    fn data(blocks: usize, seed: u8) -> Vec<u8> {
        (0..blocks * 512)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let h = header(1 << 40, 3);
        let d = data(3, 7);
        let bytes = record_bytes(&h, &d);
        assert_eq!(bytes.len(), HEADER_LEN + 3 * 512);
        assert_eq!(&bytes[0..8], b"KEELAWJ\0");
        let r = decode_record(&bytes, &UNIT).unwrap().unwrap();
        assert_eq!(r.header, h);
        assert_eq!(r.data, d);
        assert_eq!(decode_record(&Bytes::new(), &UNIT), Ok(None));
    }

    #[test]
    fn torn_and_foreign_records_are_rejected() {
        let h = header(8, 2);
        let good = record_bytes(&h, &data(2, 1));
        // Torn: cut anywhere, or the tail never reached the disk (zeros).
        for cut in [1, 10, HEADER_LEN - 1] {
            assert_eq!(
                decode_record(&good.slice(..cut), &UNIT),
                Err(Invalid::Short(cut))
            );
        }
        for cut in [HEADER_LEN, HEADER_LEN + 511, good.len() - 1] {
            assert!(matches!(
                decode_record(&good.slice(..cut), &UNIT),
                Err(Invalid::Length { .. })
            ));
        }
        let mut zero_tail = good.to_vec();
        zero_tail[HEADER_LEN + 600..].fill(0);
        assert_eq!(
            decode_record(&Bytes::from(zero_tail), &UNIT),
            Err(Invalid::Checksum)
        );
        // Any flipped bit, in the header or the data.
        for at in [0, 9, 17, 33, 41, 50, 61, HEADER_LEN, good.len() - 1] {
            let mut flipped = good.to_vec();
            flipped[at] ^= 0x04;
            assert!(
                decode_record(&Bytes::from(flipped), &UNIT).is_err(),
                "bit flip at {at} accepted"
            );
        }
        // A valid record of another unit.
        let mut other = UNIT;
        other[15] ^= 1;
        assert!(matches!(
            decode_record(&good, &other),
            Err(Invalid::OtherUnit(_))
        ));
        // A new version is not replayed by this one.
        let mut v2 = good.to_vec();
        v2[11] = 2;
        assert_eq!(
            decode_record(&Bytes::from(v2), &UNIT),
            Err(Invalid::Version(2))
        );
    }

    #[tokio::test]
    async fn write_recover_replays_once_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let journal = AtomicJournal::new(dir.path(), UNIT);
        let backend = MemoryBackend::new(1 << 20);
        assert_eq!(journal.recover(&backend).await.unwrap(), Recovery::Empty);
        let d = Bytes::from(data(4, 9));
        {
            let mut slot = journal.lock().await;
            journal
                .write(&mut slot, header(16, 4), d.clone())
                .await
                .unwrap();
        }
        // A crash here: the record is durable, the medium untouched.
        assert_eq!(
            fs::metadata(journal.path()).unwrap().len(),
            (HEADER_LEN + 2048) as u64
        );
        assert_eq!(
            journal.recover(&backend).await.unwrap(),
            Recovery::Replayed { lba: 16, blocks: 4 }
        );
        assert_eq!(backend.read_at(16 * 512, 2048).await.unwrap(), d);
        assert_eq!(fs::metadata(journal.path()).unwrap().len(), 0);
        // Replaying is idempotent: the same record again gives the same medium.
        let mut slot = journal.lock().await;
        journal
            .write(&mut slot, header(16, 4), d.clone())
            .await
            .unwrap();
        drop(slot);
        journal.recover(&backend).await.unwrap();
        assert_eq!(backend.read_at(16 * 512, 2048).await.unwrap(), d);
        assert_eq!(backend.read_at(15 * 512, 512).await.unwrap(), vec![0; 512]);
        assert_eq!(backend.read_at(20 * 512, 512).await.unwrap(), vec![0; 512]);
        assert_eq!(journal.recover(&backend).await.unwrap(), Recovery::Empty);
    }

    #[tokio::test]
    async fn torn_slots_are_ignored_and_cleared_without_touching_the_medium() {
        let dir = tempfile::tempdir().unwrap();
        let journal = AtomicJournal::new(dir.path(), UNIT);
        let backend = MemoryBackend::new(1 << 20);
        let good = record_bytes(&header(0, 2), &data(2, 3));
        fs::create_dir_all(dir.path().join("atomic-writes")).unwrap();
        fs::write(journal.path(), &good[..good.len() - 100]).unwrap();
        assert!(matches!(
            journal.recover(&backend).await.unwrap(),
            Recovery::Ignored(Invalid::Length { .. })
        ));
        assert_eq!(backend.read_at(0, 1024).await.unwrap(), vec![0; 1024]);
        assert_eq!(fs::metadata(journal.path()).unwrap().len(), 0);
        // Beyond the end of the medium: not replayed.
        let far = record_bytes(&header(2048, 1), &data(1, 3));
        fs::write(journal.path(), &far).unwrap();
        assert!(matches!(
            journal.recover(&backend).await.unwrap(),
            Recovery::Ignored(Invalid::Length { .. })
        ));
        // Too large to be a record: not even read.
        fs::File::create(journal.path())
            .unwrap()
            .set_len(HEADER_LEN as u64 + MAX_RECORD_DATA + 1)
            .unwrap();
        assert!(matches!(
            journal.recover(&backend).await.unwrap(),
            Recovery::Ignored(Invalid::Length { .. })
        ));
    }
}
