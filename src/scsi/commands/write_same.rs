//! WRITE SAME(10)/(16) (SBC-4 §5.50, §5.51): one block of data (or zeros, NDOB) written
//! over a range, or the range unmapped where unmapped blocks read back as zeros.

use bytes::{Bytes, BytesMut};

use super::block_io::{
    FILL_CHUNK, byte_offset, capacity_blocks, check_lba_range, check_no_protection, require,
    writable_medium, write_blocks,
};
use crate::scsi::cdb::{be16, be32, be64, byte_at};
use crate::scsi::opcodes::op;
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::limits::max_write_same_blocks;
use crate::scsi::unit::lu::LogicalUnit;

/// WRITE SAME(10) and WRITE SAME(16) (SBC-4 §5.50, §5.51).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteSameCdb {
    pub lba: u64,
    /// 0 means "to the end of the medium" (WSNZ = 0).
    pub blocks: u32,
    pub unmap: bool,
    pub anchor: bool,
    /// No data-out buffer: write zeros (WRITE SAME(16) only).
    pub ndob: bool,
    /// Byte offset of the NUMBER OF LOGICAL BLOCKS field, for field pointers.
    pub blocks_field: u16,
}

pub fn decode_write_same(cdb: &[u8]) -> Result<WriteSameCdb, Sense> {
    let code = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let (lba, blocks, blocks_field) = match code {
        op::WRITE_SAME_10 => {
            require(cdb, 10)?;
            (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), 7)
        }
        op::WRITE_SAME_16 => {
            require(cdb, 16)?;
            (be64(cdb, 2), be32(cdb, 10), 10)
        }
        _ => return Err(Sense::invalid_opcode()),
    };
    check_no_protection(cdb)?;
    let flags = byte_at(cdb, 1);
    // Bits 2-1 were PBDATA/LBDATA (SBC-3, obsolete in SBC-4): not supported.
    if flags & 0x06 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    let unmap = flags & 0x08 != 0;
    let anchor = flags & 0x10 != 0;
    // SBC-4 §5.50: ANCHOR without UNMAP is an invalid combination.
    if anchor && !unmap {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    let ndob = code == op::WRITE_SAME_16 && flags & 0x01 != 0;
    if code == op::WRITE_SAME_10 && flags & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    Ok(WriteSameCdb {
        lba,
        blocks,
        unmap,
        anchor,
        ndob,
        blocks_field,
    })
}

/// WRITE SAME(10)/(16) (SBC-4 §5.50, §5.51). NUMBER OF LOGICAL BLOCKS 0 means through the
/// last LBA (WSNZ = 0). With UNMAP the range is deallocated and the data-out block is not
/// used (SBC-3 §5.42: the UNMAP bit asks for the blocks to be unmapped instead of written;
/// LIO does the same and libiscsi's WriteSame*.UnmapUntilEnd sends 0xFF with UNMAP and
/// expects zeros back); deallocated blocks read as zeros, which LBPRZ = 1 announces.
/// ANCHOR is not supported (ANC_SUP = 0).
pub async fn write_same(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Bytes, Sense> {
    let ws = decode_write_same(raw_cdb)?;
    let backend = writable_medium(lu)?;
    if ws.anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if ws.unmap && !backend.supports_discard() {
        return Err(Sense::invalid_field_in_cdb(1, Some(3)));
    }
    let block_size = lu.block_size();
    let capacity = capacity_blocks(backend.as_ref(), block_size);
    if ws.lba >= capacity {
        return Err(Sense::lba_out_of_range());
    }
    let blocks = if ws.blocks == 0 {
        capacity - ws.lba
    } else {
        u64::from(ws.blocks)
    };
    if blocks > max_write_same_blocks(block_size) {
        return Err(Sense::invalid_field_in_cdb(ws.blocks_field, Some(7)));
    }
    check_lba_range(ws.lba, blocks, capacity)?;
    let block_len = usize::try_from(block_size).map_err(|_| Sense::invalid_cdb())?;
    let block = if ws.ndob {
        Bytes::from(vec![0u8; block_len])
    } else if data_out.len() == block_len {
        data_out.clone()
    } else {
        // Exactly one block of data-out, no more and no less (libiscsi
        // WriteSame*.InvalidDataOutSize).
        return Err(Sense::invalid_field_in_cdb(ws.blocks_field, Some(7)));
    };
    let offset = byte_offset(ws.lba, block_size)?;
    let total = blocks * u64::from(block_size);
    let _order = order.enter().await;
    // Where deallocated blocks would not read back as the zeros asked for, WRITE SAME writes
    // instead (LBPWS = 0 there; see provisioning::write_same_unmaps).
    if ws.unmap && super::block_io::write_same_unmaps(&backend.provisioning()) {
        return backend
            .discard(offset, total)
            .await
            .map(|()| Bytes::new())
            .map_err(|error| {
                tracing::warn!(backend = %backend.describe(), lba = ws.lba, %error, "discard failed");
                Sense::medium_error_write().with_info(ws.lba)
            });
    }
    let chunk_blocks = (FILL_CHUNK / u64::from(block_size)).max(1);
    let pattern = {
        let n = usize::try_from(chunk_blocks.min(blocks)).map_err(|_| Sense::invalid_cdb())?;
        let mut buf = BytesMut::with_capacity(n * block_len);
        for _ in 0..n {
            buf.extend_from_slice(&block);
        }
        buf.freeze()
    };
    let mut done = 0u64;
    while done < blocks {
        let n = chunk_blocks.min(blocks - done);
        let len = usize::try_from(n * u64::from(block_size)).map_err(|_| Sense::invalid_cdb())?;
        let lba = ws.lba + done;
        write_blocks(
            lu,
            backend.as_ref(),
            offset + done * u64::from(block_size),
            pattern.slice(..len),
            false,
            lba,
        )
        .await?;
        done += n;
    }
    Ok(Bytes::new())
}

/// The WRITE SAME(10/16) rows' Data-Out rule (for the transport's residual accounting):
/// one block, none with NDOB (SBC-4 §5.50, §5.51); 0 for a CDB the decoder refuses, so a refused
/// command reports its whole Data-Out as residual.
pub fn write_same_data_out(cdb: &[u8], block_size: u32) -> u32 {
    decode_write_same(cdb).map_or(0, |c| if c.ndob { 0 } else { block_size })
}
