//! MAINTENANCE IN commands that describe the device server itself: REPORT SUPPORTED OPERATION
//! CODES (SPC-4 §6.35) and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37).
//!
//! Whether a command is supported comes only from the command table
//! ([`opcodes::supported_commands`]), so the report is exactly what dispatch accepts whatever
//! else is merged. What the table does not carry (the CDB usage bitmap and the command
//! timeouts) lives in [`USAGE`], keyed by (opcode, service action). It has rows for commands
//! other branches are adding too; a row without a table entry is simply never reported, and a
//! table entry without a row gets a conservative generic bitmap.

use bytes::Bytes;

use super::spc::truncate;
use crate::scsi::cdb;
use crate::scsi::opcodes::{self, CommandInfo};
use crate::scsi::sense::Sense;

/// CONTROL byte usage: NACA (bit 2) and LINK (bit 0) are examined (both refused, SAM-5 §5.2).
const CTL: u8 = 0x05;

/// Per-command data REPORT SUPPORTED OPERATION CODES needs beyond the command table.
#[derive(Debug)]
pub struct Usage {
    pub opcode: u8,
    /// Service action, for opcodes that have them.
    pub service_action: Option<u8>,
    /// CDB USAGE DATA (SPC-4 §6.35.3): byte 0 the opcode, the service action in its own field,
    /// elsewhere a bit set for every CDB bit the device server examines. Its length is the CDB
    /// length.
    pub usage: &'static [u8],
    /// RECOMMENDED COMMAND TIMEOUT in seconds (command timeouts descriptor, SPC-4 §6.35.4).
    pub timeout_secs: u32,
}

const fn row(opcode: u8, usage: &'static [u8], timeout_secs: u32) -> Usage {
    Usage {
        opcode,
        service_action: None,
        usage,
        timeout_secs,
    }
}

const fn sa_row(opcode: u8, sa: u8, usage: &'static [u8], timeout_secs: u32) -> Usage {
    Usage {
        opcode,
        service_action: Some(sa),
        usage,
        timeout_secs,
    }
}

/// CDB usage data, from the CDB layouts of SPC-4 §6 and SBC-3 §5 (SBC-4 for WRITE ATOMIC).
/// Protection fields (RDPROTECT/WRPROTECT/VRPROTECT/ORPROTECT) are left clear: keel has no
/// protection information (INQUIRY PROTECT = 0). GROUP NUMBER fields are ignored and clear.
/// Ascending by (opcode, service action). To add a command: add its row here and its entry in
/// the command table; the unit tests check the two agree.
#[rustfmt::skip]
pub static USAGE: &[Usage] = &[
    // TEST UNIT READY (SPC-4 §6.47)
    row(0x00, &[0x00, 0x00, 0x00, 0x00, 0x00, CTL], 30),
    // REQUEST SENSE (SPC-4 §6.39): DESC, ALLOCATION LENGTH
    row(0x03, &[0x03, 0x01, 0x00, 0x00, 0xFF, CTL], 30),
    // READ(6) (SBC-3 §5.14)
    row(0x08, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, CTL], 30),
    // WRITE(6) (SBC-3 §5.31)
    row(0x0A, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CTL], 30),
    // INQUIRY (SPC-4 §6.6): CMDDT (refused), EVPD, PAGE CODE, ALLOCATION LENGTH
    row(0x12, &[0x12, 0x03, 0xFF, 0xFF, 0xFF, CTL], 30),
    // MODE SELECT(6) (SPC-4 §6.9): PF, SP, PARAMETER LIST LENGTH
    row(0x15, &[0x15, 0x11, 0x00, 0x00, 0xFF, CTL], 30),
    // RESERVE(6) / RELEASE(6) (SPC-2 §7.21, §7.17)
    row(0x16, &[0x16, 0x00, 0x00, 0x00, 0x00, CTL], 30),
    row(0x17, &[0x17, 0x00, 0x00, 0x00, 0x00, CTL], 30),
    // MODE SENSE(6) (SPC-4 §6.11): DBD, PC, PAGE CODE, SUBPAGE CODE, ALLOCATION LENGTH
    row(0x1A, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTL], 30),
    // START STOP UNIT (SBC-3 §5.25): IMMED, POWER CONDITION MODIFIER, POWER CONDITION,
    // NO_FLUSH, LOEJ, START
    row(0x1B, &[0x1B, 0x01, 0x00, 0x0F, 0xF7, CTL], 30),
    // PREVENT ALLOW MEDIUM REMOVAL (SPC-4 §6.13)
    row(0x1E, &[0x1E, 0x00, 0x00, 0x00, 0x03, CTL], 30),
    // READ CAPACITY(10) (SBC-3 §5.15): LBA and PMI (obsolete, still checked)
    row(0x25, &[0x25, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, CTL], 30),
    // READ(10) (SBC-3 §5.11): DPO, FUA
    row(0x28, &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 30),
    // WRITE(10) (SBC-3 §5.32): DPO, FUA
    row(0x2A, &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 30),
    // WRITE AND VERIFY(10) (SBC-3 §5.36): DPO, BYTCHK
    row(0x2E, &[0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 30),
    // VERIFY(10) (SBC-3 §5.27): DPO, BYTCHK
    row(0x2F, &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 30),
    // PRE-FETCH(10) (SBC-3 §5.9): IMMED
    row(0x34, &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 30),
    // SYNCHRONIZE CACHE(10) (SBC-3 §5.22): IMMED
    row(0x35, &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 60),
    // READ DEFECT DATA(10) (SBC-3 §5.12): REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT
    row(0x37, &[0x37, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    // WRITE SAME(10) (SBC-3 §5.41): ANCHOR, UNMAP
    row(0x41, &[0x41, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], 60),
    // UNMAP (SBC-3 §5.28): ANCHOR, PARAMETER LIST LENGTH
    row(0x42, &[0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 60),
    // LOG SENSE (SPC-4 §6.8): PPC, SP, PC, PAGE CODE, SUBPAGE, PARAMETER POINTER, ALLOCATION
    // LENGTH
    row(0x4D, &[0x4D, 0x03, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    // MODE SELECT(10) (SPC-4 §6.10): PF, SP, PARAMETER LIST LENGTH
    row(0x55, &[0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    // RESERVE(10) / RELEASE(10) (SPC-2 §7.22, §7.18)
    row(0x56, &[0x56, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, CTL], 30),
    row(0x57, &[0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, CTL], 30),
    // MODE SENSE(10) (SPC-4 §6.12): LLBAA, DBD, PC, PAGE CODE, SUBPAGE, ALLOCATION LENGTH
    row(0x5A, &[0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    // PERSISTENT RESERVE IN (SPC-4 §6.13): READ KEYS, READ RESERVATION, REPORT CAPABILITIES,
    // READ FULL STATUS; ALLOCATION LENGTH
    sa_row(0x5E, 0x00, &[0x5E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5E, 0x01, &[0x5E, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5E, 0x02, &[0x5E, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5E, 0x03, &[0x5E, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], 30),
    // PERSISTENT RESERVE OUT (SPC-4 §6.14): SCOPE, TYPE, PARAMETER LIST LENGTH
    sa_row(0x5F, 0x00, &[0x5F, 0x00, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x01, &[0x5F, 0x01, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x02, &[0x5F, 0x02, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x03, &[0x5F, 0x03, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x04, &[0x5F, 0x04, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x05, &[0x5F, 0x05, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x06, &[0x5F, 0x06, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    sa_row(0x5F, 0x07, &[0x5F, 0x07, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL], 30),
    // EXTENDED COPY(LID1) (SPC-4 §6.4): PARAMETER LIST LENGTH. Copies up to 512 MiB.
    sa_row(0x83, 0x00, &[0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 60),
    // RECEIVE COPY RESULTS (SPC-4 §6.22) COPY STATUS: LIST IDENTIFIER, ALLOCATION LENGTH
    sa_row(0x84, 0x00, &[0x84, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // RECEIVE COPY RESULTS OPERATING PARAMETERS: ALLOCATION LENGTH (no list identifier)
    sa_row(0x84, 0x03, &[0x84, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // READ(16) (SBC-3 §5.13): DPO, FUA
    row(0x88, &[0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // COMPARE AND WRITE (SBC-3 §5.2): DPO, FUA, NUMBER OF LOGICAL BLOCKS
    row(0x89, &[0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0x00, 0x00, 0x00, 0xFF, 0x00, CTL], 30),
    // WRITE(16) (SBC-3 §5.34): DPO, FUA
    row(0x8A, &[0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // ORWRITE(16) (SBC-3 §5.8): DPO, FUA
    row(0x8B, &[0x8B, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // WRITE AND VERIFY(16) (SBC-3 §5.38): DPO, BYTCHK
    row(0x8E, &[0x8E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // VERIFY(16) (SBC-3 §5.29): DPO, BYTCHK
    row(0x8F, &[0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // PRE-FETCH(16) (SBC-3 §5.10): IMMED
    row(0x90, &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // SYNCHRONIZE CACHE(16) (SBC-3 §5.23): IMMED
    row(0x91, &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 60),
    // WRITE SAME(16) (SBC-3 §5.42): ANCHOR, UNMAP
    row(0x93, &[0x93, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 60),
    // WRITE ATOMIC(16) (SBC-4 §5.48): DPO, FUA, ATOMIC BOUNDARY, TRANSFER LENGTH
    row(0x9C, &[0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // SERVICE ACTION IN(16) READ CAPACITY(16) (SBC-3 §5.16): LBA and PMI (obsolete, still
    // checked), ALLOCATION LENGTH
    sa_row(0x9E, 0x10, &[0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x01, CTL], 30),
    // SERVICE ACTION IN(16) GET LBA STATUS (SBC-3 §5.6): STARTING LBA, ALLOCATION LENGTH
    sa_row(0x9E, 0x12, &[0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // REPORT LUNS (SPC-4 §6.33): SELECT REPORT, ALLOCATION LENGTH
    row(0xA0, &[0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // MAINTENANCE IN REPORT TARGET PORT GROUPS (SPC-4 §6.36): PARAMETER DATA FORMAT,
    // ALLOCATION LENGTH
    sa_row(0xA3, 0x0A, &[0xA3, 0xE0 | 0x0A, 0x00, 0x00, 0x00, 0x00,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // MAINTENANCE IN REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35): RCTD, REPORTING
    // OPTIONS, REQUESTED OPERATION CODE, REQUESTED SERVICE ACTION, ALLOCATION LENGTH
    sa_row(0xA3, 0x0C, &[0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // MAINTENANCE IN REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37): REPD,
    // ALLOCATION LENGTH
    sa_row(0xA3, 0x0D, &[0xA3, 0x0D, 0x80, 0x00, 0x00, 0x00,
                         0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // READ(12) (SBC-3 §5.12): DPO, FUA
    row(0xA8, &[0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // WRITE(12) (SBC-3 §5.33): DPO, FUA
    row(0xAA, &[0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // WRITE AND VERIFY(12) (SBC-3 §5.37): DPO, BYTCHK
    row(0xAE, &[0xAE, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // VERIFY(12) (SBC-3 §5.28): DPO, BYTCHK
    row(0xAF, &[0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
    // READ DEFECT DATA(12) (SBC-3 §5.13): REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT, ADDRESS
    // DESCRIPTOR INDEX, ALLOCATION LENGTH
    row(0xB7, &[0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], 30),
];

/// The usage row for a command, if there is one.
pub fn usage_of(opcode: u8, service_action: Option<u8>) -> Option<&'static Usage> {
    USAGE
        .iter()
        .find(|u| u.opcode == opcode && u.service_action == service_action)
}

/// Whether `opcode` is one that selects its command by service action: the command table
/// knows for supported opcodes, the usage table for standard ones not (yet) supported.
fn opcode_has_service_actions(opcode: u8) -> bool {
    opcodes::has_service_actions(opcode)
        || USAGE
            .iter()
            .any(|u| u.opcode == opcode && u.service_action.is_some())
}

/// CDB usage data for a supported command: its row, or (for a table entry nobody described)
/// every bit marked used, which is never wrong to claim for a field the command might check.
fn cdb_usage(opcode: u8, service_action: Option<u8>, info: &CommandInfo) -> Vec<u8> {
    if let Some(u) = usage_of(opcode, service_action)
        && u.usage.len() == info.cdb_len
    {
        return u.usage.to_vec();
    }
    let mut usage = vec![0xFF; info.cdb_len];
    usage[0] = opcode;
    if let Some(sa) = service_action {
        usage[1] = sa;
    }
    if let Some(control) = usage.last_mut() {
        *control = CTL;
    }
    usage
}

/// Command timeouts descriptor (SPC-4 §6.35.4): DESCRIPTOR LENGTH 0Ah, no command-specific
/// data, NOMINAL COMMAND PROCESSING TIMEOUT 0 (not specified), RECOMMENDED COMMAND TIMEOUT.
fn timeouts_descriptor(opcode: u8, service_action: Option<u8>) -> [u8; 12] {
    let recommended = usage_of(opcode, service_action).map_or(30, |u| u.timeout_secs);
    let mut d = [0u8; 12];
    d[0..2].copy_from_slice(&0x0Au16.to_be_bytes());
    d[8..12].copy_from_slice(&recommended.to_be_bytes());
    d
}

/// REPORT SUPPORTED OPERATION CODES CDB (SPC-4 §6.35.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsocCdb {
    /// Return command timeouts descriptors.
    pub rctd: bool,
    pub reporting_options: u8,
    pub opcode: u8,
    pub service_action: u16,
    pub alloc_len: u32,
}

pub fn decode_rsoc(raw: &[u8]) -> Result<RsocCdb, Sense> {
    cdb::require_len(raw, 12)?;
    Ok(RsocCdb {
        rctd: raw[2] & 0x80 != 0,
        reporting_options: raw[2] & 0x07,
        opcode: raw[3],
        service_action: u16::from_be_bytes([raw[4], raw[5]]),
        alloc_len: u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]),
    })
}

/// All commands parameter data (SPC-4 §6.35.2): COMMAND DATA LENGTH, then one 8-byte command
/// descriptor per command (SERVACTV for service-action commands, CTDP with a 12-byte
/// timeouts descriptor when RCTD asked for it).
pub fn all_commands_data(commands: &[(u8, Option<u8>, &CommandInfo)], rctd: bool) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    for &(opcode, sa, info) in commands {
        let [sa_hi, sa_lo] = u16::from(sa.unwrap_or(0)).to_be_bytes();
        let flags = (if rctd { 0x02 } else { 0 }) | u8::from(sa.is_some());
        let [len_hi, len_lo] = u16::try_from(info.cdb_len)
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        data.extend_from_slice(&[opcode, 0, sa_hi, sa_lo, 0, flags, len_hi, len_lo]);
        if rctd {
            data.extend_from_slice(&timeouts_descriptor(opcode, sa));
        }
    }
    let len = u32::try_from(data.len() - 4).unwrap_or(u32::MAX);
    data[0..4].copy_from_slice(&len.to_be_bytes());
    data
}

/// SUPPORT values of the one_command format (SPC-4 §6.35.3 table 238).
const SUPPORT_NOT_SUPPORTED: u8 = 0b001;
const SUPPORT_STANDARD: u8 = 0b011;

/// One command parameter data (SPC-4 §6.35.3) for `(opcode, service action)`: SUPPORT 011b
/// with the CDB usage data if the command table has it, else SUPPORT 001b and no CDB.
pub fn one_command_data(
    commands: &[(u8, Option<u8>, &CommandInfo)],
    opcode: u8,
    service_action: Option<u8>,
    rctd: bool,
) -> Vec<u8> {
    let found = commands
        .iter()
        .find(|(op, sa, _)| *op == opcode && *sa == service_action);
    let Some(&(_, _, info)) = found else {
        return vec![0, SUPPORT_NOT_SUPPORTED, 0, 0];
    };
    let usage = cdb_usage(opcode, service_action, info);
    let ctdp = if rctd { 0x80 } else { 0 };
    let mut data = vec![0, ctdp | SUPPORT_STANDARD];
    data.extend_from_slice(&u16::try_from(usage.len()).unwrap_or(0).to_be_bytes());
    data.extend(usage);
    if rctd {
        data.extend_from_slice(&timeouts_descriptor(opcode, service_action));
    }
    data
}

/// The parameter data for a decoded CDB, against a command list (the real one in the
/// handler; a fixed one in tests).
pub fn rsoc_data(
    cdb: &RsocCdb,
    commands: &[(u8, Option<u8>, &CommandInfo)],
) -> Result<Vec<u8>, Sense> {
    let has_sa = opcode_has_service_actions(cdb.opcode);
    // Service actions are 5 bits in every CDB that has them here; a larger requested value
    // names no command.
    let requested_sa = u8::try_from(cdb.service_action)
        .ok()
        .filter(|sa| *sa <= 0x1F);
    let one = |sa: Option<u8>| match (sa, has_sa) {
        (Some(sa), true) => one_command_data(commands, cdb.opcode, Some(sa), cdb.rctd),
        (None, true) => vec![0, SUPPORT_NOT_SUPPORTED, 0, 0],
        (_, false) => one_command_data(commands, cdb.opcode, None, cdb.rctd),
    };
    match cdb.reporting_options {
        0b000 => Ok(all_commands_data(commands, cdb.rctd)),
        // 001b: the opcode alone; an opcode with service actions needs 010b.
        0b001 if has_sa => Err(Sense::invalid_field_in_cdb(3, Some(7))),
        0b001 => Ok(one(None)),
        // 010b: opcode and service action; an opcode without service actions is an error.
        0b010 if !has_sa => Err(Sense::invalid_field_in_cdb(3, Some(7))),
        0b010 => Ok(one(requested_sa)),
        // 011b: opcode, and the service action only if the opcode has them.
        0b011 => Ok(one(requested_sa)),
        _ => Err(Sense::invalid_field_in_cdb(2, Some(2))),
    }
}

/// REPORT SUPPORTED OPERATION CODES.
pub fn report_supported_opcodes(raw: &[u8]) -> Result<Bytes, Sense> {
    let cdb = decode_rsoc(raw)?;
    let data = rsoc_data(&cdb, &opcodes::supported_commands())?;
    Ok(truncate(
        data,
        usize::try_from(cdb.alloc_len).unwrap_or(usize::MAX),
    ))
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS parameter data (SPC-4 §6.37.2): what the iSCSI
/// layer implements: ABORT TASK (ATS), ABORT TASK SET (ATSS), CLEAR TASK SET (CTSS), LOGICAL
/// UNIT RESET (LURS), TARGET RESET (TRS). Not CLEAR ACA (no ACA), QUERY TASK, QUERY TASK SET,
/// QUERY ASYNCHRONOUS EVENT, I_T NEXUS RESET. With REPD, the extended format (16 bytes, no
/// timeouts: TMFTMOV clear).
pub fn supported_tmfs_data(repd: bool) -> Vec<u8> {
    const ATS: u8 = 0x80;
    const ATSS: u8 = 0x40;
    const CTSS: u8 = 0x10;
    const LURS: u8 = 0x08;
    const TRS: u8 = 0x02;
    let mut data = vec![ATS | ATSS | CTSS | LURS | TRS, 0, 0, 0];
    if repd {
        data[3] = 0x0C; // ADDITIONAL DATA LENGTH
        data.resize(16, 0);
    }
    data
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS.
pub fn report_supported_tmfs(raw: &[u8]) -> Result<Bytes, Sense> {
    cdb::require_len(raw, 12)?;
    let repd = raw[2] & 0x80 != 0;
    let alloc_len = u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]);
    Ok(truncate(
        supported_tmfs_data(repd),
        usize::try_from(alloc_len).unwrap_or(usize::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::opcodes::op;

    fn rsoc(rctd: bool, options: u8, opcode: u8, sa: u16) -> RsocCdb {
        let mut raw = [0u8; 12];
        raw[0] = op::MAINTENANCE_IN;
        raw[1] = op::SA_REPORT_SUPPORTED_OPCODES;
        raw[2] = (if rctd { 0x80 } else { 0 }) | options;
        raw[3] = opcode;
        raw[4..6].copy_from_slice(&sa.to_be_bytes());
        raw[6..10].copy_from_slice(&65535u32.to_be_bytes());
        decode_rsoc(&raw).unwrap()
    }

    fn run(cdb: &RsocCdb) -> Result<Vec<u8>, Sense> {
        rsoc_data(cdb, &opcodes::supported_commands())
    }

    #[test]
    fn usage_table_is_sorted_and_well_formed() {
        for pair in USAGE.windows(2) {
            assert!(
                (pair[0].opcode, pair[0].service_action) < (pair[1].opcode, pair[1].service_action),
                "USAGE out of order at {:#04x}",
                pair[1].opcode
            );
        }
        for u in USAGE {
            assert_eq!(u.usage[0], u.opcode);
            assert_eq!(
                Some(u.usage.len()),
                cdb::cdb_length(u.opcode),
                "{:#04x}",
                u.opcode
            );
            assert_eq!(*u.usage.last().unwrap(), CTL);
            if let Some(sa) = u.service_action {
                assert_eq!(u.usage[1] & 0x1F, sa);
            }
        }
    }

    #[test]
    fn every_supported_command_has_a_usage_row() {
        for (opcode, sa, info) in opcodes::supported_commands() {
            let u = usage_of(opcode, sa)
                .unwrap_or_else(|| panic!("no usage row for {} ({opcode:#04x})", info.name));
            assert_eq!(u.usage.len(), info.cdb_len, "{}", info.name);
            assert_eq!(sa.is_some(), opcodes::has_service_actions(opcode));
        }
    }

    #[test]
    fn all_commands_lists_exactly_the_table() {
        let commands = opcodes::supported_commands();
        let d = run(&rsoc(false, 0, 0, 0)).unwrap();
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 4);
        assert_eq!(len, 8 * commands.len());
        for (desc, (opcode, sa, info)) in d[4..].chunks(8).zip(&commands) {
            assert_eq!(desc[0], *opcode);
            assert_eq!(
                u16::from_be_bytes([desc[2], desc[3]]),
                u16::from(sa.unwrap_or(0))
            );
            assert_eq!(desc[5], u8::from(sa.is_some()));
            assert_eq!(
                usize::from(u16::from_be_bytes([desc[6], desc[7]])),
                info.cdb_len
            );
        }
        // INQUIRY and READ CAPACITY(16) are in; an unsupported opcode is not.
        assert!(d[4..].chunks(8).any(|c| c[0] == op::INQUIRY));
        assert!(
            d[4..]
                .chunks(8)
                .any(|c| c[0] == 0x9E && c[3] == 0x10 && c[5] == 1)
        );
        assert!(!d[4..].chunks(8).any(|c| c[0] == 0xC5));
    }

    #[test]
    fn rctd_adds_timeouts_descriptors() {
        let commands = opcodes::supported_commands();
        let d = run(&rsoc(true, 0, 0, 0)).unwrap();
        assert_eq!(d.len(), 4 + 20 * commands.len());
        for desc in d[4..].chunks(20) {
            assert_eq!(desc[5] & 0x02, 0x02);
            assert_eq!(&desc[8..10], &[0, 0x0A]);
            assert!(u32::from_be_bytes(desc[16..20].try_into().unwrap()) > 0);
        }
    }

    #[test]
    fn one_command_formats() {
        // READ(10): supported, usage with DPO/FUA, no service action.
        let d = run(&rsoc(false, 1, op::READ_10, 0)).unwrap();
        assert_eq!(&d[0..4], &[0, 0x03, 0, 10]);
        assert_eq!(d[4], op::READ_10);
        assert_eq!(d[5] & 0x18, 0x18);
        assert_eq!(d.len(), 14);
        // With RCTD: CTDP and a timeouts descriptor after the usage data.
        let d = run(&rsoc(true, 1, op::READ_10, 0)).unwrap();
        assert_eq!(d[1], 0x83);
        assert_eq!(d.len(), 14 + 12);
        assert_eq!(&d[14..16], &[0, 0x0A]);
        // Unsupported opcode: SUPPORT 001b, no CDB.
        assert_eq!(run(&rsoc(false, 1, 0xC5, 0)).unwrap(), vec![0, 1, 0, 0]);
        // READ CAPACITY(16) needs option 2 (or 3).
        let err = run(&rsoc(false, 1, 0x9E, 0x10)).unwrap_err();
        assert_eq!(
            (err.asc, err.field_pointer),
            (0x24, Some((true, 3, Some(7))))
        );
        let d = run(&rsoc(false, 2, 0x9E, 0x10)).unwrap();
        assert_eq!(&d[0..6], &[0, 0x03, 0, 16, 0x9E, 0x10]);
        assert_eq!(run(&rsoc(false, 2, 0x9E, 0x11)).unwrap(), vec![0, 1, 0, 0]);
        assert_eq!(
            run(&rsoc(false, 2, 0x9E, 0x1234)).unwrap(),
            vec![0, 1, 0, 0]
        );
        // Option 2 on an opcode without service actions.
        let err = run(&rsoc(false, 2, op::READ_10, 0)).unwrap_err();
        assert_eq!(err.asc, 0x24);
        // Option 3 works either way.
        assert_eq!(run(&rsoc(false, 3, 0x9E, 0x10)).unwrap()[1], 0x03);
        assert_eq!(run(&rsoc(false, 3, op::READ_10, 7)).unwrap()[1], 0x03);
        // REPORT SUPPORTED OPERATION CODES describes itself.
        let d = run(&rsoc(false, 2, op::MAINTENANCE_IN, 0x0C)).unwrap();
        assert_eq!(&d[4..7], &[0xA3, 0x0C, 0x87]);
        // Reserved reporting options.
        let err = run(&rsoc(false, 4, 0, 0)).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 2, Some(2))));
    }

    #[test]
    fn usage_rows_only_count_when_the_table_has_the_command() {
        // A command only described in USAGE is reported as not supported.
        let commands: Vec<_> = opcodes::supported_commands()
            .into_iter()
            .filter(|(op, _, _)| *op != 0x28)
            .collect();
        let d = rsoc_data(&rsoc(false, 1, 0x28, 0), &commands).unwrap();
        assert_eq!(d, vec![0, 1, 0, 0]);
        // An opcode known to have service actions but not supported (PERSISTENT RESERVE IN
        // if it is not merged) still wants option 2.
        if !opcodes::has_service_actions(0x5E) {
            assert!(rsoc_data(&rsoc(false, 1, 0x5E, 0), &commands).is_err());
            assert_eq!(
                rsoc_data(&rsoc(false, 2, 0x5E, 0), &commands).unwrap(),
                vec![0, 1, 0, 0]
            );
        }
    }

    #[test]
    fn generic_usage_for_an_undescribed_command() {
        let info = opcodes::lookup(&[op::INQUIRY]).unwrap();
        let u = cdb_usage(0xC0, None, info);
        assert_eq!(u, vec![0xC0, 0xFF, 0xFF, 0xFF, 0xFF, CTL]);
        let u = cdb_usage(0xC1, Some(3), info);
        assert_eq!(&u[..2], &[0xC1, 3]);
    }

    #[test]
    fn task_management_functions() {
        assert_eq!(supported_tmfs_data(false), vec![0xDA, 0, 0, 0]);
        let d = supported_tmfs_data(true);
        assert_eq!(d.len(), 16);
        assert_eq!(&d[..4], &[0xDA, 0, 0, 0x0C]);
        let mut raw = [0u8; 12];
        raw[0] = op::MAINTENANCE_IN;
        raw[1] = op::SA_REPORT_SUPPORTED_TMFS;
        raw[9] = 2;
        assert_eq!(&report_supported_tmfs(&raw).unwrap()[..], &[0xDA, 0]);
        assert!(report_supported_tmfs(&raw[..8]).is_err());
    }
}
