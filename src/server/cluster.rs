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

use crate::cluster::ClusterSettings;
use crate::cluster::ctdb::{ClientConfig, ClusterEvent, ClusterEvents, CtdbClient};
use crate::iscsi::{PortalMatch, Service, SessionFilter};

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
    pub fn start(settings: &ClusterSettings, service: Arc<Service>) -> ClusterLink {
        let (tx, rx) = mpsc::unbounded_channel();
        let config = ClientConfig {
            socket: settings.socket.clone(),
            timeout: settings.timeout,
        };
        tokio::spawn(run(config, service, rx));
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
        if let Err(e) = client.subscribe_ip_events().await {
            warn!("ctdbd: cannot subscribe to address release/takeover: {e}");
            continue;
        }
        info!(
            pnn = client.pnn(),
            connections = live.len(),
            "connected to ctdbd"
        );
        for (local, peer) in &live {
            register(&client, *local, *peer).await;
        }
        if serve(&client, events, &service, &mut link, &mut live)
            .await
            .is_break()
        {
            return;
        }
        warn!("ctdbd went away; reconnecting");
    }
}

/// Serves one ctdbd connection until it ends (Continue) or the server shuts down (Break).
async fn serve(
    client: &CtdbClient,
    mut events: ClusterEvents,
    service: &Service,
    link: &mut mpsc::UnboundedReceiver<LinkEvent>,
    live: &mut HashSet<(SocketAddr, SocketAddr)>,
) -> std::ops::ControlFlow<()> {
    let shutdown = service.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return std::ops::ControlFlow::Break(()),
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
                    tokio::spawn(reload_reservations(service.targets.list()));
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

/// Reloads the reservation table of every LUN that keeps it in the cluster.
async fn reload_reservations(targets: Vec<Arc<crate::iscsi::Target>>) {
    for target in targets {
        for lu in target.device.luns() {
            if let Err(e) = lu.reservations().reload().await {
                warn!(target = %target.name, lun = lu.lun(), "cannot reload reservations: {e}");
            }
        }
    }
}
