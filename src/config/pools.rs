//! `[[pool]]` tables and a LUN's `volume` keys, decoded into the provisioning layer's own
//! settings ([`PoolSettings`], [`VolumeSpec`]).
//!
//! Pools are declared in the main file only (an included file holds targets). A LUN in any
//! file may name one: `volume = "POOL/NAME"`; that the pool exists, that the full name fits
//! ZFS's limits and that no two LUNs share a volume is checked once every file is read
//! ([`check_volumes`]), since the included files are parsed without the main file's pools.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::size::{SizeValue, parse_size};
use super::validator::{ConfigError, Validator};
use crate::provision::{OnRemove, PoolKind, PoolSettings, VolumeSpec, names};
use crate::scsi::LuIdentity;

/// How long a new volume's device node may take to appear by default.
const DEFAULT_DEVICE_WAIT_SECS: u64 = 30;

/// One `[[pool]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    name: Spanned<String>,
    kind: Spanned<String>,
    /// zfs: the parent dataset volumes live under.
    parent: Option<Spanned<String>>,
    /// zfs: the command run for `zfs` (default `["zfs"]`).
    command: Option<Spanned<Vec<String>>>,
    /// zfs: where the device nodes appear (default /dev/zvol).
    device_root: Option<Spanned<String>>,
    /// files: the directory of volume files.
    dir: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    device_wait_secs: Option<Spanned<u64>>,
}

/// A LUN's volume keys as written (the rest of the LUN table is `config.rs`'s).
pub(super) struct RawVolume<'a> {
    pub volume: &'a Spanned<String>,
    pub size: Option<&'a Spanned<SizeValue>>,
    pub clone_of: Option<&'a Spanned<String>>,
    pub volblocksize: Option<&'a Spanned<SizeValue>>,
    pub sparse: Option<bool>,
    pub on_remove: Option<&'a Spanned<String>>,
}

impl Validator<'_> {
    /// Every `[[pool]]` table; names are unique (ignoring ASCII case, like target names).
    pub(super) fn pools(&mut self, raw: &[RawPool]) -> Vec<PoolSettings> {
        let mut seen = BTreeMap::new();
        let mut pools = Vec::new();
        for p in raw {
            let name = p.name.get_ref().clone();
            if let Err(why) = check_pool_name(&name) {
                self.error(&p.name, format!("pool name {name:?}: {why}"));
            }
            if seen.insert(name.to_ascii_lowercase(), ()).is_some() {
                self.error(&p.name, format!("pool {name:?} is declared twice"));
            }
            if let Some(pool) = self.pool(p, name) {
                pools.push(pool);
            }
        }
        pools
    }

    fn pool(&mut self, p: &RawPool, name: String) -> Option<PoolSettings> {
        let what = format!("pool {name:?}");
        let kind = match p.kind.get_ref().as_str() {
            "zfs" => {
                for (key, set) in [("dir", p.dir.is_some())] {
                    if set {
                        self.error(&p.kind, format!("{what}: {key} is for kind = \"files\""));
                    }
                }
                let Some(parent) = &p.parent else {
                    self.error(
                        &p.kind,
                        format!("{what}: kind = \"zfs\" needs parent = \"POOL/DATASET\""),
                    );
                    return None;
                };
                if let Err(why) = names::validate_dataset(parent.get_ref()) {
                    self.error(parent, format!("{what}: parent: {why}"));
                }
                let command = match &p.command {
                    None => vec!["zfs".to_string()],
                    Some(c) if c.get_ref().is_empty() || c.get_ref()[0].is_empty() => {
                        self.error(c, format!("{what}: command is empty"));
                        return None;
                    }
                    Some(c) => c.get_ref().clone(),
                };
                let device_root = p.device_root.as_ref().map_or_else(
                    || PathBuf::from("/dev/zvol"),
                    |d| PathBuf::from(d.get_ref()),
                );
                PoolKind::Zfs {
                    parent: parent.get_ref().clone(),
                    command,
                    device_root,
                }
            }
            "files" => {
                for (key, set) in [
                    ("parent", p.parent.is_some()),
                    ("command", p.command.is_some()),
                    ("device_root", p.device_root.is_some()),
                ] {
                    if set {
                        self.error(&p.kind, format!("{what}: {key} is for kind = \"zfs\""));
                    }
                }
                let Some(dir) = &p.dir else {
                    self.error(
                        &p.kind,
                        format!("{what}: kind = \"files\" needs dir = \"/path\""),
                    );
                    return None;
                };
                if dir.get_ref().is_empty() {
                    self.error(dir, format!("{what}: dir is empty"));
                    return None;
                }
                PoolKind::Files {
                    dir: PathBuf::from(dir.get_ref()),
                }
            }
            other => {
                self.error(
                    &p.kind,
                    format!("{what}: kind {other:?} is not \"zfs\" or \"files\""),
                );
                return None;
            }
        };
        let owner = match &p.owner {
            None => "keel".to_string(),
            Some(o) => {
                if let Err(why) = check_owner(o.get_ref()) {
                    self.error(o, format!("{what}: owner: {why}"));
                }
                o.get_ref().clone()
            }
        };
        let device_wait = Duration::from_secs(self.in_range(
            &p.device_wait_secs,
            DEFAULT_DEVICE_WAIT_SECS,
            1..=3600,
            "device_wait_secs",
            " seconds",
        ));
        Some(PoolSettings {
            name,
            kind,
            owner,
            device_wait,
        })
    }

    /// A LUN's `volume = "POOL/NAME"` and its keys, as the backing of LUN `number` of
    /// `target`. The pool's existence is checked later ([`check_volumes`]).
    pub(super) fn volume(
        &mut self,
        what: &str,
        target: &str,
        number: u64,
        block_size: u32,
        raw: RawVolume<'_>,
    ) -> Option<VolumeSpec> {
        let text = raw.volume.get_ref();
        let Some((pool, name)) = text.split_once('/') else {
            self.error(
                raw.volume,
                format!("{what}: volume {text:?} is not POOL/NAME"),
            );
            return None;
        };
        if pool.is_empty() || name.is_empty() {
            self.error(
                raw.volume,
                format!("{what}: volume {text:?} is not POOL/NAME"),
            );
            return None;
        }
        if let Err(why) = names::validate_dataset(name) {
            self.error(raw.volume, format!("{what}: volume name {name:?}: {why}"));
        }
        let Some(size) = raw.size else {
            self.error(
                raw.volume,
                format!(
                    "{what}: a volume needs size (a clone is grown to it when its snapshot \
                     is smaller)"
                ),
            );
            return None;
        };
        let size = match parse_size(size.get_ref()) {
            Ok(0) => {
                self.error(size, format!("{what}: size must be more than 0"));
                return None;
            }
            Ok(bytes) if bytes % u64::from(block_size) != 0 => {
                self.error(
                    size,
                    format!(
                        "{what}: size {bytes} is not a multiple of the block size {block_size}"
                    ),
                );
                return None;
            }
            Ok(bytes) => bytes,
            Err(why) => {
                self.error(size, format!("{what}: {why}"));
                return None;
            }
        };
        if let Some(snapshot) = raw.clone_of
            && let Err(why) = names::validate_snapshot(snapshot.get_ref())
        {
            self.error(snapshot, format!("{what}: clone_of: {why}"));
        }
        let volblocksize = match raw.volblocksize {
            None => None,
            Some(v) => match parse_size(v.get_ref()) {
                Ok(bytes) if (512..=128 * 1024).contains(&bytes) && bytes.is_power_of_two() => {
                    Some(bytes)
                }
                Ok(bytes) => {
                    self.error(
                        v,
                        format!(
                            "{what}: volblocksize {bytes} is not a power of two from 512 to 128KiB"
                        ),
                    );
                    None
                }
                Err(why) => {
                    self.error(v, format!("{what}: volblocksize: {why}"));
                    None
                }
            },
        };
        let on_remove = match raw.on_remove.map(|o| (o, o.get_ref().as_str())) {
            None | Some((_, "keep")) => OnRemove::Keep,
            Some((_, "destroy")) => OnRemove::Destroy,
            Some((o, other)) => {
                self.error(
                    o,
                    format!("{what}: on_remove {other:?} is not \"keep\" or \"destroy\""),
                );
                OnRemove::Keep
            }
        };
        Some(VolumeSpec {
            pool: pool.to_string(),
            name: name.to_string(),
            size,
            clone_of: raw.clone_of.map(|c| c.get_ref().clone()),
            volblocksize,
            sparse: raw.sparse.unwrap_or(true),
            on_remove,
            lun_tag: lun_tag(target, number),
        })
    }
}

/// The value keel records in a volume's `keel:lun` property: which LUN it backs, with the
/// NAA designator the initiator sees in VPD page 0x83.
pub fn lun_tag(target: &str, lun: u64) -> String {
    let naa: String = LuIdentity::derived(target, lun)
        .naa
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{target} LUN {lun} naa.{naa}")
}

/// After every file is read: each volume's pool is declared, its full name fits ZFS's limits,
/// and no two LUNs share a volume. Each volume comes with what declares it ("target T LUN
/// N") and the file it is in (`None`: the main file).
pub(super) fn check_volumes<'a>(
    pools: &[PoolSettings],
    volumes: impl Iterator<Item = (String, &'a VolumeSpec, Option<String>)>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut users: BTreeMap<(String, String), String> = BTreeMap::new();
    for (what, spec, file) in volumes {
        let mut error = |message: String| {
            errors.push(ConfigError {
                file: file.clone(),
                line: None,
                message,
            })
        };
        let Some(pool) = pools
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(&spec.pool))
        else {
            error(format!(
                "{what}: volume pool {:?} is not declared (a [[pool]] in the main file)",
                spec.pool
            ));
            continue;
        };
        if let PoolKind::Zfs { parent, .. } = &pool.kind
            && let Err(why) = names::validate_volume_name(parent, &spec.name)
        {
            error(format!("{what}: volume {:?}: {why}", spec.name));
        }
        if let PoolKind::Files { .. } = &pool.kind
            && spec.name.split('/').any(|c| c == ".." || c == ".")
        {
            error(format!(
                "{what}: volume {:?} leaves the pool's directory",
                spec.name
            ));
        }
        let key = (pool.name.to_ascii_lowercase(), spec.name.clone());
        if let Some(first) = users.get(&key) {
            error(format!(
                "{what}: volume {}/{} is already the backing of {first}",
                spec.pool, spec.name
            ));
        } else {
            users.insert(key, what);
        }
    }
    errors
}

/// Pool names: what a volume's "POOL/NAME" can start with.
fn check_pool_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 64 {
        return Err("is longer than 64 bytes".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// The owner tag is a ZFS user property value and a file name part: printable, no TAB or
/// newline (it is parsed back from `zfs list -H`).
fn check_owner(owner: &str) -> Result<(), String> {
    if owner.is_empty() || owner.len() > 128 {
        return Err("must be 1 to 128 bytes".into());
    }
    if !owner
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err("may hold only letters, digits, '-', '_', '.' and ':'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Backing, parse};
    use crate::provision::{OnRemove, PoolKind};

    const POOLS: &str = "[[pool]]\nname = \"tank\"\nkind = \"zfs\"\nparent = \"tank/keel\"\n\
        [[pool]]\nname = \"scratch\"\nkind = \"files\"\ndir = \"/srv/volumes\"\nowner = \"node-a\"\n";

    fn with_lun(lun: &str) -> String {
        format!(
            "{POOLS}[[target]]\nname = \"iqn.2026-12.org.example:vm1\"\n[[target.lun]]\nlun = 0\n{lun}"
        )
    }

    #[test]
    fn pools_and_a_volume_lun_parse_with_their_defaults() {
        let c = parse(
            &with_lun(
                "volume = \"tank/vm1\"\nsize = \"1GiB\"\nclone_of = \"tank/golden@base\"\n\
                 volblocksize = \"16KiB\"\non_remove = \"destroy\"\n",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(c.pools.len(), 2);
        assert_eq!(
            c.pools[0].kind,
            PoolKind::Zfs {
                parent: "tank/keel".into(),
                command: vec!["zfs".into()],
                device_root: "/dev/zvol".into(),
            }
        );
        assert_eq!(c.pools[0].owner, "keel");
        assert_eq!(c.pools[1].owner, "node-a");
        assert_eq!(c.pools[0].device_wait.as_secs(), 30);
        let Backing::Volume(spec) = &c.targets[0].luns[0].backing else {
            panic!("not a volume: {:?}", c.targets[0].luns[0].backing);
        };
        assert_eq!((spec.pool.as_str(), spec.name.as_str()), ("tank", "vm1"));
        assert_eq!(spec.size, 1 << 30);
        assert_eq!(spec.clone_of.as_deref(), Some("tank/golden@base"));
        assert_eq!(spec.volblocksize, Some(16384));
        assert!(spec.sparse);
        assert_eq!(spec.on_remove, OnRemove::Destroy);
        assert!(
            spec.lun_tag
                .starts_with("iqn.2026-12.org.example:vm1 LUN 0 naa.6"),
            "{}",
            spec.lun_tag
        );
    }

    #[test]
    fn volume_mistakes_are_located_and_explained() {
        let cases = [
            ("volume = \"tank\"\nsize = 1048576\n", "is not POOL/NAME"),
            ("volume = \"tank/a\"\n", "a volume needs size"),
            (
                "volume = \"nope/a\"\nsize = 1048576\n",
                "pool \"nope\" is not declared",
            ),
            (
                "volume = \"tank/a\"\nsize = 1048576\nfile = \"a.img\"\n",
                "give one of volume, file or block",
            ),
            (
                "volume = \"tank/a\"\nsize = 1048576\nvolblocksize = 3000\n",
                "not a power of two",
            ),
            (
                "volume = \"tank/a\"\nsize = 1048576\non_remove = \"shred\"\n",
                "is not \"keep\" or \"destroy\"",
            ),
            (
                "file = \"a.img\"\nclone_of = \"tank/g@s\"\n",
                "applies to volume LUNs only",
            ),
        ];
        for (lun, expected) in cases {
            let errors = parse(&with_lun(lun), "x.toml").unwrap_err();
            assert!(errors.to_string().contains(expected), "{lun}: {errors}");
        }
    }

    #[test]
    fn two_luns_may_not_share_a_volume_and_pools_are_checked() {
        let text = format!(
            "{POOLS}[[target]]\nname = \"iqn.2026-12.org.example:a\"\n[[target.lun]]\nlun = 0\n\
             volume = \"tank/same\"\nsize = 1048576\n\
             [[target]]\nname = \"iqn.2026-12.org.example:b\"\n[[target.lun]]\nlun = 0\n\
             volume = \"tank/same\"\nsize = 1048576\n"
        );
        let errors = parse(&text, "x").unwrap_err().to_string();
        assert!(
            errors.contains("already the backing of target \"iqn.2026-12.org.example:a\" LUN 0"),
            "{errors}"
        );
        for (pool, expected) in [
            ("[[pool]]\nname = \"t\"\nkind = \"zfs\"\n", "needs parent"),
            ("[[pool]]\nname = \"t\"\nkind = \"files\"\n", "needs dir"),
            (
                "[[pool]]\nname = \"t\"\nkind = \"lvm\"\n",
                "is not \"zfs\" or \"files\"",
            ),
            (
                "[[pool]]\nname = \"t\"\nkind = \"zfs\"\nparent = \"p\"\ncommand = []\n",
                "command is empty",
            ),
            (
                "[[pool]]\nname = \"t t\"\nkind = \"files\"\ndir = \"/x\"\n",
                "pool name",
            ),
            (
                "[[pool]]\nname = \"t\"\nkind = \"files\"\ndir = \"/x\"\n[[pool]]\nname = \"T\"\nkind = \"files\"\ndir = \"/y\"\n",
                "declared twice",
            ),
        ] {
            let errors = parse(pool, "x").unwrap_err().to_string();
            assert!(errors.contains(expected), "{pool}: {errors}");
        }
    }
}
