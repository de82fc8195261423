//! Connection and session limits ([`Limits`]) and the counting of connections against them:
//! overall and per initiator address. (Sessions per initiator name are counted by the
//! session registry.)
//!
//! A connection over a limit is not dropped at accept: keel reads its first Login Request,
//! waits [`REFUSE_DELAY`], and answers status 0x0302 (out of resources, RFC 7143 §11.13.5).
//! The initiator learns why; the delay matters because open-iscsi retries class-3 refusals
//! at once, without backoff.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long keel holds a refusal for exceeded limits before answering it.
pub const REFUSE_DELAY: Duration = Duration::from_secs(1);

/// Refusal limits for connections and sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections keel serves at once, over all portals.
    pub max_connections: u32,
    /// Connections from one initiator IP address at once.
    pub max_connections_per_address: u32,
    /// Sessions (normal and discovery) one initiator name may hold at once.
    pub max_sessions_per_initiator: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 512,
            max_sessions_per_initiator: 256,
        }
    }
}

/// Which limit a connection exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverLimit {
    Connections(u32),
    ConnectionsPerAddress(u32),
}

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverLimit::Connections(n) => write!(f, "max_connections ({n}) reached"),
            OverLimit::ConnectionsPerAddress(n) => {
                write!(
                    f,
                    "max_connections_per_address ({n}) reached for this address"
                )
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct ConnectionCounter {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_address: HashMap<IpAddr, u32>,
}

/// A counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct ConnectionSlot<'a> {
    counter: &'a ConnectionCounter,
    ip: IpAddr,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        let mut c = self.counter.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.ip);
            }
        }
    }
}

impl ConnectionCounter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a new connection from `ip`, unless that would exceed a limit.
    pub fn acquire(&self, ip: IpAddr, limits: &Limits) -> Result<ConnectionSlot<'_>, OverLimit> {
        let ip = ip.to_canonical();
        let mut c = self.lock();
        if c.total >= limits.max_connections {
            return Err(OverLimit::Connections(limits.max_connections));
        }
        let from_ip = c.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= limits.max_connections_per_address {
            return Err(OverLimit::ConnectionsPerAddress(
                limits.max_connections_per_address,
            ));
        }
        c.total += 1;
        c.per_address.insert(ip, from_ip + 1);
        Ok(ConnectionSlot { counter: self, ip })
    }

    pub fn total(&self) -> u32 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_and_slots_free_on_drop() {
        let limits = Limits {
            max_connections: 3,
            max_connections_per_address: 2,
            max_sessions_per_initiator: 1,
        };
        let c = ConnectionCounter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let a1 = c.acquire(a, &limits).unwrap();
        let _a2 = c.acquire(a, &limits).unwrap();
        assert_eq!(
            c.acquire(a, &limits).unwrap_err(),
            OverLimit::ConnectionsPerAddress(2)
        );
        let _b1 = c.acquire(b, &limits).unwrap();
        assert_eq!(
            c.acquire("10.0.0.3".parse().unwrap(), &limits).unwrap_err(),
            OverLimit::Connections(3)
        );
        drop(a1);
        assert_eq!(c.total(), 2);
        let _a3 = c.acquire(a, &limits).unwrap();
        // The IPv4-mapped form counts as the plain IPv4 address.
        assert!(c.acquire("10.0.0.2".parse().unwrap(), &limits).is_err());
    }
}
