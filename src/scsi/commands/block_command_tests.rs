//! COMPARE AND WRITE, ORWRITE, WRITE SAME, VERIFY, WRITE AND VERIFY and PRE-FETCH: decoders,
//! write residual sizes, and the handlers against memory and file media. One file because
//! several tests cross the families (durability with WCE off, read-only units).

use std::time::Duration;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::block_io::*;
use super::compare_and_write::*;
use super::verify::*;
use super::write_same::*;
use super::{compare_and_write, provisioning, verify, write_same};
use crate::scsi::opcodes::op;
use crate::scsi::sense::Sense;
use crate::scsi::unit::limits::{max_compare_and_write_blocks, max_write_same_blocks};
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::unit::lu::LuIdentity;
use crate::storage::BlockBackend;
use crate::storage::{FileBackend, IoFuture, MemoryBackend};

const BS: u32 = 512;
const BLOCKS: u64 = 1024;

fn lu_with(backend: Arc<dyn BlockBackend>) -> Arc<LogicalUnit> {
    Arc::new(LogicalUnit::new(
        LuIdentity::derived("iqn.2026-11.org.example:t", 0),
        BS,
        Some(backend),
        false,
    ))
}

fn memory_lu() -> Arc<LogicalUnit> {
    lu_with(Arc::new(MemoryBackend::new(BLOCKS * u64::from(BS))))
}

fn key(sense: &Sense) -> (u8, u8, u8) {
    (sense.key as u8, sense.asc, sense.ascq)
}

fn caw(lba: u64, blocks: u8, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op::COMPARE_AND_WRITE;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = blocks;
    c
}

fn cdb10(opcode: u8, flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn cdb12(opcode: u8, flags: u8, lba: u32, blocks: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn cdb16(opcode: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn fill(byte: u8, blocks: usize) -> Bytes {
    Bytes::from(vec![byte; blocks * BS as usize])
}

async fn put(lu: &LogicalUnit, lba: u64, data: Bytes) {
    lu.medium()
        .unwrap()
        .write_at(lba * u64::from(BS), data, false)
        .await
        .unwrap();
}

async fn get(lu: &LogicalUnit, lba: u64, blocks: usize) -> Bytes {
    lu.medium()
        .unwrap()
        .read_at(lba * u64::from(BS), blocks * BS as usize)
        .await
        .unwrap()
}

// ---- decoders -------------------------------------------------------------------

#[test]
fn compare_and_write_decoding() {
    let c = decode_compare_and_write(&caw(7, 3, 0x18)).unwrap();
    assert_eq!(
        c,
        CompareAndWriteCdb {
            lba: 7,
            blocks: 3,
            fua: true,
            dpo: true
        }
    );
    let err = decode_compare_and_write(&caw(0, 1, 0x20)).unwrap_err();
    assert_eq!(err.field_pointer, Some((true, 1, Some(7))));
    assert_eq!(
        decode_compare_and_write(&caw(0, 1, 0)[..10]).unwrap_err(),
        Sense::invalid_cdb()
    );
}

#[test]
fn write_same_decoding_table() {
    // (cdb, expected (lba, blocks, unmap, anchor, ndob) or the field pointer byte/bit)
    type Expect = Result<(u64, u32, bool, bool, bool), (u16, u8)>;
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (
            cdb10(op::WRITE_SAME_10, 0, 5, 9).to_vec(),
            Ok((5, 9, false, false, false)),
        ),
        (
            cdb10(op::WRITE_SAME_10, 0x08, 5, 0).to_vec(),
            Ok((5, 0, true, false, false)),
        ),
        (
            cdb10(op::WRITE_SAME_10, 0x18, 5, 1).to_vec(),
            Ok((5, 1, true, true, false)),
        ),
        (cdb10(op::WRITE_SAME_10, 0x10, 5, 1).to_vec(), Err((1, 4))),
        (cdb10(op::WRITE_SAME_10, 0x01, 5, 1).to_vec(), Err((1, 0))),
        (cdb10(op::WRITE_SAME_10, 0x02, 5, 1).to_vec(), Err((1, 2))),
        (cdb10(op::WRITE_SAME_10, 0x40, 5, 1).to_vec(), Err((1, 7))),
        (
            cdb16(op::WRITE_SAME_16, 0x09, 1 << 40, 70000).to_vec(),
            Ok((1 << 40, 70000, true, false, true)),
        ),
        (cdb16(op::WRITE_SAME_16, 0x04, 0, 1).to_vec(), Err((1, 2))),
    ];
    for (cdb, expect) in cases {
        let got = decode_write_same(&cdb);
        match expect {
            Ok((lba, blocks, unmap, anchor, ndob)) => {
                let ws = got.unwrap();
                assert_eq!(
                    (ws.lba, ws.blocks, ws.unmap, ws.anchor, ws.ndob),
                    (lba, blocks, unmap, anchor, ndob),
                    "{cdb:02x?}"
                );
            }
            Err((byte, bit)) => assert_eq!(
                got.unwrap_err().field_pointer,
                Some((true, byte, Some(bit))),
                "{cdb:02x?}"
            ),
        }
    }
}

#[test]
fn verify_decoding_table() {
    let cases: Vec<(Vec<u8>, u64, u32, ByteCheck, bool)> = vec![
        (
            cdb10(op::VERIFY_10, 0x00, 9, 2).to_vec(),
            9,
            2,
            ByteCheck::None,
            false,
        ),
        (
            cdb10(op::VERIFY_10, 0x02, 9, 2).to_vec(),
            9,
            2,
            ByteCheck::Compare,
            false,
        ),
        (
            cdb10(op::VERIFY_10, 0x06, 9, 2).to_vec(),
            9,
            2,
            ByteCheck::SameBlock,
            false,
        ),
        (
            cdb12(op::VERIFY_12, 0x02, 1, 70000).to_vec(),
            1,
            70000,
            ByteCheck::Compare,
            false,
        ),
        (
            cdb16(op::VERIFY_16, 0x10, 1 << 33, 4).to_vec(),
            1 << 33,
            4,
            ByteCheck::None,
            false,
        ),
        (
            cdb10(op::WRITE_AND_VERIFY_10, 0x02, 3, 1).to_vec(),
            3,
            1,
            ByteCheck::Compare,
            true,
        ),
        (
            cdb12(op::WRITE_AND_VERIFY_12, 0, 3, 1).to_vec(),
            3,
            1,
            ByteCheck::None,
            true,
        ),
        (
            cdb16(op::WRITE_AND_VERIFY_16, 0x02, 3, 1).to_vec(),
            3,
            1,
            ByteCheck::Compare,
            true,
        ),
    ];
    for (cdb, lba, blocks, bytchk, write) in cases {
        let v = decode_verify(&cdb).unwrap();
        assert_eq!(
            (v.lba, v.blocks, v.bytchk, v.write),
            (lba, blocks, bytchk, write)
        );
    }
    // BYTCHK 10b is reserved; protection is not supported.
    assert!(decode_verify(&cdb10(op::VERIFY_10, 0x04, 0, 1)).is_err());
    assert!(decode_verify(&cdb10(op::VERIFY_10, 0x20, 0, 1)).is_err());
    assert!(decode_verify(&cdb16(op::VERIFY_16, 0, 0, 1)[..12]).is_err());
}

#[test]
fn orwrite_and_prefetch_decoding() {
    let o = decode_orwrite(&cdb16(op::ORWRITE_16, 0x08, 4, 2)).unwrap();
    assert_eq!((o.lba, o.blocks, o.fua), (4, 2, true));
    assert!(decode_orwrite(&cdb16(op::ORWRITE_16, 0xE0, 4, 2)).is_err());
    let p = decode_prefetch(&cdb10(op::PRE_FETCH_10, 0x02, 8, 0)).unwrap();
    assert_eq!((p.lba, p.blocks, p.immed), (8, 0, true));
    let p = decode_prefetch(&cdb16(op::PRE_FETCH_16, 0, 1 << 35, 3)).unwrap();
    assert_eq!((p.lba, p.blocks, p.immed), (1 << 35, 3, false));
}

#[test]
fn data_out_sizes() {
    let cases: Vec<(Vec<u8>, Option<u32>)> = vec![
        (caw(0, 3, 0).to_vec(), Some(3 * 2 * BS)),
        (cdb10(op::WRITE_SAME_10, 0, 0, 100).to_vec(), Some(BS)),
        (cdb16(op::WRITE_SAME_16, 0x09, 0, 100).to_vec(), Some(0)),
        (cdb10(op::VERIFY_10, 0, 0, 4).to_vec(), Some(0)),
        (cdb10(op::VERIFY_10, 0x02, 0, 4).to_vec(), Some(4 * BS)),
        (cdb10(op::VERIFY_10, 0x06, 0, 4).to_vec(), Some(BS)),
        (
            cdb10(op::WRITE_AND_VERIFY_10, 0, 0, 4).to_vec(),
            Some(4 * BS),
        ),
        (cdb16(op::ORWRITE_16, 0, 0, 2).to_vec(), Some(2 * BS)),
        (cdb10(op::UNMAP, 0, 0, 24).to_vec(), Some(24)),
        (cdb10(op::PRE_FETCH_10, 0, 0, 24).to_vec(), Some(0)),
        (cdb10(op::WRITE_10, 0, 0, 1).to_vec(), None),
        (vec![], None),
    ];
    let needed = |cdb: &[u8], bs: u32| {
        compare_and_write::data_out_needed(cdb, bs)
            .or_else(|| write_same::data_out_needed(cdb, bs))
            .or_else(|| verify::data_out_needed(cdb, bs))
            .or_else(|| provisioning::data_out_needed(cdb))
    };
    for (cdb, expect) in cases {
        assert_eq!(needed(&cdb, BS), expect, "{cdb:02x?}");
    }
}

#[test]
fn write_payload_rule() {
    let data = fill(1, 2);
    assert_eq!(write_payload(&data, 512, BS).unwrap().len(), 512);
    assert_eq!(write_payload(&data, 1024, BS).unwrap().len(), 1024);
    assert_eq!(write_payload(&data, 2048, BS).unwrap().len(), 1024);
    assert_eq!(write_payload(&Bytes::new(), 512, BS).unwrap().len(), 0);
    assert_eq!(
        key(&write_payload(&data.slice(..200), 512, BS).unwrap_err()),
        (0x05, 0x0E, 0x03)
    );
    assert_eq!(first_difference(b"abcd", b"abxd"), Some(2));
    assert_eq!(first_difference(b"abcd", b"abcd"), None);
}

#[test]
fn limits() {
    assert_eq!(max_compare_and_write_blocks(512), 255);
    assert_eq!(max_compare_and_write_blocks(65536), 64);
    assert_eq!(max_write_same_blocks(512), 0xFFFF);
    assert_eq!(max_write_same_blocks(65536), 1 << 14);
}

// ---- handlers ---------------------------------------------------------------------

#[tokio::test]
async fn compare_and_write_writes_only_on_match() {
    let lu = memory_lu();
    put(&lu, 10, fill(b'A', 2)).await;
    let mut data = BytesMut::from(&fill(b'A', 2)[..]);
    data.extend_from_slice(&fill(b'B', 2));
    compare_and_write(&lu, &caw(10, 2, 0x08), &data.clone().freeze())
        .await
        .unwrap();
    assert_eq!(get(&lu, 10, 2).await, fill(b'B', 2));

    // Miscompare: INFORMATION = offset of the first differing byte; nothing written.
    let mut data = BytesMut::from(&fill(b'B', 2)[..]);
    data[700] = b'X';
    data.extend_from_slice(&fill(b'C', 2));
    let err = compare_and_write(&lu, &caw(10, 2, 0), &data.freeze())
        .await
        .unwrap_err();
    assert_eq!(key(&err), (0x0E, 0x1D, 0x00));
    assert_eq!(err.info, Some(700));
    assert_eq!(get(&lu, 10, 2).await, fill(b'B', 2));
}

#[tokio::test]
async fn compare_and_write_refusals() {
    let lu = memory_lu();
    // Data-out must be exactly 2 × N blocks.
    for len in [0, 1, 3, 4] {
        let err = compare_and_write(&lu, &caw(0, 1, 0), &fill(0, len))
            .await
            .unwrap_err();
        assert_eq!(key(&err), (0x05, 0x24, 0x00), "{len} blocks");
    }
    let err = compare_and_write(&lu, &caw(BLOCKS - 1, 2, 0), &fill(0, 4))
        .await
        .unwrap_err();
    assert_eq!(err, Sense::lba_out_of_range());
    // Zero blocks: nothing to do.
    compare_and_write(&lu, &caw(0, 0, 0), &Bytes::new())
        .await
        .unwrap();
    let big = LogicalUnit::new(
        LuIdentity::derived("iqn.t", 0),
        65536,
        Some(Arc::new(MemoryBackend::new(1 << 24))),
        false,
    );
    let err = compare_and_write(&big, &caw(0, 65, 0), &Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.field_pointer, Some((true, 13, Some(7))));
}

/// Reads slowly: the window in which an unlocked COMPARE AND WRITE would let a write in.
#[derive(Debug)]
struct SlowReads(MemoryBackend);

impl BlockBackend for SlowReads {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
        Box::pin(async move {
            let data = self.0.read_at(offset, len).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            data
        })
    }
    fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
        self.0.write_at(offset, data, fua)
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.0.flush()
    }
    fn describe(&self) -> String {
        "slow".to_string()
    }
}

/// Remembers the FUA flag of every write.
#[derive(Debug)]
struct FuaLog(MemoryBackend, std::sync::Mutex<Vec<bool>>);

impl BlockBackend for FuaLog {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
        self.0.read_at(offset, len)
    }
    fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
        self.1.lock().unwrap().push(fua);
        self.0.write_at(offset, data, fua)
    }
    fn flush(&self) -> IoFuture<'_, ()> {
        self.0.flush()
    }
    fn describe(&self) -> String {
        "fua-log".to_string()
    }
}

/// WCE clear: no write may complete from the volatile cache, whichever command wrote it
/// (before, only READ/WRITE honoured it).
#[tokio::test]
async fn with_the_write_cache_off_offload_writes_are_durable_too() {
    let backend = Arc::new(FuaLog(MemoryBackend::new(1 << 20), Default::default()));
    let lu = lu_with(backend.clone());
    let values = lu.mode_values();
    lu.set_mode_values(crate::scsi::unit::mode_values::ModeValues {
        wce: false,
        ..values
    });
    write_same(&lu, &cdb10(op::WRITE_SAME_10, 0, 3, 4), &fill(1, 1))
        .await
        .unwrap();
    orwrite(&lu, &cdb16(op::ORWRITE_16, 0, 8, 2), &fill(2, 2))
        .await
        .unwrap();
    let log = backend.1.lock().unwrap().clone();
    assert!(!log.is_empty() && log.iter().all(|&fua| fua), "{log:?}");
}

#[tokio::test]
async fn compare_and_write_is_atomic_against_a_concurrent_write() {
    let lu = lu_with(Arc::new(SlowReads(MemoryBackend::new(1 << 20))));
    put(&lu, 0, fill(b'A', 1)).await;
    let mut data = BytesMut::from(&fill(b'A', 1)[..]);
    data.extend_from_slice(&fill(b'B', 1));
    let data = data.freeze();
    let caw_lu = Arc::clone(&lu);
    let caw_task =
        tokio::spawn(async move { compare_and_write(&caw_lu, &caw(0, 1, 0), &data).await });
    // Let CAW read (and sit in its slow read), then write the same block.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let write_lu = Arc::clone(&lu);
    let write_task = tokio::spawn(async move {
        let cdb = cdb10(crate::scsi::opcodes::op::WRITE_10, 0, 0, 1);
        crate::scsi::commands::sbc::read_write(&write_lu, &cdb, &fill(b'C', 1)).await
    });
    caw_task.await.unwrap().unwrap();
    write_task.await.unwrap().unwrap();
    // Serializable outcome: CAW then WRITE. Without the lock the WRITE would land during
    // CAW's read and be overwritten by 'B', an order no serial execution produces.
    assert_eq!(get(&lu, 0, 1).await, fill(b'C', 1));
}

#[tokio::test]
async fn write_same_writes_the_pattern_and_unmaps() {
    let lu = memory_lu();
    let mut block = vec![0u8; BS as usize];
    block[0] = 0x5A;
    block[511] = 0xA5;
    let block = Bytes::from(block);
    write_same(&lu, &cdb10(op::WRITE_SAME_10, 0, 3, 4), &block)
        .await
        .unwrap();
    let back = get(&lu, 2, 6).await;
    assert_eq!(&back[..512], &[0u8; 512][..]);
    for b in back[512..2560].chunks(512) {
        assert_eq!(b, &block[..]);
    }
    assert_eq!(&back[2560..], &[0u8; 512][..]);

    // UNMAP: zeros come back and the blocks are deallocated, whatever the data block.
    write_same(&lu, &cdb10(op::WRITE_SAME_10, 0x08, 3, 4), &fill(0xFF, 1))
        .await
        .unwrap();
    assert_eq!(get(&lu, 3, 4).await, fill(0, 4));
    let extents = lu
        .medium()
        .unwrap()
        .allocation(3 * 512, 4 * 512)
        .await
        .unwrap();
    assert!(extents.iter().all(|e| !e.mapped));

    // 0 blocks: through the last LBA. NDOB: zeros without data.
    put(&lu, BLOCKS - 3, fill(7, 3)).await;
    write_same(
        &lu,
        &cdb16(op::WRITE_SAME_16, 0x01, BLOCKS - 2, 0),
        &Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(get(&lu, BLOCKS - 3, 3).await[..512], fill(7, 1)[..]);
    assert_eq!(get(&lu, BLOCKS - 2, 2).await, fill(0, 2));
}

#[tokio::test]
async fn write_same_refusals() {
    let lu = memory_lu();
    let one = fill(1, 1);
    type Case = (Vec<u8>, Bytes, (u8, u8, u8));
    let cases: Vec<Case> = vec![
        // Data-out must be exactly one block.
        (
            cdb10(op::WRITE_SAME_10, 0, 0, 1).to_vec(),
            fill(1, 2),
            (5, 0x24, 0),
        ),
        (
            cdb10(op::WRITE_SAME_10, 0, 0, 1).to_vec(),
            one.slice(..256),
            (5, 0x24, 0),
        ),
        // ANCHOR is not supported.
        (
            cdb10(op::WRITE_SAME_10, 0x18, 0, 1).to_vec(),
            one.clone(),
            (5, 0x24, 0),
        ),
        (
            cdb10(op::WRITE_SAME_10, 0, BLOCKS as u32, 0).to_vec(),
            one.clone(),
            (5, 0x21, 0),
        ),
        (
            cdb10(op::WRITE_SAME_10, 0, BLOCKS as u32 - 1, 2).to_vec(),
            one.clone(),
            (5, 0x21, 0),
        ),
        (
            cdb16(op::WRITE_SAME_16, 0, u64::MAX, 2).to_vec(),
            one.clone(),
            (5, 0x21, 0),
        ),
    ];
    for (cdb, data, expect) in cases {
        let err = write_same(&lu, &cdb, &data).await.unwrap_err();
        assert_eq!(key(&err), expect, "{cdb:02x?}");
    }
    // Longer than MAXIMUM WRITE SAME LENGTH (0 blocks from LBA 0 on a big medium too).
    let big = lu_with(Arc::new(MemoryBackend::new(0x1_0000 * u64::from(BS))));
    let err = write_same(&big, &cdb16(op::WRITE_SAME_16, 0, 0, 0x1_0000), &one)
        .await
        .unwrap_err();
    assert_eq!(err.field_pointer, Some((true, 10, Some(7))));
    let err = write_same(&big, &cdb10(op::WRITE_SAME_10, 0, 0, 0), &one)
        .await
        .unwrap_err();
    assert_eq!(err.field_pointer, Some((true, 7, Some(7))));
    write_same(&big, &cdb10(op::WRITE_SAME_10, 0, 1, 0), &one)
        .await
        .unwrap();
}

#[tokio::test]
async fn verify_modes() {
    let lu = memory_lu();
    put(&lu, 20, fill(b'V', 3)).await;
    // BYTCHK 0: medium check only.
    verify(&lu, &cdb10(op::VERIFY_10, 0, 20, 3), &Bytes::new())
        .await
        .unwrap();
    // BYTCHK 1: compare.
    verify(&lu, &cdb12(op::VERIFY_12, 0x02, 20, 3), &fill(b'V', 3))
        .await
        .unwrap();
    let mut bad = BytesMut::from(&fill(b'V', 3)[..]);
    bad[1000] = 0;
    let err = verify(&lu, &cdb16(op::VERIFY_16, 0x02, 20, 3), &bad.freeze())
        .await
        .unwrap_err();
    assert_eq!((key(&err), err.info), ((0x0E, 0x1D, 0x00), Some(1000)));
    // BYTCHK 3: one block against all.
    verify(&lu, &cdb10(op::VERIFY_10, 0x06, 20, 3), &fill(b'V', 1))
        .await
        .unwrap();
    let err = verify(&lu, &cdb10(op::VERIFY_10, 0x06, 19, 3), &fill(b'V', 1))
        .await
        .unwrap_err();
    assert_eq!((key(&err), err.info), ((0x0E, 0x1D, 0x00), Some(0)));
    // Short compare data; out of range, also with zero blocks.
    let err = verify(&lu, &cdb10(op::VERIFY_10, 0x02, 20, 3), &fill(b'V', 2))
        .await
        .unwrap_err();
    assert_eq!(key(&err), (0x05, 0x0E, 0x03));
    for (lba, n) in [(BLOCKS, 0), (BLOCKS - 1, 2)] {
        let err = verify(&lu, &cdb16(op::VERIFY_16, 0, lba, n), &Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(err, Sense::lba_out_of_range());
    }
}

#[tokio::test]
async fn write_and_verify_on_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let backend =
        FileBackend::open_file(&dir.path().join("d.img"), Some(BLOCKS * 512), false).unwrap();
    let lu = lu_with(Arc::new(backend));
    verify(
        &lu,
        &cdb10(op::WRITE_AND_VERIFY_10, 0x02, 5, 2),
        &fill(b'W', 2),
    )
    .await
    .unwrap();
    assert_eq!(get(&lu, 5, 2).await, fill(b'W', 2));
    // FCP-4 residual rule: one whole block of two sent.
    verify(
        &lu,
        &cdb16(op::WRITE_AND_VERIFY_16, 0, 5, 2),
        &fill(b'X', 1),
    )
    .await
    .unwrap();
    assert_eq!(get(&lu, 5, 1).await, fill(b'X', 1));
    assert_eq!(get(&lu, 6, 1).await, fill(b'W', 1));
    let err = verify(
        &lu,
        &cdb10(op::WRITE_AND_VERIFY_10, 0x06, 5, 2),
        &fill(b'W', 1),
    )
    .await
    .unwrap_err();
    assert_eq!(key(&err), (0x05, 0x24, 0x00));
}

#[tokio::test]
async fn orwrite_ors_and_prefetch_checks_ranges() {
    let lu = memory_lu();
    put(&lu, 1, fill(0x0F, 2)).await;
    orwrite(&lu, &cdb16(op::ORWRITE_16, 0, 1, 2), &fill(0xA0, 2))
        .await
        .unwrap();
    assert_eq!(get(&lu, 1, 2).await, fill(0xAF, 2));
    orwrite(&lu, &cdb16(op::ORWRITE_16, 0, 0, 0), &Bytes::new())
        .await
        .unwrap();
    let err = orwrite(&lu, &cdb16(op::ORWRITE_16, 0, BLOCKS + 1, 0), &Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err, Sense::lba_out_of_range());

    prefetch(&lu, &cdb10(op::PRE_FETCH_10, 0x02, 0, 0))
        .await
        .unwrap();
    prefetch(&lu, &cdb16(op::PRE_FETCH_16, 0, BLOCKS - 1, 1))
        .await
        .unwrap();
    for (lba, n) in [(BLOCKS, 0), (BLOCKS - 1, 2), (u64::MAX, 1)] {
        let err = prefetch(&lu, &cdb16(op::PRE_FETCH_16, 0, lba, n))
            .await
            .unwrap_err();
        assert_eq!(err, Sense::lba_out_of_range());
    }
}

#[tokio::test]
async fn read_only_units_refuse_the_writing_commands() {
    let lu = LogicalUnit::new(
        LuIdentity::derived("iqn.t", 0),
        BS,
        Some(Arc::new(MemoryBackend::new(1 << 20))),
        true,
    );
    let protected = (0x07, 0x27, 0x00);
    let err = compare_and_write(&lu, &caw(0, 1, 0), &fill(0, 2))
        .await
        .unwrap_err();
    assert_eq!(key(&err), protected);
    let err = write_same(&lu, &cdb10(op::WRITE_SAME_10, 0, 0, 1), &fill(0, 1))
        .await
        .unwrap_err();
    assert_eq!(key(&err), protected);
    let err = orwrite(&lu, &cdb16(op::ORWRITE_16, 0, 0, 1), &fill(0, 1))
        .await
        .unwrap_err();
    assert_eq!(key(&err), protected);
    // VERIFY only reads.
    verify(&lu, &cdb10(op::VERIFY_10, 0x02, 0, 1), &fill(0, 1))
        .await
        .unwrap();
}
