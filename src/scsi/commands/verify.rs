//! VERIFY (10/12/16), WRITE AND VERIFY (10/12/16) (SBC-4 §5.33-5.35, §5.45-5.47) and
//! PRE-FETCH(10)/(16) (SBC-4 §5.11, §5.12): the commands that read the medium without
//! returning its data.

use bytes::Bytes;

use super::block_io::{
    FILL_CHUNK, byte_offset, capacity_blocks, check_lba_range, check_no_protection,
    first_difference, invalid_field_in_iu, miscompare, read_blocks, require, transfer_len,
    writable_medium, write_blocks, write_payload,
};
use crate::scsi::cdb::{be16, be32, be64, byte_at};
use crate::scsi::opcodes::op;
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::LogicalUnit;

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

/// VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16) (SBC-4 §5.33-5.35, §5.45-5.47).
///
/// VERIFY BYTCHK 00b reads the range (medium verification: every block must be readable),
/// 01b compares it with the data-out buffer, 11b compares every block with the single block
/// sent. WRITE AND VERIFY writes durably (as with FUA), then reads back and, for BYTCHK
/// 01b, compares; its BYTCHK 11b is not supported (INVALID FIELD IN CDB).
pub async fn verify(
    lu: &LogicalUnit,
    order: Order<'_>,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<Bytes, Sense> {
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
        let _order = order.enter().await;
        write_blocks(lu, backend.as_ref(), offset, payload.clone(), true, v.lba).await?;
        let back = read_blocks(backend.as_ref(), offset, payload.len(), v.lba).await?;
        if let Some(at) = first_difference(&back, &payload) {
            return Err(miscompare(at as u64));
        }
        return Ok(Bytes::new());
    }
    let _order = order.enter().await;
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

/// The VERIFY and WRITE AND VERIFY(10/12/16) rows' Data-Out rule (for the transport's
/// residual accounting), in bytes saturating at `u32::MAX`: none for a VERIFY without
/// BYTCHK, one block for BYTCHK=11b, else the transfer length (SBC-4 §5.33 table 99,
/// §5.45 table 110); 0 for a CDB the decoder refuses, so a refused command reports its
/// whole Data-Out as residual.
pub fn verify_data_out(cdb: &[u8], block_size: u32) -> u32 {
    let bs = u64::from(block_size);
    let bytes = decode_verify(cdb).map_or(0, |c| match c.bytchk {
        ByteCheck::None if !c.write => 0,
        ByteCheck::SameBlock => bs,
        _ => u64::from(c.blocks) * bs,
    });
    u32::try_from(bytes).unwrap_or(u32::MAX)
}
