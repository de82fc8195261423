//! Whether this node is fit to serve (`keel health`, run by the CTDB event script's
//! `monitor`: a failing check makes CTDB mark the node unhealthy and move its public
//! addresses away). Checked: every configured portal listens and accepts a connection; every
//! LUN opened; every LUN's backing file or device still exists. That the control socket
//! answers is shown by the answer itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::apply::Running;
use crate::config::{Backing, Config};

/// How long a portal may take to accept the check's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The health report: healthy when `problems` is empty.
#[derive(Debug, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub problems: Vec<String>,
}

/// Checks `running` against the desired configuration `config`.
pub async fn check(running: &Running, config: &Config) -> Health {
    let mut problems = Vec::new();
    let bound = running.local_addrs();
    for portal in &config.portals {
        // A portal asking for port 0 gets whatever port it was given.
        let listening = bound
            .iter()
            .find(|b| b.ip() == portal.ip() && (portal.port() == 0 || b.port() == portal.port()));
        let Some(local) = listening else {
            problems.push(format!("portal {portal} is not listening"));
            continue;
        };
        let reach = reachable(*local);
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(reach)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => problems.push(format!("portal {portal}: connecting to {reach}: {e}")),
            Err(_) => problems.push(format!(
                "portal {portal}: no answer from {reach} in {CONNECT_TIMEOUT:?}"
            )),
        }
    }
    for (target, lun, why) in running.lun_failures() {
        problems.push(format!("target {target} LUN {lun} is not serving: {why}"));
    }
    for target in &config.targets {
        for lun in &target.luns {
            let path = match &lun.backing {
                Backing::File { path, .. } | Backing::Block { path, .. } => path,
                // A volume's device comes and goes with provisioning; its state is in status.
                Backing::Volume(_) => continue,
            };
            if let Err(e) = std::fs::metadata(path) {
                problems.push(format!(
                    "target {} LUN {}: backing {} is gone: {e}",
                    target.name,
                    lun.lun,
                    path.display()
                ));
            }
        }
    }
    Health {
        healthy: problems.is_empty(),
        problems,
    }
}

/// Where to connect to reach a listener: a wildcard address through loopback.
fn reachable(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_through_loopback() {
        assert_eq!(
            reachable("0.0.0.0:3260".parse().unwrap()),
            "127.0.0.1:3260".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:3260".parse().unwrap()),
            "[::1]:3260".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("10.9.0.201:3260".parse().unwrap()),
            "10.9.0.201:3260".parse::<SocketAddr>().unwrap()
        );
    }
}
