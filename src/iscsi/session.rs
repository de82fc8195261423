//! Sessions across connections: TSIH allocation and session reinstatement (RFC 7143 §6.3.5).
//!
//! A session is identified by (InitiatorName, ISID, TargetName). A new login with the same
//! triple and TSIH 0 replaces the old session: the old one is cancelled and the new login
//! completes once it has gone (bounded wait).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::ConnectionCounters;
use super::params::Negotiated;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub initiator: String,
    pub isid: [u8; 6],
    /// Empty for discovery sessions.
    pub target: String,
}

#[derive(Debug)]
struct Entry {
    tsih: u16,
    /// Cancelling it ends the session's connection.
    cancel: CancellationToken,
    /// Cancelled by the session's guard when it has ended.
    gone: CancellationToken,
    /// Set by the connection once its full feature phase begins.
    details: Option<SessionDetails>,
    /// The address the initiator reached this session on (its portal), once known.
    portal: Option<SocketAddr>,
    logout: Arc<LogoutSignal>,
}

/// A request that the session log out (RFC 7143 §11.9.1), from outside the connection:
/// the connection's driver hands it to its core, which sends the Async Message.
#[derive(Debug, Default)]
pub struct LogoutSignal {
    requested: CancellationToken,
    grace_secs: AtomicU64,
}

impl LogoutSignal {
    /// Fires once a logout has been requested.
    pub fn requested(&self) -> &CancellationToken {
        &self.requested
    }

    /// How long the initiator has to log out (meaningful once requested).
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs.load(Ordering::Acquire))
    }

    fn request(&self, grace: Duration) {
        if !self.requested.is_cancelled() {
            self.grace_secs.store(grace.as_secs(), Ordering::Release);
            self.requested.cancel();
        }
    }
}

/// What the session's connection tells the registry about itself, for status reports.
#[derive(Clone, Debug)]
pub struct SessionDetails {
    pub connection: ConnectionInfo,
    /// Negotiated for the session (RFC 7143 §13.13-13.15, §13.10, §13.11).
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// The connection's counters (commands in flight), written by its own thread only.
    pub counters: Option<Arc<ConnectionCounters>>,
}

impl SessionDetails {
    /// The details of a connection that negotiated `params`.
    pub fn new(cid: u16, peer: SocketAddr, local: SocketAddr, params: &Negotiated) -> Self {
        SessionDetails {
            connection: ConnectionInfo {
                cid,
                peer,
                local,
                header_digest: params.header_digest,
                data_digest: params.data_digest,
                initiator_max_recv_data_segment_length: params.initiator_max_recv,
                target_max_recv_data_segment_length: params.target_max_recv,
            },
            max_burst_length: params.max_burst,
            first_burst_length: params.first_burst,
            immediate_data: params.immediate_data,
            initial_r2t: params.initial_r2t,
            counters: None,
        }
    }
}

/// Which sessions [`SessionRegistry::request_logout`] reaches: those matching every field
/// given (none given: every session).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    pub target: Option<String>,
    pub initiator: Option<String>,
    pub tsih: Option<u16>,
    /// The local address the session's connection came in on.
    pub portal: Option<PortalMatch>,
}

/// Which local addresses a filter's portal reaches: one address and port, or every port of
/// one IP (a CTDB public address moves as an IP, whatever ports keel listens on there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalMatch {
    Address(SocketAddr),
    Ip(std::net::IpAddr),
}

impl PortalMatch {
    pub fn matches(&self, local: &SocketAddr) -> bool {
        match self {
            PortalMatch::Address(address) => address == local,
            // An IPv4 portal reached through a dual-stack socket shows as ::ffff:a.b.c.d.
            PortalMatch::Ip(ip) => local.ip().to_canonical() == ip.to_canonical(),
        }
    }
}

impl std::str::FromStr for PortalMatch {
    type Err = String;

    /// `10.0.0.1:3260`, `[::1]:3260`, or a bare IP (`10.0.0.1`, `::1`).
    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(PortalMatch::Address(address));
        }
        text.parse::<std::net::IpAddr>()
            .map(PortalMatch::Ip)
            .map_err(|_| {
                format!("{text:?} is not an address such as \"10.0.0.1:3260\" or an IP such as \"10.0.0.1\"")
            })
    }
}

impl std::fmt::Display for PortalMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortalMatch::Address(address) => write!(f, "{address}"),
            PortalMatch::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl SessionFilter {
    /// Every session of one target.
    pub fn target(name: &str) -> Self {
        SessionFilter {
            target: Some(name.to_string()),
            ..SessionFilter::default()
        }
    }

    fn matches(&self, key: &SessionKey, entry: &Entry) -> bool {
        self.target.as_ref().is_none_or(|t| *t == key.target)
            && self.initiator.as_ref().is_none_or(|i| *i == key.initiator)
            && self.tsih.is_none_or(|t| t == entry.tsih)
            && self
                .portal
                .is_none_or(|p| entry.portal.is_some_and(|local| p.matches(&local)))
    }
}

/// One connection of a session, as negotiated at its login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub cid: u16,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// CRC32C header and data digests (RFC 7143 §13.1).
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the most keel puts in one PDU (§13.12).
    pub initiator_max_recv_data_segment_length: u32,
    /// keel's: the most the initiator may put in one PDU.
    pub target_max_recv_data_segment_length: u32,
}

/// One registered session, for status reports and `session list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// Empty for a discovery session.
    pub target: String,
    /// Empty until the login's connection has entered its full feature phase.
    pub connections: Vec<ConnectionInfo>,
    /// Negotiated MaxBurstLength, FirstBurstLength, ImmediateData and InitialR2T (0 and
    /// false before the connection has reported them).
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Commands the session has received and not yet finished.
    pub commands_in_flight: u64,
}

#[derive(Debug, Default)]
pub struct SessionRegistry {
    inner: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    sessions: HashMap<SessionKey, Entry>,
    last_tsih: u16,
}

/// Held by a running session; dropping it deregisters the session.
#[derive(Debug)]
pub struct SessionGuard<'a> {
    registry: &'a SessionRegistry,
    key: SessionKey,
    pub tsih: u16,
    pub cancel: CancellationToken,
    /// Fires when the target asks this session to log out.
    pub logout: Arc<LogoutSignal>,
    gone: CancellationToken,
}

impl SessionGuard<'_> {
    /// Records the address the initiator reached this session on (a filter of
    /// [`SessionRegistry::request_logout`]).
    pub fn set_portal(&self, portal: SocketAddr) {
        self.update(|entry| entry.portal = Some(portal));
    }

    /// Records what the session's connection negotiated, for [`SessionRegistry::list`].
    pub fn describe(&self, details: SessionDetails) {
        self.update(|entry| entry.details = Some(details));
    }

    /// Changes this session's entry (if a reinstatement has not replaced it already).
    fn update(&self, change: impl FnOnce(&mut Entry)) {
        let mut inner = self.registry.lock();
        if let Some(entry) = inner
            .sessions
            .get_mut(&self.key)
            .filter(|e| e.tsih == self.tsih)
        {
            change(entry);
        }
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if inner
            .sessions
            .get(&self.key)
            .is_some_and(|e| e.tsih == self.tsih)
        {
            inner.sessions.remove(&self.key);
        }
        self.gone.cancel();
    }
}

/// How long a reinstating login waits for the old session to finish its in-flight work,
/// inside open-iscsi's 15 s login timeout.
const REINSTATE_WAIT: Duration = Duration::from_secs(12);

/// Why a session could not be admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The session being replaced still has commands in the backend: running the new one
    /// beside them could let an old write land after a new one.
    OldSessionBusy,
    /// Every TSIH is in use.
    NoTsih,
    /// The initiator already holds `max_sessions_per_initiator` sessions.
    TooManySessions,
}

impl std::fmt::Display for AdmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdmitError::OldSessionBusy => "the session being reinstated is still busy",
            AdmitError::NoTsih => "every TSIH is in use",
            AdmitError::TooManySessions => "max_sessions_per_initiator reached",
        })
    }
}

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new session, first ending any session with the same key and waiting until
    /// all of its commands have finished (RFC 7143 §6.3.5: the old tasks end before the new
    /// session runs).
    pub async fn admit(&self, key: SessionKey) -> Result<SessionGuard<'_>, AdmitError> {
        self.admit_limited(key, usize::MAX).await
    }

    /// [`Self::admit`], refusing the session if its initiator already holds `max` others (a
    /// reinstated session does not count against its replacement).
    pub async fn admit_limited(
        &self,
        key: SessionKey,
        max: usize,
    ) -> Result<SessionGuard<'_>, AdmitError> {
        let old = self
            .lock()
            .sessions
            .get(&key)
            .map(|e| (e.cancel.clone(), e.gone.clone()));
        if let Some((cancel, gone)) = old {
            tracing::info!(initiator = %key.initiator, target = %key.target, "reinstating session: ending the old one");
            cancel.cancel();
            if tokio::time::timeout(REINSTATE_WAIT, gone.cancelled())
                .await
                .is_err()
            {
                tracing::warn!(
                    "old session still has commands in the backend; refusing the new login for now"
                );
                return Err(AdmitError::OldSessionBusy);
            }
        }
        let mut inner = self.lock();
        let others = inner
            .sessions
            .keys()
            .filter(|k| k.initiator == key.initiator && **k != key)
            .count();
        if others >= max {
            return Err(AdmitError::TooManySessions);
        }
        let tsih = inner.allocate_tsih().ok_or(AdmitError::NoTsih)?;
        let cancel = CancellationToken::new();
        let gone = CancellationToken::new();
        let logout = Arc::new(LogoutSignal::default());
        inner.sessions.insert(
            key.clone(),
            Entry {
                tsih,
                cancel: cancel.clone(),
                gone: gone.clone(),
                details: None,
                portal: None,
                logout: logout.clone(),
            },
        );
        Ok(SessionGuard {
            registry: self,
            key,
            tsih,
            cancel,
            logout,
            gone,
        })
    }

    /// Whether a session with this TSIH exists.
    pub fn tsih_exists(&self, tsih: u16) -> bool {
        self.lock().sessions.values().any(|e| e.tsih == tsih)
    }

    /// Ends every session to `target` (TARGET COLD RESET).
    pub fn cancel_target(&self, target: &str) {
        for (key, entry) in self.lock().sessions.iter() {
            if key.target == target {
                entry.cancel.cancel();
            }
        }
    }

    /// Asks every session `filter` matches to log out within `grace` (an Async Message,
    /// RFC 7143 §11.9.1; dropped if it has not by then). Returns how many were asked.
    pub fn request_logout(&self, filter: &SessionFilter, grace: Duration) -> usize {
        let inner = self.lock();
        let matching = inner
            .sessions
            .iter()
            .filter(|(key, entry)| filter.matches(key, entry));
        let mut asked = 0;
        for (_, entry) in matching {
            entry.logout.request(grace);
            asked += 1;
        }
        asked
    }

    /// Ends every session `filter` matches at once, without asking (its portal's address is
    /// gone: a CTDB public IP released from this node). Returns how many.
    pub fn close(&self, filter: &SessionFilter) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for (_, entry) in inner.sessions.iter().filter(|(k, e)| filter.matches(k, e)) {
            entry.cancel.cancel();
            closed += 1;
        }
        closed
    }

    /// Ends at once every session whose portal (keel's local address) `on` accepts; how many.
    pub fn close_where(&self, on: impl Fn(Option<SocketAddr>) -> bool) -> usize {
        let inner = self.lock();
        let mut closed = 0;
        for entry in inner.sessions.values().filter(|e| on(e.portal)) {
            entry.cancel.cancel();
            closed += 1;
        }
        closed
    }

    /// How many sessions `filter` matches.
    pub fn count_matching(&self, filter: &SessionFilter) -> usize {
        let inner = self.lock();
        inner
            .sessions
            .iter()
            .filter(|(key, entry)| filter.matches(key, entry))
            .count()
    }

    pub fn count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Every registered session, ordered by target, initiator and ISID.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = self
            .lock()
            .sessions
            .iter()
            .map(|(key, entry)| {
                let details = entry.details.as_ref();
                SessionInfo {
                    initiator: key.initiator.clone(),
                    isid: key.isid,
                    tsih: entry.tsih,
                    target: key.target.clone(),
                    connections: details.map(|d| d.connection.clone()).into_iter().collect(),
                    max_burst_length: details.map_or(0, |d| d.max_burst_length),
                    first_burst_length: details.map_or(0, |d| d.first_burst_length),
                    immediate_data: details.is_some_and(|d| d.immediate_data),
                    initial_r2t: details.is_some_and(|d| d.initial_r2t),
                    commands_in_flight: details
                        .and_then(|d| d.counters.as_ref())
                        .map_or(0, |c| c.in_flight()),
                }
            })
            .collect();
        sessions.sort_by(|a, b| {
            (&a.target, &a.initiator, a.isid).cmp(&(&b.target, &b.initiator, b.isid))
        });
        sessions
    }
}

impl Registry {
    fn allocate_tsih(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.last_tsih = self.last_tsih.wrapping_add(1);
            // TSIH 0 means "new session" on the wire, so it is never assigned.
            let candidate = self.last_tsih;
            if candidate != 0 && !self.sessions.values().any(|e| e.tsih == candidate) {
                return Some(candidate);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(isid: u8) -> SessionKey {
        SessionKey {
            initiator: "iqn.x:i".into(),
            isid: [isid, 0, 0, 0, 0, 1],
            target: "iqn.t".into(),
        }
    }

    #[tokio::test]
    async fn tsihs_are_unique_and_freed() {
        let reg = SessionRegistry::default();
        let a = reg.admit(key(1)).await.unwrap();
        let b = reg.admit(key(2)).await.unwrap();
        assert_ne!(a.tsih, b.tsih);
        assert_ne!(a.tsih, 0);
        assert!(reg.tsih_exists(a.tsih));
        drop(a);
        assert_eq!(reg.count(), 1);
    }

    #[tokio::test]
    async fn logout_requests_reach_the_sessions_the_filter_matches() {
        let reg = SessionRegistry::default();
        let a = reg.admit(key(1)).await.unwrap();
        let other_target = SessionKey {
            target: "iqn.other".into(),
            ..key(2)
        };
        let b = reg.admit(other_target).await.unwrap();
        let portal: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        b.set_portal(portal);
        let grace = Duration::from_secs(7);

        assert_eq!(
            reg.request_logout(&SessionFilter::target("iqn.none"), grace),
            0
        );
        let by_portal = SessionFilter {
            portal: Some(PortalMatch::Address(portal)),
            ..SessionFilter::default()
        };
        let other_port = SessionFilter {
            portal: Some("127.0.0.1:3261".parse().unwrap()),
            ..SessionFilter::default()
        };
        let by_ip = SessionFilter {
            portal: Some("127.0.0.1".parse().unwrap()),
            ..SessionFilter::default()
        };
        assert_eq!(reg.count_matching(&other_port), 0);
        assert_eq!(reg.count_matching(&by_ip), 1);
        assert_eq!(reg.request_logout(&by_portal, grace), 1);
        assert!(b.logout.requested().is_cancelled());
        assert_eq!(b.logout.grace(), grace);
        assert!(!a.logout.requested().is_cancelled());

        let by_tsih = SessionFilter {
            initiator: Some("iqn.x:i".into()),
            tsih: Some(a.tsih),
            ..SessionFilter::default()
        };
        assert_eq!(reg.request_logout(&by_tsih, Duration::from_secs(3)), 1);
        assert_eq!(a.logout.grace(), Duration::from_secs(3));
        // A second request keeps the first grace.
        assert_eq!(reg.request_logout(&SessionFilter::default(), grace), 2);
        assert_eq!(a.logout.grace(), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn list_shows_what_the_connection_negotiated() {
        let reg = SessionRegistry::default();
        let a = reg.admit(key(1)).await.unwrap();
        let _b = reg.admit(key(2)).await.unwrap();
        let settings = crate::iscsi::Settings::default();
        let mut params = Negotiated::defaults(&settings);
        params.data_digest = true;
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        a.describe(SessionDetails::new(7, peer, local, &params));
        let list = reg.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].tsih, a.tsih);
        assert_eq!(list[0].isid, [1, 0, 0, 0, 0, 1]);
        assert_eq!(list[0].target, "iqn.t");
        let conn = &list[0].connections[0];
        assert_eq!((conn.cid, conn.peer, conn.local), (7, peer, local));
        assert!(conn.data_digest && !conn.header_digest);
        assert_eq!(list[0].max_burst_length, params.max_burst);
        assert_eq!(list[0].first_burst_length, params.first_burst);
        // Admitted, not yet in its full feature phase: no connection yet.
        assert!(list[1].connections.is_empty());
    }

    #[tokio::test]
    async fn same_key_reinstates_the_old_session() {
        let reg = std::sync::Arc::new(SessionRegistry::default());
        let old = reg.admit(key(1)).await.unwrap();
        let old_cancel = old.cancel.clone();
        let reg2 = reg.clone();
        let waiter = tokio::spawn(async move {
            let new = reg2.admit(key(1)).await.unwrap();
            assert!(reg2.tsih_exists(new.tsih));
            new.tsih
        });
        old_cancel.cancelled().await;
        let old_tsih = old.tsih;
        drop(old);
        let new_tsih = waiter.await.unwrap();
        assert_ne!(new_tsih, old_tsih);
        assert_eq!(reg.count(), 0);
    }
}
