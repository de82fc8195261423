//! SPC-4 primary commands: INQUIRY (standard data and VPD pages), REPORT LUNS, REQUEST SENSE,
//! MODE SENSE. The page builders are pure functions; the handlers only add CDB decoding and
//! allocation-length truncation. None of these touch the medium.

use bytes::Bytes;

use super::Nexus;
use super::cdb::{self, InquiryCdb, ModeSenseCdb, PageControl, RequestSenseCdb};
use super::lu::{LogicalUnit, LuIdentity};
use super::sbc::MAX_TRANSFER_BYTES;
use super::sense::Sense;

/// Peripheral device type 00h: direct access block device (SBC-3).
pub const DEVICE_TYPE_DISK: u8 = 0x00;
/// Peripheral qualifier 011b with device type 1Fh: no logical unit here (SPC-4 §6.6.2).
pub const PERIPHERAL_NO_LUN: u8 = 0x7F;

/// Cuts `data` to the allocation length (SPC-4 §4.3.5.6: never an error).
pub fn truncate(mut data: Vec<u8>, alloc_len: usize) -> Bytes {
    data.truncate(alloc_len);
    Bytes::from(data)
}

/// `text` as a fixed-width, space-padded ASCII field: characters outside printable ASCII
/// become spaces (SPC-4 §4.4.1 requires graphic ASCII), longer text is cut.
pub fn ascii_field(text: &str, width: usize) -> Vec<u8> {
    let mut field: Vec<u8> = text
        .bytes()
        .take(width)
        .map(|b| if (0x20..0x7F).contains(&b) { b } else { b' ' })
        .collect();
    field.resize(width, b' ');
    field
}

/// Version descriptors (SPC-4 §6.6.2 table 141): SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0960, 0x0460, 0x04C0];
/// Standard INQUIRY data length: through the last version descriptor field and reserved
/// bytes 74-95.
const STANDARD_INQUIRY_LEN: usize = 96;

/// Standard INQUIRY data (SPC-4 §6.6.2). `peripheral` is byte 0 (qualifier and type).
pub fn standard_inquiry(identity: &LuIdentity, peripheral: u8) -> Vec<u8> {
    let mut data = vec![0u8; STANDARD_INQUIRY_LEN];
    data[0] = peripheral;
    data[2] = 0x06; // VERSION: SPC-4
    // HISUP (bit 4): LUNs use the SAM hierarchical format; RESPONSE DATA FORMAT 2.
    data[3] = 0x10 | 0x02;
    data[4] = (STANDARD_INQUIRY_LEN - 5) as u8;
    data[7] = 0x02; // CMDQUE: full task management model
    data[8..16].copy_from_slice(&ascii_field(&identity.vendor, 8));
    data[16..32].copy_from_slice(&ascii_field(&identity.product, 16));
    data[32..36].copy_from_slice(&ascii_field(&identity.revision, 4));
    for (i, descriptor) in VERSION_DESCRIPTORS.iter().enumerate() {
        let at = 58 + 2 * i;
        data[at..at + 2].copy_from_slice(&descriptor.to_be_bytes());
    }
    data
}

/// VPD page codes this target returns, ascending (the order page 00h must list them in).
pub const SUPPORTED_VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

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
fn scsi_name_string(name: &str) -> Vec<u8> {
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

/// Optimal transfer length granularity reported in the block limits page, in blocks.
pub const OPTIMAL_GRANULARITY_BLOCKS: u16 = 8;

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

/// VPD B1h: block device characteristics (SBC-3 §6.5.2), page length 3Ch: non-rotating
/// medium (rate 0001h), so initiators treat it like an SSD.
pub fn vpd_block_device_characteristics() -> Vec<u8> {
    let mut body = [0u8; 0x3C];
    body[0..2].copy_from_slice(&1u16.to_be_bytes());
    vpd_page(0xB1, &body)
}

/// VPD B2h: logical block provisioning (SBC-3 §6.5.4): no UNMAP/WRITE SAME support yet, fully
/// provisioned.
pub fn vpd_logical_block_provisioning() -> Vec<u8> {
    vpd_page(0xB2, &[0; 4])
}

/// INQUIRY for an existing logical unit.
pub fn inquiry(lu: &LogicalUnit, nexus: &Nexus, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_inquiry(raw_cdb)?;
    // --- SBC offload (issue3-sbc): block limits and provisioning pages know the medium ---
    if cdb.evpd
        && let Some(page) = super::provisioning::vpd_page(lu, cdb.page_code)
    {
        return Ok(truncate(page, usize::from(cdb.alloc_len)));
    }
    // --- end SBC offload (issue3-sbc) ---
    let data = inquiry_data(lu.identity(), lu.block_size(), nexus, &cdb)?;
    Ok(truncate(data, usize::from(cdb.alloc_len)))
}

/// The INQUIRY parameter data a decoded CDB asks for.
pub fn inquiry_data(
    identity: &LuIdentity,
    block_size: u32,
    nexus: &Nexus,
    cdb: &InquiryCdb,
) -> Result<Vec<u8>, Sense> {
    if !cdb.evpd {
        return Ok(standard_inquiry(identity, DEVICE_TYPE_DISK));
    }
    Ok(match cdb.page_code {
        0x00 => vpd_supported_pages(),
        0x80 => vpd_unit_serial(identity),
        0x83 => vpd_device_identification(identity, nexus),
        0xB0 => vpd_block_limits(block_size),
        0xB1 => vpd_block_device_characteristics(),
        0xB2 => vpd_logical_block_provisioning(),
        _ => return Err(Sense::invalid_field_in_cdb(2, Some(7))),
    })
}

/// INQUIRY addressed to a LUN that does not exist: standard data with peripheral qualifier
/// 011b, type 1Fh (SPC-4 §6.6.2); VPD pages are refused with LOGICAL UNIT NOT SUPPORTED.
pub fn inquiry_no_lun(identity: &LuIdentity, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_inquiry(raw_cdb)?;
    if cdb.evpd {
        return Err(Sense::lun_not_supported());
    }
    let data = standard_inquiry(identity, PERIPHERAL_NO_LUN);
    Ok(truncate(data, usize::from(cdb.alloc_len)))
}

/// REPORT LUNS parameter data (SPC-4 §6.33): list length, 4 reserved bytes, 8 bytes per LUN.
/// SELECT REPORT 01h asks for well-known LUNs only, of which there are none.
pub fn report_luns_data(luns: &[u64], select_report: u8) -> Vec<u8> {
    let listed: &[u64] = if select_report == 0x01 { &[] } else { luns };
    let list_len = u32::try_from(listed.len() * 8).unwrap_or(u32::MAX);
    let mut data = Vec::with_capacity(8 + listed.len() * 8);
    data.extend_from_slice(&list_len.to_be_bytes());
    data.extend_from_slice(&[0; 4]);
    for &lun in listed {
        data.extend_from_slice(&cdb::encode_lun(lun));
    }
    data
}

/// REPORT LUNS: `luns` sorted ascending.
pub fn report_luns(luns: &[u64], raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_report_luns(raw_cdb)?;
    let data = report_luns_data(luns, cdb.select_report);
    let alloc_len = usize::try_from(cdb.alloc_len).unwrap_or(usize::MAX);
    Ok(truncate(data, alloc_len))
}

/// REQUEST SENSE parameter data (SPC-4 §6.39) for `sense`, in the format the DESC bit asks.
/// The caller decodes the CDB first so that a malformed one does not consume the pending
/// condition it would report.
pub fn request_sense_data(sense: &Sense, cdb: &RequestSenseCdb) -> Bytes {
    let data = sense.encode(cdb.desc);
    data.slice(..data.len().min(usize::from(cdb.alloc_len)))
}

/// What MODE SENSE reports about a logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeParams {
    pub read_only: bool,
    pub descriptor_sense: bool,
    pub block_size: u32,
    /// Capacity in blocks (0 while not ready).
    pub blocks: u64,
}

const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0A;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const PAGE_ALL: u8 = 0x3F;
const SUBPAGE_ALL: u8 = 0xFF;

/// Caching mode page (SBC-3 §6.4.5): WCE = 1, writes complete into the page cache and need
/// SYNCHRONIZE CACHE or FUA to be durable. Nothing is changeable.
fn caching_page(pc: PageControl) -> Vec<u8> {
    let mut page = vec![0u8; 20];
    page[0] = PAGE_CACHING;
    page[1] = 0x12;
    if pc != PageControl::Changeable {
        page[2] = 0x04; // WCE
    }
    page
}

/// Control mode page (SPC-4 §7.5.8). GLTSD: no log parameters are saved. D_SENSE per the
/// logical unit. QUEUE ALGORITHM MODIFIER 1: unrestricted reordering of SIMPLE commands,
/// which the I/O path does. QERR 00b: other commands continue after a CHECK CONDITION.
/// TAS 1: commands aborted by another nexus's task management complete with TASK ABORTED.
fn control_page(pc: PageControl, descriptor_sense: bool) -> Vec<u8> {
    let mut page = vec![0u8; 12];
    page[0] = PAGE_CONTROL;
    page[1] = 0x0A;
    if pc == PageControl::Changeable {
        return page;
    }
    page[2] = 0x02; // GLTSD
    if descriptor_sense && pc == PageControl::Current {
        page[2] |= 0x04;
    }
    page[3] = 0x10; // QUEUE ALGORITHM MODIFIER = 1, QERR = 00b
    page[5] = 0x40; // TAS
    page
}

/// Informational exceptions control mode page (SPC-4 §7.5.11): DEXCPT = 1, nothing to
/// report.
fn informational_exceptions_page(pc: PageControl) -> Vec<u8> {
    let mut page = vec![0u8; 12];
    page[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
    page[1] = 0x0A;
    if pc != PageControl::Changeable {
        page[2] = 0x08; // DEXCPT
    }
    page
}

/// The mode pages a CDB selects, in ascending page order. None of the pages has subpages, so
/// subpage FFh ("all subpages") returns the page 0 format page and any other non-zero
/// subpage is invalid.
fn mode_pages(cdb: &ModeSenseCdb, params: &ModeParams) -> Result<Vec<u8>, Sense> {
    let pc = cdb.page_control;
    if cdb.subpage_code != 0 && cdb.subpage_code != SUBPAGE_ALL {
        return Err(Sense::invalid_field_in_cdb(3, Some(7)));
    }
    let mut pages = Vec::with_capacity(44);
    if matches!(cdb.page_code, PAGE_CACHING | PAGE_ALL) {
        pages.extend(caching_page(pc));
    }
    if matches!(cdb.page_code, PAGE_CONTROL | PAGE_ALL) {
        pages.extend(control_page(pc, params.descriptor_sense));
    }
    if matches!(cdb.page_code, PAGE_INFORMATIONAL_EXCEPTIONS | PAGE_ALL) {
        pages.extend(informational_exceptions_page(pc));
    }
    if pages.is_empty() {
        return Err(Sense::invalid_field_in_cdb(2, Some(5)));
    }
    Ok(pages)
}

/// Block descriptor (SBC-3 §6.4.2): short (8 bytes, block count saturating at FFFFFFFFh) or
/// long LBA (16 bytes).
fn block_descriptor(params: &ModeParams, long: bool) -> Vec<u8> {
    if long {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&params.blocks.to_be_bytes());
        d[12..16].copy_from_slice(&params.block_size.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let blocks = u32::try_from(params.blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&blocks.to_be_bytes());
        // LOGICAL BLOCK LENGTH is 24 bits; block sizes are at most 64 KiB.
        d[5..8].copy_from_slice(&params.block_size.to_be_bytes()[1..]);
        d
    }
}

/// Complete MODE SENSE(6)/(10) parameter data (SPC-4 §7.5.4/§7.5.5), before truncation.
pub fn mode_sense_data(cdb: &ModeSenseCdb, params: &ModeParams) -> Result<Vec<u8>, Sense> {
    if cdb.page_control == PageControl::Saved {
        return Err(Sense::saving_parameters_not_supported(2, Some(7)));
    }
    let pages = mode_pages(cdb, params)?;
    let descriptor = if cdb.dbd {
        Vec::new()
    } else {
        block_descriptor(params, cdb.llbaa)
    };
    // SBC-3 §6.4.1 device-specific parameter: WP, DPOFUA (DPO and FUA are honoured).
    let write_protect = if params.read_only { 0x80 } else { 0x00 };
    let device_specific = write_protect | 0x10;
    let mut data = Vec::with_capacity(8 + descriptor.len() + pages.len());
    if cdb.ten {
        data.extend_from_slice(&[0, 0, 0, device_specific]);
        data.push(u8::from(cdb.llbaa && !cdb.dbd)); // LONGLBA
        data.push(0);
        data.extend_from_slice(&(descriptor.len() as u16).to_be_bytes());
        data.extend(descriptor);
        data.extend(pages);
        // MODE DATA LENGTH excludes itself (2 bytes); small fixed pages keep it in range.
        let len = u16::try_from(data.len() - 2).unwrap_or(u16::MAX);
        data[0..2].copy_from_slice(&len.to_be_bytes());
    } else {
        data.extend_from_slice(&[0, 0, device_specific, descriptor.len() as u8]);
        data.extend(descriptor);
        data.extend(pages);
        data[0] = u8::try_from(data.len() - 1).unwrap_or(u8::MAX);
    }
    Ok(data)
}

/// MODE SENSE(6)/(10) for a logical unit.
pub fn mode_sense(lu: &LogicalUnit, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_mode_sense(raw_cdb)?;
    let params = ModeParams {
        read_only: lu.is_read_only(),
        descriptor_sense: lu.descriptor_sense(),
        block_size: lu.block_size(),
        blocks: if lu.not_ready_sense().is_some() {
            0
        } else {
            lu.capacity_blocks()
        },
    };
    let data = mode_sense_data(&cdb, &params)?;
    Ok(truncate(data, usize::from(cdb.alloc_len)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::opcodes::op;
    use crate::scsi::sense::SenseKey;

    fn identity() -> LuIdentity {
        LuIdentity::derived("iqn.2026-01.org.example:disk0", 0)
    }

    fn nexus() -> Nexus {
        Nexus {
            initiator_port: Arc::from("iqn.1993-08.org.debian:01:abc,i,0x23d000000001"),
            target_port: Arc::from("iqn.2026-01.org.example:disk0,t,0x0001"),
            relative_port: 1,
        }
    }

    #[test]
    fn standard_inquiry_layout() {
        let d = standard_inquiry(&identity(), DEVICE_TYPE_DISK);
        assert_eq!(d.len(), 96);
        assert_eq!(&d[0..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x00, 0x00, 0x02]);
        assert_eq!(&d[8..16], b"KEEL    ");
        assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
        assert_eq!(&d[32..36], b"0001");
        assert_eq!(
            &d[58..66],
            &[0x00, 0xA0, 0x09, 0x60, 0x04, 0x60, 0x04, 0xC0]
        );
        assert!(d[66..].iter().all(|&b| b == 0));
        assert_eq!(standard_inquiry(&identity(), PERIPHERAL_NO_LUN)[0], 0x7F);
    }

    #[test]
    fn ascii_fields_are_padded_cut_and_sanitised() {
        assert_eq!(ascii_field("AB", 4), b"AB  ");
        assert_eq!(ascii_field("ABCDEFGH", 4), b"ABCD");
        assert_eq!(ascii_field("A\u{e9}", 4), b"A   ");
    }

    #[test]
    fn supported_pages_page() {
        assert_eq!(
            vpd_supported_pages(),
            vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        );
    }

    #[test]
    fn serial_page() {
        let id = identity();
        let page = vpd_unit_serial(&id);
        assert_eq!(&page[0..4], &[0, 0x80, 0, 16]);
        assert_eq!(&page[4..], id.serial.as_bytes());
    }

    #[test]
    fn device_identification_page() {
        let id = identity();
        let page = vpd_device_identification(&id, &nexus());
        assert_eq!(&page[0..2], &[0, 0x83]);
        let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
        assert_eq!(len, page.len() - 4);

        let mut at = 4;
        let mut next = || {
            let header = [page[at], page[at + 1], page[at + 2], page[at + 3]];
            let body = page[at + 4..at + 4 + usize::from(header[3])].to_vec();
            at += 4 + usize::from(header[3]);
            (header, body)
        };
        let (h, naa) = next();
        assert_eq!(h, [0x01, 0x03, 0, 16]);
        assert_eq!(naa, id.naa);

        let (h, t10) = next();
        assert_eq!(h, [0x02, 0x01, 0, 24]);
        assert_eq!(&t10[..8], b"KEEL    ");
        assert_eq!(&t10[8..], id.serial.as_bytes());

        let (h, rel) = next();
        assert_eq!(h, [0x51, 0x94, 0, 4]);
        assert_eq!(rel, vec![0, 0, 0, 1]);

        let (h, port) = next();
        let port_name = b"iqn.2026-01.org.example:disk0,t,0x0001";
        assert_eq!(h[..3], [0x53, 0x98, 0]);
        assert!(usize::from(h[3]).is_multiple_of(4));
        assert_eq!(&port[..port_name.len()], port_name);
        assert!(port[port_name.len()..].iter().all(|&b| b == 0));
        assert!(port.len() > port_name.len());

        let (h, device) = next();
        assert_eq!(h[..3], [0x53, 0xA8, 0]);
        assert_eq!(&device[..29], b"iqn.2026-01.org.example:disk0");
        assert_eq!(device.len(), 32);
        assert_eq!(at, page.len());
    }

    #[test]
    fn scsi_name_strings_are_terminated_padded_and_bounded() {
        assert_eq!(scsi_name_string("abc"), b"abc\0");
        assert_eq!(scsi_name_string("abcd"), b"abcd\0\0\0\0");
        let long = "\u{e9}".repeat(200);
        let s = scsi_name_string(&long);
        assert!(s.len() <= 252 && s.len().is_multiple_of(4));
        assert!(std::str::from_utf8(s.split(|&b| b == 0).next().unwrap()).is_ok());
    }

    #[test]
    fn block_limits_page() {
        let page = vpd_block_limits(512);
        assert_eq!(page.len(), 64);
        assert_eq!(&page[0..4], &[0, 0xB0, 0, 0x3C]);
        assert_eq!(&page[6..8], &[0, 8]);
        assert_eq!(u32::from_be_bytes(page[8..12].try_into().unwrap()), 16384);
        assert_eq!(u32::from_be_bytes(page[12..16].try_into().unwrap()), 16384);
        let page = vpd_block_limits(4096);
        assert_eq!(u32::from_be_bytes(page[8..12].try_into().unwrap()), 2048);
    }

    #[test]
    fn characteristics_and_provisioning_pages() {
        let page = vpd_block_device_characteristics();
        assert_eq!(page.len(), 64);
        assert_eq!(&page[0..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
        assert!(page[6..].iter().all(|&b| b == 0));
        assert_eq!(
            vpd_logical_block_provisioning(),
            vec![0, 0xB2, 0, 4, 0, 0, 0, 0]
        );
    }

    #[test]
    fn inquiry_pages_and_errors() {
        let id = identity();
        let n = nexus();
        let vpd = |page| InquiryCdb {
            evpd: true,
            page_code: page,
            alloc_len: 255,
        };
        for page in SUPPORTED_VPD_PAGES {
            assert_eq!(inquiry_data(&id, 512, &n, &vpd(page)).unwrap()[1], page);
        }
        let err = inquiry_data(&id, 512, &n, &vpd(0x89)).unwrap_err();
        assert_eq!((err.key, err.asc), (SenseKey::IllegalRequest, 0x24));
    }

    #[test]
    fn inquiry_for_a_missing_lun() {
        let d = inquiry_no_lun(&identity(), &[op::INQUIRY, 0, 0, 0, 36, 0]).unwrap();
        assert_eq!(d.len(), 36);
        assert_eq!(d[0], 0x7F);
        let err = inquiry_no_lun(&identity(), &[op::INQUIRY, 1, 0x80, 0, 36, 0]).unwrap_err();
        assert_eq!(err, Sense::lun_not_supported());
    }

    #[test]
    fn report_luns_encoding_and_truncation() {
        let data = report_luns_data(&[0, 1, 300], 0);
        assert_eq!(&data[0..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&data[8..16], &[0; 8]);
        assert_eq!(&data[16..24], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&data[24..32], &[0x41, 0x2C, 0, 0, 0, 0, 0, 0]);
        assert_eq!(report_luns_data(&[0, 1], 1), vec![0; 8]);
        assert_eq!(report_luns_data(&[0, 1], 2).len(), 24);

        let cdb = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0];
        let d = report_luns(&[0, 1, 300], &cdb).unwrap();
        assert_eq!(d.len(), 16);
        assert_eq!(&d[0..4], &[0, 0, 0, 24]);
    }

    #[test]
    fn request_sense_format_and_truncation() {
        let s = Sense::power_on_reset();
        let rs = |cdb: &[u8]| request_sense_data(&s, &cdb::decode_request_sense(cdb).unwrap());
        assert_eq!(rs(&[op::REQUEST_SENSE, 0, 0, 0, 252, 0]), s.encode_fixed());
        assert_eq!(
            rs(&[op::REQUEST_SENSE, 1, 0, 0, 252, 0]),
            s.encode_descriptor()
        );
        assert_eq!(rs(&[op::REQUEST_SENSE, 0, 0, 0, 8, 0]).len(), 8);
    }

    fn params() -> ModeParams {
        ModeParams {
            read_only: false,
            descriptor_sense: false,
            block_size: 512,
            blocks: 2048,
        }
    }

    fn ms6(flags: u8, page: u8, subpage: u8) -> ModeSenseCdb {
        cdb::decode_mode_sense(&[op::MODE_SENSE_6, flags, page, subpage, 255, 0]).unwrap()
    }

    fn ms10(flags: u8, page: u8, subpage: u8) -> ModeSenseCdb {
        cdb::decode_mode_sense(&[op::MODE_SENSE_10, flags, page, subpage, 0, 0, 0, 1, 0, 0])
            .unwrap()
    }

    #[test]
    fn mode_sense6_all_pages_with_block_descriptor() {
        let d = mode_sense_data(&ms6(0, 0x3F, 0), &params()).unwrap();
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
        assert_eq!(&d[0..4], &[(d.len() - 1) as u8, 0, 0x10, 8]);
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        assert_eq!(&d[12..15], &[0x08, 0x12, 0x04]);
        assert_eq!(&d[32..38], &[0x0A, 0x0A, 0x02, 0x10, 0x00, 0x40]);
        assert_eq!(&d[44..47], &[0x1C, 0x0A, 0x08]);
        // Subpage FFh: the same pages.
        assert_eq!(mode_sense_data(&ms6(0, 0x3F, 0xFF), &params()).unwrap(), d);
    }

    #[test]
    fn mode_sense_dbd_read_only_and_d_sense() {
        let p = ModeParams {
            read_only: true,
            descriptor_sense: true,
            ..params()
        };
        let d = mode_sense_data(&ms6(0x08, 0x0A, 0), &p).unwrap();
        assert_eq!(
            &d[..],
            &[
                15, 0, 0x90, 0, 0x0A, 0x0A, 0x06, 0x10, 0, 0x40, 0, 0, 0, 0, 0, 0
            ]
        );
        // Default values do not carry the current D_SENSE.
        let d = mode_sense_data(&ms6(0x08, 0x80 | 0x0A, 0), &p).unwrap();
        assert_eq!(d[6], 0x02);
    }

    #[test]
    fn mode_sense_page_control() {
        let d = mode_sense_data(&ms6(0x08, 0x40 | 0x08, 0), &params()).unwrap();
        assert_eq!(&d[4..6], &[0x08, 0x12]);
        assert!(d[6..].iter().all(|&b| b == 0));
        let err = mode_sense_data(&ms6(0, 0xC0 | 0x08, 0), &params()).unwrap_err();
        assert_eq!((err.asc, err.ascq), (0x39, 0x00));
        assert_eq!(err.field_pointer, Some((true, 2, Some(7))));
    }

    #[test]
    fn mode_sense_bad_page_or_subpage() {
        let err = mode_sense_data(&ms6(0, 0x19, 0), &params()).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 2, Some(5))));
        let err = mode_sense_data(&ms6(0, 0x08, 1), &params()).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 3, Some(7))));
        assert!(mode_sense_data(&ms6(0, 0x08, 0xFF), &params()).is_ok());
    }

    #[test]
    fn mode_sense10_short_and_long_descriptors() {
        let p = ModeParams {
            blocks: 1 << 33,
            ..params()
        };
        let d = mode_sense_data(&ms10(0, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[0..8], &[0, (d.len() - 2) as u8, 0, 0x10, 0, 0, 0, 8]);
        assert_eq!(&d[8..16], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x02, 0x00]);
        assert_eq!(d[16], 0x1C);

        let d = mode_sense_data(&ms10(0x10, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[0..8], &[0, (d.len() - 2) as u8, 0, 0x10, 1, 0, 0, 16]);
        assert_eq!(&d[8..16], &(1u64 << 33).to_be_bytes());
        assert_eq!(&d[20..24], &[0, 0, 2, 0]);

        // DBD wins over LLBAA.
        let d = mode_sense_data(&ms10(0x18, 0x1C, 0), &p).unwrap();
        assert_eq!(&d[4..8], &[0, 0, 0, 0]);
        assert_eq!(d.len(), 8 + 12);
    }
}
