//! The command table: one row per command (an opcode, or an opcode and service action) with
//! everything the target knows about it before its handler runs, after FreeBSD CTL's
//! `ctl_cmd_entry` (`sys/cam/ctl/ctl_private.h`, `ctl_cmd_table.c`).
//!
//! A row carries the handler, the CDB usage bitmap (its length is the CDB length) and
//! timeout for REPORT SUPPORTED OPERATION CODES, the states the command runs in (no medium,
//! pending unit attention), its access under SPC-3 persistent and SPC-2 reservations, how
//! much Data-Out its CDB asks for, and its ordering class (`ordering.rs`). Dispatch
//! (`target.rs`) looks the CDB up here and applies the row (unit attention, CDB length and
//! CONTROL byte, reservation conflict, readiness) before the handler runs, and hands the
//! handler the ordering of the row's class.

use super::commands::reservation_access::{self, PrAccess, Spc2Access};
use super::commands::{atomic, compare_and_write, sbc, verify, write_same};
use super::opcodes::op;
use super::ordering::OrderClass;
use super::sense::Sense;
use super::unit::sanitize::DuringSanitize;

/// Which handler runs the command. Dispatch matches on it (an exhaustive match, so a new
/// variant cannot be forgotten there); a function pointer per row would need a boxed future
/// per command, an allocation on the READ/WRITE path.
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
    Sanitize,
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

/// How many bytes of write data a CDB asks for, whatever the command's outcome: the
/// transport reports the difference from what the initiator sent as the residual (RFC 7143
/// §11.4.5.1, SAM-5 §5.4.3).
#[derive(Clone, Copy, Debug)]
pub enum DataOut {
    /// No Data-Out.
    None,
    /// A PARAMETER LIST LENGTH field: `width` bytes big-endian at byte `at`.
    ParamLen { at: usize, width: usize },
    /// Computed from the decoded CDB (a transfer length in blocks, two buffers for COMPARE
    /// AND WRITE, BYTCHK for VERIFY, ...): a CDB its decoder refuses needs none, so a refused
    /// command reports its whole Data-Out as residual.
    Custom(fn(cdb: &[u8], block_size: u32) -> u32),
}

impl DataOut {
    pub fn bytes(self, cdb: &[u8], block_size: u32) -> u32 {
        match self {
            DataOut::None => 0,
            // A CDB too short to hold the field asks for nothing (dispatch refuses it), as
            // the decoders the rule replaced answered.
            DataOut::ParamLen { at, width } => cdb.get(at..at + width).map_or(0, |field| {
                field.iter().fold(0, |n, &b| (n << 8) | u32::from(b))
            }),
            DataOut::Custom(rule) => rule(cdb, block_size),
        }
    }
}

/// How a command fares under a persistent reservation it does not hold: a fixed
/// [`PrAccess`], or one that depends on CDB bits (START STOP UNIT, PREVENT ALLOW MEDIUM
/// REMOVAL).
#[derive(Clone, Copy, Debug)]
pub enum PrRule {
    Fixed(PrAccess),
    ByCdb(fn(&[u8]) -> PrAccess),
}

impl PrRule {
    pub fn access(self, cdb: &[u8]) -> PrAccess {
        match self {
            PrRule::Fixed(access) => access,
            PrRule::ByCdb(rule) => rule(cdb),
        }
    }
}

/// How a command meets reservations held by another I_T nexus when its access does not
/// depend on CDB bits: under a persistent reservation (SBC-4 §4.17 table 13) and under an
/// SPC-2 RESERVE (SPC-2 §5.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationAccess {
    pub pr: PrAccess,
    pub spc2: Spc2Access,
}

/// The READ rows' reservation access. The copy manager reads its source copy targets with
/// it (`xcopy.rs`), as the initiator's own READ would, so the two cannot drift.
pub const READ_ACCESS: ReservationAccess = ReservationAccess {
    pr: PrAccess::Read,
    spc2: Spc2Access::ConflictsForOthers,
};

/// The WRITE rows' reservation access; the copy manager writes its destination copy targets
/// with it.
pub const WRITE_ACCESS: ReservationAccess = ReservationAccess {
    pr: PrAccess::Write,
    spc2: Spc2Access::ConflictsForOthers,
};

/// One row of the command table: everything the target knows about a command (an opcode, or
/// an opcode and service action) before its handler runs.
#[derive(Clone, Copy, Debug)]
pub struct CommandInfo {
    /// For people and the table's tests; nothing dispatches on it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub opcode: u8,
    /// Service action (CDB byte 1, bits 4-0), for opcodes that have them.
    pub service_action: Option<u8>,
    pub handler: Handler,
    /// The table's tests check it against [`CommandInfo::data_out`]: a command with Data-Out
    /// must say how much it takes.
    #[cfg_attr(not(test), allow(dead_code))]
    pub direction: DataDirection,
    /// CDB USAGE DATA for REPORT SUPPORTED OPERATION CODES (SPC-4 §6.35.3): byte 0 the
    /// opcode, the service action in its own field, elsewhere a bit set for every CDB bit the
    /// device server examines. Its length is the CDB length (where the CONTROL byte is).
    /// Protection fields are clear (INQUIRY PROTECT = 0), GROUP NUMBER fields are ignored.
    pub usage: &'static [u8],
    /// RECOMMENDED COMMAND TIMEOUT in seconds (command timeouts descriptor, SPC-4 §6.35.4).
    pub timeout_secs: u32,
    /// Runs while the logical unit is becoming ready or offline (no medium needed).
    pub runs_not_ready: bool,
    /// Reports (and so clears) a pending unit attention instead of running. INQUIRY, REPORT
    /// LUNS and REQUEST SENSE do not (SAM-5 §5.14, SPC-4 §5.14).
    pub reports_unit_attention: bool,
    /// Runs while a sanitize operation runs or failed (SBC-4 §4.33), or not.
    pub during_sanitize: DuringSanitize,
    /// Under a persistent reservation held by another I_T nexus (SPC-4 §5.13.1 table 62,
    /// SBC-4 §4.17 table 13).
    pub pr: PrRule,
    /// Under an SPC-2 RESERVE held by another I_T nexus (SPC-2 §5.5.1).
    pub spc2: Spc2Access,
    /// The write data the CDB asks for.
    pub data_out: DataOut,
    /// The command's place in the ordering of its logical unit. [`ORDER`] states and (in its
    /// tests) checks which classes may overlap; the logical unit's locks, taken by
    /// [`Order::enter`] by this class, implement it.
    ///
    /// [`ORDER`]: super::ordering::ORDER
    /// [`Order::enter`]: super::ordering::Order::enter
    pub order: OrderClass,
}

impl CommandInfo {
    /// CDB length in bytes.
    pub const fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

/// CONTROL byte usage: NACA (bit 2) and LINK (bit 0) are examined (both refused, SAM-5 §5.2).
const CTL: u8 = 0x05;

/// What most rows share: a command on the medium, that reports unit attentions, conflicts
/// with any reservation it does not hold, takes no data and runs with anything. A row states
/// what differs.
const BASE: CommandInfo = CommandInfo {
    name: "",
    opcode: 0,
    service_action: None,
    handler: Handler::TestUnitReady,
    direction: DataDirection::None,
    usage: &[],
    timeout_secs: 30,
    runs_not_ready: false,
    reports_unit_attention: true,
    during_sanitize: DuringSanitize::Refused,
    pr: PrRule::Fixed(PrAccess::Write),
    spc2: Spc2Access::ConflictsForOthers,
    data_out: DataOut::None,
    order: OrderClass::Free,
};

/// Commands that describe the target or the unit rather than the medium (they run while it
/// is not ready, SPC-4 §4.3.4.2, and FreeBSD CTL marks them OK_ON_NO_MEDIA).
const NO_MEDIUM: CommandInfo = CommandInfo {
    runs_not_ready: true,
    ..BASE
};

/// INQUIRY, REPORT LUNS, REQUEST SENSE: never report a unit attention, pass every reservation,
/// run while a sanitize operation runs (SBC-4 §4.33).
const ALWAYS: CommandInfo = CommandInfo {
    runs_not_ready: true,
    reports_unit_attention: false,
    during_sanitize: DuringSanitize::Runs,
    pr: PrRule::Fixed(PrAccess::Always),
    spc2: Spc2Access::Allowed,
    ..BASE
};

/// READ(6/10/12/16).
const READ: CommandInfo = CommandInfo {
    handler: Handler::ReadWrite,
    direction: DataDirection::In,
    pr: PrRule::Fixed(READ_ACCESS.pr),
    spc2: READ_ACCESS.spc2,
    order: OrderClass::Read,
    ..BASE
};

/// WRITE(6/10/12/16).
const WRITE: CommandInfo = CommandInfo {
    handler: Handler::ReadWrite,
    direction: DataDirection::Out,
    pr: PrRule::Fixed(WRITE_ACCESS.pr),
    spc2: WRITE_ACCESS.spc2,
    data_out: DataOut::Custom(sbc::write_data_out),
    order: OrderClass::Write,
    ..BASE
};

/// VERIFY(10/12/16): reads the medium, compares with Data-Out when BYTCHK asks.
const VERIFY: CommandInfo = CommandInfo {
    handler: Handler::Verify,
    direction: DataDirection::Out,
    pr: PrRule::Fixed(PrAccess::Read),
    data_out: DataOut::Custom(verify::verify_data_out),
    order: OrderClass::Read,
    ..BASE
};

/// WRITE AND VERIFY(10/12/16).
const WRITE_AND_VERIFY: CommandInfo = CommandInfo {
    order: OrderClass::Write,
    pr: PrRule::Fixed(PrAccess::Write),
    ..VERIFY
};

/// PRE-FETCH(10/16): checks the range, reads nothing (no cache to fill).
const PRE_FETCH: CommandInfo = CommandInfo {
    handler: Handler::PreFetch,
    pr: PrRule::Fixed(PrAccess::Read),
    ..BASE
};

/// SYNCHRONIZE CACHE(10/16).
const SYNCHRONIZE_CACHE: CommandInfo = CommandInfo {
    handler: Handler::SynchronizeCache,
    timeout_secs: 60,
    ..BASE
};

/// WRITE SAME(10/16).
const WRITE_SAME: CommandInfo = CommandInfo {
    handler: Handler::WriteSame,
    direction: DataDirection::Out,
    timeout_secs: 60,
    data_out: DataOut::Custom(write_same::write_same_data_out),
    order: OrderClass::Write,
    ..BASE
};

/// READ DEFECT DATA(10/12): an empty list.
const READ_DEFECT_DATA: CommandInfo = CommandInfo {
    handler: Handler::ReadDefectData,
    direction: DataDirection::In,
    pr: PrRule::Fixed(PrAccess::Read),
    ..BASE
};

/// MODE SENSE(6/10).
const MODE_SENSE: CommandInfo = CommandInfo {
    handler: Handler::ModeSense,
    direction: DataDirection::In,
    pr: PrRule::Fixed(PrAccess::Read),
    ..NO_MEDIUM
};

/// MODE SELECT(6/10); its read-modify-write of the mode values is serialized by the unit's
/// mode lock (a state lock, like the reservation state's; no ordering against I/O).
const MODE_SELECT: CommandInfo = CommandInfo {
    handler: Handler::ModeSelect,
    direction: DataDirection::Out,
    ..NO_MEDIUM
};

/// SPC-2 RESERVE/RELEASE(6): the handlers refuse them while a persistent registration
/// exists (SPC-4 "exceptions to SPC-2 RESERVE and RELEASE").
const SPC2_RESERVATION: CommandInfo = CommandInfo {
    pr: PrRule::Fixed(PrAccess::Always),
    spc2: Spc2Access::Allowed,
    order: OrderClass::ReservationChange,
    ..NO_MEDIUM
};

/// RESERVE/RELEASE(10): PARAMETER LIST LENGTH is for third-party reservations (refused).
const SPC2_RESERVATION_10: CommandInfo = CommandInfo {
    direction: DataDirection::Out,
    data_out: DataOut::ParamLen { at: 7, width: 2 },
    ..SPC2_RESERVATION
};

/// PERSISTENT RESERVE IN: every service action reads the reservation state; an SPC-2
/// reservation makes it conflict for everyone, the holder too (SPC-4 "exceptions to SPC-2
/// RESERVE and RELEASE behavior").
const PRIN: CommandInfo = CommandInfo {
    name: "PERSISTENT RESERVE IN",
    opcode: op::PERSISTENT_RESERVE_IN,
    handler: Handler::PersistentReserveIn,
    direction: DataDirection::In,
    pr: PrRule::Fixed(PrAccess::Always),
    spc2: Spc2Access::ConflictsForAll,
    ..NO_MEDIUM
};

/// PERSISTENT RESERVE OUT: the service actions apply their own rules (SPC-4 §5.13.1); the
/// parameter list length is a 32-bit field at byte 5.
const PROUT: CommandInfo = CommandInfo {
    name: "PERSISTENT RESERVE OUT",
    opcode: op::PERSISTENT_RESERVE_OUT,
    handler: Handler::PersistentReserveOut,
    direction: DataDirection::Out,
    pr: PrRule::Fixed(PrAccess::Always),
    spc2: Spc2Access::ConflictsForAll,
    data_out: DataOut::ParamLen { at: 5, width: 4 },
    order: OrderClass::ReservationChange,
    ..NO_MEDIUM
};

/// PERSISTENT RESERVE OUT CDB usage: SCOPE, TYPE, PARAMETER LIST LENGTH (SPC-4 §6.14).
const fn prout_usage(sa: u8) -> [u8; 10] {
    [0x5F, sa, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL]
}

/// PERSISTENT RESERVE IN CDB usage: ALLOCATION LENGTH (SPC-4 §6.13).
const fn prin_usage(sa: u8) -> [u8; 10] {
    [0x5E, sa, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL]
}

/// SANITIZE (SBC-4 §5.30): IMMED, AUSE, PARAMETER LIST LENGTH. A write for reservations
/// (SBC-4 table 13). It may run in sanitize failure mode: a new operation or EXIT FAILURE MODE
/// is how the unit leaves it. Its operation holds the read-modify-write guard from start to
/// end: nothing reads or writes the medium meanwhile. Without IMMED the command lasts as long
/// as the operation, which grows with the unit's size (and `sanitize_rate`): an hour covers a
/// few hundred GiB unpaced; initiators sanitizing more set IMMED and poll REQUEST SENSE.
/// CRYPTOGRAPHIC ERASE (03h) has no row: keel keeps no media key to destroy, so it is refused
/// at the SERVICE ACTION field and not reported.
const SANITIZE: CommandInfo = CommandInfo {
    name: "SANITIZE",
    opcode: op::SANITIZE,
    handler: Handler::Sanitize,
    direction: DataDirection::Out,
    timeout_secs: 3600,
    during_sanitize: DuringSanitize::Sanitize,
    data_out: DataOut::ParamLen { at: 7, width: 2 },
    order: OrderClass::ReadModifyWrite,
    ..BASE
};

/// MAINTENANCE IN service actions describe the target, not the medium.
const MAINTENANCE_IN: CommandInfo = CommandInfo {
    opcode: op::MAINTENANCE_IN,
    direction: DataDirection::In,
    pr: PrRule::Fixed(PrAccess::Always),
    ..NO_MEDIUM
};

/// RECEIVE COPY RESULTS: reports on copies, moves nothing.
const RECEIVE_COPY_RESULTS: CommandInfo = CommandInfo {
    name: "RECEIVE COPY RESULTS",
    opcode: op::RECEIVE_COPY_RESULTS,
    handler: Handler::ReceiveCopyResults,
    direction: DataDirection::In,
    pr: PrRule::Fixed(PrAccess::Always),
    ..NO_MEDIUM
};

/// Every supported command, ascending by (opcode, service action): REPORT SUPPORTED
/// OPERATION CODES walks it, so its answer is exactly what dispatch accepts. To add a
/// command: its row here (the unit tests check the row against the CDB layout rules), its
/// handler and the [`Handler`] arm in `target.rs`, its tests.
#[rustfmt::skip]
static COMMANDS: [CommandInfo; 65] = [
    CommandInfo { name: "TEST UNIT READY", opcode: op::TEST_UNIT_READY,
        // SPC-4 §6.47
        usage: &[0x00, 0x00, 0x00, 0x00, 0x00, CTL],
        pr: PrRule::Fixed(PrAccess::Always), ..BASE },
    CommandInfo { name: "REQUEST SENSE", opcode: op::REQUEST_SENSE, handler: Handler::RequestSense,
        direction: DataDirection::In,
        // SPC-4 §6.39: DESC, ALLOCATION LENGTH
        usage: &[0x03, 0x01, 0x00, 0x00, 0xFF, CTL], ..ALWAYS },
    CommandInfo { name: "READ(6)", opcode: op::READ_6,
        // SBC-3 §5.14
        usage: &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, CTL], ..READ },
    CommandInfo { name: "WRITE(6)", opcode: op::WRITE_6,
        // SBC-3 §5.31
        usage: &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, CTL], ..WRITE },
    CommandInfo { name: "INQUIRY", opcode: op::INQUIRY, handler: Handler::Inquiry,
        direction: DataDirection::In,
        // SPC-4 §6.6: CMDDT (refused), EVPD, PAGE CODE, ALLOCATION LENGTH
        usage: &[0x12, 0x03, 0xFF, 0xFF, 0xFF, CTL], ..ALWAYS },
    CommandInfo { name: "MODE SELECT(6)", opcode: op::MODE_SELECT_6,
        // SPC-4 §6.9: PF, SP, PARAMETER LIST LENGTH
        usage: &[0x15, 0x11, 0x00, 0x00, 0xFF, CTL],
        data_out: DataOut::ParamLen { at: 4, width: 1 }, ..MODE_SELECT },
    CommandInfo { name: "RESERVE(6)", opcode: op::RESERVE_6, handler: Handler::Reserve,
        // SPC-2 §7.21
        usage: &[0x16, 0x00, 0x00, 0x00, 0x00, CTL], ..SPC2_RESERVATION },
    CommandInfo { name: "RELEASE(6)", opcode: op::RELEASE_6, handler: Handler::Release,
        // SPC-2 §7.17
        usage: &[0x17, 0x00, 0x00, 0x00, 0x00, CTL], ..SPC2_RESERVATION },
    CommandInfo { name: "MODE SENSE(6)", opcode: op::MODE_SENSE_6,
        // SPC-4 §6.11: DBD, PC, PAGE CODE, SUBPAGE CODE, ALLOCATION LENGTH
        usage: &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, CTL], ..MODE_SENSE },
    // It loads the medium, so it runs without one.
    CommandInfo { name: "START STOP UNIT", opcode: op::START_STOP_UNIT,
        handler: Handler::StartStopUnit,
        // SBC-3 §5.25: IMMED, POWER CONDITION MODIFIER, POWER CONDITION, NO_FLUSH, LOEJ, START
        usage: &[0x1B, 0x01, 0x00, 0x0F, 0xF7, CTL],
        pr: PrRule::ByCdb(reservation_access::start_stop_unit), ..NO_MEDIUM },
    CommandInfo { name: "PREVENT ALLOW MEDIUM REMOVAL", opcode: op::PREVENT_ALLOW_MEDIUM_REMOVAL,
        handler: Handler::PreventAllow,
        // SPC-4 §6.13
        usage: &[0x1E, 0x00, 0x00, 0x00, 0x03, CTL],
        pr: PrRule::ByCdb(reservation_access::prevent_allow_medium_removal), ..NO_MEDIUM },
    CommandInfo { name: "READ CAPACITY(10)", opcode: op::READ_CAPACITY_10,
        handler: Handler::ReadCapacity10, direction: DataDirection::In,
        // SBC-3 §5.15: LBA and PMI (obsolete, still checked)
        usage: &[0x25, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, CTL],
        pr: PrRule::Fixed(PrAccess::Always), ..BASE },
    CommandInfo { name: "READ(10)", opcode: op::READ_10,
        // SBC-3 §5.11: DPO, FUA
        usage: &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..READ },
    CommandInfo { name: "WRITE(10)", opcode: op::WRITE_10,
        // SBC-3 §5.32: DPO, FUA
        usage: &[0x2A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..WRITE },
    CommandInfo { name: "WRITE AND VERIFY(10)", opcode: op::WRITE_AND_VERIFY_10,
        // SBC-3 §5.36: DPO, BYTCHK
        usage: &[0x2E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..WRITE_AND_VERIFY },
    CommandInfo { name: "VERIFY(10)", opcode: op::VERIFY_10,
        // SBC-3 §5.27: DPO, BYTCHK
        usage: &[0x2F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..VERIFY },
    CommandInfo { name: "PRE-FETCH(10)", opcode: op::PRE_FETCH_10,
        // SBC-3 §5.9: IMMED
        usage: &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..PRE_FETCH },
    CommandInfo { name: "SYNCHRONIZE CACHE(10)", opcode: op::SYNCHRONIZE_CACHE_10,
        // SBC-3 §5.22: IMMED
        usage: &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..SYNCHRONIZE_CACHE },
    CommandInfo { name: "READ DEFECT DATA(10)", opcode: op::READ_DEFECT_DATA_10,
        // SBC-3 §5.12: REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT
        usage: &[0x37, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], ..READ_DEFECT_DATA },
    CommandInfo { name: "WRITE SAME(10)", opcode: op::WRITE_SAME_10,
        // SBC-3 §5.41: ANCHOR, UNMAP
        usage: &[0x41, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, CTL], ..WRITE_SAME },
    CommandInfo { name: "UNMAP", opcode: op::UNMAP, handler: Handler::Unmap,
        direction: DataDirection::Out, timeout_secs: 60,
        // SBC-3 §5.28: ANCHOR, PARAMETER LIST LENGTH
        usage: &[0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL],
        data_out: DataOut::ParamLen { at: 7, width: 2 }, order: OrderClass::Write, ..BASE },
    CommandInfo { service_action: Some(op::SA_SANITIZE_OVERWRITE),
        usage: &[0x48, 0xA1, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], ..SANITIZE },
    CommandInfo { service_action: Some(op::SA_SANITIZE_BLOCK_ERASE),
        usage: &[0x48, 0xA2, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], ..SANITIZE },
    // EXIT FAILURE MODE takes no parameter list; the handler refuses a length other than 0.
    CommandInfo { service_action: Some(op::SA_SANITIZE_EXIT_FAILURE_MODE), timeout_secs: 30,
        usage: &[0x48, 0xBF, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], ..SANITIZE },
    CommandInfo { name: "LOG SENSE", opcode: op::LOG_SENSE, handler: Handler::LogSense,
        direction: DataDirection::In,
        // SPC-4 §6.8: PPC, SP, PC, PAGE CODE, SUBPAGE, PARAMETER POINTER, ALLOCATION LENGTH
        usage: &[0x4D, 0x03, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, CTL],
        pr: PrRule::Fixed(PrAccess::Always), ..NO_MEDIUM },
    CommandInfo { name: "MODE SELECT(10)", opcode: op::MODE_SELECT_10,
        // SPC-4 §6.10: PF, SP, PARAMETER LIST LENGTH
        usage: &[0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL],
        data_out: DataOut::ParamLen { at: 7, width: 2 }, ..MODE_SELECT },
    CommandInfo { name: "RESERVE(10)", opcode: op::RESERVE_10, handler: Handler::Reserve,
        // SPC-2 §7.22
        usage: &[0x56, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, CTL], ..SPC2_RESERVATION_10 },
    CommandInfo { name: "RELEASE(10)", opcode: op::RELEASE_10, handler: Handler::Release,
        // SPC-2 §7.18
        usage: &[0x57, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, CTL], ..SPC2_RESERVATION_10 },
    CommandInfo { name: "MODE SENSE(10)", opcode: op::MODE_SENSE_10,
        // SPC-4 §6.12: LLBAA, DBD, PC, PAGE CODE, SUBPAGE, ALLOCATION LENGTH
        usage: &[0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, CTL], ..MODE_SENSE },
    // PERSISTENT RESERVE IN (SPC-4 §6.13): READ KEYS, READ RESERVATION, REPORT CAPABILITIES,
    // READ FULL STATUS. One row per service action, so REPORT SUPPORTED OPERATION CODES lists
    // each and an unknown one is refused at byte 1.
    CommandInfo { service_action: Some(0x00), usage: &prin_usage(0x00), ..PRIN },
    CommandInfo { service_action: Some(0x01), usage: &prin_usage(0x01), ..PRIN },
    CommandInfo { service_action: Some(0x02), usage: &prin_usage(0x02), ..PRIN },
    CommandInfo { service_action: Some(0x03), usage: &prin_usage(0x03), ..PRIN },
    // PERSISTENT RESERVE OUT (SPC-4 §6.14): REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT,
    // PREEMPT AND ABORT, REGISTER AND IGNORE EXISTING KEY, REGISTER AND MOVE.
    CommandInfo { service_action: Some(0x00), usage: &prout_usage(0x00), ..PROUT },
    CommandInfo { service_action: Some(0x01), usage: &prout_usage(0x01), ..PROUT },
    CommandInfo { service_action: Some(0x02), usage: &prout_usage(0x02), ..PROUT },
    CommandInfo { service_action: Some(0x03), usage: &prout_usage(0x03), ..PROUT },
    CommandInfo { service_action: Some(0x04), usage: &prout_usage(0x04), ..PROUT },
    CommandInfo { service_action: Some(0x05), usage: &prout_usage(0x05), ..PROUT },
    CommandInfo { service_action: Some(0x06), usage: &prout_usage(0x06), ..PROUT },
    CommandInfo { service_action: Some(0x07), usage: &prout_usage(0x07), ..PROUT },
    // EXTENDED COPY(LID1) (SPC-4 §6.4): PARAMETER LIST LENGTH. Copies up to 512 MiB. LID4
    // (service action 01h) is not supported. It writes its destination (PR Write); copy
    // targets other than the addressed unit are checked and ordered by the copy manager.
    CommandInfo { name: "EXTENDED COPY(LID1)", opcode: op::EXTENDED_COPY,
        service_action: Some(op::SA_EXTENDED_COPY_LID1), handler: Handler::ExtendedCopy,
        direction: DataDirection::Out, timeout_secs: 60,
        usage: &[0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        data_out: DataOut::ParamLen { at: 10, width: 4 }, ..BASE },
    // RECEIVE COPY RESULTS (SPC-4 §6.22) COPY STATUS: LIST IDENTIFIER, ALLOCATION LENGTH.
    // RECEIVE DATA (01h) and FAILED SEGMENT DETAILS (04h) are refused: no data is ever held.
    CommandInfo { service_action: Some(op::SA_COPY_STATUS),
        usage: &[0x84, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..RECEIVE_COPY_RESULTS },
    // OPERATING PARAMETERS: ALLOCATION LENGTH (no list identifier)
    CommandInfo { service_action: Some(op::SA_OPERATING_PARAMETERS),
        usage: &[0x84, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..RECEIVE_COPY_RESULTS },
    CommandInfo { name: "READ(16)", opcode: op::READ_16,
        // SBC-3 §5.13: DPO, FUA
        usage: &[0x88, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..READ },
    CommandInfo { name: "COMPARE AND WRITE", opcode: op::COMPARE_AND_WRITE,
        handler: Handler::CompareAndWrite, direction: DataDirection::Out,
        // SBC-3 §5.2: DPO, FUA, NUMBER OF LOGICAL BLOCKS
        usage: &[0x89, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0x00, 0x00, 0x00, 0xFF, 0x00, CTL],
        data_out: DataOut::Custom(compare_and_write::compare_and_write_data_out),
        order: OrderClass::ReadModifyWrite, ..BASE },
    CommandInfo { name: "WRITE(16)", opcode: op::WRITE_16,
        // SBC-3 §5.34: DPO, FUA
        usage: &[0x8A, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..WRITE },
    CommandInfo { name: "ORWRITE(16)", opcode: op::ORWRITE_16, handler: Handler::OrWrite,
        direction: DataDirection::Out,
        // SBC-3 §5.8: DPO, FUA
        usage: &[0x8B, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        data_out: DataOut::Custom(compare_and_write::orwrite_data_out),
        order: OrderClass::ReadModifyWrite, ..BASE },
    CommandInfo { name: "WRITE AND VERIFY(16)", opcode: op::WRITE_AND_VERIFY_16,
        // SBC-3 §5.38: DPO, BYTCHK
        usage: &[0x8E, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..WRITE_AND_VERIFY },
    CommandInfo { name: "VERIFY(16)", opcode: op::VERIFY_16,
        // SBC-3 §5.29: DPO, BYTCHK
        usage: &[0x8F, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..VERIFY },
    CommandInfo { name: "PRE-FETCH(16)", opcode: op::PRE_FETCH_16,
        // SBC-3 §5.10: IMMED
        usage: &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..PRE_FETCH },
    CommandInfo { name: "SYNCHRONIZE CACHE(16)", opcode: op::SYNCHRONIZE_CACHE_16,
        // SBC-3 §5.23: IMMED
        usage: &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..SYNCHRONIZE_CACHE },
    CommandInfo { name: "WRITE SAME(16)", opcode: op::WRITE_SAME_16,
        // SBC-3 §5.42: ANCHOR, UNMAP
        usage: &[0x93, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..WRITE_SAME },
    CommandInfo { name: "WRITE ATOMIC(16)", opcode: op::WRITE_ATOMIC_16,
        handler: Handler::WriteAtomic, direction: DataDirection::Out,
        // SBC-4 §5.48: DPO, FUA, ATOMIC BOUNDARY, TRANSFER LENGTH
        usage: &[0x9C, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        data_out: DataOut::Custom(atomic::write_atomic_data_out),
        order: OrderClass::Atomic, ..BASE },
    CommandInfo { name: "READ CAPACITY(16)", opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SA_READ_CAPACITY_16), handler: Handler::ReadCapacity16,
        direction: DataDirection::In,
        // SBC-3 §5.16: LBA and PMI (obsolete, still checked), ALLOCATION LENGTH
        usage: &[0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x01, CTL],
        pr: PrRule::Fixed(PrAccess::Always), ..BASE },
    CommandInfo { name: "GET LBA STATUS", opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(op::SA_GET_LBA_STATUS), handler: Handler::GetLbaStatus,
        direction: DataDirection::In,
        // SBC-3 §5.6: STARTING LBA, ALLOCATION LENGTH
        usage: &[0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        pr: PrRule::Fixed(PrAccess::Read), ..BASE },
    CommandInfo { name: "REPORT LUNS", opcode: op::REPORT_LUNS, handler: Handler::ReportLuns,
        direction: DataDirection::In,
        // SPC-4 §6.33: SELECT REPORT, ALLOCATION LENGTH
        usage: &[0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..ALWAYS },
    CommandInfo { name: "REPORT TARGET PORT GROUPS",
        service_action: Some(op::SA_REPORT_TARGET_PORT_GROUPS),
        handler: Handler::ReportTargetPortGroups,
        // SPC-4 §6.36: PARAMETER DATA FORMAT, ALLOCATION LENGTH
        usage: &[0xA3, 0xE0 | 0x0A, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        ..MAINTENANCE_IN },
    CommandInfo { name: "REPORT SUPPORTED OPERATION CODES",
        service_action: Some(op::SA_REPORT_SUPPORTED_OPCODES),
        handler: Handler::ReportSupportedOpcodes,
        // SPC-4 §6.35: RCTD, REPORTING OPTIONS, REQUESTED OPERATION CODE, REQUESTED SERVICE
        // ACTION, ALLOCATION LENGTH
        usage: &[0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        ..MAINTENANCE_IN },
    CommandInfo { name: "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        service_action: Some(op::SA_REPORT_SUPPORTED_TMFS),
        handler: Handler::ReportSupportedTmfs,
        // SPC-4 §6.37: REPD, ALLOCATION LENGTH
        usage: &[0xA3, 0x0D, 0x80, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        ..MAINTENANCE_IN },
    CommandInfo { name: "READ(12)", opcode: op::READ_12,
        // SBC-3 §5.12: DPO, FUA
        usage: &[0xA8, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..READ },
    CommandInfo { name: "WRITE(12)", opcode: op::WRITE_12,
        // SBC-3 §5.33: DPO, FUA
        usage: &[0xAA, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..WRITE },
    CommandInfo { name: "WRITE AND VERIFY(12)", opcode: op::WRITE_AND_VERIFY_12,
        // SBC-3 §5.37: DPO, BYTCHK
        usage: &[0xAE, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        ..WRITE_AND_VERIFY },
    CommandInfo { name: "VERIFY(12)", opcode: op::VERIFY_12,
        // SBC-3 §5.28: DPO, BYTCHK
        usage: &[0xAF, 0x16, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL], ..VERIFY },
    CommandInfo { name: "READ DEFECT DATA(12)", opcode: op::READ_DEFECT_DATA_12,
        // SBC-3 §5.13: REQ_PLIST, REQ_GLIST, DEFECT LIST FORMAT, ADDRESS DESCRIPTOR INDEX,
        // ALLOCATION LENGTH
        usage: &[0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, CTL],
        ..READ_DEFECT_DATA },
];

/// Where an opcode's rows start in [`COMMANDS`] and how many there are (0: unsupported).
#[derive(Clone, Copy)]
struct Span {
    first: u8,
    count: u8,
}

static INDEX: [Span; 256] = build_index();

/// Indexes [`COMMANDS`] by opcode; refuses (at compile time) a table out of order.
const fn build_index() -> [Span; 256] {
    let mut index = [Span { first: 0, count: 0 }; 256];
    let mut i = 0;
    while i < COMMANDS.len() {
        let row = &COMMANDS[i];
        if i > 0 {
            let prev = &COMMANDS[i - 1];
            let ordered = prev.opcode < row.opcode
                || (prev.opcode == row.opcode
                    && match (prev.service_action, row.service_action) {
                        (Some(a), Some(b)) => a < b,
                        _ => false,
                    });
            assert!(ordered, "COMMANDS must ascend by (opcode, service action)");
        }
        // The index keeps row numbers in a byte.
        assert!(
            COMMANDS.len() <= 256,
            "the command index holds at most 256 rows"
        );
        let span = &mut index[row.opcode as usize];
        if span.count == 0 {
            span.first = i as u8;
        }
        span.count += 1;
        i += 1;
    }
    index
}

fn rows_of(opcode: u8) -> &'static [CommandInfo] {
    let span = INDEX[usize::from(opcode)];
    let first = usize::from(span.first);
    &COMMANDS[first..first + usize::from(span.count)]
}

/// Every supported command, ascending by opcode, then service action.
pub fn supported_commands() -> &'static [CommandInfo] {
    &COMMANDS
}

/// Whether `opcode` selects its command by a service action field.
pub fn has_service_actions(opcode: u8) -> bool {
    rows_of(opcode)
        .first()
        .is_some_and(|row| row.service_action.is_some())
}

/// Finds the command for a CDB. Errors: INVALID COMMAND OPERATION CODE for an unknown (or
/// missing) opcode; INVALID FIELD IN CDB pointing at the SERVICE ACTION field for an unknown
/// service action of a known opcode (SPC-4 §4.3.4.2).
pub fn lookup(cdb: &[u8]) -> Result<&'static CommandInfo, Sense> {
    let opcode = *cdb.first().ok_or_else(Sense::invalid_opcode)?;
    let rows = rows_of(opcode);
    match rows.first() {
        None => Err(Sense::invalid_opcode()),
        Some(row) if row.service_action.is_none() => Ok(row),
        Some(_) => {
            let service_action = cdb.get(1).map_or(0, |b| b & 0x1F);
            rows.iter()
                .find(|row| row.service_action == Some(service_action))
                .ok_or_else(|| Sense::invalid_field_in_cdb(1, Some(4)))
        }
    }
}

/// Write data a CDB asks for, in bytes, for the transport's write residuals: its row's rule.
/// An unknown service action of a known opcode still asks for what the opcode's parameter
/// list length says (every service action of one opcode shares its rule); an unknown opcode
/// asks for nothing.
pub fn data_out_needed(cdb: &[u8], block_size: u32) -> u32 {
    let Some(&opcode) = cdb.first() else {
        return 0;
    };
    let row = lookup(cdb).ok().or_else(|| rows_of(opcode).first());
    row.map_or(0, |row| row.data_out.bytes(cdb, block_size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::cdb_length;

    /// The copy manager takes READ_ACCESS and WRITE_ACCESS for its copy targets: they must be
    /// what READ and WRITE rows actually do, whatever CDB.
    #[test]
    fn read_and_write_rows_use_the_copy_managers_access() {
        for row in supported_commands() {
            let expected = match row.opcode {
                op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => READ_ACCESS,
                op::WRITE_6 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => WRITE_ACCESS,
                _ => continue,
            };
            assert!(
                matches!(row.pr, PrRule::Fixed(pr) if pr == expected.pr),
                "{}",
                row.name
            );
            assert_eq!(row.spc2, expected.spc2, "{}", row.name);
        }
    }

    #[test]
    fn every_row_is_well_formed() {
        for row in supported_commands() {
            let name = row.name;
            assert!(
                !name.is_empty(),
                "a row for {:#04x} without a name",
                row.opcode
            );
            // The usage bitmap is the CDB: its length is the group code's, byte 0 the
            // opcode, the service action in its field, the CONTROL byte last.
            assert_eq!(Some(row.cdb_len()), cdb_length(row.opcode), "{name}");
            assert_eq!(row.usage[0], row.opcode, "{name}");
            assert_eq!(row.usage.last(), Some(&CTL), "{name}");
            if let Some(sa) = row.service_action {
                assert_eq!(row.usage[1] & 0x1F, sa, "{name}");
            }
            assert!(row.timeout_secs > 0, "{name}");
            // The defaults' handler is TEST UNIT READY's: a row that forgot its own would run
            // that.
            assert_eq!(
                row.handler == Handler::TestUnitReady,
                row.opcode == op::TEST_UNIT_READY,
                "{name}"
            );
            // Every command with Data-Out says how much it takes, and only those.
            assert_eq!(
                row.direction == DataDirection::Out,
                !matches!(row.data_out, DataOut::None),
                "{name}"
            );
            // Commands that run without a medium never take a medium guard.
            if row.runs_not_ready {
                assert!(
                    matches!(row.order, OrderClass::Free | OrderClass::ReservationChange),
                    "{name}"
                );
            }
            assert_ne!(row.order, OrderClass::SentRead, "{name}: not a row's class");
        }
    }

    #[test]
    fn service_action_rows_agree_with_their_opcode() {
        for opcode in 0..=u8::MAX {
            let rows = rows_of(opcode);
            let with_sa = rows.iter().filter(|r| r.service_action.is_some()).count();
            assert!(with_sa == 0 || with_sa == rows.len(), "{opcode:#04x}");
            assert!(rows.len() <= 1 || with_sa > 0, "{opcode:#04x} has two rows");
            assert_eq!(has_service_actions(opcode), with_sa > 0);
            // An unknown service action falls back to the first row's Data-Out rule.
            for row in rows.iter().filter(|row| row.service_action.is_some()) {
                match (rows[0].data_out, row.data_out) {
                    (DataOut::None, DataOut::None) => {}
                    (
                        DataOut::ParamLen { at, width },
                        DataOut::ParamLen {
                            at: at2,
                            width: width2,
                        },
                    ) => assert_eq!((at, width), (at2, width2), "{}", row.name),
                    _ => panic!(
                        "{}: service actions of one opcode differ in Data-Out",
                        row.name
                    ),
                }
            }
        }
    }

    #[test]
    fn lookup_by_opcode_and_service_action() {
        assert_eq!(lookup(&[op::INQUIRY]).unwrap().handler, Handler::Inquiry);
        assert!(!lookup(&[op::INQUIRY]).unwrap().reports_unit_attention);
        assert!(lookup(&[op::READ_10]).unwrap().reports_unit_attention);
        assert!(!lookup(&[op::READ_10]).unwrap().runs_not_ready);
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

    #[test]
    fn data_out_by_row() {
        let bs = 512;
        // MODE SELECT: PARAMETER LIST LENGTH, one byte (6) or two (10).
        assert_eq!(
            data_out_needed(&[op::MODE_SELECT_6, 0x10, 0, 0, 24, 0], bs),
            24
        );
        let ms10 = [op::MODE_SELECT_10, 0x10, 0, 0, 0, 0, 0, 1, 2, 0];
        assert_eq!(data_out_needed(&ms10, bs), 258);
        assert_eq!(data_out_needed(&[op::READ_10], bs), 0);
        // PERSISTENT RESERVE OUT: four bytes at 5, for a service action keel does not know
        // too.
        let prout = [0x5F, 0, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(data_out_needed(&prout, bs), 256);
        let unknown_sa = [0x5F, 0x1F, 0, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(data_out_needed(&unknown_sa, bs), 24);
        // EXTENDED COPY LID4 (not supported) still asks for its parameter list.
        let mut xcopy = [0u8; 16];
        xcopy[0] = op::EXTENDED_COPY;
        xcopy[1] = 0x01;
        xcopy[13] = 32;
        assert_eq!(data_out_needed(&xcopy, bs), 32);
        // RESERVE(10), UNMAP: two bytes at 7.
        assert_eq!(data_out_needed(&[0x56, 0, 0, 0, 0, 0, 0, 0, 8, 0], bs), 8);
        assert_eq!(data_out_needed(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], bs), 24);
        // WRITE: blocks × block size; with WRPROTECT set its decoder refuses it: none.
        assert_eq!(
            data_out_needed(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 4, 0], bs),
            2048
        );
        assert_eq!(
            data_out_needed(&[0x2A, 0x20, 0, 0, 0, 0, 0, 0, 4, 0], bs),
            0
        );
        // Unknown opcodes and empty CDBs take nothing.
        assert_eq!(data_out_needed(&[0xC0, 0, 0, 0, 0, 0], bs), 0);
        assert_eq!(data_out_needed(&[], bs), 0);
    }

    /// Commands that need the medium yet take no ordering guard, each for its reason. A new
    /// medium command whose row forgets its class lands here as a test failure, not as a
    /// command that silently overlaps COMPARE AND WRITE or WRITE ATOMIC.
    const UNORDERED_MEDIUM_COMMANDS: [(u8, Option<u8>, &str); 11] = [
        (op::TEST_UNIT_READY, None, "reads no data"),
        (op::READ_CAPACITY_10, None, "reads the size, not the data"),
        (
            op::PRE_FETCH_10,
            None,
            "checks the range; there is no cache to fill",
        ),
        (
            op::SYNCHRONIZE_CACHE_10,
            None,
            "a flush; the backend orders it with writes",
        ),
        (op::READ_DEFECT_DATA_10, None, "an empty list"),
        (
            op::EXTENDED_COPY,
            Some(0),
            "orders each copy target as READ and WRITE do",
        ),
        (op::PRE_FETCH_16, None, "as PRE-FETCH(10)"),
        (op::SYNCHRONIZE_CACHE_16, None, "as SYNCHRONIZE CACHE(10)"),
        (
            op::SERVICE_ACTION_IN_16,
            Some(op::SA_READ_CAPACITY_16),
            "as READ CAPACITY(10)",
        ),
        (
            op::SERVICE_ACTION_IN_16,
            Some(op::SA_GET_LBA_STATUS),
            "reads allocation, not data",
        ),
        (op::READ_DEFECT_DATA_12, None, "as READ DEFECT DATA(10)"),
    ];

    #[test]
    fn medium_commands_are_ordered_unless_listed() {
        for row in supported_commands() {
            let listed = UNORDERED_MEDIUM_COMMANDS
                .iter()
                .any(|(opcode, sa, _)| *opcode == row.opcode && *sa == row.service_action);
            let unordered_on_medium = !row.runs_not_ready && row.order == OrderClass::Free;
            assert_eq!(unordered_on_medium, listed, "{}", row.name);
        }
    }

    #[test]
    fn ordering_classes_of_the_medium_commands() {
        let class = |cdb: &[u8]| lookup(cdb).unwrap().order;
        assert_eq!(class(&[op::READ_10]), OrderClass::Read);
        assert_eq!(class(&[op::VERIFY_16]), OrderClass::Read);
        assert_eq!(class(&[op::WRITE_6]), OrderClass::Write);
        assert_eq!(class(&[op::WRITE_AND_VERIFY_12]), OrderClass::Write);
        assert_eq!(class(&[op::WRITE_SAME_16]), OrderClass::Write);
        assert_eq!(class(&[op::UNMAP]), OrderClass::Write);
        assert_eq!(class(&[op::COMPARE_AND_WRITE]), OrderClass::ReadModifyWrite);
        assert_eq!(class(&[op::ORWRITE_16]), OrderClass::ReadModifyWrite);
        assert_eq!(class(&[op::WRITE_ATOMIC_16]), OrderClass::Atomic);
        assert_eq!(
            class(&[op::PERSISTENT_RESERVE_OUT, 0]),
            OrderClass::ReservationChange
        );
        assert_eq!(class(&[op::RESERVE_6]), OrderClass::ReservationChange);
        assert_eq!(class(&[op::RELEASE_10]), OrderClass::ReservationChange);
        assert_eq!(class(&[op::INQUIRY]), OrderClass::Free);
    }
}
