//! The driver: one task per pool runs that pool's [`JobQueue`] against its [`VolumeBackend`],
//! one server call at a time and back to back, so the server's lock never idles while work is
//! queued and keel never queues behind itself.
//!
//! How a burst goes: the first decision lists the pool (one call; the listing is the cache);
//! each job is planned against the cache when it comes up ([`plan`]): a volume that exists is
//! adopted without a call, a missing one is created; a create that succeeded updates the
//! cache, so the next decision needs no listing. A volume's device wait runs beside the pool
//! task, so the next call starts at once. When the queue drains the cache is dropped: outside
//! a burst others may change the pool, so the next burst lists first.
//!
//! Failures: Busy puts the job back with exponential backoff (0.2 s doubling to 5 s, jittered)
//! while other jobs go on; Unknown also drops the cache, so the next decision lists again and
//! adopts a volume the lost call did create (no duplicate) or creates it again; Failed fails
//! the volume (an event and `keel status`) until it is declared again.
//!
//! Durability: a destroy request is written to `STATE_DIR/POOL.json` (temp file, fsync,
//! rename, fsync of the directory) before [`Provisioner::undeclare`] returns, and removed once
//! the volume is gone; on start the file's requests are planned with the first listing.
//! Creates need no journal: the owner tag is set atomically with the creation, so after a
//! crash the planner adopts what was made.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use super::backend::{BackendError, Observed, ObservedVolume, VolumeBackend};
use super::planner::{Dependencies, DestroyStep, plan, snapshot_volume};
use super::queue::{Job, JobKind, JobQueue};
use super::settings::{PoolSettings, VolumeSpec};

/// The first retry's delay after Busy or Unknown; it doubles per attempt up to
/// [`BACKOFF_MAX`], and each delay is jittered to 50-100 % so retries spread out.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The most destroys handed to the backend in one batch (it splits further as its server
/// requires).
const DESTROY_BATCH_MAX: usize = 1000;
/// How often a destroy waits for its clones' destroys (pending in the same pool) before it is
/// failed with the planner's reason.
const DEPENDENCY_WAITS_MAX: u32 = 30;
/// State file format version.
const STATE_VERSION: u32 = 1;

/// What the provisioner tells the rest of keel about volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeEvent {
    /// The volume exists and its device opens: serve it. Sent again after a grow.
    Ready {
        pool: String,
        name: String,
        path: PathBuf,
        /// Where known (from a listing, or declared); `None`: the pool's default.
        volblocksize: Option<u64>,
    },
    /// The volume could not be made (or destroyed); not retried until declared (or asked to
    /// be destroyed) again.
    Failed {
        pool: String,
        name: String,
        reason: String,
    },
    Destroyed {
        pool: String,
        name: String,
    },
}

/// Where a volume is, for `keel status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    Queued,
    /// Its create (or grow) call is running.
    Creating,
    WaitingForDevice,
    Ready,
    Failed(String),
    /// Its destroy is queued or running.
    Destroying,
}

impl VolumeState {
    /// Every state's name, in [`VolumeState::name`]'s spelling.
    pub const NAMES: [&'static str; 6] = [
        "queued",
        "creating",
        "waiting_for_device",
        "ready",
        "failed",
        "destroying",
    ];

    /// The name status and metrics show.
    pub fn name(&self) -> &'static str {
        match self {
            VolumeState::Queued => "queued",
            VolumeState::Creating => "creating",
            VolumeState::WaitingForDevice => "waiting_for_device",
            VolumeState::Ready => "ready",
            VolumeState::Failed(_) => "failed",
            VolumeState::Destroying => "destroying",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeStatus {
    pub pool: String,
    pub name: String,
    pub state: VolumeState,
    /// Time in the queue: until now while queued, else until its call started.
    pub in_queue: Duration,
    /// Failed tries so far (Busy, Unknown, waits for dependent destroys).
    pub attempts: u32,
    /// An initiator is waiting for it.
    pub demanded: bool,
}

/// A backend call, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallKind {
    List,
    Create,
    Destroy,
    DestroySnapshots,
    Grow,
}

impl CallKind {
    pub const ALL: [CallKind; 5] = [
        CallKind::List,
        CallKind::Create,
        CallKind::Destroy,
        CallKind::DestroySnapshots,
        CallKind::Grow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CallKind::List => "list",
            CallKind::Create => "create",
            CallKind::Destroy => "destroy",
            CallKind::DestroySnapshots => "destroy_snapshots",
            CallKind::Grow => "grow",
        }
    }
}

/// How a backend call ended, for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallResult {
    Ok,
    Busy,
    Unknown,
    Failed,
}

impl CallResult {
    pub const ALL: [CallResult; 4] = [
        CallResult::Ok,
        CallResult::Busy,
        CallResult::Unknown,
        CallResult::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::Busy => "busy",
            CallResult::Unknown => "unknown",
            CallResult::Failed => "failed",
        }
    }

    fn of<T>(result: &Result<T, BackendError>) -> CallResult {
        match result {
            Ok(_) => CallResult::Ok,
            Err(BackendError::Busy(_)) => CallResult::Busy,
            Err(BackendError::Unknown(_)) => CallResult::Unknown,
            Err(BackendError::Failed(_)) => CallResult::Failed,
        }
    }
}

/// Upper bounds (seconds) of the declaration-to-ready histogram; one more bucket counts the
/// rest.
pub const READY_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Time from declaration to ready, as histogram buckets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadyHistogram {
    /// `counts[i]`: observations in (READY_BUCKETS[i-1], READY_BUCKETS[i]]; the last entry:
    /// above the last bound.
    pub counts: [u64; READY_BUCKETS.len() + 1],
    pub sum: Duration,
    pub count: u64,
}

impl ReadyHistogram {
    fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = READY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(READY_BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += took;
        self.count += 1;
    }

    /// Observations at or below each bound of [`READY_BUCKETS`] (Prometheus' `le` buckets).
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        READY_BUCKETS
            .iter()
            .zip(self.counts)
            .map(|(bound, count)| {
                total += count;
                (*bound, total)
            })
            .collect()
    }
}

/// One pool's figures for the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolStats {
    pub pool: String,
    pub queue_length: usize,
    /// Backend calls by kind and result (see [`PoolStats::calls`]).
    calls: [[u64; 4]; 5],
    /// Server calls the backend reported making for batched destroys (a batch is one backend
    /// call but may be several server calls where the server cannot batch).
    pub destroy_server_calls: u64,
    /// Time spent inside backend calls (the pool's serialization, as keel sees it).
    pub time_in_calls: Duration,
    /// Jobs put back after Busy, Unknown or a wait for dependent destroys.
    pub retries: u64,
    pub declaration_to_ready: ReadyHistogram,
}

impl PoolStats {
    pub fn calls(&self, kind: CallKind, result: CallResult) -> u64 {
        self.calls[kind as usize][result as usize]
    }

    /// Every backend call, whatever its kind and result.
    pub fn total_calls(&self) -> u64 {
        self.calls.iter().flatten().sum()
    }
}

/// A cheap handle to the running provisioner; clones share it, from any thread.
#[derive(Clone)]
pub struct Provisioner {
    shared: Arc<Shared>,
}

struct Shared {
    pools: BTreeMap<String, PoolHandle>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct PoolHandle {
    commands: mpsc::UnboundedSender<Command>,
    state: Arc<Mutex<PoolState>>,
}

enum Command {
    Declare(VolumeSpec),
    Undeclare {
        name: String,
        destroy: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Demand(String),
    Shutdown,
}

impl Provisioner {
    /// Starts one task per pool on the current tokio runtime (call it inside one). Each loads its pool's destroy
    /// requests from `state_dir` and lists its pool once. Call [`Provisioner::declare`] for
    /// the configuration's volumes right away, so they are planned with that listing.
    pub fn start(
        pools: Vec<(PoolSettings, Arc<dyn VolumeBackend>)>,
        state_dir: PathBuf,
        events: mpsc::UnboundedSender<VolumeEvent>,
    ) -> anyhow::Result<Provisioner> {
        fs::create_dir_all(&state_dir).with_context(|| {
            format!(
                "cannot create the provisioning state directory {}",
                state_dir.display()
            )
        })?;
        let mut prepared = Vec::new();
        let mut names = BTreeSet::new();
        for (settings, backend) in pools {
            check_pool_name(&settings.name)?;
            if !names.insert(settings.name.clone()) {
                bail!("pool {:?} is configured twice", settings.name);
            }
            let state_file = StateFile::new(&state_dir, &settings.name);
            let intents = state_file.load()?;
            prepared.push((settings, backend, state_file, intents));
        }
        let mut handles = BTreeMap::new();
        let mut tasks = Vec::new();
        for (settings, backend, state_file, intents) in prepared {
            let (commands, receiver) = mpsc::unbounded_channel();
            let now = now();
            let mut state = PoolState::default();
            for name in intents {
                state.queue.push(&name, JobKind::Destroy, now);
                state.records.insert(
                    name.clone(),
                    Record::new(VolumeState::Destroying, None, now),
                );
                state.intents.insert(name);
            }
            if !state.intents.is_empty() {
                info!(pool = %settings.name, count = state.intents.len(), "destroys requested before a restart are resumed");
            }
            let state = Arc::new(Mutex::new(state));
            let task = PoolTask {
                pool: settings.name.clone(),
                owner: settings.owner.clone(),
                device_wait: settings.device_wait,
                backend,
                state: state.clone(),
                events: events.clone(),
                state_file,
                commands: receiver,
                inflight: None,
                pipelined: None,
                batch: None,
                device_waits: JoinSet::new(),
                listed_once: false,
                list_attempts: 0,
                list_not_before: None,
                intents_dirty: false,
                jitter: Jitter::new(),
            };
            tasks.push(tokio::spawn(task.run()));
            handles.insert(settings.name, PoolHandle { commands, state });
        }
        Ok(Provisioner {
            shared: Arc::new(Shared {
                pools: handles,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// From now on `spec` is desired: made if missing, adopted if present. Idempotent; a
    /// changed spec replaces the old one (a larger size grows the volume); a failed volume is
    /// tried again. Cancels a pending destroy of the same volume.
    pub fn declare(&self, spec: VolumeSpec) -> Result<(), String> {
        let pool = self.pool(&spec.pool)?;
        send(pool, Command::Declare(spec))
    }

    /// `name` is no longer desired. With `destroy`, it is destroyed if keel made it: the
    /// request is on disk when this returns, so it survives a crash. Without, it is kept (and
    /// an earlier destroy request for it is withdrawn).
    pub async fn undeclare(&self, pool: &str, name: &str, destroy: bool) -> Result<(), String> {
        let handle = self.pool(pool)?;
        let (reply, answer) = oneshot::channel();
        send(
            handle,
            Command::Undeclare {
                name: name.to_owned(),
                destroy,
                reply,
            },
        )?;
        answer
            .await
            .map_err(|_| format!("pool {pool:?}: the provisioner stopped"))?
    }

    /// An initiator waits for `name`: its pending job goes first.
    pub fn demand(&self, pool: &str, name: &str) {
        if let Ok(handle) = self.pool(pool) {
            let _ = send(handle, Command::Demand(name.to_owned()));
        }
    }

    /// Every volume keel is making, serving or destroying, by pool and name.
    pub fn status(&self) -> Vec<VolumeStatus> {
        let now = now();
        let mut out = Vec::new();
        for (pool, handle) in &self.shared.pools {
            let state = lock(&handle.state);
            let mut names: Vec<&String> = state.records.keys().collect();
            names.sort();
            for name in names {
                let record = &state.records[name];
                let queued = state.queue.get(name);
                let (queued_at, end) = match &queued {
                    Some(job) => (job.queued_at, now),
                    None => (record.queued_at, record.started_at.unwrap_or(now)),
                };
                out.push(VolumeStatus {
                    pool: pool.clone(),
                    name: name.clone(),
                    state: record.state.clone(),
                    in_queue: end.saturating_duration_since(queued_at),
                    attempts: queued.as_ref().map_or(record.attempts, |job| job.attempts),
                    demanded: queued.is_some_and(|job| job.demanded),
                });
            }
        }
        out
    }

    /// Figures for the metrics, one entry per pool.
    pub fn stats(&self) -> Vec<PoolStats> {
        self.shared
            .pools
            .iter()
            .map(|(pool, handle)| {
                let state = lock(&handle.state);
                PoolStats {
                    pool: pool.clone(),
                    queue_length: state.queue.len(),
                    ..state.stats.clone()
                }
            })
            .collect()
    }

    /// Stops every pool task after its running call (a call cut short leaves the server in an
    /// unknown state); queued jobs are dropped, destroy requests stay on disk.
    pub async fn shutdown(&self) {
        for handle in self.shared.pools.values() {
            let _ = handle.commands.send(Command::Shutdown);
        }
        let tasks = std::mem::take(&mut *lock(&self.shared.tasks));
        for task in tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                error!("a provisioning task panicked: {e}");
            }
        }
    }

    fn pool(&self, pool: &str) -> Result<&PoolHandle, String> {
        self.shared
            .pools
            .get(pool)
            .ok_or_else(|| format!("no pool named {pool:?}"))
    }
}

fn send(handle: &PoolHandle, command: Command) -> Result<(), String> {
    handle
        .commands
        .send(command)
        .map_err(|_| "the provisioner stopped".to_owned())
}

/// The pool name becomes a file name in the state directory.
fn check_pool_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\0']) {
        bail!(
            "pool name {name:?} cannot name a state file (empty, starts with '.', or contains '/')"
        );
    }
    Ok(())
}

/// The clock of the tokio runtime (paused in tests), as the queue's `Instant`.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent between statements; a panic elsewhere must not stop status.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One pool's state, shared between its task and `status()`/`stats()`.
#[derive(Default)]
struct PoolState {
    desired: BTreeMap<String, VolumeSpec>,
    /// Destroy requests (mirrored in the state file).
    intents: BTreeSet<String>,
    /// The last listing, kept up to date by our own calls; `None`: list before deciding.
    cache: Option<Observed>,
    queue: JobQueue,
    records: HashMap<String, Record>,
    stats: PoolStats,
}

struct Record {
    state: VolumeState,
    /// When it was declared (for declaration-to-ready); taken when it first turns ready.
    declared_at: Option<Instant>,
    queued_at: Instant,
    started_at: Option<Instant>,
    attempts: u32,
    /// Bumped by every declaration and undeclaration: a device wait started for an older one
    /// is ignored.
    generation: u64,
    /// The volume's volblocksize as known when its device wait started (the listing may be
    /// dropped before the device appears).
    volblocksize: Option<u64>,
}

impl Record {
    fn new(state: VolumeState, declared_at: Option<Instant>, now: Instant) -> Record {
        Record {
            state,
            declared_at,
            queued_at: now,
            started_at: None,
            attempts: 0,
            generation: 0,
            volblocksize: None,
        }
    }
}

type CallFuture = Pin<Box<dyn Future<Output = CallOutcome> + Send>>;

enum CallOutcome {
    List(Result<Observed, BackendError>),
    Done(Result<(), BackendError>),
    Counted(Result<usize, BackendError>),
}

/// The one call running against the pool.
struct InFlight {
    kind: CallKind,
    started: Instant,
    purpose: Purpose,
    future: CallFuture,
}

enum Purpose {
    List,
    Create(Job),
    Grow(Job, u64),
    /// The first step of the current destroy batch.
    DestroyStep,
}

/// A teardown in progress: its remaining steps run back to back.
struct DestroyBatch {
    /// Jobs of volumes not destroyed yet.
    jobs: HashMap<String, Job>,
    steps: VecDeque<DestroyStep>,
    /// A step failed or was split: the cache no longer matches the pool.
    uncertain: bool,
}

struct DeviceWaitDone {
    name: String,
    generation: u64,
    result: Result<PathBuf, BackendError>,
}

enum Wake {
    Command(Option<Command>),
    CallDone(CallOutcome),
    PipelinedDone(CallOutcome),
    DeviceDone(Option<Result<DeviceWaitDone, tokio::task::JoinError>>),
    Timer,
}

struct PoolTask {
    pool: String,
    owner: String,
    device_wait: Duration,
    backend: Arc<dyn VolumeBackend>,
    state: Arc<Mutex<PoolState>>,
    events: mpsc::UnboundedSender<VolumeEvent>,
    state_file: StateFile,
    commands: mpsc::UnboundedReceiver<Command>,
    inflight: Option<InFlight>,
    /// A second make (Create or Grow of another volume) started while `inflight`, also a
    /// make, runs: the server serializes them, but its next call is already waiting at its
    /// lock, so the lock never idles between two calls while keel starts a process.
    pipelined: Option<InFlight>,
    batch: Option<DestroyBatch>,
    device_waits: JoinSet<DeviceWaitDone>,
    listed_once: bool,
    list_attempts: u32,
    list_not_before: Option<Instant>,
    intents_dirty: bool,
    jitter: Jitter,
}

impl PoolTask {
    async fn run(mut self) {
        let mut stopping = false;
        loop {
            if self.inflight.is_none() {
                self.inflight = self.pipelined.take();
            }
            if self.inflight.is_none() {
                if stopping {
                    break;
                }
                self.inflight = self.next_call();
            }
            if self.pipelined.is_none() && !stopping {
                self.pipelined = self.next_pipelined_make();
            }
            let timer = if self.inflight.is_none() {
                self.next_wakeup()
            } else {
                None
            };
            let wake = tokio::select! {
                biased;
                command = self.commands.recv(), if !stopping => Wake::Command(command),
                outcome = call_done(&mut self.inflight) => Wake::CallDone(outcome),
                outcome = call_done(&mut self.pipelined) => Wake::PipelinedDone(outcome),
                done = self.device_waits.join_next(), if !self.device_waits.is_empty() => Wake::DeviceDone(done),
                () = sleep_until(timer) => Wake::Timer,
            };
            match wake {
                // Every handle is gone: stop where we are, as a crash would; the state file
                // and the owner tags make the next start converge.
                Wake::Command(None) => return,
                Wake::Command(Some(first)) => {
                    if self.handle_commands(first).await {
                        stopping = true;
                    }
                }
                Wake::CallDone(outcome) => {
                    if let Some(inflight) = self.inflight.take() {
                        self.call_finished(inflight, outcome);
                    }
                }
                Wake::PipelinedDone(outcome) => {
                    if let Some(inflight) = self.pipelined.take() {
                        self.call_finished(inflight, outcome);
                    }
                }
                Wake::DeviceDone(Some(Ok(done))) => self.device_ready(done),
                Wake::DeviceDone(Some(Err(e))) => {
                    error!(pool = %self.pool, "a device wait failed: {e}")
                }
                Wake::DeviceDone(None) | Wake::Timer => {}
            }
            if self.intents_dirty {
                // A removal that failed to reach the disk is tried again here.
                let _ = self.save_intents().await;
            }
        }
        if self.intents_dirty {
            let _ = self.save_intents().await;
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let state = lock(&self.state);
        let queue = state.queue.next_wakeup();
        match (queue, self.list_not_before) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles `first` and every command already waiting, then writes the state file once
    /// if destroy requests changed, then answers. Returns true on shutdown.
    async fn handle_commands(&mut self, first: Command) -> bool {
        let mut replies = Vec::new();
        let mut shutdown = false;
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Declare(spec) => self.declare(spec),
                Command::Undeclare {
                    name,
                    destroy,
                    reply,
                } => {
                    let changed = self.undeclare(&name, destroy);
                    replies.push((name, destroy, changed, reply));
                }
                Command::Demand(name) => {
                    if lock(&self.state).queue.demand(&name) {
                        debug!(pool = %self.pool, volume = %name, "demanded: goes first");
                    }
                }
                Command::Shutdown => shutdown = true,
            }
            next = self.commands.try_recv().ok();
        }
        if replies.is_empty() {
            return shutdown;
        }
        let saved = if self.intents_dirty {
            self.save_intents().await
        } else {
            Ok(())
        };
        for (name, destroy, changed, reply) in replies {
            let answer = match &saved {
                Err(e) if changed && destroy => {
                    // Not on disk, so not promised: withdraw it.
                    let mut state = lock(&self.state);
                    state.intents.remove(&name);
                    state.queue.remove(&name);
                    state.records.remove(&name);
                    Err(format!(
                        "cannot record the destroy of {}/{name} in {}: {e}",
                        self.pool,
                        self.state_file.path.display()
                    ))
                }
                // Kept, but an older destroy request may still be on disk: say so (the write
                // is tried again after every event).
                Err(e) if changed => Err(format!(
                    "{}/{name} is no longer declared, but {} could not be updated ({e}): \
                     an earlier destroy request for it may still be on disk",
                    self.pool,
                    self.state_file.path.display()
                )),
                _ => Ok(()),
            };
            let _ = reply.send(answer);
        }
        shutdown
    }

    fn declare(&mut self, spec: VolumeSpec) {
        let now = now();
        let name = spec.name.clone();
        let shared = self.state.clone();
        let mut state = lock(&shared);
        let state = &mut *state;
        if state.intents.remove(&name) {
            self.intents_dirty = true;
            info!(pool = %self.pool, volume = %name, "declared again: its destroy is cancelled");
        }
        let previous = state.desired.insert(name.clone(), spec.clone());
        let changed = previous.as_ref() != Some(&spec);
        let current = state.records.get(&name).map(|r| r.state.clone());
        let again = matches!(
            current,
            None | Some(VolumeState::Failed(_)) | Some(VolumeState::Destroying)
        );
        if !changed && !again {
            return; // idempotent
        }
        let record = state
            .records
            .entry(name.clone())
            .or_insert_with(|| Record::new(VolumeState::Queued, Some(now), now));
        record.generation += 1;
        if again {
            *record = Record {
                generation: record.generation,
                ..Record::new(VolumeState::Queued, Some(now), now)
            };
        }
        if record.state == VolumeState::Ready {
            // Served already: only a larger size needs a call (the rest cannot change).
            if previous.is_some_and(|old| old.size < spec.size) {
                state.queue.push(&name, JobKind::Grow(spec.size), now);
            }
            return;
        }
        // Decide at once when the listing is fresh and no call touches the volume: an
        // existing volume is ready without waiting for the queue.
        let busy = self
            .batch
            .as_ref()
            .is_some_and(|b| b.jobs.contains_key(&name))
            || self
                .inflight
                .as_ref()
                .is_some_and(|f| f.purpose.volume() == Some(name.as_str()));
        if let Some(cache) = &state.cache
            && !busy
        {
            let decided = plan(std::slice::from_ref(&spec), &[], cache, &self.owner);
            if decided.create.is_empty() && decided.grow.is_empty() {
                log_warnings(&self.pool, &decided.warnings);
                state.queue.remove(&name);
                record.state = VolumeState::WaitingForDevice;
                record.started_at = Some(now);
                let generation = record.generation;
                self.spawn_device_wait(name, generation);
                return;
            }
        }
        if record.state != VolumeState::Creating {
            record.state = VolumeState::Queued;
            record.queued_at = now;
            record.started_at = None;
        }
        state.queue.push(&name, JobKind::Create, now);
    }

    /// Returns whether the destroy requests changed (they must reach the disk).
    fn undeclare(&mut self, name: &str, destroy: bool) -> bool {
        let now = now();
        let mut state = lock(&self.state);
        state.desired.remove(name);
        if let Some(record) = state.records.get_mut(name) {
            record.generation += 1;
        }
        let changed = if destroy {
            let added = state.intents.insert(name.to_owned());
            state.queue.push(name, JobKind::Destroy, now);
            let generation = state.records.get(name).map_or(0, |r| r.generation);
            let mut record = Record::new(VolumeState::Destroying, None, now);
            record.generation = generation;
            state.records.insert(name.to_owned(), record);
            added
        } else {
            state.queue.remove(name);
            state.records.remove(name);
            state.intents.remove(name)
        };
        self.intents_dirty |= changed;
        changed
    }

    /// Decides what the pool does next and starts that call; `None` when there is nothing to
    /// do now (idle, or only delayed retries).
    fn next_call(&mut self) -> Option<InFlight> {
        let now = now();
        if self.batch.is_some() {
            return self.next_destroy_step(now);
        }
        let state = self.state.clone();
        let mut state = lock(&state);
        loop {
            if state.cache.is_none() {
                let wanted = !self.listed_once || state.queue.has_ready(now);
                let allowed = self.list_not_before.is_none_or(|at| at <= now);
                if !wanted || !allowed {
                    return None;
                }
                self.list_not_before = None;
                let backend = self.backend.clone();
                return Some(self.start(
                    CallKind::List,
                    Purpose::List,
                    Box::pin(async move { CallOutcome::List(backend.list().await) }),
                ));
            }
            let job = state.queue.pop_ready(now)?;
            let call = match job.kind {
                JobKind::Destroy => {
                    let mut jobs = vec![job];
                    jobs.extend(state.queue.pop_destroys(now, DESTROY_BATCH_MAX - 1));
                    self.prepare_destroy(&mut state, jobs, now);
                    if self.batch.is_some() {
                        drop(state);
                        return self.next_destroy_step(now);
                    }
                    None
                }
                JobKind::Create | JobKind::Grow(_) => self.prepare_make(&mut state, job, now),
            };
            if call.is_some() {
                return call;
            }
        }
    }

    /// A make to start beside the running one: only while that one is a make of another
    /// volume, outside a destroy batch, with the listing in hand, and only if the next job
    /// is a make too (a listing or a destroy waits for the pool to be quiet).
    fn next_pipelined_make(&mut self) -> Option<InFlight> {
        let busy = match &self.inflight.as_ref()?.purpose {
            Purpose::Create(job) | Purpose::Grow(job, _) => job.volume.clone(),
            Purpose::List | Purpose::DestroyStep => return None,
        };
        if self.batch.is_some() {
            return None;
        }
        let now = now();
        let state = self.state.clone();
        let mut state = lock(&state);
        state.cache.as_ref()?;
        loop {
            let job = state.queue.pop_ready_make(now, &busy)?;
            if let Some(call) = self.prepare_make(&mut state, job, now) {
                return Some(call);
            }
        }
    }

    fn start(&mut self, kind: CallKind, purpose: Purpose, future: CallFuture) -> InFlight {
        InFlight {
            kind,
            started: now(),
            purpose,
            future,
        }
    }

    /// A Create or Grow job: plan the one volume against the cache and make the call it needs
    /// (or none: adopted).
    fn prepare_make(&mut self, state: &mut PoolState, job: Job, now: Instant) -> Option<InFlight> {
        let spec = state.desired.get(&job.volume)?.clone(); // undeclared meanwhile
        let Some(cache) = state.cache.as_ref() else {
            state.queue.retry_at(job, now); // decided after the next listing
            return None;
        };
        let decided = plan(std::slice::from_ref(&spec), &[], cache, &self.owner);
        log_warnings(&self.pool, &decided.warnings);
        let known_volblocksize = volblocksize(state, &job.volume);
        let record = state.records.entry(job.volume.clone()).or_insert_with(|| {
            Record::new(VolumeState::Queued, Some(job.queued_at), job.queued_at)
        });
        record.started_at = Some(now);
        record.attempts = job.attempts;
        if !decided.create.is_empty() {
            record.state = VolumeState::Creating;
            let backend = self.backend.clone();
            let owner = self.owner.clone();
            let future =
                Box::pin(async move { CallOutcome::Done(backend.create(&spec, &owner).await) });
            return Some(self.start(CallKind::Create, Purpose::Create(job), future));
        }
        if let Some((name, size)) = decided.grow.into_iter().next() {
            if record.state != VolumeState::Ready {
                record.state = VolumeState::Creating;
            }
            let backend = self.backend.clone();
            let future =
                Box::pin(async move { CallOutcome::Done(backend.grow(&name, size).await) });
            return Some(self.start(CallKind::Grow, Purpose::Grow(job, size), future));
        }
        if record.state != VolumeState::Ready {
            record.state = VolumeState::WaitingForDevice;
            record.volblocksize = known_volblocksize;
            let generation = record.generation;
            self.spawn_device_wait(job.volume, generation);
        }
        None
    }

    /// A batch of Destroy jobs: plan them together against the cache; volumes already gone
    /// are done, volumes waiting for their clones' destroys wait, refusals fail; the rest
    /// becomes [`DestroyBatch`] steps.
    fn prepare_destroy(&mut self, state: &mut PoolState, jobs: Vec<Job>, now: Instant) {
        let Some(cache) = state.cache.as_ref() else {
            for job in jobs {
                state.queue.retry_at(job, now);
            }
            return;
        };
        let names: Vec<String> = jobs.iter().map(|j| j.volume.clone()).collect();
        let desired: Vec<VolumeSpec> = state.desired.values().cloned().collect();
        let decided = plan(&desired, &names, cache, &self.owner);
        // Refused because clones of it stay, but those clones have destroys queued (waiting
        // out a busy server, or queued after this batch was taken): wait for them rather than
        // fail.
        let dependencies = Dependencies::new(cache);
        let waiting: BTreeSet<String> = decided
            .refused
            .iter()
            .filter(|(name, _)| {
                dependencies.dependents(name).any(|d| {
                    state
                        .queue
                        .get(d)
                        .is_some_and(|job| job.kind == JobKind::Destroy)
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut jobs: HashMap<String, Job> =
            jobs.into_iter().map(|j| (j.volume.clone(), j)).collect();

        for (name, reason) in &decided.refused {
            let Some(job) = jobs.remove(name) else {
                continue;
            };
            if waiting.contains(name) && job.attempts < DEPENDENCY_WAITS_MAX {
                debug!(pool = %self.pool, volume = %name, "waits for the destroys of its clones");
                state.stats.retries += 1;
                let delay = backoff(job.attempts, &mut self.jitter);
                state.queue.retry_at(job, now + delay);
                continue;
            }
            // A refusal is final: the request is dropped, the reason shown.
            warn!(pool = %self.pool, volume = %name, "destroy refused: {reason}");
            if state.intents.remove(name) {
                self.intents_dirty = true;
            }
            self.fail(state, name, reason.clone());
        }
        let in_plan: BTreeSet<&str> = decided
            .destroy
            .iter()
            .filter(|n| !n.contains('@'))
            .map(String::as_str)
            .collect();
        let gone: Vec<String> = jobs
            .keys()
            .filter(|name| !in_plan.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            jobs.remove(&name);
            if state.desired.contains_key(&name) {
                continue; // declared again meanwhile: declared wins
            }
            self.destroyed(state, &name);
        }
        if jobs.is_empty() {
            return;
        }
        for name in jobs.keys() {
            if let Some(record) = state.records.get_mut(name) {
                record.started_at = Some(now);
            }
        }
        self.batch = Some(DestroyBatch {
            jobs,
            steps: decided.destroy_steps().into(),
            uncertain: false,
        });
    }

    /// Starts the next step of the current destroy batch, or finishes the batch.
    fn next_destroy_step(&mut self, now: Instant) -> Option<InFlight> {
        let batch = self.batch.as_mut()?;
        let Some(step) = batch.steps.front().cloned() else {
            let batch = self.batch.take()?;
            let state = self.state.clone();
            let mut state = lock(&state);
            // Every volume of the batch was in a step that removed it or failed it; should
            // one be left, it is planned again from a new listing rather than called done.
            if !batch.jobs.is_empty() {
                error!(pool = %self.pool, count = batch.jobs.len(), "destroys left over by a batch; planned again");
                state.cache = None;
                for (_, job) in batch.jobs {
                    state.queue.retry_at(job, now);
                }
            }
            if batch.uncertain {
                state.cache = None;
            }
            drop(state);
            return self.next_call_after_batch();
        };
        let backend = self.backend.clone();
        Some(match step {
            DestroyStep::Snapshots(names) => self.start(
                CallKind::DestroySnapshots,
                Purpose::DestroyStep,
                Box::pin(
                    async move { CallOutcome::Counted(backend.destroy_snapshots(&names).await) },
                ),
            ),
            DestroyStep::Volumes(names) => self.start(
                CallKind::Destroy,
                Purpose::DestroyStep,
                Box::pin(async move { CallOutcome::Counted(backend.destroy(&names).await) }),
            ),
        })
    }

    fn next_call_after_batch(&mut self) -> Option<InFlight> {
        {
            let mut state = lock(&self.state);
            if state.queue.is_empty() {
                state.cache = None; // the burst is over: others may change the pool now
            }
        }
        self.next_call()
    }

    fn call_finished(&mut self, inflight: InFlight, outcome: CallOutcome) {
        let now = now();
        let took = tokio::time::Instant::now()
            .into_std()
            .saturating_duration_since(inflight.started);
        let state = self.state.clone();
        let mut state = lock(&state);
        let state = &mut *state;
        state.stats.time_in_calls += took;
        let result = match &outcome {
            CallOutcome::List(r) => CallResult::of(r),
            CallOutcome::Done(r) => CallResult::of(r),
            CallOutcome::Counted(r) => CallResult::of(r),
        };
        state.stats.calls[inflight.kind as usize][result as usize] += 1;
        match (inflight.purpose, outcome) {
            (Purpose::List, CallOutcome::List(result)) => self.listed(state, result, now),
            (Purpose::Create(job), CallOutcome::Done(result)) => {
                self.made(state, job, None, result, now)
            }
            (Purpose::Grow(job, size), CallOutcome::Done(result)) => {
                self.made(state, job, Some(size), result, now)
            }
            (Purpose::DestroyStep, CallOutcome::Counted(result)) => {
                self.destroy_step_done(state, result, now)
            }
            _ => error!(pool = %self.pool, "a call's outcome did not match its purpose"),
        }
        if self.batch.is_none() && state.queue.is_empty() {
            state.cache = None; // the burst is over: others may change the pool now
        }
    }

    fn listed(
        &mut self,
        state: &mut PoolState,
        result: Result<Observed, BackendError>,
        now: Instant,
    ) {
        self.listed_once = true;
        match result {
            Ok(observed) => {
                self.list_attempts = 0;
                state.cache = Some(observed);
            }
            Err(BackendError::Failed(reason)) => {
                // Nothing can be decided without a listing: fail what was waiting for it.
                error!(pool = %self.pool, "listing the pool failed: {reason}");
                let reason = format!("listing pool {} failed: {reason}", self.pool);
                while let Some(job) = state.queue.pop_ready(now) {
                    self.fail(state, &job.volume, reason.clone());
                }
            }
            Err(e) => {
                warn!(pool = %self.pool, "listing the pool: {e}; retrying");
                state.stats.retries += 1;
                self.list_not_before = Some(now + backoff(self.list_attempts, &mut self.jitter));
                self.list_attempts += 1;
            }
        }
    }

    fn made(
        &mut self,
        state: &mut PoolState,
        job: Job,
        grown_to: Option<u64>,
        result: Result<(), BackendError>,
        now: Instant,
    ) {
        let name = job.volume.clone();
        match result {
            Ok(()) => {
                if let Some(cache) = state.cache.as_mut() {
                    match (grown_to, state.desired.get(&name)) {
                        (Some(size), _) => {
                            if let Some(volume) = cache.volumes.get_mut(&name) {
                                volume.size = volume.size.max(size);
                            }
                        }
                        (None, Some(spec)) => {
                            cache.volumes.insert(
                                name.clone(),
                                ObservedVolume {
                                    size: spec.size,
                                    origin: spec.clone_of.clone(),
                                    owner: Some(self.owner.clone()),
                                    lun_tag: Some(spec.lun_tag.clone()),
                                    volblocksize: spec.volblocksize,
                                },
                            );
                        }
                        // Undeclared while it was made: the cache is no longer exact.
                        (None, None) => state.cache = None,
                    }
                }
                if !state.desired.contains_key(&name) {
                    return; // undeclared meanwhile: made, kept (or destroyed by its request)
                }
                let known_volblocksize = volblocksize(state, &name);
                let Some(record) = state.records.get_mut(&name) else {
                    return;
                };
                if record.state == VolumeState::Ready {
                    let volblocksize = volblocksize(state, &name);
                    self.emit(VolumeEvent::Ready {
                        pool: self.pool.clone(),
                        name: name.clone(),
                        path: self.backend.device_path(&name),
                        volblocksize,
                    });
                } else {
                    record.state = VolumeState::WaitingForDevice;
                    record.volblocksize = known_volblocksize;
                    let generation = record.generation;
                    self.spawn_device_wait(name, generation);
                }
            }
            Err(BackendError::Failed(reason)) => {
                if state.desired.contains_key(&name) {
                    warn!(pool = %self.pool, volume = %name, "failed: {reason}");
                    self.fail(state, &name, reason);
                }
            }
            Err(e) => {
                if matches!(e, BackendError::Unknown(_)) {
                    state.cache = None; // list before the next decision: was it made?
                }
                debug!(pool = %self.pool, volume = %name, attempts = job.attempts, "retrying: {e}");
                if let Some(record) = state.records.get_mut(&name)
                    && record.state != VolumeState::Ready
                {
                    record.state = VolumeState::Queued;
                    record.started_at = None;
                    record.attempts = job.attempts + 1;
                }
                state.stats.retries += 1;
                let delay = backoff(job.attempts, &mut self.jitter);
                state.queue.retry_at(job, now + delay);
            }
        }
    }

    fn destroy_step_done(
        &mut self,
        state: &mut PoolState,
        result: Result<usize, BackendError>,
        now: Instant,
    ) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        let Some(step) = batch.steps.pop_front() else {
            return;
        };
        let (names, is_snapshots) = match &step {
            DestroyStep::Snapshots(names) => (names.clone(), true),
            DestroyStep::Volumes(names) => (names.clone(), false),
        };
        match result {
            Ok(server_calls) => {
                state.stats.destroy_server_calls += server_calls as u64;
                if let Some(cache) = state.cache.as_mut() {
                    if is_snapshots {
                        let gone: BTreeSet<&String> = names.iter().collect();
                        cache.snapshots.retain(|s| !gone.contains(s));
                    } else {
                        for name in &names {
                            cache.volumes.remove(name);
                        }
                    }
                }
                if !is_snapshots {
                    for name in &names {
                        if batch.jobs.remove(name).is_some() {
                            self.destroyed(state, name);
                        }
                    }
                }
                self.batch = Some(batch);
            }
            Err(BackendError::Failed(reason)) if names.len() > 1 => {
                // Which one? Go one by one for this step.
                debug!(pool = %self.pool, "a batched destroy failed ({reason}); one by one");
                batch.uncertain = true;
                for name in names.into_iter().rev() {
                    batch.steps.push_front(if is_snapshots {
                        DestroyStep::Snapshots(vec![name])
                    } else {
                        DestroyStep::Volumes(vec![name])
                    });
                }
                self.batch = Some(batch);
            }
            Err(BackendError::Failed(reason)) => {
                for name in &names {
                    let volume = snapshot_volume(name);
                    if batch.jobs.remove(volume).is_some() {
                        // The request stays on disk: a restart tries again.
                        warn!(pool = %self.pool, volume = %volume, "destroy failed: {reason}");
                        self.fail(state, volume, reason.clone());
                    }
                }
                // The rest of the batch may depend on what failed (a base whose clone stays):
                // plan it again from a new listing, where the planner gives the reason.
                state.cache = None;
                for (_, job) in batch.jobs {
                    state.queue.retry_at(job, now);
                }
            }
            Err(e) => {
                // Busy or Unknown: what is left waits and is planned again from a new listing
                // (a one-by-one backend may have done part of the step).
                debug!(pool = %self.pool, "destroy batch interrupted: {e}");
                state.cache = None;
                for (name, job) in batch.jobs {
                    if let Some(record) = state.records.get_mut(&name) {
                        record.attempts = job.attempts + 1;
                        record.started_at = None;
                    }
                    state.stats.retries += 1;
                    let delay = backoff(job.attempts, &mut self.jitter);
                    state.queue.retry_at(job, now + delay);
                }
            }
        }
    }

    fn device_ready(&mut self, done: DeviceWaitDone) {
        let now = now();
        let state = self.state.clone();
        let mut state = lock(&state);
        let state = &mut *state;
        if !state.desired.contains_key(&done.name) {
            return;
        }
        let Some(record) = state.records.get_mut(&done.name) else {
            return;
        };
        if record.generation != done.generation || record.state != VolumeState::WaitingForDevice {
            return;
        }
        match done.result {
            Ok(path) => {
                record.state = VolumeState::Ready;
                if let Some(declared) = record.declared_at.take() {
                    state
                        .stats
                        .declaration_to_ready
                        .observe(now.saturating_duration_since(declared));
                }
                let known = record.volblocksize;
                let volblocksize = known.or_else(|| volblocksize(state, &done.name));
                info!(pool = %self.pool, volume = %done.name, "ready");
                self.emit(VolumeEvent::Ready {
                    pool: self.pool.clone(),
                    name: done.name,
                    path,
                    volblocksize,
                });
            }
            Err(e) => {
                let reason = format!("device did not appear: {e}");
                warn!(pool = %self.pool, volume = %done.name, "{reason}");
                self.fail(state, &done.name, reason);
            }
        }
    }

    fn spawn_device_wait(&mut self, name: String, generation: u64) {
        let backend = self.backend.clone();
        let timeout = self.device_wait;
        self.device_waits.spawn(async move {
            let result = backend.wait_device(&name, timeout).await;
            DeviceWaitDone {
                name,
                generation,
                result,
            }
        });
    }

    fn fail(&self, state: &mut PoolState, name: &str, reason: String) {
        if let Some(record) = state.records.get_mut(name) {
            record.state = VolumeState::Failed(reason.clone());
        }
        self.emit(VolumeEvent::Failed {
            pool: self.pool.clone(),
            name: name.to_owned(),
            reason,
        });
    }

    fn destroyed(&mut self, state: &mut PoolState, name: &str) {
        if state.intents.remove(name) {
            self.intents_dirty = true;
        }
        if !state.desired.contains_key(name) {
            state.records.remove(name);
        }
        info!(pool = %self.pool, volume = %name, "destroyed");
        self.emit(VolumeEvent::Destroyed {
            pool: self.pool.clone(),
            name: name.to_owned(),
        });
    }

    fn emit(&self, event: VolumeEvent) {
        // Nobody listening is not our problem: the state is in status().
        let _ = self.events.send(event);
    }

    /// Writes the destroy requests (or removes the file when there are none), durably.
    async fn save_intents(&mut self) -> io::Result<()> {
        let names: Vec<String> = lock(&self.state).intents.iter().cloned().collect();
        let file = self.state_file.clone();
        let result = tokio::task::spawn_blocking(move || file.save(&names))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        match &result {
            Ok(()) => self.intents_dirty = false,
            Err(e) => {
                error!(pool = %self.pool, "cannot write {}: {e}", self.state_file.path.display())
            }
        }
        result
    }
}

impl Purpose {
    fn volume(&self) -> Option<&str> {
        match self {
            Purpose::Create(job) | Purpose::Grow(job, _) => Some(&job.volume),
            Purpose::List | Purpose::DestroyStep => None,
        }
    }
}

fn volblocksize(state: &PoolState, name: &str) -> Option<u64> {
    let listed = state
        .cache
        .as_ref()
        .and_then(|cache| cache.volumes.get(name))
        .and_then(|volume| volume.volblocksize);
    listed.or_else(|| state.desired.get(name).and_then(|spec| spec.volblocksize))
}

fn log_warnings(pool: &str, warnings: &[(String, String)]) {
    for (name, text) in warnings {
        warn!(pool = %pool, volume = %name, "{text}");
    }
}

async fn call_done(inflight: &mut Option<InFlight>) -> CallOutcome {
    match inflight {
        Some(inflight) => inflight.future.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// The delay before try number `attempts + 1`: 0.2 s doubling to 5 s, times 0.5-1.0 so that
/// retries of a burst do not come back together.
fn backoff(attempts: u32, jitter: &mut Jitter) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1 << attempts.min(5))
        .min(BACKOFF_MAX);
    base.mul_f64(0.5 + 0.5 * jitter.fraction())
}

/// A small xorshift generator: jitter needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter(getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// A number in [0, 1).
    fn fraction(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `STATE_DIR/POOL.json`: the destroy requests not yet carried out.
#[derive(Clone)]
struct StateFile {
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    version: u32,
    /// Volumes (pool-relative names) to destroy.
    destroy: Vec<String>,
}

impl StateFile {
    fn new(dir: &Path, pool: &str) -> StateFile {
        StateFile {
            dir: dir.to_owned(),
            path: dir.join(format!("{pool}.json")),
            temp: dir.join(format!("{pool}.json.tmp")),
        }
    }

    fn load(&self) -> anyhow::Result<Vec<String>> {
        // A temp file is a write that did not finish: the previous file is the truth.
        let _ = fs::remove_file(&self.temp);
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        let saved: SavedState = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a keel provisioning state file",
                self.path.display()
            )
        })?;
        if saved.version != STATE_VERSION {
            bail!(
                "{} has format version {}; this keel reads version {STATE_VERSION}",
                self.path.display(),
                saved.version
            );
        }
        if let Some(bad) = saved
            .destroy
            .iter()
            .find(|n| n.is_empty() || n.contains(['@', '\0']))
        {
            bail!("{} names an invalid volume {bad:?}", self.path.display());
        }
        Ok(saved.destroy)
    }

    fn save(&self, names: &[String]) -> io::Result<()> {
        if names.is_empty() {
            return match fs::remove_file(&self.path) {
                Ok(()) => sync_dir(&self.dir),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        let text = serde_json::to_string_pretty(&SavedState {
            version: STATE_VERSION,
            destroy: names.to_vec(),
        })
        .map_err(io::Error::other)?;
        {
            let mut file = fs::File::create(&self.temp)?;
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
        }
        fs::rename(&self.temp, &self.path)?;
        sync_dir(&self.dir)
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[path = "provisioner_tests.rs"]
mod tests;
