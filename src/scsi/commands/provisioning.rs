//! Logical block provisioning (SBC-4 §4.7): UNMAP, GET LBA STATUS, and what READ CAPACITY(16)
//! and the block limits / logical block provisioning VPD pages say about it.
//!
//! What is reported is a pure function of the medium's [`Provisioning`]: a logical unit is
//! thin provisioned (LBPME = 1, provisioning type 010b) when its backend can discard; LBPRZ = 1
//! (and WRITE SAME with UNMAP, LBPWS/LBPWS10) only when discarded blocks read back as zeros
//! (files, RAM, zvols; not an arbitrary block device). GET LBA STATUS reports what the backend
//! really has allocated (SEEK_DATA/SEEK_HOLE for files; a block device cannot tell, so all of
//! it is "mapped or unknown"), at the backend's granularity.

use bytes::Bytes;

use super::block_io::check_lba_range;
use crate::scsi::cdb::bytes_at;
use crate::scsi::opcodes::op;
use crate::scsi::sense::Sense;
use crate::scsi::unit::limits::{MAX_UNMAP_BYTES, MAX_UNMAP_DESCRIPTORS};
use crate::scsi::unit::lu::LogicalUnit;
use crate::storage::{Extent, Provisioning};

/// GET LBA STATUS looks at most this many bytes of the medium per command; the initiator
/// asks again from where the answer ended.
const LBA_STATUS_WINDOW: u64 = 1 << 30;
/// GET LBA STATUS returns at most this many descriptors.
const MAX_LBA_STATUS_DESCRIPTORS: usize = 4096;

/// What `lu`'s medium can do; a unit without a medium yet is fully provisioned.
pub fn provisioning(lu: &LogicalUnit) -> Provisioning {
    lu.medium()
        .map_or(Provisioning::FULLY_PROVISIONED, |b| b.provisioning())
}

/// Whether WRITE SAME with UNMAP deallocates: only where deallocated blocks read back as zeros
/// (LBPRZ = 1), since the blocks must then read as the zeros the initiator asked for. Elsewhere
/// WRITE SAME writes (SBC-4 §5.50: each LBA is written or unmapped) and LBPWS is 0.
pub fn write_same_unmaps(p: &Provisioning) -> bool {
    p.discard && p.discard_zeroes
}

/// READ CAPACITY(16) byte 14: LBPME (bit 7) and LBPRZ (bit 6), SBC-4 §5.20.2.
pub fn read_capacity16_flags(p: &Provisioning) -> u8 {
    match (p.discard, p.discard_zeroes) {
        (true, true) => 0xC0,
        (true, false) => 0x80,
        (false, _) => 0x00,
    }
}

// ---------------------------------------------------------------------------------------
// UNMAP (SBC-4 §5.30).

/// Write data UNMAP asks for (its PARAMETER LIST LENGTH), for the transport's residual
/// accounting. `None` for other opcodes.
pub fn data_out_needed(cdb: &[u8]) -> Option<u32> {
    match cdb.first().copied() {
        Some(op::UNMAP) => Some(decode_unmap(cdb).map_or(0, |c| u32::from(c.param_len))),
        _ => None,
    }
}

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
        param_len: u16::from_be_bytes(bytes_at(cdb, 7)),
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
        return Err(Sense::parameter_list_length_error());
    }
    let data_len = usize::from(u16::from_be_bytes(bytes_at(list, 0)));
    let bd_len = usize::from(u16::from_be_bytes(bytes_at(list, 2)));
    // UNMAP DATA LENGTH counts the bytes after itself; it may not claim more than was sent.
    if data_len + 2 > list.len() || bd_len + 8 > list.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let count = bd_len / 16;
    if count > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2, Some(7)));
    }
    let mut total = 0u64;
    let mut descriptors = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = u64::from_be_bytes(bytes_at(list, at));
        let blocks = u32::from_be_bytes(bytes_at(list, at + 8));
        let end = lba.checked_add(u64::from(blocks));
        if end.is_none_or(|end| end > capacity) {
            return Err(Sense::lba_out_of_range());
        }
        total = total.saturating_add(u64::from(blocks));
        if total > max_lbas {
            return Err(Sense::invalid_field_in_parameter_list(at + 8, Some(7)));
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
        return Err(Sense::parameter_list_length_error());
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
        lba: u64::from_be_bytes(bytes_at(cdb, 2)),
        alloc_len: u32::from_be_bytes(bytes_at(cdb, 10)),
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
    Ok(super::spc::truncate(
        data,
        usize::try_from(c.alloc_len).unwrap_or(usize::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::commands::vpd::{
        block_limits_page, logical_block_provisioning_page, unit_page,
    };
    use crate::scsi::unit::limits::AtomicLimits;
    use crate::scsi::unit::lu::LuIdentity;
    use crate::storage::{BlockBackend, FileBackend, MemoryBackend};

    const BS: u32 = 512;

    fn lu_with(backend: Option<Arc<dyn BlockBackend>>) -> LogicalUnit {
        LogicalUnit::new(LuIdentity::derived("iqn.t", 0), BS, backend, false)
    }

    fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let bd_len = 16 * descriptors.len();
        let mut list = Vec::new();
        list.extend_from_slice(&((bd_len + 6) as u16).to_be_bytes());
        list.extend_from_slice(&(bd_len as u16).to_be_bytes());
        list.extend_from_slice(&[0; 4]);
        for &(lba, n) in descriptors {
            list.extend_from_slice(&lba.to_be_bytes());
            list.extend_from_slice(&n.to_be_bytes());
            list.extend_from_slice(&[0; 4]);
        }
        list
    }

    fn unmap_cdb(param_len: u16, anchor: bool) -> [u8; 10] {
        let mut c = [0u8; 10];
        c[0] = op::UNMAP;
        c[1] = u8::from(anchor);
        c[7..9].copy_from_slice(&param_len.to_be_bytes());
        c
    }

    fn get_lba_status_cdb(lba: u64, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = op::SERVICE_ACTION_IN_16;
        c[1] = op::SA_GET_LBA_STATUS;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    /// (lba, blocks, status) of each descriptor.
    fn descriptors(data: &[u8]) -> Vec<(u64, u32, u8)> {
        let len = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
        assert_eq!((len - 4) % 16, 0);
        data[8..]
            .chunks(16)
            .map(|d| {
                (
                    u64::from_be_bytes(d[0..8].try_into().unwrap()),
                    u32::from_be_bytes(d[8..12].try_into().unwrap()),
                    d[12] & 0x0F,
                )
            })
            .collect()
    }

    #[test]
    fn unmap_cdb_decoding() {
        assert_eq!(
            decode_unmap(&unmap_cdb(24, true)).unwrap(),
            UnmapCdb {
                anchor: true,
                param_len: 24
            }
        );
        assert_eq!(
            decode_unmap(&unmap_cdb(24, false)[..9]).unwrap_err(),
            Sense::invalid_cdb()
        );
    }

    #[test]
    fn unmap_list_parsing_table() {
        let cap = 1000;
        let ok = |list: Vec<u8>| parse_unmap_list(&list, cap, 500);
        assert_eq!(ok(vec![]).unwrap(), vec![]);
        assert_eq!(ok(unmap_list(&[])).unwrap(), vec![]);
        assert_eq!(
            ok(unmap_list(&[(1, 2), (10, 0), (998, 2)])).unwrap(),
            vec![
                UnmapDescriptor { lba: 1, blocks: 2 },
                UnmapDescriptor {
                    lba: 998,
                    blocks: 2
                }
            ]
        );
        // Zero blocks at the capacity is fine; one block there is not.
        assert!(ok(unmap_list(&[(1000, 0)])).unwrap().is_empty());
        assert_eq!(
            ok(unmap_list(&[(1000, 1)])).unwrap_err(),
            Sense::lba_out_of_range()
        );
        assert_eq!(
            ok(unmap_list(&[(u64::MAX, 2)])).unwrap_err(),
            Sense::lba_out_of_range()
        );
        // Too short for the header; lengths claiming more than was sent.
        assert_eq!(ok(vec![0; 7]).unwrap_err().asc, 0x1A);
        let mut long = unmap_list(&[(1, 1)]);
        long[3] = 32;
        assert_eq!(ok(long).unwrap_err().asc, 0x1A);
        // An incomplete trailing descriptor is ignored.
        let mut partial = unmap_list(&[(1, 1), (2, 2)]);
        partial[3] = 24;
        partial[1] = 30;
        assert_eq!(ok(partial).unwrap().len(), 1);
        // Limits: descriptor count and total LBAs.
        let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
        let err = parse_unmap_list(&unmap_list(&many), 100_000, 100_000).unwrap_err();
        assert_eq!(
            (err.asc, err.field_pointer),
            (0x26, Some((false, 2, Some(7))))
        );
        let err = ok(unmap_list(&[(0, 300), (400, 201)])).unwrap_err();
        assert_eq!(err.asc, 0x26);
    }

    #[test]
    fn block_runs_round_to_whole_deallocated_blocks() {
        let e = |len, mapped| Extent { len, mapped };
        assert_eq!(block_runs(&[e(4096, true)], 512), vec![(8, true)]);
        assert_eq!(
            block_runs(&[e(1024, true), e(2048, false), e(1024, true)], 512),
            vec![(2, true), (4, false), (2, true)]
        );
        // A hole covering only part of a block leaves that block mapped.
        assert_eq!(
            block_runs(&[e(512, true), e(3584 + 4096, false)], 4096),
            vec![(1, true), (1, false)]
        );
        assert_eq!(block_runs(&[e(300, false)], 512), vec![]);
    }

    #[test]
    fn lba_status_layout() {
        let data = lba_status_data(100, &[(3, true), (5, false)], 10);
        assert_eq!(&data[0..8], &[0, 0, 0, 36, 0, 0, 0, 0]);
        assert_eq!(descriptors(&data), vec![(100, 3, 0), (103, 5, 1)]);
        let data = lba_status_data(0, &[(3, true), (5, false)], 1);
        assert_eq!(descriptors(&data), vec![(0, 3, 0)]);
        let huge = lba_status_data(0, &[(u64::from(u32::MAX) + 1, false)], 10);
        assert_eq!(
            descriptors(&huge),
            vec![(0, u32::MAX, 1), (u64::from(u32::MAX), 1, 1)]
        );
    }

    /// A file or RAM medium: thin, zeros after discard, 4 KiB granules.
    const FILE: Provisioning = Provisioning {
        discard: true,
        discard_zeroes: true,
        granularity: 4096,
        alignment: 0,
        io_granularity: 0,
    };

    #[test]
    fn pages_and_capacity_flags() {
        assert_eq!(read_capacity16_flags(&FILE), 0xC0);
        assert_eq!(read_capacity16_flags(&Provisioning::FULLY_PROVISIONED), 0);
        assert_eq!(
            logical_block_provisioning_page(&FILE),
            vec![0, 0xB2, 0, 4, 0, 0xE4, 2, 0]
        );
        assert_eq!(
            logical_block_provisioning_page(&Provisioning::FULLY_PROVISIONED),
            vec![0, 0xB2, 0, 4, 0, 0, 0, 0]
        );

        let memory = MemoryBackend::new(1 << 20);
        let page = block_limits_page(512, 1, &memory.provisioning(), None);
        assert_eq!(page.len(), 64);
        assert_eq!(&page[0..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(page[4] & 0x01, 0, "WSNZ = 0");
        assert_eq!(page[5], 255);
        assert_eq!(&page[20..24], &(1u32 << 20).to_be_bytes());
        assert_eq!(&page[24..28], &256u32.to_be_bytes());
        assert_eq!(&page[28..32], &1u32.to_be_bytes());
        assert_eq!(page[32] & 0x80, 0x80);
        assert_eq!(&page[36..44], &0xFFFFu64.to_be_bytes());
        assert_eq!(&page[44..64], &[0; 20], "no WRITE ATOMIC");
        let fully = block_limits_page(4096, 1, &Provisioning::FULLY_PROVISIONED, None);
        assert_eq!(&fully[20..36], &[0; 16]);
        assert_eq!(&fully[36..44], &0xFFFFu64.to_be_bytes());
        assert_eq!(
            &fully[6..8],
            &crate::scsi::unit::limits::OPTIMAL_GRANULARITY_BLOCKS.to_be_bytes(),
            "no optimal I/O size known: the generic granularity"
        );
        // 4 KiB physical blocks of 512-byte logical blocks, 64 KiB ones: granularities are
        // whole physical blocks.
        for (lbppb, granule) in [(8, 8), (128, 128)] {
            let atomic = AtomicLimits::new(512, lbppb);
            let page = block_limits_page(512, lbppb, &memory.provisioning(), Some(atomic));
            let gran = u16::from_be_bytes([page[6], page[7]]);
            assert_eq!(u32::from(gran), granule);
            assert_eq!(&page[28..32], &granule.to_be_bytes(), "UNMAP GRANULARITY");
            assert_eq!(&page[44..64], &atomic.page_fields());
        }

        let thin_lu = lu_with(Some(Arc::new(MemoryBackend::new(1 << 20))));
        assert_eq!(unit_page(&thin_lu, 0xB2).unwrap()[5], 0xE4);
        assert!(unit_page(&thin_lu, 0x83).is_none());
        let not_ready = lu_with(None);
        assert_eq!(unit_page(&not_ready, 0xB2).unwrap()[5], 0);
        assert_eq!(provisioning(&not_ready), Provisioning::FULLY_PROVISIONED);
    }

    #[test]
    fn a_device_whose_discards_do_not_read_as_zeros_is_thin_with_lbprz_0() {
        let ssd = Provisioning {
            discard_zeroes: false,
            ..FILE
        };
        assert_eq!(read_capacity16_flags(&ssd), 0x80, "LBPME, not LBPRZ");
        // LBPU only: no WRITE SAME unmapping, LBPRZ 000b, thin.
        assert_eq!(
            logical_block_provisioning_page(&ssd),
            vec![0, 0xB2, 0, 4, 0, 0x80, 2, 0]
        );
        assert!(!write_same_unmaps(&ssd));
        assert!(write_same_unmaps(&FILE));
        assert!(!write_same_unmaps(&Provisioning::FULLY_PROVISIONED));
        // UNMAP limits are reported all the same.
        let page = block_limits_page(512, 1, &ssd, None);
        assert_eq!(&page[28..32], &8u32.to_be_bytes());
    }

    #[test]
    fn zvol_granularities_reach_the_block_limits_page() {
        // A zvol with volblocksize 16 KiB and 512-byte blocks, in a partition that starts
        // 1 MiB + 4 KiB into it (boundaries at 12 KiB + k·16 KiB of the partition).
        let zvol = Provisioning {
            discard: true,
            discard_zeroes: true,
            granularity: 16 << 10,
            alignment: 12 << 10,
            io_granularity: 16 << 10,
        };
        let page = block_limits_page(512, 1, &zvol, None);
        assert_eq!(
            &page[6..8],
            &32u16.to_be_bytes(),
            "OPTIMAL TRANSFER LENGTH GRANULARITY"
        );
        assert_eq!(&page[28..32], &32u32.to_be_bytes(), "UNMAP GRANULARITY");
        assert_eq!(
            &page[32..36],
            &(0x8000_0000u32 | 24).to_be_bytes(),
            "UGAVALID, LBA 24"
        );
        // 4 KiB blocks: 4 blocks each, alignment LBA 3.
        let page = block_limits_page(4096, 1, &zvol, None);
        assert_eq!(&page[6..8], &4u16.to_be_bytes());
        assert_eq!(&page[28..32], &4u32.to_be_bytes());
        assert_eq!(&page[32..36], &(0x8000_0000u32 | 3).to_be_bytes());
        // An optimal size that is not a whole number of blocks, or an alignment that is not,
        // is not reported.
        let odd = Provisioning {
            io_granularity: 6144,
            alignment: 1024,
            ..zvol
        };
        let page = block_limits_page(4096, 1, &odd, None);
        assert_eq!(
            &page[6..8],
            &crate::scsi::unit::limits::OPTIMAL_GRANULARITY_BLOCKS.to_be_bytes()
        );
        assert_eq!(&page[32..36], &[0; 4], "UGAVALID = 0");
        // A fully provisioned device still reports its optimal I/O size.
        let thick = Provisioning {
            io_granularity: 8192,
            ..Provisioning::FULLY_PROVISIONED
        };
        assert_eq!(
            &block_limits_page(512, 1, &thick, None)[6..8],
            &16u16.to_be_bytes()
        );
    }

    /// RAM whose discards do not promise zeros (like an SSD: LBPRZ = 0). Discard scribbles
    /// 0xEE over the range, so anything relying on zeros after it shows.
    #[derive(Debug)]
    struct NoZeroes(MemoryBackend);
    impl BlockBackend for NoZeroes {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn read_at(&self, offset: u64, len: usize) -> crate::storage::IoFuture<'_, Bytes> {
            self.0.read_at(offset, len)
        }
        fn write_at(
            &self,
            offset: u64,
            data: Bytes,
            fua: bool,
        ) -> crate::storage::IoFuture<'_, ()> {
            self.0.write_at(offset, data, fua)
        }
        fn flush(&self) -> crate::storage::IoFuture<'_, ()> {
            self.0.flush()
        }
        fn describe(&self) -> String {
            "no-zeroes".into()
        }
        fn supports_discard(&self) -> bool {
            true
        }
        fn discard(&self, offset: u64, len: u64) -> crate::storage::IoFuture<'_, ()> {
            let junk = Bytes::from(vec![0xEE; usize::try_from(len).unwrap()]);
            self.0.write_at(offset, junk, false)
        }
        fn provisioning(&self) -> Provisioning {
            Provisioning {
                discard_zeroes: false,
                ..FILE
            }
        }
    }

    #[tokio::test]
    async fn without_lbprz_unmap_deallocates_but_write_same_writes() {
        let lu = lu_with(Some(Arc::new(NoZeroes(MemoryBackend::new(1 << 20)))));
        let medium = lu.medium().unwrap();
        assert_eq!(unit_page(&lu, 0xB2).unwrap()[5], 0x80, "LBPU only");
        // UNMAP reaches the backend.
        let list = unmap_list(&[(8, 8)]);
        unmap(
            &lu,
            &unmap_cdb(list.len() as u16, false),
            &Bytes::from(list),
        )
        .await
        .unwrap();
        assert_eq!(medium.read_at(8 * 512, 1).await.unwrap()[0], 0xEE);
        // WRITE SAME(16) with UNMAP and a 0x5A block: written, since a deallocated block
        // would not read back as the data asked for.
        let mut cdb = [0u8; 16];
        cdb[0] = op::WRITE_SAME_16;
        cdb[1] = 0x08; // UNMAP
        cdb[2..10].copy_from_slice(&64u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&16u32.to_be_bytes());
        crate::scsi::commands::write_same::write_same(&lu, &cdb, &Bytes::from(vec![0x5A; 512]))
            .await
            .unwrap();
        assert_eq!(
            medium.read_at(64 * 512, 16 * 512).await.unwrap(),
            vec![0x5A; 16 * 512]
        );
    }

    #[tokio::test]
    async fn unmap_then_get_lba_status_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend =
            FileBackend::open_file(&dir.path().join("thin.img"), Some(1 << 20), false).unwrap();
        let granule = backend.provisioning().granularity;
        let lu = lu_with(Some(Arc::new(backend)));
        let blocks = (1u64 << 20) / 512;
        let medium = lu.medium().unwrap();
        medium
            .write_at(0, Bytes::from(vec![0xAA; 256 << 10]), false)
            .await
            .unwrap();
        // Unmap 64 KiB at 64 KiB: blocks 128..256.
        let list = unmap_list(&[(128, 128)]);
        unmap(
            &lu,
            &unmap_cdb(list.len() as u16, false),
            &Bytes::from(list),
        )
        .await
        .unwrap();
        assert_eq!(
            medium.read_at(64 << 10, 64 << 10).await.unwrap(),
            vec![0u8; 64 << 10]
        );
        let data = get_lba_status(&lu, &get_lba_status_cdb(0, 1024))
            .await
            .unwrap();
        let d = descriptors(&data);
        assert_eq!(d[0], (0, 128, 0));
        assert_eq!(d[1], (128, 128, 1));
        assert_eq!(d[2], (256, 256, 0));
        assert_eq!(d[3], (512, (blocks - 512) as u32, 1));
        // Starting inside a run starts the first descriptor there.
        let data = get_lba_status(&lu, &get_lba_status_cdb(130, 24))
            .await
            .unwrap();
        assert_eq!(data.len(), 24);
        assert_eq!(descriptors(&data), vec![(130, 126, 1)]);
        // Beyond the end.
        for lba in [blocks, blocks + 1, u64::MAX] {
            let err = get_lba_status(&lu, &get_lba_status_cdb(lba, 24))
                .await
                .unwrap_err();
            assert_eq!(err, Sense::lba_out_of_range());
        }
        // A single 512-byte block unmap zeroes; it deallocates only with 512-byte granules.
        let list = unmap_list(&[(0, 1)]);
        unmap(
            &lu,
            &unmap_cdb(list.len() as u16, false),
            &Bytes::from(list),
        )
        .await
        .unwrap();
        assert_eq!(medium.read_at(0, 512).await.unwrap(), vec![0u8; 512]);
        let data = get_lba_status(&lu, &get_lba_status_cdb(0, 24))
            .await
            .unwrap();
        let expected = if granule <= 512 { 1 } else { 0 };
        assert_eq!(descriptors(&data)[0].2, expected);
    }

    #[tokio::test]
    async fn unmap_refusals() {
        let lu = lu_with(Some(Arc::new(MemoryBackend::new(1 << 20))));
        let list = Bytes::from(unmap_list(&[(0, 1)]));
        let err = unmap(&lu, &unmap_cdb(24, true), &list).await.unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 1, Some(0))));
        // Parameter list length 0: nothing to do; 1..7: length error.
        unmap(&lu, &unmap_cdb(0, false), &Bytes::new())
            .await
            .unwrap();
        let err = unmap(&lu, &unmap_cdb(4, false), &list).await.unwrap_err();
        assert_eq!(err.asc, 0x1A);
        // Less data than the parameter list length: what arrived is parsed.
        let err = unmap(&lu, &unmap_cdb(24, false), &list.slice(..6))
            .await
            .unwrap_err();
        assert_eq!(err.asc, 0x1A);
        let ro = LogicalUnit::new(
            LuIdentity::derived("iqn.t", 0),
            BS,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            true,
        );
        let err = unmap(&ro, &unmap_cdb(24, false), &list).await.unwrap_err();
        assert_eq!(err, Sense::write_protected());
    }
}
