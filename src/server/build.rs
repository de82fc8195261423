//! Configuration into running objects: each LUN's backend opened and wrapped in a logical unit,
//! targets assembled from their LUNs, the iSCSI service set up from the server settings.
//!
//! The only place that does this (`config` describes, `iscsi`/`scsi`/`storage` run). Each
//! function builds one thing from its part of the [`Config`], so a reload can build just the
//! targets and LUNs that changed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::cluster::CtdbReservationStore;
use crate::cluster::ctdb::SharedClient;
use crate::config::{AccessSettings, Backing, Config, LunConfig, TargetConfig};
use crate::iscsi::access::AllowList;
use crate::iscsi::login::LoginAccess;
use crate::iscsi::{Service, Target};
use crate::scsi::{
    AtomicJournal, LogicalUnit, LuIdentity, ReservationStore, TargetDevice, file_store,
};
use crate::storage::pool::BufferPool;
use crate::storage::{BlockBackend, DirectIo, FileBackend, UringEngine, select_engine};

/// What every LUN of a server shares: where its state files live and how its storage I/O
/// runs.
#[derive(Clone)]
pub struct StorageEnv {
    /// Persistent reservations and atomic-write journals live here (`data_dir`).
    pub data_dir: PathBuf,
    /// One io_uring (and its thread) for every LUN; `None`: the thread-pool engine.
    pub engine: Option<Arc<UringEngine>>,
    /// Large-read buffers, reused across every LUN of the server.
    pub read_buffers: Arc<BufferPool>,
    /// The runtime whose bounded blocking pool runs the thread-pool engine's syscalls.
    pub blocking_pool: tokio::runtime::Handle,
    /// Where every LUN keeps its persistent reservations: files under `data_dir`, or the
    /// cluster's CTDB persistent database with `[cluster]`.
    pub reservations: Arc<dyn ReservationStore>,
}

/// With `[cluster]`, what the reservation store shares with the cluster link
/// ([`super::apply::Running::start`] hands it over).
pub struct ClusterWiring {
    /// The unit of each reservation change committed here, for the link to tell the other
    /// nodes.
    pub reservation_changes: ReservationChanges,
    /// keel's connection to ctdbd, held by the link while it is connected and asked by the
    /// store.
    pub client: SharedClient,
}

/// The units of reservation changes committed on this node.
pub type ReservationChanges = tokio::sync::mpsc::UnboundedReceiver<String>;

impl StorageEnv {
    /// Chooses the storage engine once, for the whole server: a ring only when some target
    /// has a LUN. Storage syscalls of the thread-pool engine run on the current runtime's
    /// blocking pool, so call this on the main runtime. With `[cluster]`, also what the
    /// reservation store shares with the cluster link.
    pub fn new(config: &Config) -> Result<(StorageEnv, Option<ClusterWiring>)> {
        let uses_files = config.targets.iter().any(|t| !t.luns.is_empty());
        let engine = if uses_files {
            select_engine(config.io_engine, UringEngine::new)?
        } else {
            None
        };
        info!(
            configured = config.io_engine.name(),
            engine = if engine.is_some() {
                "io_uring"
            } else {
                "threads"
            },
            "storage engine"
        );
        let mut wiring = None;
        let reservations: Arc<dyn ReservationStore> = match &config.cluster {
            None => file_store(&config.data_dir),
            // Attached once, at startup: keel in a cluster does not serve reservations it
            // cannot share (a clear error rather than a node with a private table).
            Some(cluster) => {
                let client = SharedClient::default();
                let store = CtdbReservationStore::attach(
                    cluster,
                    client.clone(),
                    CTDB_ATTACH_PATIENCE,
                )
                .with_context(|| {
                    format!(
                        "[cluster]: cannot attach the reservation database {} through ctdbd at {}",
                        cluster.reservations_database,
                        cluster.socket.display()
                    )
                })?;
                let (store, reservation_changes) = store.with_change_feed();
                wiring = Some(ClusterWiring {
                    reservation_changes,
                    client,
                });
                Arc::new(store)
            }
        };
        let env = StorageEnv {
            data_dir: config.data_dir.clone(),
            engine,
            read_buffers: BufferPool::new(),
            blocking_pool: tokio::runtime::Handle::current(),
            reservations,
        };
        Ok((env, wiring))
    }
}

/// How long keel waits at startup for ctdbd to let it attach the reservation database
/// (ctdbd may still be in its first recovery).
const CTDB_ATTACH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The iSCSI service of a configuration: its settings, CHAP algorithms, discovery
/// authentication and limits, with no targets yet.
pub fn service(config: &Config) -> Service {
    let mut service = Service::new(config.iscsi.clone());
    service.access = login_access(&config.access);
    service.limits = config.access.limits;
    service
}

/// The server-wide authentication a login applies.
pub fn login_access(access: &AccessSettings) -> LoginAccess {
    LoginAccess {
        algorithms: access.chap_algorithms.clone(),
        discovery_chap: access.discovery_chap.clone().map(Arc::new),
        ..LoginAccess::default()
    }
}

/// Opens one LUN of `target`: its backend, its atomic-write journal (recovered before the
/// unit serves anything) and its persistent reservations.
pub async fn build_lun(
    target: &str,
    lun: &LunConfig,
    env: &StorageEnv,
) -> Result<Arc<LogicalUnit>> {
    let (opened, path) = match &lun.backing {
        Backing::File { path, create_size } => (
            FileBackend::open_file(path, *create_size, lun.read_only),
            path,
        ),
        Backing::Block { path, direct } => (
            FileBackend::open_block_device(path, lun.read_only)
                .and_then(|device| device.with_direct_io(*direct, lun.block_size)),
            path,
        ),
        Backing::Volume(spec) => {
            anyhow::bail!(
                "target {target} LUN {}: volume {}/{} is opened when its pool reports it ready",
                lun.lun,
                spec.pool,
                spec.name
            )
        }
    };
    let opened = opened.with_context(|| {
        format!(
            "target {} LUN {}: cannot open {}",
            target,
            lun.lun,
            path.display()
        )
    })?;
    let backend = with_env(opened, env);
    if !backend.size_bytes().is_multiple_of(lun.block_size as u64) {
        warn!(target = %target, lun = lun.lun, "size {} is not a multiple of the block size {}; the tail is not used", backend.size_bytes(), lun.block_size);
    }
    let unit = new_unit(target, lun, Some(backend.clone()), env)?;
    recover_journal(target, lun.lun, &unit, backend.as_ref()).await?;
    info!(target = %target, lun = lun.lun, backend = %backend.describe(), bytes = backend.size_bytes(), "LUN ready");
    Ok(unit)
}

/// A unit for `lun` whose medium is not there yet (a volume being provisioned): becoming
/// ready (02/04/01) until [`open_medium`] and [`LogicalUnit::set_ready`] give it one. Its
/// identity, journal and reservations are the same as they will be once ready.
pub fn pending_unit(target: &str, lun: &LunConfig, env: &StorageEnv) -> Result<Arc<LogicalUnit>> {
    new_unit(target, lun, None, env)
}

/// Opens a provisioned volume's medium: the block device at `path` (a zvol, a loop device),
/// or a regular file (a files pool).
pub async fn open_medium(
    target: &str,
    lun: &LunConfig,
    path: &Path,
    env: &StorageEnv,
) -> Result<Arc<dyn BlockBackend>> {
    let is_file = std::fs::metadata(path)
        .map(|m| m.is_file())
        .unwrap_or(false);
    // A zvol (or any block device) is read and written with O_DIRECT where it allows it, so
    // its data is not cached twice (in the page cache and the ARC).
    let opened = if is_file {
        FileBackend::open_file(path, None, lun.read_only)
    } else {
        FileBackend::open_block_device(path, lun.read_only)
            .and_then(|device| device.with_direct_io(DirectIo::Auto, lun.block_size))
    };
    let opened = opened.with_context(|| {
        format!(
            "target {} LUN {}: cannot open {}",
            target,
            lun.lun,
            path.display()
        )
    })?;
    let backend = with_env(opened, env);
    if backend.size_bytes() < lun.block_size as u64 {
        anyhow::bail!(
            "target {target} LUN {}: {} holds {} bytes, less than one block",
            lun.lun,
            path.display(),
            backend.size_bytes()
        );
    }
    Ok(backend)
}

fn with_env(opened: FileBackend, env: &StorageEnv) -> Arc<dyn BlockBackend> {
    Arc::new(
        opened
            .with_engine(env.engine.clone())
            .with_buffer_pool(env.read_buffers.clone())
            .with_blocking_pool(env.blocking_pool.clone()),
    )
}

/// The unit of `lun` with its derived identity, its atomic-write journal (not yet
/// recovered) and its persistent reservations.
fn new_unit(
    target: &str,
    lun: &LunConfig,
    backend: Option<Arc<dyn BlockBackend>>,
    env: &StorageEnv,
) -> Result<Arc<LogicalUnit>> {
    let identity = LuIdentity::derived(target, lun.lun);
    let journal = Arc::new(AtomicJournal::new(&env.data_dir, identity.naa));
    let unit = LogicalUnit::new(identity, lun.block_size, backend, lun.read_only)
        .with_physical_block_size(lun.physical_block_size)
        .with_atomic_journal(journal)
        .with_removable_medium(lun.removable)
        .with_sanitize_rate(lun.sanitize_rate);
    unit.set_reservation_store(Arc::clone(&env.reservations))
        .with_context(|| {
            format!(
                "target {} LUN {}: cannot load persistent reservations ({:?})",
                target, lun.lun, env.reservations
            )
        })?;
    Ok(Arc::new(unit))
}

/// An atomic write interrupted by a crash is completed (or, if its record is torn, known not
/// to have started) before the unit serves anything.
pub async fn recover_journal(
    target: &str,
    lun: u64,
    unit: &LogicalUnit,
    backend: &dyn BlockBackend,
) -> Result<()> {
    let Some(journal) = unit.atomic_journal() else {
        return Ok(());
    };
    journal.recover(backend).await.with_context(|| {
        format!(
            "target {} LUN {}: cannot recover the atomic write journal {}",
            target,
            lun,
            journal.path().display()
        )
    })?;
    Ok(())
}

/// Builds one target with all its LUNs (opened in the order the configuration lists them).
pub async fn build_target(config: &TargetConfig, env: &StorageEnv) -> Result<Target> {
    let device = Arc::new(TargetDevice::new(&config.name));
    for lun in &config.luns {
        device.add_lun(build_lun(&config.name, lun, env).await?);
    }
    Ok(target_on(config, device))
}

/// The target `config` describes (name, alias, portal group, CHAP, allow list), presenting
/// `device`'s logical units: a new device, or the running one when only its access changed
/// (sessions already logged in keep the target they logged in to).
pub fn target_on(config: &TargetConfig, device: Arc<TargetDevice>) -> Target {
    Target {
        name: config.name.clone(),
        alias: config.alias.clone(),
        portal_group_tag: config.portal_group_tag,
        device,
        chap: config.chap.clone().map(Arc::new),
        allowed: Arc::new(AllowList::new(config.allowed_initiators.iter().cloned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config_in(dir: &std::path::Path, targets: &str) -> Config {
        let text = format!(
            "[server]\ndata_dir = \"{}\"\nio_engine = \"threads\"\n{targets}",
            dir.display()
        );
        config::parse(&text, "test").unwrap()
    }

    const TWO_TARGETS: &str = "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n\
        [[target.lun]]\nlun = 0\nfile = \"a0.img\"\nsize = \"1MiB\"\n\
        [[target.lun]]\nlun = 3\nfile = \"a3.img\"\nsize = \"2MiB\"\nblock_size = 4096\n\
        [[target]]\nname = \"iqn.2026-11.org.example:b\"\n\
        [[target.lun]]\nlun = 0\nfile = \"b0.img\"\nsize = \"1MiB\"\n";

    #[tokio::test]
    async fn one_lun_and_one_target_build_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), TWO_TARGETS);
        let (env, _) = StorageEnv::new(&config).unwrap();
        // A single LUN of the first target, without building anything else.
        let lun = build_lun(&config.targets[0].name, &config.targets[0].luns[1], &env)
            .await
            .unwrap();
        assert_eq!(lun.lun(), 3);
        assert!(dir.path().join("a3.img").exists());
        assert!(!dir.path().join("a0.img").exists());
        // The second target alone.
        let target = build_target(&config.targets[1], &env).await.unwrap();
        assert_eq!(target.name, "iqn.2026-11.org.example:b");
        let luns: Vec<u64> = target.device.luns().iter().map(|l| l.lun()).collect();
        assert_eq!(luns, [0]);
        assert!(!dir.path().join("a0.img").exists());
    }

    #[tokio::test]
    async fn a_lun_that_cannot_open_names_its_target_lun_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(
            dir.path(),
            "[[target]]\nname = \"iqn.2026-11.org.example:a\"\n\
             [[target.lun]]\nlun = 7\nblock = \"/nonexistent/keel-test-device\"\n",
        );
        let (env, _) = StorageEnv::new(&config).unwrap();
        let err = build_target(&config.targets[0], &env).await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with(
                "target iqn.2026-11.org.example:a LUN 7: cannot open /nonexistent/keel-test-device"
            ),
            "{err:#}"
        );
    }

    #[test]
    fn the_service_carries_the_access_settings() {
        let config = config::parse(
            "[server]\nchap_algorithms = [\"SHA-256\"]\nmax_connections = 9\n\
             [[server.discovery_chap]]\nuser = \"disc\"\nsecret = \"discovery-secret\"\n",
            "test",
        )
        .unwrap();
        let service = service(&config);
        assert_eq!(service.settings, config.iscsi);
        assert_eq!(service.limits.max_connections, 9);
        assert_eq!(service.access.algorithms, config.access.chap_algorithms);
        assert!(service.access.discovery_chap.is_some());
        assert!(service.targets.list().is_empty());
    }
}
