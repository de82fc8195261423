//! `[cluster]`: how keel reaches the CTDB cluster it serves in (issue 14). The configuration
//! layer decodes the table into [`ClusterSettings`]; the server builds the cluster's running
//! objects from it.

use std::path::PathBuf;
use std::time::Duration;

/// Where ctdbd listens on a Debian system (ctdbd(1), `CTDB_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/var/run/ctdb/ctdbd.socket";
/// The persistent database holding every LUN's reservation table.
pub const DEFAULT_RESERVATIONS_DATABASE: &str = "keel_reservations.tdb";

/// How keel talks to the local ctdbd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// ctdbd's unix socket; also handed to the `ctdb` tool as `CTDB_SOCKET`.
    pub socket: PathBuf,
    /// The `ctdb` tool and leading arguments (e.g. `["ctdb"]`): it runs the persistent
    /// database transactions, which need ctdb's g_lock protocol on the local tdb files.
    pub command: Vec<String>,
    /// The CTDB persistent database of the reservation tables.
    pub reservations_database: String,
    /// Longest wait for one call to ctdbd (passed to the tool as `-T`).
    pub timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            socket: PathBuf::from(DEFAULT_SOCKET),
            command: vec!["ctdb".to_owned()],
            reservations_database: DEFAULT_RESERVATIONS_DATABASE.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a database name cannot be used: CTDB names databases by file name.
pub fn check_database_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if !name.ends_with(".tdb") {
        return Err("must end in \".tdb\" (CTDB database file names do)".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("may hold only letters, digits, '_', '-' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_file_names_ending_in_tdb() {
        assert!(check_database_name("keel_reservations.tdb").is_ok());
        assert!(check_database_name("keel").is_err());
        assert!(check_database_name("../x.tdb").is_err());
        assert!(check_database_name("a b.tdb").is_err());
        assert!(check_database_name("").is_err());
    }
}
