//! Logical block provisioning (SBC-4 §4.7): UNMAP, GET LBA STATUS, and what READ CAPACITY(16)
//! and the block limits / logical block provisioning VPD pages say about it.
//!
//! A logical unit is thin provisioned (LBPME = 1, provisioning type 010b) when its backend can
//! discard ([`BlockBackend::supports_discard`]); discarded blocks read back as zeros
//! (LBPRZ = 1, guaranteed by the backend contract). GET LBA STATUS reports what the backend
//! really has allocated (SEEK_DATA/SEEK_HOLE for files), at the backend's granularity.

use bytes::Bytes;

use super::lu::LogicalUnit;
use super::opcodes::op;
use super::sbc::check_lba_range;
use super::sbc_offload::{max_compare_and_write_blocks, max_write_same_blocks};
use super::sense::{Sense, SenseKey};
use super::spc;
use crate::storage::{BlockBackend, Extent};

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// MAXIMUM UNMAP LBA COUNT, in bytes (reported in blocks).
pub const MAX_UNMAP_BYTES: u64 = 1 << 30;
/// GET LBA STATUS looks at most this many bytes of the medium per command; the initiator
/// asks again from where the answer ended.
const LBA_STATUS_WINDOW: u64 = 1 << 30;
/// GET LBA STATUS returns at most this many descriptors.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 4096;

fn be<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| data.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// 05/26/00 INVALID FIELD IN PARAMETER LIST, pointing at `byte` of the parameter list.
fn invalid_field_in_parameter_list(byte: u16) -> Sense {
    Sense {
        field_pointer: Some((false, byte, Some(7))),
        ..Sense::new(SenseKey::IllegalRequest, 0x26, 0x00)
    }
}

/// 05/1A/00 PARAMETER LIST LENGTH ERROR.
const fn parameter_list_length_error() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00)
}

/// Whether the unit is thin provisioned (LBPME). A unit without a medium yet reports what it
/// knows: not thin.
pub fn thin(lu: &LogicalUnit) -> Option<std::sync::Arc<dyn BlockBackend>> {
    lu.medium().ok().filter(|b| b.supports_discard())
}

/// READ CAPACITY(16) byte 14: LBPME (bit 7) and LBPRZ (bit 6), SBC-4 §5.20.2.
pub fn read_capacity16_flags(thin: bool) -> u8 {
    if thin { 0xC0 } else { 0x00 }
}

/// VPD B0h, block limits (SBC-4 §6.6.4): the generic page of [`spc::vpd_block_limits`] plus
/// the limits of the commands here. WSNZ = 0 (WRITE SAME with 0 blocks = to the end).
pub fn block_limits_page(block_size: u32, backend: Option<&dyn BlockBackend>) -> Vec<u8> {
    let mut page = spc::vpd_block_limits(block_size);
    if page.len() < 64 {
        page.resize(64, 0);
    }
    page[5] = max_compare_and_write_blocks(block_size);
    let bs = u64::from(block_size.max(1));
    if let Some(backend) = backend.filter(|b| b.supports_discard()) {
        let lbas = u32::try_from(MAX_UNMAP_BYTES / bs).unwrap_or(u32::MAX);
        page[20..24].copy_from_slice(&lbas.to_be_bytes());
        page[24..28].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        let granularity =
            u32::try_from((backend.discard_granularity() / bs).max(1)).unwrap_or(u32::MAX);
        page[28..32].copy_from_slice(&granularity.to_be_bytes());
        // UGAVALID = 1, UNMAP GRANULARITY ALIGNMENT = 0.
        page[32..36].copy_from_slice(&0x8000_0000u32.to_be_bytes());
    }
    page[36..44].copy_from_slice(&max_write_same_blocks(block_size).to_be_bytes());
    page
}

/// VPD B2h, logical block provisioning (SBC-4 §6.6.7): for a thin unit LBPU (UNMAP),
/// LBPWS (WRITE SAME(16) UNMAP), LBPWS10 (WRITE SAME(10) UNMAP), LBPRZ = 001b (unmapped
/// blocks read as zeros), ANC_SUP = 0, DP = 0, provisioning type 010b (thin).
pub fn logical_block_provisioning_page(thin: bool) -> Vec<u8> {
    let mut page = vec![0x00, 0xB2, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];
    if thin {
        page[5] = 0x80 | 0x40 | 0x20 | 0x04;
        page[6] = 0x02;
    }
    page
}

/// The provisioning VPD pages for `lu`, or `None` for other pages (INQUIRY calls this
/// before its generic page table).
pub fn vpd_page(lu: &LogicalUnit, page_code: u8) -> Option<Vec<u8>> {
    let backend = thin(lu);
    match page_code {
        0xB0 => Some(block_limits_page(lu.block_size(), backend.as_deref())),
        0xB2 => Some(logical_block_provisioning_page(backend.is_some())),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// UNMAP (SBC-4 §5.30).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapCdb {
    pub anchor: bool,
    pub param_len: u16,
}

pub fn decode_unmap(cdb: &[u8]) -> Result<UnmapCdb, Sense> {
    match cdb.first() {
        Some(&op::UNMAP) => {}
        Some(_) => return Err(Sense::invalid_opcode()),
        None => return Err(Sense::invalid_opcode()),
    }
    if cdb.len() < 10 {
        return Err(Sense::invalid_cdb());
    }
    Ok(UnmapCdb {
        anchor: cdb[1] & 0x01 != 0,
        param_len: u16::from_be_bytes(be(cdb, 7)),
    })
}

/// One UNMAP block descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapDescriptor {
    pub lba: u64,
    pub blocks: u32,
}

/// Parses and validates an UNMAP parameter list (SBC-4 §5.30.2) against the medium's
/// `capacity` and the limits this target reports, before anything is unmapped:
/// - fewer than 8 bytes (but not 0): PARAMETER LIST LENGTH ERROR;
/// - an incomplete trailing descriptor (BLOCK DESCRIPTOR DATA LENGTH not a multiple of 16) is
///   ignored, as SBC-4 says;
/// - more than [`MAX_UNMAP_DESCRIPTORS`] descriptors, or more than `max_lbas` blocks in
///   total: INVALID FIELD IN PARAMETER LIST;
/// - a descriptor reaching past the last LBA: LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub fn parse_unmap_list(
    list: &[u8],
    capacity: u64,
    max_lbas: u64,
) -> Result<Vec<UnmapDescriptor>, Sense> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    if list.len() < 8 {
        return Err(parameter_list_length_error());
    }
    let data_len = usize::from(u16::from_be_bytes(be(list, 0)));
    let bd_len = usize::from(u16::from_be_bytes(be(list, 2)));
    // UNMAP DATA LENGTH counts the bytes after itself; it may not claim more than was sent.
    if data_len + 2 > list.len() || bd_len + 8 > list.len() {
        return Err(parameter_list_length_error());
    }
    let count = bd_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(invalid_field_in_parameter_list(2));
    }
    let mut total = 0u64;
    let mut descriptors = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = u64::from_be_bytes(be(list, at));
        let blocks = u32::from_be_bytes(be(list, at + 8));
        let end = lba.checked_add(u64::from(blocks));
        if end.is_none_or(|end| end > capacity) {
            return Err(Sense::lba_out_of_range());
        }
        total = total.saturating_add(u64::from(blocks));
        if total > max_lbas {
            return Err(invalid_field_in_parameter_list(
                u16::try_from(at + 8).unwrap_or(u16::MAX),
            ));
        }
        if blocks > 0 {
            descriptors.push(UnmapDescriptor { lba, blocks });
        }
    }
    Ok(descriptors)
}

/// UNMAP: deallocates the listed ranges (they read back as zeros afterwards). ANCHOR is not
/// supported (ANC_SUP = 0).
pub async fn unmap(lu: &LogicalUnit, raw_cdb: &[u8], data_out: &Bytes) -> Result<Bytes, Sense> {
    let c = decode_unmap(raw_cdb)?;
    let backend = lu.medium()?;
    if lu.is_read_only() {
        return Err(Sense::write_protected());
    }
    if !backend.supports_discard() {
        return Err(Sense::invalid_opcode());
    }
    if c.anchor {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    let block_size = u64::from(lu.block_size());
    let capacity = backend.size_bytes() / block_size;
    let available = usize::from(c.param_len).min(data_out.len());
    if c.param_len > 0 && available < 8 {
        return Err(parameter_list_length_error());
    }
    let descriptors = parse_unmap_list(
        &data_out[..available],
        capacity,
        MAX_UNMAP_BYTES / block_size,
    )?;
    if descriptors.is_empty() {
        return Ok(Bytes::new());
    }
    let _shared = lu.write_shared().await;
    for d in descriptors {
        let offset = d
            .lba
            .checked_mul(block_size)
            .ok_or_else(Sense::lba_out_of_range)?;
        let len = u64::from(d.blocks) * block_size;
        backend.discard(offset, len).await.map_err(|error| {
            tracing::warn!(backend = %backend.describe(), lba = d.lba, %error, "discard failed");
            Sense::medium_error_write().with_info(d.lba)
        })?;
    }
    Ok(Bytes::new())
}

// ---------------------------------------------------------------------------------------
// GET LBA STATUS (SBC-4 §5.8).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetLbaStatusCdb {
    pub lba: u64,
    pub alloc_len: u32,
}

pub fn decode_get_lba_status(cdb: &[u8]) -> Result<GetLbaStatusCdb, Sense> {
    if cdb.first() != Some(&op::SERVICE_ACTION_IN_16) {
        return Err(Sense::invalid_opcode());
    }
    if cdb.len() < 16 {
        return Err(Sense::invalid_cdb());
    }
    Ok(GetLbaStatusCdb {
        lba: u64::from_be_bytes(be(cdb, 2)),
        alloc_len: u32::from_be_bytes(be(cdb, 10)),
    })
}

/// Runs of blocks with one state: (blocks, mapped). A block is deallocated only if the
/// backend reports all of its bytes deallocated.
pub fn block_runs(extents: &[Extent], block_size: u64) -> Vec<(u64, bool)> {
    let bs = block_size.max(1);
    let total: u64 = extents.iter().map(|e| e.len).sum();
    let blocks = total / bs;
    let mut runs: Vec<(u64, bool)> = Vec::new();
    let push = |n: u64, mapped: bool, runs: &mut Vec<(u64, bool)>| {
        if n == 0 {
            return;
        }
        match runs.last_mut() {
            Some(last) if last.1 == mapped => last.0 += n,
            _ => runs.push((n, mapped)),
        }
    };
    // Walk the deallocated extents; whatever lies between fully covered blocks is mapped.
    let mut pos = 0u64;
    let mut next_block = 0u64;
    for e in extents {
        let start = pos;
        pos += e.len;
        if e.mapped {
            continue;
        }
        let first = start.div_ceil(bs);
        let last = (pos / bs).min(blocks);
        if last > first {
            push(first.saturating_sub(next_block), true, &mut runs);
            push(last - first, false, &mut runs);
            next_block = last;
        }
    }
    push(blocks.saturating_sub(next_block), true, &mut runs);
    runs
}

/// GET LBA STATUS parameter data: header and one 16-byte descriptor per run, starting at
/// `lba` (SBC-4 §5.8.2). Runs longer than a descriptor can express are split.
pub fn lba_status_data(lba: u64, runs: &[(u64, bool)], max_descriptors: usize) -> Vec<u8> {
    let mut descriptors: Vec<[u8; 16]> = Vec::new();
    let mut at = lba;
    'runs: for &(mut blocks, mapped) in runs {
        while blocks > 0 {
            if descriptors.len() >= max_descriptors {
                break 'runs;
            }
            let n = blocks.min(u64::from(u32::MAX));
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&at.to_be_bytes());
            d[8..12].copy_from_slice(&(n as u32).to_be_bytes());
            // PROVISIONING STATUS: 0 mapped, 1 deallocated.
            d[12] = if mapped { 0 } else { 1 };
            descriptors.push(d);
            at += n;
            blocks -= n;
        }
    }
    let mut data = Vec::with_capacity(8 + 16 * descriptors.len());
    let param_len = u32::try_from(4 + 16 * descriptors.len()).unwrap_or(u32::MAX);
    data.extend_from_slice(&param_len.to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for d in descriptors {
        data.extend_from_slice(&d);
    }
    data
}

pub async fn get_lba_status(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let c = decode_get_lba_status(raw_cdb)?;
    let backend = lu.medium()?;
    let block_size = u64::from(lu.block_size());
    let capacity = backend.size_bytes() / block_size;
    check_lba_range(c.lba, 0, capacity)?;
    let blocks = (capacity - c.lba)
        .min(LBA_STATUS_WINDOW / block_size)
        .max(1);
    let offset = c
        .lba
        .checked_mul(block_size)
        .ok_or_else(Sense::lba_out_of_range)?;
    let extents = backend
        .allocation(offset, blocks * block_size)
        .await
        .map_err(|error| {
            tracing::warn!(backend = %backend.describe(), lba = c.lba, %error, "allocation query failed");
            Sense::medium_error_read().with_info(c.lba)
        })?;
    let runs = block_runs(&extents, block_size);
    let room = usize::try_from(c.alloc_len.saturating_sub(8) / 16).unwrap_or(usize::MAX);
    let data = lba_status_data(c.lba, &runs, room.clamp(1, MAX_LBA_STATUS_DESCRIPTORS));
    Ok(spc::truncate(
        data,
        usize::try_from(c.alloc_len).unwrap_or(usize::MAX),
    ))
}
