//! `keel target add --from FILE [--wait]`: many targets in one go, each a `target.add` call
//! (each persisted in its own file, each applied on its own: the per-change rule), then,
//! with `--wait`, polling `status` until every LUN of them is ready or has failed. On a
//! terminal it shows progress bars (indicatif); otherwise (a script, a log) plain lines, one
//! per step, so the output stays readable.

use std::io::IsTerminal as _;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};

use super::client::{Client, ClientError};
use super::protocol::{Command, ErrorCode};
use super::status::{LunState, StatusReport};

/// How often `--wait` asks for the status.
const POLL: Duration = Duration::from_millis(500);

/// What a bulk add did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BulkSummary {
    pub added: usize,
    /// "NAME: why" for each target that could not be added.
    pub refused: Vec<String>,
    /// With `--wait`: LUNs ready, and "TARGET LUN N: why" for those that failed.
    pub ready: usize,
    pub failed: Vec<String>,
    /// With `--wait`: LUNs still becoming ready when the wait ended.
    pub pending: usize,
}

impl BulkSummary {
    pub fn succeeded(&self) -> bool {
        self.refused.is_empty() && self.failed.is_empty() && self.pending == 0
    }
}

/// The `[[target]]` tables of `file` (the format of an included file), as the JSON objects
/// `target.add` takes.
pub fn read_targets(file: &Path) -> Result<Vec<Map<String, Value>>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", file.display(), e.message()))?;
    let mut targets = Vec::new();
    for (key, value) in table {
        if key != "target" {
            return Err(format!(
                "{}: only [[target]] tables belong here, not {key:?}",
                file.display()
            ));
        }
        let toml::Value::Array(list) = value else {
            return Err(format!(
                "{}: {key:?} is not a list of [[target]] tables",
                file.display()
            ));
        };
        for item in list {
            match serde_json::to_value(item) {
                Ok(Value::Object(map)) => targets.push(map),
                Ok(_) => return Err(format!("{}: a [[target]] is not a table", file.display())),
                Err(e) => return Err(format!("{}: {e}", file.display())),
            }
        }
    }
    Ok(targets)
}

/// Adds every target of `targets` through `socket`; with `wait`, waits up to `timeout` for
/// their LUNs.
pub fn add_targets(
    socket: &Path,
    targets: Vec<Map<String, Value>>,
    wait: Option<Duration>,
) -> Result<BulkSummary, ClientError> {
    let progress = Progress::new(std::io::stderr().is_terminal());
    let mut client = Client::connect(socket)?;
    let mut summary = BulkSummary::default();
    let mut names = Vec::new();
    let bar = progress.bar("adding", targets.len());
    for target in targets {
        let name = target
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("(no name)")
            .to_string();
        match call_paced(&mut client, &Command::TargetAdd { target }) {
            Ok(_) => {
                summary.added += 1;
                names.push(name.clone());
                progress.step(&bar, &format!("added {name}"));
            }
            Err(ClientError::Call(e)) => {
                progress.step(&bar, &format!("refused {name}: {}", e.message));
                summary.refused.push(format!("{name}: {}", e.message));
            }
            Err(e) => return Err(e),
        }
    }
    progress.finish(&bar);
    let Some(timeout) = wait else {
        return Ok(summary);
    };
    let deadline = Instant::now() + timeout;
    let mut bar = None;
    loop {
        let status = call_paced(&mut client, &Command::Status)?;
        let report: StatusReport = serde_json::from_value(status)
            .map_err(|e| ClientError::Protocol(format!("status: {e}")))?;
        let counts = count_luns(&report, &names);
        let bar = bar.get_or_insert_with(|| progress.bar("ready", counts.total));
        progress.set(
            bar,
            counts.ready + counts.failed.len(),
            &format!(
                "{} of {} LUNs ready, {} failed",
                counts.ready,
                counts.total,
                counts.failed.len()
            ),
        );
        if counts.pending == 0 || Instant::now() >= deadline {
            progress.finish(bar);
            summary.ready = counts.ready;
            summary.failed = counts.failed;
            summary.pending = counts.pending;
            return Ok(summary);
        }
        std::thread::sleep(POLL);
    }
}

/// One call, waiting and trying again while the socket says the connection is over its
/// request rate.
fn call_paced(client: &mut Client, command: &Command) -> Result<Value, ClientError> {
    loop {
        match client.call(command) {
            Err(ClientError::Call(e)) if e.code == ErrorCode::RateLimited => {
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct LunCounts {
    total: usize,
    ready: usize,
    pending: usize,
    failed: Vec<String>,
}

/// The LUNs of the targets named in `names`: ready, still coming, failed (with why).
fn count_luns(report: &StatusReport, names: &[String]) -> LunCounts {
    let mut counts = LunCounts::default();
    for name in names {
        let Some(target) = report
            .targets
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
        else {
            counts.failed.push(format!("{name}: no longer served"));
            continue;
        };
        for lun in &target.luns {
            counts.total += 1;
            match &lun.state {
                LunState::Ready => counts.ready += 1,
                LunState::BecomingReady => counts.pending += 1,
                LunState::Failed { reason } => counts
                    .failed
                    .push(format!("{name} LUN {}: {reason}", lun.lun)),
                LunState::Offline => counts
                    .failed
                    .push(format!("{name} LUN {}: offline", lun.lun)),
                LunState::NoMedium => counts.ready += 1,
            }
        }
    }
    counts
}

/// Progress bars on a terminal, plain lines elsewhere.
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new(terminal: bool) -> Progress {
        Progress { terminal }
    }

    fn bar(&self, what: &str, total: usize) -> ProgressBar {
        if !self.terminal {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>6} [{bar:40}] {pos}/{len} {elapsed} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(what.to_string());
        bar
    }

    fn step(&self, bar: &ProgressBar, line: &str) {
        if self.terminal {
            bar.inc(1);
            bar.set_message(line.to_string());
        } else {
            eprintln!("{line}");
        }
    }

    fn set(&self, bar: &ProgressBar, position: usize, line: &str) {
        if self.terminal {
            bar.set_position(position as u64);
            bar.set_message(line.to_string());
        } else {
            eprintln!("{line}");
        }
    }

    fn finish(&self, bar: &ProgressBar) {
        if self.terminal {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{LoginCounts, LunStatus, ServerStatus, TargetStatus};

    fn target(name: &str, states: &[LunState]) -> TargetStatus {
        TargetStatus {
            name: name.into(),
            alias: None,
            portal_group_tag: 1,
            luns: states
                .iter()
                .enumerate()
                .map(|(i, state)| LunStatus {
                    lun: i as u64,
                    backing: String::new(),
                    size_bytes: 0,
                    block_size: 512,
                    read_only: false,
                    state: state.clone(),
                    volume: None,
                })
                .collect(),
            sessions: Vec::new(),
            logins: LoginCounts::default(),
        }
    }

    #[test]
    fn luns_of_the_added_targets_are_counted_by_state() {
        let report = StatusReport {
            server: ServerStatus {
                version: "0".into(),
                uptime_seconds: 1,
                portals: Vec::new(),
                targets: 3,
                luns: 4,
                sessions: 0,
                connections: 0,
                discovery_sessions: 0,
            },
            targets: vec![
                target("iqn.a", &[LunState::Ready, LunState::BecomingReady]),
                target(
                    "iqn.b",
                    &[LunState::Failed {
                        reason: "volume tank/b: out of space".into(),
                    }],
                ),
                target("iqn.other", &[LunState::BecomingReady]),
            ],
            volumes: Vec::new(),
        };
        let names = ["iqn.a".to_string(), "iqn.b".into(), "iqn.gone".into()];
        let counts = count_luns(&report, &names);
        assert_eq!(counts.total, 3);
        assert_eq!(counts.ready, 1);
        assert_eq!(counts.pending, 1);
        assert_eq!(
            counts.failed,
            [
                "iqn.b LUN 0: volume tank/b: out of space",
                "iqn.gone: no longer served"
            ]
        );
    }

    #[test]
    fn a_file_of_target_tables_reads_as_target_add_objects() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("batch.toml");
        std::fs::write(
            &file,
            "[[target]]\nname = \"iqn.a\"\n[[target.lun]]\nlun = 0\nvolume = \"tank/a\"\nsize = \"1GiB\"\n\
             [[target]]\nname = \"iqn.b\"\n[[target.lun]]\nlun = 0\nfile = \"b.img\"\n",
        )
        .unwrap();
        let targets = read_targets(&file).unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0]["name"], "iqn.a");
        assert_eq!(targets[0]["lun"][0]["volume"], "tank/a");
        std::fs::write(&file, "[server]\nportals = []\n").unwrap();
        assert!(
            read_targets(&file)
                .unwrap_err()
                .contains("only [[target]] tables")
        );
        std::fs::write(&file, "[[target]\n").unwrap();
        assert!(read_targets(&file).is_err());
    }
}
