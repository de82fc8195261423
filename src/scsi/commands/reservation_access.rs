//! Which commands a reservation lets through: SPC-4 §5.13.1 table 62 ("SPC commands that are
//! allowed in the presence of various reservations") and SBC-3 §4.17 table 13 (the SBC
//! commands), plus SPC-2 §5.5.1 for RESERVE(6)/RESERVE(10) reservations.
//!
//! Each command's row in the command table (`table.rs`) names its [`PrAccess`] and
//! [`Spc2Access`]; the two that depend on CDB bits are decided by the functions here. This
//! file applies them to the unit's reservation state.

use crate::scsi::Nexus;
use crate::scsi::unit::pr_state::PrState;
use crate::scsi::unit::reservations::Reservations;

/// Whether a command from `nexus` with these accesses (its row's, for its CDB) meets
/// RESERVATION CONFLICT under the unit's reservations (SPC-2 §5.5.1, SPC-4 §5.13.1). The copy
/// manager asks it for its copy targets too, reading as READ does and writing as WRITE does.
pub fn conflicts(
    reservations: &Reservations,
    nexus: &Nexus,
    pr: PrAccess,
    spc2: Spc2Access,
) -> bool {
    let state = reservations.lock();
    if let Some(holder) = &state.spc2_holder
        && spc2_conflicts(holder, nexus, spc2)
    {
        return true;
    }
    pr_conflicts(&state.pr, nexus, pr)
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

/// START STOP UNIT (SBC-4 table 13): START=1 with POWER CONDITION 0h only starts the unit;
/// stopping, unloading the medium or a power condition change conflicts.
pub fn start_stop_unit(cdb: &[u8]) -> PrAccess {
    match cdb.get(4).copied().unwrap_or(0) & 0xF1 {
        0x01 => PrAccess::Always,
        _ => PrAccess::Write,
    }
}

/// PREVENT ALLOW MEDIUM REMOVAL (SPC-4 table 62): allowing removal is harmless; a
/// prevention conflicts.
pub fn prevent_allow_medium_removal(cdb: &[u8]) -> PrAccess {
    match cdb.get(4).copied().unwrap_or(0) & 0x03 {
        0 => PrAccess::Always,
        _ => PrAccess::Write,
    }
}

/// Whether `nexus` gets RESERVATION CONFLICT for a command of `access` under the persistent
/// reservation in `state` (SPC-4 §5.13.1 table 62 columns).
pub fn pr_conflicts(state: &PrState, nexus: &Nexus, access: PrAccess) -> bool {
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
    match access {
        PrAccess::Always => false,
        PrAccess::Read => !pr_type.reads_allowed(),
        PrAccess::Write => true,
    }
}

/// How a command fares under an SPC-2 RESERVE held by another I_T nexus (SPC-2 §5.5.1).
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

/// Whether `nexus` gets RESERVATION CONFLICT for a command of `access` while `holder` holds
/// an SPC-2 reservation.
pub fn spc2_conflicts(holder: &Nexus, nexus: &Nexus, access: Spc2Access) -> bool {
    match access {
        Spc2Access::Allowed => false,
        Spc2Access::ConflictsForAll => true,
        Spc2Access::ConflictsForOthers => holder != nexus,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::scsi::table::lookup;
    use crate::scsi::unit::pr_state::{NexusId, PrType, Registration, Reservation};

    /// The persistent reservation access of a CDB, by its row.
    fn pr_access(cdb: &[u8]) -> PrAccess {
        lookup(cdb).expect("a supported command").pr.access(cdb)
    }

    /// Whether `nexus` meets a conflict for `cdb` under `state`, as dispatch asks.
    fn pr_conflicts_for(state: &PrState, nexus: &Nexus, cdb: &[u8]) -> bool {
        pr_conflicts(state, nexus, pr_access(cdb))
    }

    /// Whether `nexus` meets a conflict for `cdb` while `holder` holds an SPC-2 reservation.
    fn spc2_conflicts_for(holder: &Nexus, nexus: &Nexus, cdb: &[u8]) -> bool {
        spc2_conflicts(
            holder,
            nexus,
            lookup(cdb).expect("a supported command").spc2,
        )
    }

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
            let allowed = |n: &Nexus, cdb: &[u8]| !pr_conflicts_for(&state, n, cdb);
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
        assert!(!pr_conflicts_for(&state, &nexus("a"), &WRITE10));
        // An opcode the table does not know never reaches the check: it is refused first.
        assert!(lookup(&[0xC0]).is_err());
        assert_eq!(pr_access(&[0x9E, 0x10]), PrAccess::Always);
        assert_eq!(pr_access(&[0x9E, 0x12]), PrAccess::Read);
        assert!(lookup(&[]).is_err());
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
        assert!(!spc2_conflicts_for(&holder, &holder, &WRITE10));
        assert!(spc2_conflicts_for(&holder, &other, &WRITE10));
        assert!(spc2_conflicts_for(
            &holder,
            &other,
            &[0x1A, 0, 0x3F, 0, 255, 0]
        ));
        assert!(!spc2_conflicts_for(
            &holder,
            &other,
            &[0x12, 0, 0, 0, 36, 0]
        ));
        assert!(!spc2_conflicts_for(&holder, &other, &[0x17, 0, 0, 0, 0, 0]));
        assert!(spc2_conflicts_for(
            &holder,
            &holder,
            &[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0]
        ));
    }
}
