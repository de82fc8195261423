//! The access part of `targets.toml`: CHAP credentials (inline or from a file), the CHAP
//! algorithms keel accepts, initiator allow lists, and connection and session limits.
//!
//! ```toml
//! [server]
//! chap_algorithms = ["SHA3-256", "SHA-256", "SHA-1", "MD5"]
//! max_connections = 4096
//! max_connections_per_address = 512
//! max_sessions_per_initiator = 256
//! [[server.discovery_chap]]          # CHAP for discovery sessions (absent: open)
//! user = "discovery"
//! secret_file = "/etc/keel/discovery.secret"
//!
//! [[target]]
//! allowed_initiators = ["iqn.1993-08.org.debian:*"]
//! [[target.chap]]                    # CHAP for this target (absent: none)
//! user = "alice"
//! secret = "a-long-random-secret"
//! [target.mutual_chap]               # the target's own credential, for mutual CHAP
//! user = "iqn.2026-11.org.example:disk0"
//! secret_file = "/etc/keel/disk0.secret"
//! ```
//!
//! Secret files are read when the configuration is loaded, so `keel check` reports a missing
//! or too-open file with the line that names it.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::validator::Validator;
use crate::iscsi::Limits;
use crate::iscsi::chap::{ALGORITHMS, Algorithm, ChapPolicy, Credential, Secret};
use crate::iscsi::name::check_iscsi_name;

/// RFC 7143 §12.1.3: CHAP secrets should be at least 96 bits; some initiators (Windows)
/// insist on 12 to 16 characters.
const SHORT_SECRET: usize = 12;

/// Longest secret accepted: open-iscsi and libiscsi cap theirs at 256 bytes.
const LONG_SECRET: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    user: Spanned<String>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
}

/// Server-wide access settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessSettings {
    /// CHAP algorithms accepted, strongest first.
    pub chap_algorithms: Vec<Algorithm>,
    /// CHAP demanded of discovery sessions; `None`: discovery is open to everyone.
    pub discovery_chap: Option<ChapPolicy>,
    pub limits: Limits,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            chap_algorithms: ALGORITHMS.iter().map(|d| d.algorithm).collect(),
            discovery_chap: None,
            limits: Limits::default(),
        }
    }
}

/// The raw server keys this module validates.
pub(super) struct RawAccess<'a> {
    pub chap_algorithms: &'a Option<Spanned<Vec<String>>>,
    pub max_connections: &'a Option<Spanned<u32>>,
    pub max_connections_per_address: &'a Option<Spanned<u32>>,
    pub max_sessions_per_initiator: &'a Option<Spanned<u32>>,
    pub discovery_chap: &'a Option<Vec<RawCredential>>,
    pub discovery_mutual_chap: &'a Option<RawCredential>,
}

impl Validator<'_> {
    pub(super) fn access(&mut self, raw: RawAccess<'_>) -> AccessSettings {
        let d = AccessSettings::default();
        let chap_algorithms = match raw.chap_algorithms {
            None => d.chap_algorithms,
            Some(list) => self.algorithms(list),
        };
        let limits = Limits {
            max_connections: self.in_range(
                raw.max_connections,
                d.limits.max_connections,
                1..=1_000_000,
                "max_connections",
                "",
            ),
            max_connections_per_address: self.in_range(
                raw.max_connections_per_address,
                d.limits.max_connections_per_address,
                1..=1_000_000,
                "max_connections_per_address",
                "",
            ),
            max_sessions_per_initiator: self.in_range(
                raw.max_sessions_per_initiator,
                d.limits.max_sessions_per_initiator,
                1..=1_000_000,
                "max_sessions_per_initiator",
                "",
            ),
        };
        let discovery_chap =
            self.chap_policy("discovery", raw.discovery_chap, raw.discovery_mutual_chap);
        AccessSettings {
            chap_algorithms,
            discovery_chap,
            limits,
        }
    }

    fn algorithms(&mut self, list: &Spanned<Vec<String>>) -> Vec<Algorithm> {
        let mut out = Vec::new();
        for name in list.get_ref() {
            match Algorithm::from_name(name) {
                Some(a) if out.contains(&a) => {
                    self.error(list, format!("chap_algorithms names {name:?} twice"))
                }
                Some(a) => out.push(a),
                None => self.error(
                    list,
                    format!(
                        "chap_algorithms: unknown algorithm {name:?} (known: {})",
                        ALGORITHMS
                            .iter()
                            .map(|d| d.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
            }
        }
        if list.get_ref().is_empty() {
            self.error(
                list,
                "chap_algorithms is empty: no CHAP login could succeed",
            );
        }
        // Keep the table's order (strongest first), whatever order the file used.
        out.sort_by_key(|a| ALGORITHMS.iter().position(|d| d.algorithm == *a));
        out
    }

    /// Validates `[[….chap]]` and `[….mutual_chap]` of one target (or discovery).
    pub(super) fn chap_policy(
        &mut self,
        owner: &str,
        users: &Option<Vec<RawCredential>>,
        mutual: &Option<RawCredential>,
    ) -> Option<ChapPolicy> {
        let users_raw = match (users, mutual) {
            (None, None) => return None,
            (None, Some(m)) => {
                self.error(
                    &m.user,
                    format!(
                        "{owner}: mutual CHAP needs CHAP users too (the initiator authenticates first)"
                    ),
                );
                return None;
            }
            (Some(u), _) => u,
        };
        let mut names = BTreeSet::new();
        let mut users = Vec::new();
        for raw in users_raw {
            if !names.insert(raw.user.get_ref().clone()) {
                self.error(
                    &raw.user,
                    format!(
                        "{owner}: CHAP user {:?} is declared twice",
                        raw.user.get_ref()
                    ),
                );
            }
            if let Some(c) = self.credential(owner, raw) {
                users.push(c);
            }
        }
        let mutual_raw = mutual;
        let mutual = mutual_raw.as_ref().and_then(|m| self.credential(owner, m));
        if let (Some(m), Some(raw)) = (&mutual, mutual_raw)
            && users.iter().any(|u| u.secret.same_as(&m.secret))
        {
            self.error(
                &raw.user,
                format!(
                    "{owner}: the mutual CHAP secret equals an initiator's secret; \
                     RFC 7143 §12.1.3 forbids using one secret in both directions"
                ),
            );
        }
        Some(ChapPolicy { users, mutual })
    }

    fn credential(&mut self, owner: &str, raw: &RawCredential) -> Option<Credential> {
        let user = raw.user.get_ref().clone();
        if user.is_empty() {
            self.error(&raw.user, format!("{owner}: CHAP user is empty"));
            return None;
        }
        let what = format!("{owner}: CHAP user {user:?}");
        let secret = match (&raw.secret, &raw.secret_file) {
            (Some(s), None) => Secret::new(s.get_ref().as_bytes().to_vec()),
            (None, Some(f)) => match read_secret_file(Path::new(f.get_ref())) {
                Ok(s) => s,
                Err(why) => {
                    self.error(f, format!("{what}: secret_file {:?}: {why}", f.get_ref()));
                    return None;
                }
            },
            (Some(s), Some(_)) => {
                self.error(
                    s,
                    format!("{what}: give either secret or secret_file, not both"),
                );
                return None;
            }
            (None, None) => {
                self.error(&raw.user, format!("{what}: needs secret or secret_file"));
                return None;
            }
        };
        if secret.is_empty() {
            self.error(&raw.user, format!("{what}: the secret is empty"));
            return None;
        }
        if secret.len() > LONG_SECRET {
            self.error(
                &raw.user,
                format!("{what}: the secret is longer than {LONG_SECRET} bytes; initiators cannot use it"),
            );
        } else if secret.len() < SHORT_SECRET {
            self.warn(
                &raw.user,
                format!(
                    "{what}: the secret has {} bytes; use at least {SHORT_SECRET} \
                     (RFC 7143 §12.1.3; Windows needs 12 to 16)",
                    secret.len()
                ),
            );
        }
        Some(Credential { user, secret })
    }

    /// `allowed_initiators` of a target: exact names and `*` patterns.
    pub(super) fn allowed_initiators(
        &mut self,
        target: &str,
        list: &Option<Vec<Spanned<String>>>,
    ) -> Vec<String> {
        let Some(list) = list else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in list {
            let pattern = p.get_ref();
            if pattern.is_empty() {
                self.error(
                    p,
                    format!("target {target:?}: an allowed_initiators entry is empty"),
                );
                continue;
            }
            if !pattern.contains('*')
                && let Err(why) = check_iscsi_name(&pattern.to_ascii_lowercase())
            {
                self.warn(
                    p,
                    format!("target {target:?}: allowed initiator {pattern:?} is not a valid iSCSI name ({why}); it can only match an initiator with the same name"),
                );
            }
            out.push(pattern.clone());
        }
        out
    }
}

/// Reads a secret file: refused when group or others have any access to it (like ssh's
/// private keys), one trailing newline ignored.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets group or others read or change it; chmod 600 it"
        ));
    }
    let mut bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(Secret::new(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::parse;
    use super::*;

    fn with_target(extra: &str) -> String {
        format!(
            "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n{extra}\n\
             [[target.lun]]\nlun = 0\nfile = \"a.img\"\n"
        )
    }

    #[test]
    fn chap_users_mutual_and_allow_lists_parse() {
        let text = with_target(
            "allowed_initiators = [\"iqn.1993-08.org.debian:*\", \"iqn.2026-11.org.example:h1\"]\n\
             [[target.chap]]\nuser = \"alice\"\nsecret = \"alice-secret-123\"\n\
             [[target.chap]]\nuser = \"bob\"\nsecret = \"bob-secret-45678\"\n\
             [target.mutual_chap]\nuser = \"tgt\"\nsecret = \"target-secret-99\"\n",
        );
        let c = parse(&text, "t").unwrap();
        let t = &c.targets[0];
        assert_eq!(t.allowed_initiators.len(), 2);
        let chap = t.chap.as_ref().unwrap();
        assert_eq!(chap.users.len(), 2);
        assert_eq!(chap.mutual.as_ref().unwrap().user, "tgt");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.access, AccessSettings::default());
        assert!(!format!("{c:?}").contains("alice-secret"));
    }

    #[test]
    fn server_access_keys() {
        let c = parse(
            "[server]\nchap_algorithms = [\"md5\", \"SHA-256\"]\nmax_connections = 10\n\
             max_connections_per_address = 2\nmax_sessions_per_initiator = 3\n\
             [[server.discovery_chap]]\nuser = \"disc\"\nsecret = \"short\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            c.access.chap_algorithms,
            vec![Algorithm::Sha256, Algorithm::Md5]
        );
        assert_eq!(
            c.access.limits,
            Limits {
                max_connections: 10,
                max_connections_per_address: 2,
                max_sessions_per_initiator: 3
            }
        );
        assert_eq!(c.access.discovery_chap.unwrap().users[0].user, "disc");
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].message.contains("at least 12"),
            "{:?}",
            c.warnings
        );
        assert_eq!(c.warnings[0].line, Some(7));
    }

    #[test]
    fn mistakes_are_located() {
        let text = format!(
            "[server]\nchap_algorithms = [\"md4\"]\nmax_connections = 0\n{}",
            with_target(
                "allowed_initiators = [\"\"]\n\
                 [[target.chap]]\nuser = \"alice\"\n\
                 [[target.chap]]\nuser = \"alice\"\nsecret = \"same-secret-123\"\nsecret_file = \"/x\"\n\
                 [[target.chap]]\nuser = \"carol\"\nsecret = \"same-secret-123\"\n\
                 [target.mutual_chap]\nuser = \"tgt\"\nsecret = \"same-secret-123\"\n"
            )
        );
        let errs = parse(&text, "bad.toml").unwrap_err().to_string();
        for needle in [
            "bad.toml:2: chap_algorithms: unknown algorithm \"md4\"",
            "bad.toml:3: max_connections must be between",
            "bad.toml:6: target \"iqn.2026-11.org.example:a\": an allowed_initiators entry is empty",
            "bad.toml:8: target \"iqn.2026-11.org.example:a\": CHAP user \"alice\": needs secret or secret_file",
            "bad.toml:10: target \"iqn.2026-11.org.example:a\": CHAP user \"alice\" is declared twice",
            "give either secret or secret_file",
            "bad.toml:17: target \"iqn.2026-11.org.example:a\": the mutual CHAP secret equals",
        ] {
            assert!(errs.contains(needle), "missing {needle:?} in\n{errs}");
        }
        let errs = parse(
            &with_target("[target.mutual_chap]\nuser = \"t\"\nsecret = \"target-secret-99\"\n"),
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(errs.contains("mutual CHAP needs CHAP users"), "{errs}");
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.secret");
        std::fs::write(&path, "file-secret-1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = with_target(&format!(
            "[[target.chap]]\nuser = \"alice\"\nsecret_file = \"{}\"\n",
            path.display()
        ));
        let errs = parse(&text, "x").unwrap_err().to_string();
        assert!(
            errs.contains("mode 0644") && errs.contains("chmod 600"),
            "{errs}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&text, "x").unwrap();
        let user = &c.targets[0].chap.as_ref().unwrap().users[0];
        assert!(
            user.secret
                .same_as(&Secret::new(b"file-secret-1234".to_vec()))
        );
        let missing =
            with_target("[[target.chap]]\nuser = \"a\"\nsecret_file = \"/nonexistent/k\"\n");
        assert!(
            parse(&missing, "x")
                .unwrap_err()
                .to_string()
                .contains("secret_file")
        );
    }
}
