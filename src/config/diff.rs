//! What changed between two configurations, as the running service must apply it.
//!
//! The rules are FreeBSD ctld's (`conf_apply()` in `usr.sbin/ctld/ctld.cc`): targets and LUNs
//! are matched by name and number; a LUN changed in anything but its size is removed and
//! added again (its backing, geometry or flags are part of the unit an initiator sees); a LUN
//! whose size alone changed is resized in place; a target whose access settings changed (alias,
//! allow list, CHAP, portal group tag) is flagged, so new logins see the new settings while
//! its sessions and LUNs stay; portals are opened and closed. Startup is the diff from
//! [`Config::empty`], so one code path builds and changes the service.
//!
//! Server settings are decided per key (see [`restart_settings`]): the ones the service is
//! built with are only named in `needs_restart`, for the operator.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::{AccessSettings, Backing, Config, LunConfig, TargetConfig};
use crate::iscsi::{Limits, Settings};

/// The changes that turn one configuration into another.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub portals_removed: Vec<SocketAddr>,
    pub portals_added: Vec<SocketAddr>,
    /// Names of the targets to remove.
    pub targets_removed: Vec<String>,
    pub targets_changed: Vec<TargetDiff>,
    pub targets_added: Vec<TargetConfig>,
    /// Server settings that changed but only take effect at restart (named, for the report).
    pub needs_restart: Vec<String>,
}

/// The changes to a target present before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDiff {
    /// The target as it is now desired.
    pub new: TargetConfig,
    /// Alias, allowed initiators, CHAP or portal group tag changed: logins from now on use
    /// `new`'s; sessions already logged in keep theirs.
    pub access_changed: bool,
    /// LUNs gone, and LUNs changed in anything but their size (added back in `luns_added`).
    pub luns_removed: Vec<u64>,
    /// The same LUN with only its `size` (create_size) changed, as now desired.
    pub luns_resized: Vec<LunConfig>,
    /// New LUNs, and LUNs changed in anything but their size (remove + add).
    pub luns_added: Vec<LunConfig>,
}

impl TargetDiff {
    fn is_empty(&self) -> bool {
        !self.access_changed
            && self.luns_removed.is_empty()
            && self.luns_resized.is_empty()
            && self.luns_added.is_empty()
    }
}

/// Everything that changes from `old` to `new` (a reload, or startup from
/// [`Config::empty`]).
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let key = |t: &TargetConfig| t.name.to_ascii_lowercase();
    let old_targets: HashMap<String, &TargetConfig> =
        old.targets.iter().map(|t| (key(t), t)).collect();
    let new_names: HashMap<String, ()> = new.targets.iter().map(|t| (key(t), ())).collect();
    let mut d = ConfigDiff {
        portals_removed: missing_from(&old.portals, &new.portals),
        portals_added: missing_from(&new.portals, &old.portals),
        needs_restart: restart_settings(old, new),
        ..ConfigDiff::default()
    };
    for t in &old.targets {
        if !new_names.contains_key(&key(t)) {
            d.targets_removed.push(t.name.clone());
        }
    }
    for t in &new.targets {
        match old_targets.get(&key(t)) {
            None => d.targets_added.push(t.clone()),
            Some(before) => d.add_target_change(before, t),
        }
    }
    d
}

/// The change of one target: added (`old` is `None`), removed (`new` is `None`), or changed.
/// Portals and server settings are not part of it.
pub fn diff_target(old: Option<&TargetConfig>, new: Option<&TargetConfig>) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    match (old, new) {
        (None, None) => {}
        (None, Some(n)) => d.targets_added.push(n.clone()),
        (Some(o), None) => d.targets_removed.push(o.name.clone()),
        (Some(o), Some(n)) if !o.name.eq_ignore_ascii_case(&n.name) => {
            d.targets_removed.push(o.name.clone());
            d.targets_added.push(n.clone());
        }
        (Some(o), Some(n)) => d.add_target_change(o, n),
    }
    d
}

impl ConfigDiff {
    /// Nothing to apply and nothing waiting for a restart.
    pub fn is_empty(&self) -> bool {
        self.portals_removed.is_empty()
            && self.portals_added.is_empty()
            && self.targets_removed.is_empty()
            && self.targets_changed.is_empty()
            && self.targets_added.is_empty()
            && self.needs_restart.is_empty()
    }

    /// One line per change, in the order they are applied (ctld's: removals, resizes, access
    /// changes, additions, then listeners), and the settings waiting for a restart.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for name in &self.targets_removed {
            lines.push(format!("remove target {name}"));
        }
        for t in &self.targets_changed {
            for lun in &t.luns_removed {
                lines.push(format!("target {}: remove LUN {lun}", t.new.name));
            }
        }
        for t in &self.targets_changed {
            for lun in &t.luns_resized {
                let size = match &lun.backing {
                    Backing::File {
                        create_size: Some(size),
                        ..
                    } => format!("{size} bytes"),
                    _ => "its file's size".to_string(),
                };
                lines.push(format!(
                    "target {}: resize LUN {} to {size}",
                    t.new.name, lun.lun
                ));
            }
        }
        for t in self.targets_changed.iter().filter(|t| t.access_changed) {
            lines.push(format!(
                "target {}: new access settings (alias, allowed initiators, CHAP, portal group \
                 tag) for new logins",
                t.new.name
            ));
        }
        for t in &self.targets_changed {
            for lun in &t.luns_added {
                lines.push(format!(
                    "target {}: add LUN {} ({})",
                    t.new.name,
                    lun.lun,
                    backing_name(&lun.backing)
                ));
            }
        }
        for t in &self.targets_added {
            let luns: Vec<String> = t.luns.iter().map(|l| l.lun.to_string()).collect();
            lines.push(format!("add target {} (LUNs {})", t.name, luns.join(", ")));
        }
        for p in &self.portals_removed {
            lines.push(format!("close portal {p}"));
        }
        for p in &self.portals_added {
            lines.push(format!("open portal {p}"));
        }
        if !self.needs_restart.is_empty() {
            lines.push(format!(
                "changed, applied at the next restart: {}",
                self.needs_restart.join(", ")
            ));
        }
        lines
    }

    /// Records the change of a target present in both configurations, if it changed.
    fn add_target_change(&mut self, old: &TargetConfig, new: &TargetConfig) {
        let change = target_change(old, new);
        if !change.is_empty() {
            self.targets_changed.push(change);
        }
    }
}

fn backing_name(backing: &Backing) -> String {
    match backing {
        Backing::File { path, .. } => format!("file {}", path.display()),
        Backing::Block { path, .. } => format!("block device {}", path.display()),
        Backing::Volume(spec) => format!("volume {}/{}", spec.pool, spec.name),
    }
}

/// The items of `items` that `other` lacks, in `items`' order.
fn missing_from(items: &[SocketAddr], other: &[SocketAddr]) -> Vec<SocketAddr> {
    items
        .iter()
        .filter(|p| !other.contains(p))
        .copied()
        .collect()
}

fn target_change(old: &TargetConfig, new: &TargetConfig) -> TargetDiff {
    let access_changed = old.alias != new.alias
        || old.allowed_initiators != new.allowed_initiators
        || old.chap != new.chap
        || old.portal_group_tag != new.portal_group_tag;
    let mut change = TargetDiff {
        new: new.clone(),
        access_changed,
        luns_removed: Vec::new(),
        luns_resized: Vec::new(),
        luns_added: Vec::new(),
    };
    let new_luns: BTreeMap<u64, &LunConfig> = new.luns.iter().map(|l| (l.lun, l)).collect();
    let old_luns: BTreeMap<u64, &LunConfig> = old.luns.iter().map(|l| (l.lun, l)).collect();
    for o in &old.luns {
        match new_luns.get(&o.lun) {
            None => change.luns_removed.push(o.lun),
            Some(n) if *n == o => {}
            Some(n) => match size_change(o, n) {
                SizeChange::Resized => change.luns_resized.push((*n).clone()),
                SizeChange::Unchanged => {}
                SizeChange::NotOnlySize => {
                    change.luns_removed.push(o.lun);
                    change.luns_added.push((*n).clone());
                }
            },
        }
    }
    for n in &new.luns {
        if !old_luns.contains_key(&n.lun) {
            change.luns_added.push(n.clone());
        }
    }
    change
}

enum SizeChange {
    /// Only the size changed, to a new size: grow the medium in place.
    Resized,
    /// Only the size changed, and it is gone: `size` only says how large to create or grow
    /// the file, so the running LUN keeps its medium as it is.
    Unchanged,
    /// Something else changed: the LUN is removed and added again.
    NotOnlySize,
}

/// How two different versions of a LUN differ.
fn size_change(old: &LunConfig, new: &LunConfig) -> SizeChange {
    let (
        Backing::File {
            path: old_path,
            create_size: _,
        },
        Backing::File {
            path: new_path,
            create_size: new_size,
        },
    ) = (&old.backing, &new.backing)
    else {
        return SizeChange::NotOnlySize;
    };
    let same_but_size = old_path == new_path
        && LunConfig {
            backing: old.backing.clone(),
            ..new.clone()
        } == *old;
    match (same_but_size, new_size) {
        (false, _) => SizeChange::NotOnlySize,
        (true, Some(_)) => SizeChange::Resized,
        (true, None) => SizeChange::Unchanged,
    }
}

/// Names of the server settings that differ, each one the service is built with and so
/// applied only at restart:
/// - `data_dir`: reservations and atomic-write journals live there. (LUN files given by
///   relative paths move with it; those show as LUN changes.)
/// - `io_engine`: every backend is opened with it.
/// - `metrics_listen` and `control` (the control socket): bound once, at startup.
/// - `pools`: each pool's provisioning queue and backend are built once, at startup.
/// - `cluster`: the reservation store of every LUN is chosen at startup.
/// - the iSCSI settings (`queue_depth`, burst lengths, timers, ...): the service offers them
///   in every login; sessions keep what they negotiated anyway.
/// - `chap_algorithms`, `discovery_chap`, and the limits (`max_connections`, ...): part of
///   the service's access settings.
///
/// Not named here because they apply while keel runs: `portals` (listeners open and close),
/// `include` (its targets are in the diff), and the targets.
///
/// Every field of [`Config`], the iSCSI [`Settings`], [`AccessSettings`] and [`Limits`] is
/// named below without `..`, so a new setting does not compile until it is sorted here.
fn restart_settings(old: &Config, new: &Config) -> Vec<String> {
    let mut names = Vec::new();
    macro_rules! changed {
        ($ty:ident, $old:expr, $new:expr, restart: [$($key:ident),* $(,)?], others: [$($other:ident),* $(,)?]) => {{
            let $ty { $($key: _,)* $($other: _,)* } = $new;
            $(
                if $old.$key != $new.$key {
                    names.push(stringify!($key).to_string());
                }
            )*
        }};
    }
    changed!(
        Config,
        old,
        new,
        restart: [data_dir, io_engine, metrics_listen, control, pools, cluster],
        // Live, or (`iscsi`, `access`) sorted key by key below, as the file names them.
        others: [portals, include, targets, warnings, iscsi, access]
    );
    changed!(
        Settings,
        &old.iscsi,
        &new.iscsi,
        restart: [
            max_recv_data_segment_length,
            max_burst_length,
            first_burst_length,
            max_outstanding_r2t,
            immediate_data,
            initial_r2t,
            queue_depth,
            write_buffer_mib,
            nop_interval_secs,
            nop_timeout_secs,
            login_timeout_secs,
        ],
        others: []
    );
    changed!(
        AccessSettings,
        &old.access,
        &new.access,
        restart: [chap_algorithms, discovery_chap],
        others: [limits]
    );
    changed!(
        Limits,
        &old.access.limits,
        &new.access.limits,
        restart: [max_connections, max_connections_per_address, max_sessions_per_initiator],
        others: []
    );
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[server]
portals = ["127.0.0.1:3260", "127.0.0.1:3261"]
data_dir = "/srv/keel"

[[target]]
name = "iqn.2026-11.org.example:a"
alias = "a"
[[target.lun]]
lun = 0
file = "a0.img"
size = "1GiB"
[[target.lun]]
lun = 1
file = "a1.img"
size = "1GiB"

[[target]]
name = "iqn.2026-11.org.example:b"
[[target.lun]]
lun = 0
block = "/dev/sdx"
"#;

    fn config(text: &str) -> Config {
        parse(text, "t.toml").unwrap()
    }

    /// BASE with `from` replaced by `to` (which must occur).
    fn changed(from: &str, to: &str) -> Config {
        assert!(BASE.contains(from), "{from}");
        config(&BASE.replacen(from, to, 1))
    }

    fn only_target_change(d: &ConfigDiff) -> &TargetDiff {
        assert!(
            d.targets_added.is_empty() && d.targets_removed.is_empty(),
            "{d:?}"
        );
        assert_eq!(d.targets_changed.len(), 1, "{d:?}");
        &d.targets_changed[0]
    }

    #[test]
    fn the_same_configuration_is_an_empty_diff() {
        let d = diff(&config(BASE), &config(BASE));
        assert!(d.is_empty(), "{d:?}");
        assert!(d.describe().is_empty());
    }

    #[test]
    fn startup_is_the_diff_from_empty() {
        let c = config(BASE);
        let d = diff(&Config::empty(), &c);
        assert_eq!(d.portals_added, c.portals);
        assert_eq!(d.targets_added, c.targets);
        assert!(d.targets_removed.is_empty() && d.targets_changed.is_empty());
        assert_eq!(
            d.needs_restart,
            ["data_dir"],
            "only data_dir is not the default"
        );
        let d = diff(&c.only_settings(), &c);
        assert!(d.needs_restart.is_empty(), "{d:?}");
        assert_eq!(d.targets_added.len(), 2);
    }

    #[test]
    fn portals_added_and_removed() {
        let d = diff(
            &config(BASE),
            &changed("\"127.0.0.1:3261\"", "\"127.0.0.1:3262\""),
        );
        assert_eq!(d.portals_removed, ["127.0.0.1:3261".parse().unwrap()]);
        assert_eq!(d.portals_added, ["127.0.0.1:3262".parse().unwrap()]);
        assert!(d.targets_changed.is_empty() && d.needs_restart.is_empty());
        assert_eq!(
            d.describe(),
            ["close portal 127.0.0.1:3261", "open portal 127.0.0.1:3262"]
        );
    }

    #[test]
    fn targets_added_and_removed() {
        let d = diff(&config(BASE), &changed("org.example:b", "org.example:c"));
        assert_eq!(d.targets_removed, ["iqn.2026-11.org.example:b"]);
        assert_eq!(d.targets_added.len(), 1);
        assert_eq!(d.targets_added[0].name, "iqn.2026-11.org.example:c");
        assert!(d.targets_changed.is_empty());
        assert_eq!(
            d.describe(),
            [
                "remove target iqn.2026-11.org.example:b",
                "add target iqn.2026-11.org.example:c (LUNs 0)"
            ]
        );
    }

    #[test]
    fn a_size_only_change_is_a_resize() {
        let new = changed(
            "file = \"a0.img\"\nsize = \"1GiB\"",
            "file = \"a0.img\"\nsize = \"2GiB\"",
        );
        let d = diff(&config(BASE), &new);
        let t = only_target_change(&d);
        assert!(!t.access_changed);
        assert!(t.luns_removed.is_empty() && t.luns_added.is_empty());
        assert_eq!(t.luns_resized.len(), 1);
        assert_eq!(t.luns_resized[0].lun, 0);
        assert_eq!(t.new, new.targets[0]);
        assert_eq!(
            d.describe(),
            ["target iqn.2026-11.org.example:a: resize LUN 0 to 2147483648 bytes"]
        );
    }

    #[test]
    fn a_size_that_goes_away_changes_nothing_that_runs() {
        let new = changed("file = \"a0.img\"\nsize = \"1GiB\"", "file = \"a0.img\"");
        assert!(diff(&config(BASE), &new).is_empty());
    }

    #[test]
    fn any_other_lun_change_is_remove_and_add() {
        for (from, to) in [
            ("file = \"a0.img\"", "file = \"other.img\""),
            ("file = \"a0.img\"", "file = \"a0.img\"\nread_only = true"),
            ("file = \"a0.img\"", "file = \"a0.img\"\nblock_size = 4096"),
            ("file = \"a0.img\"", "file = \"a0.img\"\nremovable = true"),
            (
                "file = \"a0.img\"\nsize = \"1GiB\"",
                "file = \"a0.img\"\nsize = \"2GiB\"\nread_only = true",
            ),
        ] {
            let d = diff(&config(BASE), &changed(from, to));
            let t = only_target_change(&d);
            assert_eq!(t.luns_removed, [0], "{to}");
            assert_eq!(t.luns_added.len(), 1, "{to}");
            assert_eq!(t.luns_added[0].lun, 0);
            assert!(t.luns_resized.is_empty() && !t.access_changed, "{to}");
        }
        // A file LUN that becomes a block device is not a resize either.
        let d = diff(
            &config(BASE),
            &changed("file = \"a1.img\"\nsize = \"1GiB\"", "block = \"/dev/sdy\""),
        );
        let t = only_target_change(&d);
        assert_eq!(
            (t.luns_removed.as_slice(), t.luns_added.len()),
            ([1].as_slice(), 1)
        );
    }

    #[test]
    fn luns_added_and_removed() {
        let without_lun1 = BASE.replacen(
            "[[target.lun]]\nlun = 1\nfile = \"a1.img\"\nsize = \"1GiB\"\n",
            "",
            1,
        );
        assert_ne!(without_lun1, BASE);
        let d = diff(&config(BASE), &config(&without_lun1));
        let t = only_target_change(&d);
        assert_eq!(t.luns_removed, [1]);
        assert!(t.luns_added.is_empty());
        let d = diff(&config(&without_lun1), &config(BASE));
        let t = only_target_change(&d);
        assert_eq!(t.luns_added.len(), 1);
        assert_eq!(t.luns_added[0].lun, 1);
        assert!(t.luns_removed.is_empty());
        assert_eq!(
            d.describe(),
            ["target iqn.2026-11.org.example:a: add LUN 1 (file /srv/keel/a1.img)"]
        );
    }

    #[test]
    fn access_changes_are_flagged_and_leave_luns_alone() {
        for (from, to) in [
            ("alias = \"a\"", "alias = \"renamed\""),
            ("alias = \"a\"", "portal_group_tag = 2"),
            (
                "alias = \"a\"",
                "allowed_initiators = [\"iqn.1993-08.org.debian:*\"]",
            ),
            (
                "alias = \"a\"",
                "[[target.chap]]\nuser = \"u\"\nsecret = \"a-long-enough-secret\"",
            ),
        ] {
            let d = diff(&config(BASE), &changed(from, to));
            let t = only_target_change(&d);
            assert!(t.access_changed, "{to}");
            assert!(
                t.luns_removed.is_empty() && t.luns_added.is_empty() && t.luns_resized.is_empty(),
                "{to}"
            );
        }
    }

    #[test]
    fn server_settings_are_named_for_a_restart() {
        let d = diff(
            &config(BASE),
            &changed(
                "data_dir = \"/srv/keel\"",
                "data_dir = \"/srv/keel\"\nqueue_depth = 64\nio_engine = \"threads\"\n\
                 max_connections = 10\nchap_algorithms = [\"SHA-256\"]",
            ),
        );
        assert_eq!(
            d.needs_restart,
            [
                "io_engine",
                "queue_depth",
                "chap_algorithms",
                "max_connections"
            ]
        );
        assert!(d.targets_changed.is_empty() && !d.is_empty());
        assert_eq!(
            d.describe(),
            [
                "changed, applied at the next restart: io_engine, queue_depth, chap_algorithms, max_connections"
            ]
        );
        // A new data_dir moves relative LUN files: those LUNs are replaced, and the setting
        // itself waits for a restart.
        let d = diff(&config(BASE), &changed("/srv/keel", "/srv/other"));
        assert_eq!(d.needs_restart, ["data_dir"]);
        assert_eq!(only_target_change(&d).luns_removed, [0, 1]);
    }

    #[test]
    fn diff_target_covers_add_remove_and_change() {
        let old = config(BASE);
        let a = &old.targets[0];
        let d = diff_target(None, Some(a));
        assert_eq!(d.targets_added, std::slice::from_ref(a));
        let d = diff_target(Some(a), None);
        assert_eq!(d.targets_removed, std::slice::from_ref(&a.name));
        assert!(diff_target(Some(a), Some(a)).is_empty());
        assert!(diff_target(None, None).is_empty());
        let new = changed("alias = \"a\"", "alias = \"b\"");
        let d = diff_target(Some(a), Some(&new.targets[0]));
        assert!(only_target_change(&d).access_changed);
        assert!(d.portals_added.is_empty() && d.needs_restart.is_empty());
    }
}
