//! SPC-4 primary commands: INQUIRY (standard data and VPD pages), REPORT LUNS, REQUEST SENSE
//! (MODE SENSE/SELECT live in `mode`). The page builders are pure functions; the handlers only add CDB decoding and
//! allocation-length truncation. None of these touch the medium.

use bytes::Bytes;

use super::vpd;
use crate::scsi::Nexus;
use crate::scsi::cdb::{self, InquiryCdb, RequestSenseCdb};
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::{LogicalUnit, LuIdentity};

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

/// Standard INQUIRY byte 1 bit 7: the medium is removable (SPC-4 §6.6.2).
const RMB: u8 = 0x80;

/// TPGS = 01b (SPC-4 §6.6.2 table 142): implicit asymmetric access only (REPORT TARGET PORT
/// GROUPS, no SET TARGET PORT GROUPS); see `alua`.
const TPGS_IMPLICIT: u8 = 0x10;

/// 3PC (SPC-4 §6.6.2, byte 5 bit 3): the unit is a copy manager (EXTENDED COPY, see `xcopy`).
const THIRD_PARTY_COPY: u8 = 0x08;

/// Standard INQUIRY data (SPC-4 §6.6.2). `peripheral` is byte 0 (qualifier and type).
pub fn standard_inquiry(identity: &LuIdentity, peripheral: u8) -> Vec<u8> {
    let mut data = vec![0u8; STANDARD_INQUIRY_LEN];
    data[0] = peripheral;
    data[2] = 0x06; // VERSION: SPC-4
    // HISUP (bit 4): LUNs use the SAM hierarchical format; RESPONSE DATA FORMAT 2.
    data[3] = 0x10 | 0x02;
    data[4] = (STANDARD_INQUIRY_LEN - 5) as u8;
    data[5] = TPGS_IMPLICIT; // ALUA
    data[5] |= THIRD_PARTY_COPY;
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

/// INQUIRY for an existing logical unit.
pub fn inquiry(lu: &LogicalUnit, nexus: &Nexus, raw_cdb: &[u8]) -> Result<Bytes, Sense> {
    let cdb = cdb::decode_inquiry(raw_cdb)?;
    // Block limits and provisioning pages know the medium
    if cdb.evpd
        && let Some(page) = vpd::unit_page(lu, cdb.page_code)
    {
        return Ok(truncate(page, usize::from(cdb.alloc_len)));
    }
    let mut data = inquiry_data(lu.identity(), lu.block_size(), nexus, &cdb)?;
    if !cdb.evpd && lu.is_removable() {
        data[1] |= RMB; // Standard data byte 1 (SPC-4 §6.6.2).
    }
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
    vpd::generic_page(identity, block_size, nexus, cdb.page_code)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::commands::vpd::*;
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
        // Byte 5: TPGS 01b (ALUA) and 3PC (third-party copy).
        assert_eq!(&d[0..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x18, 0x00, 0x02]);
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
            vec![0, 0, 0, 7, 0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2]
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

        let (h, group) = next();
        assert_eq!(h, [0x51, 0x95, 0, 4]);
        assert_eq!(group, vec![0, 0, 0, 1]);

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
    fn extended_inquiry_page() {
        let page = vpd_extended_inquiry();
        assert_eq!(page.len(), 64);
        assert_eq!(&page[0..8], &[0, 0x86, 0, 0x3C, 0, 0x05, 0x01, 0x01]);
        assert!(page[8..].iter().all(|&b| b == 0));
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
}
