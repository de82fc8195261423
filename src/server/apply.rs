//! The running state of a server, and the one way it changes: applying a [`ConfigDiff`].
//!
//! Startup applies the difference from an empty configuration, a reload (SIGHUP, the
//! control socket) the difference from the running one, through the same
//! [`Running::apply`]. The order is FreeBSD ctld's `conf_apply()`: removals first (targets,
//! then LUNs), then resizes, access changes, additions, and the listeners last (closed,
//! then opened), so that an initiator never finds a portal that leads nowhere, and a LUN
//! number that changed backing is free before its new unit takes it.
//!
//! One change failing does not stop the others: each outcome is one line of the
//! [`ApplyReport`], and a LUN that cannot open is remembered with its reason for status.
//! Sessions of targets that did not change are never touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::build::{self, StorageEnv};
use super::cluster::ClusterLink;
use super::threads::ConnectionThreads;
use super::volumes::{self, VolumeKey, Volumes, volume_key};
use crate::cluster::ctdb::SharedClient;
use crate::config::diff::{ConfigDiff, TargetDiff, diff};
use crate::config::{Backing, Config, LunConfig, TargetConfig};
use crate::iscsi::{Service, SessionFilter, Target, connection};
use crate::provision::VolumeSpec;
use crate::scsi::{LogicalUnit, TargetDevice};

/// How long the sessions of a removed target have to log out when asked (RFC 7143 §11.9.1
/// Parameter3) before they are dropped.
pub const LOGOUT_GRACE: Duration = Duration::from_secs(10);

/// How long a removed unit's flush waits for its commands (and a removed target's for its
/// sessions, beyond the grace) before it flushes what has completed.
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// How long a LUN being added waits for a removed unit of the same target and number to
/// finish retiring before the addition fails (a reload retries it).
const SAME_UNIT_WAIT: Duration = Duration::from_secs(15);

/// What an apply did: one line per change that took effect, one per change that failed
/// (with its reason). Serialized as the control socket's reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub done: Vec<String>,
    pub failed: Vec<String>,
}

impl ApplyReport {
    fn done(&mut self, line: String) {
        info!("{line}");
        self.done.push(line);
    }

    fn failed(&mut self, line: String) {
        error!("{line}");
        self.failed.push(line);
    }
}

/// Where accepted connections go once the server runs.
#[derive(Clone)]
pub(super) struct Acceptor {
    pub threads: Arc<ConnectionThreads>,
    pub connections: TaskTracker,
}

/// A portal's listener: bound, and accepting once the server runs.
struct Listener {
    local: SocketAddr,
    /// Until the server runs; taken by the accept task.
    bound: Option<TcpListener>,
    /// Stops this listener's accept task (a child of the service's shutdown).
    stop: CancellationToken,
}

/// The server's running state: the iSCSI service (targets, sessions), what its LUNs share,
/// the portals' listeners, and the LUNs that failed to open.
pub struct Running {
    service: Arc<Service>,
    storage: StorageEnv,
    /// By configured address (which may name port 0).
    listeners: BTreeMap<SocketAddr, Listener>,
    /// (target, LUN) → why it could not be opened.
    lun_failures: BTreeMap<(String, u64), String>,
    acceptor: Option<Acceptor>,
    /// Flushes of removed units and targets, waiting for their last commands and sessions.
    retiring: TaskTracker,
    /// (lower-cased target, LUN) of each removed unit still retiring → cancelled once it has
    /// drained and flushed. A unit's identity, its atomic-write journal and its reservation
    /// file derive from exactly that pair, so a new unit with the same pair must not open
    /// (and recover that journal) while the old one may still write.
    retiring_units: BTreeMap<(String, u64), CancellationToken>,
    same_unit_wait: Duration,
    logout_grace: Duration,
    /// Volume LUNs and the provisioner that makes their volumes.
    volumes: Volumes,
    /// The CTDB client with `[cluster]`: accepted connections are registered with it.
    cluster: Option<ClusterLink>,
}

/// How a change treats the volumes of the LUNs it removes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Destroy the volumes of removed LUNs (that keel created), whatever their `on_remove`
    /// policy says (`keel target remove --destroy-volumes`).
    pub destroy_volumes: bool,
}

impl Running {
    /// A server with no targets and no portals yet.
    pub fn new(service: Service, storage: StorageEnv) -> Running {
        Running {
            service: Arc::new(service),
            storage,
            listeners: BTreeMap::new(),
            lun_failures: BTreeMap::new(),
            acceptor: None,
            retiring: TaskTracker::new(),
            retiring_units: BTreeMap::new(),
            same_unit_wait: SAME_UNIT_WAIT,
            logout_grace: LOGOUT_GRACE,
            volumes: Volumes::none(),
            cluster: None,
        }
    }

    /// The state `config` describes, built the one way a state changes: the difference from
    /// an empty configuration (same server settings, no portals, no targets), applied. Fails
    /// only if the storage engine cannot be set up; what failed to apply is in the report.
    pub async fn start(config: &Config) -> anyhow::Result<(Running, ApplyReport)> {
        let (storage, wiring) = StorageEnv::new(config)?;
        let volumes = Volumes::start(config, &storage)?;
        let mut running = Running::new(build::service(config), storage);
        running.volumes = volumes;
        running.cluster = config.cluster.as_ref().map(|settings| {
            let service = Arc::clone(&running.service);
            let (changes, client) = match wiring {
                Some(w) => (Some(w.reservation_changes), w.client),
                None => (None, SharedClient::default()),
            };
            ClusterLink::start(settings, service, changes, client)
        });
        let report = running.apply(&diff(&config.only_settings(), config)).await;
        Ok((running, report))
    }

    /// Sets how long removed targets' sessions have to log out.
    pub fn with_logout_grace(mut self, grace: Duration) -> Running {
        self.logout_grace = grace;
        self
    }

    /// Sets how long an added LUN waits for a retiring unit of the same identity.
    #[cfg(test)]
    fn with_same_unit_wait(mut self, wait: Duration) -> Running {
        self.same_unit_wait = wait;
        self
    }

    /// How long sessions asked to log out have before they are closed.
    pub fn logout_grace(&self) -> Duration {
        self.logout_grace
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The addresses actually bound (a portal may ask for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.values().map(|l| l.local).collect()
    }

    /// The LUNs that could not be opened: (target, LUN, reason).
    pub fn lun_failures(&self) -> impl Iterator<Item = (&str, u64, &str)> {
        self.lun_failures
            .iter()
            .map(|((target, lun), reason)| (target.as_str(), *lun, reason.as_str()))
    }

    /// The volume LUNs and their provisioner.
    pub fn volumes(&self) -> &Volumes {
        &self.volumes
    }

    /// The volume that backs `target`'s LUN `lun`, if it is a volume LUN.
    pub fn volume_of(&self, target: &str, lun: u64) -> Option<&VolumeSpec> {
        self.volumes.spec_of(target, lun)
    }

    /// Adds to `diff` what a reload retries although the configuration did not change: the
    /// LUNs `desired` declares that failed to open (remembered in the failures), and the file
    /// LUNs smaller than their configured size (a grow that failed, say on a full disk).
    /// Without this a failure stays until the configuration changes, since the saved
    /// configuration diffs with itself to nothing. What `diff` already changes, removes or
    /// re-adds is left to it.
    pub fn retry(&self, desired: &Config, diff: &mut ConfigDiff) {
        let removed = |name: &str| diff.targets_removed.iter().any(|r| r == name);
        let mut retries = Vec::new();
        for target in &desired.targets {
            if removed(&target.name) {
                continue;
            }
            let Some(device) = self.device(&target.name) else {
                continue;
            };
            let planned = diff
                .targets_changed
                .iter()
                .find(|c| c.new.name == target.name);
            let touched = |lun: u64| {
                planned.is_some_and(|c| {
                    c.luns_removed.contains(&lun)
                        || c.luns_added.iter().any(|l| l.lun == lun)
                        || c.luns_resized.iter().any(|l| l.lun == lun)
                })
            };
            let mut retry = TargetDiff {
                new: target.clone(),
                access_changed: false,
                luns_removed: Vec::new(),
                luns_resized: Vec::new(),
                luns_added: Vec::new(),
            };
            for lun in target.luns.iter().filter(|l| !touched(l.lun)) {
                match device.lun(lun.lun) {
                    None if self
                        .lun_failures
                        .contains_key(&(target.name.clone(), lun.lun)) =>
                    {
                        retry.luns_added.push(lun.clone());
                    }
                    Some(lu) if smaller_than_configured(&lu, lun) => {
                        retry.luns_resized.push(lun.clone());
                    }
                    _ => {}
                }
            }
            if !retry.luns_added.is_empty() || !retry.luns_resized.is_empty() {
                retries.push(retry);
            }
        }
        for retry in retries {
            match diff
                .targets_changed
                .iter_mut()
                .find(|c| c.new.name == retry.new.name)
            {
                Some(planned) => {
                    planned.luns_added.extend(retry.luns_added);
                    planned.luns_resized.extend(retry.luns_resized);
                }
                None => diff.targets_changed.push(retry),
            }
        }
    }

    /// Applies `diff` in ctld's order; see the module documentation.
    pub async fn apply(&mut self, diff: &ConfigDiff) -> ApplyReport {
        self.apply_with(diff, ApplyOptions::default()).await
    }

    /// [`Running::apply`], with `options` for the volumes of removed LUNs.
    pub async fn apply_with(&mut self, diff: &ConfigDiff, options: ApplyOptions) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut unused_volumes = Vec::new();
        for name in &diff.targets_removed {
            unused_volumes.extend(self.volumes.take_luns(name, None));
            self.remove_target(name, &mut report);
        }
        for changed in &diff.targets_changed {
            for &lun in &changed.luns_removed {
                unused_volumes.extend(self.volumes.take_luns(&changed.new.name, Some(lun)));
                self.remove_lun(&changed.new.name, lun, &mut report);
            }
        }
        self.release_volumes(diff, unused_volumes, options, &mut report)
            .await;
        // Not only at scrape time: with metrics_listen off nothing else would forget them.
        self.service.forget_removed_metrics();
        for changed in &diff.targets_changed {
            for lun in &changed.luns_resized {
                self.resize_lun(&changed.new.name, lun, &mut report).await;
            }
        }
        for changed in diff.targets_changed.iter().filter(|c| c.access_changed) {
            self.change_access(changed, &mut report);
        }
        for target in &diff.targets_added {
            self.add_target(target, &mut report).await;
        }
        for changed in &diff.targets_changed {
            self.add_luns(changed, &mut report).await;
        }
        for portal in &diff.portals_removed {
            self.close_portal(portal, &mut report);
        }
        for portal in &diff.portals_added {
            self.open_portal(*portal, &mut report).await;
        }
        for setting in &diff.needs_restart {
            report.failed(format!(
                "{setting} changed: takes effect at the next restart"
            ));
        }
        report
    }

    /// The target leaves the registry at once (SendTargets stops listing it, logins to it
    /// fail); its sessions are asked to log out and dropped after the grace; its units are
    /// flushed once those have gone. Its backing files stay.
    fn remove_target(&mut self, name: &str, report: &mut ApplyReport) {
        self.lun_failures.retain(|(target, _), _| target != name);
        let Some(target) = self.service.targets.remove(name) else {
            report.failed(format!("remove target {name}: not running"));
            return;
        };
        let filter = SessionFilter::target(name);
        let asked = self
            .service
            .sessions
            .request_logout(&filter, self.logout_grace);
        report.done(format!(
            "removed target {name} ({asked} sessions asked to log out within {} s)",
            self.logout_grace.as_secs()
        ));
        let units: Vec<_> = target
            .device
            .luns()
            .into_iter()
            .map(|lu| {
                let done = self.retiring_unit(name, lu.lun());
                (lu, done)
            })
            .collect();
        let service = Arc::clone(&self.service);
        let wait = self.logout_grace + RETIRE_WAIT;
        self.retiring.spawn(async move {
            let gone = async {
                while service.sessions.count_matching(&filter) > 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            if tokio::time::timeout(wait, gone).await.is_err() {
                warn!(target = %target.name, "sessions of the removed target still there; flushing anyway");
            }
            for (lu, done) in units {
                retire_unit(&target.name, lu).await;
                done.cancel();
            }
        });
    }

    /// The unit leaves its target (the other units report 06/3F/0E REPORTED LUNS DATA HAS
    /// CHANGED to every nexus, SPC-4 §6.33); its commands still running finish, then it is
    /// flushed.
    fn remove_lun(&mut self, target: &str, lun: u64, report: &mut ApplyReport) {
        let failed_before = self.lun_failures.remove(&(target.to_string(), lun));
        let Some(device) = self.device(target) else {
            report.failed(format!(
                "remove target {target} LUN {lun}: target not running"
            ));
            return;
        };
        match device.remove_lun(lun) {
            Some(lu) => {
                report.done(format!("removed target {target} LUN {lun}"));
                let done = self.retiring_unit(target, lun);
                let target = target.to_string();
                self.retiring.spawn(async move {
                    retire_unit(&target, lu).await;
                    done.cancel();
                });
            }
            // It never opened: forgetting its failure is all there is to do.
            None if failed_before.is_some() => {
                report.done(format!("removed target {target} LUN {lun} (it had failed)"));
            }
            None => report.failed(format!("remove target {target} LUN {lun}: not running")),
        }
    }

    /// Grows a file-backed unit to its new `size`; every nexus gets 06/2A/09 CAPACITY DATA
    /// HAS CHANGED (SBC-4 §4.9). Shrinking is refused: it would destroy data.
    async fn resize_lun(&mut self, target: &str, lun: &LunConfig, report: &mut ApplyReport) {
        let what = format!("resize target {target} LUN {}", lun.lun);
        let Backing::File {
            create_size: Some(size),
            ..
        } = lun.backing
        else {
            report.failed(format!(
                "{what}: only a file LUN with a size can be resized"
            ));
            return;
        };
        let Some(lu) = self.device(target).and_then(|d| d.lun(lun.lun)) else {
            report.failed(format!("{what}: LUN not running"));
            return;
        };
        match lu.grow_medium(size).await {
            Ok(blocks) => report.done(format!(
                "resized target {target} LUN {} to {blocks} blocks of {}",
                lun.lun,
                lu.block_size()
            )),
            Err(e) => report.failed(format!("{what}: {e}")),
        }
    }

    /// A new `Target` with the new alias, portal group, CHAP and allow list, on the same
    /// device, replaces the old in the registry: new logins use it, sessions already logged
    /// in keep what they logged in with.
    fn change_access(&mut self, changed: &TargetDiff, report: &mut ApplyReport) {
        let name = &changed.new.name;
        let Some(device) = self.device(name) else {
            report.failed(format!("change access of target {name}: not running"));
            return;
        };
        self.service
            .targets
            .insert(Arc::new(build::target_on(&changed.new, device)));
        report.done(format!("changed access of target {name}"));
    }

    /// Opens the target's units (those that fail are left out and remembered) and puts it
    /// in the registry.
    async fn add_target(&mut self, config: &TargetConfig, report: &mut ApplyReport) {
        let device = Arc::new(TargetDevice::new(&config.name));
        for lun in &config.luns {
            self.open_lun(&config.name, &device, lun, report).await;
        }
        self.service
            .targets
            .insert(Arc::new(build::target_on(config, device)));
        report.done(format!("added target {}", config.name));
    }

    async fn add_luns(&mut self, changed: &TargetDiff, report: &mut ApplyReport) {
        if changed.luns_added.is_empty() {
            return;
        }
        let name = &changed.new.name;
        let Some(device) = self.device(name) else {
            report.failed(format!("add LUNs to target {name}: not running"));
            return;
        };
        for lun in &changed.luns_added {
            self.open_lun(name, &device, lun, report).await;
        }
    }

    /// Tells the provisioner the volumes of removed LUNs are no longer wanted; destroys
    /// those whose policy or `options` ask for it, unless this change declares them again
    /// (a LUN removed and added back keeps its data).
    async fn release_volumes(
        &mut self,
        diff: &ConfigDiff,
        unused: Vec<VolumeSpec>,
        options: ApplyOptions,
        report: &mut ApplyReport,
    ) {
        if unused.is_empty() {
            return;
        }
        let declared_again: std::collections::BTreeSet<VolumeKey> = diff
            .targets_added
            .iter()
            .flat_map(|t| t.luns.iter())
            .chain(
                diff.targets_changed
                    .iter()
                    .flat_map(|t| t.luns_added.iter()),
            )
            .filter_map(|l| match &l.backing {
                Backing::Volume(spec) => Some(volume_key(spec)),
                _ => None,
            })
            .collect();
        for spec in unused {
            let destroy = volumes::destroys(&spec, options.destroy_volumes);
            match self
                .volumes
                .undeclare(&spec, destroy, &declared_again)
                .await
            {
                Ok(true) => report.done(format!(
                    "volume {}/{} queued for destruction",
                    spec.pool, spec.name
                )),
                Ok(false) => {}
                Err(e) => report.failed(format!(
                    "volume {}/{}: cannot record its removal: {e}",
                    spec.pool, spec.name
                )),
            }
        }
    }

    /// Opens one unit and adds it to `device` (the other units report 06/3F/0E).
    async fn open_lun(
        &mut self,
        target: &str,
        device: &TargetDevice,
        lun: &LunConfig,
        report: &mut ApplyReport,
    ) {
        let key = (target.to_string(), lun.lun);
        if let Err(reason) = self.wait_for_retiring(target, lun.lun).await {
            report.failed(reason.clone());
            self.lun_failures.insert(key, reason);
            return;
        }
        if let Backing::Volume(spec) = &lun.backing {
            self.add_volume_lun(target, device, lun, spec, report);
            return;
        }
        match build::build_lun(target, lun, &self.storage).await {
            Ok(lu) => {
                self.lun_failures.remove(&key);
                device.add_lun(lu);
                report.done(format!("added target {target} LUN {}", lun.lun));
            }
            Err(e) => {
                let reason = format!("{e:#}");
                report.failed(reason.clone());
                self.lun_failures.insert(key, reason);
            }
        }
    }

    /// Adds a unit with no medium yet for a volume LUN and declares its volume: the LUN is
    /// listed and answers 02/04/01 until its pool reports the volume ready.
    fn add_volume_lun(
        &mut self,
        target: &str,
        device: &TargetDevice,
        lun: &LunConfig,
        spec: &VolumeSpec,
        report: &mut ApplyReport,
    ) {
        let key = (target.to_string(), lun.lun);
        let unit = match build::pending_unit(target, lun, &self.storage) {
            Ok(unit) => unit,
            Err(e) => {
                let reason = format!("{e:#}");
                report.failed(reason.clone());
                self.lun_failures.insert(key, reason);
                return;
            }
        };
        if let Err(reason) = self.volumes.declare(target, lun, spec, &unit) {
            report.failed(reason.clone());
            self.lun_failures.insert(key, reason);
            return;
        }
        self.lun_failures.remove(&key);
        device.add_lun(unit);
        report.done(format!(
            "added target {target} LUN {} (volume {}/{} becoming ready)",
            lun.lun, spec.pool, spec.name
        ));
    }

    /// Registers a removed unit as retiring; the token is cancelled once it has flushed.
    fn retiring_unit(&mut self, target: &str, lun: u64) -> CancellationToken {
        self.retiring_units.retain(|_, done| !done.is_cancelled());
        let done = CancellationToken::new();
        self.retiring_units
            .insert((target.to_ascii_lowercase(), lun), done.clone());
        done
    }

    /// Waits (bounded) until no removed unit with this target and LUN number is retiring:
    /// the new unit would share its identity, atomic-write journal (whose recovery would
    /// race the old unit's writes) and reservation file.
    async fn wait_for_retiring(&mut self, target: &str, lun: u64) -> Result<(), String> {
        let key = (target.to_ascii_lowercase(), lun);
        let Some(done) = self.retiring_units.get(&key).cloned() else {
            return Ok(());
        };
        if tokio::time::timeout(self.same_unit_wait, done.cancelled())
            .await
            .is_err()
        {
            return Err(format!(
                "target {target} LUN {lun}: the removed unit with this number is still \
                 finishing its commands or sessions (it shares the unit's journal and \
                 reservations); not added, run keel reload to retry once it is gone"
            ));
        }
        self.retiring_units.remove(&key);
        Ok(())
    }

    /// Stops accepting on the portal; sessions that came in through it go on.
    fn close_portal(&mut self, portal: &SocketAddr, report: &mut ApplyReport) {
        match self.listeners.remove(portal) {
            Some(listener) => {
                listener.stop.cancel();
                report.done(format!("closed portal {portal}"));
            }
            None => report.failed(format!("close portal {portal}: not open")),
        }
    }

    async fn open_portal(&mut self, portal: SocketAddr, report: &mut ApplyReport) {
        let bound = TcpListener::bind(portal)
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
            .with_context(|| format!("cannot listen on {portal}"));
        match bound {
            Ok((local, listener)) => {
                let mut listener = Listener {
                    local,
                    bound: Some(listener),
                    stop: self.service.shutdown.child_token(),
                };
                if let Some(acceptor) = &self.acceptor {
                    start_accepting(
                        &mut listener,
                        &self.service,
                        acceptor,
                        self.cluster.as_ref(),
                    );
                }
                self.listeners.insert(portal, listener);
                // The line scripts and tests wait for, with the port a port-0 portal got.
                info!(portal = %local, "listening");
                report.done.push(format!("listening on {local}"));
            }
            Err(e) => report.failed(format!("{e:#}")),
        }
    }

    fn device(&self, target: &str) -> Option<Arc<TargetDevice>> {
        self.service
            .targets
            .get(target)
            .map(|t: Arc<Target>| Arc::clone(&t.device))
    }

    /// From now on every listener, and every portal opened later, accepts connections.
    pub(super) fn start_accepting(&mut self, acceptor: Acceptor) {
        for listener in self.listeners.values_mut() {
            start_accepting(listener, &self.service, &acceptor, self.cluster.as_ref());
        }
        self.acceptor = Some(acceptor);
    }

    /// At shutdown, once the connections have ended: lets go of the connection threads and
    /// waits (bounded) for the flushes of removed units, whose sessions have ended too.
    pub(super) async fn stop(&mut self) {
        self.acceptor = None;
        self.retiring.close();
        if tokio::time::timeout(Duration::from_secs(10), self.retiring.wait())
            .await
            .is_err()
        {
            warn!("removed units did not finish flushing in time");
        }
    }
}

/// Starts the listener's accept task: each connection goes to a connection thread.
fn start_accepting(
    listener: &mut Listener,
    service: &Arc<Service>,
    acceptor: &Acceptor,
    cluster: Option<&ClusterLink>,
) {
    let Some(socket) = listener.bound.take() else {
        return;
    };
    let (service, stop) = (Arc::clone(service), listener.stop.clone());
    let cluster = cluster.cloned();
    let Acceptor {
        threads,
        connections,
    } = acceptor.clone();
    info!(portal = %listener.local, "accepting connections");
    acceptor.connections.spawn(async move {
        loop {
            tokio::select! {
                accepted = socket.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                    Ok(stream) => {
                        let service = service.clone();
                        // Known to the cluster (tickle ACKs after a takeover) for as long
                        // as the connection's task holds it.
                        let tracked = match (&cluster, stream.local_addr(), stream.peer_addr()) {
                            (Some(link), Ok(local), Ok(peer)) => Some(link.accepted(local, peer)),
                            _ => None,
                        };
                        // The socket moves to its thread's reactor there.
                        threads.spawn(connections.track_future(async move {
                            let _tracked = tracked;
                            match tokio::net::TcpStream::from_std(stream) {
                                Ok(stream) => connection::serve(stream, service).await,
                                Err(e) => warn!("cannot adopt a connection: {e}"),
                            }
                        }));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = stop.cancelled() => break,
            }
        }
    });
}

/// Whether a file LUN's medium is smaller than its configured size (it never is for a
/// block device, or a unit without a medium).
fn smaller_than_configured(lu: &LogicalUnit, config: &LunConfig) -> bool {
    let Backing::File {
        create_size: Some(size),
        ..
    } = config.backing
    else {
        return false;
    };
    lu.medium().is_ok_and(|medium| medium.size_bytes() < size)
}

/// A removed unit's last commands finish (bounded wait), then what they wrote is flushed.
async fn retire_unit(target: &str, lu: Arc<LogicalUnit>) {
    let drained = async {
        while !lu.task_set().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(RETIRE_WAIT, drained).await.is_err() {
        warn!(
            target,
            lun = lu.lun(),
            "removed LUN still has commands; flushing anyway"
        );
    }
    if let Err(e) = lu.flush().await {
        warn!(target, lun = lu.lun(), "flush of a removed LUN failed: {e}");
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
