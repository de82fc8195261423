//! The status report of the running server (`keel status`), read from the running objects:
//! the target registry and each target's logical units, the session registry, the metrics'
//! login counts. LUNs that the configuration wants but that could not be brought up are not
//! in any target: their failures are those the applier (`apply::Running`) keeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::admin::status::{
    LoginCounts, LunState, LunStatus, ServerStatus, SessionStatus, StatusReport, TargetStatus,
    VolumeReport,
};
use crate::iscsi::Service;
use crate::iscsi::metrics::LoginResult;
use crate::provision::VolumeState;
use crate::scsi::Readiness;

use super::apply::Running;

/// The report of the running server.
pub fn report(running: &Running) -> StatusReport {
    let mut report = collect(
        running.service(),
        &running.local_addrs(),
        running.lun_failures(),
    );
    add_volumes(&mut report, running);
    report
}

/// The provisioner's view: each volume's state, on the LUN it backs and in the list of all;
/// a LUN whose volume failed shows as failed with the reason.
fn add_volumes(report: &mut StatusReport, running: &Running) {
    let volumes = running.volumes();
    let failures: BTreeMap<(String, u64), String> = volumes.failures().into_iter().collect();
    let mut by_volume: BTreeMap<(String, String), VolumeReport> = BTreeMap::new();
    for v in volumes.status() {
        let state = v.state.name();
        let reason = match v.state {
            VolumeState::Failed(reason) => Some(reason),
            _ => None,
        };
        let line = VolumeReport {
            pool: v.pool.clone(),
            name: v.name.clone(),
            state: state.into(),
            reason,
            queued_seconds: v.in_queue.as_secs_f64(),
            attempts: v.attempts,
            demanded: v.demanded,
        };
        by_volume.insert((v.pool.to_ascii_lowercase(), v.name), line.clone());
        report.volumes.push(line);
    }
    for target in &mut report.targets {
        for lun in &mut target.luns {
            if let Some(spec) = running.volume_of(&target.name, lun.lun) {
                lun.volume = by_volume
                    .get(&(spec.pool.to_ascii_lowercase(), spec.name.clone()))
                    .cloned();
            }
            if lun.state == LunState::Offline
                && let Some(reason) = failures.get(&(target.name.clone(), lun.lun))
            {
                lun.state = LunState::Failed {
                    reason: reason.clone(),
                };
            }
        }
    }
}

/// The report of `service`, listening on `portals`, with the LUNs in `failures` (target,
/// LUN, reason) shown as failed (those of targets that exist).
pub fn collect<'a>(
    service: &Service,
    portals: &[SocketAddr],
    failures: impl IntoIterator<Item = (&'a str, u64, &'a str)>,
) -> StatusReport {
    let mut failed_luns: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    for (target, lun, reason) in failures {
        failed_luns.entry(target).or_default().push((lun, reason));
    }
    let sessions = service.sessions.list();
    let logins = service.metrics.logins();
    let mut targets = Vec::new();
    for target in service.targets.list() {
        let mut luns: BTreeMap<u64, LunStatus> = BTreeMap::new();
        for lu in target.device.luns() {
            let state = match lu.readiness() {
                Readiness::Ready => LunState::Ready,
                Readiness::BecomingReady => LunState::BecomingReady,
                Readiness::Offline => LunState::Offline,
                Readiness::NoMedium => LunState::NoMedium,
            };
            luns.insert(
                lu.lun(),
                LunStatus {
                    lun: lu.lun(),
                    backing: lu.describe_medium().unwrap_or_default(),
                    size_bytes: lu.capacity_blocks() * u64::from(lu.block_size()),
                    block_size: lu.block_size(),
                    read_only: lu.is_read_only(),
                    state,
                    volume: None,
                },
            );
        }
        let failed = failed_luns.remove(target.name.as_str()).unwrap_or_default();
        for (lun, reason) in failed {
            // A LUN that serves (re-added since) is not failed any more.
            luns.entry(lun).or_insert_with(|| LunStatus {
                lun,
                backing: String::new(),
                size_bytes: 0,
                block_size: 0,
                read_only: false,
                state: LunState::Failed {
                    reason: reason.to_owned(),
                },
                volume: None,
            });
        }
        let mut counts = LoginCounts::default();
        for ((name, result), n) in &logins {
            if *name == target.name {
                *match result {
                    LoginResult::Success => &mut counts.success,
                    LoginResult::Redirect => &mut counts.redirect,
                    LoginResult::InitiatorError => &mut counts.initiator_error,
                    LoginResult::TargetError => &mut counts.target_error,
                } += n;
            }
        }
        targets.push(TargetStatus {
            name: target.name.clone(),
            alias: target.alias.clone(),
            portal_group_tag: target.portal_group_tag,
            luns: luns.into_values().collect(),
            sessions: sessions
                .iter()
                .filter(|s| s.target == target.name)
                .map(SessionStatus::from)
                .collect(),
            logins: counts,
        });
    }
    let normal = sessions.iter().filter(|s| !s.target.is_empty());
    StatusReport {
        server: ServerStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: service.started.elapsed().as_secs(),
            portals: portals.iter().map(ToString::to_string).collect(),
            targets: targets.len(),
            luns: targets.iter().map(|t| t.luns.len()).sum(),
            sessions: normal.clone().count(),
            connections: normal.map(|s| s.connections.len()).sum(),
            discovery_sessions: sessions.iter().filter(|s| s.target.is_empty()).count(),
        },
        targets,
        volumes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::iscsi::params::Negotiated;
    use crate::iscsi::session::{SessionDetails, SessionKey};
    use crate::iscsi::{Settings, Target};

    const TARGET: &str = "iqn.2026-01.test:status";

    #[tokio::test]
    async fn the_report_shows_luns_failures_sessions_and_totals() {
        let service = Service::new(Settings::default());
        service.targets.insert(Arc::new(Target {
            alias: Some("disk".into()),
            portal_group_tag: 2,
            ..Target::for_test(TARGET, 4096, true)
        }));
        let key = SessionKey {
            initiator: "iqn.2026-01.test:i".into(),
            isid: [0x80, 0, 0, 0, 0, 1],
            target: TARGET.into(),
        };
        let guard = service.sessions.admit(key).await.unwrap();
        let params = Negotiated::defaults(&Settings::default());
        let (peer, local) = (
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:3260".parse().unwrap(),
        );
        guard.describe(SessionDetails::new(1, peer, local, &params));
        service.metrics.count_login(TARGET, 0);
        service.metrics.count_login(TARGET, 2);
        let failures = [
            (TARGET, 5, "cannot open /nowhere"),
            ("iqn.2026-01.test:gone", 0, "other target"),
        ];

        let report = collect(&service, &[local], failures);
        assert_eq!(report.server.targets, 1);
        assert_eq!(report.server.luns, 2);
        assert_eq!((report.server.sessions, report.server.connections), (1, 1));
        assert_eq!(report.server.portals, ["127.0.0.1:3260"]);
        let target = &report.targets[0];
        assert_eq!(
            (target.alias.as_deref(), target.portal_group_tag),
            (Some("disk"), 2)
        );
        let lun0 = &target.luns[0];
        assert_eq!(
            (lun0.size_bytes, lun0.block_size, lun0.read_only),
            (1 << 20, 4096, true)
        );
        assert_eq!(lun0.state, LunState::Ready);
        assert_eq!(lun0.backing, "memory (1048576 bytes)");
        assert_eq!(
            target.luns[1].state,
            LunState::Failed {
                reason: "cannot open /nowhere".into()
            }
        );
        assert_eq!(
            (target.logins.success, target.logins.initiator_error),
            (1, 1)
        );
        let session = &target.sessions[0];
        assert_eq!(
            (session.isid.as_str(), session.tsih),
            ("800000000001", guard.tsih)
        );
        assert_eq!(session.connections[0].peer, "127.0.0.1:5000");
        assert_eq!(session.max_burst_length, params.max_burst);
    }
}
