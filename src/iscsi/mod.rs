//! The iSCSI protocol (RFC 7143): login and negotiation, discovery, sessions and their
//! connections, the CmdSN window, R2T/Data-In sequencing, task management, NOP and logout.
//! Knows nothing about SCSI commands: it hands CDBs to a [`crate::scsi::TargetDevice`].

pub mod access;
pub mod admission;
pub mod auth;
pub mod chap;
pub mod connection;
pub mod limits;
pub mod login;
mod login_driver;
pub mod metrics;
pub mod metrics_export;
pub mod name;
pub mod params;
pub mod redirects;
pub mod response;
pub mod session;
pub mod session_core;
pub mod settings;
pub mod status;
mod task_report;
pub mod text_exchange;
pub mod window;
mod write_buffers;
mod writer;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::scsi::TargetDevice;

use access::AllowList;
use chap::ChapPolicy;
use limits::ConnectionCounter;
use login::LoginAccess;

pub use limits::Limits;
pub use session::{PortalMatch, SessionFilter, SessionRegistry};
pub use settings::Settings;

/// A target as the iSCSI layer sees it: a name, a portal group, and its logical units.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group_tag: u16,
    pub device: Arc<TargetDevice>,
    /// CHAP demanded by this target; `None`: no authentication.
    pub chap: Option<Arc<ChapPolicy>>,
    /// Initiators that may see and use it.
    pub allowed: Arc<AllowList>,
}

#[cfg(test)]
impl Target {
    /// A target for unit tests: LUN 0 on 1 MiB of memory, open to every initiator.
    pub(crate) fn for_test(name: &str, block_size: u32, read_only: bool) -> Target {
        let device = TargetDevice::new(name);
        device.add_lun(Arc::new(crate::scsi::LogicalUnit::new(
            crate::scsi::LuIdentity::derived(name, 0),
            block_size,
            Some(Arc::new(crate::storage::MemoryBackend::new(1 << 20))),
            read_only,
        )));
        Target {
            name: name.into(),
            alias: None,
            portal_group_tag: 1,
            device: Arc::new(device),
            chap: None,
            allowed: Arc::new(AllowList::new(Vec::<String>::new())),
        }
    }
}

/// The targets this server presents. Logins look targets up here at login time, so targets
/// can be added and removed while other sessions run.
#[derive(Debug, Default)]
pub struct TargetRegistry {
    targets: RwLock<BTreeMap<String, Arc<Target>>>,
}

impl TargetRegistry {
    pub fn insert(&self, target: Arc<Target>) {
        self.write().insert(target.name.clone(), target);
    }

    pub fn remove(&self, name: &str) -> Option<Arc<Target>> {
        self.write().remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Target>> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Target>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Target>>> {
        self.targets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Target>>> {
        self.targets.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The iSCSI service: what every connection task shares (settings, targets, sessions,
/// limits, the write-buffer budget, the shutdown signal).
#[derive(Debug)]
pub struct Service {
    pub settings: Settings,
    pub targets: TargetRegistry,
    pub sessions: SessionRegistry,
    /// CHAP algorithms and discovery authentication.
    pub access: LoginAccess,
    pub limits: Limits,
    pub connections: ConnectionCounter,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// Write data being collected, over all connections, in KiB (`write_buffer_mib`).
    pub write_budget: std::sync::Arc<tokio::sync::Semaphore>,
    /// The counters behind the Prometheus metrics.
    pub metrics: metrics::Metrics,
    /// Portal addresses whose logins are redirected elsewhere (a planned move).
    pub redirects: redirects::Redirects,
    /// Whether logins are taken now (held while a cluster node is unfit to serve).
    pub admission: admission::Admission,
    /// When the service was made (the server's uptime).
    pub started: std::time::Instant,
}

impl Service {
    /// Forgets the metrics of targets and LUNs that no longer exist (called when the
    /// configuration removes some, and at each scrape).
    pub fn forget_removed_metrics(&self) {
        let mut names = std::collections::BTreeSet::new();
        let mut luns = std::collections::BTreeSet::new();
        for target in self.targets.list() {
            for lu in target.device.luns() {
                luns.insert((target.name.clone(), lu.lun()));
            }
            names.insert(target.name.clone());
        }
        self.metrics.forget_all_but(&names, &luns);
    }

    pub fn new(settings: Settings) -> Self {
        let budget_kib = settings.write_buffer_mib as usize * 1024;
        Service {
            write_budget: std::sync::Arc::new(tokio::sync::Semaphore::new(budget_kib)),
            settings,
            targets: TargetRegistry::default(),
            sessions: SessionRegistry::default(),
            access: LoginAccess::default(),
            limits: Limits::default(),
            connections: ConnectionCounter::default(),
            shutdown: CancellationToken::new(),
            metrics: metrics::Metrics::default(),
            redirects: redirects::Redirects::default(),
            admission: admission::Admission::default(),
            started: std::time::Instant::now(),
        }
    }
}
