//! `[cluster]`, decoded into the cluster layer's own [`ClusterSettings`]:
//!
//! ```toml
//! [cluster]
//! kind = "ctdb"                          # the only kind
//! socket = "/var/run/ctdb/ctdbd.socket"  # ctdbd's unix socket
//! command = ["ctdb"]                     # the ctdb tool (persistent-database calls)
//! reservations_database = "keel_reservations.tdb"
//! timeout_secs = 5
//! ```
//!
//! With it, every LUN's persistent reservations live in the CTDB persistent database, so
//! the node that takes a portal over serves the same registrations (issue 14).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::validator::Validator;
use crate::cluster::ClusterSettings;
use crate::cluster::settings::check_database_name;

/// The `[cluster]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    kind: Spanned<String>,
    socket: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    reservations_database: Option<Spanned<String>>,
    timeout_secs: Option<Spanned<u64>>,
}

impl Validator<'_> {
    pub(super) fn cluster(&mut self, raw: &RawCluster) -> Option<ClusterSettings> {
        if raw.kind.get_ref() != "ctdb" {
            let message = format!(
                "[cluster] kind {:?} is not known: the only kind is \"ctdb\"",
                raw.kind.get_ref()
            );
            self.error(&raw.kind, message);
            return None;
        }
        let mut settings = ClusterSettings::default();
        if let Some(socket) = &raw.socket {
            if !socket.get_ref().starts_with('/') {
                self.error(socket, "[cluster] socket must be an absolute path");
            }
            settings.socket = PathBuf::from(socket.get_ref());
        }
        if let Some(command) = &raw.command {
            if command.get_ref().is_empty() || command.get_ref()[0].is_empty() {
                self.error(
                    command,
                    "[cluster] command must name a program, e.g. [\"ctdb\"]",
                );
            }
            settings.command = command.get_ref().clone();
        }
        if let Some(database) = &raw.reservations_database {
            if let Err(why) = check_database_name(database.get_ref()) {
                let message = format!(
                    "[cluster] reservations_database {:?} {why}",
                    database.get_ref()
                );
                self.error(database, message);
            }
            settings.reservations_database = database.get_ref().clone();
        }
        let timeout = self.in_range(
            &raw.timeout_secs,
            5,
            1..=60,
            "[cluster] timeout_secs",
            " seconds",
        );
        settings.timeout = Duration::from_secs(timeout);
        Some(settings)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn a_ctdb_cluster_parses_with_its_defaults() {
        let c = parse("[cluster]\nkind = \"ctdb\"\n", "x").unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.command, ["ctdb"]);
        assert_eq!(cluster.reservations_database, "keel_reservations.tdb");
        assert_eq!(cluster.socket.to_str(), Some("/var/run/ctdb/ctdbd.socket"));
        assert!(parse("", "x").unwrap().cluster.is_none());
    }

    #[test]
    fn bad_cluster_settings_are_located() {
        for (text, needle) in [
            ("[cluster]\nkind = \"pacemaker\"\n", "only kind"),
            (
                "[cluster]\nkind = \"ctdb\"\nsocket = \"ctdbd.socket\"\n",
                "absolute",
            ),
            (
                "[cluster]\nkind = \"ctdb\"\ncommand = []\n",
                "name a program",
            ),
            (
                "[cluster]\nkind = \"ctdb\"\nreservations_database = \"x\"\n",
                ".tdb",
            ),
            (
                "[cluster]\nkind = \"ctdb\"\ntimeout_secs = 0\n",
                "between 1 and 60",
            ),
            (
                "[cluster]\nkind = \"ctdb\"\nlock = \"x\"\n",
                "unknown field",
            ),
        ] {
            let errors = parse(text, "x").unwrap_err();
            let shown = format!("{errors}");
            assert!(shown.contains(needle), "{text}: {shown}");
        }
    }
}
