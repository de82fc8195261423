//! Vital product data pages (SPC-4 §7.8, SBC-4 §6.6): every page INQUIRY with EVPD returns
//! is built here. Command families export the limits they enforce (`unit/limits.rs`, the
//! medium's provisioning, WRITE ATOMIC's [`AtomicLimits`]); this file lays them out, so the
//! block limits page (B0h) is assembled in one place.

use super::block_io::{provisioning, write_same_unmaps};
use super::parameter_data::{DEVICE_TYPE_DISK, ascii_field};
use crate::scsi::Nexus;
use crate::scsi::sense::Sense;
use crate::scsi::unit::limits::{
    AtomicLimits, MAX_TRANSFER_BYTES, MAX_UNMAP_BYTES, MAX_UNMAP_DESCRIPTORS,
    OPTIMAL_GRANULARITY_BLOCKS, max_compare_and_write_blocks, max_write_same_blocks,
};
use crate::scsi::unit::lu::{LogicalUnit, LuIdentity};
use crate::storage::Provisioning;

/// The pages that do not depend on the medium, by page code (INVALID FIELD IN CDB for a page
/// this target does not have).
pub fn generic_page(
    identity: &LuIdentity,
    block_size: u32,
    nexus: &Nexus,
    page_code: u8,
) -> Result<Vec<u8>, Sense> {
    Ok(match page_code {
        0x00 => vpd_supported_pages(),
        0x80 => vpd_unit_serial(identity),
        0x83 => vpd_device_identification(identity, nexus),
        0x86 => vpd_extended_inquiry(),
        0xB0 => vpd_block_limits(block_size),
        0xB1 => vpd_block_device_characteristics(),
        0xB2 => vpd_logical_block_provisioning(),
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
    })
}

/// VPD page codes this target returns, ascending (the order page 00h must list them in).
pub const SUPPORTED_VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2];

/// A VPD page: byte 0 peripheral, byte 1 page code, bytes 2-3 page length, then `body`
/// (SPC-4 §7.8.1). Bodies here are far below 64 KiB.
fn vpd_page(page_code: u8, body: &[u8]) -> Vec<u8> {
    let mut page = Vec::with_capacity(4 + body.len());
    page.push(DEVICE_TYPE_DISK);
    page.push(page_code);
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    page.extend_from_slice(&len.to_be_bytes());
    page.extend_from_slice(body);
    page
}

/// VPD 00h: supported VPD pages (SPC-4 §7.8.16).
pub fn vpd_supported_pages() -> Vec<u8> {
    vpd_page(0x00, &SUPPORTED_VPD_PAGES)
}

/// VPD 80h: unit serial number (SPC-4 §7.8.17).
pub fn vpd_unit_serial(identity: &LuIdentity) -> Vec<u8> {
    let serial = ascii_field(&identity.serial, identity.serial.len().min(252));
    vpd_page(0x80, &serial)
}

/// Designator code sets and types (SPC-4 §7.8.6.1 tables 459-461).
const CODE_SET_BINARY: u8 = 0x1;
const CODE_SET_ASCII: u8 = 0x2;
const CODE_SET_UTF8: u8 = 0x3;
const TYPE_T10_VENDOR_ID: u8 = 0x1;
const TYPE_NAA: u8 = 0x3;
const TYPE_RELATIVE_TARGET_PORT: u8 = 0x4;
const TYPE_TARGET_PORT_GROUP: u8 = 0x5;
const TYPE_SCSI_NAME_STRING: u8 = 0x8;
const ASSOC_LOGICAL_UNIT: u8 = 0x0;
const ASSOC_TARGET_PORT: u8 = 0x1;
const ASSOC_TARGET_DEVICE: u8 = 0x2;
/// SPC-4 §7.6.1 table 445: protocol identifier 5h = iSCSI.
const PROTOCOL_ISCSI: u8 = 0x5;

/// Appends one designation descriptor (SPC-4 §7.8.6.1). With `protocol`, PIV is set and the
/// protocol identifier filled in. Designators longer than 255 bytes are cut (callers keep
/// them shorter).
fn push_designator(
    out: &mut Vec<u8>,
    protocol: Option<u8>,
    code_set: u8,
    association: u8,
    designator_type: u8,
    designator: &[u8],
) {
    let designator = &designator[..designator.len().min(255)];
    let (protocol_id, piv) = match protocol {
        Some(p) => (p, 0x80),
        None => (0, 0),
    };
    out.push((protocol_id << 4) | code_set);
    out.push(piv | (association << 4) | designator_type);
    out.push(0);
    out.push(designator.len() as u8);
    out.extend_from_slice(designator);
}

/// A SCSI name string designator body: UTF-8, NUL terminated, NUL padded to a multiple of
/// four, at most 252 bytes (SPC-4 §7.8.6.11). Over-long names are cut at a character
/// boundary.
pub(super) fn scsi_name_string(name: &str) -> Vec<u8> {
    const MAX: usize = 252;
    let mut end = name.len().min(MAX - 1);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = name.as_bytes()[..end].to_vec();
    let padded = (out.len() + 1).next_multiple_of(4);
    out.resize(padded, 0);
    out
}

/// VPD 83h: device identification (SPC-4 §7.8.6). The logical unit's NAA and T10 vendor ID
/// designators, the target port's relative port and SCSI name, the target device's name.
pub fn vpd_device_identification(identity: &LuIdentity, nexus: &Nexus) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    push_designator(
        &mut body,
        None,
        CODE_SET_BINARY,
        ASSOC_LOGICAL_UNIT,
        TYPE_NAA,
        &identity.naa,
    );
    let mut t10 = ascii_field(&identity.vendor, 8);
    t10.extend_from_slice(&ascii_field(
        &identity.serial,
        identity.serial.len().min(255 - 8),
    ));
    push_designator(
        &mut body,
        None,
        CODE_SET_ASCII,
        ASSOC_LOGICAL_UNIT,
        TYPE_T10_VENDOR_ID,
        &t10,
    );
    // Relative target port: bytes 0-1 obsolete, 2-3 the identifier (SPC-4 §7.8.6.7).
    let [hi, lo] = nexus.relative_port.to_be_bytes();
    push_designator(
        &mut body,
        Some(PROTOCOL_ISCSI),
        CODE_SET_BINARY,
        ASSOC_TARGET_PORT,
        TYPE_RELATIVE_TARGET_PORT,
        &[0, 0, hi, lo],
    );
    // ALUA
    // Target port group (SPC-4 §7.8.6.8): each target port is its own group, same number.
    push_designator(
        &mut body,
        Some(PROTOCOL_ISCSI),
        CODE_SET_BINARY,
        ASSOC_TARGET_PORT,
        TYPE_TARGET_PORT_GROUP,
        &[0, 0, hi, lo],
    );
    push_designator(
        &mut body,
        Some(PROTOCOL_ISCSI),
        CODE_SET_UTF8,
        ASSOC_TARGET_PORT,
        TYPE_SCSI_NAME_STRING,
        &scsi_name_string(&nexus.target_port),
    );
    push_designator(
        &mut body,
        Some(PROTOCOL_ISCSI),
        CODE_SET_UTF8,
        ASSOC_TARGET_DEVICE,
        TYPE_SCSI_NAME_STRING,
        &scsi_name_string(&identity.target_name),
    );
    vpd_page(0x83, &body)
}

/// VPD 86h: Extended INQUIRY Data (SPC-4 §7.8.7), page length 3Ch. Only what is true here:
/// - no protection information (SPT/GRD_CHK/APP_CHK/REF_CHK 0);
/// - HEADSUP and SIMPSUP: HEAD OF QUEUE and SIMPLE tasks run as soon as they arrive, nothing
///   queues ahead of them. ORDSUP clear: ORDERED tasks are not serialized against the others
///   (commands run concurrently);
/// - V_SUP: there is a volatile cache (the page cache; WCE, FUA and SYNCHRONIZE CACHE apply);
///   NV_SUP clear: no non-volatile cache;
/// - LUICLR: unit attentions are kept and cleared per I_T nexus.
pub fn vpd_extended_inquiry() -> Vec<u8> {
    let mut body = [0u8; 0x3C];
    body[1] = 0x04 | 0x01; // HEADSUP, SIMPSUP (byte 5)
    body[2] = 0x01; // V_SUP (byte 6)
    body[3] = 0x01; // LUICLR (byte 7)
    vpd_page(0x86, &body)
}

/// VPD B0h: block limits (SBC-3 §6.5.3), page length 3Ch.
pub fn vpd_block_limits(block_size: u32) -> Vec<u8> {
    let mut body = [0u8; 0x3C];
    // body offsets are page offsets minus 4.
    body[2..4].copy_from_slice(&OPTIMAL_GRANULARITY_BLOCKS.to_be_bytes());
    let max_blocks = MAX_TRANSFER_BYTES / block_size.max(1);
    body[4..8].copy_from_slice(&max_blocks.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
    body[8..12].copy_from_slice(&max_blocks.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
    vpd_page(0xB0, &body)
}

/// VPD B1h: block device characteristics (SBC-4 §6.6.2), page length 3Ch: non-rotating
/// medium (rate 0001h), so initiators treat it like an SSD. WABEREQ = 01b: a read of a block
/// that SANITIZE BLOCK ERASE erased (and nothing wrote since) completes with GOOD (it reads
/// zeros); WACEREQ = 00b: CRYPTOGRAPHIC ERASE is not offered.
pub fn vpd_block_device_characteristics() -> Vec<u8> {
    let mut body = [0u8; 0x3C];
    body[0..2].copy_from_slice(&1u16.to_be_bytes());
    body[3] = 0x40; // byte 7: WABEREQ 01b, WACEREQ 00b, NOMINAL FORM FACTOR not reported
    vpd_page(0xB1, &body)
}

/// VPD B2h for a unit without a medium to ask: fully provisioned.
pub fn vpd_logical_block_provisioning() -> Vec<u8> {
    logical_block_provisioning_page(&Provisioning::FULLY_PROVISIONED)
}

/// Smallest multiple of `unit` (a power of two, logical blocks per physical block) at least
/// `blocks`: granularities are whole physical blocks (SBC-4 §6.6.4).
fn whole_physical_blocks(blocks: u64, unit: u32) -> u32 {
    let unit = u64::from(unit.max(1));
    u32::try_from(blocks.max(1).div_ceil(unit) * unit).unwrap_or(u32::MAX)
}

/// VPD B0h, block limits (SBC-4 §6.6.4): the generic page of [`vpd_block_limits`] plus
/// the limits of the commands here. WSNZ = 0 (WRITE SAME with 0 blocks = to the end).
/// OPTIMAL TRANSFER LENGTH GRANULARITY = the medium's I/O granularity (a zvol's volblocksize)
/// when it is a multiple of the block size, else the generic page's. For a thin unit: the
/// UNMAP limits, UNMAP GRANULARITY = the medium's discard granule (smaller unmaps free
/// nothing), with its alignment when it is a whole number of blocks. `lbppb` logical blocks
/// per physical block: both granularities are whole physical blocks (unmapping less than one
/// may leave it mapped, SBC-4 §4.7.3.4; it still reads back as LBPRZ says). `atomic`: the
/// WRITE ATOMIC fields, when the unit offers it.
pub fn block_limits_page(
    block_size: u32,
    lbppb: u32,
    p: &Provisioning,
    atomic: Option<AtomicLimits>,
) -> Vec<u8> {
    // 64 bytes: the generic page is the whole page (length 3Ch).
    let mut page = vpd_block_limits(block_size);
    page[5] = max_compare_and_write_blocks(block_size);
    let bs = u64::from(block_size.max(1));
    let medium_granularity = (p.io_granularity != 0
        && p.io_granularity.is_multiple_of(bs)
        && p.io_granularity <= u64::from(MAX_TRANSFER_BYTES))
    .then_some(p.io_granularity / bs);
    let optimal = whole_physical_blocks(
        medium_granularity.unwrap_or(u64::from(OPTIMAL_GRANULARITY_BLOCKS)),
        lbppb,
    );
    page[6..8].copy_from_slice(&u16::try_from(optimal).unwrap_or(u16::MAX).to_be_bytes());
    if p.discard {
        let lbas = u32::try_from(MAX_UNMAP_BYTES / bs).unwrap_or(u32::MAX);
        page[20..24].copy_from_slice(&lbas.to_be_bytes());
        page[24..28].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        let granularity = whole_physical_blocks((p.granularity / bs).max(1), lbppb);
        page[28..32].copy_from_slice(&granularity.to_be_bytes());
        // UGAVALID = 1 with the UNMAP GRANULARITY ALIGNMENT (the first LBA on a granule
        // boundary, 31 bits), when that is a whole block.
        if p.alignment.is_multiple_of(bs)
            && let Ok(alignment) = u32::try_from(p.alignment / bs)
            && alignment < 0x8000_0000
        {
            page[32..36].copy_from_slice(&(0x8000_0000 | alignment).to_be_bytes());
        }
    }
    page[36..44].copy_from_slice(&max_write_same_blocks(block_size).to_be_bytes());
    if let Some(atomic) = atomic {
        page[44..64].copy_from_slice(&atomic.page_fields());
    }
    page
}

/// VPD B2h, logical block provisioning (SBC-4 §6.6.7): for a thin unit LBPU (UNMAP) and
/// provisioning type 010b (thin); where deallocated blocks read back as zeros also LBPWS
/// (WRITE SAME(16) UNMAP), LBPWS10 (WRITE SAME(10) UNMAP) and LBPRZ = 001b, else LBPRZ = 000b
/// (vendor specific). ANC_SUP = 0, DP = 0.
pub fn logical_block_provisioning_page(p: &Provisioning) -> Vec<u8> {
    let mut body = [0u8; 4];
    if p.discard {
        body[1] = 0x80;
        if write_same_unmaps(p) {
            body[1] |= 0x40 | 0x20 | 0x04;
        }
        body[2] = 0x02;
    }
    vpd_page(0xB2, &body)
}

/// The pages that depend on the unit's medium (block limits, provisioning) for `lu`, or
/// `None` for the others (INQUIRY asks this before [`generic_page`]).
pub fn unit_page(lu: &LogicalUnit, page_code: u8) -> Option<Vec<u8>> {
    match page_code {
        0xB0 => Some(block_limits_page(
            lu.block_size(),
            lu.logical_blocks_per_physical_block(),
            &provisioning(lu),
            lu.atomic_limits(),
        )),
        0xB2 => Some(logical_block_provisioning_page(&provisioning(lu))),
        _ => None,
    }
}
