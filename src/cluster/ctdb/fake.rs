//! A scripted stand-in for ctdbd's side of the socket, for tests of the client and of what
//! the server wires to it: replies laid out as ctdbd 4.17 lays them out (checked against the
//! captures in tests/data/ctdb), and the client's requests read back whole.

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use std::net::SocketAddr;

use super::protocol::{self, HEADER_LEN, Header};

/// A reply as ctdbd 4.17 lays it out: header, status, datalen, errorlen, data, message.
pub(crate) fn reply(reqid: u32, status: i32, data: &[u8], error: Option<&str>) -> Vec<u8> {
    let err: Vec<u8> = error
        .map(|e| {
            let mut v = e.as_bytes().to_vec();
            v.push(0);
            v
        })
        .unwrap_or_default();
    let length = HEADER_LEN + 12 + data.len() + err.len();
    let mut p = Vec::new();
    for field in [length as u32, protocol::MAGIC, 1, 7, 8, 0, 0, reqid] {
        p.extend_from_slice(&field.to_ne_bytes());
    }
    p.extend_from_slice(&status.to_ne_bytes());
    p.extend_from_slice(&(data.len() as u32).to_ne_bytes());
    p.extend_from_slice(&(err.len() as u32).to_ne_bytes());
    p.extend_from_slice(data);
    p.extend_from_slice(&err);
    p
}

pub(crate) async fn read_request(stream: &mut UnixStream) -> Option<(Header, u32, Vec<u8>)> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.ok()?;
    let len = protocol::packet_length(prefix).ok()?;
    let mut p = vec![0u8; len];
    p[..4].copy_from_slice(&prefix);
    stream.read_exact(&mut p[4..]).await.ok()?;
    let header = protocol::decode_header(&p).ok()?;
    let opcode = u32::from_ne_bytes(p[32..36].try_into().ok()?);
    Some((header, opcode, p))
}

/// GET_NODEMAP's reply data for nodes 0.. with these flags.
pub(crate) fn nodemap(flags: &[u32]) -> Vec<u8> {
    let mut d = (flags.len() as u32).to_ne_bytes().to_vec();
    for (pnn, f) in flags.iter().enumerate() {
        d.extend_from_slice(&(pnn as u32).to_ne_bytes());
        d.extend_from_slice(&f.to_ne_bytes());
        protocol::push_sock_addr(
            SocketAddr::from(([192, 168, 50, 10 + pnn as u8], 4379)),
            &mut d,
        );
    }
    d
}
