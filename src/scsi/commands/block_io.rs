//! What the block commands share: LBA range and transfer length checks, reading and writing
//! the medium with the MEDIUM ERROR mapping, the write residual rule, and the sense
//! conditions of the data-integrity commands. Command files import this, not each other.

use std::sync::Arc;

use bytes::Bytes;

use crate::scsi::cdb::byte_at;
use crate::scsi::sense::{Sense, SenseKey};
use crate::scsi::unit::limits::MAX_TRANSFER_BYTES;
use crate::scsi::unit::lu::LogicalUnit;
use crate::storage::BlockBackend;

/// Largest buffer built for WRITE SAME and read for VERIFY at once.
pub const FILL_CHUNK: u64 = 1 << 20;

/// Addressable blocks of `backend` (a partial trailing block is not addressable).
pub fn capacity_blocks(backend: &dyn BlockBackend, block_size: u32) -> u64 {
    backend.size_bytes() / u64::from(block_size.max(1))
}

/// SBC-3 §4.5: the addressed range must lie on the medium. The starting LBA must exist even
/// for a zero-length transfer.
pub fn check_lba_range(lba: u64, blocks: u64, capacity: u64) -> Result<(), Sense> {
    let end = lba.checked_add(blocks);
    if lba >= capacity || end.is_none_or(|end| end > capacity) {
        return Err(Sense::lba_out_of_range());
    }
    Ok(())
}

/// Bytes a transfer of `blocks` moves, refused (INVALID FIELD IN CDB at the TRANSFER LENGTH
/// field, byte `field`) above [`MAX_TRANSFER_BYTES`], as the block limits page announces
/// (SBC-3 §6.5.3).
pub fn transfer_len(blocks: u32, block_size: u32, field: u16) -> Result<usize, Sense> {
    let bytes = u64::from(blocks) * u64::from(block_size);
    if bytes > u64::from(MAX_TRANSFER_BYTES) {
        return Err(Sense::invalid_field_in_cdb(field, Some(7)));
    }
    usize::try_from(bytes).map_err(|_| Sense::invalid_cdb())
}

/// Byte offset of `lba`.
pub fn byte_offset(lba: u64, block_size: u32) -> Result<u64, Sense> {
    lba.checked_mul(u64::from(block_size))
        .ok_or_else(Sense::lba_out_of_range)
}

/// Reads `len` bytes at `offset` (block `lba`, for the sense INFORMATION field); a failed or
/// short read is a MEDIUM ERROR.
pub async fn read_blocks(
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
        tracing::warn!(backend = %backend.describe(), lba, wanted = len, got = data.len(), "short read");
        return Err(Sense::medium_error_read().with_info(lba));
    }
    Ok(data)
}

/// Writes `data` at `offset` (block `lba`) of `lu`'s medium `backend`; a failed write is a
/// MEDIUM ERROR. With WCE clear (caching mode page) no write completes from the volatile
/// cache, whatever command wrote it.
pub async fn write_blocks(
    lu: &LogicalUnit,
    backend: &dyn BlockBackend,
    offset: u64,
    data: Bytes,
    fua: bool,
    lba: u64,
) -> Result<(), Sense> {
    let fua = fua || !lu.write_cache_enabled();
    backend.write_at(offset, data, fua).await.map_err(|error| {
        tracing::warn!(backend = %backend.describe(), lba, %error, "write failed");
        Sense::medium_error_write().with_info(lba)
    })
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

pub(super) fn require(cdb: &[u8], len: usize) -> Result<u8, Sense> {
    let code = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    if cdb.len() < len {
        return Err(Sense::invalid_cdb());
    }
    Ok(code)
}

/// The protection field (RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT, byte 1 bits 7-5) must be
/// zero: protection information is not supported (INQUIRY PROTECT = 0, SBC-4 §4.22).
pub(super) fn check_no_protection(cdb: &[u8]) -> Result<(), Sense> {
    if byte_at(cdb, 1) & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(())
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
pub(super) fn writable_medium(lu: &LogicalUnit) -> Result<Arc<dyn BlockBackend>, Sense> {
    let backend = lu.medium()?;
    if lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    Ok(backend)
}
