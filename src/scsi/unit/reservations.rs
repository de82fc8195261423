//! The reservation state of one logical unit: SCSI-3 persistent reservations (SPC-4 §5.13:
//! registrations, the reservation, PRgeneration, APTPL) and the SPC-2 reservation holder
//! (SPC-2 §5.5.1), behind one mutex; the state types themselves, shared with the store, are
//! in `pr_state.rs`. The commands that read and change it live in
//! `commands/persistent_reservations.rs` and `commands/spc2_reservations.rs`; which commands
//! meet RESERVATION CONFLICT is `commands/reservation_access.rs`.
//!
//! State sits behind a std mutex held only to copy or swap it, never across an await.
//! Commands that change it (PROUT, RESERVE, RELEASE) also take an async mutex for their whole
//! run, saving included, so PRgeneration order is the order the store sees and a failed save
//! never leaves a half-adopted state.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::pr_state::{PrNotice, PrState};
use super::reservation_store::ReservationStore;
use crate::scsi::Nexus;

/// Everything one logical unit knows about reservations, behind [`Reservations`]' mutex.
#[derive(Debug, Default)]
pub struct ReservationState {
    pub pr: PrState,
    /// The I_T nexus holding an SPC-2 RESERVE, if any.
    pub spc2_holder: Option<Nexus>,
    /// Where APTPL state is saved, and the unit's name there.
    pub store: Option<(Arc<dyn ReservationStore>, String)>,
}

/// Reservations of one logical unit.
#[derive(Debug, Default)]
pub struct Reservations {
    inner: Mutex<ReservationState>,
    /// Serializes the commands that change the state (held across the save).
    changes: tokio::sync::Mutex<()>,
}

impl Reservations {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state, for a command to read or update; never held across an await.
    pub(in crate::scsi) fn lock(&self) -> MutexGuard<'_, ReservationState> {
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

    /// Adopts the state saved in a shared store again: another node may have changed it
    /// while it served the unit (issue 14: a node loads a LUN's table before it answers on
    /// a portal it has just taken over). Waits for a change in progress, so a change this
    /// node is committing is not overwritten by an older copy. Nothing saved means no
    /// registrations. Returns whether a shared store was there to reload from.
    pub async fn reload(&self) -> io::Result<bool> {
        Ok(self.reload_change().await?.is_some())
    }

    /// [`Self::reload`], returning the unit attentions the last change owes to other
    /// nexuses (`None`: no shared store).
    pub async fn reload_change(&self) -> io::Result<Option<Vec<PrNotice>>> {
        let _changing = self.changes.lock().await;
        let Some((store, unit)) = self.lock().store.clone().filter(|(s, _)| s.shared()) else {
            return Ok(None);
        };
        store.until_readable().await?;
        // The store's load may run a process or wait on a socket: off the runtime's threads.
        let (saved, notices) = tokio::task::spawn_blocking(move || store.load_change(&unit))
            .await
            .map_err(io::Error::other)??;
        self.lock().pr = saved.unwrap_or_default();
        Ok(Some(notices))
    }

    /// A copy of the persistent reservation state.
    pub fn snapshot(&self) -> PrState {
        self.lock().pr.clone()
    }

    /// Serializes the commands that change the state; held across the save.
    pub(in crate::scsi) fn changes(&self) -> &tokio::sync::Mutex<()> {
        &self.changes
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

    /// Whether a store is attached, so APTPL can be honoured (SPC-4 §5.13.5).
    pub fn persists_through_power_loss(&self) -> bool {
        self.lock().store.is_some()
    }
}
