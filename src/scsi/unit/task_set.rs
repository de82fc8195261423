//! A logical unit's task set (SAM-5 §4.6): every command received for the unit, from every
//! I_T nexus, from its arrival until its reply is handed over. The transport owns the tasks;
//! this is where task management and PREEMPT AND ABORT reach the tasks of other sessions.
//!
//! Each task has a fate, changed atomically: it starts QUEUED (arrived, maybe still
//! receiving its data), becomes EXECUTING when it starts acting on the medium, then REPLYING
//! when its work is over. An abort that finds it QUEUED stops it for good: it will never
//! execute, so nobody needs to wait for it. One that finds it EXECUTING must wait until its
//! work is over (its `finished` token), because a write reported aborted must not land later.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::scsi::Nexus;

/// Where the task is: the low bits.
const QUEUED: u8 = 0;
const EXECUTING: u8 = 1;
const REPLYING: u8 = 2;
const STAGE: u8 = 0x03;
/// Aborted: it ends without acting on the medium (if still queued) and without its normal
/// reply.
const ABORTED: u8 = 0x10;
/// Aborted by another nexus: it ends with TASK ABORTED status (TAS = 1 in the control mode
/// page, SAM-5 §5.6); by its own, silently (SAM-5 §7.1).
const REPORTED: u8 = 0x20;

/// How an aborted task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aborted {
    /// Without a reply.
    Silently,
    /// With TASK ABORTED status.
    Reported,
}

/// What an abort found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortOutcome {
    /// Not started: it never will.
    Stopped,
    /// Executing: it will not reply normally, but its work must be waited for.
    WhileExecuting,
    /// Already replying: nothing was aborted.
    TooLate,
    /// An earlier abort got there first; `executing` if the task had started.
    AlreadyAborted { executing: bool },
}

impl AbortOutcome {
    /// Whether this call aborted the task.
    pub fn aborted(self) -> bool {
        matches!(self, AbortOutcome::Stopped | AbortOutcome::WhileExecuting)
    }

    /// Whether the task's work may still be going on, so its end must be waited for.
    pub fn must_wait(self) -> bool {
        matches!(
            self,
            AbortOutcome::WhileExecuting | AbortOutcome::AlreadyAborted { executing: true }
        )
    }
}

/// A task's fate, decided once between its completion and an abort.
#[derive(Debug, Default)]
pub struct TaskFate {
    state: AtomicU8,
    /// Woken when the task is aborted, for a command that waits on work going on without it
    /// ([`TaskFate::aborted`]). Inline, no allocation: nearly every task never uses it.
    abort_signal: tokio::sync::Notify,
}

impl TaskFate {
    pub fn new() -> Arc<TaskFate> {
        Arc::new(TaskFate::default())
    }

    fn how(state: u8) -> Aborted {
        if state & REPORTED != 0 {
            Aborted::Reported
        } else {
            Aborted::Silently
        }
    }

    /// Moves from stage `from` to `to` unless the task was aborted.
    fn advance(&self, from: u8, to: u8) -> Result<(), Aborted> {
        match self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(state) => Err(Self::how(state)),
        }
    }

    /// The task is about to act on the medium. `Err`: it was aborted and must not.
    pub fn begin(&self) -> Result<(), Aborted> {
        self.advance(QUEUED, EXECUTING)
    }

    /// The task's work is over. `Ok`: it replies with its outcome; `Err`: it was aborted
    /// meanwhile and ends as that says.
    pub fn complete(&self) -> Result<(), Aborted> {
        self.advance(EXECUTING, REPLYING)
    }

    fn is_aborted(&self) -> bool {
        self.state.load(Ordering::Acquire) & ABORTED != 0
    }

    /// Completes once the task is aborted: a command that waits long for something that goes
    /// on without it (SANITIZE without IMMED) stops waiting then.
    pub async fn aborted(&self) {
        loop {
            let signal = self.abort_signal.notified();
            tokio::pin!(signal);
            // Registered before looking, so an abort between the look and the wait wakes it.
            signal.as_mut().enable();
            if self.is_aborted() {
                return;
            }
            signal.await;
        }
    }

    /// Aborts the task unless it is already replying.
    pub fn abort(&self, how: Aborted) -> AbortOutcome {
        let mark = match how {
            Aborted::Silently => ABORTED,
            Aborted::Reported => ABORTED | REPORTED,
        };
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let executing = state & STAGE == EXECUTING;
            if state & ABORTED != 0 {
                return AbortOutcome::AlreadyAborted { executing };
            }
            if state & STAGE == REPLYING {
                return AbortOutcome::TooLate;
            }
            match self.state.compare_exchange(
                state,
                state | mark,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.abort_signal.notify_waiters();
                    return if executing {
                        AbortOutcome::WhileExecuting
                    } else {
                        AbortOutcome::Stopped
                    };
                }
                Err(now) => state = now,
            }
        }
    }
}

struct Entry {
    nexus: Arc<Nexus>,
    fate: Arc<TaskFate>,
    finished: CancellationToken,
}

/// Shards of a task set: every command joins and leaves it, so sessions doing I/O to the
/// same unit on different threads should rarely meet on one lock.
const SHARDS: usize = 16;

/// The tasks of one logical unit, across nexuses.
#[derive(Default)]
pub struct TaskSet {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    next_id: AtomicU64,
}

impl std::fmt::Debug for TaskSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskSet")
            .field("tasks", &self.len())
            .finish()
    }
}

/// A task's place in a task set; dropping it takes the task out.
pub struct Membership {
    set: Arc<TaskSet>,
    id: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.set.shard(self.id).remove(&self.id);
    }
}

impl TaskSet {
    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A map stays consistent whatever a panicking holder did: take it back.
        self.shards[id as usize % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters a task from `nexus`; `finished` fires when its work is over or it is dropped.
    pub fn join(
        self: &Arc<Self>,
        nexus: Arc<Nexus>,
        fate: Arc<TaskFate>,
        finished: CancellationToken,
    ) -> Membership {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.shard(id).insert(
            id,
            Entry {
                nexus,
                fate,
                finished,
            },
        );
        Membership {
            set: Arc::clone(self),
            id,
        }
    }

    /// Aborts the tasks of the nexuses `which` selects, on behalf of `by`: its own tasks end
    /// silently, the others' with TASK ABORTED. Returns what to wait for before the abort
    /// may be reported done: the tasks that were executing.
    pub fn abort_where(
        &self,
        by: &Nexus,
        which: impl Fn(&Nexus) -> bool,
    ) -> Vec<CancellationToken> {
        let mut waits = Vec::new();
        for shard in 0..SHARDS as u64 {
            for entry in self.shard(shard).values().filter(|e| which(&e.nexus)) {
                let how = if *entry.nexus == *by {
                    Aborted::Silently
                } else {
                    Aborted::Reported
                };
                if entry.fate.abort(how).must_wait() {
                    waits.push(entry.finished.clone());
                }
            }
        }
        waits
    }

    /// How many tasks are in the set.
    pub fn len(&self) -> usize {
        (0..SHARDS as u64).map(|i| self.shard(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nexus(name: &str) -> Arc<Nexus> {
        Arc::new(Nexus::for_test(name))
    }

    #[tokio::test]
    async fn a_waiter_on_the_abort_wakes_when_the_task_is_aborted_and_not_before() {
        let fate = TaskFate::new();
        assert!(fate.begin().is_ok());
        let waiting = tokio::spawn({
            let fate = Arc::clone(&fate);
            async move { fate.aborted().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(fate.abort(Aborted::Silently), AbortOutcome::WhileExecuting);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the abort")
            .expect("the waiter ran");
        // Already aborted: returns at once.
        fate.aborted().await;
    }

    #[test]
    fn a_fate_is_decided_once() {
        let fate = TaskFate::new();
        assert_eq!(fate.abort(Aborted::Reported), AbortOutcome::Stopped);
        assert_eq!(
            fate.begin(),
            Err(Aborted::Reported),
            "an aborted task never starts"
        );
        assert_eq!(
            fate.abort(Aborted::Silently),
            AbortOutcome::AlreadyAborted { executing: false }
        );

        let fate = TaskFate::new();
        assert_eq!(fate.begin(), Ok(()));
        assert_eq!(fate.abort(Aborted::Silently), AbortOutcome::WhileExecuting);
        assert!(fate.abort(Aborted::Reported).must_wait(), "still executing");
        assert_eq!(
            fate.complete(),
            Err(Aborted::Silently),
            "no reply after an abort"
        );

        let fate = TaskFate::new();
        assert_eq!(fate.begin(), Ok(()));
        assert_eq!(fate.complete(), Ok(()));
        assert_eq!(fate.abort(Aborted::Reported), AbortOutcome::TooLate);
        assert!(!AbortOutcome::TooLate.aborted());
    }

    #[test]
    fn aborts_reach_every_selected_nexus_and_wait_only_for_executing_tasks() {
        let set = Arc::new(TaskSet::default());
        let (a, b) = (nexus("iqn.a"), nexus("iqn.b"));
        let queued_b = (TaskFate::new(), CancellationToken::new());
        let running_b = (TaskFate::new(), CancellationToken::new());
        let running_a = (TaskFate::new(), CancellationToken::new());
        let _m1 = set.join(b.clone(), queued_b.0.clone(), queued_b.1.clone());
        let _m2 = set.join(b.clone(), running_b.0.clone(), running_b.1.clone());
        let m3 = set.join(a.clone(), running_a.0.clone(), running_a.1.clone());
        running_b.0.begin().unwrap();
        running_a.0.begin().unwrap();
        assert_eq!(set.len(), 3);

        let waits = set.abort_where(&a, |_| true);
        assert_eq!(waits.len(), 2, "only the executing tasks are waited for");
        assert_eq!(
            queued_b.0.begin(),
            Err(Aborted::Reported),
            "other nexus: TASK ABORTED"
        );
        assert_eq!(running_b.0.complete(), Err(Aborted::Reported));
        assert_eq!(
            running_a.0.complete(),
            Err(Aborted::Silently),
            "own nexus: no reply"
        );

        drop(m3);
        assert_eq!(set.len(), 2, "leaving the set takes the task out");
    }

    #[test]
    fn a_selection_spares_the_other_nexuses() {
        let set = Arc::new(TaskSet::default());
        let (a, b) = (nexus("iqn.a"), nexus("iqn.b"));
        let fate_a = TaskFate::new();
        let fate_b = TaskFate::new();
        let _ma = set.join(a.clone(), fate_a.clone(), CancellationToken::new());
        let _mb = set.join(b.clone(), fate_b.clone(), CancellationToken::new());
        let waits = set.abort_where(&a, |n| *n == *b);
        assert!(waits.is_empty());
        assert_eq!(fate_a.begin(), Ok(()), "not selected");
        assert_eq!(fate_b.begin(), Err(Aborted::Reported));
    }
}
