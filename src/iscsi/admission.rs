//! Whether this server takes logins now. Open unless something above closes it: in a CTDB
//! cluster (issue 14), a node that has lost the majority or its ctdbd must not answer on
//! the cluster's addresses, and one coming back must first reload the reservation tables
//! the others changed meanwhile. A login arriving while
//! it is closed is held (bounded) rather than refused: it goes on once the node is fit, or
//! its connection is dropped without an answer, so the initiator retries (no status class 3,
//! which open-iscsi retries at once, and no class 2, which it treats as final).

use std::time::Duration;

use tokio::sync::watch;

/// The login gate: `None` open, `Some(reason)` closed.
#[derive(Debug)]
pub struct Admission {
    state: watch::Sender<Option<String>>,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            state: watch::channel(None).0,
        }
    }
}

impl Admission {
    /// Opens the gate: held logins go on.
    pub fn open(&self) {
        self.state.send_replace(None);
    }

    /// Closes the gate for `reason` (logged with each login held).
    pub fn close(&self, reason: impl Into<String>) {
        self.state.send_replace(Some(reason.into()));
    }

    /// Why logins are held now; `None` when they are not.
    pub fn closed_because(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// Waits until the gate is open, at most `limit`; whether it is.
    pub async fn wait_open(&self, limit: Duration) -> bool {
        let mut state = self.state.subscribe();
        tokio::time::timeout(limit, state.wait_for(Option::is_none))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_login_goes_on_when_the_gate_opens_or_gives_up_at_the_limit() {
        let gate = std::sync::Arc::new(Admission::default());
        assert!(gate.closed_because().is_none());
        assert!(gate.wait_open(Duration::from_secs(1)).await);
        gate.close("node lost the majority");
        assert_eq!(
            gate.closed_because().as_deref(),
            Some("node lost the majority")
        );
        assert!(!gate.wait_open(Duration::from_secs(1)).await);
        let opener = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            opener.open();
        });
        assert!(gate.wait_open(Duration::from_secs(10)).await);
    }
}
