//! The provisioning layer's own settings: where volumes live ([`PoolSettings`]) and what a LUN
//! declares ([`VolumeSpec`]). `config` decodes `[[pool]]` tables and a LUN's `volume` keys
//! into these; nothing here reads files.

use std::path::PathBuf;
use std::time::Duration;

/// The user property (ZFS) or sidecar tag (files) that marks a volume as created by keel, so
/// that reconciliation and teardown never touch anything else. Its value is the pool's
/// [`PoolSettings::owner`].
pub const OWNER_PROPERTY: &str = "keel:owner";
/// The user property recording which LUN a volume backs ("TARGET LUN N naa.HEX"), so an
/// operator can tell which disk is which (`zfs get keel:lun`).
pub const LUN_PROPERTY: &str = "keel:lun";

/// Where volumes live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// A parent dataset of a ZFS pool; volumes are zvols `PARENT/NAME`, served from
    /// `/dev/zvol/PARENT/NAME`.
    Zfs {
        /// The parent dataset, e.g. "tank/keel".
        parent: String,
        /// The command keel runs for `zfs`, e.g. `["zfs"]` or `["sudo", "-n", "zfs"]` (a test
        /// or a wrapper can stand in for it). Never empty.
        command: Vec<String>,
        /// Where device nodes appear (default "/dev/zvol"); tests point it elsewhere.
        device_root: PathBuf,
    },
    /// A directory of sparse files for machines without ZFS; clones by reflink where the file
    /// system has it, else by copy.
    Files { dir: PathBuf },
}

/// One `[[pool]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The name LUNs use in `volume = "POOL/NAME"`.
    pub name: String,
    pub kind: PoolKind,
    /// The value of [`OWNER_PROPERTY`] on volumes keel creates in this pool (default "keel").
    pub owner: String,
    /// How long a new volume's device node may take to appear (udev) before the volume is
    /// failed (default 30 s).
    pub device_wait: Duration,
}

/// What happens to a declared volume when its LUN is removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnRemove {
    /// The volume stays (the default: data nobody asked to destroy is never destroyed).
    #[default]
    Keep,
    /// The volume is destroyed, if keel created it (it carries this pool's owner tag).
    Destroy,
}

/// A volume a LUN declares: `volume = "POOL/NAME"` with `size`, optional `clone_of`,
/// `volblocksize`, `sparse`, `on_remove`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The [`PoolSettings::name`] it lives in.
    pub pool: String,
    /// Its name inside the pool (for ZFS: relative to the parent dataset; may contain '/').
    pub name: String,
    /// Bytes (volsize); a clone is grown to it when the snapshot is smaller.
    pub size: u64,
    /// The snapshot to clone: for ZFS a full snapshot name ("tank/golden@v1", anywhere in the
    /// pool); for a files pool the name of a file in the pool's directory ("golden@v1").
    pub clone_of: Option<String>,
    /// ZFS volblocksize in bytes (a power of two, 512..=128 KiB); `None`: the pool's default.
    pub volblocksize: Option<u64>,
    /// Sparse (no reservation, `zfs create -s`) or thick.
    pub sparse: bool,
    pub on_remove: OnRemove,
    /// The value of [`LUN_PROPERTY`]: "TARGET LUN N naa.HEX".
    pub lun_tag: String,
}
