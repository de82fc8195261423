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

use super::lu::LogicalUnit;
use super::opcodes::op;
use super::sbc::{MAX_TRANSFER_BYTES, check_lba_range};
use super::sense::{Sense, SenseKey};
use crate::storage::BlockBackend;

/// MAXIMUM COMPARE AND WRITE LENGTH in the block limits page (SBC-4 §6.6.4): the CDB field is
/// one byte, so 255 at most; also bounded so that the 2 × N blocks of data fit the maximum
/// transfer.
pub fn max_compare_and_write_blocks(block_size: u32) -> u8 {
    let fit = MAX_TRANSFER_BYTES / block_size.max(1) / 2;
    u8::try_from(fit).unwrap_or(MAX_COMPARE_AND_WRITE_BLOCKS)
}

/// Upper bound for [`max_compare_and_write_blocks`].
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

/// MAXIMUM WRITE SAME LENGTH bound in bytes. Writes go out in [`FILL_CHUNK`] pieces, so
/// this bounds the time one command takes, not memory.
pub const MAX_WRITE_SAME_BYTES: u64 = 1 << 30;

/// MAXIMUM WRITE SAME LENGTH bound in blocks: FFFFh, the most WRITE SAME(10) can express,
/// so that both CDB sizes share one limit.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;

/// Largest buffer built for WRITE SAME and read for VERIFY at once.
const FILL_CHUNK: u64 = 1 << 20;

/// MAXIMUM WRITE SAME LENGTH in blocks (SBC-4 §6.6.4).
pub fn max_write_same_blocks(block_size: u32) -> u64 {
    (MAX_WRITE_SAME_BYTES / u64::from(block_size.max(1))).min(MAX_WRITE_SAME_BLOCKS)
}

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

fn byte_at(cdb: &[u8], at: usize) -> u8 {
    cdb.get(at).copied().unwrap_or(0)
}

fn be<const N: usize>(cdb: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| cdb.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

fn be16(cdb: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(be(cdb, at))
}

fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(be(cdb, at))
}

fn be64(cdb: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(be(cdb, at))
}

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

fn capacity(backend: &dyn BlockBackend, block_size: u32) -> u64 {
    backend.size_bytes() / u64::from(block_size.max(1))
}

fn byte_offset(lba: u64, block_size: u32) -> Result<u64, Sense> {
    lba.checked_mul(u64::from(block_size))
        .ok_or_else(Sense::lba_out_of_range)
}

/// The medium for a command that writes: refused on a write-protected unit.
fn writable_medium(lu: &LogicalUnit) -> Result<Arc<dyn BlockBackend>, Sense> {
    let backend = lu.medium()?;
    if lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    Ok(backend)
}

async fn read(
    backend: &dyn BlockBackend,
    offset: u64,
    len: usize,
    lba: u64,
) -> Result<Bytes, Sense> {
    let data = backend.read_at(offset, len).await.map_err(|error| {
        tracing::warn!(backend = %backend.describe(), lba, %error, "read failed");
        Sense::medium_error_read().with_info(lba)
    })?;
    if data.len() != len {
        return Err(Sense::medium_error_read().with_info(lba));
    }
    Ok(data)
}

async fn write(
    backend: &dyn BlockBackend,
    offset: u64,
    data: Bytes,
    fua: bool,
    lba: u64,
) -> Result<(), Sense> {
    backend.write_at(offset, data, fua).await.map_err(|error| {
        tracing::warn!(backend = %backend.describe(), lba, %error, "write failed");
        Sense::medium_error_write().with_info(lba)
    })
}

fn transfer_len(blocks: u32, block_size: u32, field: u16) -> Result<usize, Sense> {
    let bytes = u64::from(blocks) * u64::from(block_size);
    if bytes > u64::from(MAX_TRANSFER_BYTES) {
        return Err(Sense::invalid_field_in_cdb(field, Some(7)));
    }
    usize::try_from(bytes).map_err(|_| Sense::invalid_cdb())
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
        capacity(backend.as_ref(), block_size),
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
    let current = read(backend.as_ref(), offset, half, c.lba).await?;
    if let Some(at) = first_difference(&current, &data_out[..half]) {
        return Err(miscompare(at as u64));
    }
    write(
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
    let capacity = capacity(backend.as_ref(), block_size);
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
    if ws.unmap {
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
        write(
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
        capacity(backend.as_ref(), block_size),
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
        write(backend.as_ref(), offset, payload.clone(), true, v.lba).await?;
        let back = read(backend.as_ref(), offset, payload.len(), v.lba).await?;
        if let Some(at) = first_difference(&back, &payload) {
            return Err(miscompare(at as u64));
        }
        return Ok(Bytes::new());
    }
    match v.bytchk {
        ByteCheck::Compare => {
            let len = transfer_len(v.blocks, block_size, v.blocks_field)?;
            if data_out.len() < len {
                return Err(invalid_field_in_iu());
            }
            if len == 0 {
                return Ok(Bytes::new());
            }
            let current = read(backend.as_ref(), offset, len, v.lba).await?;
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
                let data = read(backend.as_ref(), offset + done, len, lba).await?;
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
        capacity(backend.as_ref(), block_size),
    )?;
    let len = transfer_len(c.blocks, block_size, 10)?;
    let payload = write_payload(data_out, len, block_size)?;
    if payload.is_empty() {
        return Ok(Bytes::new());
    }
    let offset = byte_offset(c.lba, block_size)?;
    let _exclusive = lu.write_exclusive().await;
    let current = read(backend.as_ref(), offset, payload.len(), c.lba).await?;
    let mut merged = BytesMut::from(&current[..]);
    for (m, p) in merged.iter_mut().zip(payload.iter()) {
        *m |= p;
    }
    write(backend.as_ref(), offset, merged.freeze(), c.fua, c.lba).await?;
    Ok(Bytes::new())
}

/// PRE-FETCH(10)/(16) (SBC-4 §5.11, §5.12): the range is checked and the command completes
/// with GOOD, which SBC-4 defines as "the blocks may not all fit in the cache" — keel does not
/// manage a cache of its own (the host page cache is not something it can pin), so CONDITION
/// MET would promise what it cannot keep. libiscsi's Prefetch tests expect GOOD.
pub async fn prefetch(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let p = decode_prefetch(raw_cdb)?;
    let backend = lu.medium()?;
    let capacity = capacity(backend.as_ref(), lu.block_size());
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
