//! START STOP UNIT and PREVENT ALLOW MEDIUM REMOVAL: the commands that move and guard a
//! removable medium (SBC-4 §5.25, §5.15). The state they act on (medium loaded or not, which
//! I_T nexuses prevent its removal) belongs to the [`LogicalUnit`]; this module decodes the
//! CDBs and applies the rules about which bits count.

use crate::scsi::Nexus;
use crate::scsi::cdb::{byte_at, require_len};
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::{LogicalUnit, MediumMove};

/// A decoded START STOP UNIT CDB (SBC-4 §5.25, table "START STOP UNIT command").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartStopCdb {
    /// Byte 1 bit 0: status may be returned before the operation completes.
    pub immed: bool,
    /// Byte 4 bits 7-4.
    pub power_condition: u8,
    /// Byte 4 bit 2: do not write cached data to the medium before stopping.
    pub no_flush: bool,
    /// Byte 4 bit 1: load (START=1) or unload (START=0) the medium.
    pub loej: bool,
    /// Byte 4 bit 0.
    pub start: bool,
}

pub fn decode_start_stop_unit(cdb: &[u8]) -> Result<StartStopCdb, Sense> {
    require_len(cdb, 6)?;
    let how = byte_at(cdb, 4);
    Ok(StartStopCdb {
        immed: byte_at(cdb, 1) & 0x01 != 0,
        power_condition: how >> 4,
        no_flush: how & 0x04 != 0,
        loej: how & 0x02 != 0,
        start: how & 0x01 != 0,
    })
}

/// The PREVENT field of PREVENT ALLOW MEDIUM REMOVAL (byte 4 bits 1-0, SBC-4 §5.15): whether
/// the command prevents (01b) or allows (00b) removal. 10b and 11b (SPC-2's persistent
/// prevention for medium changers) are obsolete and refused at byte 4 bit 1.
pub fn decode_prevent_allow(cdb: &[u8]) -> Result<bool, Sense> {
    require_len(cdb, 6)?;
    match byte_at(cdb, 4) & 0x03 {
        0b00 => Ok(false),
        0b01 => Ok(true),
        _ => Err(Sense::invalid_field_in_cdb(4, Some(1))),
    }
}

/// START STOP UNIT from `nexus`.
///
/// A non-removable unit accepts and ignores it, as keel always has: there is nothing to load
/// and no spindle to stop. For a removable unit:
/// - a POWER CONDITION other than 0h makes the device server ignore START and LOEJ (SBC-4
///   §5.25); keel has no power conditions to enter (its medium is always active), so the
///   command then succeeds doing nothing;
/// - START=0 with NO_FLUSH=0 writes cached data to the medium first (a failed flush fails the
///   command, and an unload does not happen: the data would be lost with the medium);
/// - LOEJ=1 loads (START=1) or unloads (START=0) the medium, see
///   [`LogicalUnit::move_medium`] for the rules;
/// - START alone changes nothing: keel does not model the stopped power condition, so a
///   stopped unit keeps answering TEST UNIT READY (as libiscsi's StartStopUnit.NoLoej, and
///   initiators that stop units at shutdown, expect).
///
/// IMMED is honoured by completing once the operation is done, which is at once apart from
/// the flush (the same choice as SYNCHRONIZE CACHE).
pub async fn start_stop_unit(lu: &LogicalUnit, nexus: &Nexus, cdb: &[u8]) -> Result<(), Sense> {
    let ssu = decode_start_stop_unit(cdb)?;
    if !lu.is_removable() || ssu.power_condition != 0 {
        return Ok(());
    }
    if !ssu.start
        && !ssu.no_flush
        && let Ok(backend) = lu.medium()
    {
        backend.flush().await.map_err(|error| {
            tracing::warn!(backend = %backend.describe(), %error, "flush before stop failed");
            Sense::medium_error_write()
        })?;
    }
    if ssu.loej {
        let to = if ssu.start {
            MediumMove::Load
        } else {
            MediumMove::Unload
        };
        lu.move_medium(to, nexus)?;
        tracing::info!(lun = lu.lun(), initiator = %nexus.initiator_port, ?to, "removable medium moved");
    }
    Ok(())
}

/// PREVENT ALLOW MEDIUM REMOVAL from `nexus` (SBC-4 §5.15). Works whether or not a medium is
/// loaded. A non-removable unit keeps no prevention state.
pub fn prevent_allow(lu: &LogicalUnit, nexus: &Nexus, cdb: &[u8]) -> Result<(), Sense> {
    let prevent = decode_prevent_allow(cdb)?;
    lu.prevent_medium_removal(nexus, prevent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::unit::lu::{LuIdentity, Readiness};
    use crate::storage::MemoryBackend;

    fn nexus(name: &str) -> Nexus {
        Nexus::for_test(name)
    }

    fn removable() -> LogicalUnit {
        LogicalUnit::new(
            LuIdentity::derived("iqn.t", 0),
            512,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            false,
        )
        .with_removable_medium(true)
    }

    fn ssu(immed: bool, pc: u8, no_flush: bool, loej: bool, start: bool) -> [u8; 6] {
        let how = (pc << 4) | (u8::from(no_flush) << 2) | (u8::from(loej) << 1) | u8::from(start);
        [0x1B, u8::from(immed), 0, 0, how, 0]
    }

    #[test]
    fn start_stop_fields() {
        assert_eq!(
            decode_start_stop_unit(&ssu(true, 0xA, true, true, false)).unwrap(),
            StartStopCdb {
                immed: true,
                power_condition: 0xA,
                no_flush: true,
                loej: true,
                start: false
            }
        );
        assert!(decode_start_stop_unit(&[0x1B, 0, 0]).is_err());
    }

    #[test]
    fn prevent_field() {
        assert_eq!(decode_prevent_allow(&[0x1E, 0, 0, 0, 0, 0]), Ok(false));
        assert_eq!(decode_prevent_allow(&[0x1E, 0, 0, 0, 1, 0]), Ok(true));
        for obsolete in [2, 3] {
            let err = decode_prevent_allow(&[0x1E, 0, 0, 0, obsolete, 0]).unwrap_err();
            assert_eq!(err.field_pointer, Some((true, 4, Some(1))));
        }
    }

    #[tokio::test]
    async fn eject_and_load() {
        let lu = removable();
        let a = nexus("a");
        start_stop_unit(&lu, &a, &ssu(true, 0, false, true, false))
            .await
            .unwrap();
        assert_eq!(lu.readiness(), Readiness::NoMedium);
        // Ejecting again, or a stop without LOEJ, changes nothing.
        start_stop_unit(&lu, &a, &ssu(false, 0, false, true, false))
            .await
            .unwrap();
        start_stop_unit(&lu, &a, &ssu(false, 0, false, false, true))
            .await
            .unwrap();
        assert_eq!(lu.readiness(), Readiness::NoMedium);
        start_stop_unit(&lu, &a, &ssu(false, 0, false, true, true))
            .await
            .unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
    }

    #[tokio::test]
    async fn power_condition_ignores_start_and_loej() {
        let lu = removable();
        let a = nexus("a");
        for pc in 1..16 {
            start_stop_unit(&lu, &a, &ssu(true, pc, false, true, false))
                .await
                .unwrap();
            assert_eq!(lu.readiness(), Readiness::Ready, "power condition {pc:#x}");
        }
    }

    #[tokio::test]
    async fn start_without_loej_never_moves_the_medium() {
        let lu = removable();
        let a = nexus("a");
        for how in 0..8u8 {
            let no_flush = how & 4 != 0;
            start_stop_unit(
                &lu,
                &a,
                &ssu(how & 1 != 0, 0, no_flush, false, how & 2 != 0),
            )
            .await
            .unwrap();
            assert_eq!(lu.readiness(), Readiness::Ready);
        }
    }

    #[tokio::test]
    async fn a_fixed_unit_ignores_loej_and_prevent() {
        let lu = LogicalUnit::new(
            LuIdentity::derived("iqn.t", 0),
            512,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            false,
        );
        let a = nexus("a");
        prevent_allow(&lu, &a, &[0x1E, 0, 0, 0, 1, 0]).unwrap();
        assert!(!lu.medium_removal_prevented());
        start_stop_unit(&lu, &a, &ssu(false, 0, false, true, false))
            .await
            .unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
    }

    #[tokio::test]
    async fn prevention_refuses_the_eject() {
        let lu = removable();
        let (a, b) = (nexus("a"), nexus("b"));
        prevent_allow(&lu, &a, &[0x1E, 0, 0, 0, 1, 0]).unwrap();
        let err = start_stop_unit(&lu, &b, &ssu(false, 0, false, true, false))
            .await
            .unwrap_err();
        assert_eq!(err, Sense::medium_removal_prevented());
        assert_eq!(lu.readiness(), Readiness::Ready);
        // Another nexus's ALLOW does not end a's prevention.
        prevent_allow(&lu, &b, &[0x1E, 0, 0, 0, 0, 0]).unwrap();
        assert!(lu.medium_removal_prevented());
        prevent_allow(&lu, &a, &[0x1E, 0, 0, 0, 0, 0]).unwrap();
        start_stop_unit(&lu, &b, &ssu(false, 0, false, true, false))
            .await
            .unwrap();
        assert_eq!(lu.readiness(), Readiness::NoMedium);
    }
}
