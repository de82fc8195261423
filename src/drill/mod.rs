//! `keel drill`: a failover drill against any iSCSI target (keel, tgt, ...).
//!
//! The drill is an initiator of its own: it logs in (always with the same ISID, so the
//! target sees one I_T nexus throughout), writes self-describing blocks ([`block`]) to a
//! bounded region of one LUN, records every acknowledged write ([`ledger`]) and reads them
//! back while it runs and at the end. When the connection drops or a command takes longer
//! than the command timeout, it reconnects with [`backoff`] and sends again every command
//! that was not answered, as an operating system's initiator does. Unit attentions and
//! BUSY are retried and counted. With a persistent-reservation key it registers (and
//! reserves) at the start and checks, after every reconnect, that the target still has
//! what it held.
//!
//! Everything that decides ([`block`], [`ledger`], [`backoff`], [`scsi`], [`report`]) is
//! sans-IO and unit tested; [`conn`] speaks iSCSI over TCP with keel's codec ([`crate::wire`])
//! and [`engine`] runs the drill. Nothing here imports the target side of keel.

pub mod backoff;
pub mod block;
pub mod conn;
pub mod engine;
pub mod ledger;
pub mod report;
pub mod scsi;

use std::sync::Arc;
use std::time::Duration;

pub use engine::run;
pub use report::Summary;
pub use scsi::ReservationType;

/// Where the drill writes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Random,
    Sequential,
}

/// Everything the drill is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// `host:port`.
    pub portal: String,
    pub target: String,
    pub lun: u64,
    pub initiator: String,
    /// How long to write; `None`: until stopped.
    pub duration: Option<Duration>,
    pub first_lba: u64,
    pub blocks: u64,
    pub pattern: Pattern,
    /// Commands in flight at once.
    pub queue_depth: usize,
    /// Every Nth new command reads back a recorded LBA instead of writing (0: never).
    pub read_every: u64,
    /// A full read-back of every recorded LBA this often while writing.
    pub verify_every: Option<Duration>,
    /// A full read-back right after each reconnect (before anything is written again).
    pub verify_on_reconnect: bool,
    /// A command without status after this long: the connection is given up.
    pub command_timeout: Duration,
    /// I/O stalls at least this long are reported as events.
    pub stall_report: Duration,
    pub pr_key: Option<u64>,
    pub reserve: Option<ReservationType>,
    /// Register and reserve again when a reconnect finds them gone.
    pub pr_reestablish: bool,
    /// Register with APTPL: the target is asked to keep the registration and reservation
    /// through a power loss (a restart).
    pub pr_aptpl: bool,
    /// Writes with FUA (forced unit access).
    pub fua: bool,
    /// After a stop (duration or signal): how long retries and the final read-back may take.
    pub grace: Duration,
    /// Print events on stdout as they happen.
    pub print_events: bool,
}

impl Options {
    /// The defaults for everything but where to connect.
    pub fn new(portal: &str, target: &str) -> Options {
        Options {
            portal: portal.to_string(),
            target: target.to_string(),
            lun: 0,
            initiator: DEFAULT_INITIATOR.to_string(),
            duration: Some(Duration::from_secs(60)),
            first_lba: 0,
            blocks: 1024,
            pattern: Pattern::Random,
            queue_depth: 1,
            read_every: 8,
            verify_every: None,
            verify_on_reconnect: true,
            command_timeout: Duration::from_secs(5),
            stall_report: Duration::from_millis(1000),
            pr_key: None,
            reserve: None,
            pr_reestablish: false,
            pr_aptpl: false,
            fua: false,
            grace: Duration::from_secs(60),
            print_events: true,
        }
    }

    /// Refuses contradictory or useless settings (a usage error, before anything is sent).
    pub fn validate(&self) -> Result<(), String> {
        if self.blocks == 0 {
            return Err("--blocks must be at least 1".into());
        }
        if self.first_lba.checked_add(self.blocks).is_none() {
            return Err("--first-lba + --blocks overflows".into());
        }
        if !(1..=128).contains(&self.queue_depth) {
            return Err("--queue-depth must be 1..128".into());
        }
        if self.reserve.is_some() && self.pr_key.is_none() {
            return Err("--reserve-type needs --pr-key".into());
        }
        if (self.pr_reestablish || self.pr_aptpl) && self.pr_key.is_none() {
            return Err("--pr-reestablish and --pr-aptpl need --pr-key".into());
        }
        if self.pr_key == Some(0) {
            return Err("--pr-key 0 is no key (SPC-4: zero unregisters)".into());
        }
        if self.command_timeout.is_zero() {
            return Err("--command-timeout must be above 0".into());
        }
        if self.lun > 0x3fff {
            return Err("--lun must be below 16384".into());
        }
        if !self.portal.contains(':') {
            return Err(format!("--portal {:?} is not HOST:PORT", self.portal));
        }
        Ok(())
    }
}

pub const DEFAULT_INITIATOR: &str = "iqn.2026-11.io.keel:keel-drill";

/// A reservation key from hex (`0x` optional), as sg_persist and the like print them.
pub fn parse_key(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 {
        return Err(format!("reservation key {text:?}: 1 to 16 hex digits"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("reservation key {text:?} is not hex"))
}

/// Why the drill could not run at all (as opposed to a drill that ran and failed).
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// The options do not fit the target (e.g. a region past the LU's end).
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Setup(String),
}

/// Asks a running drill to stop: the first request finishes cleanly (in-flight writes
/// settled, final read-back, report), a second one stops at once.
#[derive(Clone, Debug)]
pub struct Stop(Arc<tokio::sync::watch::Sender<u8>>);

impl Default for Stop {
    fn default() -> Self {
        Stop(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Stop {
    pub fn request(&self) {
        self.0.send_modify(|n| *n = n.saturating_add(1));
    }

    pub fn requested(&self) -> bool {
        *self.0.borrow() >= 1
    }

    pub fn aborted(&self) -> bool {
        *self.0.borrow() >= 2
    }

    /// How many stops were requested so far.
    pub fn level(&self) -> u8 {
        *self.0.borrow()
    }

    /// Resolves once more than `level` stops were requested (at once if already so).
    pub async fn beyond(&self, level: u8) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n > level).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hex() {
        assert_eq!(parse_key("0xABC"), Ok(0xabc));
        assert_eq!(parse_key("abc"), Ok(0xabc));
        assert_eq!(parse_key("ffffffffffffffff"), Ok(u64::MAX));
        assert!(parse_key("").is_err());
        assert!(parse_key("0x").is_err());
        assert!(parse_key("xyz").is_err());
        assert!(parse_key("1ffffffffffffffff").is_err());
    }

    #[test]
    fn contradictions_are_usage_errors() {
        let ok = Options::new("127.0.0.1:3260", "iqn.x");
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            Options {
                blocks: 0,
                ..ok.clone()
            },
            Options {
                queue_depth: 0,
                ..ok.clone()
            },
            Options {
                reserve: Some(ReservationType(5)),
                ..ok.clone()
            },
            Options {
                pr_key: Some(0),
                ..ok.clone()
            },
            Options {
                first_lba: u64::MAX,
                ..ok.clone()
            },
            Options {
                portal: "localhost".into(),
                ..ok.clone()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }

    #[tokio::test]
    async fn a_second_stop_aborts() {
        let stop = Stop::default();
        assert!(!stop.requested());
        let waiter = {
            let stop = stop.clone();
            tokio::spawn(async move { stop.beyond(0).await })
        };
        stop.request();
        waiter.await.unwrap();
        assert!(stop.requested() && !stop.aborted());
        stop.request();
        assert!(stop.aborted());
    }
}
