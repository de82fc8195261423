//! The client against a scripted fake ctdbd on a unix socket in a temporary directory:
//! reqid matching, events, timeouts, a closing socket, hostile packets.

use super::*;
use crate::cluster::ctdb::fake::{nodemap, read_request, reply};
use crate::cluster::ctdb::protocol::{Header, decode_packet, encode_ip_message};
use tokio::net::UnixListener;

struct Fake {
    _dir: tempfile::TempDir,
    config: ClientConfig,
    listener: UnixListener,
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctdbd.socket");
    let listener = UnixListener::bind(&path).unwrap();
    let mut config = ClientConfig::new(&path);
    config.timeout = Duration::from_millis(500);
    Fake {
        _dir: dir,
        config,
        listener,
    }
}

/// Answers GET_PNN with 2, then runs `script` on the stream.
async fn serve<F, Fut>(listener: UnixListener, script: F)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (mut stream, _) = listener.accept().await.unwrap();
    let (h, opcode, _) = read_request(&mut stream).await.unwrap();
    assert_eq!(opcode, protocol::opcode::GET_PNN);
    assert_eq!(
        (h.destnode, h.srcnode),
        (node::CURRENT_NODE, node::UNKNOWN_PNN)
    );
    stream
        .write_all(&reply(h.reqid, 2, &[], None))
        .await
        .unwrap();
    script(stream).await;
}

#[tokio::test]
async fn calls_state_and_events() {
    let f = fake();
    let server = tokio::spawn(serve(f.listener, |mut s| async move {
        // Answer two pipelined requests out of order, with a message in between.
        let (a, op_a, _) = read_request(&mut s).await.unwrap();
        let (b, op_b, _) = read_request(&mut s).await.unwrap();
        assert_eq!((a.destnode, a.srcnode), (2, 2));
        let answer = |h: Header, op: u32| match op {
            protocol::opcode::GET_RECMODE => reply(h.reqid, 1, &[], None),
            protocol::opcode::GET_NODEMAP => {
                reply(h.reqid, 0, &nodemap(&[0, 0, NodeFlags::UNHEALTHY]), None)
            }
            other => panic!("unexpected opcode {other}"),
        };
        s.write_all(&answer(b, op_b)).await.unwrap();
        let msg = Message::encode(
            2,
            2,
            0,
            srvid::RELEASE_IP,
            &encode_ip_message("10.9.0.201".parse().unwrap()),
        );
        s.write_all(&msg).await.unwrap();
        s.write_all(&answer(a, op_a)).await.unwrap();
        // then one at a time: node_state, register_srvid x2, and TCP_CLIENT refused as
        // ctdbd refuses an IP it does not host
        loop {
            let (h, op, p) = read_request(&mut s).await.unwrap();
            let packet = match op {
                protocol::opcode::REGISTER_SRVID => reply(h.reqid, 0, &[], None),
                protocol::opcode::TCP_CLIENT => {
                    assert_eq!(p.len(), 64 + 56);
                    s.write_all(&reply(h.reqid, -1, &[], Some("not hosted")))
                        .await
                        .unwrap();
                    break;
                }
                _ => answer(h, op),
            };
            s.write_all(&packet).await.unwrap();
        }
    }));
    let (client, mut events) = CtdbClient::connect(&f.config).await.unwrap();
    assert_eq!(client.pnn(), 2);
    // two calls in flight, answered out of order
    let (mode, nodes) = tokio::join!(client.recovery_mode(), client.nodemap());
    assert_eq!(mode.unwrap(), RecoveryMode::Active);
    assert_eq!(nodes.unwrap().len(), 3);
    let state = client.node_state().await.unwrap();
    assert_eq!(
        state,
        NodeState {
            pnn: 2,
            recovery_normal: false,
            healthy: false,
            flags: NodeFlags(NodeFlags::UNHEALTHY)
        }
    );
    assert_eq!(
        events.recv().await,
        Some(ClusterEvent::ReleaseIp("10.9.0.201".parse().unwrap()))
    );
    client.subscribe_ip_events().await.unwrap();
    let err = client
        .tcp_client_register(
            "10.9.0.201:3260".parse().unwrap(),
            "10.9.0.100:5000".parse().unwrap(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClientError::ControlFailed { opcode: 44, status: -1, message: Some(m) } if m == "not hosted"),
        "{err}"
    );
    server.await.unwrap();
    // The fake closed the socket: reported as an event, and calls fail fast.
    assert_eq!(events.recv().await, Some(ClusterEvent::Disconnected));
    assert_eq!(events.recv().await, None);
    client.closed().await;
    assert!(client.is_closed());
    assert!(matches!(
        client.recovery_mode().await,
        Err(ClientError::Disconnected)
    ));
}

#[tokio::test]
async fn a_call_without_reply_times_out_and_a_late_reply_is_ignored() {
    let f = fake();
    let (late_tx, late_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(f.listener, |mut s| async move {
        let (h, _, _) = read_request(&mut s).await.unwrap();
        late_rx.await.unwrap();
        s.write_all(&reply(h.reqid, 0, &[], None)).await.unwrap();
        let (h, _, _) = read_request(&mut s).await.unwrap();
        s.write_all(&reply(h.reqid, 0, &5u32.to_ne_bytes(), None))
            .await
            .unwrap();
        // keep the socket open until the client is done
        let _ = read_request(&mut s).await;
    }));
    let (client, _events) = CtdbClient::connect(&f.config).await.unwrap();
    let err = client.register_srvid(srvid::TAKE_IP).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout { opcode: 23, .. }),
        "{err}"
    );
    late_tx.send(()).unwrap();
    assert_eq!(client.runstate().await.unwrap(), Runstate::Running);
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn a_malformed_reply_fails_its_call_and_garbage_closes_the_client() {
    let f = fake();
    let server = tokio::spawn(serve(f.listener, |mut s| async move {
        let (h, _, _) = read_request(&mut s).await.unwrap();
        // a node map claiming a billion nodes in 40 bytes
        let mut data = 1_000_000_000u32.to_ne_bytes().to_vec();
        data.extend_from_slice(&[0; 36]);
        s.write_all(&reply(h.reqid, 0, &data, None)).await.unwrap();
        let (_, _, _) = read_request(&mut s).await.unwrap();
        // not ctdb at all
        s.write_all(&[0xff; 64]).await.unwrap();
        let _ = read_request(&mut s).await;
    }));
    let (client, mut events) = CtdbClient::connect(&f.config).await.unwrap();
    let err = client.nodemap().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Decode {
                opcode: 91,
                source: DecodeError::CountTooLarge { .. }
            }
        ),
        "{err}"
    );
    let err = client.runstate().await.unwrap_err();
    assert!(matches!(err, ClientError::Disconnected), "{err}");
    assert_eq!(events.recv().await, Some(ClusterEvent::Disconnected));
    drop(client);
    server.await.unwrap();
}

#[tokio::test]
async fn connect_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig::new(dir.path().join("missing.socket"));
    let err = CtdbClient::connect(&config).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("missing.socket"));
}

#[test]
fn messages_become_events() {
    let m = |srvid, data: &[u8]| {
        let packet = Message::encode(0, 0, 0, srvid, data);
        match decode_packet(&packet).unwrap() {
            Packet::Message(m) => message_event(m),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        m(srvid::TAKE_IP, b"fd00::1\0"),
        ClusterEvent::TakeIp("fd00::1".parse().unwrap())
    );
    // unreadable payloads are passed on, not dropped
    assert_eq!(
        m(srvid::RELEASE_IP, b"garbage"),
        ClusterEvent::Message {
            srvid: srvid::RELEASE_IP,
            data: b"garbage".to_vec()
        }
    );
    assert_eq!(
        m(srvid::LEADER, &1u32.to_ne_bytes()),
        ClusterEvent::Message {
            srvid: srvid::LEADER,
            data: 1u32.to_ne_bytes().to_vec()
        }
    );
}
