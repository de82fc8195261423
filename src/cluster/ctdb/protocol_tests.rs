//! The codec against packets captured from Debian 12's ctdbd 4.17.12 and its `ctdb` tool
//! (tests/data/ctdb/, see its README), and against hostile bytes.
//!
//! The captures are little-endian (x86-64), and ctdb speaks host order: on a big-endian host
//! these tests would need captures from such a host, so they only run on little-endian ones.
#![cfg(target_endian = "little")]

use super::*;
use proptest::prelude::*;

/// One capture: its packets in socket order, `true` for what the tool sent.
fn capture(text: &str) -> Vec<(bool, Vec<u8>)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (dir, hex) = line.split_once(' ').expect("direction and hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (dir == ">", bytes)
        })
        .collect()
}

const PNN_NODE1: &str = include_str!("../../../tests/data/ctdb/pnn-node1.txt");
const STATUS: &str = include_str!("../../../tests/data/ctdb/status.txt");
const RUNSTATE: &str = include_str!("../../../tests/data/ctdb/runstate.txt");
const ADDTICKLE: &str = include_str!("../../../tests/data/ctdb/addtickle.txt");
const DELTICKLE: &str = include_str!("../../../tests/data/ctdb/deltickle.txt");
const GETTICKLES_NODE1: &str = include_str!("../../../tests/data/ctdb/gettickles-node1.txt");
const GETTICKLES_NODE2: &str = include_str!("../../../tests/data/ctdb/gettickles-node2.txt");
const GETTICKLES_BAD: &str = include_str!("../../../tests/data/ctdb/gettickles-bad.txt");
const MOVEIP: &str = include_str!("../../../tests/data/ctdb/moveip.txt");
const CLIENT_EVENTS: &str = include_str!("../../../tests/data/ctdb/keel-client-events.txt");

const ALL: [&str; 10] = [
    PNN_NODE1,
    STATUS,
    RUNSTATE,
    ADDTICKLE,
    DELTICKLE,
    GETTICKLES_NODE1,
    GETTICKLES_NODE2,
    GETTICKLES_BAD,
    MOVEIP,
    CLIENT_EVENTS,
];

fn reqid(packet: &[u8]) -> u32 {
    decode_header(packet).expect("header").reqid
}

/// The tool's requests with the given opcode.
fn requests(text: &str, opcode: u32) -> Vec<Vec<u8>> {
    capture(text)
        .into_iter()
        .filter(|(to_daemon, p)| {
            *to_daemon
                && decode_header(p).expect("header").operation == operation::REQ_CONTROL
                && u32::from_ne_bytes(p[32..36].try_into().unwrap()) == opcode
        })
        .map(|(_, p)| p)
        .collect()
}

/// The daemon's reply to the request with this reqid.
fn reply_to(text: &str, reqid: u32) -> ControlReply {
    capture(text)
        .into_iter()
        .filter(|(to_daemon, _)| !to_daemon)
        .find_map(|(_, p)| match decode_packet(&p).expect("reply decodes") {
            Packet::ControlReply(r) if r.header.reqid == reqid => Some(r),
            _ => None,
        })
        .expect("a reply with that reqid")
}

/// The one request with `opcode` in the capture, and ctdbd's reply to it.
fn exchange(text: &str, opcode: u32) -> (Vec<u8>, ControlReply) {
    let mut reqs = requests(text, opcode);
    assert_eq!(reqs.len(), 1, "one request with opcode {opcode}");
    let req = reqs.remove(0);
    let reply = reply_to(text, reqid(&req));
    (req, reply)
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn every_captured_packet_decodes() {
    for text in ALL {
        let packets = capture(text);
        assert!(!packets.is_empty());
        for (to_daemon, p) in packets {
            assert_eq!(packet_length(p[..4].try_into().unwrap()).unwrap(), p.len());
            let header = decode_header(&p).unwrap();
            if to_daemon {
                // The tool pads what it sends to 8 bytes.
                assert_eq!(p.len() % 8, 0, "{header:?}");
            } else {
                assert!(matches!(
                    decode_packet(&p).unwrap(),
                    Packet::ControlReply(_) | Packet::Message(_)
                ));
            }
        }
    }
}

#[test]
fn get_pnn_is_the_tools_first_request_and_the_pnn_is_the_status() {
    let (req, reply) = exchange(PNN_NODE1, opcode::GET_PNN);
    // Before it knows its node, the client calls itself UNKNOWN_PNN and asks CURRENT_NODE.
    assert_eq!(
        Control::GetPnn.encode(node::CURRENT_NODE, node::UNKNOWN_PNN, reqid(&req), 0),
        req
    );
    assert_eq!(reply.status, 1, "node 1's pnn");
    assert!(reply.data.is_empty() && reply.error.is_none());
    // ctdbd pads its reply to its C struct's size: 44 bytes of fields, 48 on the wire.
    assert_eq!(reply.header.length, 48);
}

#[test]
fn register_srvid_matches_the_tools() {
    let (req, reply) = exchange(PNN_NODE1, opcode::REGISTER_SRVID);
    assert_eq!(
        Control::RegisterSrvid(srvid::LEADER).encode(1, 1, reqid(&req), 0),
        req
    );
    assert_eq!(reply.status, 0);
}

#[test]
fn nodemap_of_three_healthy_nodes() {
    let (req, reply) = exchange(STATUS, opcode::GET_NODEMAP);
    assert_eq!(Control::GetNodemap.encode(0, 0, reqid(&req), 0), req);
    assert_eq!(reply.status, 0);
    let nodes = decode_nodemap(&reply.data).unwrap();
    let expected: Vec<NodeInfo> = (0..3)
        .map(|pnn| NodeInfo {
            pnn,
            flags: NodeFlags(0),
            addr: sa(&format!("192.168.50.1{pnn}:4379")),
        })
        .collect();
    assert_eq!(nodes, expected);
    assert!(nodes.iter().all(|n| n.flags.is_ok()));
}

#[test]
fn recovery_mode_normal() {
    let (req, reply) = exchange(STATUS, opcode::GET_RECMODE);
    assert_eq!(Control::GetRecmode.encode(0, 0, reqid(&req), 0), req);
    assert_eq!(
        RecoveryMode::from_status(reply.status),
        Ok(RecoveryMode::Normal)
    );
    assert_eq!(RecoveryMode::from_status(1), Ok(RecoveryMode::Active));
    assert!(RecoveryMode::from_status(2).is_err());
}

#[test]
fn leader_message_from_the_daemon() {
    // `ctdb status` registered CTDB_SRVID_LEADER; ctdbd broadcast the leader (pnn 0).
    let messages: Vec<Message> = capture(STATUS)
        .into_iter()
        .filter(|(to_daemon, _)| !to_daemon)
        .filter_map(|(_, p)| match decode_packet(&p).unwrap() {
            Packet::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.srvid, srvid::LEADER);
    assert_eq!(m.data, 0u32.to_ne_bytes());
    assert_eq!(m.header.operation, operation::REQ_MESSAGE);
    assert_eq!(m.header.reqid, 0);
}

#[test]
fn runstate_running() {
    let (req, reply) = exchange(RUNSTATE, opcode::GET_RUNSTATE);
    assert_eq!(Control::GetRunstate.encode(0, 0, reqid(&req), 0), req);
    assert_eq!(Runstate::decode(&reply.data), Ok(Runstate::Running));
}

#[test]
fn connection_layout_matches_addtickle_and_deltickle() {
    // `ctdb addtickle 10.9.0.100:40000 10.9.0.201:3260`: src is the client, dst the public IP.
    let conn = Connection::new(sa("10.9.0.201:3260"), sa("10.9.0.100:40000"));
    let (req, reply) = exchange(ADDTICKLE, opcode::TCP_ADD_DELAYED_UPDATE);
    assert_eq!(
        Control::TcpAddDelayedUpdate(conn).encode(1, 1, reqid(&req), 0),
        req
    );
    assert_eq!(reply.status, 0);
    let (req, reply) = exchange(DELTICKLE, opcode::TCP_REMOVE);
    assert_eq!(Control::TcpRemove(conn).encode(1, 1, reqid(&req), 0), req);
    assert_eq!(reply.status, 0);
    // TCP_CLIENT carries the same struct; only the opcode differs.
    let mut tcp_client = Control::TcpClient(conn).encode(1, 1, reqid(&req), 0);
    assert_eq!(tcp_client[32..36], opcode::TCP_CLIENT.to_ne_bytes());
    tcp_client[32..36].copy_from_slice(&opcode::TCP_REMOVE.to_ne_bytes());
    assert_eq!(tcp_client, req);
}

#[test]
fn tickle_list_from_the_hosting_node_and_an_empty_one() {
    let (req, reply) = exchange(GETTICKLES_NODE1, opcode::GET_TCP_TICKLE_LIST);
    let ip: IpAddr = "10.9.0.201".parse().unwrap();
    assert_eq!(
        Control::GetTcpTickleList(ip).encode(1, 1, reqid(&req), 0),
        req
    );
    let (addr, conns) = decode_tickle_list(&reply.data).unwrap();
    assert_eq!(addr, ip);
    assert_eq!(
        conns,
        [Connection::new(
            sa("10.9.0.201:3260"),
            sa("10.9.0.100:40000")
        )]
    );
    // addtickle syncs to other nodes only every 20 s: node 2 knew nothing yet.
    let (_, reply) = exchange(GETTICKLES_NODE2, opcode::GET_TCP_TICKLE_LIST);
    assert_eq!(decode_tickle_list(&reply.data).unwrap(), (ip, vec![]));
}

#[test]
fn failed_control_has_nonzero_status_and_no_data() {
    let (_, reply) = exchange(GETTICKLES_BAD, opcode::GET_TCP_TICKLE_LIST);
    assert_eq!(reply.status, 1);
    assert!(reply.data.is_empty());
    assert_eq!(reply.error, None);
}

#[test]
fn message_sent_by_the_tool() {
    // `ctdb moveip` first tells every connected node to pause IP checks for 20 s.
    let sent: Vec<Vec<u8>> = capture(MOVEIP)
        .into_iter()
        .filter(|(to_daemon, p)| *to_daemon && decode_header(p).unwrap().operation == 5)
        .map(|(_, p)| p)
        .collect();
    assert_eq!(sent.len(), 1);
    let encoded = Message::encode(
        node::BROADCAST_CONNECTED,
        0,
        reqid(&sent[0]),
        srvid::DISABLE_IP_CHECK,
        &20u32.to_ne_bytes(),
    );
    assert_eq!(encoded, sent[0]);
}

#[test]
fn ip_messages_from_the_daemon() {
    // Captured (strace of examples/ctdb_probe on node 0's socket, interop/ctdb-client) while
    // `ctdb moveip` moved 10.9.0.201 away from node 0 and back (see the README).
    let mut seen = Vec::new();
    for (to_daemon, p) in capture(CLIENT_EVENTS) {
        if to_daemon {
            continue;
        }
        if let Packet::Message(m) = decode_packet(&p).unwrap()
            && (m.srvid == srvid::RELEASE_IP || m.srvid == srvid::TAKE_IP)
        {
            seen.push((m.srvid, decode_ip_message(&m.data).unwrap()));
        }
    }
    let ip: IpAddr = "10.9.0.201".parse().unwrap();
    assert_eq!(seen, [(srvid::RELEASE_IP, ip), (srvid::TAKE_IP, ip)]);
    // The daemon accepted keel's TCP_CLIENT (status 0) for the connection the script made.
    let (req, reply) = exchange(CLIENT_EVENTS, opcode::TCP_CLIENT);
    assert_eq!(reply.status, 0);
    let mut cur = Cursor::new(&req[HEADER_LEN + 28..HEADER_LEN + 28 + CONNECTION_LEN]);
    let conn = Connection::pull(&mut cur).unwrap();
    assert_eq!(conn.server, sa("10.9.0.201:3260"));
    assert_eq!(conn.client.ip(), "10.9.0.100".parse::<IpAddr>().unwrap());
}

#[test]
fn ip_message_payloads() {
    let v4: IpAddr = "10.9.0.201".parse().unwrap();
    let v6: IpAddr = "fd00::1".parse().unwrap();
    assert_eq!(decode_ip_message(b"10.9.0.201\0"), Ok(v4));
    assert_eq!(decode_ip_message(&encode_ip_message(v6)), Ok(v6));
    for bad in [
        &b""[..],
        b"\0",
        b"10.9.0.201",
        b"10.9.0.201\0\0",
        b"10.9\x000.201\0",
        b"not an ip\0",
        b"\xff\xfe\0",
    ] {
        assert!(decode_ip_message(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn sock_addr_v6_and_mapped_v4() {
    let mut out = Vec::new();
    let v6 = sa("[fd00::5]:3260");
    push_sock_addr(v6, &mut out);
    assert_eq!(out.len(), SOCK_ADDR_LEN);
    assert_eq!(out[..2], 10u16.to_ne_bytes());
    assert_eq!(pull_sock_addr(&mut Cursor::new(&out)), Ok(v6));
    // A dual-stack listener's view of a v4 peer is registered as plain v4, as smbd does.
    let conn = Connection::new(sa("[::ffff:10.9.0.201]:3260"), sa("[::ffff:10.9.0.100]:1"));
    assert_eq!(
        conn,
        Connection {
            client: sa("10.9.0.100:1"),
            server: sa("10.9.0.201:3260")
        }
    );
    let bad_family = [7u8; SOCK_ADDR_LEN];
    assert_eq!(
        pull_sock_addr(&mut Cursor::new(&bad_family)),
        Err(DecodeError::BadFamily(0x0707))
    );
}

#[test]
fn header_checks() {
    let good = Control::GetPnn.encode(node::CURRENT_NODE, node::UNKNOWN_PNN, 7, 0);
    assert!(decode_header(&good).is_ok());
    let mut bad = good.clone();
    bad[4] ^= 1;
    assert!(matches!(decode_header(&bad), Err(DecodeError::BadMagic(_))));
    let mut bad = good.clone();
    bad[8] = 2;
    assert_eq!(decode_header(&bad), Err(DecodeError::BadVersion(2)));
    assert!(matches!(
        decode_header(&good[..40]),
        Err(DecodeError::LengthMismatch { .. })
    ));
    assert!(packet_length(31u32.to_ne_bytes()).is_err());
    assert!(packet_length((MAX_PACKET_LEN + 1).to_ne_bytes()).is_err());
    assert_eq!(packet_length(32u32.to_ne_bytes()), Ok(32));
}

/// A REPLY_CONTROL packet around `body` (status, lengths, data...), length field set.
fn reply_packet(body: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    Header {
        length: (HEADER_LEN + body.len()) as u32,
        generation: 1,
        operation: operation::REPLY_CONTROL,
        destnode: 0,
        srcnode: 0,
        reqid: 9,
    }
    .push(&mut p);
    p.extend_from_slice(body);
    p
}

#[test]
fn reply_lengths_are_checked() {
    // datalen larger than what is there
    let mut body = Vec::new();
    body.extend_from_slice(&0i32.to_ne_bytes());
    body.extend_from_slice(&1000u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&[0; 8]);
    assert!(matches!(
        decode_packet(&reply_packet(&body)),
        Err(DecodeError::Truncated { .. })
    ));
    // errorlen past the end, with u32::MAX to catch overflow
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_ne_bytes());
    body.extend_from_slice(&4u32.to_ne_bytes());
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    body.extend_from_slice(&[0; 4]);
    assert!(decode_packet(&reply_packet(&body)).is_err());
    // an error message is read up to its NUL; data and message may both be present
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_ne_bytes());
    body.extend_from_slice(&2u32.to_ne_bytes());
    body.extend_from_slice(&5u32.to_ne_bytes());
    body.extend_from_slice(b"ab");
    body.extend_from_slice(b"oops\0");
    body.extend_from_slice(&[0; 3]); // padding
    let Packet::ControlReply(r) = decode_packet(&reply_packet(&body)).unwrap() else {
        panic!("a reply")
    };
    assert_eq!(
        (r.status, r.data, r.error),
        (-1, b"ab".to_vec(), Some("oops".into()))
    );
}

#[test]
fn node_map_and_tickle_counts_are_checked_before_allocating() {
    let mut data = u32::MAX.to_ne_bytes().to_vec();
    data.extend_from_slice(&[0; 36]);
    assert!(matches!(
        decode_nodemap(&data),
        Err(DecodeError::CountTooLarge { .. })
    ));
    let mut data = Vec::new();
    push_sock_addr(sa("10.9.0.201:0"), &mut data);
    data.extend_from_slice(&u32::MAX.to_ne_bytes());
    assert!(matches!(
        decode_tickle_list(&data),
        Err(DecodeError::CountTooLarge { .. })
    ));
    // exact sizes only: a trailing byte is a layout mismatch
    let mut data = 0u32.to_ne_bytes().to_vec();
    data.push(0);
    assert!(matches!(
        decode_nodemap(&data),
        Err(DecodeError::TrailingBytes { .. })
    ));
    assert!(Runstate::decode(&[5, 0, 0]).is_err());
    assert!(Runstate::decode(&9u32.to_ne_bytes()).is_err());
}

#[test]
fn node_flags_describe_like_ctdb_status() {
    assert_eq!(NodeFlags(0).describe(), "OK");
    assert_eq!(
        NodeFlags(NodeFlags::UNHEALTHY | NodeFlags::BANNED).describe(),
        "UNHEALTHY|BANNED"
    );
    assert_eq!(NodeFlags(0x100).describe(), "0x100");
    assert!(!NodeFlags(NodeFlags::STOPPED).is_ok());
}

#[test]
fn truncations_of_captured_packets_never_panic() {
    for text in ALL {
        for (_, p) in capture(text) {
            for cut in 0..p.len() {
                let part = &p[..cut];
                let _ = decode_header(part);
                let _ = decode_packet(part);
                if let Ok(Packet::ControlReply(r)) = decode_packet(&p) {
                    let _ = decode_nodemap(&r.data[..r.data.len().min(cut)]);
                    let _ = decode_tickle_list(&r.data[..r.data.len().min(cut)]);
                }
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_header(&bytes);
        let _ = decode_packet(&bytes);
        let _ = decode_nodemap(&bytes);
        let _ = decode_tickle_list(&bytes);
        let _ = decode_ip_message(&bytes);
        let _ = Runstate::decode(&bytes);
    }

    #[test]
    fn arbitrary_reply_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode_packet(&reply_packet(&body));
    }

    #[test]
    fn encoded_controls_decode_as_their_header(
        reqid in any::<u32>(), pnn in 0u32..64, port in any::<u16>(), a in any::<[u8; 4]>()
    ) {
        let conn = Connection::new(
            SocketAddr::from((a, 3260)), SocketAddr::from(([10, 9, 0, 100], port)));
        let packet = Control::TcpClient(conn).encode(pnn, pnn, reqid, 0);
        let header = decode_header(&packet).unwrap();
        prop_assert_eq!(header.reqid, reqid);
        prop_assert_eq!(header.length as usize, packet.len());
        prop_assert_eq!(packet.len() % 8, 0);
        let mut cur = Cursor::new(&packet[HEADER_LEN + 28..]);
        prop_assert_eq!(Connection::pull(&mut cur).unwrap(), conn);
    }
}
