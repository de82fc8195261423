//! An async client of ctdbd's unix socket, the way smbd is one: controls with replies matched
//! by reqid, srvid messages routed to a channel of [`ClusterEvent`]s, a timeout on every
//! call, typed errors.
//!
//! One connection serves the whole process. ctdbd ties what a client registers to its
//! connection: when the socket closes, its srvids are gone and the TCP connections it
//! registered are dropped from this node's tickle list. So the owner keeps one client for
//! the process's life and, when [`ClusterEvent::Disconnected`] arrives (or a call fails with
//! [`ClientError::Disconnected`]), connects again and registers everything again.
//! Reconnecting is the caller's business; this type only reports.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::protocol::{
    self, Connection, Control, ControlReply, DecodeError, FLAG_NOREPLY, Message, NodeFlags,
    NodeInfo, Packet, RecoveryMode, Runstate, node, srvid,
};

/// Where Debian's ctdbd listens.
pub const DEFAULT_SOCKET: &str = "/var/run/ctdb/ctdbd.socket";
/// The `ctdb` tool's default control timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach ctdbd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    pub socket: PathBuf,
    /// Bound on connecting and on every call, from sending to the reply.
    pub timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl ClientConfig {
    pub fn new(socket: impl AsRef<Path>) -> ClientConfig {
        ClientConfig {
            socket: socket.as_ref().to_path_buf(),
            ..ClientConfig::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to ctdbd at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("connecting to ctdbd at {path} timed out after {timeout:?}")]
    ConnectTimeout { path: PathBuf, timeout: Duration },
    #[error("the connection to ctdbd is closed")]
    Disconnected,
    #[error("ctdb control {opcode} got no reply within {timeout:?}")]
    Timeout { opcode: u32, timeout: Duration },
    #[error("writing to ctdbd: {0}")]
    Write(#[source] io::Error),
    #[error("bad reply from ctdbd to control {opcode}: {source}")]
    Decode {
        opcode: u32,
        #[source]
        source: DecodeError,
    },
    #[error("ctdb control {opcode} failed with status {status}{}",
        .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    ControlFailed {
        opcode: u32,
        status: i32,
        message: Option<String>,
    },
    #[error("node {0} is not in ctdbd's node map")]
    UnknownNode(u32),
}

/// What ctdbd tells keel without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// This node released a public address: close every session that arrived on it.
    ReleaseIp(IpAddr),
    /// This node took a public address over.
    TakeIp(IpAddr),
    /// A message for another srvid this client registered.
    Message { srvid: u64, data: Vec<u8> },
    /// The socket closed (ctdbd stopped or restarted). The last event of this connection:
    /// registrations are gone with it.
    Disconnected,
}

/// The client the server's cluster task holds while it is connected to ctdbd, shared with
/// what needs to ask ctdbd now (the reservation store's gate).
pub type SharedClient = Arc<std::sync::RwLock<Option<CtdbClient>>>;

/// The receiving end of a client's events; ends after [`ClusterEvent::Disconnected`].
pub type ClusterEvents = mpsc::UnboundedReceiver<ClusterEvent>;

/// This node as far as reservations care, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub pnn: u32,
    /// Recovery mode is NORMAL (no recovery running, databases not frozen).
    pub recovery_normal: bool,
    /// No node flag set (not unhealthy, disabled, banned, stopped, disconnected).
    pub healthy: bool,
    pub flags: NodeFlags,
}

type ReplySender = oneshot::Sender<Result<ControlReply, DecodeError>>;

/// Calls waiting for their reply, by reqid; `closed` once the reader is gone, so no call
/// waits for a reply that cannot come.
#[derive(Default)]
struct Pending {
    waiting: HashMap<u32, ReplySender>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    closed: watch::Sender<bool>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A poisoned lock only means a panic elsewhere while holding it; the map is still
        // consistent (every operation on it is a single insert or remove).
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_reqid: AtomicU32,
    pnn: AtomicU32,
    timeout: Duration,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop reading, which closes the socket with the writer.
        self.reader.abort();
    }
}

/// A connection to ctdbd. Cheap to clone; the socket closes when the last clone is dropped.
#[derive(Clone)]
pub struct CtdbClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CtdbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CtdbClient")
            .field("pnn", &self.pnn())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl CtdbClient {
    /// Connects and asks this node's pnn (as the `ctdb` tool does first). Events for the
    /// srvids registered later arrive on the returned channel.
    pub async fn connect(
        config: &ClientConfig,
    ) -> Result<(CtdbClient, ClusterEvents), ClientError> {
        let stream =
            match tokio::time::timeout(config.timeout, UnixStream::connect(&config.socket)).await {
                Err(_) => {
                    return Err(ClientError::ConnectTimeout {
                        path: config.socket.clone(),
                        timeout: config.timeout,
                    });
                }
                Ok(Err(source)) => {
                    return Err(ClientError::Connect {
                        path: config.socket.clone(),
                        source,
                    });
                }
                Ok(Ok(stream)) => stream,
            };
        let (read, write) = stream.into_split();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            closed: watch::channel(false).0,
        });
        let reader = tokio::spawn(read_packets(read, shared.clone(), events_tx));
        let client = CtdbClient {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(write),
                next_reqid: AtomicU32::new(1),
                pnn: AtomicU32::new(node::UNKNOWN_PNN),
                timeout: config.timeout,
                reader,
            }),
        };
        let reply = client.call(node::CURRENT_NODE, &Control::GetPnn).await?;
        let pnn = status_value(&reply, protocol::opcode::GET_PNN)?;
        client.inner.pnn.store(pnn as u32, Ordering::Relaxed);
        Ok((client, events_rx))
    }

    /// This node's pnn, as ctdbd said at connect.
    pub fn pnn(&self) -> u32 {
        self.inner.pnn.load(Ordering::Relaxed)
    }

    /// The socket closed (ctdbd went away, or a broken packet made the client give up).
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }

    /// Resolves once the socket has closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        // Err only if the sender is gone, which happens only with `self`.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Recovery mode of this node.
    pub async fn recovery_mode(&self) -> Result<RecoveryMode, ClientError> {
        let opcode = protocol::opcode::GET_RECMODE;
        let reply = self.call(self.pnn(), &Control::GetRecmode).await?;
        let status = status_value(&reply, opcode)?;
        RecoveryMode::from_status(status).map_err(|source| ClientError::Decode { opcode, source })
    }

    /// Every node's pnn, flags and private address, as this node sees them.
    pub async fn nodemap(&self) -> Result<Vec<NodeInfo>, ClientError> {
        let opcode = protocol::opcode::GET_NODEMAP;
        let reply = self.call_ok(&Control::GetNodemap).await?;
        protocol::decode_nodemap(&reply.data)
            .map_err(|source| ClientError::Decode { opcode, source })
    }

    /// One node's flags, from this node's node map.
    pub async fn node_flags(&self, pnn: u32) -> Result<NodeFlags, ClientError> {
        self.nodemap()
            .await?
            .iter()
            .find(|n| n.pnn == pnn)
            .map(|n| n.flags)
            .ok_or(ClientError::UnknownNode(pnn))
    }

    /// The daemon's run state (RUNNING once it is serving).
    pub async fn runstate(&self) -> Result<Runstate, ClientError> {
        let opcode = protocol::opcode::GET_RUNSTATE;
        let reply = self.call_ok(&Control::GetRunstate).await?;
        Runstate::decode(&reply.data).map_err(|source| ClientError::Decode { opcode, source })
    }

    /// This node's pnn, recovery mode and health, read now (two controls; not atomic, so
    /// gate on it and also follow events).
    pub async fn node_state(&self) -> Result<NodeState, ClientError> {
        let pnn = self.pnn();
        let recovery = self.recovery_mode().await?;
        let flags = self.node_flags(pnn).await?;
        Ok(NodeState {
            pnn,
            recovery_normal: recovery == RecoveryMode::Normal,
            healthy: flags.is_ok(),
            flags,
        })
    }

    /// The cluster as this node sees it now (node map and recovery mode: two controls).
    pub async fn view(&self) -> Result<crate::cluster::ClusterView, ClientError> {
        let recovery = self.recovery_mode().await?;
        let nodes = self.nodemap().await?;
        Ok(crate::cluster::ClusterView::from_nodemap(
            &nodes,
            self.pnn(),
            recovery == RecoveryMode::Normal,
        ))
    }

    /// Asks ctdbd to send this client the messages for `srvid`.
    pub async fn register_srvid(&self, srvid: u64) -> Result<(), ClientError> {
        self.call_ok(&Control::RegisterSrvid(srvid)).await.map(drop)
    }

    pub async fn deregister_srvid(&self, srvid: u64) -> Result<(), ClientError> {
        self.call_ok(&Control::DeregisterSrvid(srvid))
            .await
            .map(drop)
    }

    /// Registers for RELEASE_IP and TAKE_IP: [`ClusterEvent::ReleaseIp`] and
    /// [`ClusterEvent::TakeIp`] follow.
    pub async fn subscribe_ip_events(&self) -> Result<(), ClientError> {
        self.register_srvid(srvid::RELEASE_IP).await?;
        self.register_srvid(srvid::TAKE_IP).await
    }

    /// Registers an accepted TCP connection to a public address, as smbd does
    /// (CTDB_CONTROL_TCP_CLIENT): ctdbd broadcasts it to every connected node at once, so the
    /// node that takes the address over can tickle the client into reconnecting. `local` is
    /// the accepted socket's local address, `peer` the initiator's. ctdbd fails the call if
    /// `local`'s IP is a public address this node does not host (the connection should be
    /// dropped then), and ignores it silently if the IP is not a public address at all.
    pub async fn tcp_client_register(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<(), ClientError> {
        self.call_ok(&Control::TcpClient(Connection::new(local, peer)))
            .await
            .map(drop)
    }

    /// Forgets a connection on this node (ctdb 4.17 has no TCP_CLIENT_DISCONNECTED): the next
    /// periodic tickle update tells the other nodes. Optional: ctdbd drops every connection
    /// a client registered when the client disconnects, and a tickle to a closed connection
    /// only draws a RST.
    pub async fn tcp_client_remove(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<(), ClientError> {
        self.call_ok(&Control::TcpRemove(Connection::new(local, peer)))
            .await
            .map(drop)
    }

    /// The connections `node` knows for a public address (`ctdb gettickles`).
    pub async fn tickle_list(&self, pnn: u32, ip: IpAddr) -> Result<Vec<Connection>, ClientError> {
        let control = Control::GetTcpTickleList(ip);
        let reply = self.call(pnn, &control).await?;
        check_status(&reply, control.opcode())?;
        protocol::decode_tickle_list(&reply.data)
            .map(|(_, conns)| conns)
            .map_err(|source| ClientError::Decode {
                opcode: control.opcode(),
                source,
            })
    }

    /// Sends a message to `srvid` on node `pnn` (or a broadcast node number).
    pub async fn send_message(&self, pnn: u32, srvid: u64, data: &[u8]) -> Result<(), ClientError> {
        let reqid = self.next_reqid();
        let packet = Message::encode(pnn, self.pnn(), reqid, srvid, data);
        self.write(&packet, 0).await
    }

    /// A control to this node whose status must be 0.
    async fn call_ok(&self, control: &Control) -> Result<ControlReply, ClientError> {
        let reply = self.call(self.pnn(), control).await?;
        check_status(&reply, control.opcode())?;
        Ok(reply)
    }

    /// Sends a control to `destnode` and waits (bounded) for its reply.
    pub async fn call(
        &self,
        destnode: u32,
        control: &Control,
    ) -> Result<ControlReply, ClientError> {
        let opcode = control.opcode();
        let (tx, rx) = oneshot::channel();
        let reqid = {
            let mut pending = self.inner.shared.pending();
            if pending.closed {
                return Err(ClientError::Disconnected);
            }
            let mut reqid = self.next_reqid();
            while pending.waiting.contains_key(&reqid) {
                reqid = self.next_reqid();
            }
            pending.waiting.insert(reqid, tx);
            reqid
        };
        let packet = control.encode(destnode, self.pnn(), reqid, 0);
        let timeout = self.inner.timeout;
        let outcome = tokio::time::timeout(timeout, async {
            self.write_unbounded(&packet).await?;
            match rx.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(source)) => Err(ClientError::Decode { opcode, source }),
                Err(_) => Err(ClientError::Disconnected),
            }
        })
        .await;
        let result = outcome.unwrap_or(Err(ClientError::Timeout { opcode, timeout }));
        if result.is_err() {
            self.inner.shared.pending().waiting.remove(&reqid);
        }
        result
    }

    /// Sends a control ctdbd will not answer (CTDB_CTRL_FLAG_NOREPLY), as smbd sends
    /// TCP_CLIENT; done once written.
    pub async fn send_noreply(&self, destnode: u32, control: &Control) -> Result<(), ClientError> {
        let packet = control.encode(destnode, self.pnn(), self.next_reqid(), FLAG_NOREPLY);
        self.write(&packet, control.opcode()).await
    }

    async fn write(&self, packet: &[u8], opcode: u32) -> Result<(), ClientError> {
        let timeout = self.inner.timeout;
        tokio::time::timeout(timeout, self.write_unbounded(packet))
            .await
            .unwrap_or(Err(ClientError::Timeout { opcode, timeout }))
    }

    async fn write_unbounded(&self, packet: &[u8]) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Disconnected);
        }
        let mut writer = self.inner.writer.lock().await;
        writer.write_all(packet).await.map_err(ClientError::Write)
    }

    fn next_reqid(&self) -> u32 {
        // 0 is what ctdbd puts in messages; skip it so a reply is never confused with one.
        loop {
            let id = self.inner.next_reqid.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
}

/// Controls that answer in the status (GET_PNN, GET_RECMODE): the value, or the failure.
fn status_value(reply: &ControlReply, opcode: u32) -> Result<i32, ClientError> {
    if reply.status < 0 || reply.error.is_some() {
        return Err(ClientError::ControlFailed {
            opcode,
            status: reply.status,
            message: reply.error.clone(),
        });
    }
    Ok(reply.status)
}

fn check_status(reply: &ControlReply, opcode: u32) -> Result<(), ClientError> {
    if reply.status != 0 {
        return Err(ClientError::ControlFailed {
            opcode,
            status: reply.status,
            message: reply.error.clone(),
        });
    }
    Ok(())
}

/// Reads packets until the socket closes or the stream stops making sense, hands replies
/// to their callers and messages to the event channel, then fails every waiting call and
/// sends [`ClusterEvent::Disconnected`].
async fn read_packets(
    mut read: OwnedReadHalf,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<ClusterEvent>,
) {
    // Unbounded: ctdbd sends a handful of messages per IP move, the reader must never block
    // on a slow consumer (replies would stall behind it), and a RELEASE_IP must not be
    // dropped (its sessions would stay open on an address this node no longer has).
    let reason = loop {
        let mut prefix = [0u8; 4];
        if let Err(e) = read.read_exact(&mut prefix).await {
            break format!("read: {e}");
        }
        let length = match protocol::packet_length(prefix) {
            Ok(length) => length,
            // The stream cannot be framed any more.
            Err(e) => break format!("{e}"),
        };
        let mut packet = vec![0u8; length];
        packet[..4].copy_from_slice(&prefix);
        if let Err(e) = read.read_exact(&mut packet[4..]).await {
            break format!("read: {e}");
        }
        match protocol::decode_packet(&packet) {
            Ok(Packet::ControlReply(reply)) => {
                let waiter = shared.pending().waiting.remove(&reply.header.reqid);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(Ok(reply));
                    }
                    None => tracing::debug!(
                        reqid = reply.header.reqid,
                        "ctdb reply nobody waits for (timed out?)"
                    ),
                }
            }
            Ok(Packet::Message(message)) => {
                let _ = events.send(message_event(message));
            }
            Ok(Packet::Other(header)) => tracing::warn!(
                operation = header.operation,
                "unexpected ctdb packet on a client socket, ignored"
            ),
            Err(error) => match protocol::decode_header(&packet) {
                // The header is sound, so framing holds: fail the call it answers, if any.
                Ok(header) => {
                    let waiter = shared.pending().waiting.remove(&header.reqid);
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(Err(error));
                        }
                        None => tracing::warn!(%error, "undecodable ctdb packet ignored"),
                    }
                }
                // Not a ctdb packet at all: nothing after it can be trusted.
                Err(_) => break format!("{error}"),
            },
        }
    };
    tracing::info!(%reason, "connection to ctdbd closed");
    let waiting = {
        let mut pending = shared.pending();
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    // Dropping the senders fails each waiting call with Disconnected.
    drop(waiting);
    shared.closed.send_replace(true);
    let _ = events.send(ClusterEvent::Disconnected);
}

fn message_event(message: Message) -> ClusterEvent {
    let make: Option<fn(IpAddr) -> ClusterEvent> = match message.srvid {
        srvid::RELEASE_IP => Some(ClusterEvent::ReleaseIp),
        srvid::TAKE_IP => Some(ClusterEvent::TakeIp),
        _ => None,
    };
    if let Some(make) = make {
        match protocol::decode_ip_message(&message.data) {
            Ok(ip) => return make(ip),
            Err(error) => tracing::error!(
                srvid = format_args!("{:#x}", message.srvid),
                %error,
                "ctdb IP message unreadable, passed on raw"
            ),
        }
    }
    ClusterEvent::Message {
        srvid: message.srvid,
        data: message.data,
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
