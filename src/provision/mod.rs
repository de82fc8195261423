//! Volumes on demand: the pools volumes live in, the volumes the configuration declares, and
//! the machinery that makes reality match — behind a slow storage server that serializes
//! every change behind one lock (`../shared/DESIGN.md` §3, seed 000).
//!
//! Layering: below config (which decodes `[[pool]]` and a LUN's `volume` into this layer's
//! [`PoolSettings`] and [`VolumeSpec`]) and above iscsi/scsi/storage. Only `server/` builds the
//! running objects (the backends and the provisioner).
//!
//! - `settings.rs`: the layer's own settings types (pools, declared volumes).
//! - `backend.rs`: the one seam to a storage server ([`VolumeBackend`]): list, create or clone,
//!   destroy, wait for the device node. Implemented by `zfs/` (the `zfs` CLI, its `-H -p`
//!   output parsed strictly) and `files.rs` (a directory of sparse files).
//! - `names.rs`: ZFS dataset and snapshot name rules, checked up front.
//! - `planner.rs` (sans-IO): desired and observed volumes in, jobs out.
//! - `queue.rs` (sans-IO): the per-pool job scheduler; O(log n) per operation, demand first.
//! - `provisioner.rs`: the per-pool driver task that runs the queue against a backend.

pub mod backend;
pub mod files;
pub mod metrics_export;
pub mod names;
pub mod planner;
pub mod provisioner;
pub mod queue;
pub mod settings;
pub mod zfs;

pub use backend::{BackendError, Observed, ObservedVolume, VolumeBackend};
pub use files::FilesBackend;
pub use planner::{DestroyStep, Plan, plan};
pub use provisioner::{
    CallKind, CallResult, PoolStats, Provisioner, ReadyHistogram, VolumeEvent, VolumeState,
    VolumeStatus,
};
pub use queue::{Job, JobId, JobKind, JobQueue, QueuedJob};
pub use settings::{OnRemove, PoolKind, PoolSettings, VolumeSpec};
pub use zfs::ZfsBackend;
