//! SPC-2 RESERVE(6)/(10) and RELEASE(6)/(10) (SPC-2 §7.21, §7.17): a whole-unit
//! reservation held by one I_T nexus, kept beside the persistent reservations in
//! [`Reservations`](crate::scsi::unit::reservations::Reservations). SPC-4 lists how the two
//! coexist ("exceptions to SPC-2 RESERVE and RELEASE behaviour"): while any persistent
//! registration exists, RESERVE and RELEASE meet RESERVATION CONFLICT.

use bytes::Bytes;

use super::persistent_reservations::conflict;
use crate::scsi::opcodes::op;
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::{Nexus, ScsiResponse};

/// The write data RESERVE(10)/RELEASE(10) ask for (the PARAMETER LIST LENGTH of the
/// third-party form), for the transport's residual accounting; `None` for other commands.
pub fn data_out_needed(cdb: &[u8]) -> Option<u32> {
    match cdb.first().copied() {
        Some(op::RESERVE_10 | op::RELEASE_10) => Some(
            cdb.get(7..9)
                .map_or(0, |b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
        ),
        _ => None,
    }
}

/// RESERVE(10)/RELEASE(10) with 3RDPTY set asks for a third-party reservation, which SPC-2
/// made optional and this target does not do.
fn check_third_party(cdb: &[u8]) -> Result<(), Sense> {
    let opcode = cdb.first().copied().unwrap_or(0);
    let flags = cdb.get(1).copied().unwrap_or(0);
    if matches!(opcode, op::RESERVE_10 | op::RELEASE_10) && flags & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    Ok(())
}

/// RESERVE(6)/RESERVE(10) of the whole logical unit (SPC-2 §7.21): the holder may repeat it;
/// anyone else meets RESERVATION CONFLICT, as does everyone while a persistent registration
/// exists (SPC-4 exceptions to SPC-2 RESERVE and RELEASE behaviour).
pub async fn reserve(lu: &LogicalUnit, nexus: &Nexus, cdb: &[u8]) -> Result<ScsiResponse, Sense> {
    check_third_party(cdb)?;
    let reservations = lu.reservations();
    let _changing = reservations.changes().lock().await;
    let mut inner = reservations.lock();
    if !inner.pr.registrations.is_empty() {
        return Ok(conflict());
    }
    match &inner.spc2_holder {
        Some(holder) if holder != nexus => Ok(conflict()),
        _ => {
            inner.spc2_holder = Some(nexus.clone());
            Ok(ScsiResponse::good(Bytes::new()))
        }
    }
}

/// RELEASE(6)/RELEASE(10) (SPC-2 §7.17): releases the holder's reservation; from anyone else
/// it does nothing and answers GOOD.
pub async fn release(lu: &LogicalUnit, nexus: &Nexus, cdb: &[u8]) -> Result<ScsiResponse, Sense> {
    check_third_party(cdb)?;
    let reservations = lu.reservations();
    let _changing = reservations.changes().lock().await;
    let mut inner = reservations.lock();
    if !inner.pr.registrations.is_empty() {
        return Ok(conflict());
    }
    if inner.spc2_holder.as_ref() == Some(nexus) {
        inner.spc2_holder = None;
    }
    Ok(ScsiResponse::good(Bytes::new()))
}
