//! Which commands a reservation lets through: SPC-4 §5.13.1 table 62 ("SPC commands that are
//! allowed in the presence of various reservations") and SBC-3 §4.17 table 13 (the SBC
//! commands), plus SPC-2 §5.5.1 for RESERVE(6)/RESERVE(10) reservations.
//!
//! The table is keyed by opcode (and service action where it matters) and kept here, apart
//! from the command table, so adding a command elsewhere never needs a change here: an opcode
//! this table does not know is treated as one that changes the medium, the safe answer.

use crate::scsi::Nexus;
use crate::scsi::opcodes::op;
use crate::scsi::unit::reservations::{PrState, Reservations};

/// Whether `cdb` from `nexus` meets RESERVATION CONFLICT under the unit's reservations
/// (SPC-2 §5.5.1, SPC-4 §5.13.1).
pub fn conflicts(reservations: &Reservations, nexus: &Nexus, cdb: &[u8]) -> bool {
    let state = reservations.lock();
    if let Some(holder) = &state.spc2_holder
        && spc2_conflicts(holder, nexus, cdb)
    {
        return true;
    }
    pr_conflicts(&state.pr, nexus, cdb)
}

/// How a command fares under a persistent reservation held by someone else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrAccess {
    /// Allowed whatever the reservation (INQUIRY, TEST UNIT READY, PERSISTENT RESERVE
    /// IN/OUT, whose service actions apply their own rules, ...).
    Always,
    /// Reads the medium or the unit's settings: allowed through the Write Exclusive types,
    /// conflicts with the Exclusive Access types.
    Read,
    /// Changes the medium or the unit: allowed only to holders (and registrants of the
    /// registrants-only and all-registrants types).
    Write,
}

/// SPC-4 table 62 / SBC-3 table 13, by opcode.
pub fn pr_access(cdb: &[u8]) -> PrAccess {
    let opcode = cdb.first().copied().unwrap_or(0);
    let service_action = cdb.get(1).map_or(0, |b| b & 0x1F);
    match opcode {
        op::TEST_UNIT_READY
        | op::REQUEST_SENSE
        | op::INQUIRY
        | op::READ_CAPACITY_10
        | op::LOG_SENSE
        | op::PERSISTENT_RESERVE_IN
        | op::PERSISTENT_RESERVE_OUT
        | op::REPORT_LUNS
        // REPORT TARGET PORT GROUPS, SUPPORTED OPCODES, ...
        | op::MAINTENANCE_IN
        // Third-party copy: reports, moves nothing.
        | op::RECEIVE_COPY_RESULTS
        // RESERVE/RELEASE: SPC-4 "exceptions to SPC-2 RESERVE and RELEASE" refuse them in
        // their own handlers while any registration exists.
        | op::RESERVE_6
        | op::RELEASE_6
        | op::RESERVE_10
        | op::RELEASE_10 => PrAccess::Always,
        // SBC-4 table 13: START=1 with POWER CONDITION 0h only starts the unit; stopping,
        // unloading the medium or a power condition change conflicts.
        op::START_STOP_UNIT => match cdb.get(4).copied().unwrap_or(0) & 0xF1 {
            0x01 => PrAccess::Always,
            _ => PrAccess::Write,
        },
        // SPC-4 table 62: PREVENT ALLOW MEDIUM REMOVAL allowing removal is harmless; a
        // prevention conflicts.
        op::PREVENT_ALLOW_MEDIUM_REMOVAL => match cdb.get(4).copied().unwrap_or(0) & 0x03 {
            0 => PrAccess::Always,
            _ => PrAccess::Write,
        },
        op::SERVICE_ACTION_IN_16 => match service_action {
            op::SA_READ_CAPACITY_16 => PrAccess::Always,
            _ => PrAccess::Read, // GET LBA STATUS and other reads
        },
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16
        | op::MODE_SENSE_6 | op::MODE_SENSE_10
        | op::VERIFY_10 | op::VERIFY_12 | op::VERIFY_16
        | op::PRE_FETCH_10 | op::PRE_FETCH_16
        | op::READ_DEFECT_DATA_10 | op::READ_DEFECT_DATA_12
        | READ_BUFFER
        | RECEIVE_DIAGNOSTIC_RESULTS
        => PrAccess::Read,
        // EXTENDED COPY falls through to Write: it writes its destination. Its copy targets
        // other than the addressed unit are checked by the copy manager.
        _ => PrAccess::Write,
    }
}

/// Reads keel does not implement, named here because table 62 lets them through the Write
/// Exclusive types (they would be refused as unsupported after the reservation check).
const READ_BUFFER: u8 = 0x3C;
const RECEIVE_DIAGNOSTIC_RESULTS: u8 = 0x1C;

/// Whether `nexus` gets RESERVATION CONFLICT for `cdb` under the persistent reservation in
/// `state` (SPC-4 §5.13.1 table 62 columns).
pub fn pr_conflicts(state: &PrState, nexus: &Nexus, cdb: &[u8]) -> bool {
    let Some(reservation) = &state.reservation else {
        return false;
    };
    if state.is_holder(nexus) {
        return false;
    }
    let pr_type = reservation.pr_type;
    if pr_type.registrants_have_access() && state.is_registered(nexus) {
        return false;
    }
    match pr_access(cdb) {
        PrAccess::Always => false,
        PrAccess::Read => !pr_type.reads_allowed(),
        PrAccess::Write => true,
    }
}

/// How a command fares under an SPC-2 RESERVE held by another I_T nexus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spc2Access {
    /// INQUIRY, REQUEST SENSE, REPORT LUNS, and RESERVE/RELEASE (whose handlers decide).
    Allowed,
    /// Everything else from a non-holder.
    ConflictsForOthers,
    /// PERSISTENT RESERVE IN/OUT: conflict for every nexus, the holder too (SPC-4
    /// "exceptions to SPC-2 RESERVE and RELEASE behavior", as SPC-3 §5.6.3 put it).
    ConflictsForAll,
}

/// SPC-2 §5.5.1: what a logical unit reservation lets through.
pub fn spc2_access(cdb: &[u8]) -> Spc2Access {
    match cdb.first().copied().unwrap_or(0) {
        op::INQUIRY
        | op::REQUEST_SENSE
        | op::REPORT_LUNS
        | op::RESERVE_6
        | op::RELEASE_6
        | op::RESERVE_10
        | op::RELEASE_10 => Spc2Access::Allowed,
        op::PERSISTENT_RESERVE_IN | op::PERSISTENT_RESERVE_OUT => Spc2Access::ConflictsForAll,
        _ => Spc2Access::ConflictsForOthers,
    }
}

/// Whether `nexus` gets RESERVATION CONFLICT for `cdb` while `holder` holds an SPC-2
/// reservation.
pub fn spc2_conflicts(holder: &Nexus, nexus: &Nexus, cdb: &[u8]) -> bool {
    match spc2_access(cdb) {
        Spc2Access::Allowed => false,
        Spc2Access::ConflictsForAll => true,
        Spc2Access::ConflictsForOthers => holder != nexus,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::scsi::unit::reservations::{NexusId, PrType, Registration, Reservation};

    fn nexus(name: &str) -> Nexus {
        Nexus::for_test(name)
    }

    fn registration(n: &Nexus, key: u64) -> Registration {
        Registration {
            key,
            initiator: n.initiator_port.to_string(),
            target_port: n.target_port.to_string(),
            relative_port: 1,
            all_target_ports: false,
        }
    }

    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
    const TUR: [u8; 6] = [0; 6];

    /// (type, registered non-holder: read, write; unregistered: read, write) — SPC-4 table 62
    /// and what libiscsi's ProutReserve.Access* tests expect.
    const MATRIX: [(PrType, bool, bool, bool, bool); 6] = [
        (PrType::WriteExclusive, true, false, true, false),
        (PrType::ExclusiveAccess, false, false, false, false),
        (
            PrType::WriteExclusiveRegistrantsOnly,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessRegistrantsOnly,
            true,
            true,
            false,
            false,
        ),
        (
            PrType::WriteExclusiveAllRegistrants,
            true,
            true,
            true,
            false,
        ),
        (
            PrType::ExclusiveAccessAllRegistrants,
            true,
            true,
            false,
            false,
        ),
    ];

    #[test]
    fn conflict_matrix_per_type() {
        let (holder, other, stranger) = (nexus("a"), nexus("b"), nexus("c"));
        for (pr_type, reg_read, reg_write, unreg_read, unreg_write) in MATRIX {
            let state = PrState {
                registrations: vec![registration(&holder, 1), registration(&other, 2)],
                reservation: Some(Reservation {
                    pr_type,
                    holder: (!pr_type.all_registrants()).then(|| NexusId::of(&holder)),
                }),
                ..PrState::default()
            };
            let allowed = |n: &Nexus, cdb: &[u8]| !pr_conflicts(&state, n, cdb);
            assert!(allowed(&holder, &READ10) && allowed(&holder, &WRITE10));
            assert_eq!(allowed(&other, &READ10), reg_read, "{pr_type:?}");
            assert_eq!(allowed(&other, &WRITE10), reg_write, "{pr_type:?}");
            assert_eq!(allowed(&stranger, &READ10), unreg_read, "{pr_type:?}");
            assert_eq!(allowed(&stranger, &WRITE10), unreg_write, "{pr_type:?}");
            assert!(allowed(&stranger, &TUR));
            assert!(allowed(&stranger, &[0x12, 0, 0, 0, 36, 0]));
            assert!(allowed(&stranger, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
        }
    }

    #[test]
    fn no_reservation_no_conflict_and_unknown_opcodes_write() {
        let state = PrState::default();
        assert!(!pr_conflicts(&state, &nexus("a"), &WRITE10));
        assert_eq!(pr_access(&[0xC0]), PrAccess::Write);
        assert_eq!(pr_access(&[0x9E, 0x10]), PrAccess::Always);
        assert_eq!(pr_access(&[0x9E, 0x12]), PrAccess::Read);
        assert_eq!(pr_access(&[]), PrAccess::Always);
        assert_eq!(pr_access(&[0x83, 0x00]), PrAccess::Write);
        assert_eq!(pr_access(&[0x84, 0x00]), PrAccess::Always);
        assert_eq!(pr_access(&[0x84, 0x03]), PrAccess::Always);
        // START STOP UNIT: only START=1 with power condition 0h (LOEJ or not) passes.
        assert_eq!(pr_access(&[0x1B, 0, 0, 0, 0x01, 0]), PrAccess::Always);
        assert_eq!(pr_access(&[0x1B, 0, 0, 0, 0x03, 0]), PrAccess::Always);
        assert_eq!(pr_access(&[0x1B, 0, 0, 0, 0x00, 0]), PrAccess::Write);
        assert_eq!(pr_access(&[0x1B, 0, 0, 0, 0x02, 0]), PrAccess::Write);
        assert_eq!(pr_access(&[0x1B, 0, 0, 0, 0x11, 0]), PrAccess::Write);
        assert_eq!(pr_access(&[0x1E, 0, 0, 0, 0, 0]), PrAccess::Always);
        assert_eq!(pr_access(&[0x1E, 0, 0, 0, 1, 0]), PrAccess::Write);
    }

    #[test]
    fn spc2_reservation_lets_through_only_the_listed_commands() {
        let (holder, other) = (nexus("a"), nexus("b"));
        assert!(!spc2_conflicts(&holder, &holder, &WRITE10));
        assert!(spc2_conflicts(&holder, &other, &WRITE10));
        assert!(spc2_conflicts(&holder, &other, &[0x1A, 0, 0x3F, 0, 255, 0]));
        assert!(!spc2_conflicts(&holder, &other, &[0x12, 0, 0, 0, 36, 0]));
        assert!(!spc2_conflicts(&holder, &other, &[0x17, 0, 0, 0, 0, 0]));
        assert!(spc2_conflicts(
            &holder,
            &holder,
            &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0]
        ));
    }
}
