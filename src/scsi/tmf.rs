//! Task management functions (SAM-5 §7): which tasks each function reaches, across the I_T
//! nexuses that share a logical unit's task set, and what the unit does besides. The
//! transport decodes the request, owns its own tasks (those of the issuing nexus, which it
//! can still drop before they start) and reports the outcome once the aborted tasks have
//! finished; this is where the SAM semantics live, as in SPDK (`lib/scsi/lun.c`) and LIO
//! (`target_core_tmr.c`).
//!
//! The issuing nexus's tasks end silently (SAM-5 §7.1); the other nexuses' end with TASK
//! ABORTED status: TAS = 1 in the control mode page (SAM-5 §5.6).

use tokio_util::sync::CancellationToken;

use super::{Nexus, TargetDevice};

/// A task management function that reaches a task set (ABORT TASK, which names one task of
/// the issuing nexus, stays with the transport).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tmf {
    /// The issuing nexus's tasks on the unit (SAM-5 §7.3).
    AbortTaskSet,
    /// Every nexus's tasks on the unit, the task set being shared (SAM-5 §7.4; control mode
    /// page TST = 000b).
    ClearTaskSet,
    /// Every nexus's tasks on the unit, then the unit's reset (SAM-5 §7.7, §6.3.3).
    LogicalUnitReset,
    /// Every nexus's tasks on every unit, then a hard reset of each (SAM-5 §6.3.2).
    TargetWarmReset,
    /// As a warm reset; the transport also ends its sessions (RFC 7143 §11.5.1).
    TargetColdReset,
}

/// The service response of a task management function (SAM-5 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TmfResponse {
    FunctionComplete,
    /// The function names a logical unit the target does not have.
    IncorrectLun,
}

/// What a task management function did.
#[derive(Debug)]
#[must_use = "the response may be reported only once the aborted tasks have finished"]
pub struct TmfOutcome {
    pub response: TmfResponse,
    /// The aborted tasks that were executing: the response may go out only once each has
    /// fired, since a write reported aborted must not land afterwards (SAM-5 §7.2).
    pub wait: Vec<CancellationToken>,
}

impl TargetDevice {
    /// Performs `function` for `by`, addressed to `lun`. `abort_own` aborts the issuing
    /// nexus's tasks whose LUN the given predicate selects (the transport owns those: it
    /// may drop one still receiving its data) and returns what to wait for; it runs before
    /// the other nexuses' tasks are aborted and before any reset. ABORT TASK SET and CLEAR
    /// TASK SET addressed to a missing LUN do not run it; LOGICAL UNIT RESET runs it even
    /// then (the issuer's commands to that LUN go) and answers IncorrectLun.
    pub fn task_management(
        &self,
        by: &Nexus,
        function: Tmf,
        lun: u64,
        abort_own: impl FnOnce(&dyn Fn(u64) -> bool) -> Vec<CancellationToken>,
    ) -> TmfOutcome {
        let others = |n: &Nexus| *n != *by;
        match function {
            Tmf::AbortTaskSet | Tmf::ClearTaskSet => {
                let Some(lu) = self.lun(lun) else {
                    return TmfOutcome {
                        response: TmfResponse::IncorrectLun,
                        wait: Vec::new(),
                    };
                };
                let mut wait = abort_own(&|task_lun| task_lun == lun);
                if function == Tmf::ClearTaskSet {
                    wait.extend(lu.task_set().abort_where(by, others));
                }
                TmfOutcome {
                    response: TmfResponse::FunctionComplete,
                    wait,
                }
            }
            Tmf::LogicalUnitReset => {
                // The issuer's tasks on that LUN go even if the unit does not exist (any
                // command it sent there is answered by the target, not a unit).
                let mut wait = abort_own(&|task_lun| task_lun == lun);
                if let Some(lu) = self.lun(lun) {
                    wait.extend(lu.task_set().abort_where(by, others));
                }
                let response = if self.reset_lun(lun, by) {
                    TmfResponse::FunctionComplete
                } else {
                    TmfResponse::IncorrectLun
                };
                TmfOutcome { response, wait }
            }
            Tmf::TargetWarmReset | Tmf::TargetColdReset => {
                let mut wait = abort_own(&|_| true);
                for lu in self.luns() {
                    wait.extend(lu.task_set().abort_where(by, others));
                }
                self.reset_all(by);
                TmfOutcome {
                    response: TmfResponse::FunctionComplete,
                    wait,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::{Aborted, Membership, TaskFate};
    use crate::scsi::{LogicalUnit, LuIdentity};
    use crate::storage::MemoryBackend;

    const TARGET: &str = "iqn.2026-01.test:t";

    fn target(luns: &[u64]) -> TargetDevice {
        let target = TargetDevice::new(TARGET);
        for &lun in luns {
            target.add_lun(Arc::new(LogicalUnit::new(
                LuIdentity::derived(TARGET, lun),
                512,
                Some(Arc::new(MemoryBackend::new(1 << 20))),
                false,
            )));
        }
        target
    }

    /// A task of `nexus` on `lun`, started if `running`.
    fn task(
        target: &TargetDevice,
        nexus: &Arc<Nexus>,
        lun: u64,
        running: bool,
    ) -> (Arc<TaskFate>, CancellationToken, Membership) {
        let fate = TaskFate::new();
        let finished = CancellationToken::new();
        let lu = target.lun(lun).expect("the test's unit exists");
        let membership = lu
            .task_set()
            .join(nexus.clone(), fate.clone(), finished.clone());
        if running {
            fate.begin().expect("not aborted yet");
        }
        (fate, finished, membership)
    }

    #[test]
    fn abort_task_set_reaches_only_the_issuer_and_refuses_an_unknown_lun() {
        let t = target(&[0]);
        let (a, b) = (
            Arc::new(Nexus::for_test("a")),
            Arc::new(Nexus::for_test("b")),
        );
        let (fate_b, _, _mb) = task(&t, &b, 0, false);
        let mut asked = Vec::new();
        let out = t.task_management(&a, Tmf::AbortTaskSet, 0, |own| {
            asked.extend([own(0), own(1)]);
            Vec::new()
        });
        assert_eq!(out.response, TmfResponse::FunctionComplete);
        assert_eq!(asked, [true, false], "the issuer's tasks on that LUN only");
        assert_eq!(fate_b.begin(), Ok(()), "another nexus's task is untouched");

        let out = t.task_management(&a, Tmf::AbortTaskSet, 9, |_| unreachable!());
        assert_eq!(out.response, TmfResponse::IncorrectLun);
    }

    #[test]
    fn clear_task_set_and_resets_reach_other_nexuses_with_task_aborted() {
        let t = target(&[0, 1]);
        let (a, b) = (
            Arc::new(Nexus::for_test("a")),
            Arc::new(Nexus::for_test("b")),
        );
        let (queued, _, _m1) = task(&t, &b, 0, false);
        let (running, _, _m2) = task(&t, &b, 0, true);
        let (elsewhere, _, _m3) = task(&t, &b, 1, false);
        let out = t.task_management(&a, Tmf::ClearTaskSet, 0, |_| Vec::new());
        assert_eq!(out.response, TmfResponse::FunctionComplete);
        assert_eq!(out.wait.len(), 1, "only the executing task is waited for");
        assert_eq!(queued.begin(), Err(Aborted::Reported));
        assert_eq!(running.complete(), Err(Aborted::Reported));
        assert_eq!(elsewhere.begin(), Ok(()), "another unit's task set");

        let (other_unit, _, _m4) = task(&t, &b, 1, false);
        let out = t.task_management(&a, Tmf::LogicalUnitReset, 7, |own| {
            assert!(own(7) && !own(0));
            Vec::new()
        });
        assert_eq!(out.response, TmfResponse::IncorrectLun);
        let out = t.task_management(&a, Tmf::TargetWarmReset, 0, |own| {
            assert!(own(0) && own(1) && own(5));
            Vec::new()
        });
        assert_eq!(out.response, TmfResponse::FunctionComplete);
        assert_eq!(other_unit.begin(), Err(Aborted::Reported));
    }
}
