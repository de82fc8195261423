//! LOG SENSE (SPC-4 §6.8) and READ DEFECT DATA (SBC-3 §5.12, §5.13): the minimum a virtual
//! disk owes. keel keeps no log parameters and has no defects.

use bytes::Bytes;

use super::spc::truncate;
use crate::scsi::cdb;
use crate::scsi::opcodes::op;
use crate::scsi::sense::Sense;

/// Supported log pages page code (SPC-4 §7.3.18) and its "supported log pages and subpages"
/// variant (subpage FFh, §7.3.19).
const PAGE_SUPPORTED: u8 = 0x00;
const SUBPAGE_SUPPORTED: u8 = 0xFF;

/// The log pages, as (page, subpage), ascending.
const LOG_PAGES: [(u8, u8); 2] = [(PAGE_SUPPORTED, 0x00), (PAGE_SUPPORTED, SUBPAGE_SUPPORTED)];

/// LOG SENSE parameter data for `(page, subpage)` (SPC-4 §7.3.1): page header, then one byte
/// per supported page (subpage 00h) or a (page, subpage) pair per supported page and subpage
/// (subpage FFh, SPF set).
pub fn log_page(page: u8, subpage: u8) -> Option<Vec<u8>> {
    let (first, body): (u8, Vec<u8>) = match (page, subpage) {
        (PAGE_SUPPORTED, 0x00) => {
            let mut pages: Vec<u8> = LOG_PAGES.iter().map(|(p, _)| *p).collect();
            pages.dedup();
            (PAGE_SUPPORTED, pages)
        }
        (PAGE_SUPPORTED, SUBPAGE_SUPPORTED) => (
            0x40 | PAGE_SUPPORTED,
            LOG_PAGES.iter().flat_map(|(p, s)| [*p, *s]).collect(),
        ),
        _ => return None,
    };
    let mut data = vec![first, subpage];
    data.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
    data.extend(body);
    Some(data)
}

/// LOG SENSE. SP = 1 (save parameters) is refused: nothing is saved. PPC = 1 asks for
/// parameters changed since the last LOG SENSE/SELECT, which only parameter pages have; the
/// supported-pages pages have none, so it is refused too. The page control (PC) selects
/// threshold/cumulative/default values, which for a list of pages are all the same.
pub fn log_sense(raw: &[u8]) -> Result<Bytes, Sense> {
    cdb::require_len(raw, 10)?;
    if raw[1] & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    if raw[1] & 0x02 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(1)));
    }
    let page = raw[2] & 0x3F;
    let subpage = raw[3];
    let alloc_len = u16::from_be_bytes([raw[7], raw[8]]);
    let data = match log_page(page, subpage) {
        Some(data) => data,
        None if LOG_PAGES.iter().any(|(p, _)| *p == page) => {
            return Err(Sense::invalid_field_in_cdb(3, Some(7)));
        }
        None => return Err(Sense::invalid_field_in_cdb(2, Some(5))),
    };
    Ok(truncate(data, usize::from(alloc_len)))
}

/// READ DEFECT DATA(10)/(12): an empty defect list (a virtual disk has no defects) in the
/// requested format. PLISTV/GLISTV say which lists are returned: those requested, both empty.
/// The 12-byte form has a 32-bit DEFECT LIST LENGTH and a generation code (0: not
/// supported). An ADDRESS DESCRIPTOR INDEX past the (empty) list returns the header alone.
pub fn read_defect_data(raw: &[u8]) -> Result<Bytes, Sense> {
    let twelve = raw.first() == Some(&op::READ_DEFECT_DATA_12);
    cdb::require_len(raw, if twelve { 12 } else { 10 })?;
    // SBC-3: READ DEFECT DATA(10) has the request bits in byte 2, (12) in byte 1.
    let flags_at = if twelve { 1 } else { 2 };
    let flags = raw[flags_at] & 0x1F;
    let (header, alloc_len) = if twelve {
        let alloc = u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]);
        (vec![0, flags, 0, 0, 0, 0, 0, 0], alloc)
    } else {
        (
            vec![0, flags, 0, 0],
            u32::from(u16::from_be_bytes([raw[7], raw[8]])),
        )
    };
    Ok(truncate(
        header,
        usize::try_from(alloc_len).unwrap_or(usize::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(flags: u8, page: u8, subpage: u8, alloc: u16) -> [u8; 10] {
        let [hi, lo] = alloc.to_be_bytes();
        [op::LOG_SENSE, flags, page, subpage, 0, 0, 0, hi, lo, 0]
    }

    #[test]
    fn supported_pages() {
        assert_eq!(
            &log_sense(&ls(0, 0x00, 0, 255)).unwrap()[..],
            &[0, 0, 0, 1, 0]
        );
        // PC bits (cumulative values) do not change the list.
        assert_eq!(
            &log_sense(&ls(0, 0x40, 0, 255)).unwrap()[..],
            &[0, 0, 0, 1, 0]
        );
        assert_eq!(
            &log_sense(&ls(0, 0x00, 0xFF, 255)).unwrap()[..],
            &[0x40, 0xFF, 0, 4, 0, 0, 0, 0xFF]
        );
        assert_eq!(log_sense(&ls(0, 0x00, 0, 2)).unwrap().len(), 2);
    }

    #[test]
    fn log_sense_errors() {
        let err = log_sense(&ls(0, 0x2F, 0, 255)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 2, Some(5))));
        let err = log_sense(&ls(0, 0x00, 0x01, 255)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 3, Some(7))));
        let err = log_sense(&ls(0x01, 0x00, 0, 255)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 1, Some(0))));
        let err = log_sense(&ls(0x02, 0x00, 0, 255)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 1, Some(1))));
        assert!(log_sense(&[op::LOG_SENSE, 0, 0]).is_err());
    }

    #[test]
    fn empty_defect_lists() {
        let d = read_defect_data(&[
            op::READ_DEFECT_DATA_10,
            0,
            0x18 | 0x05,
            0,
            0,
            0,
            0,
            0,
            32,
            0,
        ])
        .unwrap();
        assert_eq!(&d[..], &[0, 0x1D, 0, 0]);
        let d = read_defect_data(&[op::READ_DEFECT_DATA_10, 0, 0, 0, 0, 0, 0, 0, 2, 0]).unwrap();
        assert_eq!(d.len(), 2);
        let mut c12 = [0u8; 12];
        c12[0] = op::READ_DEFECT_DATA_12;
        c12[1] = 0x10 | 0x03;
        c12[9] = 32;
        assert_eq!(
            &read_defect_data(&c12).unwrap()[..],
            &[0, 0x13, 0, 0, 0, 0, 0, 0]
        );
        assert!(read_defect_data(&c12[..10]).is_err());
    }
}
