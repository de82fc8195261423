//! Operation codes and service actions (SPC-4 Annex D, SBC-4 §5): the vocabulary every other
//! scsi file names commands with. A leaf: it imports nothing.

/// Operation codes (SPC-4 Annex D / SBC-3 §5).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;

    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;

    /// SERVICE ACTION IN(16) service actions.
    pub const SA_READ_CAPACITY_16: u8 = 0x10;

    pub const MODE_SELECT_6: u8 = 0x15;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const LOG_SENSE: u8 = 0x4D;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    /// MAINTENANCE IN service actions (SPC-4 §6.36, §6.35, §6.37).
    pub const SA_REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
    pub const SA_REPORT_SUPPORTED_TMFS: u8 = 0x0D;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    pub const VERIFY_10: u8 = 0x2F;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const ORWRITE_16: u8 = 0x8B;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    pub const VERIFY_16: u8 = 0x8F;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const WRITE_SAME_16: u8 = 0x93;
    /// WRITE ATOMIC(16) (SBC-4 §5.48).
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    pub const VERIFY_12: u8 = 0xAF;
    /// SERVICE ACTION IN(16): GET LBA STATUS (SBC-4 §5.8).
    pub const SA_GET_LBA_STATUS: u8 = 0x12;
    pub const EXTENDED_COPY: u8 = 0x83;
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// EXTENDED COPY service action: LID1 (SPC-4 §6.4).
    pub const SA_EXTENDED_COPY_LID1: u8 = 0x00;
    /// RECEIVE COPY RESULTS service actions (SPC-4 §6.22).
    pub const SA_COPY_STATUS: u8 = 0x00;
    pub const SA_OPERATING_PARAMETERS: u8 = 0x03;
}
