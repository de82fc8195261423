//! COMPARE AND WRITE (SBC-4 §5.3) and ORWRITE(16) (SBC-4 §5.10): the read-modify-write
//! commands.
//!
//! Write ordering (SBC-4 §5.3, COMPARE AND WRITE is atomic against other commands writing
//! the same blocks): their rows put them in the ordering class
//! [`OrderClass::ReadModifyWrite`](crate::scsi::ordering::OrderClass::ReadModifyWrite), which
//! blocks every read and write of the unit (but reads sent from the file), so no write can
//! land between their read and their write. A range lock would let unrelated writes proceed;
//! the LU-wide lock is kept because the exclusive holders are short (at most
//! [`MAX_COMPARE_AND_WRITE_BLOCKS`](crate::scsi::unit::limits::MAX_COMPARE_AND_WRITE_BLOCKS)
//! blocks for CAW, the ATS heartbeat of VMware is one block) and it is obviously correct.

use bytes::{Bytes, BytesMut};

use super::block_io::{
    byte_offset, capacity_blocks, check_lba_range, check_no_protection, first_difference,
    miscompare, read_blocks, require, transfer_len, writable_medium, write_blocks, write_payload,
};
use crate::scsi::cdb::{be32, be64, byte_at};
use crate::scsi::opcodes::op;
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::limits::max_compare_and_write_blocks;
use crate::scsi::unit::lu::LogicalUnit;

/// COMPARE AND WRITE (SBC-4 §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompareAndWriteCdb {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
    pub dpo: bool,
}

pub fn decode_compare_and_write(cdb: &[u8]) -> Result<CompareAndWriteCdb, Sense> {
    if require(cdb, 16)? != op::COMPARE_AND_WRITE {
        return Err(Sense::invalid_opcode());
    }
    check_no_protection(cdb)?;
    let flags = byte_at(cdb, 1);
    Ok(CompareAndWriteCdb {
        lba: be64(cdb, 2),
        blocks: u32::from(byte_at(cdb, 13)),
        fua: flags & 0x08 != 0,
        dpo: flags & 0x10 != 0,
    })
}

/// ORWRITE(16) (SBC-4 §5.10): the data-out buffer is ORed into the blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrWriteCdb {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
    pub dpo: bool,
}

pub fn decode_orwrite(cdb: &[u8]) -> Result<OrWriteCdb, Sense> {
    if require(cdb, 16)? != op::ORWRITE_16 {
        return Err(Sense::invalid_opcode());
    }
    check_no_protection(cdb)?;
    let flags = byte_at(cdb, 1);
    Ok(OrWriteCdb {
        lba: be64(cdb, 2),
        blocks: be32(cdb, 10),
        fua: flags & 0x08 != 0,
        dpo: flags & 0x10 != 0,
    })
}

/// COMPARE AND WRITE (SBC-4 §5.3): reads N blocks, compares them with the first half of the
/// data-out buffer and, only if all match, writes the second half — atomically with respect
/// to every other write (exclusive write-order lock). The data-out buffer must be exactly
/// 2 × N blocks: the command is undefined for anything else and libiscsi's
/// CompareAndWrite.InvalidDataOutSize requires failing it.
pub async fn compare_and_write(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Bytes, Sense> {
    let c = decode_compare_and_write(raw_cdb)?;
    let backend = writable_medium(lu)?;
    let block_size = lu.block_size();
    check_lba_range(
        c.lba,
        u64::from(c.blocks),
        capacity_blocks(backend.as_ref(), block_size),
    )?;
    if c.blocks > u32::from(max_compare_and_write_blocks(block_size)) {
        return Err(Sense::invalid_field_in_cdb(13, Some(7)));
    }
    let half = transfer_len(c.blocks, block_size, 13)?;
    if Some(data_out.len()) != half.checked_mul(2) {
        return Err(Sense::invalid_field_in_cdb(13, Some(7)));
    }
    if c.blocks == 0 {
        return Ok(Bytes::new());
    }
    let offset = byte_offset(c.lba, block_size)?;
    let _order = order.enter().await;
    let current = read_blocks(backend.as_ref(), offset, half, c.lba).await?;
    if let Some(at) = first_difference(&current, &data_out[..half]) {
        return Err(miscompare(at as u64));
    }
    write_blocks(
        lu,
        backend.as_ref(),
        offset,
        data_out.slice(half..),
        c.fua,
        c.lba,
    )
    .await?;
    Ok(Bytes::new())
}

/// ORWRITE(16) (SBC-4 §5.10, BMOP 000b): each block becomes the bitwise OR of its current
/// content and the data-out buffer. Read, OR and write happen under the exclusive
/// write-order lock, so the operation is atomic with respect to other writes.
pub async fn orwrite(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Bytes, Sense> {
    let c = decode_orwrite(raw_cdb)?;
    let backend = writable_medium(lu)?;
    let block_size = lu.block_size();
    check_lba_range(
        c.lba,
        u64::from(c.blocks),
        capacity_blocks(backend.as_ref(), block_size),
    )?;
    let len = transfer_len(c.blocks, block_size, 10)?;
    let payload = write_payload(data_out, len, block_size)?;
    if payload.is_empty() {
        return Ok(Bytes::new());
    }
    let offset = byte_offset(c.lba, block_size)?;
    let _order = order.enter().await;
    let current = read_blocks(backend.as_ref(), offset, payload.len(), c.lba).await?;
    let mut merged = BytesMut::from(&current[..]);
    for (m, p) in merged.iter_mut().zip(payload.iter()) {
        *m |= p;
    }
    write_blocks(lu, backend.as_ref(), offset, merged.freeze(), c.fua, c.lba).await?;
    Ok(Bytes::new())
}

/// The COMPARE AND WRITE row's Data-Out rule (for the transport's residual accounting):
/// the verify and the write buffers, NUMBER OF LOGICAL BLOCKS each (SBC-4 §5.3), in bytes
/// saturating at `u32::MAX`; 0 for a CDB the decoder refuses, so a refused command reports
/// its whole Data-Out as residual.
pub fn compare_and_write_data_out(cdb: &[u8], block_size: u32) -> u32 {
    let bytes = decode_compare_and_write(cdb)
        .map_or(0, |c| u64::from(c.blocks) * u64::from(block_size) * 2);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// The ORWRITE(16) row's Data-Out rule: TRANSFER LENGTH blocks in bytes (SBC-4 §5.10),
/// saturating at `u32::MAX`; 0 for a CDB the decoder refuses.
pub fn orwrite_data_out(cdb: &[u8], block_size: u32) -> u32 {
    let bytes = decode_orwrite(cdb).map_or(0, |c| u64::from(c.blocks) * u64::from(block_size));
    u32::try_from(bytes).unwrap_or(u32::MAX)
}
