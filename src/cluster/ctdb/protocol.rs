//! The CTDB client protocol spoken on ctdbd's unix socket, sans-IO: packets in and out as
//! bytes, no sockets here (the client is `client.rs`).
//!
//! Source of truth: samba's `ctdb/protocol/` at tag samba-4.17.12 (Debian 12's ctdb), checked
//! against packets captured from that daemon (`tests/data/ctdb/`, its README says how):
//!
//! - Every field is in the host's byte order (ctdb memcpy's C integers), except what
//!   `struct sockaddr` itself keeps in network order (ports, addresses, IPv6 flowinfo).
//! - A packet is a 32-byte header (`struct ctdb_req_header`: length, magic "CTDB" =
//!   0x43544442, version 1, generation, operation, destnode, srcnode, reqid), then its body.
//!   `length` counts the whole packet including trailing padding: the client library pads
//!   every packet to a multiple of 8 (`ctdb_allocate_pkt`), the daemon to its C struct's size,
//!   so a decoder must accept trailing bytes after the body and an encoder pads like the tool.
//! - REQ_CONTROL: opcode u32, pad u32, srvid u64, client_id u32, flags u32, datalen u32,
//!   data. REPLY_CONTROL: status i32, datalen u32, errorlen u32, data, error message. Some
//!   controls answer in `status` itself (GET_PNN: the pnn; GET_RECMODE: the mode).
//! - REQ_MESSAGE: srvid u64, datalen u32, data.
//! - `ctdb_sock_addr` is the C union of sockaddr, sockaddr_in and sockaddr_in6, copied as is:
//!   28 bytes whatever the family (an IPv4 address is followed by zeros up to the union size).
//!   `ctdb_connection` is two of them: `src` then `dst`; in TCP_CLIENT and the tickle
//!   controls `src` is the client and `dst` the server's public address (smbd's
//!   `ctdbd_register_ips` and ctdbd's `ctdb_control_tcp_client` in 4.17), despite the union
//!   aliases `server`/`client` in protocol.h.
//!
//! Decoding uses a small byte cursor rather than nom: every body is a fixed C struct layout
//! read field by field with lengths known up front, not a grammar with alternatives, and a
//! cursor keeps each length check next to the field it guards. Nothing from the socket is
//! trusted: every read is bounds-checked, counts are checked against the bytes present
//! before anything is allocated, and errors are values, never panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// "CTDB" in the header's magic field.
pub const MAGIC: u32 = 0x4354_4442;
/// The only protocol version ctdbd accepts.
pub const VERSION: u32 = 1;
/// Size of `struct ctdb_req_header`.
pub const HEADER_LEN: usize = 32;
/// Largest packet keel accepts from ctdbd. The replies keel asks for are small (a node map of
/// 1000 nodes is 36 kB); a larger length means a broken stream, and reading it would only
/// let a confused peer make keel allocate without bound.
pub const MAX_PACKET_LEN: u32 = 16 << 20;
/// Packets are padded to a multiple of this (`CTDB_DS_ALIGNMENT`).
const ALIGNMENT: usize = 8;

/// Size of `ctdb_sock_addr` on Linux: the union's largest member, sockaddr_in6.
pub const SOCK_ADDR_LEN: usize = 28;
/// Size of `struct ctdb_connection`.
pub const CONNECTION_LEN: usize = 2 * SOCK_ADDR_LEN;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `enum ctdb_operation`: the packet types.
pub mod operation {
    pub const REQ_CALL: u32 = 0;
    pub const REPLY_CALL: u32 = 1;
    pub const REQ_DMASTER: u32 = 2;
    pub const REPLY_DMASTER: u32 = 3;
    pub const REPLY_ERROR: u32 = 4;
    pub const REQ_MESSAGE: u32 = 5;
    pub const REQ_CONTROL: u32 = 7;
    pub const REPLY_CONTROL: u32 = 8;
    pub const REQ_KEEPALIVE: u32 = 9;
    pub const REQ_TUNNEL: u32 = 10;
}

/// Special destination and source node numbers.
pub mod node {
    /// The daemon the socket belongs to.
    pub const CURRENT_NODE: u32 = 0xF000_0001;
    pub const BROADCAST_ALL: u32 = 0xF000_0002;
    pub const BROADCAST_ACTIVE: u32 = 0xF000_0003;
    pub const BROADCAST_CONNECTED: u32 = 0xF000_0004;
    /// What a client calls itself before it knows its node's pnn.
    pub const UNKNOWN_PNN: u32 = 0xFFFF_FFFF;
}

/// `enum ctdb_controls`: the opcodes keel uses (numbers identical in 4.17 and master).
pub mod opcode {
    pub const GET_RECMODE: u32 = 15;
    pub const REGISTER_SRVID: u32 = 23;
    pub const DEREGISTER_SRVID: u32 = 24;
    pub const GET_PNN: u32 = 35;
    pub const TCP_CLIENT: u32 = 44;
    pub const TCP_ADD: u32 = 45;
    pub const TCP_REMOVE: u32 = 46;
    pub const GET_TCP_TICKLE_LIST: u32 = 55;
    pub const RELEASE_IP: u32 = 88;
    pub const TAKEOVER_IP: u32 = 89;
    pub const GET_PUBLIC_IPS: u32 = 90;
    pub const GET_NODEMAP: u32 = 91;
    pub const GET_IFACES: u32 = 124;
    pub const TCP_ADD_DELAYED_UPDATE: u32 = 126;
    pub const GET_RUNSTATE: u32 = 138;
}

/// Message channels ("server ids") a client can register for.
pub mod srvid {
    /// ctdbd on this node released a public IP; payload: the IP as a NUL-terminated string.
    pub const RELEASE_IP: u64 = 0xF300_0000_0000_0000;
    /// ctdbd on this node took a public IP over; payload as for RELEASE_IP.
    pub const TAKE_IP: u64 = 0xF301_0000_0000_0000;
    /// The cluster's leader changed; payload: its pnn (u32). The ctdb tool registers it.
    pub const LEADER: u64 = 0xF101_0000_0000_0000;
    /// Reconfiguration (recovery) finished; no payload.
    pub const RECONFIGURE: u64 = 0xF200_0000_0000_0000;
    /// Asks every node to pause its public-IP checks; payload: seconds (u32).
    pub const DISABLE_IP_CHECK: u64 = 0xFC00_0000_0000_0000;
    /// The range reserved for iSCSI servers (top 8 bits), for keel's own channels.
    pub const ISCSID_RANGE: u64 = 0xDE00_0000_0000_0000;
}

/// Control flag: the daemon sends no reply.
pub const FLAG_NOREPLY: u32 = 1;

/// Why bytes from ctdbd could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("ctdb packet too short: {what} needs {need} bytes, {have} left")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("ctdb packet length {0} out of range (32..={MAX_PACKET_LEN})")]
    BadLength(u32),
    #[error("ctdb packet length field {field} does not match the {have} bytes given")]
    LengthMismatch { field: u32, have: usize },
    #[error("bad ctdb magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported ctdb protocol version {0}")]
    BadVersion(u32),
    #[error("expected ctdb operation {expected}, got {got}")]
    WrongOperation { expected: u32, got: u32 },
    #[error("{what}: {extra} unexpected bytes after the data")]
    TrailingBytes { what: &'static str, extra: usize },
    #[error("unknown address family {0} in ctdb_sock_addr")]
    BadFamily(u16),
    #[error("{count} entries of {size} bytes do not fit in the {have} bytes of {what}")]
    CountTooLarge {
        what: &'static str,
        count: u32,
        size: usize,
        have: usize,
    },
    #[error("{what} is not a NUL-terminated string")]
    BadString { what: &'static str },
    #[error("{what} {text:?} is not an IP address")]
    BadIp { what: &'static str, text: String },
    #[error("unknown {what} value {value}")]
    UnknownValue { what: &'static str, value: i64 },
}

/// A bounds-checked reader over a byte slice; every field read is host-order (see above).
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_ne_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_ne_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_ne_bytes(self.array(what)?))
    }

    /// Fails unless everything was read: fixed-size bodies must be exactly their size, so a
    /// layout mistake (or a daemon that differs from 4.17) shows instead of being misread.
    fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { what, extra }),
        }
    }

    /// Checks that `count` entries of `size` bytes are present before anything is
    /// allocated for them.
    fn check_count(&self, count: u32, size: usize, what: &'static str) -> Result<(), DecodeError> {
        let need = (count as u64).saturating_mul(size as u64);
        if need > self.remaining() as u64 {
            return Err(DecodeError::CountTooLarge {
                what,
                count,
                size,
                have: self.remaining(),
            });
        }
        Ok(())
    }
}

/// `struct ctdb_req_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The whole packet's length, padding included.
    pub length: u32,
    pub generation: u32,
    pub operation: u32,
    pub destnode: u32,
    pub srcnode: u32,
    pub reqid: u32,
}

impl Header {
    fn push(&self, out: &mut Vec<u8>) {
        for field in [
            self.length,
            MAGIC,
            VERSION,
            self.generation,
            self.operation,
            self.destnode,
            self.srcnode,
            self.reqid,
        ] {
            out.extend_from_slice(&field.to_ne_bytes());
        }
    }

    fn pull(cur: &mut Cursor<'_>) -> Result<Header, DecodeError> {
        let length = cur.u32("header length")?;
        let magic = cur.u32("header magic")?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = cur.u32("header version")?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        Ok(Header {
            length,
            generation: cur.u32("header generation")?,
            operation: cur.u32("header operation")?,
            destnode: cur.u32("header destnode")?,
            srcnode: cur.u32("header srcnode")?,
            reqid: cur.u32("header reqid")?,
        })
    }
}

/// The length of the packet whose first four bytes are `prefix`, checked to be at least a
/// header and at most [`MAX_PACKET_LEN`]: what a reader needs to frame the stream.
pub fn packet_length(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let length = u32::from_ne_bytes(prefix);
    if (length as usize) < HEADER_LEN || length > MAX_PACKET_LEN {
        return Err(DecodeError::BadLength(length));
    }
    Ok(length as usize)
}

/// Finishes a packet whose body was appended after a placeholder header: pads to the
/// alignment with zeros and writes the header with the padded length, as `ctdb` does.
fn finish_packet(mut body: Vec<u8>, mut header: Header) -> Vec<u8> {
    let padded = (HEADER_LEN + body.len()).div_ceil(ALIGNMENT) * ALIGNMENT;
    header.length = padded as u32;
    let mut out = Vec::with_capacity(padded);
    header.push(&mut out);
    out.append(&mut body);
    out.resize(padded, 0);
    out
}

/// A public address or node address, as the 28-byte `ctdb_sock_addr`.
pub fn push_sock_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    let start = out.len();
    match addr {
        SocketAddr::V4(v4) => {
            out.extend_from_slice(&AF_INET.to_ne_bytes());
            out.extend_from_slice(&v4.port().to_be_bytes());
            out.extend_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out.extend_from_slice(&AF_INET6.to_ne_bytes());
            out.extend_from_slice(&v6.port().to_be_bytes());
            out.extend_from_slice(&v6.flowinfo().to_be_bytes());
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.scope_id().to_ne_bytes());
        }
    }
    // sockaddr_in's sin_zero and the rest of the union: zeros (smbd leaves them undefined;
    // ctdbd compares only family, address and port).
    out.resize(start + SOCK_ADDR_LEN, 0);
}

fn pull_sock_addr(cur: &mut Cursor<'_>) -> Result<SocketAddr, DecodeError> {
    let raw: [u8; SOCK_ADDR_LEN] = cur.array("ctdb_sock_addr")?;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        AF_INET => {
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        AF_INET6 => {
            let flowinfo = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let scope_id = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flowinfo,
                scope_id,
            )))
        }
        other => Err(DecodeError::BadFamily(other)),
    }
}

/// An IPv4-mapped IPv6 address as plain IPv4, as ctdbd keeps public addresses (smbd and
/// ctdbd canonicalize the same way): a keel listening on `[::]` sees v4 peers as
/// `::ffff:a.b.c.d`.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

/// A TCP connection to a public address (`struct ctdb_connection`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The initiator's end (`src` on the wire).
    pub client: SocketAddr,
    /// keel's end: the public address and port it accepted on (`dst` on the wire).
    pub server: SocketAddr,
}

impl Connection {
    /// Both ends canonicalized (see [`canonical`]).
    pub fn new(server: SocketAddr, client: SocketAddr) -> Connection {
        Connection {
            client: canonical(client),
            server: canonical(server),
        }
    }

    pub fn push(&self, out: &mut Vec<u8>) {
        push_sock_addr(self.client, out);
        push_sock_addr(self.server, out);
    }

    fn pull(cur: &mut Cursor<'_>) -> Result<Connection, DecodeError> {
        let client = pull_sock_addr(cur)?;
        let server = pull_sock_addr(cur)?;
        Ok(Connection { client, server })
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// A control request keel sends (`struct ctdb_req_control` with its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// This node's pnn (answered in the reply's status).
    GetPnn,
    /// Recovery mode (answered in the reply's status: 0 NORMAL, 1 ACTIVE).
    GetRecmode,
    /// Every node's pnn, flags and address.
    GetNodemap,
    /// The daemon's run state (`enum ctdb_runstate`).
    GetRunstate,
    /// Deliver REQ_MESSAGEs for this srvid to this client connection.
    RegisterSrvid(u64),
    DeregisterSrvid(u64),
    /// Register a connection to a public address this node hosts; ctdbd broadcasts it to
    /// every connected node at once (TCP_ADD) and forgets it when this client disconnects.
    TcpClient(Connection),
    /// Forget a connection on this node (what ctdbd does itself when a client goes away).
    TcpRemove(Connection),
    /// What `ctdb addtickle` sends: add a connection, synced to other nodes only by the
    /// periodic tickle update. Here to check the connection layout against the tool.
    TcpAddDelayedUpdate(Connection),
    /// The connections this node knows for a public address (`ctdb gettickles`).
    GetTcpTickleList(IpAddr),
}

impl Control {
    pub fn opcode(&self) -> u32 {
        match self {
            Control::GetPnn => opcode::GET_PNN,
            Control::GetRecmode => opcode::GET_RECMODE,
            Control::GetNodemap => opcode::GET_NODEMAP,
            Control::GetRunstate => opcode::GET_RUNSTATE,
            Control::RegisterSrvid(_) => opcode::REGISTER_SRVID,
            Control::DeregisterSrvid(_) => opcode::DEREGISTER_SRVID,
            Control::TcpClient(_) => opcode::TCP_CLIENT,
            Control::TcpRemove(_) => opcode::TCP_REMOVE,
            Control::TcpAddDelayedUpdate(_) => opcode::TCP_ADD_DELAYED_UPDATE,
            Control::GetTcpTickleList(_) => opcode::GET_TCP_TICKLE_LIST,
        }
    }

    /// The srvid field: the channel for (de)registration, else 0.
    fn srvid(&self) -> u64 {
        match self {
            Control::RegisterSrvid(id) | Control::DeregisterSrvid(id) => *id,
            _ => 0,
        }
    }

    fn data(&self) -> Vec<u8> {
        let mut data = Vec::new();
        match self {
            Control::TcpClient(conn)
            | Control::TcpRemove(conn)
            | Control::TcpAddDelayedUpdate(conn) => conn.push(&mut data),
            Control::GetTcpTickleList(ip) => push_sock_addr(SocketAddr::new(*ip, 0), &mut data),
            Control::GetPnn
            | Control::GetRecmode
            | Control::GetNodemap
            | Control::GetRunstate
            | Control::RegisterSrvid(_)
            | Control::DeregisterSrvid(_) => {}
        }
        data
    }

    /// The REQ_CONTROL packet, byte for byte what libctdb-client (the `ctdb` tool) sends:
    /// generation 0, pad 0, client_id 0 (ctdbd fills in its own), padded to 8 bytes.
    pub fn encode(&self, destnode: u32, srcnode: u32, reqid: u32, flags: u32) -> Vec<u8> {
        let data = self.data();
        let mut body = Vec::with_capacity(28 + data.len());
        body.extend_from_slice(&self.opcode().to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // pad
        body.extend_from_slice(&self.srvid().to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes()); // client_id
        body.extend_from_slice(&flags.to_ne_bytes());
        body.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        body.extend_from_slice(&data);
        finish_packet(
            body,
            Header {
                length: 0,
                generation: 0,
                operation: operation::REQ_CONTROL,
                destnode,
                srcnode,
                reqid,
            },
        )
    }
}

/// A REPLY_CONTROL packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReply {
    pub header: Header,
    pub status: i32,
    pub data: Vec<u8>,
    /// ctdbd's error message, when it sent one (most failures send none).
    pub error: Option<String>,
}

/// A REQ_MESSAGE packet (a message to a srvid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub srvid: u64,
    pub data: Vec<u8>,
}

impl Message {
    /// The REQ_MESSAGE packet for `srvid`, padded to 8 bytes like the tool's.
    pub fn encode(destnode: u32, srcnode: u32, reqid: u32, srvid: u64, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(12 + data.len());
        body.extend_from_slice(&srvid.to_ne_bytes());
        body.extend_from_slice(&(data.len() as u32).to_ne_bytes());
        body.extend_from_slice(data);
        finish_packet(
            body,
            Header {
                length: 0,
                generation: 0,
                operation: operation::REQ_MESSAGE,
                destnode,
                srcnode,
                reqid,
            },
        )
    }
}

/// A packet from ctdbd, by kind. A client receives only replies to its controls and
/// messages for its srvids; anything else is kept as its header so the caller can log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    ControlReply(ControlReply),
    Message(Message),
    Other(Header),
}

/// Decodes one whole packet (exactly `length` bytes, as framed by [`packet_length`]).
pub fn decode_packet(buf: &[u8]) -> Result<Packet, DecodeError> {
    let header = decode_header(buf)?;
    let mut cur = Cursor::new(&buf[HEADER_LEN..]);
    match header.operation {
        operation::REPLY_CONTROL => {
            let status = cur.i32("reply status")?;
            let datalen = cur.u32("reply datalen")?;
            let errorlen = cur.u32("reply errorlen")?;
            let data = cur.bytes(datalen as usize, "reply data")?.to_vec();
            let error_bytes = cur.bytes(errorlen as usize, "reply error message")?;
            // What follows is the daemon's padding.
            let error = if error_bytes.is_empty() {
                None
            } else {
                // ctdb_string_pull takes up to the first NUL; be as lenient, but no further.
                let text = error_bytes.split(|b| *b == 0).next().unwrap_or_default();
                Some(String::from_utf8_lossy(text).into_owned())
            };
            Ok(Packet::ControlReply(ControlReply {
                header,
                status,
                data,
                error,
            }))
        }
        operation::REQ_MESSAGE => {
            let srvid = cur.u64("message srvid")?;
            let datalen = cur.u32("message datalen")?;
            let data = cur.bytes(datalen as usize, "message data")?.to_vec();
            Ok(Packet::Message(Message {
                header,
                srvid,
                data,
            }))
        }
        _ => Ok(Packet::Other(header)),
    }
}

/// The header of a whole packet, its length field checked against the bytes given.
pub fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    let mut cur = Cursor::new(buf);
    let header = Header::pull(&mut cur)?;
    if header.length as usize != buf.len() {
        return Err(DecodeError::LengthMismatch {
            field: header.length,
            have: buf.len(),
        });
    }
    Ok(header)
}

/// ctdbd's recovery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// The databases are consistent; writes may proceed.
    Normal,
    /// A recovery is running (the databases are frozen).
    Active,
}

impl RecoveryMode {
    pub fn from_status(status: i32) -> Result<RecoveryMode, DecodeError> {
        match status {
            0 => Ok(RecoveryMode::Normal),
            1 => Ok(RecoveryMode::Active),
            other => Err(DecodeError::UnknownValue {
                what: "recovery mode",
                value: other.into(),
            }),
        }
    }
}

/// `enum ctdb_runstate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runstate {
    Unknown,
    Init,
    Setup,
    FirstRecovery,
    Startup,
    Running,
    Shutdown,
}

impl Runstate {
    /// From GET_RUNSTATE's reply data: one u32.
    pub fn decode(data: &[u8]) -> Result<Runstate, DecodeError> {
        let mut cur = Cursor::new(data);
        let value = cur.u32("runstate")?;
        cur.finish("runstate")?;
        Ok(match value {
            0 => Runstate::Unknown,
            1 => Runstate::Init,
            2 => Runstate::Setup,
            3 => Runstate::FirstRecovery,
            4 => Runstate::Startup,
            5 => Runstate::Running,
            6 => Runstate::Shutdown,
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "runstate",
                    value: other.into(),
                });
            }
        })
    }
}

/// A node's flags (`NODE_FLAGS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFlags(pub u32);

impl NodeFlags {
    pub const DISCONNECTED: u32 = 0x01;
    pub const UNHEALTHY: u32 = 0x02;
    pub const PERMANENTLY_DISABLED: u32 = 0x04;
    pub const BANNED: u32 = 0x08;
    pub const DELETED: u32 = 0x10;
    pub const STOPPED: u32 = 0x20;

    pub fn contains(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    /// No flag set: what `ctdb status` shows as OK, the only state in which a node hosts
    /// public addresses and should change shared state.
    pub fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// The flags' names as `ctdb status` spells them, e.g. "UNHEALTHY|BANNED"; "OK" if none.
    pub fn describe(self) -> String {
        if self.is_ok() {
            return "OK".to_string();
        }
        let names = [
            (Self::DISCONNECTED, "DISCONNECTED"),
            (Self::UNHEALTHY, "UNHEALTHY"),
            (Self::PERMANENTLY_DISABLED, "DISABLED"),
            (Self::BANNED, "BANNED"),
            (Self::DELETED, "DELETED"),
            (Self::STOPPED, "STOPPED"),
        ];
        let mut parts: Vec<String> = names
            .iter()
            .filter(|(bit, _)| self.contains(*bit))
            .map(|(_, name)| name.to_string())
            .collect();
        let known = names.iter().fold(0, |acc, (bit, _)| acc | bit);
        if self.0 & !known != 0 {
            parts.push(format!("{:#x}", self.0 & !known));
        }
        parts.join("|")
    }
}

/// One entry of the node map (`struct ctdb_node_and_flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    pub pnn: u32,
    pub flags: NodeFlags,
    /// The node's private address (port: ctdbd's, 4379).
    pub addr: SocketAddr,
}

/// GET_NODEMAP's reply data (`struct ctdb_node_map`): u32 count, then the nodes.
pub fn decode_nodemap(data: &[u8]) -> Result<Vec<NodeInfo>, DecodeError> {
    let mut cur = Cursor::new(data);
    let count = cur.u32("node map count")?;
    cur.check_count(count, 8 + SOCK_ADDR_LEN, "node map")?;
    let mut nodes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let pnn = cur.u32("node pnn")?;
        let flags = NodeFlags(cur.u32("node flags")?);
        let addr = pull_sock_addr(&mut cur)?;
        nodes.push(NodeInfo { pnn, flags, addr });
    }
    cur.finish("node map")?;
    Ok(nodes)
}

/// GET_TCP_TICKLE_LIST's reply data (`struct ctdb_tickle_list`): the public address, a u32
/// count, then the connections.
pub fn decode_tickle_list(data: &[u8]) -> Result<(IpAddr, Vec<Connection>), DecodeError> {
    let mut cur = Cursor::new(data);
    let addr = pull_sock_addr(&mut cur)?;
    let count = cur.u32("tickle count")?;
    cur.check_count(count, CONNECTION_LEN, "tickle list")?;
    let mut conns = Vec::with_capacity(count as usize);
    for _ in 0..count {
        conns.push(Connection::pull(&mut cur)?);
    }
    cur.finish("tickle list")?;
    Ok((addr.ip(), conns))
}

/// The payload of RELEASE_IP and TAKE_IP messages: the address as text, NUL-terminated
/// (`ctdb_addr_to_str`, data length strlen + 1).
pub fn decode_ip_message(data: &[u8]) -> Result<IpAddr, DecodeError> {
    const WHAT: &str = "IP message";
    let Some((0, text)) = data.split_last() else {
        return Err(DecodeError::BadString { what: WHAT });
    };
    if text.contains(&0) {
        return Err(DecodeError::BadString { what: WHAT });
    }
    let text = std::str::from_utf8(text).map_err(|_| DecodeError::BadString { what: WHAT })?;
    text.parse().map_err(|_| DecodeError::BadIp {
        what: WHAT,
        text: text.to_string(),
    })
}

/// The payload for RELEASE_IP / TAKE_IP, as ctdbd sends it (for tests and fakes).
pub fn encode_ip_message(ip: IpAddr) -> Vec<u8> {
    let mut data = ip.to_string().into_bytes();
    data.push(0);
    data
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
