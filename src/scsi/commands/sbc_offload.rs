//! SBC data-integrity and offload commands: COMPARE AND WRITE, WRITE SAME(10/16), VERIFY
//! (10/12/16), WRITE AND VERIFY (10/12/16), ORWRITE(16), PRE-FETCH(10/16); and the write
//! residual rule shared with READ/WRITE.
//!
//! Decoders are pure (bytes in, fields or sense out) and unit tested without I/O; handlers
//! check every LBA range with checked arithmetic before touching the medium.
//!
//! Write ordering (SBC-4 §5.3, COMPARE AND WRITE is atomic against other commands writing
//! the same blocks): every command that writes takes the logical unit's write-order lock
//! shared ([`LogicalUnit::write_shared`]); the read-modify-write commands (COMPARE AND WRITE,
//! ORWRITE) take it exclusive, so no write can land between their read and their write. A
//! range lock would let unrelated writes proceed; the LU-wide lock is kept because the
//! exclusive holders are short (at most [`MAX_COMPARE_AND_WRITE_BLOCKS`] blocks for CAW,
//! the ATS heartbeat of VMware is one block) and it is obviously correct.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::sbc::{
    byte_offset, capacity_blocks, check_lba_range, read_blocks, transfer_len, write_blocks,
};
use crate::scsi::cdb::{be16, be32, be64, byte_at};
use crate::scsi::opcodes::op;
use crate::scsi::sense::{Sense, SenseKey};
use crate::scsi::unit::limits::{max_compare_and_write_blocks, max_write_same_blocks};
use crate::scsi::unit::lu::LogicalUnit;
use crate::storage::BlockBackend;

/// Largest buffer built for WRITE SAME and read for VERIFY at once.
const FILL_CHUNK: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Sense conditions specific to these commands.

/// 0E/1D/00 MISCOMPARE DURING VERIFY OPERATION with the INFORMATION field set to the offset
/// of the first byte that differed (SBC-4 §5.3 for COMPARE AND WRITE, §5.33 for VERIFY).
pub fn miscompare(offset: u64) -> Sense {
    Sense::new(SenseKey::Miscompare, 0x1D, 0x00).with_info(offset)
}

/// 05/0E/03 INVALID FIELD IN COMMAND INFORMATION UNIT: the initiator's expected transfer
/// length cannot carry the data the CDB describes (FCP-4 §9.4.2 b; libiscsi's residual tests
/// accept it).
pub const fn invalid_field_in_iu() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x0E, 0x03)
}

// ---------------------------------------------------------------------------------------
// Pure CDB field access (the CDB was length-checked against its opcode first).

fn require(cdb: &[u8], len: usize) -> Result<u8, Sense> {
    let code = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    if cdb.len() < len {
        return Err(Sense::invalid_cdb());
    }
    Ok(code)
}

/// The protection field (RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT, byte 1 bits 7-5) must be
/// zero: protection information is not supported (INQUIRY PROTECT = 0, SBC-4 §4.22).
fn check_no_protection(cdb: &[u8]) -> Result<(), Sense> {
    if byte_at(cdb, 1) & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Decoders.

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

/// BYTCHK of VERIFY and WRITE AND VERIFY (SBC-4 §5.33 table 99, §5.45 table 110).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCheck {
    /// 00b: medium verification only, no data compared.
    None,
    /// 01b: compare the data-out buffer with the medium.
    Compare,
    /// 11b: one block of data-out compared against every block of the range.
    SameBlock,
}

/// VERIFY (10/12/16) or WRITE AND VERIFY (10/12/16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyCdb {
    pub lba: u64,
    pub blocks: u32,
    pub bytchk: ByteCheck,
    pub dpo: bool,
    /// WRITE AND VERIFY.
    pub write: bool,
    pub blocks_field: u16,
}

pub fn decode_verify(cdb: &[u8]) -> Result<VerifyCdb, Sense> {
    let code = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let (len, write) = match code {
        op::VERIFY_10 => (10, false),
        op::VERIFY_12 => (12, false),
        op::VERIFY_16 => (16, false),
        op::WRITE_AND_VERIFY_10 => (10, true),
        op::WRITE_AND_VERIFY_12 => (12, true),
        op::WRITE_AND_VERIFY_16 => (16, true),
        _ => return Err(Sense::invalid_opcode()),
    };
    require(cdb, len)?;
    let (lba, blocks, blocks_field) = match len {
        10 => (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)), 7),
        12 => (u64::from(be32(cdb, 2)), be32(cdb, 6), 6),
        _ => (be64(cdb, 2), be32(cdb, 10), 10),
    };
    check_no_protection(cdb)?;
    let flags = byte_at(cdb, 1);
    let bytchk = match (flags >> 1) & 0x03 {
        0b00 => ByteCheck::None,
        0b01 => ByteCheck::Compare,
        0b11 => ByteCheck::SameBlock,
        // 10b is reserved.
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(2))),
    };
    Ok(VerifyCdb {
        lba,
        blocks,
        bytchk,
        dpo: flags & 0x10 != 0,
        write,
        blocks_field,
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

/// PRE-FETCH(10)/(16) (SBC-4 §5.11, §5.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefetchCdb {
    pub lba: u64,
    /// 0 means "to the end of the medium".
    pub blocks: u32,
    pub immed: bool,
}

pub fn decode_prefetch(cdb: &[u8]) -> Result<PrefetchCdb, Sense> {
    let code = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let (lba, blocks) = match code {
        op::PRE_FETCH_10 => {
            require(cdb, 10)?;
            (u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7)))
        }
        op::PRE_FETCH_16 => {
            require(cdb, 16)?;
            (be64(cdb, 2), be32(cdb, 10))
        }
        _ => return Err(Sense::invalid_opcode()),
    };
    Ok(PrefetchCdb {
        lba,
        blocks,
        immed: byte_at(cdb, 1) & 0x02 != 0,
    })
}

/// Write data the CDB of one of these commands asks for, in bytes, for the transport's
/// residual accounting. `None` for opcodes this module does not own.
pub fn data_out_needed(cdb: &[u8], block_size: u32) -> Option<u32> {
    let code = *cdb.first()?;
    let bs = u64::from(block_size);
    let bytes: u64 = match code {
        op::COMPARE_AND_WRITE => {
            decode_compare_and_write(cdb).map_or(0, |c| u64::from(c.blocks) * bs * 2)
        }
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            decode_write_same(cdb).map_or(0, |c| if c.ndob { 0 } else { bs })
        }
        op::VERIFY_10
        | op::VERIFY_12
        | op::VERIFY_16
        | op::WRITE_AND_VERIFY_10
        | op::WRITE_AND_VERIFY_12
        | op::WRITE_AND_VERIFY_16 => decode_verify(cdb).map_or(0, |c| match c.bytchk {
            ByteCheck::None if !c.write => 0,
            ByteCheck::SameBlock => bs,
            _ => u64::from(c.blocks) * bs,
        }),
        op::ORWRITE_16 => decode_orwrite(cdb).map_or(0, |c| u64::from(c.blocks) * bs),
        op::UNMAP => super::provisioning::decode_unmap(cdb).map_or(0, |c| u64::from(c.param_len)),
        op::PRE_FETCH_10 | op::PRE_FETCH_16 => 0,
        _ => return None,
    };
    Some(u32::try_from(bytes).unwrap_or(u32::MAX))
}

// ---------------------------------------------------------------------------------------
// The write residual rule.

/// The write data to use when the CDB describes `needed` bytes and the initiator sent
/// `data_out` (its expected data transfer length, EDTL).
///
/// - EDTL ≥ needed: the first `needed` bytes; the rest is an underflow residual that the
///   transport reports (RFC 7143 §11.4.5.1).
/// - EDTL < needed and a whole number of blocks: FCP-4 §9.4.2 a) — "process the command
///   normally except that data beyond the FCP_DL count shall not be requested or
///   transferred": exactly the blocks received are written and the command completes GOOD
///   with an overflow residual of `needed − EDTL` bytes, which tells the initiator precisely
///   which blocks were not transferred (and so not written). This is what libiscsi's
///   `iSCSIResiduals.Write*Residuals` expect, and what LIO does.
/// - EDTL < needed and not a whole number of blocks: FCP-4 §9.4.2 b) — nothing is written
///   and the command fails with INVALID FIELD IN COMMAND INFORMATION UNIT (05/0E/03); a
///   partial block is never written, nor padded and reported written.
pub fn write_payload(data_out: &Bytes, needed: usize, block_size: u32) -> Result<Bytes, Sense> {
    if data_out.len() >= needed {
        return Ok(data_out.slice(..needed));
    }
    let block = usize::try_from(block_size.max(1)).map_err(|_| Sense::invalid_cdb())?;
    if !data_out.len().is_multiple_of(block) {
        return Err(invalid_field_in_iu());
    }
    Ok(data_out.clone())
}

/// Offset of the first byte where `a` and `b` differ (over the shorter length).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

// ---------------------------------------------------------------------------------------
// Medium helpers.

/// The medium for a command that writes: refused on a write-protected unit.
fn writable_medium(lu: &LogicalUnit) -> Result<Arc<dyn BlockBackend>, Sense> {
    let backend = lu.medium()?;
    if lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    Ok(backend)
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// COMPARE AND WRITE (SBC-4 §5.3): reads N blocks, compares them with the first half of the
/// data-out buffer and, only if all match, writes the second half — atomically with respect
/// to every other write (exclusive write-order lock). The data-out buffer must be exactly
/// 2 × N blocks: the command is undefined for anything else and libiscsi's
/// CompareAndWrite.InvalidDataOutSize requires failing it.
pub async fn compare_and_write(
    lu: &LogicalUnit,
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
    let _exclusive = lu.write_exclusive().await;
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

/// WRITE SAME(10)/(16) (SBC-4 §5.50, §5.51). NUMBER OF LOGICAL BLOCKS 0 means through the
/// last LBA (WSNZ = 0). With UNMAP the range is deallocated and the data-out block is not
/// used (SBC-3 §5.42: the UNMAP bit asks for the blocks to be unmapped instead of written;
/// LIO does the same and libiscsi's WriteSame*.UnmapUntilEnd sends 0xFF with UNMAP and
/// expects zeros back); deallocated blocks read as zeros, which LBPRZ = 1 announces.
/// ANCHOR is not supported (ANC_SUP = 0).
pub async fn write_same(
    lu: &LogicalUnit,
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
    let _shared = lu.write_shared().await;
    // Where deallocated blocks would not read back as the zeros asked for, WRITE SAME writes
    // instead (LBPWS = 0 there; see provisioning::write_same_unmaps).
    if ws.unmap && super::provisioning::write_same_unmaps(&backend.provisioning()) {
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

/// VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16) (SBC-4 §5.33-5.35, §5.45-5.47).
///
/// VERIFY BYTCHK 00b reads the range (medium verification: every block must be readable),
/// 01b compares it with the data-out buffer, 11b compares every block with the single block
/// sent. WRITE AND VERIFY writes durably (as with FUA), then reads back and, for BYTCHK
/// 01b, compares; its BYTCHK 11b is not supported (INVALID FIELD IN CDB).
pub async fn verify(lu: &LogicalUnit, raw_cdb: &[u8], data_out: &Bytes) -> Result<Bytes, Sense> {
    let v = decode_verify(raw_cdb)?;
    let backend = if v.write {
        writable_medium(lu)?
    } else {
        lu.medium()?
    };
    if v.write && v.bytchk == ByteCheck::SameBlock {
        return Err(Sense::invalid_field_in_cdb(1, Some(2)));
    }
    let block_size = lu.block_size();
    check_lba_range(
        v.lba,
        u64::from(v.blocks),
        capacity_blocks(backend.as_ref(), block_size),
    )?;
    let offset = byte_offset(v.lba, block_size)?;
    let total = u64::from(v.blocks) * u64::from(block_size);
    if v.write {
        let len = transfer_len(v.blocks, block_size, v.blocks_field)?;
        let payload = write_payload(data_out, len, block_size)?;
        if payload.is_empty() {
            return Ok(Bytes::new());
        }
        let _shared = lu.write_shared().await;
        write_blocks(lu, backend.as_ref(), offset, payload.clone(), true, v.lba).await?;
        let back = read_blocks(backend.as_ref(), offset, payload.len(), v.lba).await?;
        if let Some(at) = first_difference(&back, &payload) {
            return Err(miscompare(at as u64));
        }
        return Ok(Bytes::new());
    }
    // Ordered against WRITE ATOMIC: never half of one.
    let _shared = lu.read_shared().await;
    match v.bytchk {
        ByteCheck::Compare => {
            let len = transfer_len(v.blocks, block_size, v.blocks_field)?;
            if data_out.len() < len {
                return Err(invalid_field_in_iu());
            }
            if len == 0 {
                return Ok(Bytes::new());
            }
            let current = read_blocks(backend.as_ref(), offset, len, v.lba).await?;
            if let Some(at) = first_difference(&current, &data_out[..len]) {
                return Err(miscompare(at as u64));
            }
        }
        ByteCheck::None | ByteCheck::SameBlock => {
            let block_len = usize::try_from(block_size).map_err(|_| Sense::invalid_cdb())?;
            let expected = if v.bytchk == ByteCheck::SameBlock {
                if v.blocks > 0 && data_out.len() < block_len {
                    return Err(invalid_field_in_iu());
                }
                Some(data_out.slice(..block_len.min(data_out.len())))
            } else {
                None
            };
            let mut done = 0u64;
            while done < total {
                let n = FILL_CHUNK.min(total - done);
                let lba = v.lba + done / u64::from(block_size);
                let len = usize::try_from(n).map_err(|_| Sense::invalid_cdb())?;
                let data = read_blocks(backend.as_ref(), offset + done, len, lba).await?;
                if let Some(expected) = &expected {
                    for (i, block) in data.chunks(block_len).enumerate() {
                        if let Some(at) = first_difference(block, expected) {
                            let base = done + (i * block_len) as u64;
                            return Err(miscompare(base + at as u64));
                        }
                    }
                }
                done += n;
            }
        }
    }
    Ok(Bytes::new())
}

/// ORWRITE(16) (SBC-4 §5.10, BMOP 000b): each block becomes the bitwise OR of its current
/// content and the data-out buffer. Read, OR and write happen under the exclusive
/// write-order lock, so the operation is atomic with respect to other writes.
pub async fn orwrite(lu: &LogicalUnit, raw_cdb: &[u8], data_out: &Bytes) -> Result<Bytes, Sense> {
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
    let _exclusive = lu.write_exclusive().await;
    let current = read_blocks(backend.as_ref(), offset, payload.len(), c.lba).await?;
    let mut merged = BytesMut::from(&current[..]);
    for (m, p) in merged.iter_mut().zip(payload.iter()) {
        *m |= p;
    }
    write_blocks(lu, backend.as_ref(), offset, merged.freeze(), c.fua, c.lba).await?;
    Ok(Bytes::new())
}

/// PRE-FETCH(10)/(16) (SBC-4 §5.11, §5.12): the range is checked and the command completes
/// with GOOD, which SBC-4 defines as "the blocks may not all fit in the cache" — keel does not
/// manage a cache of its own (the host page cache is not something it can pin), so CONDITION
/// MET would promise what it cannot keep. libiscsi's Prefetch tests expect GOOD.
pub async fn prefetch(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let p = decode_prefetch(raw_cdb)?;
    let backend = lu.medium()?;
    let capacity = capacity_blocks(backend.as_ref(), lu.block_size());
    if p.lba >= capacity {
        return Err(Sense::lba_out_of_range());
    }
    let blocks = if p.blocks == 0 {
        capacity - p.lba
    } else {
        u64::from(p.blocks)
    };
    check_lba_range(p.lba, blocks, capacity)?;
    Ok(Bytes::new())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::scsi::unit::lu::LuIdentity;
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
        for (cdb, expect) in cases {
            assert_eq!(data_out_needed(&cdb, BS), expect, "{cdb:02x?}");
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
}
