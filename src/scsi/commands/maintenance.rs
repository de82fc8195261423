//! MAINTENANCE IN commands that describe the device server itself: REPORT SUPPORTED OPERATION
//! CODES (SPC-4 §6.35) and REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.37).
//!
//! Everything REPORT SUPPORTED OPERATION CODES says comes from the command table
//! ([`table::supported_commands`]): which commands exist, their CDB usage bitmaps and their
//! timeouts, so the report is exactly what dispatch accepts.

use bytes::Bytes;

use super::parameter_data::truncate;
use crate::scsi::cdb;
use crate::scsi::sense::Sense;
use crate::scsi::table::{self, CommandInfo};

/// Command timeouts descriptor (SPC-4 §6.35.4): DESCRIPTOR LENGTH 0Ah, no command-specific
/// data, NOMINAL COMMAND PROCESSING TIMEOUT 0 (not specified), RECOMMENDED COMMAND TIMEOUT.
fn timeouts_descriptor(row: &CommandInfo) -> [u8; 12] {
    let mut d = [0u8; 12];
    d[0..2].copy_from_slice(&0x0Au16.to_be_bytes());
    d[8..12].copy_from_slice(&row.timeout_secs.to_be_bytes());
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
pub fn all_commands_data(commands: &[CommandInfo], rctd: bool) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    for row in commands {
        let sa = row.service_action;
        let [sa_hi, sa_lo] = u16::from(sa.unwrap_or(0)).to_be_bytes();
        let flags = (if rctd { 0x02 } else { 0 }) | u8::from(sa.is_some());
        let [len_hi, len_lo] = u16::try_from(row.cdb_len())
            .unwrap_or(u16::MAX)
            .to_be_bytes();
        data.extend_from_slice(&[row.opcode, 0, sa_hi, sa_lo, 0, flags, len_hi, len_lo]);
        if rctd {
            data.extend_from_slice(&timeouts_descriptor(row));
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
    commands: &[CommandInfo],
    opcode: u8,
    service_action: Option<u8>,
    rctd: bool,
) -> Vec<u8> {
    let found = commands
        .iter()
        .find(|row| row.opcode == opcode && row.service_action == service_action);
    let Some(row) = found else {
        return vec![0, SUPPORT_NOT_SUPPORTED, 0, 0];
    };
    let ctdp = if rctd { 0x80 } else { 0 };
    let mut data = vec![0, ctdp | SUPPORT_STANDARD];
    data.extend_from_slice(&u16::try_from(row.usage.len()).unwrap_or(0).to_be_bytes());
    data.extend_from_slice(row.usage);
    if rctd {
        data.extend_from_slice(&timeouts_descriptor(row));
    }
    data
}

/// The parameter data for a decoded CDB, against a command list (the real one in the
/// handler; a fixed one in tests).
pub fn rsoc_data(cdb: &RsocCdb, commands: &[CommandInfo]) -> Result<Vec<u8>, Sense> {
    let has_sa = table::has_service_actions(cdb.opcode);
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
    let data = rsoc_data(&cdb, table::supported_commands())?;
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
        rsoc_data(cdb, table::supported_commands())
    }

    #[test]
    fn all_commands_lists_exactly_the_table() {
        let commands = table::supported_commands();
        let d = run(&rsoc(false, 0, 0, 0)).unwrap();
        let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 4);
        assert_eq!(len, 8 * commands.len());
        for (desc, row) in d[4..].chunks(8).zip(commands) {
            let sa = row.service_action;
            assert_eq!(desc[0], row.opcode);
            assert_eq!(
                u16::from_be_bytes([desc[2], desc[3]]),
                u16::from(sa.unwrap_or(0))
            );
            assert_eq!(desc[5], u8::from(sa.is_some()));
            assert_eq!(
                usize::from(u16::from_be_bytes([desc[6], desc[7]])),
                row.cdb_len()
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
        let commands = table::supported_commands();
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
    fn only_listed_commands_are_reported() {
        // A command missing from the list (as if not merged) is reported as not supported.
        let commands: Vec<_> = table::supported_commands()
            .iter()
            .filter(|row| row.opcode != 0x28)
            .copied()
            .collect();
        let d = rsoc_data(&rsoc(false, 1, 0x28, 0), &commands).unwrap();
        assert_eq!(d, vec![0, 1, 0, 0]);
        // An opcode known to have service actions but not supported (PERSISTENT RESERVE IN
        // if it is not merged) still wants option 2.
        if !table::has_service_actions(0x5E) {
            assert!(rsoc_data(&rsoc(false, 1, 0x5E, 0), &commands).is_err());
            assert_eq!(
                rsoc_data(&rsoc(false, 2, 0x5E, 0), &commands).unwrap(),
                vec![0, 1, 0, 0]
            );
        }
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
