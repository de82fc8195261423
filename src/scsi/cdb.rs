//! Pure CDB decoding and LUN encoding.
//!
//! Every decoder takes the raw CDB bytes as the transport delivered them (possibly longer than
//! the command's CDB, e.g. iSCSI's 16-byte CDB field carrying a 10-byte CDB) and either returns
//! the fields the handler needs or the sense data to fail the command with. Nothing here
//! indexes past the end of the slice: a CDB shorter than its opcode needs is rejected first.

use super::opcodes::op;
use super::sense::Sense;

/// Largest LUN [`encode_lun`] can express (flat space addressing, 14 bits).
pub const MAX_LUN: u64 = 0x3FFF;

/// SAM-5 §4.7 single level LUN: peripheral device addressing (method 00b) below 256, flat
/// space addressing (method 01b) up to [`MAX_LUN`] = 16383. Larger values cannot be expressed
/// with these methods; they are masked to 14 bits (callers keep LUN numbers within
/// [`MAX_LUN`]; `TargetDevice::add_lun` refuses larger ones).
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    if lun < 256 {
        raw[1] = lun as u8;
    } else {
        let lun = lun & MAX_LUN;
        raw[0] = 0x40 | (lun >> 8) as u8;
        raw[1] = (lun & 0xFF) as u8;
    }
    raw
}

/// Inverse of [`encode_lun`]: accepts single level peripheral device and flat space LUNs whose
/// remaining six bytes are zero. Anything else (hierarchical, extended, well-known LUNs) is
/// `None`.
pub fn decode_lun(raw: [u8; 8]) -> Option<u64> {
    if raw[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match raw[0] >> 6 {
        // Peripheral device addressing: byte 0's low six bits are the bus identifier, which
        // must be zero for a LUN of this target itself.
        0b00 if raw[0] == 0 => Some(u64::from(raw[1])),
        0b01 => Some((u64::from(raw[0] & 0x3F) << 8) | u64::from(raw[1])),
        _ => None,
    }
}

/// The CDB length implied by the opcode's group code (SPC-4 §4.3.2), `None` for the reserved
/// and vendor-specific groups (and variable-length 7Fh, which nothing here supports).
#[cfg(test)] // the command table's test checks its CDB lengths against it
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Fails with INVALID FIELD IN CDB unless `cdb` holds at least `len` bytes.
pub fn require_len(cdb: &[u8], len: usize) -> Result<(), Sense> {
    if cdb.len() < len {
        Err(Sense::invalid_cdb())
    } else {
        Ok(())
    }
}

/// SAM-5 §5.2 CONTROL byte (the last CDB byte): NACA (bit 2) would ask for ACA, which this
/// target does not support (INQUIRY NORMACA = 0), and LINK (bit 0) asks for linked commands,
/// which SAM-5 made obsolete; both fail with INVALID FIELD IN CDB.
pub fn check_control_byte(cdb: &[u8], len: usize) -> Result<(), Sense> {
    let at = len.checked_sub(1).ok_or_else(Sense::invalid_cdb)?;
    let control = *cdb.get(at).ok_or_else(Sense::invalid_cdb)?;
    let byte = u16::try_from(at).unwrap_or(u16::MAX);
    if control & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(byte, Some(2)));
    }
    if control & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(byte, Some(0)));
    }
    Ok(())
}

/// `N` bytes at `at` of a CDB or parameter list, zeros if it is too short (decoders check
/// lengths first, so the fallback only keeps this total). Every SCSI decoder reads with these.
pub(super) fn bytes_at<const N: usize>(cdb: &[u8], at: usize) -> [u8; N] {
    at.checked_add(N)
        .and_then(|end| cdb.get(at..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

pub(super) fn byte_at(cdb: &[u8], at: usize) -> u8 {
    cdb.get(at).copied().unwrap_or(0)
}

pub(super) fn be16(cdb: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(bytes_at(cdb, at))
}

pub(super) fn be32(cdb: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes_at(cdb, at))
}

pub(super) fn be64(cdb: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes_at(cdb, at))
}

fn opcode(cdb: &[u8]) -> Result<u8, Sense> {
    cdb.first().copied().ok_or_else(Sense::invalid_opcode)
}

/// A decoded READ or WRITE (6/10/12/16), SBC-3 §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RwCdb {
    pub lba: u64,
    /// Transfer length in logical blocks (READ/WRITE(6): 0 already turned into 256).
    pub blocks: u32,
    /// Force unit access: the write must be durable before completion.
    pub fua: bool,
    /// Disable page out (a cache retention hint; accepted and ignored).
    pub dpo: bool,
    pub is_write: bool,
}

/// Decodes READ/WRITE 6, 10, 12 and 16.
pub fn decode_rw(cdb: &[u8]) -> Result<RwCdb, Sense> {
    let code = opcode(cdb)?;
    let is_write = matches!(
        code,
        op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16
    );
    if let op::READ_6 | op::WRITE_6 = code {
        require_len(cdb, 6)?;
        // SBC-3 §5.16: a 21-bit LBA, and a transfer length of 0 means 256 blocks.
        let lba = (u64::from(byte_at(cdb, 1) & 0x1F) << 16) | u64::from(be16(cdb, 2));
        let blocks = match byte_at(cdb, 4) {
            0 => 256,
            n => u32::from(n),
        };
        return Ok(RwCdb {
            lba,
            blocks,
            fua: false,
            dpo: false,
            is_write,
        });
    }
    let (len, lba, blocks) = match code {
        op::READ_10 | op::WRITE_10 => (10, u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
        op::READ_12 | op::WRITE_12 => (12, u64::from(be32(cdb, 2)), be32(cdb, 6)),
        op::READ_16 | op::WRITE_16 => (16, be64(cdb, 2), be32(cdb, 10)),
        _ => return Err(Sense::invalid_opcode()),
    };
    require_len(cdb, len)?;
    let flags = byte_at(cdb, 1);
    // RDPROTECT/WRPROTECT (bits 7-5): protection information is not supported (INQUIRY
    // PROTECT = 0), so any non-zero value is an invalid field (SBC-3 §4.22.2).
    if flags & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(RwCdb {
        lba,
        blocks,
        fua: flags & 0x08 != 0,
        dpo: flags & 0x10 != 0,
        is_write,
    })
}

/// The byte offset of the TRANSFER LENGTH field of a READ/WRITE CDB, for field pointers.
pub fn rw_transfer_length_offset(opcode: u8) -> u16 {
    match opcode {
        op::READ_6 | op::WRITE_6 => 4,
        op::READ_10 | op::WRITE_10 => 7,
        op::READ_12 | op::WRITE_12 => 6,
        _ => 10,
    }
}

/// INQUIRY (SPC-4 §6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InquiryCdb {
    pub evpd: bool,
    pub page_code: u8,
    pub alloc_len: u16,
}

pub fn decode_inquiry(cdb: &[u8]) -> Result<InquiryCdb, Sense> {
    require_len(cdb, 6)?;
    let flags = byte_at(cdb, 1);
    // Bit 1 was CMDDT (SPC-2); SPC-4 made it obsolete and command support data moved to
    // REPORT SUPPORTED OPERATION CODES, so a request for it is refused.
    if flags & 0x02 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(1)));
    }
    let evpd = flags & 0x01 != 0;
    let page_code = byte_at(cdb, 2);
    // SPC-4 §6.6.1: PAGE CODE must be zero when EVPD is zero.
    if !evpd && page_code != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    Ok(InquiryCdb {
        evpd,
        page_code,
        alloc_len: be16(cdb, 3),
    })
}

/// REPORT LUNS (SPC-4 §6.33).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportLunsCdb {
    pub select_report: u8,
    pub alloc_len: u32,
}

pub fn decode_report_luns(cdb: &[u8]) -> Result<ReportLunsCdb, Sense> {
    require_len(cdb, 12)?;
    let select_report = byte_at(cdb, 2);
    if select_report > 2 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    let alloc_len = be32(cdb, 6);
    // SPC-3 §6.21 (kept by SPC-4 implementations): less than 16 bytes cannot hold the header
    // and one LUN, and is rejected.
    if alloc_len < 16 {
        return Err(Sense::invalid_field_in_cdb(6, Some(7)));
    }
    Ok(ReportLunsCdb {
        select_report,
        alloc_len,
    })
}

/// REQUEST SENSE (SPC-4 §6.39).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSenseCdb {
    pub desc: bool,
    pub alloc_len: u8,
}

pub fn decode_request_sense(cdb: &[u8]) -> Result<RequestSenseCdb, Sense> {
    require_len(cdb, 6)?;
    Ok(RequestSenseCdb {
        desc: byte_at(cdb, 1) & 0x01 != 0,
        alloc_len: byte_at(cdb, 4),
    })
}

/// READ CAPACITY(10) (SBC-3 §5.15): the LBA/PMI fields are obsolete; the SBC-2 rule that the
/// LBA must be zero when PMI is zero is still enforced.
pub fn decode_read_capacity10(cdb: &[u8]) -> Result<(), Sense> {
    require_len(cdb, 10)?;
    let pmi = byte_at(cdb, 8) & 0x01 != 0;
    if !pmi && be32(cdb, 2) != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    Ok(())
}

/// READ CAPACITY(16) (SBC-3 §5.16): returns the allocation length.
pub fn decode_read_capacity16(cdb: &[u8]) -> Result<u32, Sense> {
    require_len(cdb, 16)?;
    let pmi = byte_at(cdb, 14) & 0x01 != 0;
    if !pmi && be64(cdb, 2) != 0 {
        return Err(Sense::invalid_field_in_cdb(2, Some(7)));
    }
    Ok(be32(cdb, 10))
}

/// SYNCHRONIZE CACHE 10/16 (SBC-3 §5.22, §5.23).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncCacheCdb {
    pub lba: u64,
    /// Number of blocks; 0 means "to the end of the medium".
    pub blocks: u32,
    pub immed: bool,
}

pub fn decode_sync_cache(cdb: &[u8]) -> Result<SyncCacheCdb, Sense> {
    let (len, lba, blocks) = match opcode(cdb)? {
        op::SYNCHRONIZE_CACHE_10 => (10, u64::from(be32(cdb, 2)), u32::from(be16(cdb, 7))),
        op::SYNCHRONIZE_CACHE_16 => (16, be64(cdb, 2), be32(cdb, 10)),
        _ => return Err(Sense::invalid_opcode()),
    };
    require_len(cdb, len)?;
    Ok(SyncCacheCdb {
        lba,
        blocks,
        immed: byte_at(cdb, 1) & 0x02 != 0,
    })
}

/// MODE SENSE page control (SPC-4 §6.11 table 98).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
    Saved,
}

/// MODE SENSE(6)/(10) (SPC-4 §6.11, §6.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSenseCdb {
    /// MODE SENSE(10) (longer header, LLBAA available).
    pub ten: bool,
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptor accepted (MODE SENSE(10) only).
    pub llbaa: bool,
    pub page_control: PageControl,
    pub page_code: u8,
    pub subpage_code: u8,
    pub alloc_len: u16,
}

pub fn decode_mode_sense(cdb: &[u8]) -> Result<ModeSenseCdb, Sense> {
    let ten = match opcode(cdb)? {
        op::MODE_SENSE_6 => false,
        op::MODE_SENSE_10 => true,
        _ => return Err(Sense::invalid_opcode()),
    };
    require_len(cdb, if ten { 10 } else { 6 })?;
    let flags = byte_at(cdb, 1);
    let page_control = match byte_at(cdb, 2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => PageControl::Saved,
    };
    Ok(ModeSenseCdb {
        ten,
        dbd: flags & 0x08 != 0,
        llbaa: ten && flags & 0x10 != 0,
        page_control,
        page_code: byte_at(cdb, 2) & 0x3F,
        subpage_code: byte_at(cdb, 3),
        alloc_len: if ten {
            be16(cdb, 7)
        } else {
            u16::from(byte_at(cdb, 4))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;

    #[test]
    fn lun_encoding_round_trips() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(255), [0, 255, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(256), [0x41, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(0x1234), [0x52, 0x34, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(MAX_LUN), [0x7F, 0xFF, 0, 0, 0, 0, 0, 0]);
        for lun in [0, 1, 200, 255, 256, 300, 4096, MAX_LUN] {
            assert_eq!(decode_lun(encode_lun(lun)), Some(lun));
        }
        // Flat space may also express small LUNs.
        assert_eq!(decode_lun([0x40, 7, 0, 0, 0, 0, 0, 0]), Some(7));
        // Bus identifier, hierarchical levels, other methods: not ours.
        assert_eq!(decode_lun([0x01, 7, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun([0, 7, 0, 1, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun([0x80, 7, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun([0xC1, 0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn cdb_lengths_follow_the_group_code() {
        assert_eq!(cdb_length(0x12), Some(6));
        assert_eq!(cdb_length(0x28), Some(10));
        assert_eq!(cdb_length(0x5A), Some(10));
        assert_eq!(cdb_length(0x88), Some(16));
        assert_eq!(cdb_length(0xA0), Some(12));
        assert_eq!(cdb_length(0x7F), None);
        assert_eq!(cdb_length(0xC0), None);
    }

    #[test]
    fn control_byte_naca_and_link_are_refused() {
        assert!(check_control_byte(&[0; 6], 6).is_ok());
        let err = check_control_byte(&[0, 0, 0, 0, 0, 0x04], 6).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 5, Some(2))));
        let err = check_control_byte(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01], 10).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 9, Some(0))));
        assert!(check_control_byte(&[0; 4], 6).is_err());
    }

    #[test]
    fn rw6_zero_length_means_256_and_lba_is_21_bits() {
        let rw = decode_rw(&[op::READ_6, 0xFF, 0x12, 0x34, 0, 0]).unwrap();
        assert_eq!(rw.lba, 0x1F_1234);
        assert_eq!(rw.blocks, 256);
        assert!(!rw.is_write);
        let rw = decode_rw(&[op::WRITE_6, 0, 0, 1, 8, 0]).unwrap();
        assert_eq!((rw.lba, rw.blocks, rw.is_write), (1, 8, true));
    }

    #[test]
    fn rw10_12_16_fields() {
        let rw = decode_rw(&[op::WRITE_10, 0x18, 0, 0, 1, 0, 0, 0x01, 0x02, 0]).unwrap();
        assert_eq!(rw.lba, 256);
        assert_eq!(rw.blocks, 0x102);
        assert!(rw.fua && rw.dpo && rw.is_write);

        let rw = decode_rw(&[op::READ_12, 0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!((rw.lba, rw.blocks), (9, 256));

        let mut c16 = [0u8; 16];
        c16[0] = op::READ_16;
        c16[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        c16[10..14].copy_from_slice(&77u32.to_be_bytes());
        let rw = decode_rw(&c16).unwrap();
        assert_eq!(
            (rw.lba, rw.blocks, rw.fua),
            (0x0102_0304_0506_0708, 77, false)
        );
    }

    #[test]
    fn rw_rejects_protection_and_short_cdbs() {
        let err = decode_rw(&[op::READ_10, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(err.asc, 0x24);
        assert_eq!(err.field_pointer, Some((true, 1, Some(7))));
        assert_eq!(
            decode_rw(&[op::READ_16, 0, 0]).unwrap_err(),
            Sense::invalid_cdb()
        );
        assert_eq!(decode_rw(&[]).unwrap_err(), Sense::invalid_opcode());
        // A 10-byte CDB in a zero-padded 16-byte buffer is fine.
        let mut padded = [0u8; 16];
        padded[0] = op::READ_10;
        padded[8] = 1;
        assert_eq!(decode_rw(&padded).unwrap().blocks, 1);
    }

    #[test]
    fn inquiry_decoding() {
        let c = decode_inquiry(&[op::INQUIRY, 1, 0x83, 0x01, 0x00, 0]).unwrap();
        assert_eq!((c.evpd, c.page_code, c.alloc_len), (true, 0x83, 256));
        let err = decode_inquiry(&[op::INQUIRY, 0, 0x80, 0, 36, 0]).unwrap_err();
        assert_eq!(err.key, SenseKey::IllegalRequest);
        assert_eq!(err.field_pointer, Some((true, 2, Some(7))));
        assert!(decode_inquiry(&[op::INQUIRY, 2, 0, 0, 36, 0]).is_err());
    }

    #[test]
    fn report_luns_decoding() {
        let c = decode_report_luns(&[op::REPORT_LUNS, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!((c.select_report, c.alloc_len), (2, 256));
        let short = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0];
        assert_eq!(
            decode_report_luns(&short).unwrap_err().field_pointer,
            Some((true, 6, Some(7)))
        );
        let bad_select = [op::REPORT_LUNS, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        assert!(decode_report_luns(&bad_select).is_err());
    }

    #[test]
    fn read_capacity_decoding() {
        assert!(decode_read_capacity10(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_ok());
        assert!(
            decode_read_capacity10(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 0, 0]).is_err()
        );
        assert!(decode_read_capacity10(&[op::READ_CAPACITY_10, 0, 0, 0, 0, 1, 0, 0, 1, 0]).is_ok());
        let mut c = [0u8; 16];
        c[0] = op::SERVICE_ACTION_IN_16;
        c[1] = 0x10;
        c[13] = 32;
        assert_eq!(decode_read_capacity16(&c), Ok(32));
    }

    #[test]
    fn sync_cache_decoding() {
        let c = decode_sync_cache(&[op::SYNCHRONIZE_CACHE_10, 2, 0, 0, 0, 5, 0, 0, 3, 0]).unwrap();
        assert_eq!((c.lba, c.blocks, c.immed), (5, 3, true));
        let mut c16 = [0u8; 16];
        c16[0] = op::SYNCHRONIZE_CACHE_16;
        c16[9] = 1;
        c16[13] = 2;
        let c = decode_sync_cache(&c16).unwrap();
        assert_eq!((c.lba, c.blocks, c.immed), (1, 2, false));
    }

    #[test]
    fn mode_sense_decoding() {
        let c = decode_mode_sense(&[op::MODE_SENSE_6, 0x08, 0x48, 0, 0xFF, 0]).unwrap();
        assert!(!c.ten && c.dbd && !c.llbaa);
        assert_eq!(c.page_control, PageControl::Changeable);
        assert_eq!((c.page_code, c.subpage_code, c.alloc_len), (0x08, 0, 255));
        let c =
            decode_mode_sense(&[op::MODE_SENSE_10, 0x10, 0xFF, 0xFF, 0, 0, 0, 1, 0, 0]).unwrap();
        assert!(c.ten && c.llbaa && !c.dbd);
        assert_eq!(c.page_control, PageControl::Saved);
        assert_eq!(
            (c.page_code, c.subpage_code, c.alloc_len),
            (0x3F, 0xFF, 256)
        );
    }
}
