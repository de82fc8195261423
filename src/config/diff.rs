//! The difference between two configurations, in the terms the running server applies
//! (FreeBSD ctld's `conf_apply()`): portals, targets and LUNs removed, changed and added.
//!
//! A LUN changed in anything but its size is removed and added again; a LUN whose only
//! change is its size is resized in place.
//!
//! Placeholder with the agreed shape (i12-design.md §1) until the config helper's version
//! lands; it is replaced by that one at merge.

use std::net::SocketAddr;

use super::{Backing, Config, LunConfig, TargetConfig};

/// What changed between two configurations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub portals_removed: Vec<SocketAddr>,
    pub portals_added: Vec<SocketAddr>,
    /// Names.
    pub targets_removed: Vec<String>,
    pub targets_changed: Vec<TargetDiff>,
    pub targets_added: Vec<TargetConfig>,
    /// Server settings that changed but only take effect at restart (named, for the report).
    pub needs_restart: Vec<String>,
}

/// What changed in one target present in both configurations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetDiff {
    /// The target as it is now desired.
    pub new: TargetConfig,
    /// Alias, allowed_initiators, chap or portal_group_tag changed.
    pub access_changed: bool,
    pub luns_removed: Vec<u64>,
    /// Same LUN, only `size` (create_size) differs.
    pub luns_resized: Vec<LunConfig>,
    /// New LUNs, and changed LUNs (remove + add).
    pub luns_added: Vec<LunConfig>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.portals_removed.is_empty()
            && self.portals_added.is_empty()
            && self.targets_removed.is_empty()
            && self.targets_changed.is_empty()
            && self.targets_added.is_empty()
            && self.needs_restart.is_empty()
    }

    /// One line per change, for logs and reports.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(
            self.targets_removed
                .iter()
                .map(|t| format!("remove target {t}")),
        );
        for t in &self.targets_changed {
            lines.extend(
                t.luns_removed
                    .iter()
                    .map(|l| format!("remove target {} LUN {l}", t.new.name)),
            );
            lines.extend(
                t.luns_resized
                    .iter()
                    .map(|l| format!("resize target {} LUN {}", t.new.name, l.lun)),
            );
            if t.access_changed {
                lines.push(format!("change access of target {}", t.new.name));
            }
            lines.extend(
                t.luns_added
                    .iter()
                    .map(|l| format!("add target {} LUN {}", t.new.name, l.lun)),
            );
        }
        lines.extend(
            self.targets_added
                .iter()
                .map(|t| format!("add target {}", t.name)),
        );
        lines.extend(
            self.portals_removed
                .iter()
                .map(|p| format!("close portal {p}")),
        );
        lines.extend(
            self.portals_added
                .iter()
                .map(|p| format!("open portal {p}")),
        );
        lines.extend(
            self.needs_restart
                .iter()
                .map(|s| format!("{s} changes at restart")),
        );
        lines
    }
}

/// The difference from `old` to `new` (a full reload).
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff {
        portals_removed: old
            .portals
            .iter()
            .filter(|p| !new.portals.contains(p))
            .copied()
            .collect(),
        portals_added: new
            .portals
            .iter()
            .filter(|p| !old.portals.contains(p))
            .copied()
            .collect(),
        ..ConfigDiff::default()
    };
    for target in &old.targets {
        let now = new.targets.iter().find(|t| t.name == target.name);
        merge(&mut d, diff_target(Some(target), now));
    }
    for target in &new.targets {
        if !old.targets.iter().any(|t| t.name == target.name) {
            merge(&mut d, diff_target(None, Some(target)));
        }
    }
    let settings = [
        ("data_dir", old.data_dir != new.data_dir),
        ("io_engine", old.io_engine != new.io_engine),
        ("iSCSI settings", old.iscsi != new.iscsi),
        ("access settings", old.access != new.access),
    ];
    d.needs_restart = settings
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name.to_string())
        .collect();
    d
}

fn merge(into: &mut ConfigDiff, from: ConfigDiff) {
    into.targets_removed.extend(from.targets_removed);
    into.targets_changed.extend(from.targets_changed);
    into.targets_added.extend(from.targets_added);
}

/// The difference of one target (`None`: absent on that side).
pub fn diff_target(old: Option<&TargetConfig>, new: Option<&TargetConfig>) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    match (old, new) {
        (None, None) => {}
        (Some(old), None) => d.targets_removed.push(old.name.clone()),
        (None, Some(new)) => d.targets_added.push(new.clone()),
        (Some(old), Some(new)) if old == new => {}
        (Some(old), Some(new)) => {
            let mut t = TargetDiff {
                new: new.clone(),
                access_changed: old.alias != new.alias
                    || old.allowed_initiators != new.allowed_initiators
                    || old.chap != new.chap
                    || old.portal_group_tag != new.portal_group_tag,
                luns_removed: Vec::new(),
                luns_resized: Vec::new(),
                luns_added: Vec::new(),
            };
            for lun in &old.luns {
                match new.luns.iter().find(|l| l.lun == lun.lun) {
                    None => t.luns_removed.push(lun.lun),
                    Some(now) if now == lun => {}
                    Some(now) if only_size_differs(lun, now) => t.luns_resized.push(now.clone()),
                    Some(now) => {
                        t.luns_removed.push(lun.lun);
                        t.luns_added.push(now.clone());
                    }
                }
            }
            t.luns_added.extend(
                new.luns
                    .iter()
                    .filter(|l| !old.luns.iter().any(|o| o.lun == l.lun))
                    .cloned(),
            );
            d.targets_changed.push(t);
        }
    }
    d
}

fn only_size_differs(old: &LunConfig, new: &LunConfig) -> bool {
    match (&old.backing, &new.backing) {
        (
            Backing::File { path: a, .. },
            Backing::File {
                path: b,
                create_size: Some(_),
            },
        ) if a == b => {
            let same_backing = LunConfig {
                backing: new.backing.clone(),
                ..old.clone()
            };
            same_backing == *new
        }
        _ => false,
    }
}
