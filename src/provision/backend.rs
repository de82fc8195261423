//! The seam between the provisioner and a storage server: [`VolumeBackend`]. Every call is
//! one round trip to the server (for ZFS one `zfs` process, serialized on the server behind
//! its global lock), so the provisioner counts and batches them.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use super::settings::VolumeSpec;

pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// A volume as the server reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedVolume {
    /// volsize in bytes.
    pub size: u64,
    /// The snapshot it was cloned from (ZFS `origin`; files: recorded at clone time), full
    /// name as [`VolumeSpec::clone_of`] spells it.
    pub origin: Option<String>,
    /// The [`super::settings::OWNER_PROPERTY`] value, if set.
    pub owner: Option<String>,
    /// The [`super::settings::LUN_PROPERTY`] value, if set.
    pub lun_tag: Option<String>,
    /// volblocksize in bytes, where the backend has one.
    pub volblocksize: Option<u64>,
}

/// Everything under a pool, from one listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// By name relative to the pool (as [`VolumeSpec::name`]).
    pub volumes: BTreeMap<String, ObservedVolume>,
    /// Snapshots of volumes under the pool, full names relative to the pool ("NAME@SNAP").
    pub snapshots: Vec<String>,
}

/// Why a call failed, as the provisioner must treat it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The server was busy ("dataset is busy", a lock timeout, "pool I/O is currently
    /// suspended"): nothing changed; retry later with backoff.
    #[error("busy: {0}")]
    Busy(String),
    /// The call's outcome is unknown (the process crashed or was killed, its output could not
    /// be parsed): list again before deciding anything.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The server refused for a reason retrying will not fix (no such snapshot, out of space,
    /// invalid name, a dependent clone that is not keel's): the volume is failed, with this
    /// reason shown in `keel status`.
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, BackendError::Failed(_))
    }
}

/// A pool's storage server. Calls are made one at a time per pool by the provisioner.
pub trait VolumeBackend: Send + Sync {
    /// Short description for logs and status ("zfs tank/keel", "files /srv/keel").
    fn describe(&self) -> String;

    /// Lists every volume under the pool with origin, size, owner and LUN tags, and every
    /// snapshot of them: one call (`zfs list -H -p -o ... -t volume,snapshot -r PARENT`).
    fn list(&self) -> BackendFuture<'_, Observed>;

    /// Creates `spec` (or clones it from `spec.clone_of`, then grows it to `spec.size` if the
    /// clone is smaller) tagged with `owner` and `spec.lun_tag`, in one call where the server
    /// allows it (`zfs clone -o keel:owner=.. -o keel:lun=.. SNAP PARENT/NAME`); the tags are
    /// set atomically with the creation, so a volume without them was not made by keel.
    fn create<'a>(&'a self, spec: &'a VolumeSpec, owner: &'a str) -> BackendFuture<'a, ()>;

    /// Destroys `names` (relative to the pool), which the caller ordered so that clones come
    /// before the snapshots they depend on; batched into as few calls as the server allows
    /// (one `zfs program` channel program where supported, else one by one). Returns how many
    /// server calls it made. A name that no longer exists is not an error (idempotent).
    fn destroy<'a>(&'a self, names: &'a [String]) -> BackendFuture<'a, usize>;

    /// Destroys snapshots ("NAME@SNAP", relative to the pool) in one call per volume
    /// (`zfs destroy PARENT/NAME@a,b,c`). Returns the number of calls.
    fn destroy_snapshots<'a>(&'a self, snapshots: &'a [String]) -> BackendFuture<'a, usize>;

    /// Grows a volume to `size` bytes (`zfs set volsize=`). Never shrinks.
    fn grow<'a>(&'a self, name: &'a str, size: u64) -> BackendFuture<'a, ()>;

    /// The device node (or file) keel serves for volume `name`.
    fn device_path(&self, name: &str) -> PathBuf;

    /// Waits, bounded by `timeout`, until the volume's device node exists and opens (udev
    /// creates `/dev/zvol/...` asynchronously after `zfs create`/`clone` returns). Makes no
    /// server call. Returns the path to open.
    fn wait_device<'a>(&'a self, name: &'a str, timeout: Duration) -> BackendFuture<'a, PathBuf>;
}
