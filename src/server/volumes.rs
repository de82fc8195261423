//! Volume LUNs: the units that wait for a pool's volume, and what happens when the pool
//! reports it ready or failed.
//!
//! A LUN with `volume = "POOL/NAME"` is added to its target at once, with no medium: it is in
//! REPORT LUNS and answers TEST UNIT READY and media commands with 02/04/01 (LOGICAL UNIT IS
//! IN PROCESS OF BECOMING READY), which initiators retry (`../shared/DESIGN.md` §3), so a
//! login never waits for, or fails because of, a slow storage server. The volume is declared
//! to the [`Provisioner`]; the first command that finds the unit not ready tells it that an
//! initiator waits (the volume moves to the front of its pool's queue). When the pool reports
//! the volume ready, the attacher task opens its device, recovers the unit's atomic-write
//! journal and makes the unit ready (SBC-4 §4.x: 06/2A/09 to nexuses that saw it without
//! capacity); when the pool reports it failed, the unit goes offline (02/04/03, which
//! initiators do not retry) and the reason shows in `keel status`.
//!
//! The attacher runs on its own task with only what it needs (the table of waiting units and
//! the storage environment), so volume events never wait behind a control call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::build::{self, StorageEnv};
use crate::config::{Config, LunConfig};
use crate::provision::{
    FilesBackend, OnRemove, PoolKind, Provisioner, VolumeBackend, VolumeEvent, VolumeSpec,
    VolumeStatus, ZfsBackend,
};
use crate::scsi::LogicalUnit;

/// A volume by (lower-cased pool, name): pool names compare ignoring ASCII case, like target
/// names; volume names are the storage server's and compare exactly.
pub type VolumeKey = (String, String);

pub fn volume_key(spec: &VolumeSpec) -> VolumeKey {
    (spec.pool.to_ascii_lowercase(), spec.name.clone())
}

/// A unit waiting for (or served from) a volume.
struct VolumeLun {
    target: String,
    config: LunConfig,
    unit: Weak<LogicalUnit>,
}

/// What the attacher and the apply path share: which unit each volume backs, and why
/// volumes failed.
#[derive(Default)]
struct Table {
    luns: BTreeMap<VolumeKey, VolumeLun>,
    /// (target, LUN) → why its volume failed.
    failures: BTreeMap<(String, u64), String>,
}

/// The volume LUNs of a server and its provisioner (none when no `[[pool]]` is declared).
pub struct Volumes {
    provisioner: Option<Provisioner>,
    table: Arc<Mutex<Table>>,
    /// The volume of each volume LUN by (lower-cased target, LUN): what the apply path looks
    /// up when it removes LUNs and reports status. Only the apply path uses it, so it is
    /// not behind the table's mutex.
    by_lun: BTreeMap<(String, u64), VolumeSpec>,
}

impl Volumes {
    /// No pools: volume LUNs cannot be declared (the configuration checks that every volume's
    /// pool exists).
    pub fn none() -> Volumes {
        Volumes {
            provisioner: None,
            table: Arc::default(),
            by_lun: BTreeMap::new(),
        }
    }

    /// Builds each pool's backend and starts the provisioner (its state files live in
    /// `DATA_DIR/provision`) and the attacher.
    pub fn start(config: &Config, storage: &StorageEnv) -> Result<Volumes> {
        if config.pools.is_empty() {
            return Ok(Volumes::none());
        }
        let mut pools = Vec::new();
        let mut swept = false;
        for pool in &config.pools {
            let backend: Arc<dyn VolumeBackend> = match &pool.kind {
                PoolKind::Zfs { .. } => {
                    let zfs =
                        ZfsBackend::new(pool).with_context(|| format!("pool {}", pool.name))?;
                    // A keel killed during `zfs program` left its program file behind;
                    // every zfs pool writes to the same directory, so one sweep does.
                    if !swept {
                        zfs.sweep_stale_program_files();
                        swept = true;
                    }
                    Arc::new(zfs)
                }
                PoolKind::Files { .. } => Arc::new(
                    FilesBackend::new(pool).with_context(|| format!("pool {}", pool.name))?,
                ),
            };
            info!(pool = %pool.name, backend = %backend.describe(), "volume pool");
            pools.push((pool.clone(), backend));
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        let state_dir = config.data_dir.join("provision");
        let provisioner = Provisioner::start(pools, state_dir.clone(), events_tx)
            .with_context(|| format!("cannot start provisioning ({})", state_dir.display()))?;
        let table: Arc<Mutex<Table>> = Arc::default();
        tokio::spawn(attach_volumes(events, table.clone(), storage.clone()));
        Ok(Volumes {
            provisioner: Some(provisioner),
            table,
            by_lun: BTreeMap::new(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `unit` (no medium yet) waits for `spec`'s volume: declared to its pool, and moved to
    /// the front of the queue as soon as a command finds the unit not ready.
    pub fn declare(
        &mut self,
        target: &str,
        config: &LunConfig,
        spec: &VolumeSpec,
        unit: &Arc<LogicalUnit>,
    ) -> Result<(), String> {
        let Some(provisioner) = &self.provisioner else {
            return Err(format!(
                "target {target} LUN {}: no pool {:?} is running (pools are set up at startup: \
                 restart keel after adding a [[pool]])",
                config.lun, spec.pool
            ));
        };
        // The unit is in the table before the pool hears of it: an existing volume is
        // reported ready at once, and the attacher must find who waits for it.
        {
            let mut table = self.table();
            table.failures.remove(&(target.to_string(), config.lun));
            table.luns.insert(
                volume_key(spec),
                VolumeLun {
                    target: target.to_string(),
                    config: config.clone(),
                    unit: Arc::downgrade(unit),
                },
            );
        }
        if let Err(why) = provisioner.declare(spec.clone()) {
            self.table().luns.remove(&volume_key(spec));
            return Err(format!("target {target} LUN {}: {why}", config.lun));
        }
        let demand = provisioner.clone();
        let (pool, name) = (spec.pool.clone(), spec.name.clone());
        unit.on_demand(move || demand.demand(&pool, &name));
        self.by_lun
            .insert((target.to_ascii_lowercase(), config.lun), spec.clone());
        Ok(())
    }

    /// The volume that backs `target`'s LUN `lun`, if it is a volume LUN.
    pub fn spec_of(&self, target: &str, lun: u64) -> Option<&VolumeSpec> {
        self.by_lun.get(&(target.to_ascii_lowercase(), lun))
    }

    /// The volumes of `target`'s LUN `lun` (all its LUNs: `None`), whose units are being
    /// removed: no longer looked up by LUN. [`Volumes::undeclare`] then lets them go.
    pub fn take_luns(&mut self, target: &str, lun: Option<u64>) -> Vec<VolumeSpec> {
        let target = target.to_ascii_lowercase();
        let keys: Vec<_> = self
            .by_lun
            .keys()
            .filter(|(t, l)| *t == target && lun.is_none_or(|n| n == *l))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.by_lun.remove(&k))
            .collect()
    }

    /// The unit backed by `spec` is gone (its LUN or target removed). The volume is
    /// destroyed only when `destroy` says so (the LUN's `on_remove` policy or an explicit
    /// request) and the volume is not declared again by `still_declared`, e.g. a LUN removed
    /// and added back in one change: data nobody asked to destroy is never destroyed.
    pub async fn undeclare(
        &self,
        spec: &VolumeSpec,
        destroy: bool,
        still_declared: &BTreeSet<VolumeKey>,
    ) -> Result<bool, String> {
        let key = volume_key(spec);
        if still_declared.contains(&key) {
            return Ok(false);
        }
        {
            let mut table = self.table();
            if let Some(lun) = table.luns.remove(&key) {
                table.failures.remove(&(lun.target, lun.config.lun));
            }
        }
        let Some(provisioner) = &self.provisioner else {
            return Ok(false);
        };
        provisioner
            .undeclare(&spec.pool, &spec.name, destroy)
            .await?;
        Ok(destroy)
    }

    /// Why volume LUNs failed, by (target, LUN).
    pub fn failures(&self) -> Vec<((String, u64), String)> {
        self.table()
            .failures
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every volume the provisioner knows, with its state and time in the queue.
    pub fn status(&self) -> Vec<VolumeStatus> {
        self.provisioner
            .as_ref()
            .map(Provisioner::status)
            .unwrap_or_default()
    }

    pub fn provisioner(&self) -> Option<&Provisioner> {
        self.provisioner.as_ref()
    }

    /// Stops the provisioner's pool tasks (a job in flight finishes its call first).
    pub async fn shutdown(&self) {
        if let Some(provisioner) = &self.provisioner {
            provisioner.shutdown().await;
        }
    }
}

/// Whether removing the LUN backed by `spec` destroys its volume: its own policy, or a
/// removal that asked for it.
pub fn destroys(spec: &VolumeSpec, requested: bool) -> bool {
    requested || spec.on_remove == OnRemove::Destroy
}

/// The attacher: opens each volume the pools report ready and makes its unit ready; takes
/// the unit of a failed volume offline.
async fn attach_volumes(
    mut events: mpsc::UnboundedReceiver<VolumeEvent>,
    table: Arc<Mutex<Table>>,
    storage: StorageEnv,
) {
    while let Some(event) = events.recv().await {
        match event {
            VolumeEvent::Ready {
                pool, name, path, ..
            } => {
                let waiting = {
                    let table = table.lock().unwrap_or_else(|e| e.into_inner());
                    table
                        .luns
                        .get(&(pool.to_ascii_lowercase(), name.clone()))
                        .and_then(|l| Some((l.target.clone(), l.config.clone(), l.unit.upgrade()?)))
                };
                let Some((target, config, unit)) = waiting else {
                    info!(pool = %pool, volume = %name, "volume ready, but no LUN waits for it any more");
                    continue;
                };
                match attach(&target, &config, &unit, &path, &storage).await {
                    Ok(()) => {
                        info!(target = %target, lun = config.lun, pool = %pool, volume = %name, device = %path.display(), "volume ready: LUN serves");
                    }
                    Err(e) => {
                        let reason = format!("{e:#}");
                        error!(target = %target, lun = config.lun, "{reason}");
                        unit.set_offline();
                        table
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .failures
                            .insert((target, config.lun), reason);
                    }
                }
            }
            VolumeEvent::Failed { pool, name, reason } => {
                let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
                let Some(lun) = table.luns.get(&(pool.to_ascii_lowercase(), name.clone())) else {
                    continue;
                };
                let key = (lun.target.clone(), lun.config.lun);
                if let Some(unit) = lun.unit.upgrade() {
                    unit.set_offline();
                }
                warn!(target = %key.0, lun = key.1, pool = %pool, volume = %name, "volume failed: {reason}");
                table
                    .failures
                    .insert(key, format!("volume {pool}/{name}: {reason}"));
            }
            VolumeEvent::Destroyed { pool, name } => {
                info!(pool = %pool, volume = %name, "volume destroyed");
            }
        }
    }
}

/// Opens the volume at `path` (a block device, or a file in a files pool) as `unit`'s medium.
async fn attach(
    target: &str,
    config: &LunConfig,
    unit: &LogicalUnit,
    path: &Path,
    storage: &StorageEnv,
) -> Result<()> {
    let backend = build::open_medium(target, config, path, storage).await?;
    build::recover_journal(target, config.lun, unit, backend.as_ref()).await?;
    unit.set_ready(backend);
    Ok(())
}
