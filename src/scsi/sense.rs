//! Sense data (SPC-4 §4.5): what went wrong, in fixed (0x70) or descriptor (0x72) format.
//!
//! A [`Sense`] is the decoded condition; the logical unit's D_SENSE setting (control mode page)
//! decides which encoding a CHECK CONDITION carries, and REQUEST SENSE's DESC bit decides for
//! that command.

use bytes::Bytes;

use super::{ScsiResponse, ScsiStatus};

/// SPC-4 §4.5.6 table 48.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
    Completed = 0xF,
}

/// Where a field pointer points: `(in_cdb, byte, bit)`. `in_cdb` false means the parameter
/// list (SPC-4 §4.5.2.4.2, C/D bit); `bit` is the most significant bit of the bad field.
pub type FieldPointer = (bool, u16, Option<u8>);

/// One sense condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the failing LBA), reported with VALID set.
    pub info: Option<u64>,
    /// Sense-key specific field pointer (SKSV set), for ILLEGAL REQUEST.
    pub field_pointer: Option<FieldPointer>,
    /// Sense-key specific PROGRESS INDICATION (SKSV set), in 65536ths of the operation, for
    /// NOT READY while a long operation runs (SPC-4 §4.5.2.4.4).
    pub progress: Option<u16>,
}

/// Fixed-format sense is 18 bytes: 8 of header plus an additional sense length of 10.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field_pointer: None,
            progress: None,
        }
    }

    /// Returns the same condition with the INFORMATION field set.
    pub fn with_info(mut self, info: u64) -> Self {
        self.info = Some(info);
        self
    }

    /// 00/00/00: nothing to report (REQUEST SENSE with no pending condition).
    pub const fn no_sense() -> Self {
        Sense::new(SenseKey::NoSense, 0x00, 0x00)
    }

    /// 05/20/00 INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x20, 0x00)
    }

    /// 05/24/00 INVALID FIELD IN CDB, pointing at `byte` (and `bit`, the field's top bit).
    pub fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field_pointer: Some((true, byte, bit)),
            ..Sense::new(SenseKey::IllegalRequest, 0x24, 0x00)
        }
    }

    /// 05/26/`ascq` (the INVALID FIELD IN PARAMETER LIST family), pointing at `byte` (and
    /// `bit`) of the parameter list.
    pub fn in_parameter_list(ascq: u8, byte: usize, bit: Option<u8>) -> Self {
        Sense {
            field_pointer: Some((false, u16::try_from(byte).unwrap_or(u16::MAX), bit)),
            ..Sense::new(SenseKey::IllegalRequest, 0x26, ascq)
        }
    }

    /// 05/26/00 INVALID FIELD IN PARAMETER LIST, pointing at `byte` (and `bit`) of the list.
    pub fn invalid_field_in_parameter_list(byte: usize, bit: Option<u8>) -> Self {
        Sense::in_parameter_list(0x00, byte, bit)
    }

    /// 05/1A/00 PARAMETER LIST LENGTH ERROR: the list is shorter or longer than it may be.
    pub const fn parameter_list_length_error() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x1A, 0x00)
    }

    /// 05/24/00 INVALID FIELD IN CDB without a field pointer (e.g. a CDB shorter than its
    /// opcode requires, where there is no byte to point at).
    pub const fn invalid_cdb() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x24, 0x00)
    }

    /// 05/21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x21, 0x00)
    }

    /// 05/25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const fn lun_not_supported() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x25, 0x00)
    }

    /// 05/39/00 SAVING PARAMETERS NOT SUPPORTED, pointing at the PC field.
    pub fn saving_parameters_not_supported(byte: u16, bit: Option<u8>) -> Self {
        Sense {
            field_pointer: Some((true, byte, bit)),
            ..Sense::new(SenseKey::IllegalRequest, 0x39, 0x00)
        }
    }

    /// 02/04/01 LOGICAL UNIT IS IN PROCESS OF BECOMING READY.
    pub const fn not_ready_becoming_ready() -> Self {
        Sense::new(SenseKey::NotReady, 0x04, 0x01)
    }

    /// 02/04/03 LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED (initiators fail these
    /// at once instead of retrying, which is what an offline unit wants).
    pub const fn not_ready_manual_intervention() -> Self {
        Sense::new(SenseKey::NotReady, 0x04, 0x03)
    }

    /// 02/04/1B LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS, with how far it has got
    /// (SBC-4 §4.33).
    pub const fn sanitize_in_progress(progress: u16) -> Self {
        let mut sense = Sense::new(SenseKey::NotReady, 0x04, 0x1B);
        sense.progress = Some(progress);
        sense
    }

    /// 03/31/03 SANITIZE COMMAND FAILED: the unit is in sanitize failure mode (SBC-4 §4.33).
    pub const fn sanitize_failed() -> Self {
        Sense::new(SenseKey::MediumError, 0x31, 0x03)
    }

    /// 02/3A/00 MEDIUM NOT PRESENT: a removable unit whose medium is unloaded. Not the
    /// TRAY OPEN/CLOSED variants (3A/01, 3A/02): there is no tray to report on.
    pub const fn medium_not_present() -> Self {
        Sense::new(SenseKey::NotReady, 0x3A, 0x00)
    }

    /// 05/53/02 MEDIUM REMOVAL PREVENTED (SBC-4 §5.15).
    pub const fn medium_removal_prevented() -> Self {
        Sense::new(SenseKey::IllegalRequest, 0x53, 0x02)
    }

    /// 06/28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    pub const fn medium_may_have_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x28, 0x00)
    }

    /// 07/27/00 WRITE PROTECTED.
    pub const fn write_protected() -> Self {
        Sense::new(SenseKey::DataProtect, 0x27, 0x00)
    }

    /// 03/11/00 UNRECOVERED READ ERROR.
    pub const fn medium_error_read() -> Self {
        Sense::new(SenseKey::MediumError, 0x11, 0x00)
    }

    /// 03/0C/00 WRITE ERROR.
    pub const fn medium_error_write() -> Self {
        Sense::new(SenseKey::MediumError, 0x0C, 0x00)
    }

    /// 06/29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const fn power_on_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x00)
    }

    /// 06/29/02 SCSI BUS RESET OCCURRED (hard reset of the target).
    pub const fn bus_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x02)
    }

    /// 06/29/03 BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    pub const fn bus_device_reset() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x03)
    }

    /// 06/29/07 I_T NEXUS LOSS OCCURRED.
    pub const fn nexus_loss() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x29, 0x07)
    }

    /// 06/3F/0E REPORTED LUNS DATA HAS CHANGED.
    pub const fn reported_luns_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x3F, 0x0E)
    }

    /// 06/2A/09 CAPACITY DATA HAS CHANGED.
    pub const fn capacity_changed() -> Self {
        Sense::new(SenseKey::UnitAttention, 0x2A, 0x09)
    }

    /// Whether this is a reset-class unit attention (ASC 29h), which SAM-5 §5.14 ranks above
    /// every other unit attention.
    pub fn is_reset_ua(&self) -> bool {
        self.key == SenseKey::UnitAttention && self.asc == 0x29
    }

    /// Encodes in the chosen format.
    pub fn encode(&self, descriptor: bool) -> Bytes {
        if descriptor {
            self.encode_descriptor()
        } else {
            self.encode_fixed()
        }
    }

    /// Fixed format, response code 70h (SPC-4 §4.5.3): 18 bytes.
    pub fn encode_fixed(&self) -> Bytes {
        let mut out = [0u8; FIXED_SENSE_LEN];
        out[0] = 0x70;
        // INFORMATION is only 4 bytes here; a value that does not fit is left out with
        // VALID clear (SPC-4 §4.5.3).
        if let Some(info) = self.info.and_then(|i| u32::try_from(i).ok()) {
            out[0] |= 0x80;
            out[3..7].copy_from_slice(&info.to_be_bytes());
        }
        out[2] = self.key as u8;
        out[7] = (FIXED_SENSE_LEN - 8) as u8;
        out[12] = self.asc;
        out[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            out[15..18].copy_from_slice(&sks);
        }
        Bytes::copy_from_slice(&out)
    }

    /// Descriptor format, response code 72h (SPC-4 §4.5.2), with an information descriptor
    /// (§4.5.2.2) and a sense-key specific descriptor (§4.5.2.3) when those are set.
    pub fn encode_descriptor(&self) -> Bytes {
        let mut out = Vec::with_capacity(8 + 12 + 8);
        out.extend_from_slice(&[0x72, self.key as u8, self.asc, self.ascq, 0, 0, 0, 0]);
        if let Some(info) = self.info {
            out.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            out.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            out.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        // At most 20 descriptor bytes, so the additional sense length always fits.
        out[7] = (out.len() - 8) as u8;
        Bytes::from(out)
    }

    /// The three sense-key specific bytes with SKSV set: a progress indication (SPC-4
    /// §4.5.2.4.4: SKSV, then the 16-bit fraction), or a field pointer (SPC-4 §4.5.2.4.2):
    /// SKSV | C/D | BPV | bit pointer, then the byte number.
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        if let Some(progress) = self.progress {
            let [hi, lo] = progress.to_be_bytes();
            return Some([0x80, hi, lo]);
        }
        let (in_cdb, byte, bit) = self.field_pointer?;
        let mut first = 0x80;
        if in_cdb {
            first |= 0x40;
        }
        if let Some(bit) = bit {
            first |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = byte.to_be_bytes();
        Some([first, hi, lo])
    }
}

impl ScsiResponse {
    /// CHECK CONDITION carrying `sense` in fixed or descriptor format.
    pub fn check_condition(sense: &Sense, descriptor: bool) -> Self {
        ScsiResponse {
            status: ScsiStatus::CheckCondition,
            data_in: Bytes::new(),
            data_in_file: None,
            sense: Some(sense.encode(descriptor)),
            data_out_used: 0,
            block_size: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_plain() {
        let s = Sense::lba_out_of_range().encode_fixed();
        assert_eq!(
            &s[..],
            &[
                0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn progress_indication_in_both_formats() {
        let sense = Sense::sanitize_in_progress(0x1234);
        let fixed = sense.encode_fixed();
        assert_eq!((fixed[2], fixed[12], fixed[13]), (0x02, 0x04, 0x1B));
        assert_eq!(&fixed[15..18], &[0x80, 0x12, 0x34]);
        let descriptor = sense.encode_descriptor();
        assert_eq!(&descriptor[..4], &[0x72, 0x02, 0x04, 0x1B]);
        assert_eq!(&descriptor[8..16], &[0x02, 0x06, 0, 0, 0x80, 0x12, 0x34, 0]);
    }

    #[test]
    fn fixed_format_with_info_and_field_pointer() {
        let mut sense = Sense::invalid_field_in_cdb(0x0102, Some(5));
        sense.info = Some(0x1122_3344);
        let s = sense.encode_fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0xF0);
        assert_eq!(&s[3..7], &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!((s[2], s[12], s[13]), (0x05, 0x24, 0x00));
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 5, 0x01, 0x02]);
    }

    #[test]
    fn fixed_format_drops_info_that_does_not_fit() {
        let s = Sense::medium_error_read().with_info(1 << 40).encode_fixed();
        assert_eq!(s[0], 0x70);
        assert_eq!(&s[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn field_pointer_without_bit_and_in_parameter_list() {
        let mut sense = Sense::invalid_field_in_cdb(4, None);
        let s = sense.encode_fixed();
        assert_eq!(&s[15..18], &[0xC0, 0x00, 0x04]);
        sense.field_pointer = Some((false, 9, None));
        let s = sense.encode_fixed();
        assert_eq!(&s[15..18], &[0x80, 0x00, 0x09]);
    }

    #[test]
    fn descriptor_format_plain() {
        let s = Sense::power_on_reset().encode_descriptor();
        assert_eq!(&s[..], &[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format_with_descriptors() {
        let mut sense = Sense::invalid_field_in_cdb(2, Some(7));
        sense.info = Some(0x0102_0304_0506_0708);
        let s = sense.encode_descriptor();
        assert_eq!(
            &s[..],
            &[
                0x72, 0x05, 0x24, 0x00, 0, 0, 0, 20, // header
                0x00, 0x0A, 0x80, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, // information
                0x02, 0x06, 0x00, 0x00, 0xCF, 0x00, 0x02, 0x00, // sense-key specific
            ]
        );
    }

    #[test]
    fn encode_picks_the_format() {
        let s = Sense::write_protected();
        assert_eq!(s.encode(false)[0], 0x70);
        assert_eq!(s.encode(true)[0], 0x72);
    }
}
