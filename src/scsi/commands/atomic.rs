//! WRITE ATOMIC(16) (SBC-4 §5.48, atomic writes §4.29): all of the logical blocks are written
//! or none are, as seen by every other command and across a crash of keel or of the host.
//!
//! - Against other commands: the in-place write runs in the ordering class
//!   [`OrderClass::Atomic`](crate::scsi::ordering::OrderClass::Atomic) (its row says so),
//!   which blocks every read and write of the medium, reads still being sent from its file
//!   included, so none sees part of an atomic write.
//! - Across a crash: the data goes to the unit's intent journal first
//!   ([`crate::scsi::unit::atomic_journal`]), is then written in place, and the record is invalidated only
//!   once the medium is durable. Atomic writes of one unit are serialized by the journal's
//!   single slot: they are rare, and correctness matters more than their speed.
//!
//! What the block limits VPD page announces
//! ([`AtomicLimits`](crate::scsi::unit::limits::AtomicLimits)): at most
//! [`MAX_ATOMIC_BYTES`] per command; ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY
//! equal to the logical blocks per physical block, so an atomic write always covers whole
//! physical blocks (the unit the initiator's own atomicity is built on); no atomic
//! boundaries (both boundary fields 0, so the ATOMIC BOUNDARY field must be 0).

use bytes::Bytes;

use super::block_io::invalid_field_in_iu;
use super::block_io::{capacity_blocks, check_lba_range};
use crate::scsi::cdb::bytes_at;
use crate::scsi::opcodes::op;
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::atomic_journal::RecordHeader;
use crate::scsi::unit::lu::LogicalUnit;

/// The fields of a WRITE ATOMIC(16) CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteAtomicCdb {
    pub lba: u64,
    pub blocks: u32,
    pub dpo: bool,
    pub fua: bool,
}

/// Decodes WRITE ATOMIC(16): byte 1 WRPROTECT (7-5, must be 0: no protection information),
/// DPO, FUA; LBA 2..10; ATOMIC BOUNDARY 10..12 (must be 0: the block limits page announces
/// no boundary support); TRANSFER LENGTH 12..14.
pub fn decode_write_atomic16(cdb: &[u8]) -> Result<WriteAtomicCdb, Sense> {
    match cdb.first() {
        Some(&op::WRITE_ATOMIC_16) => {}
        _ => return Err(Sense::invalid_opcode()),
    }
    if cdb.len() < 16 {
        return Err(Sense::invalid_cdb());
    }
    let flags = cdb[1];
    if flags & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    if u16::from_be_bytes(bytes_at(cdb, 10)) != 0 {
        return Err(Sense::invalid_field_in_cdb(10, Some(7)));
    }
    Ok(WriteAtomicCdb {
        lba: u64::from_be_bytes(bytes_at(cdb, 2)),
        blocks: u32::from(u16::from_be_bytes(bytes_at(cdb, 12))),
        dpo: flags & 0x10 != 0,
        fua: flags & 0x08 != 0,
    })
}

/// The WRITE ATOMIC(16) row's Data-Out rule (for the transport's residual accounting):
/// TRANSFER LENGTH blocks in bytes, saturating at `u32::MAX`; 0 for a CDB the decoder
/// refuses, so a refused command reports its whole Data-Out as residual.
pub fn write_atomic_data_out(cdb: &[u8], block_size: u32) -> u32 {
    let bytes =
        decode_write_atomic16(cdb).map_or(0, |c| u64::from(c.blocks) * u64::from(block_size));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// WRITE ATOMIC(16). Checks, in order: the CDB, write protection, the LBA range (LOGICAL
/// BLOCK ADDRESS OUT OF RANGE even for 0 blocks), the atomic limits; then 0 blocks completes
/// with nothing written. The data-out buffer must hold every block: written partly, an
/// atomic write would not be one, so less fails with 05/0E/03 and nothing written.
///
/// The write is always durable when GOOD is returned (the journal protocol needs the medium
/// synced before the record is invalidated), which satisfies FUA; DPO is a cache hint.
pub async fn write_atomic16(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Bytes, Sense> {
    let c = decode_write_atomic16(raw_cdb)?;
    let (Some(journal), Some(limits)) = (lu.atomic_journal(), lu.atomic_limits()) else {
        return Err(Sense::invalid_opcode());
    };
    let backend = lu.medium()?;
    if lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    let block_size = lu.block_size();
    let capacity = capacity_blocks(backend.as_ref(), block_size);
    check_lba_range(c.lba, u64::from(c.blocks), capacity)?;
    limits.check(c.lba, c.blocks)?;
    if c.blocks == 0 {
        return Ok(Bytes::new());
    }
    let len = usize::try_from(u64::from(c.blocks) * u64::from(block_size))
        .map_err(|_| Sense::invalid_cdb())?;
    if data_out.len() < len {
        return Err(invalid_field_in_iu());
    }
    let data = data_out.slice(..len);
    let header = RecordHeader {
        unit: journal.unit(),
        block_size,
        lba: c.lba,
        blocks: c.blocks,
    };
    let offset = header.offset().ok_or_else(Sense::lba_out_of_range)?;
    let write_error = || Sense::medium_error_write().with_info(c.lba);

    // 1. The intent, durable. Nothing in place has changed yet.
    let mut slot = journal.lock().await;
    if let Err(error) = journal.write(&mut slot, header, data.clone()).await {
        tracing::warn!(journal = %journal.path().display(), lba = c.lba, %error, "atomic write: journal write failed");
        // The record may have become durable: it must not be replayed over later writes.
        if let Err(error) = journal.clear(&mut slot).await {
            stop_serving(lu, journal, c.lba, &error);
        }
        return Err(write_error());
    }

    // 2. In place, with nothing else reading or writing the medium, nor any read's data
    // still being sent from it.
    let _order = order.enter().await;
    let mut applied = apply(backend.as_ref(), offset, data.clone()).await;
    if applied.is_err() {
        applied = apply(backend.as_ref(), offset, data).await;
    }
    if let Err(error) = applied {
        // Part of it may be on the medium and nothing can undo it now; the journal can
        // complete it, at the next start.
        stop_serving(lu, journal, c.lba, &error);
        return Err(write_error());
    }

    // 3. Done: the record must go before any other write may land on these blocks, or a
    // replay after a crash would undo that write.
    if let Err(error) = journal.clear(&mut slot).await {
        stop_serving(lu, journal, c.lba, &error);
    }
    Ok(Bytes::new())
}

async fn apply(
    backend: &dyn crate::storage::BlockBackend,
    offset: u64,
    data: Bytes,
) -> std::io::Result<()> {
    backend.write_at(offset, data, false).await?;
    backend.flush().await
}

/// The journal holds a record that the unit can no longer keep consistent with later
/// writes: the unit goes offline (NOT READY, MANUAL INTERVENTION REQUIRED) until a restart
/// replays the record.
fn stop_serving(
    lu: &LogicalUnit,
    journal: &crate::scsi::unit::atomic_journal::AtomicJournal,
    lba: u64,
    error: &std::io::Error,
) {
    tracing::error!(
        journal = %journal.path().display(), lba, %error,
        "atomic write could not be completed or retired: the logical unit goes offline; \
         restarting keel completes the write from the journal"
    );
    lu.set_offline();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::unit::limits::AtomicLimits;

    /// WRITE ATOMIC as dispatch runs it: with the ordering of its row.
    async fn write_atomic16(lu: &LogicalUnit, cdb: &[u8], data: &Bytes) -> Result<Bytes, Sense> {
        super::write_atomic16(lu, Order::for_command(lu, cdb), cdb, data).await
    }

    /// READ or WRITE as dispatch runs it.
    async fn read_write(
        lu: &LogicalUnit,
        cdb: &[u8],
        data: &Bytes,
    ) -> Result<crate::payload::Payload, Sense> {
        crate::scsi::commands::sbc::read_write(lu, Order::for_command(lu, cdb), cdb, data).await
    }
    use crate::scsi::unit::atomic_journal::AtomicJournal;
    use crate::scsi::unit::lu::LuIdentity;
    use crate::storage::{BlockBackend, IoFuture, MemoryBackend};

    const BLOCKS: u64 = 4096;

    fn lu(dir: &std::path::Path, physical: u32, read_only: bool) -> Arc<LogicalUnit> {
        with_backend(
            dir,
            physical,
            read_only,
            Arc::new(MemoryBackend::new(BLOCKS * 512)),
        )
    }

    fn with_backend(
        dir: &std::path::Path,
        physical: u32,
        read_only: bool,
        backend: Arc<dyn BlockBackend>,
    ) -> Arc<LogicalUnit> {
        let identity = LuIdentity::derived("iqn.2026-11.org.example:t", 0);
        let journal = Arc::new(AtomicJournal::new(dir, identity.naa));
        Arc::new(
            LogicalUnit::new(identity, 512, Some(backend), read_only)
                .with_physical_block_size(physical)
                .with_atomic_journal(journal),
        )
    }

    fn cdb(flags: u8, lba: u64, boundary: u16, blocks: u16) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op::WRITE_ATOMIC_16;
        c[1] = flags;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..12].copy_from_slice(&boundary.to_be_bytes());
        c[12..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    fn fill(byte: u8, blocks: usize) -> Bytes {
        Bytes::from(vec![byte; blocks * 512])
    }

    #[test]
    fn decoding() {
        assert_eq!(
            decode_write_atomic16(&cdb(0x18, 7, 0, 3)).unwrap(),
            WriteAtomicCdb {
                lba: 7,
                blocks: 3,
                dpo: true,
                fua: true
            }
        );
        for wrprotect in 1..8u8 {
            let err = decode_write_atomic16(&cdb(wrprotect << 5, 0, 0, 1)).unwrap_err();
            assert_eq!(err.field_pointer, Some((true, 1, Some(7))));
        }
        let err = decode_write_atomic16(&cdb(0, 0, 8, 8)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 10, Some(7))));
        assert_eq!(
            decode_write_atomic16(&cdb(0, 0, 0, 1)[..15]).unwrap_err(),
            Sense::invalid_cdb()
        );
        assert_eq!(write_atomic_data_out(&cdb(0, 0, 0, 16), 512), 8192);
        // A CDB the decoder refuses (a short one) needs no Data-Out.
        assert_eq!(write_atomic_data_out(&cdb(0, 0, 0, 16)[..15], 512), 0);
    }

    #[test]
    fn limits_follow_the_physical_block() {
        let l = AtomicLimits::new(512, 8);
        assert_eq!((l.max_blocks, l.alignment, l.granularity), (2048, 8, 8));
        assert_eq!(AtomicLimits::new(512, 1).max_blocks, 2048);
        assert_eq!(AtomicLimits::new(4096, 1).max_blocks, 256);
        assert_eq!(AtomicLimits::new(4096, 16).max_blocks, 256);
        let f = l.page_fields();
        assert_eq!(&f[0..12], &[0, 0, 8, 0, 0, 0, 0, 8, 0, 0, 0, 8]);
        assert_eq!(&f[12..], &[0; 8]);
        assert!(l.check(8, 8).is_ok());
        assert!(l.check(0, 0).is_ok());
        assert!(l.check(0, 2048).is_ok());
        assert_eq!(
            l.check(1, 8).unwrap_err().field_pointer,
            Some((true, 2, Some(7)))
        );
        assert_eq!(
            l.check(0, 1).unwrap_err().field_pointer,
            Some((true, 12, Some(7)))
        );
        assert_eq!(
            l.check(0, 2056).unwrap_err().field_pointer,
            Some((true, 12, Some(7)))
        );
        assert!(AtomicLimits::new(512, 1).check(3, 5).is_ok());
    }

    #[tokio::test]
    async fn writes_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let lu = lu(dir.path(), 4096, false);
        let medium = lu.medium().unwrap();
        write_atomic16(&lu, &cdb(0x08, 8, 0, 16), &fill(0xA6, 16))
            .await
            .unwrap();
        assert_eq!(
            medium.read_at(8 * 512, 16 * 512).await.unwrap(),
            fill(0xA6, 16)
        );
        assert_eq!(medium.read_at(0, 512).await.unwrap(), fill(0, 1));
        // The journal slot is empty afterwards.
        let journal = lu.atomic_journal().unwrap();
        assert_eq!(std::fs::metadata(journal.path()).unwrap().len(), 0);
        // The last 256 blocks.
        write_atomic16(&lu, &cdb(0, BLOCKS - 256, 0, 256), &fill(1, 256))
            .await
            .unwrap();
        // 0 blocks: GOOD at an existing LBA, out of range past the end.
        write_atomic16(&lu, &cdb(0, 0, 0, 0), &Bytes::new())
            .await
            .unwrap();
        let oob = Sense::lba_out_of_range();
        for (lba, blocks) in [
            (BLOCKS, 0),
            (BLOCKS + 8, 0),
            (1 << 63, 0),
            (u64::MAX - 7, 8),
            (BLOCKS - 8, 16),
            (BLOCKS - 256, 512),
        ] {
            let err = write_atomic16(&lu, &cdb(0, lba, 0, blocks), &fill(0, blocks.into()))
                .await
                .unwrap_err();
            assert_eq!(err, oob, "{lba} {blocks}");
        }
        let invalid = |at: u16| Some((true, at, Some(7)));
        for (lba, blocks, at) in [(1, 8, 2), (0, 1, 12), (0, 2056, 12)] {
            let err = write_atomic16(&lu, &cdb(0, lba, 0, blocks), &fill(0, blocks.into()))
                .await
                .unwrap_err();
            assert_eq!(err.field_pointer, invalid(at), "{lba} {blocks}");
        }
        // Less data than the blocks: nothing written.
        let err = write_atomic16(&lu, &cdb(0, 16, 0, 8), &fill(9, 7))
            .await
            .unwrap_err();
        assert_eq!(err, invalid_field_in_iu());
        assert_eq!(medium.read_at(16 * 512, 512).await.unwrap(), fill(0xA6, 1));

        let ro = self::lu(dir.path(), 512, true);
        let err = write_atomic16(&ro, &cdb(0, 0, 0, 1), &fill(0, 1))
            .await
            .unwrap_err();
        assert_eq!(err, Sense::write_protected());
        // Without a journal the command is not offered.
        let plain = LogicalUnit::new(
            LuIdentity::derived("iqn.2026-11.org.example:t", 1),
            512,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            false,
        );
        assert_eq!(
            write_atomic16(&plain, &cdb(0, 0, 0, 1), &fill(0, 1))
                .await
                .unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(plain.atomic_limits(), None);
    }

    /// Writes one block at a time, yielding in between: a medium on which an unordered read
    /// would see part of a write.
    #[derive(Debug)]
    struct BlockByBlock(MemoryBackend);

    impl BlockBackend for BlockByBlock {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
            self.0.read_at(offset, len)
        }
        fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
            Box::pin(async move {
                for (i, block) in data.chunks(512).enumerate() {
                    let at = offset + (i * 512) as u64;
                    self.0.write_at(at, data.slice_ref(block), fua).await?;
                    tokio::task::yield_now().await;
                }
                Ok(())
            })
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            self.0.flush()
        }
        fn describe(&self) -> String {
            "block by block".to_string()
        }
    }

    /// A medium that is a tmpfs file: large reads leave as ranges of the file holding the
    /// unit's guard; an atomic write waits until they are sent, and reads are copied after.
    #[tokio::test]
    async fn an_atomic_write_waits_for_reads_sent_from_the_file_and_ends_them() {
        use crate::payload::Payload;
        let dir = tempfile::tempdir().unwrap();
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = shm.path().join("disk.img");
        let backend =
            crate::storage::FileBackend::open_file(&path, Some(BLOCKS * 512), false).unwrap();
        let lu = with_backend(dir.path(), 512, false, Arc::new(backend));
        let read = |blocks: u32, lba: u64| {
            let mut c = [0u8; 16];
            c[0] = op::READ_16;
            c[2..10].copy_from_slice(&lba.to_be_bytes());
            c[10..14].copy_from_slice(&blocks.to_be_bytes());
            c
        };
        let sbc_read = |cdb: [u8; 16]| {
            let lu = Arc::clone(&lu);
            async move { read_write(&lu, &cdb, &Bytes::new()).await.unwrap() }
        };
        let Payload::File(slice) = sbc_read(read(256, 8)).await else {
            panic!("a 128 KiB read of a tmpfs file is sent from the file");
        };
        assert_eq!((slice.offset, slice.len), (8 * 512, 256 * 512));
        // Small reads are copied.
        assert!(matches!(sbc_read(read(8, 0)).await, Payload::Bytes(_)));

        let writer = {
            let lu = Arc::clone(&lu);
            tokio::spawn(async move { write_atomic16(&lu, &cdb(0, 8, 0, 8), &fill(0x77, 8)).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !writer.is_finished(),
            "the atomic write waited for the read being sent"
        );
        drop(slice);
        tokio::time::timeout(std::time::Duration::from_secs(10), writer)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Payload::Bytes(data) = sbc_read(read(256, 8)).await else {
            panic!("reads are copied once WRITE ATOMIC is in use");
        };
        assert!(data[..8 * 512].iter().all(|&b| b == 0x77));
    }

    /// Readers racing 256-block atomic writes of alternating patterns only ever see one
    /// pattern across the whole range (the medium writes block by block, so this fails
    /// without the read ordering).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_never_see_half_an_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let medium = BlockByBlock(MemoryBackend::new(BLOCKS * 512));
        let lu = with_backend(dir.path(), 512, false, Arc::new(medium));
        write_atomic16(&lu, &cdb(0, 0, 0, 256), &fill(0xAA, 256))
            .await
            .unwrap();
        let writer = {
            let lu = Arc::clone(&lu);
            tokio::spawn(async move {
                for i in 0..40u32 {
                    let byte = if i % 2 == 0 { 0x55 } else { 0xAA };
                    write_atomic16(&lu, &cdb(0, 0, 0, 256), &fill(byte, 256))
                        .await
                        .unwrap();
                }
            })
        };
        let mut read16 = [0u8; 16];
        read16[0] = op::READ_16;
        read16[10..14].copy_from_slice(&256u32.to_be_bytes());
        let mut reads = 0;
        while !writer.is_finished() || reads < 10 {
            let data = read_write(&lu, &read16, &Bytes::new()).await.unwrap();
            let data = data.bytes().cloned().unwrap();
            let first = data[0];
            assert!(
                data.iter().all(|&b| b == first),
                "a read saw parts of two atomic writes"
            );
            reads += 1;
        }
        writer.await.unwrap();
    }
}
