//! WRITE ATOMIC(16) end to end: what the block limits page and READ CAPACITY(16) announce,
//! data that survives a restart, and the intent journal's recovery at start (a valid record
//! is replayed, a corrupt one ignored with a log line).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{Initiator, Keel, TARGET, pattern};
use keel::scsi::{LuIdentity, RecordHeader, encode_header, unit_key};

const LUN: &str = "physical_block_size = 4096";

/// Everything keel logs in this test binary (one global subscriber, installed once).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init();
        buffer
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_atomic16(lba: u64, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9C;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

async fn session(keel: &Keel) -> Initiator {
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    i
}

async fn read(i: &mut Initiator, lba: u32, blocks: u16) -> Vec<u8> {
    let r = i.read10(lba, blocks).await;
    assert_eq!(r.status, 0);
    r.data
}

fn journal_path(dir: &std::path::Path) -> std::path::PathBuf {
    let naa = LuIdentity::derived(TARGET, 0).naa;
    dir.join("atomic-writes")
        .join(format!("{}.journal", unit_key(&naa)))
}

/// A journal record for LUN 0 of [`TARGET`].
fn record(lba: u64, data: &[u8]) -> Vec<u8> {
    let header = RecordHeader {
        unit: LuIdentity::derived(TARGET, 0).naa,
        block_size: 512,
        lba,
        blocks: (data.len() / 512) as u32,
    };
    let mut bytes = encode_header(&header, data).to_vec();
    bytes.extend_from_slice(data);
    bytes
}

#[tokio::test]
async fn limits_are_announced_and_atomic_writes_survive_a_restart() {
    let keel = Keel::start_in(tempfile::tempdir().unwrap(), "4MiB", LUN).await;
    let mut i = session(&keel).await;
    // READ CAPACITY(16): 8 logical blocks per physical block, lowest aligned LBA 0.
    let rc = i
        .scsi(
            0,
            &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            32,
            None,
        )
        .await;
    assert_eq!(
        rc.data[13] & 0x0F,
        3,
        "LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT"
    );
    assert_eq!(
        (rc.data[14] & 0x3F, rc.data[15]),
        (0, 0),
        "LOWEST ALIGNED LBA"
    );
    // Block limits: MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC ALIGNMENT, GRANULARITY.
    let bl = i.scsi(0, &[0x12, 1, 0xB0, 0, 64, 0], 64, None).await;
    assert_eq!(bl.status, 0);
    let be32 = |at: usize| u32::from_be_bytes(bl.data[at..at + 4].try_into().unwrap());
    assert_eq!((be32(44), be32(48), be32(52)), (2048, 8, 8));
    assert_eq!((be32(56), be32(60)), (0, 0));
    assert!(be32(44) <= be32(8), "within MAXIMUM TRANSFER LENGTH");

    let data = pattern(256 * 512, 7);
    let r = i.scsi(0, &write_atomic16(8, 256), 0, Some(&data)).await;
    assert_eq!(r.status, 0, "{:?}", r.sense_triple());
    // Misaligned: INVALID FIELD IN CDB, nothing written.
    let r = i
        .scsi(0, &write_atomic16(1, 8), 0, Some(&[0xEE; 8 * 512]))
        .await;
    assert_eq!((r.status, r.sense_triple()), (2, (5, 0x24, 0)));
    assert_eq!(read(&mut i, 8, 256).await, data);
    assert_eq!(read(&mut i, 0, 8).await, vec![0u8; 8 * 512]);
    drop(i);
    let dir = keel.stop().await;
    // The journal slot is empty once the write completed.
    assert_eq!(
        std::fs::metadata(journal_path(dir.path())).unwrap().len(),
        0
    );

    let keel = Keel::start_in(dir, "4MiB", LUN).await;
    let mut i = session(&keel).await;
    assert_eq!(read(&mut i, 8, 256).await, data);
    drop(i);
    keel.stop().await;
}

#[tokio::test]
async fn a_valid_journal_record_is_replayed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // The crash came after the record was durable and before (or while) the data was
    // written in place: the medium has only part of it.
    let data = pattern(16 * 512, 3);
    std::fs::write(dir.path().join("disk0.img"), vec![0u8; 4 << 20]).unwrap();
    {
        let mut img = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("disk0.img"))
            .unwrap();
        use std::io::{Seek, SeekFrom};
        img.seek(SeekFrom::Start(64 * 512)).unwrap();
        img.write_all(&data[..5 * 512]).unwrap();
    }
    std::fs::create_dir_all(dir.path().join("atomic-writes")).unwrap();
    std::fs::write(journal_path(dir.path()), record(64, &data)).unwrap();

    let keel = Keel::start_in(dir, "4MiB", LUN).await;
    let mut i = session(&keel).await;
    assert_eq!(read(&mut i, 64, 16).await, data);
    assert_eq!(read(&mut i, 80, 8).await, vec![0u8; 8 * 512]);
    drop(i);
    let dir = keel.stop().await;
    assert_eq!(
        std::fs::metadata(journal_path(dir.path())).unwrap().len(),
        0
    );
}

#[tokio::test]
async fn a_corrupt_journal_record_is_ignored_with_a_log_line() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let path = journal_path(dir.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Torn: the last block of the record never reached the disk.
    let data = pattern(16 * 512, 5);
    let mut torn = record(128, &data);
    let end = torn.len();
    torn[end - 512..].fill(0);
    std::fs::write(&path, torn).unwrap();

    let keel = Keel::start_in(dir, "4MiB", LUN).await;
    let mut i = session(&keel).await;
    assert_eq!(read(&mut i, 128, 16).await, vec![0u8; 16 * 512]);
    drop(i);
    let dir = keel.stop().await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains(&path.display().to_string()))
        .unwrap_or_else(|| panic!("no log line names {}:\n{text}", path.display()));
    assert!(
        line.contains("WARN") && line.contains("ignoring an invalid atomic write journal record"),
        "{line}"
    );
    assert!(line.contains("checksum mismatch"), "{line}");
    drop(dir);
}
