//! A line-driven probe of keel's CTDB client, for interop/ctdb-client (against the lab of
//! interop/ctdb-lab): one client connection for the probe's life, so what it registers stays
//! registered while the script checks it from other nodes.
//!
//!   ctdb_probe SOCKET [TIMEOUT_SECS]
//!
//! Commands on stdin, one per line; each answers one line, "ok ..." or "err ...":
//!   state                     pnn, recovery mode, this node's flags, runstate
//!   nodemap                   every node's pnn and flags
//!   subscribe                 register for RELEASE_IP and TAKE_IP
//!   register SERVER CLIENT    TCP_CLIENT for the connection SERVER (public ip:port) <- CLIENT
//!   tickles PNN IP            the connections node PNN knows for IP
//!   wait release|take IP SECS until that event arrives (other events are printed as skipped)
//!   quit

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keel::cluster::ctdb::{ClientConfig, ClusterEvent, ClusterEvents, CtdbClient};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(socket) = args.next() else {
        eprintln!("usage: ctdb_probe SOCKET [TIMEOUT_SECS]");
        std::process::exit(2);
    };
    let mut config = ClientConfig::new(socket);
    if let Some(secs) = args.next().and_then(|s| s.parse().ok()) {
        config.timeout = Duration::from_secs(secs);
    }
    let (client, mut events) = match CtdbClient::connect(&config).await {
        Ok(pair) => pair,
        Err(e) => {
            println!("err connect: {e}");
            std::process::exit(1);
        }
    };
    println!("ok connected pnn={}", client.pnn());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            break;
        }
        let answer = match run(&client, &mut events, &words).await {
            Ok(text) => format!("ok {text}"),
            Err(text) => format!("err {text}"),
        };
        println!("{answer}");
    }
}

async fn run(
    client: &CtdbClient,
    events: &mut ClusterEvents,
    words: &[&str],
) -> Result<String, String> {
    let e = |e: keel::cluster::ctdb::ClientError| e.to_string();
    match words {
        ["state"] => {
            let state = client.node_state().await.map_err(e)?;
            let mode = client.recovery_mode().await.map_err(e)?;
            let runstate = client.runstate().await.map_err(e)?;
            Ok(format!(
                "pnn={} recmode={mode:?} recovery_normal={} healthy={} flags={} runstate={runstate:?}",
                state.pnn,
                state.recovery_normal,
                state.healthy,
                state.flags.describe()
            ))
        }
        ["nodemap"] => {
            let nodes = client.nodemap().await.map_err(e)?;
            Ok(nodes
                .iter()
                .map(|n| format!("{}:{}:{}", n.pnn, n.addr.ip(), n.flags.describe()))
                .collect::<Vec<_>>()
                .join(" "))
        }
        ["subscribe"] => {
            client.subscribe_ip_events().await.map_err(e)?;
            Ok("subscribed".into())
        }
        ["register", server, peer] => {
            let server: SocketAddr = server
                .parse()
                .map_err(|_| format!("bad address {server}"))?;
            let peer: SocketAddr = peer.parse().map_err(|_| format!("bad address {peer}"))?;
            client.tcp_client_register(server, peer).await.map_err(e)?;
            Ok(format!("registered {peer} -> {server}"))
        }
        ["tickles", pnn, ip] => {
            let pnn: u32 = pnn.parse().map_err(|_| format!("bad pnn {pnn}"))?;
            let ip: IpAddr = ip.parse().map_err(|_| format!("bad ip {ip}"))?;
            let conns = client.tickle_list(pnn, ip).await.map_err(e)?;
            Ok(format!(
                "{} [{}]",
                conns.len(),
                conns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        ["wait", kind @ ("release" | "take"), ip, secs] => {
            let ip: IpAddr = ip.parse().map_err(|_| format!("bad ip {ip}"))?;
            let secs: u64 = secs.parse().map_err(|_| format!("bad seconds {secs}"))?;
            let want = if *kind == "release" {
                ClusterEvent::ReleaseIp(ip)
            } else {
                ClusterEvent::TakeIp(ip)
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
            let mut skipped = Vec::new();
            loop {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Err(_) => return Err(format!("timeout; skipped {skipped:?}")),
                    Ok(None) | Ok(Some(ClusterEvent::Disconnected)) => {
                        return Err("disconnected".into());
                    }
                    Ok(Some(event)) if event == want => {
                        return Ok(format!("{event:?} skipped {skipped:?}"));
                    }
                    Ok(Some(other)) => skipped.push(other),
                }
            }
        }
        _ => Err(format!("unknown command {words:?}")),
    }
}
