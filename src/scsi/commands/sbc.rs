//! SBC-3 block commands: READ CAPACITY, READ/WRITE, SYNCHRONIZE CACHE.
//!
//! Handlers take the medium snapshot once ([`LogicalUnit::medium`]) and check every LBA
//! against that snapshot's capacity with checked arithmetic before touching it.

use std::sync::Arc;

use bytes::Bytes;

use super::block_io::{
    byte_offset, capacity_blocks, check_lba_range, read_blocks, transfer_len, write_blocks,
    write_payload,
};
use crate::payload::{FileSlice, Payload};
use crate::scsi::cdb;
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::LogicalUnit;

/// READ CAPACITY(10) parameter data (SBC-3 §5.15.2): last LBA, or FFFFFFFFh when it does not
/// fit (the initiator then asks READ CAPACITY(16)), and the block length.
pub fn read_capacity10_data(blocks: u64, block_size: u32) -> [u8; 8] {
    let last_lba = u32::try_from(blocks.saturating_sub(1)).unwrap_or(u32::MAX);
    let mut data = [0u8; 8];
    data[0..4].copy_from_slice(&last_lba.to_be_bytes());
    data[4..8].copy_from_slice(&block_size.to_be_bytes());
    data
}

/// READ CAPACITY(16) parameter data (SBC-4 §5.20.2): 32 bytes. No protection; LOGICAL
/// BLOCKS PER PHYSICAL BLOCK EXPONENT `lbppb_exponent` (byte 13, bits 3-0) with LOWEST
/// ALIGNED LOGICAL BLOCK ADDRESS 0 (physical blocks start at LBA 0); LBPME/LBPRZ are the
/// caller's (provisioning).
pub fn read_capacity16_data(blocks: u64, block_size: u32, lbppb_exponent: u8) -> [u8; 32] {
    let mut data = [0u8; 32];
    data[0..8].copy_from_slice(&blocks.saturating_sub(1).to_be_bytes());
    data[8..12].copy_from_slice(&block_size.to_be_bytes());
    data[13] = lbppb_exponent & 0x0F;
    data
}

pub fn read_capacity10(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    cdb::decode_read_capacity10(raw_cdb)?;
    let backend = lu.medium()?;
    let blocks = capacity_blocks(backend.as_ref(), lu.block_size());
    Ok(Bytes::copy_from_slice(&read_capacity10_data(
        blocks,
        lu.block_size(),
    )))
}

pub fn read_capacity16(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let alloc_len = cdb::decode_read_capacity16(raw_cdb)?;
    let backend = lu.medium()?;
    let blocks = capacity_blocks(backend.as_ref(), lu.block_size());
    let mut data = read_capacity16_data(blocks, lu.block_size(), lu.lbppb_exponent());
    // LBPME / LBPRZ
    data[14] |= super::block_io::read_capacity16_flags(&backend.provisioning());
    let len = usize::try_from(alloc_len).map_or(data.len(), |a| a.min(data.len()));
    Ok(Bytes::copy_from_slice(&data[..len]))
}

/// The WRITE(6/10/12/16) rows' Data-Out rule (for the transport's residual accounting):
/// TRANSFER LENGTH blocks in bytes, saturating at `u32::MAX`; 0 for a CDB the decoder
/// refuses, so a refused command reports its whole Data-Out as residual.
pub fn write_data_out(raw_cdb: &[u8], block_size: u32) -> u32 {
    let bytes =
        cdb::decode_rw(raw_cdb).map_or(0, |rw| u64::from(rw.blocks) * u64::from(block_size));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// READ/WRITE 6/10/12/16. Returns the read data (empty for writes).
///
/// Write data shorter than the CDB's transfer length follows FCP-4 §9.4.2 (see
/// [`super::block_io::write_payload`]): whole blocks received are written and the command
/// completes GOOD with an overflow residual for the rest; a partial block fails the command
/// with 05/0E/03 and nothing is written. Extra data beyond the transfer length is ignored
/// (the transport reports it as residual via `data_out_used`).
///
/// A large read from a medium that is a memory-resident file returns the range of the file
/// rather than a copy of it, for the transport to send from there; the range holds the
/// unit's guard against WRITE ATOMIC until it is sent, so none lands in it while its pages
/// go out.
pub async fn read_write(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Payload, Sense> {
    let rw = cdb::decode_rw(raw_cdb)?;
    let opcode = raw_cdb.first().copied().unwrap_or(0);
    let backend = lu.medium()?;
    if rw.is_write && lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    let block_size = lu.block_size();
    let capacity = capacity_blocks(backend.as_ref(), block_size);
    check_lba_range(rw.lba, u64::from(rw.blocks), capacity)?;
    let len = transfer_len(
        rw.blocks,
        block_size,
        cdb::rw_transfer_length_offset(opcode),
    )?;
    // FCP-4 write residuals
    let data = if rw.is_write {
        write_payload(data_out, len, block_size)?
    } else {
        Bytes::new()
    };
    if len == 0 || (rw.is_write && data.is_empty()) {
        return Ok(Payload::default());
    }
    let offset = byte_offset(rw.lba, block_size)?;
    if rw.is_write {
        let _order = order.enter().await;
        write_blocks(lu, backend.as_ref(), offset, data, rw.fua, rw.lba).await?;
        Ok(Payload::default())
    } else if let Some(file) = backend.sendable_file().filter(|_| len >= FILE_DATA_IN_MIN)
        && let Some(guard) = order.enter_for_sending().await
    {
        Ok(Payload::File(FileSlice {
            file,
            offset,
            len,
            hold: Arc::new(guard),
        }))
    } else {
        let _order = order.enter().await;
        read_blocks(backend.as_ref(), offset, len, rw.lba)
            .await
            .map(Payload::Bytes)
    }
}

/// Reads from this size up are sent from the file when they can be: below it, a copy into
/// the PDU batch costs less than a sendfile call of its own per read.
const FILE_DATA_IN_MIN: usize = 64 * 1024;

/// SYNCHRONIZE CACHE(10)/(16) (SBC-3 §5.22/§5.23). The range is checked, then the whole
/// backend is flushed (no per-range flush exists). IMMED is honoured by simply completing
/// after the flush, which SBC-3 permits.
pub async fn synchronize_cache(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<(), Sense> {
    let sync = cdb::decode_sync_cache(raw_cdb)?;
    let backend = lu.medium()?;
    let capacity = capacity_blocks(backend.as_ref(), lu.block_size());
    check_lba_range(sync.lba, u64::from(sync.blocks), capacity)?;
    backend.flush().await.map_err(|error| {
        tracing::warn!(backend = %backend.describe(), %error, "flush failed");
        Sense::medium_error_write()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_capacity10_boundaries() {
        assert_eq!(
            read_capacity10_data(2048, 512),
            [0, 0, 0x07, 0xFF, 0, 0, 2, 0]
        );
        // Last LBA FFFFFFFEh still fits; beyond, FFFFFFFFh says "use READ CAPACITY(16)".
        assert_eq!(
            &read_capacity10_data(0xFFFF_FFFF, 512)[..4],
            &[0xFF, 0xFF, 0xFF, 0xFE]
        );
        assert_eq!(&read_capacity10_data(1 << 32, 512)[..4], &[0xFF; 4]);
        assert_eq!(
            &read_capacity10_data(1 << 40, 4096)[..8],
            &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0]
        );
    }

    #[test]
    fn read_capacity16_layout() {
        let d = read_capacity16_data((1 << 33) + 1, 4096, 0);
        assert_eq!(&d[0..8], &(1u64 << 33).to_be_bytes());
        assert_eq!(&d[8..12], &[0, 0, 0x10, 0]);
        assert!(d[12..].iter().all(|&b| b == 0));
        // 8 logical blocks per physical block: exponent 3, lowest aligned LBA 0.
        let d = read_capacity16_data(1 << 20, 512, 3);
        assert_eq!(&d[12..16], &[0, 3, 0, 0]);
    }

    #[test]
    fn lba_range_checks() {
        assert!(check_lba_range(0, 8, 8).is_ok());
        assert!(check_lba_range(7, 1, 8).is_ok());
        assert!(check_lba_range(7, 0, 8).is_ok());
        assert_eq!(check_lba_range(7, 2, 8), Err(Sense::lba_out_of_range()));
        assert_eq!(check_lba_range(8, 0, 8), Err(Sense::lba_out_of_range()));
        assert_eq!(
            check_lba_range(u64::MAX, 2, u64::MAX),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(check_lba_range(0, 0, 0), Err(Sense::lba_out_of_range()));
    }

    #[test]
    fn write_data_out_counts_write_bytes_only() {
        use crate::scsi::opcodes::op;
        use crate::scsi::table;
        assert_eq!(
            write_data_out(&[op::WRITE_10, 0, 0, 0, 0, 0, 0, 0, 4, 0], 512),
            2048
        );
        assert_eq!(
            write_data_out(&[op::WRITE_6, 0, 0, 0, 0, 0], 4096),
            256 * 4096
        );
        // READ rows have no Data-Out rule: they never call write_data_out.
        assert_eq!(
            table::data_out_needed(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 4, 0], 512),
            0
        );
        assert_eq!(write_data_out(&[op::WRITE_10, 0], 512), 0);
        assert_eq!(
            table::data_out_needed(&[op::INQUIRY, 0, 0, 0, 36, 0], 512),
            0
        );
        let mut w16 = [0u8; 16];
        w16[0] = op::WRITE_16;
        w16[10..14].copy_from_slice(&[0xFF; 4]);
        assert_eq!(write_data_out(&w16, 4096), u32::MAX);
    }
}
