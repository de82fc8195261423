//! A logical unit's sanitize state (SBC-4 §4.33, "Sanitize operations"): idle, a sanitize
//! operation in progress (with how far it has got), or sanitize failure mode.
//!
//! The SANITIZE handler (`commands/sanitize.rs`) starts and ends operations; dispatch asks
//! [`SanitizeState::refusal`] before every command, and REQUEST SENSE reports
//! [`SanitizeState::condition`] with its progress indication.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::scsi::sense::Sense;

/// How far a running sanitize operation has got.
#[derive(Debug)]
pub struct SanitizeProgress {
    done: AtomicU64,
    total: u64,
}

impl SanitizeProgress {
    /// `total` units of work (bytes written or discarded, over every pass).
    pub fn new(total: u64) -> Self {
        SanitizeProgress {
            done: AtomicU64::new(0),
            total,
        }
    }

    /// `units` more of the work are done.
    pub fn advance(&self, units: u64) {
        self.done.fetch_add(units, Ordering::Relaxed);
    }

    /// The PROGRESS INDICATION of SPC-4 §4.5.2.4.4: the fraction done, in 65536ths (65535 at
    /// most: the operation is not over until it has ended).
    pub fn indication(&self) -> u16 {
        let done = u128::from(self.done.load(Ordering::Relaxed));
        let total = u128::from(self.total.max(1));
        u16::try_from((done * 65536 / total).min(65535)).unwrap_or(u16::MAX)
    }
}

#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    Running(std::sync::Arc<SanitizeProgress>),
    /// The last operation failed; `ause` is the AUSE bit of the SANITIZE that started it.
    Failed {
        ause: bool,
    },
}

/// Who may run a command now, as far as sanitizing goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DuringSanitize {
    /// INQUIRY, REPORT LUNS, REQUEST SENSE: they run whatever the state (SBC-4 §4.33).
    Runs,
    /// SANITIZE: refused while an operation runs, accepted in failure mode (a new operation,
    /// or EXIT FAILURE MODE, is how the unit leaves it).
    Sanitize,
    /// Everything else: refused while an operation runs and in failure mode.
    Refused,
}

/// One logical unit's sanitize state.
#[derive(Debug, Default)]
pub struct SanitizeState {
    phase: Mutex<Phase>,
    /// Whether `phase` is anything but idle, readable without the lock: dispatch asks before
    /// every command, READ and WRITE included, and a unit is nearly always idle. Set with
    /// the phase, under its lock.
    busy: AtomicBool,
    /// Bytes per second an OVERWRITE may write; `None`: as fast as the medium takes them.
    rate: Option<u64>,
}

impl SanitizeState {
    /// An idle unit whose overwrites write at most `rate` bytes per second.
    pub fn with_rate(rate: Option<u64>) -> Self {
        SanitizeState {
            phase: Mutex::default(),
            busy: AtomicBool::new(false),
            rate: rate.filter(|r| *r > 0),
        }
    }

    /// The pace of OVERWRITE, bytes per second (`None`: unpaced).
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // Writers only assign the phase: a poisoned lock still holds a whole one.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves to `next`, keeping the lock-free `busy` flag in step.
    fn set(&self, phase: &mut std::sync::MutexGuard<'_, Phase>, next: Phase) {
        self.busy
            .store(!matches!(next, Phase::Idle), Ordering::Release);
        **phase = next;
    }

    fn is_idle(&self) -> bool {
        !self.busy.load(Ordering::Acquire)
    }

    /// The condition the unit is in: NOT READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS
    /// (02/04/1B) with the progress indication while an operation runs, MEDIUM ERROR,
    /// SANITIZE COMMAND FAILED (03/31/03) in failure mode, `None` when idle. REQUEST SENSE
    /// returns it (SPC-4 §6.39).
    pub fn condition(&self) -> Option<Sense> {
        if self.is_idle() {
            return None;
        }
        condition_of(&self.phase())
    }

    /// Why a command of kind `kind` may not run now (SBC-4 §4.33), if it may not: the
    /// unit's condition, except for the commands that run whatever it is and for SANITIZE in
    /// failure mode.
    pub fn refusal(&self, kind: DuringSanitize) -> Option<Sense> {
        if kind == DuringSanitize::Runs || self.is_idle() {
            return None;
        }
        match (kind, &*self.phase()) {
            (DuringSanitize::Sanitize, Phase::Failed { .. }) => None,
            (_, phase) => condition_of(phase),
        }
    }

    /// Whether an operation is running.
    pub fn in_progress(&self) -> bool {
        !self.is_idle() && matches!(*self.phase(), Phase::Running(_))
    }

    /// Starts an operation of `total` units of work: refused with 02/04/1B if one runs.
    pub fn begin(&self, total: u64) -> Result<std::sync::Arc<SanitizeProgress>, Sense> {
        let mut phase = self.phase();
        if let Phase::Running(progress) = &*phase {
            return Err(Sense::sanitize_in_progress(progress.indication()));
        }
        let progress = std::sync::Arc::new(SanitizeProgress::new(total));
        self.set(&mut phase, Phase::Running(std::sync::Arc::clone(&progress)));
        Ok(progress)
    }

    /// The running operation ended: the unit is idle again after a success, in failure mode
    /// after a failure (remembering `ause` for EXIT FAILURE MODE).
    pub fn end(&self, succeeded: bool, ause: bool) {
        let next = if succeeded {
            Phase::Idle
        } else {
            Phase::Failed { ause }
        };
        self.set(&mut self.phase(), next);
    }

    /// EXIT FAILURE MODE (SBC-4 §5.30.2): leaves failure mode if the failed operation was
    /// started with AUSE = 1; with AUSE = 0 only a successful sanitize operation may end it
    /// (ILLEGAL REQUEST, INVALID FIELD IN CDB at the SERVICE ACTION). Idle: nothing to do.
    pub fn exit_failure_mode(&self) -> Result<(), Sense> {
        let mut phase = self.phase();
        match &*phase {
            Phase::Idle => Ok(()),
            Phase::Failed { ause: true } => {
                self.set(&mut phase, Phase::Idle);
                Ok(())
            }
            Phase::Failed { ause: false } => Err(Sense::invalid_field_in_cdb(1, Some(4))),
            Phase::Running(progress) => Err(Sense::sanitize_in_progress(progress.indication())),
        }
    }
}

/// The sense a unit in `phase` answers with (see [`SanitizeState::condition`]).
fn condition_of(phase: &Phase) -> Option<Sense> {
    match phase {
        Phase::Idle => None,
        Phase::Running(progress) => Some(Sense::sanitize_in_progress(progress.indication())),
        Phase::Failed { .. } => Some(Sense::sanitize_failed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;

    #[test]
    fn progress_counts_in_65536ths_and_never_reaches_the_end() {
        let p = SanitizeProgress::new(4);
        assert_eq!(p.indication(), 0);
        p.advance(1);
        assert_eq!(p.indication(), 16384);
        p.advance(3);
        assert_eq!(p.indication(), 65535);
        assert_eq!(SanitizeProgress::new(0).indication(), 0);
    }

    #[test]
    fn a_running_operation_refuses_everything_but_the_exempt_opcodes() {
        let state = SanitizeState::default();
        assert_eq!(state.refusal(DuringSanitize::Refused), None);
        let progress = state.begin(2).unwrap();
        progress.advance(1);
        let sense = state.refusal(DuringSanitize::Refused).unwrap();
        assert_eq!(
            (sense.key, sense.asc, sense.ascq),
            (SenseKey::NotReady, 0x04, 0x1B)
        );
        assert_eq!(sense.progress, Some(32768));
        assert_eq!(state.refusal(DuringSanitize::Sanitize), Some(sense.clone()));
        assert_eq!(state.refusal(DuringSanitize::Runs), None);
        assert_eq!(state.condition(), Some(sense));
        // A second operation may not start meanwhile.
        assert!(state.begin(1).is_err());
        state.end(true, false);
        assert_eq!(state.refusal(DuringSanitize::Refused), None);
        assert_eq!(state.condition(), None);
    }

    #[test]
    fn failure_mode_ends_by_exit_only_with_ause() {
        let state = SanitizeState::default();
        state.begin(1).unwrap();
        state.end(false, false);
        let failed = state.refusal(DuringSanitize::Refused).unwrap();
        assert_eq!(
            (failed.key, failed.asc, failed.ascq),
            (SenseKey::MediumError, 0x31, 0x03)
        );
        assert_eq!(state.refusal(DuringSanitize::Sanitize), None);
        assert_eq!(
            state.exit_failure_mode().unwrap_err().field_pointer,
            Some((true, 1, Some(4)))
        );
        // A successful operation ends it.
        state.begin(1).unwrap();
        state.end(true, false);
        assert_eq!(state.condition(), None);

        state.begin(1).unwrap();
        state.end(false, true);
        assert!(state.condition().is_some());
        state.exit_failure_mode().unwrap();
        assert_eq!(state.condition(), None);
        // Outside failure mode it changes nothing.
        state.exit_failure_mode().unwrap();
    }
}
