//! keel as a CTDB client, the way smbd is one (issue 14): one connection to the local
//! ctdbd for the server's whole life, which
//! - registers every accepted iSCSI connection (CTDB_CONTROL_TCP_CLIENT): ctdbd broadcasts
//!   it to every node at once, so the node that takes the address over tickle-ACKs the
//!   initiator, which then reconnects at once instead of waiting for its own timeout;
//! - closes exactly the sessions of an address this node released (CTDB_SRVID_RELEASE_IP):
//!   the address is gone, so they can only go on elsewhere;
//! - reconnects when ctdbd restarts, and then subscribes and registers the live connections
//!   again (ctdbd forgets a client's registrations when its socket closes).
//!
//! The accept loop hands each connection to [`ClusterLink::accepted`]; the returned
//! [`TrackedConnection`] reports the close when the connection's task drops it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::build::ReservationChanges;
use crate::cluster::ClusterSettings;
use crate::cluster::ctdb::protocol::node;
use crate::cluster::ctdb::{ClientConfig, ClusterEvent, ClusterEvents, CtdbClient, SharedClient};
use crate::iscsi::{PortalMatch, Service, SessionFilter};

/// keel's srvid on every node: "the reservation table of unit X changed" (the payload is
/// the unit's key, its NAA designator in hex). ASCII "keelPR" in the high bytes, away from
/// the ranges samba reserves (0xF0.. and process ids).
const RESERVATIONS_CHANGED: u64 = 0x6B65_656C_5052_0001;

/// How often this node's standing in the cluster is read (two controls to the local
/// ctdbd): the longest a node cut off keeps serving before it notices.
const FITNESS_EVERY: Duration = Duration::from_secs(1);

/// How often a lost ctdbd is tried again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

enum LinkEvent {
    Accepted { local: SocketAddr, peer: SocketAddr },
    Closed { local: SocketAddr, peer: SocketAddr },
}

/// The accept loop's side of the cluster link.
#[derive(Clone, Debug)]
pub struct ClusterLink {
    events: mpsc::UnboundedSender<LinkEvent>,
}

impl std::fmt::Debug for LinkEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkEvent::Accepted { local, peer } => write!(f, "accepted {peer} -> {local}"),
            LinkEvent::Closed { local, peer } => write!(f, "closed {peer} -> {local}"),
        }
    }
}

/// An accepted connection the cluster knows of; dropping it reports the close.
#[derive(Debug)]
pub struct TrackedConnection {
    events: mpsc::UnboundedSender<LinkEvent>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Drop for TrackedConnection {
    fn drop(&mut self) {
        let _ = self.events.send(LinkEvent::Closed {
            local: self.local,
            peer: self.peer,
        });
    }
}

impl ClusterLink {
    /// Starts the CTDB client task of `service`; it ends when the service shuts down.
    /// `changes` names the units whose reservation tables this node changed: the other
    /// nodes are told, so one serving the same unit through another address reloads it.
    ///
    /// Logins are held until the node is connected to ctdbd and may serve (see
    /// [`check_fitness`]); `client` holds the connection while there is one.
    pub fn start(
        settings: &ClusterSettings,
        service: Arc<Service>,
        changes: Option<ReservationChanges>,
        client: SharedClient,
    ) -> ClusterLink {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = ClientConfig {
            socket: settings.socket.clone(),
            timeout: settings.timeout,
        };
        let changes = changes.unwrap_or_else(|| mpsc::unbounded_channel().1);
        service.admission.close("not connected to ctdbd yet");
        tokio::spawn(run(config, service, rx, changes, client));
        ClusterLink { events: tx }
    }

    /// A connection was accepted: register it (without delaying the connection).
    pub fn accepted(&self, local: SocketAddr, peer: SocketAddr) -> TrackedConnection {
        let _ = self.events.send(LinkEvent::Accepted { local, peer });
        TrackedConnection {
            events: self.events.clone(),
            local,
            peer,
        }
    }
}

async fn run(
    config: ClientConfig,
    service: Arc<Service>,
    mut link: mpsc::UnboundedReceiver<LinkEvent>,
    mut changes: ReservationChanges,
    slot: SharedClient,
) {
    let shutdown = service.shutdown.clone();
    let mut live: HashSet<(SocketAddr, SocketAddr)> = HashSet::new();
    let mut warned = false;
    loop {
        // Not connected: keep the live set current and try ctdbd again every second.
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = link.recv() => {
                let Some(event) = event else { return };
                note(&mut live, event);
                continue;
            }
            Some(unit) = changes.recv() => {
                // Cannot be: a change commits only through ctdbd. Nobody to tell.
                warn!(unit, "reservation change while ctdbd is unreachable: other nodes reload it when they take an address over");
                continue;
            }
            connected = CtdbClient::connect(&config) => connected,
        };
        let (client, events) = match connected {
            Ok(c) => c,
            Err(e) => {
                if !warned {
                    warn!(socket = %config.socket.display(), "cannot reach ctdbd (retrying every {RECONNECT_EVERY:?}): {e}");
                    warned = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RECONNECT_EVERY) => {}
                }
                continue;
            }
        };
        warned = false;
        let subscribed = match client.subscribe_ip_events().await {
            Ok(()) => client.register_srvid(RESERVATIONS_CHANGED).await,
            Err(e) => Err(e),
        };
        if let Err(e) = subscribed {
            warn!("ctdbd: cannot subscribe to its messages (trying again): {e}");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_EVERY) => {}
            }
            continue;
        }
        info!(
            pnn = client.pnn(),
            connections = live.len(),
            "connected to ctdbd"
        );
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        for (local, peer) in &live {
            register(&client, *local, *peer).await;
        }
        let channels = Channels {
            link: &mut link,
            changes: &mut changes,
        };
        if serve(&client, events, &service, channels, &mut live)
            .await
            .is_break()
        {
            return;
        }
        *slot.write().unwrap_or_else(|e| e.into_inner()) = None;
        // A node without its ctdbd is no member: the others take its addresses over.
        unfit(&service, "lost the connection to ctdbd");
        warn!("ctdbd went away; reconnecting");
    }
}

/// Whether this node may serve, checked every [`FITNESS_EVERY`]: when it may not (cut off
/// from the majority), logins are held and its sessions closed; when it may again, the
/// reservation tables are reloaded (the others may have changed them meanwhile) before
/// logins are taken. A node that rejoins meets a recovery first: the reload waits for the
/// first check after it (the tables cannot be read while it runs, and this loop must not
/// wait: it also delivers RELEASE_IP).
async fn check_fitness(client: &CtdbClient, service: &Service) {
    let (verdict, recovery_normal) = match client.view().await {
        Ok(view) => (view.may_serve(), view.recovery_normal),
        Err(e) => {
            warn!("cannot read the cluster's state: {e}");
            return;
        }
    };
    match (verdict, service.admission.closed_because()) {
        (Ok(()), Some(_)) if !recovery_normal => {}
        (Ok(()), Some(was)) => {
            reload_tables(service.targets.list(), Tables::All).await;
            service.admission.open();
            info!(%was, "this node may serve: reservation tables reloaded, logins taken");
        }
        (Err(why), None) => unfit(service, &why),
        _ => {}
    }
}

/// Holds logins and closes the sessions that came in on the cluster's addresses (every
/// address but loopback): a node that may not serve must not keep answering, nor keep
/// sending from an address another node has taken over.
fn unfit(service: &Service, why: &str) {
    if service.admission.closed_because().is_some() {
        return;
    }
    service.admission.close(why);
    let closed = service
        .sessions
        .close_where(|portal| portal.is_some_and(|p| !p.ip().is_loopback()));
    warn!(
        reason = why,
        sessions = closed,
        "this node may not serve: logins held, sessions closed"
    );
}

/// What the server tells the cluster task.
struct Channels<'a> {
    link: &'a mut mpsc::UnboundedReceiver<LinkEvent>,
    changes: &'a mut ReservationChanges,
}

/// Serves one ctdbd connection until it ends (Continue) or the server shuts down (Break).
async fn serve(
    client: &CtdbClient,
    mut events: ClusterEvents,
    service: &Service,
    channels: Channels<'_>,
    live: &mut HashSet<(SocketAddr, SocketAddr)>,
) -> std::ops::ControlFlow<()> {
    let Channels { link, changes } = channels;
    let shutdown = service.shutdown.clone();
    let mut fitness = tokio::time::interval(FITNESS_EVERY);
    fitness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return std::ops::ControlFlow::Break(()),
            _ = fitness.tick() => check_fitness(client, service).await,
            Some(unit) = changes.recv() => {
                // Every connected node; the message names its origin, which ignores it.
                let message = format!("{unit}@{}", client.pnn());
                if let Err(e) = client
                    .send_message(node::BROADCAST_CONNECTED, RESERVATIONS_CHANGED, message.as_bytes())
                    .await
                {
                    warn!(unit, "cannot tell the other nodes of a reservation change: {e}");
                }
            }
            event = link.recv() => {
                let Some(event) = event else { return std::ops::ControlFlow::Break(()) };
                if let LinkEvent::Accepted { local, peer } = event {
                    register(client, local, peer).await;
                }
                note(live, event);
            }
            event = events.recv() => match event {
                Some(ClusterEvent::ReleaseIp(ip)) => {
                    let filter = SessionFilter {
                        portal: Some(PortalMatch::Ip(ip)),
                        ..SessionFilter::default()
                    };
                    let closed = service.sessions.close(&filter);
                    info!(%ip, sessions = closed, "ctdb released the address: its sessions closed");
                }
                Some(ClusterEvent::TakeIp(ip)) => {
                    // The event script's takeip reloaded the tables before the address was
                    // up; this is the fallback when the script is not installed (ctdbd
                    // sends TAKE_IP after the address is up, so a client may come first).
                    info!(%ip, "ctdb took the address over; reloading reservation tables");
                    // Served here now: a redirection left from moving it away is over.
                    service.redirects.clear(ip);
                    tokio::spawn(reload_tables(service.targets.list(), Tables::All));
                }
                Some(ClusterEvent::Message { srvid: RESERVATIONS_CHANGED, data }) => {
                    match change_message(&data) {
                        Some((_, origin)) if origin == client.pnn() => {}
                        Some((unit, _)) => {
                            let (targets, unit) = (service.targets.list(), unit.to_owned());
                            tokio::spawn(async move { reload_tables(targets, Tables::Changed(&unit)).await });
                        }
                        None => warn!("a reservation change message names no unit: {} bytes", data.len()),
                    }
                }
                Some(ClusterEvent::Message { srvid, .. }) => debug!(srvid, "ctdb message ignored"),
                Some(ClusterEvent::Disconnected) | None => return std::ops::ControlFlow::Continue(()),
            },
        }
    }
}

fn note(live: &mut HashSet<(SocketAddr, SocketAddr)>, event: LinkEvent) {
    match event {
        LinkEvent::Accepted { local, peer } => {
            live.insert((local, peer));
        }
        LinkEvent::Closed { local, peer } => {
            live.remove(&(local, peer));
        }
    }
}

/// Registers one connection. ctdbd refuses a public address this node does not host (a
/// connection that raced the address's release: it ends with the release) and ignores
/// addresses that are not public (node addresses, loopback).
async fn register(client: &CtdbClient, local: SocketAddr, peer: SocketAddr) {
    match client.tcp_client_register(local, peer).await {
        Ok(()) => debug!(%local, %peer, "registered with ctdbd"),
        Err(e) => info!(%local, %peer, "ctdbd did not register the connection: {e}"),
    }
}

/// Which units [`reload_tables`] reloads.
pub(super) enum Tables<'a> {
    /// Every unit: this node takes an address over, or may serve again.
    All,
    /// The unit with this reservation key, after another node changed it: the unit
    /// attentions the change owes to this node's nexuses are established too.
    Changed(&'a str),
}

/// Reloads the reservation tables of the units kept in the cluster; returns how many were
/// reloaded and, for each that could not be, why. The one loop behind `keel reservations
/// reload` (the event script's takeip), TAKE_IP, a node becoming fit again and another
/// node's change.
pub(super) async fn reload_tables(
    targets: Vec<Arc<crate::iscsi::Target>>,
    which: Tables<'_>,
) -> (usize, Vec<String>) {
    let (mut reloaded, mut failed) = (0, Vec::new());
    for target in targets {
        for lu in target.device.luns() {
            let notify = match which {
                Tables::All => false,
                Tables::Changed(unit) if lu.reservation_key() == unit => true,
                Tables::Changed(_) => continue,
            };
            match lu.reload_reservations(notify).await {
                Ok(true) => reloaded += 1,
                Ok(false) => {}
                Err(e) => {
                    warn!(target = %target.name, lun = lu.lun(), "cannot reload reservations: {e}");
                    failed.push(format!("{} LUN {}: {e}", target.name, lu.lun()));
                }
            }
        }
    }
    (reloaded, failed)
}

/// What a reservation change message says: `UNIT@PNN`, the unit's key (32 hex digits, an
/// NAA designator) and the node that made the change.
fn change_message(data: &[u8]) -> Option<(&str, u32)> {
    let (unit, origin) = std::str::from_utf8(data).ok()?.split_once('@')?;
    let unit_ok = unit.len() == 32 && unit.bytes().all(|b| b.is_ascii_hexdigit());
    Some((unit, origin.parse().ok()?)).filter(|_| unit_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ctdb::NodeFlags;
    use crate::cluster::ctdb::fake::{nodemap, reply};
    use crate::cluster::ctdb::protocol::{self, Connection, Message, encode_ip_message, opcode};
    use crate::iscsi::Settings;
    use crate::iscsi::session::SessionKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};

    /// What the client asked the fake ctdbd, as (opcode, whole packet).
    type Requests = mpsc::UnboundedReceiver<(u32, Vec<u8>)>;
    /// The fake ctdbd's side of the socket, to send the client messages.
    type FakeWriter = Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>;

    /// What the fake ctdbd reports about the cluster.
    #[derive(Default)]
    struct FakeCluster {
        /// The other two nodes are connected.
        majority: std::sync::atomic::AtomicBool,
        /// Recovery mode is ACTIVE.
        recovering: std::sync::atomic::AtomicBool,
    }

    /// A scripted ctdbd for one client connection: answers GET_PNN with 1, REGISTER_SRVID,
    /// TCP_CLIENT and the state controls (recovery ACTIVE while `cluster.recovering` is set,
    /// else NORMAL; a node map in which the other two nodes are connected while
    /// `cluster.majority` is set) and reports every request but the state controls on the
    /// returned channel as (opcode, whole packet).
    fn fake_ctdbd(
        stream: UnixStream,
        cluster: Arc<FakeCluster>,
    ) -> (Requests, FakeWriter, tokio::task::JoinHandle<()>) {
        let (mut read, write) = stream.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = write.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut prefix = [0u8; 4];
                if read.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let len = protocol::packet_length(prefix).unwrap();
                let mut p = vec![0u8; len];
                p[..4].copy_from_slice(&prefix);
                read.read_exact(&mut p[4..]).await.unwrap();
                let h = protocol::decode_header(&p).unwrap();
                let op = u32::from_ne_bytes(p[32..36].try_into().unwrap());
                let others = if cluster.majority.load(std::sync::atomic::Ordering::Relaxed) {
                    0
                } else {
                    NodeFlags::DISCONNECTED
                };
                let answer = match op {
                    opcode::GET_PNN => reply(h.reqid, 1, &[], None),
                    opcode::GET_RECMODE => {
                        let active = cluster
                            .recovering
                            .load(std::sync::atomic::Ordering::Relaxed);
                        reply(h.reqid, i32::from(active), &[], None)
                    }
                    opcode::GET_NODEMAP => reply(h.reqid, 0, &nodemap(&[others, 0, others]), None),
                    _ => reply(h.reqid, 0, &[], None),
                };
                writer.lock().await.write_all(&answer).await.unwrap();
                if op != opcode::GET_RECMODE && op != opcode::GET_NODEMAP {
                    let _ = tx.send((op, p));
                }
            }
        });
        (rx, write, task)
    }

    async fn next_request(requests: &mut Requests) -> (u32, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(5), requests.recv())
            .await
            .expect("a request in time")
            .expect("the client is connected")
    }

    /// The subscriptions a client makes after connecting.
    async fn subscriptions(requests: &mut Requests) -> Vec<u64> {
        assert_eq!(next_request(requests).await.0, opcode::GET_PNN);
        let mut srvids = Vec::new();
        for _ in 0..3 {
            let (op, p) = next_request(requests).await;
            assert_eq!(op, opcode::REGISTER_SRVID);
            srvids.push(u64::from_ne_bytes(p[40..48].try_into().unwrap()));
        }
        srvids
    }

    /// The connection a TCP_CLIENT request registers, as its bytes.
    async fn registration(requests: &mut Requests) -> Vec<u8> {
        let (op, p) = next_request(requests).await;
        assert_eq!(op, opcode::TCP_CLIENT);
        let datalen = u32::from_ne_bytes(p[56..60].try_into().unwrap()) as usize;
        p[60..60 + datalen].to_vec()
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{what}: not within 5 s");
    }

    #[tokio::test]
    async fn connections_are_registered_released_addresses_closed_and_ctdbd_restarts_survived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctdbd.socket");
        let listener = UnixListener::bind(&path).unwrap();
        let service = Arc::new(Service::new(Settings::default()));
        let settings = ClusterSettings {
            socket: path.clone(),
            timeout: Duration::from_secs(2),
            ..ClusterSettings::default()
        };
        let slot = SharedClient::default();
        let link = ClusterLink::start(&settings, service.clone(), None, slot.clone());
        assert!(
            service.admission.closed_because().is_some(),
            "no logins before ctdbd"
        );

        let cluster = Arc::new(FakeCluster::default());
        cluster
            .majority
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("keel connects")
            .unwrap();
        let (mut requests, ctdbd, fake) = fake_ctdbd(stream, cluster.clone());
        let srvids = subscriptions(&mut requests).await;
        assert!(srvids.contains(&protocol::srvid::RELEASE_IP));
        assert!(srvids.contains(&RESERVATIONS_CHANGED));
        until("logins taken once the node may serve", || {
            service.admission.closed_because().is_none()
        })
        .await;
        assert!(slot.read().unwrap().is_some(), "the store can ask ctdbd");

        let local: SocketAddr = "10.9.0.201:3260".parse().unwrap();
        let peer: SocketAddr = "10.9.0.100:40000".parse().unwrap();
        let tracked = link.accepted(local, peer);
        let mut expected = Vec::new();
        Connection::new(local, peer).push(&mut expected);
        assert!(registration(&mut requests).await.starts_with(&expected));

        // Sessions on the released address close; one on another address does not.
        let key = |isid: u8| SessionKey {
            initiator: "iqn.x:i".into(),
            isid: [isid, 0, 0, 0, 0, 1],
            target: "iqn.t".into(),
        };
        let on_it = service.sessions.admit(key(1)).await.unwrap();
        on_it.set_portal(local);
        let elsewhere = service.sessions.admit(key(2)).await.unwrap();
        elsewhere.set_portal("10.9.0.202:3260".parse().unwrap());
        let local_only = service.sessions.admit(key(3)).await.unwrap();
        local_only.set_portal("127.0.0.1:3260".parse().unwrap());
        let release = Message::encode(
            1,
            1,
            0,
            protocol::srvid::RELEASE_IP,
            &encode_ip_message(local.ip()),
        );
        ctdbd.lock().await.write_all(&release).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), on_it.cancel.cancelled())
            .await
            .expect("the session on the released address is closed");
        assert!(!elsewhere.cancel.is_cancelled());

        // Cut off from the majority: logins held, sessions on the cluster's addresses
        // closed (not loopback's); back with the majority: logins taken again.
        cluster
            .majority
            .store(false, std::sync::atomic::Ordering::Relaxed);
        until("logins held without a majority", || {
            service.admission.closed_because().is_some()
        })
        .await;
        assert!(elsewhere.cancel.is_cancelled());
        assert!(!local_only.cancel.is_cancelled());
        // It rejoins, which starts a recovery: the tables cannot be read during it, so
        // logins wait for its end.
        cluster
            .recovering
            .store(true, std::sync::atomic::Ordering::Relaxed);
        cluster
            .majority
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(FITNESS_EVERY * 5 / 2).await;
        assert!(
            service.admission.closed_because().is_some(),
            "held while the cluster recovers"
        );
        cluster
            .recovering
            .store(false, std::sync::atomic::Ordering::Relaxed);
        until("logins taken with the majority back", || {
            service.admission.closed_because().is_none()
        })
        .await;

        // ctdbd restarts: logins are held meanwhile; keel connects again, subscribes again
        // and registers the live connection again (ctdbd forgot it with the old socket).
        fake.abort();
        let _ = fake.await;
        drop((ctdbd, requests));
        let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("keel connects again")
            .unwrap();
        assert!(
            service.admission.closed_because().is_some(),
            "held without ctdbd"
        );
        let (mut requests, _ctdbd, _fake) = fake_ctdbd(stream, cluster.clone());
        subscriptions(&mut requests).await;
        assert!(registration(&mut requests).await.starts_with(&expected));
        drop(tracked);
        service.shutdown.cancel();
    }

    #[test]
    fn a_change_message_names_a_unit_and_its_origin_or_nothing() {
        let unit = "60a4b4546ea9c4be0545e34ebaa67350";
        assert_eq!(
            change_message(format!("{unit}@2").as_bytes()),
            Some((unit, 2))
        );
        assert_eq!(change_message(unit.as_bytes()), None);
        assert_eq!(change_message(b"60a4@1"), None);
        assert_eq!(change_message(format!("{unit}@x").as_bytes()), None);
        assert_eq!(change_message(b"zz a4b4546ea9c4be0545e34ebaa6735@1"), None);
        assert_eq!(change_message(&[0xff; 34]), None);
    }
}
