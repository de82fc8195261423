//! The `ctdb` command-line tool as keel uses it, for the persistent-database calls
//! (`attach`, `pfetch`, `pstore`) that carry the reservation tables, and [`ClusterView`],
//! keel's judgement of ctdbd's node map (read with the native client, `ctdb/client.rs`):
//! may this node serve, may the tables change. The tool runs as a child process
//! (tokio::process, bounded, killed if abandoned, in a process group of its own).
//!
//! Why the tool for the database: a CTDB persistent transaction takes a g_lock record and
//! reads and writes the local tdb files directly (samba `ctdb/client/client_db.c`); the tool
//! is the maintained implementation of that, and a PR OUT is rare enough to afford a child
//! process (about 10 ms).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use super::ctdb::{NodeFlags, NodeInfo};
use super::settings::ClusterSettings;

/// One node of the node map as keel judges it: its flags named the way `ctdb status` names
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewedNode {
    pub pnn: u32,
    pub address: String,
    /// Flag names (DISCONNECTED, UNHEALTHY, ...); empty when the node is OK.
    pub flags: Vec<String>,
    pub this_node: bool,
}

impl ViewedNode {
    fn connected(&self) -> bool {
        !self.flags.iter().any(|f| f == "DISCONNECTED")
    }
}

/// The cluster as this node's ctdbd sees it: its node map and recovery mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub nodes: Vec<ViewedNode>,
    /// Recovery mode NORMAL: databases are consistent and may change.
    pub recovery_normal: bool,
}

impl ClusterView {
    /// The view from ctdbd's node map and recovery mode (read with the native client), as
    /// `ctdb status` would print it.
    pub fn from_nodemap(nodes: &[NodeInfo], this_pnn: u32, recovery_normal: bool) -> ClusterView {
        let nodes = nodes
            .iter()
            .filter(|n| !n.flags.contains(NodeFlags::DELETED))
            .map(|n| ViewedNode {
                pnn: n.pnn,
                address: n.addr.ip().to_string(),
                flags: if n.flags.is_ok() {
                    Vec::new()
                } else {
                    n.flags.describe().split('|').map(str::to_owned).collect()
                },
                this_node: n.pnn == this_pnn,
            })
            .collect();
        ClusterView {
            nodes,
            recovery_normal,
        }
    }

    /// Whether this node may serve the cluster's addresses at all, and if not, why: it sees
    /// more than half of the nodes. A node cut off from the majority must not keep answering
    /// on an address the others take over (ctdbd does not release it there), and when it
    /// comes back its tables are stale until reloaded. A node's flags do not stop service:
    /// an unhealthy, disabled or banned node's addresses are moved by ctdbd, whose
    /// RELEASE_IP closes their sessions at the right moment; nor does a recovery (every node
    /// goes through one when another joins). Both stop changes ([`Self::allows_changes`]).
    pub fn may_serve(&self) -> Result<(), String> {
        if !self.nodes.iter().any(|n| n.this_node) {
            return Err("ctdbd's node map does not name this node".into());
        }
        let seen = self.nodes.iter().filter(|n| n.connected()).count();
        if seen * 2 <= self.nodes.len() {
            return Err(format!(
                "this node sees {seen} of {} nodes, not a majority",
                self.nodes.len()
            ));
        }
        Ok(())
    }

    /// Whether a reservation table may change now, and if not, why. CTDB has no quorum of
    /// its own (whoever holds the cluster lock leads, DESIGN.md §3), so keel adds one: the
    /// cluster must be out of recovery, this node healthy (no flag at all), and this node
    /// must see more than half of the cluster's nodes. A partitioned leader that keeps the
    /// lock and stays NORMAL is thereby refused, and the table cannot fork.
    pub fn allows_changes(&self) -> Result<(), String> {
        if !self.recovery_normal {
            return Err("the cluster is in recovery".into());
        }
        if let Some(me) = self.nodes.iter().find(|n| n.this_node)
            && !me.flags.is_empty()
        {
            return Err(format!("this node is {}", me.flags.join("|")));
        }
        self.may_serve()
    }
}

/// Runs the `ctdb` tool against the local ctdbd.
#[derive(Clone, Debug)]
pub struct CtdbTool {
    command: Vec<String>,
    socket: PathBuf,
    timeout: Duration,
}

/// Output kept from one call (a reservation table is a few KiB).
const OUTPUT_LIMIT: u64 = 1 << 20;

impl CtdbTool {
    pub fn new(settings: &ClusterSettings) -> io::Result<CtdbTool> {
        if settings.command.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "[cluster] command is empty",
            ));
        }
        Ok(CtdbTool {
            command: settings.command.clone(),
            socket: settings.socket.clone(),
            timeout: settings.timeout,
        })
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(&self.command[0]);
        let limit = self.timeout.as_secs().max(1).to_string();
        // A process group of its own: when ctdb's -T runtime limit expires, its alarm
        // handler signals its whole process group (`kill(0, SIGTERM)`, samba
        // ctdb/tools/ctdb.c alarm_handler). In keel's group that would be keel itself (the
        // group leader under systemd) and whatever started it: one slow call during a
        // recovery would shut the target down.
        command.process_group(0);
        command
            .args(&self.command[1..])
            .args(["-T", limit.as_str()])
            .args(args)
            .env("CTDB_SOCKET", &self.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    /// Runs `ctdb ARGS` and returns its stdout, or an error with its stderr's gist.
    pub async fn run(&self, args: &[&str]) -> io::Result<String> {
        let mut command = tokio::process::Command::from(self.command(args));
        command.kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run {:?}: {e}", self.command[0]))
        })?;
        // ctdb's own -T bounds its calls to ctdbd; this bounds the process as a whole.
        let waited = tokio::time::timeout(self.timeout * 2, child.wait_with_output()).await;
        let output = match waited {
            Ok(output) => output?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ctdb {} did not finish in {:?}",
                        args.join(" "),
                        self.timeout * 2
                    ),
                ));
            }
        };
        finish(args, output)
    }

    /// [`Self::run`], blocking the calling thread (for the store's load, which runs on the
    /// blocking pool or at startup).
    pub fn run_blocking(&self, args: &[&str]) -> io::Result<String> {
        let output = self.command(args).output().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot run {:?}: {e}", self.command[0]))
        })?;
        finish(args, output)
    }
}

fn finish(args: &[&str], output: std::process::Output) -> io::Result<String> {
    let mut stdout = output.stdout;
    stdout.truncate(OUTPUT_LIMIT as usize);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let gist = stderr.lines().last().unwrap_or("").trim();
        return Err(io::Error::other(format!(
            "ctdb {} failed ({}): {gist}",
            args.first().copied().unwrap_or(""),
            output.status
        )));
    }
    String::from_utf8(stdout).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "ctdb {}: output is not UTF-8",
                args.first().copied().unwrap_or("")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pnn: u32, flags: u32) -> NodeInfo {
        NodeInfo {
            pnn,
            flags: NodeFlags(flags),
            addr: format!("192.168.50.1{pnn}:4379").parse().unwrap(),
        }
    }

    const HEALTHY: [u32; 3] = [0, 0, 0];

    fn view(flags: [u32; 3], recovery_normal: bool) -> ClusterView {
        let nodes: Vec<NodeInfo> = (0..3).map(|pnn| node(pnn, flags[pnn as usize])).collect();
        ClusterView::from_nodemap(&nodes, 0, recovery_normal)
    }

    #[test]
    fn a_healthy_cluster_allows_changes() {
        let view = view(HEALTHY, true);
        assert_eq!(view.nodes.len(), 3);
        assert!(view.nodes[0].this_node && view.nodes[0].flags.is_empty());
        assert_eq!(view.nodes[2].address, "192.168.50.12");
        assert_eq!(view.allows_changes(), Ok(()));
    }

    #[test]
    fn a_partitioned_leader_in_normal_mode_is_refused() {
        // What the cut-off leader's ctdbd reports: it keeps the cluster lock and stays
        // NORMAL, the others are DISCONNECTED (and INACTIVE, which that implies).
        let view = view(
            [
                0,
                NodeFlags::DISCONNECTED | NodeFlags::UNHEALTHY,
                NodeFlags::DISCONNECTED,
            ],
            true,
        );
        assert_eq!(view.nodes[1].flags, ["DISCONNECTED", "UNHEALTHY"]);
        let why = view.allows_changes().unwrap_err();
        assert!(why.contains("1 of 3"), "{why}");
        assert!(view.may_serve().unwrap_err().contains("1 of 3"));
    }

    #[test]
    fn recovery_and_a_flagged_node_stop_changes_not_service() {
        let recovering = view(HEALTHY, false);
        assert!(recovering.allows_changes().is_err());
        assert_eq!(recovering.may_serve(), Ok(()));
        let unhealthy = view([NodeFlags::UNHEALTHY, 0, 0], true);
        let why = unhealthy.allows_changes().unwrap_err();
        assert!(why.contains("UNHEALTHY"), "{why}");
        assert_eq!(unhealthy.may_serve(), Ok(()));
        // Disabled (a planned move of every address away): ctdbd moves the addresses and
        // RELEASE_IP closes their sessions; meanwhile it serves, but changes nothing.
        let disabled = view([NodeFlags::PERMANENTLY_DISABLED, 0, 0], true);
        assert_eq!(disabled.may_serve(), Ok(()));
        assert!(disabled.allows_changes().unwrap_err().contains("DISABLED"));
    }

    #[test]
    fn one_node_away_of_three_still_leaves_a_majority() {
        let view = view([0, 0, NodeFlags::DISCONNECTED | NodeFlags::UNHEALTHY], true);
        assert_eq!(view.allows_changes(), Ok(()));
    }

    #[test]
    fn deleted_nodes_do_not_count_and_an_unnamed_node_may_not_serve() {
        let shrunk = [
            node(0, 0),
            node(1, NodeFlags::DELETED | NodeFlags::DISCONNECTED),
            node(2, 0),
        ];
        assert_eq!(ClusterView::from_nodemap(&shrunk, 0, true).nodes.len(), 2);
        let stranger = ClusterView::from_nodemap(&shrunk, 7, true);
        assert!(stranger.may_serve().unwrap_err().contains("does not name"));
    }

    /// A stand-in `ctdb` that reports whether it leads its own process group (field 5 of
    /// /proc/self/stat), without signalling anything: a tool that did `kill(0, SIGTERM)`
    /// from keel's group would take the test runner down with it.
    fn group_probe() -> CtdbTool {
        let script = r#"read -r pid comm state ppid pgrp rest < /proc/$$/stat; [ "$pgrp" = "$$" ] && echo own-group || echo shared-group"#;
        CtdbTool {
            command: vec!["sh".into(), "-c".into(), script.into(), "ctdb".into()],
            socket: PathBuf::from("/nonexistent/ctdbd.socket"),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_tool_runs_in_a_process_group_of_its_own() {
        let tool = group_probe();
        assert_eq!(tool.run(&["status"]).await.unwrap().trim(), "own-group");
        assert_eq!(tool.run_blocking(&["status"]).unwrap().trim(), "own-group");
    }
}
