//! The reservation state of one logical unit and the commands that use it: PERSISTENT
//! RESERVE IN/OUT (SPC-4 §6.15, §6.16) and SPC-2 RESERVE/RELEASE (6) and (10) (SPC-2 §7.21,
//! §7.17).
//!
//! State sits behind a std mutex held only to copy or swap it, never across an await.
//! Commands that change it (PROUT, RESERVE, RELEASE) also take an async mutex for their whole
//! run, saving included, so PRgeneration order is the order the store sees and a failed save
//! never leaves a half-adopted state.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::lu::LogicalUnit;
use super::opcodes::op;
use super::pr::{self, Capabilities, PrState, Refusal};
use super::pr_access;
use super::pr_store::ReservationStore;
use super::sense::{Sense, SenseKey};
use super::{Nexus, ScsiResponse, ScsiStatus, spc};

#[derive(Debug, Default)]
struct Inner {
    pr: PrState,
    /// The I_T nexus holding an SPC-2 RESERVE, if any.
    spc2_holder: Option<Nexus>,
    /// Where APTPL state is saved, and the unit's name there.
    store: Option<(Arc<dyn ReservationStore>, String)>,
}

/// Reservations of one logical unit.
#[derive(Debug, Default)]
pub struct Reservations {
    inner: Mutex<Inner>,
    /// Serializes the commands that change the state (held across the save).
    changes: tokio::sync::Mutex<()>,
}

/// 04/44/00 INTERNAL TARGET FAILURE: the state could not be made persistent (SPC-4 §4.5.6
/// table 52); nothing changed.
pub const fn persist_failed() -> Sense {
    Sense::new(SenseKey::HardwareError, 0x44, 0x00)
}

impl Reservations {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a whole-value assignment, so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches `store` under `unit` and adopts the state saved there, if any (SPC-4 §5.13.5:
    /// with APTPL the registrations and the reservation survive power loss).
    pub fn attach_store(&self, unit: &str, store: Arc<dyn ReservationStore>) -> io::Result<()> {
        let saved = store.load(unit)?;
        let mut inner = self.lock();
        if let Some(state) = saved {
            inner.pr = state;
        }
        inner.store = Some((store, unit.to_string()));
        Ok(())
    }

    /// A copy of the persistent reservation state.
    pub fn snapshot(&self) -> PrState {
        self.lock().pr.clone()
    }

    /// Whether `cdb` from `nexus` meets RESERVATION CONFLICT (SPC-2 §5.5.1, SPC-4 §5.13.1).
    pub fn conflicts(&self, nexus: &Nexus, cdb: &[u8]) -> bool {
        let inner = self.lock();
        if let Some(holder) = &inner.spc2_holder
            && pr_access::spc2_conflicts(holder, nexus, cdb)
        {
            return true;
        }
        pr_access::pr_conflicts(&inner.pr, nexus, cdb)
    }

    /// The I_T nexus is gone: its SPC-2 reservation is released (SPC-2 §5.5.1); persistent
    /// registrations stay, that is what makes them persistent.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        let mut inner = self.lock();
        if inner.spc2_holder.as_ref() == Some(nexus) {
            inner.spc2_holder = None;
        }
    }

    /// LOGICAL UNIT RESET or a target reset: releases the SPC-2 reservation (SPC-2 §5.5.1);
    /// persistent reservations are not affected (SPC-4 §5.13.1).
    pub fn reset(&self) {
        self.lock().spc2_holder = None;
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persist_through_power_loss: self.lock().store.is_some(),
        }
    }
}

fn conflict() -> ScsiResponse {
    ScsiResponse::status(ScsiStatus::ReservationConflict)
}

/// The write data a reservation command asks for, for the transport's residual accounting;
/// `None` for other commands.
pub fn data_out_needed(cdb: &[u8]) -> Option<u32> {
    match cdb.first().copied() {
        Some(op::PERSISTENT_RESERVE_OUT) => Some(pr::prout_data_out_needed(cdb)),
        Some(op::RESERVE_10 | op::RELEASE_10) => Some(
            cdb.get(7..9)
                .map_or(0, |b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
        ),
        _ => None,
    }
}

/// PERSISTENT RESERVE IN (SPC-4 §6.15).
pub fn persistent_reserve_in(
    lu: &LogicalUnit,
    _nexus: &Nexus,
    cdb: &[u8],
) -> Result<ScsiResponse, Sense> {
    let request = pr::decode_prin(cdb)?;
    let reservations = lu.reservations();
    let caps = reservations.capabilities();
    let data = pr::prin_data(&reservations.snapshot(), request.service_action, caps);
    Ok(ScsiResponse::good(spc::truncate(
        data,
        usize::from(request.allocation_length),
    )))
}

/// PERSISTENT RESERVE OUT (SPC-4 §6.16): decide on a copy, save it while APTPL is (or was)
/// set, then adopt it and raise the unit attentions.
pub async fn persistent_reserve_out(
    lu: &LogicalUnit,
    nexus: &Nexus,
    cdb: &[u8],
    data: &Bytes,
) -> Result<ScsiResponse, Sense> {
    let request = pr::decode_prout(cdb)?;
    let reservations = lu.reservations();
    let _changing = reservations.changes.lock().await;
    let (current, store) = {
        let inner = reservations.lock();
        if inner.spc2_holder.is_some() {
            return Ok(conflict());
        }
        (inner.pr.clone(), inner.store.clone())
    };
    let caps = Capabilities {
        persist_through_power_loss: store.is_some(),
    };
    let outcome = match pr::apply_prout(&current, nexus, &request, data, caps) {
        Ok(outcome) => outcome,
        Err(Refusal::Conflict) => return Ok(conflict()),
        Err(Refusal::Check(sense)) => return Err(sense),
    };
    if outcome.state != current {
        if let Some((store, unit)) = &store
            && (outcome.state.aptpl || current.aptpl)
        {
            let to_save = outcome.state.aptpl.then(|| outcome.state.clone());
            if let Err(e) = store.save(unit, to_save).await {
                tracing::warn!(unit = %unit, "cannot save persistent reservations: {e}");
                return Err(persist_failed());
            }
        }
        reservations.lock().pr = outcome.state;
    }
    let unit_attentions = lu.unit_attentions();
    let known = unit_attentions.known_nexuses();
    for notice in &outcome.notices {
        for other in known.iter().filter(|n| *n != nexus) {
            if notice.to.iter().any(|r| r.covers(other)) {
                unit_attentions.establish(other, notice.sense.clone());
            }
        }
    }
    if !outcome.abort.is_empty() {
        // PREEMPT AND ABORT (SPC-4 §5.13.11.2.3): the preempted nexuses' tasks are aborted
        // (ending with TASK ABORTED) and the command completes only once none of them can
        // still touch the medium. Other reservation changes may go on meanwhile.
        drop(_changing);
        let waits = lu.task_set().abort_where(nexus, |n| {
            n != nexus && outcome.abort.iter().any(|r| r.covers(n))
        });
        for finished in waits {
            finished.cancelled().await;
        }
    }
    Ok(ScsiResponse::good(Bytes::new()))
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
    let _changing = reservations.changes.lock().await;
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
    let _changing = reservations.changes.lock().await;
    let mut inner = reservations.lock();
    if !inner.pr.registrations.is_empty() {
        return Ok(conflict());
    }
    if inner.spc2_holder.as_ref() == Some(nexus) {
        inner.spc2_holder = None;
    }
    Ok(ScsiResponse::good(Bytes::new()))
}

#[cfg(test)]
#[path = "reserve_tests.rs"]
mod tests;
