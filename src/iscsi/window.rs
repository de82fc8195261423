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
    /// The highest MaxCmdSN ever sent: the initiator may use the window up to it (it ignores
    /// lower values, §4.2.2.1), so commands are judged against it, not the live value.
    advertised: AtomicU32,
}

impl CmdWindow {
    pub fn new(first_cmd_sn: u32, depth: u32) -> Self {
        let depth = depth.max(1);
        CmdWindow {
            exp_cmd_sn: AtomicU32::new(first_cmd_sn),
            in_flight: AtomicU32::new(0),
            depth,
            // What the login responses announced.
            advertised: AtomicU32::new(first_cmd_sn.wrapping_add(depth - 1)),
        }
    }

    /// The MaxCmdSN to put in an outgoing PDU: the current window, never below what was
    /// already announced.
    pub fn announce(&self) -> u32 {
        let current = self.max_cmd_sn();
        let previous = self
            .advertised
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |adv| {
                crate::wire::sn_lt(adv, current).then_some(current)
            })
            .unwrap_or_else(|adv| adv);
        if crate::wire::sn_lt(previous, current) {
            current
        } else {
            previous
        }
    }

    /// Whether a non-immediate command with this CmdSN is inside the window the initiator
    /// was given: ExpCmdSN ..= announced MaxCmdSN.
    pub fn admits(&self, cmd_sn: u32) -> bool {
        crate::wire::sn_le(self.exp_cmd_sn(), cmd_sn)
            && crate::wire::sn_le(cmd_sn, self.advertised.load(Ordering::Acquire))
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
    fn announced_window_never_shrinks_and_bounds_admission() {
        let w = CmdWindow::new(1, 2);
        assert_eq!(w.announce(), 2);
        assert!(w.admits(1) && w.admits(2) && !w.admits(3) && !w.admits(0));
        w.occupy(); // an immediate command takes a slot: the live window shrinks...
        assert_eq!(w.max_cmd_sn(), 1);
        // ...but what was announced stays valid.
        assert_eq!(w.announce(), 2);
        assert!(w.admits(2));
        w.complete();
        w.accept(true);
        w.accept(true);
        w.complete();
        w.complete();
        assert_eq!(w.announce(), 4);
        assert!(w.admits(4) && !w.admits(2));
    }

    #[test]
    fn wraps_around_zero() {
        let w = CmdWindow::new(u32::MAX, 4);
        w.accept(false);
        assert_eq!(w.exp_cmd_sn(), 0);
        assert_eq!(w.max_cmd_sn(), 3);
    }
}
