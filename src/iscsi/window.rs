//! The command window (RFC 7143 §4.2.2.1): ExpCmdSN and MaxCmdSN as the initiator sees them.
//!
//! The connection's reader advances ExpCmdSN as commands arrive; commands in flight shrink the
//! window so a session never has more than `depth` commands queued. MaxCmdSN =
//! ExpCmdSN - 1 + depth - in_flight never decreases: accepting a command raises ExpCmdSN and
//! in_flight together, completing one lowers in_flight.

use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug)]
pub struct CmdWindow {
    exp_cmd_sn: AtomicU32,
    in_flight: AtomicU32,
    depth: u32,
}

impl CmdWindow {
    pub fn new(first_cmd_sn: u32, depth: u32) -> Self {
        CmdWindow {
            exp_cmd_sn: AtomicU32::new(first_cmd_sn),
            in_flight: AtomicU32::new(0),
            depth: depth.max(1),
        }
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.load(Ordering::Acquire)
    }

    pub fn max_cmd_sn(&self) -> u32 {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let open = self.depth.saturating_sub(in_flight);
        // Serial arithmetic: MaxCmdSN = ExpCmdSN - 1 when the window is closed (§4.2.2.1).
        self.exp_cmd_sn().wrapping_sub(1).wrapping_add(open)
    }

    /// A non-immediate command with the expected CmdSN was accepted. `counts` is true for
    /// commands that occupy a slot until they complete (SCSI commands).
    pub fn accept(&self, counts: bool) {
        if counts {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        self.exp_cmd_sn.fetch_add(1, Ordering::AcqRel);
    }

    /// An immediate SCSI command occupies a slot without advancing ExpCmdSN.
    pub fn occupy(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// A command that occupied a slot finished (or was aborted).
    pub fn complete(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_cmd_sn_never_decreases_and_closes_when_full() {
        let w = CmdWindow::new(10, 2);
        assert_eq!(w.max_cmd_sn(), 11);
        w.accept(true);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (11, 11));
        w.accept(true);
        // Full: MaxCmdSN = ExpCmdSN - 1, the initiator must wait.
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (12, 11));
        w.complete();
        assert_eq!(w.max_cmd_sn(), 12);
        w.complete();
        w.complete();
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn wraps_around_zero() {
        let w = CmdWindow::new(u32::MAX, 4);
        w.accept(false);
        assert_eq!(w.exp_cmd_sn(), 0);
        assert_eq!(w.max_cmd_sn(), 3);
    }
}
