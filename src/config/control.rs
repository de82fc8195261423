//! `[server] control_socket` and `control_group`: where the control socket lives and which
//! group besides root may use it. Decoded here (config owns the file); `admin::socket` serves
//! it. The group name is resolved to its id once, at load, through the system's user database
//! (NSS, so LDAP groups work), so an unknown group is a located configuration error rather than
//! a refusal at the first connection.

use std::path::PathBuf;

use toml::Spanned;

use super::validator::Validator;

/// The socket path when the configuration names none.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/keel/keel.sock";

/// The control socket's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSettings {
    /// The unix socket's path; `None`: no control socket (`control_socket = ""`).
    pub socket: Option<PathBuf>,
    /// A group whose members may use the socket besides root (mode 0660 then, else 0600).
    pub group: Option<ControlGroup>,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            group: None,
        }
    }
}

impl ControlSettings {
    /// A socket at `path`, root (and keel's own user) only: for tests and tools.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        ControlSettings {
            socket: Some(path.into()),
            group: None,
        }
    }

    /// No control socket.
    pub fn disabled() -> Self {
        ControlSettings {
            socket: None,
            group: None,
        }
    }
}

/// A group resolved at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

/// The gid of a group name, from the system's group database.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("control_group {name:?}: no such group")),
        Err(e) => Err(format!("control_group {name:?}: cannot look it up: {e}")),
    }
}

impl Validator<'_> {
    pub(super) fn control(
        &mut self,
        socket: &Option<Spanned<String>>,
        group: &Option<Spanned<String>>,
    ) -> ControlSettings {
        let socket = match socket {
            None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => {
                // sun_path holds 108 bytes with its terminating NUL (unix(7)).
                if s.get_ref().len() > 107 {
                    self.error(s, "control_socket: a unix socket path is at most 107 bytes");
                }
                Some(PathBuf::from(s.get_ref()))
            }
        };
        let group = group
            .as_ref()
            .and_then(|g| match resolve_group(g.get_ref()) {
                Ok(gid) => Some(ControlGroup {
                    name: g.get_ref().clone(),
                    gid,
                }),
                Err(why) => {
                    self.error(g, why);
                    None
                }
            });
        ControlSettings { socket, group }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const TARGET: &str = "[[target]]\nname = \"iqn.2026-11.io.keel:t\"\n\
                          [[target.lun]]\nlun = 0\nfile = \"a.img\"\nsize = \"1MiB\"\n";

    fn server(lines: &str) -> Result<ControlSettings, String> {
        parse(&format!("[server]\n{lines}\n{TARGET}"), "x")
            .map(|c| c.control)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_socket_defaults_to_run_keel_and_an_empty_path_disables_it() {
        assert_eq!(server(""), Ok(ControlSettings::default()));
        assert_eq!(server("control_socket = \"\"").map(|c| c.socket), Ok(None));
        assert_eq!(
            server("control_socket = \"/tmp/k.sock\""),
            Ok(ControlSettings::at("/tmp/k.sock"))
        );
    }

    #[test]
    fn the_group_is_resolved_at_load_and_an_unknown_one_is_a_located_error() {
        let root = server("control_group = \"root\"").map(|c| c.group);
        assert_eq!(
            root,
            Ok(Some(ControlGroup {
                name: "root".into(),
                gid: 0
            }))
        );
        let err = server("control_group = \"no-such-group-keel\"").unwrap_err();
        assert!(
            err.contains("x:2: control_group \"no-such-group-keel\": no such group"),
            "{err}"
        );
        let long = format!("control_socket = \"/{}\"", "a".repeat(120));
        assert!(server(&long).unwrap_err().contains("x:2: control_socket"));
    }
}
