//! The command table: what the target knows about each opcode before running it.
//!
//! Dispatch looks a CDB up here first (by opcode, then service action for opcodes that carry
//! one) and applies the generic checks the entry asks for (unit attention reporting,
//! readiness, CONTROL byte) before calling the handler. The shape follows FreeBSD CTL's
//! `ctl_cmd_table` and tgt's device type templates: one static row per opcode.

use super::sense::Sense;

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

/// Which handler runs the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    TestUnitReady,
    RequestSense,
    Inquiry,
    ReportLuns,
    ModeSense,
    /// START STOP UNIT: loads and unloads a removable medium.
    StartStopUnit,
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow,
    ReadCapacity10,
    ReadCapacity16,
    ReadWrite,
    SynchronizeCache,
    ReportSupportedOpcodes,
    ReportSupportedTmfs,
    ReportTargetPortGroups,
    ModeSelect,
    ReadDefectData,
    LogSense,
    PersistentReserveIn,
    PersistentReserveOut,
    /// SPC-2 RESERVE(6)/RESERVE(10).
    Reserve,
    /// SPC-2 RELEASE(6)/RELEASE(10).
    Release,
    CompareAndWrite,
    WriteSame,
    Unmap,
    GetLbaStatus,
    /// VERIFY and WRITE AND VERIFY (10/12/16).
    Verify,
    OrWrite,
    PreFetch,
    WriteAtomic,
    ExtendedCopy,
    ReceiveCopyResults,
}

/// Direction of the data phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Target to initiator (read data).
    In,
    /// Initiator to target (write data).
    Out,
}

/// One row of the command table.
#[derive(Clone, Copy, Debug)]
pub struct CommandInfo {
    /// For people and the table's tests; nothing dispatches on it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub handler: Handler,
    /// Documents the row; the Data-Out rule is what dispatch uses.
    #[allow(dead_code)]
    pub direction: DataDirection,
    /// CDB length in bytes (where the CONTROL byte is).
    pub cdb_len: usize,
    /// Runs while the logical unit is becoming ready or offline (no medium needed).
    pub allowed_not_ready: bool,
    /// Reports (and so clears) a pending unit attention instead of running. INQUIRY, REPORT
    /// LUNS and REQUEST SENSE do not (SAM-5 §5.14 / SPC-4 §5.14).
    pub reports_unit_attention: bool,
}

/// A table slot: nothing, a command, or a list of service actions (taken from CDB byte 1,
/// bits 4-0).
#[derive(Clone, Copy, Debug)]
enum Slot {
    Unsupported,
    Command(CommandInfo),
    ServiceActions(&'static [(u8, CommandInfo)]),
}

const fn command(
    name: &'static str,
    handler: Handler,
    direction: DataDirection,
    cdb_len: usize,
    allowed_not_ready: bool,
    reports_unit_attention: bool,
) -> CommandInfo {
    CommandInfo {
        name,
        handler,
        direction,
        cdb_len,
        allowed_not_ready,
        reports_unit_attention,
    }
}

/// A command that needs the medium and reports unit attentions: the common case.
const fn media(name: &'static str, handler: Handler, dir: DataDirection, len: usize) -> Slot {
    Slot::Command(command(name, handler, dir, len, false, true))
}

/// A command that works without a medium and reports unit attentions.
const fn any_state(name: &'static str, handler: Handler, dir: DataDirection, len: usize) -> Slot {
    Slot::Command(command(name, handler, dir, len, true, true))
}

/// A command that works without a medium and never reports unit attentions.
const fn no_ua(name: &'static str, handler: Handler, dir: DataDirection, len: usize) -> Slot {
    Slot::Command(command(name, handler, dir, len, true, false))
}

const fn prin(service_action: u8) -> (u8, CommandInfo) {
    let info = command(
        "PERSISTENT RESERVE IN",
        Handler::PersistentReserveIn,
        DataDirection::In,
        10,
        true,
        true,
    );
    (service_action, info)
}

const fn prout(service_action: u8) -> (u8, CommandInfo) {
    let info = command(
        "PERSISTENT RESERVE OUT",
        Handler::PersistentReserveOut,
        DataDirection::Out,
        10,
        true,
        true,
    );
    (service_action, info)
}

/// READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS.
static PERSISTENT_RESERVE_IN: [(u8, CommandInfo); 4] =
    [prin(0x00), prin(0x01), prin(0x02), prin(0x03)];

/// REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT AND ABORT, REGISTER AND IGNORE
/// EXISTING KEY, REGISTER AND MOVE.
static PERSISTENT_RESERVE_OUT: [(u8, CommandInfo); 8] = [
    prout(0x00),
    prout(0x01),
    prout(0x02),
    prout(0x03),
    prout(0x04),
    prout(0x05),
    prout(0x06),
    prout(0x07),
];

static SERVICE_ACTION_IN_16: [(u8, CommandInfo); 2] = [
    (
        op::SA_READ_CAPACITY_16,
        command(
            "READ CAPACITY(16)",
            Handler::ReadCapacity16,
            DataDirection::In,
            16,
            false,
            true,
        ),
    ),
    (
        op::SA_GET_LBA_STATUS,
        command(
            "GET LBA STATUS",
            Handler::GetLbaStatus,
            DataDirection::In,
            16,
            false,
            true,
        ),
    ),
];

/// EXTENDED COPY (83h): LID1 only (LID4, service action 01h, is not supported).
static EXTENDED_COPY: [(u8, CommandInfo); 1] = [(
    op::SA_EXTENDED_COPY_LID1,
    command(
        "EXTENDED COPY(LID1)",
        Handler::ExtendedCopy,
        DataDirection::Out,
        16,
        false,
        true,
    ),
)];

/// RECEIVE COPY RESULTS (84h): COPY STATUS and OPERATING PARAMETERS. RECEIVE DATA (01h) and
/// FAILED SEGMENT DETAILS (04h) are refused: no data is ever held.
static RECEIVE_COPY_RESULTS: [(u8, CommandInfo); 2] = [
    (
        op::SA_COPY_STATUS,
        command(
            "RECEIVE COPY RESULTS",
            Handler::ReceiveCopyResults,
            DataDirection::In,
            16,
            true,
            true,
        ),
    ),
    (
        op::SA_OPERATING_PARAMETERS,
        command(
            "RECEIVE COPY RESULTS",
            Handler::ReceiveCopyResults,
            DataDirection::In,
            16,
            true,
            true,
        ),
    ),
];

/// MAINTENANCE IN (A3h) service actions, ascending. All of them describe the target rather
/// than the medium, so they run while the unit is not ready (SPC-4 §4.3.4.2).
static MAINTENANCE_IN: [(u8, CommandInfo); 3] = [
    (
        op::SA_REPORT_TARGET_PORT_GROUPS,
        command(
            "REPORT TARGET PORT GROUPS",
            Handler::ReportTargetPortGroups,
            DataDirection::In,
            12,
            true,
            true,
        ),
    ),
    (
        op::SA_REPORT_SUPPORTED_OPCODES,
        command(
            "REPORT SUPPORTED OPERATION CODES",
            Handler::ReportSupportedOpcodes,
            DataDirection::In,
            12,
            true,
            true,
        ),
    ),
    (
        op::SA_REPORT_SUPPORTED_TMFS,
        command(
            "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            Handler::ReportSupportedTmfs,
            DataDirection::In,
            12,
            true,
            true,
        ),
    ),
];

/// Every supported command as `(opcode, service action, row)`: `None` for opcodes without
/// service actions. Ascending by opcode, then service action. REPORT SUPPORTED OPERATION CODES
/// walks this, so its answer is exactly what dispatch accepts.
pub fn supported_commands() -> Vec<(u8, Option<u8>, &'static CommandInfo)> {
    let mut out = Vec::new();
    for (opcode, slot) in (0..=u8::MAX).zip(TABLE.iter()) {
        match slot {
            Slot::Unsupported => {}
            Slot::Command(info) => out.push((opcode, None, info)),
            Slot::ServiceActions(actions) => {
                let mut sorted: Vec<_> = actions.iter().collect();
                sorted.sort_by_key(|(sa, _)| *sa);
                out.extend(
                    sorted
                        .into_iter()
                        .map(|(sa, info)| (opcode, Some(*sa), info)),
                );
            }
        }
    }
    out
}

/// Whether `opcode` selects its command by a service action field.
pub fn has_service_actions(opcode: u8) -> bool {
    matches!(TABLE[usize::from(opcode)], Slot::ServiceActions(_))
}

static TABLE: [Slot; 256] = build_table();

const fn build_table() -> [Slot; 256] {
    use DataDirection::{In, None, Out};
    use Handler::*;
    let mut t = [Slot::Unsupported; 256];
    t[op::TEST_UNIT_READY as usize] = media("TEST UNIT READY", TestUnitReady, None, 6);
    t[op::REQUEST_SENSE as usize] = no_ua("REQUEST SENSE", RequestSense, In, 6);
    t[op::READ_6 as usize] = media("READ(6)", ReadWrite, In, 6);
    t[op::WRITE_6 as usize] = media("WRITE(6)", ReadWrite, Out, 6);
    t[op::INQUIRY as usize] = no_ua("INQUIRY", Inquiry, In, 6);
    t[op::MODE_SENSE_6 as usize] = any_state("MODE SENSE(6)", ModeSense, In, 6);
    // They load the medium, and guard it, so they run without one.
    t[op::START_STOP_UNIT as usize] = any_state("START STOP UNIT", StartStopUnit, None, 6);
    t[op::PREVENT_ALLOW_MEDIUM_REMOVAL as usize] =
        any_state("PREVENT ALLOW MEDIUM REMOVAL", PreventAllow, None, 6);
    t[op::READ_CAPACITY_10 as usize] = media("READ CAPACITY(10)", ReadCapacity10, In, 10);
    t[op::READ_10 as usize] = media("READ(10)", ReadWrite, In, 10);
    t[op::WRITE_10 as usize] = media("WRITE(10)", ReadWrite, Out, 10);
    t[op::SYNCHRONIZE_CACHE_10 as usize] =
        media("SYNCHRONIZE CACHE(10)", SynchronizeCache, None, 10);
    t[op::MODE_SENSE_10 as usize] = any_state("MODE SENSE(10)", ModeSense, In, 10);
    t[op::READ_16 as usize] = media("READ(16)", ReadWrite, In, 16);
    t[op::WRITE_16 as usize] = media("WRITE(16)", ReadWrite, Out, 16);
    t[op::SYNCHRONIZE_CACHE_16 as usize] =
        media("SYNCHRONIZE CACHE(16)", SynchronizeCache, None, 16);
    t[op::SERVICE_ACTION_IN_16 as usize] = Slot::ServiceActions(&SERVICE_ACTION_IN_16);
    t[op::REPORT_LUNS as usize] = no_ua("REPORT LUNS", ReportLuns, In, 12);
    t[op::READ_12 as usize] = media("READ(12)", ReadWrite, In, 12);
    t[op::WRITE_12 as usize] = media("WRITE(12)", ReadWrite, Out, 12);
    t[op::MODE_SELECT_6 as usize] = any_state("MODE SELECT(6)", ModeSelect, Out, 6);
    t[op::MODE_SELECT_10 as usize] = any_state("MODE SELECT(10)", ModeSelect, Out, 10);
    t[op::READ_DEFECT_DATA_10 as usize] = media("READ DEFECT DATA(10)", ReadDefectData, In, 10);
    t[op::READ_DEFECT_DATA_12 as usize] = media("READ DEFECT DATA(12)", ReadDefectData, In, 12);
    t[op::LOG_SENSE as usize] = any_state("LOG SENSE", LogSense, In, 10);
    t[op::MAINTENANCE_IN as usize] = Slot::ServiceActions(&MAINTENANCE_IN);
    // No medium needed (FreeBSD CTL marks them OK_ON_NO_MEDIA too); they report unit
    // attentions like any command but INQUIRY, REPORT LUNS and REQUEST SENSE.
    t[op::RESERVE_6 as usize] = any_state("RESERVE(6)", Reserve, None, 6);
    t[op::RELEASE_6 as usize] = any_state("RELEASE(6)", Release, None, 6);
    t[op::RESERVE_10 as usize] = any_state("RESERVE(10)", Reserve, Out, 10);
    t[op::RELEASE_10 as usize] = any_state("RELEASE(10)", Release, Out, 10);
    // One row per service action (SPC-4 §6.13, §6.14), so REPORT SUPPORTED OPERATION CODES
    // lists each and an unknown service action is refused at byte 1.
    t[op::PERSISTENT_RESERVE_IN as usize] = Slot::ServiceActions(&PERSISTENT_RESERVE_IN);
    t[op::PERSISTENT_RESERVE_OUT as usize] = Slot::ServiceActions(&PERSISTENT_RESERVE_OUT);
    t[op::WRITE_AND_VERIFY_10 as usize] = media("WRITE AND VERIFY(10)", Verify, Out, 10);
    t[op::VERIFY_10 as usize] = media("VERIFY(10)", Verify, Out, 10);
    t[op::PRE_FETCH_10 as usize] = media("PRE-FETCH(10)", PreFetch, None, 10);
    t[op::WRITE_SAME_10 as usize] = media("WRITE SAME(10)", WriteSame, Out, 10);
    t[op::UNMAP as usize] = media("UNMAP", Unmap, Out, 10);
    t[op::COMPARE_AND_WRITE as usize] = media("COMPARE AND WRITE", CompareAndWrite, Out, 16);
    t[op::ORWRITE_16 as usize] = media("ORWRITE(16)", OrWrite, Out, 16);
    t[op::WRITE_AND_VERIFY_16 as usize] = media("WRITE AND VERIFY(16)", Verify, Out, 16);
    t[op::VERIFY_16 as usize] = media("VERIFY(16)", Verify, Out, 16);
    t[op::PRE_FETCH_16 as usize] = media("PRE-FETCH(16)", PreFetch, None, 16);
    t[op::WRITE_SAME_16 as usize] = media("WRITE SAME(16)", WriteSame, Out, 16);
    t[op::WRITE_ATOMIC_16 as usize] = media("WRITE ATOMIC(16)", WriteAtomic, Out, 16);
    t[op::WRITE_AND_VERIFY_12 as usize] = media("WRITE AND VERIFY(12)", Verify, Out, 12);
    t[op::VERIFY_12 as usize] = media("VERIFY(12)", Verify, Out, 12);
    t[op::EXTENDED_COPY as usize] = Slot::ServiceActions(&EXTENDED_COPY);
    t[op::RECEIVE_COPY_RESULTS as usize] = Slot::ServiceActions(&RECEIVE_COPY_RESULTS);
    t
}

/// Finds the command for a CDB. Errors: INVALID COMMAND OPERATION CODE for an unknown (or
/// missing) opcode; INVALID FIELD IN CDB pointing at the SERVICE ACTION field for an unknown
/// service action of a known opcode (SPC-4 §4.3.4.2).
pub fn lookup(cdb: &[u8]) -> Result<&'static CommandInfo, Sense> {
    let opcode = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    match &TABLE[usize::from(opcode)] {
        Slot::Unsupported => Err(Sense::invalid_opcode()),
        Slot::Command(info) => Ok(info),
        Slot::ServiceActions(actions) => {
            let service_action = cdb.get(1).map_or(0, |b| b & 0x1F);
            actions
                .iter()
                .find(|(sa, _)| *sa == service_action)
                .map(|(_, info)| info)
                .ok_or_else(|| Sense::invalid_field_in_cdb(1, Some(4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_row_matches_its_group_length() {
        for opcode in 0..=255u8 {
            if let Slot::Command(info) = &TABLE[usize::from(opcode)] {
                assert_eq!(Some(info.cdb_len), super::super::cdb::cdb_length(opcode));
            }
        }
    }

    #[test]
    fn lookup_by_opcode_and_service_action() {
        assert_eq!(lookup(&[op::INQUIRY]).unwrap().handler, Handler::Inquiry);
        assert!(!lookup(&[op::INQUIRY]).unwrap().reports_unit_attention);
        assert!(lookup(&[op::READ_10]).unwrap().reports_unit_attention);
        assert!(!lookup(&[op::READ_10]).unwrap().allowed_not_ready);
        assert_eq!(
            lookup(&[op::SERVICE_ACTION_IN_16, 0x10]).unwrap().handler,
            Handler::ReadCapacity16
        );
        // The top three bits of byte 1 are not part of the service action.
        assert!(lookup(&[op::SERVICE_ACTION_IN_16, 0xF0]).is_ok());
        let err = lookup(&[op::SERVICE_ACTION_IN_16, 0x11]).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 1, Some(4))));
        assert_eq!(lookup(&[0xFF]).unwrap_err(), Sense::invalid_opcode());
        assert_eq!(lookup(&[]).unwrap_err(), Sense::invalid_opcode());
    }
}
