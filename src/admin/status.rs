//! What `keel status` shows: the [`StatusReport`] the server builds from its running objects
//! (`server::status::collect`), sent as JSON over the control socket and parsed back by the
//! CLI, and its compact human form ([`render_human`]).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::iscsi::session::{ConnectionInfo, SessionInfo};

/// The whole server at one moment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub server: ServerStatus,
    pub targets: Vec<TargetStatus>,
    /// Every volume the pools' provisioner knows (those being destroyed too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeReport>,
}

/// A provisioned volume: where it is on its way to ready (or away).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub pool: String,
    pub name: String,
    /// queued, creating, waiting_for_device, ready, failed, destroying.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Time in its pool's queue (until now while queued, else until its call started).
    pub queued_seconds: f64,
    /// Failed tries so far (busy server, unknown outcomes).
    pub attempts: u32,
    /// An initiator is waiting for it (it went to the front of the queue).
    pub demanded: bool,
}

impl Eq for VolumeReport {}

/// Server-wide totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub version: String,
    pub uptime_seconds: u64,
    /// The addresses the portals listen on.
    pub portals: Vec<String>,
    pub targets: usize,
    pub luns: usize,
    /// Normal sessions (discovery sessions are counted apart).
    pub sessions: usize,
    pub connections: usize,
    pub discovery_sessions: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group_tag: u16,
    pub luns: Vec<LunStatus>,
    pub sessions: Vec<SessionStatus>,
    pub logins: LoginCounts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunStatus {
    pub lun: u64,
    /// The medium's path (empty when none is attached, e.g. a LUN that failed to open).
    pub backing: String,
    pub size_bytes: u64,
    pub block_size: u32,
    pub read_only: bool,
    #[serde(flatten)]
    pub state: LunState,
    /// For a LUN backed by a provisioned volume: the volume and its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeReport>,
}

/// Whether a LUN serves I/O (SBC-4 §4.x readiness as keel keeps it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LunState {
    Ready,
    /// Still being provisioned: initiators get 02/04/01 and retry.
    BecomingReady,
    /// Taken offline.
    Offline,
    /// A removable medium an initiator unloaded.
    NoMedium,
    /// Could not be brought up (opened, recovered, ...); the configuration wants it.
    Failed {
        reason: String,
    },
}

impl LunState {
    fn name(&self) -> &'static str {
        match self {
            LunState::Ready => "ready",
            LunState::BecomingReady => "becoming ready",
            LunState::Offline => "offline",
            LunState::NoMedium => "no medium",
            LunState::Failed { .. } => "failed",
        }
    }
}

/// Logins to a target by outcome (the Status-Class of the final Login Response, RFC 7143
/// §11.13.5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCounts {
    pub success: u64,
    pub redirect: u64,
    pub initiator_error: u64,
    pub target_error: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub initiator: String,
    /// As 12 hex digits.
    pub isid: String,
    pub tsih: u16,
    pub connections: Vec<ConnectionStatus>,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub commands_in_flight: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub cid: u16,
    pub peer: String,
    pub local: String,
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength (the most keel sends in one PDU).
    pub initiator_max_recv_data_segment_length: u32,
    /// keel's (the most the initiator may send in one PDU).
    pub target_max_recv_data_segment_length: u32,
}

impl From<&ConnectionInfo> for ConnectionStatus {
    fn from(c: &ConnectionInfo) -> Self {
        ConnectionStatus {
            cid: c.cid,
            peer: c.peer.to_string(),
            local: c.local.to_string(),
            header_digest: c.header_digest,
            data_digest: c.data_digest,
            initiator_max_recv_data_segment_length: c.initiator_max_recv_data_segment_length,
            target_max_recv_data_segment_length: c.target_max_recv_data_segment_length,
        }
    }
}

impl From<&SessionInfo> for SessionStatus {
    fn from(s: &SessionInfo) -> Self {
        SessionStatus {
            initiator: s.initiator.clone(),
            isid: s.isid.iter().map(|b| format!("{b:02x}")).collect(),
            tsih: s.tsih,
            connections: s.connections.iter().map(ConnectionStatus::from).collect(),
            max_burst_length: s.max_burst_length,
            first_burst_length: s.first_burst_length,
            immediate_data: s.immediate_data,
            initial_r2t: s.initial_r2t,
            commands_in_flight: s.commands_in_flight,
        }
    }
}

/// The report as aligned text, for a terminal.
pub fn render_human(report: &StatusReport) -> String {
    let s = &report.server;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keel {}, up {}: {} {}, {} {}, {} {}, {} {}{}",
        s.version,
        duration(s.uptime_seconds),
        s.targets,
        plural(s.targets, "target"),
        s.luns,
        plural(s.luns, "LUN"),
        s.sessions,
        plural(s.sessions, "session"),
        s.connections,
        plural(s.connections, "connection"),
        match s.discovery_sessions {
            0 => String::new(),
            n => format!(" (+{n} discovery)"),
        }
    );
    let _ = writeln!(out, "portals: {}", s.portals.join(", "));
    for t in &report.targets {
        out.push('\n');
        let alias = t
            .alias
            .as_deref()
            .map(|a| format!("alias {a}, "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "target {} ({alias}tpgt {})",
            t.name, t.portal_group_tag
        );
        let l = &t.logins;
        let _ = writeln!(
            out,
            "  logins: {} ok, {} redirected, {} refused (initiator error), {} failed (target error)",
            l.success, l.redirect, l.initiator_error, l.target_error
        );
        let mut luns = vec![row(["LUN", "STATE", "SIZE", "BLOCK", "MODE", "BACKING"])];
        for lun in &t.luns {
            // A failed LUN has no medium to describe: its reason goes in that column.
            let backing = match (&lun.state, &lun.volume) {
                (LunState::Failed { reason }, _) => reason.clone(),
                (_, Some(v)) if v.state != "ready" => format!(
                    "volume {}/{}: {} ({:.1} s in queue{})",
                    v.pool,
                    v.name,
                    v.state,
                    v.queued_seconds,
                    if v.attempts > 0 {
                        format!(", {} retries", v.attempts)
                    } else {
                        String::new()
                    }
                ),
                _ => lun.backing.clone(),
            };
            luns.push(vec![
                lun.lun.to_string(),
                lun.state.name().into(),
                size(lun.size_bytes),
                lun.block_size.to_string(),
                if lun.read_only { "ro" } else { "rw" }.into(),
                backing,
            ]);
        }
        table(&mut out, &luns);
        if t.sessions.is_empty() {
            out.push_str("  no sessions\n");
            continue;
        }
        let mut sessions = vec![row([
            "INITIATOR",
            "ISID",
            "TSIH",
            "CID",
            "PEER",
            "DIGESTS",
            "BURST FIRST/MAX",
            "RECV SEGMENT IN/OUT",
            "IMMEDIATE/R2T",
            "IN FLIGHT",
        ])];
        for session in &t.sessions {
            let burst = format!(
                "{}/{}",
                session.first_burst_length, session.max_burst_length
            );
            let flags = format!(
                "{}/{}",
                yes_no(session.immediate_data),
                yes_no(session.initial_r2t)
            );
            let first = [
                session.initiator.clone(),
                session.isid.clone(),
                session.tsih.to_string(),
            ];
            if session.connections.is_empty() {
                let mut r = first.to_vec();
                r.extend(["-", "-", "-", "", "", "", ""].map(String::from));
                r.push(session.commands_in_flight.to_string());
                sessions.push(r);
            }
            for (i, c) in session.connections.iter().enumerate() {
                let mut r = if i == 0 {
                    first.to_vec()
                } else {
                    vec![String::new(); 3]
                };
                r.extend([
                    c.cid.to_string(),
                    c.peer.clone(),
                    digests(c),
                    burst.clone(),
                    format!(
                        "{}/{}",
                        c.target_max_recv_data_segment_length,
                        c.initiator_max_recv_data_segment_length
                    ),
                    flags.clone(),
                    if i == 0 {
                        session.commands_in_flight.to_string()
                    } else {
                        String::new()
                    },
                ]);
                sessions.push(r);
            }
        }
        table(&mut out, &sessions);
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Appends `rows` indented by two spaces, each column as wide as its widest cell.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (cell, width) in r.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn digests(c: &ConnectionStatus) -> String {
    match (c.header_digest, c.data_digest) {
        (false, false) => "none",
        (true, false) => "header",
        (false, true) => "data",
        (true, true) => "header+data",
    }
    .into()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.into()
    } else {
        format!("{word}s")
    }
}

/// Bytes in binary units, exact when whole ("1 GiB", "1.5 MiB", "4096 B").
fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit < UNITS.len() - 1 && bytes >= 1024u64.pow(unit as u32 + 1) {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds as "3d 4h", "2h 5m", "7m 3s" or "42s".
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusReport {
        StatusReport {
            server: ServerStatus {
                version: "0.1.0".into(),
                uptime_seconds: 3725,
                portals: vec!["127.0.0.1:3260".into()],
                targets: 1,
                luns: 2,
                sessions: 1,
                connections: 1,
                discovery_sessions: 0,
            },
            targets: vec![TargetStatus {
                name: "iqn.2026-11.io.keel:a".into(),
                alias: Some("a".into()),
                portal_group_tag: 1,
                luns: vec![
                    LunStatus {
                        lun: 0,
                        backing: "/var/lib/keel/a0.img".into(),
                        size_bytes: 1 << 30,
                        block_size: 512,
                        read_only: false,
                        state: LunState::Ready,
                        volume: None,
                    },
                    LunStatus {
                        lun: 1,
                        backing: String::new(),
                        size_bytes: 0,
                        block_size: 512,
                        read_only: false,
                        state: LunState::Failed {
                            reason: "cannot open /x: No such file or directory".into(),
                        },
                        volume: None,
                    },
                ],
                sessions: vec![SessionStatus {
                    initiator: "iqn.1993-08.org.debian:01:abc".into(),
                    isid: "23d000000001".into(),
                    tsih: 3,
                    connections: vec![ConnectionStatus {
                        cid: 0,
                        peer: "127.0.0.1:50000".into(),
                        local: "127.0.0.1:3260".into(),
                        header_digest: true,
                        data_digest: false,
                        initiator_max_recv_data_segment_length: 262_144,
                        target_max_recv_data_segment_length: 262_144,
                    }],
                    max_burst_length: 1_048_576,
                    first_burst_length: 65_536,
                    immediate_data: true,
                    initial_r2t: false,
                    commands_in_flight: 4,
                }],
                logins: LoginCounts {
                    success: 1,
                    ..LoginCounts::default()
                },
            }],
            volumes: Vec::new(),
        }
    }

    #[test]
    fn the_json_form_round_trips_and_names_the_state() {
        let report = sample();
        let json = serde_json::to_value(&report).unwrap();
        let luns = &json["targets"][0]["luns"];
        assert_eq!(luns[0]["state"], "ready");
        assert_eq!(luns[1]["state"], "failed");
        assert!(luns[1]["reason"].as_str().unwrap().contains("cannot open"));
        let back: StatusReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        let becoming: LunState = serde_json::from_str(r#"{"state":"becoming_ready"}"#).unwrap();
        assert_eq!(becoming, LunState::BecomingReady);
    }

    #[test]
    fn the_human_form_is_aligned() {
        let text = render_human(&sample());
        assert!(
            text.starts_with("keel 0.1.0, up 1h 2m: 1 target, 2 LUNs, 1 session, 1 connection\n"),
            "{text}"
        );
        assert!(text.contains("target iqn.2026-11.io.keel:a (alias a, tpgt 1)"));
        let lines: Vec<&str> = text.lines().collect();
        let header = lines.iter().position(|l| l.contains("LUN  STATE")).unwrap();
        // Columns line up: BACKING starts at the same place in the header and the rows.
        let column = lines[header].find("BACKING").unwrap();
        assert_eq!(lines[header + 1].find("/var/lib/keel"), Some(column));
        assert!(lines[header + 1].contains("1 GiB"));
        assert!(lines[header + 2].contains("failed"));
        assert_eq!(lines[header + 2].find("cannot open /x"), Some(column));
        let sessions = lines.iter().position(|l| l.contains("INITIATOR")).unwrap();
        let row = lines[sessions + 1];
        assert!(
            row.contains("23d000000001") && row.contains("header "),
            "{row}"
        );
        assert!(
            row.contains("65536/1048576") && row.contains("yes/no"),
            "{row}"
        );
        assert_eq!(lines[sessions].find("IN FLIGHT"), row.rfind('4'), "{text}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(1536 * 1024), "1.5 MiB");
        assert_eq!(size(1000), "1000 B");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(90_061), "1d 1h");
    }
}
