//! Unit attention conditions (SAM-5 §5.14, SPC-4 §5.14): per logical unit, per I_T nexus.
//!
//! A nexus the logical unit has never seen has a pending POWER ON, RESET, OR BUS DEVICE RESET
//! OCCURRED: from its point of view the unit just appeared. Reporting a condition clears it
//! (UA_INTLCK_CTRL = 00b in the control mode page). The lock is a plain mutex held only for
//! map operations, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::scsi::Nexus;
use crate::scsi::sense::Sense;

/// More conditions than this for one nexus means nobody is collecting them; the oldest
/// non-reset ones are dropped (SPC-4 §5.14 lets a device server lose lower-precedence ones).
const MAX_QUEUED: usize = 16;

/// The unit attention queues of one logical unit.
#[derive(Debug, Default)]
pub struct UnitAttentions {
    queues: Mutex<HashMap<Nexus, VecDeque<Sense>>>,
    /// Conditions established so far, one per nexus reached (for the metrics). Counted
    /// under the queues' lock, on the rare paths that establish one.
    raised: AtomicU64,
}

impl UnitAttentions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Nexus, VecDeque<Sense>>> {
        // A panic elsewhere while holding the lock cannot leave the map inconsistent (every
        // operation is a single insert/remove), so poisoning is ignored.
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes and returns the condition to report to `nexus`, if any. The first call for an
    /// unknown nexus registers it and returns the power-on condition.
    pub fn take(&self, nexus: &Nexus) -> Option<Sense> {
        let mut queues = self.lock();
        match queues.get_mut(nexus) {
            Some(queue) => queue.pop_front(),
            None => {
                queues.insert(nexus.clone(), VecDeque::new());
                Some(Sense::power_on_reset())
            }
        }
    }

    /// Whether `nexus` has something to report (without consuming it).
    pub fn pending(&self, nexus: &Nexus) -> bool {
        self.lock().get(nexus).is_none_or(|q| !q.is_empty())
    }

    /// Establishes `sense` for one nexus. An unknown nexus becomes known and gets `sense`
    /// instead of the power-on condition.
    pub fn establish(&self, nexus: &Nexus, sense: Sense) {
        let mut queues = self.lock();
        let queue = queues.entry(nexus.clone()).or_default();
        push(queue, sense);
        self.raised.fetch_add(1, Ordering::Relaxed);
    }

    /// Establishes `sense` for every nexus the unit knows, except `except`. Nexuses not yet
    /// known need nothing: their first command reports power-on anyway.
    pub fn establish_all(&self, sense: &Sense, except: Option<&Nexus>) {
        let mut queues = self.lock();
        for (nexus, queue) in queues.iter_mut() {
            if Some(nexus) != except {
                push(queue, sense.clone());
                self.raised.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets `nexus`: a later command from it is treated as coming from a new nexus.
    pub fn forget(&self, nexus: &Nexus) {
        self.lock().remove(nexus);
    }

    /// How many conditions have been established (each nexus reached counts once); the
    /// implicit power-on condition of a nexus's first contact is not counted.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    /// The nexuses this unit has seen.
    pub fn known_nexuses(&self) -> Vec<Nexus> {
        self.lock().keys().cloned().collect()
    }
}

/// Queues `sense`. A reset condition (29h) supersedes everything pending, as resets are the
/// highest-precedence unit attention and imply the state the others described is gone (SAM-5
/// §5.14; FreeBSD CTL does the same). Duplicates are not queued twice.
fn push(queue: &mut VecDeque<Sense>, sense: Sense) {
    if sense.is_reset_ua() {
        queue.clear();
        queue.push_back(sense);
        return;
    }
    if queue.contains(&sense) {
        return;
    }
    if queue.len() >= MAX_QUEUED {
        // Keep a pending reset at the front; drop the oldest of the rest.
        let oldest = usize::from(queue.front().is_some_and(Sense::is_reset_ua));
        queue.remove(oldest);
    }
    queue.push_back(sense);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn nexus(name: &str) -> Nexus {
        Nexus {
            initiator_port: Arc::from(name),
            target_port: Arc::from("iqn.2026-01.test:t,t,0x0001"),
            relative_port: 1,
        }
    }

    #[test]
    fn first_contact_reports_power_on_once() {
        let uas = UnitAttentions::new();
        let a = nexus("a");
        assert!(uas.pending(&a));
        assert_eq!(uas.take(&a), Some(Sense::power_on_reset()));
        assert_eq!(uas.take(&a), None);
        assert!(!uas.pending(&a));
    }

    #[test]
    fn establish_all_skips_the_exception_and_unknown_nexuses() {
        let uas = UnitAttentions::new();
        let (a, b, c) = (nexus("a"), nexus("b"), nexus("c"));
        uas.take(&a);
        uas.take(&b);
        uas.establish_all(&Sense::reported_luns_changed(), Some(&a));
        // One condition, established for one nexus (b): the exception and c are not reached.
        assert_eq!(uas.raised(), 1);
        assert_eq!(uas.take(&a), None);
        assert_eq!(uas.take(&b), Some(Sense::reported_luns_changed()));
        assert_eq!(uas.take(&c), Some(Sense::power_on_reset()));
    }

    #[test]
    fn resets_supersede_and_duplicates_collapse() {
        let uas = UnitAttentions::new();
        let a = nexus("a");
        uas.take(&a);
        uas.establish(&a, Sense::reported_luns_changed());
        uas.establish(&a, Sense::reported_luns_changed());
        uas.establish(&a, Sense::capacity_changed());
        uas.establish(&a, Sense::bus_device_reset());
        assert_eq!(uas.take(&a), Some(Sense::bus_device_reset()));
        assert_eq!(uas.take(&a), None);

        uas.establish(&a, Sense::reported_luns_changed());
        uas.establish(&a, Sense::reported_luns_changed());
        assert_eq!(uas.take(&a), Some(Sense::reported_luns_changed()));
        assert_eq!(uas.take(&a), None);
    }

    #[test]
    fn queue_is_bounded_and_keeps_the_reset() {
        let mut queue = VecDeque::new();
        push(&mut queue, Sense::bus_reset());
        for ascq in 0..40u8 {
            push(
                &mut queue,
                Sense::new(crate::scsi::sense::SenseKey::UnitAttention, 0x2A, ascq),
            );
        }
        assert_eq!(queue.len(), MAX_QUEUED);
        assert_eq!(queue.front(), Some(&Sense::bus_reset()));
        assert_eq!(queue.back().map(|s| s.ascq), Some(39));
    }

    #[test]
    fn forgotten_nexus_starts_over() {
        let uas = UnitAttentions::new();
        let a = nexus("a");
        uas.take(&a);
        uas.forget(&a);
        assert_eq!(uas.take(&a), Some(Sense::power_on_reset()));
        assert!(uas.known_nexuses().contains(&a));
    }
}
