//! The driver against a stand-in for a slow storage server: one global lock (a tokio Mutex)
//! held for a configurable time per server call, calls counted, ZFS's refusals modelled (a
//! snapshot with clones, a volume with snapshots, a create over an existing name), and
//! injected Busy and Unknown failures, Unknown sometimes after the work was done. Time is
//! tokio's paused clock, so 100 calls of 0.5 s take no real time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex as StdMutex;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant as TokioInstant, sleep};

use super::*;
use crate::provision::backend::BackendFuture;
use crate::provision::settings::{OnRemove, PoolKind};

const PARENT: &str = "tank/keel";
const GOLDEN: &str = "tank/golden@v1";
const HOLD: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Busy,
    /// The call crashed before doing anything.
    UnknownBefore,
    /// The call did its work, then its answer was lost.
    UnknownAfter,
}

#[derive(Default)]
struct World {
    volumes: BTreeMap<String, ObservedVolume>,
    snapshots: BTreeSet<String>,
    /// Snapshots outside the pool that clones may come from.
    external: BTreeSet<String>,
    /// Server calls by method, whatever their result.
    calls: BTreeMap<&'static str, u64>,
    /// When the lock was held, per completed server call.
    held: Vec<(TokioInstant, TokioInstant)>,
    /// Volumes in the order their creation took effect.
    created: Vec<String>,
    /// Creates refused because the name existed: a duplicate attempt.
    duplicates: u32,
    /// Faults injected so far, by kind.
    injected: BTreeMap<&'static str, u64>,
    busy_rate: f64,
    unknown_rate: f64,
    rng: u64,
    /// Creates of these fail for good, with this reason.
    broken: BTreeMap<String, String>,
    /// Destroys of these fail for good, with this reason.
    undeletable: BTreeMap<String, String>,
    /// Faults for the next calls of a method, before any random one.
    script: Vec<(&'static str, Fault)>,
}

impl World {
    fn random(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fault(&mut self, method: &str) -> Option<Fault> {
        if let Some(i) = self.script.iter().position(|(m, _)| *m == method) {
            let (_, fault) = self.script.remove(i);
            *self.injected.entry(fault_name(fault)).or_default() += 1;
            return Some(fault);
        }
        let roll = self.random();
        let fault = if roll < self.busy_rate {
            Fault::Busy
        } else if roll < self.busy_rate + self.unknown_rate {
            if self.random() < 0.5 {
                Fault::UnknownBefore
            } else {
                Fault::UnknownAfter
            }
        } else {
            return None;
        };
        *self.injected.entry(fault_name(fault)).or_default() += 1;
        Some(fault)
    }

    fn has_clones(&self, snapshot: &str) -> bool {
        let full = format!("{PARENT}/{snapshot}");
        self.volumes
            .values()
            .any(|v| v.origin.as_deref() == Some(full.as_str()))
    }

    fn destroy_one(&mut self, name: &str) -> Result<(), BackendError> {
        if name.contains('@') {
            if self.has_clones(name) {
                return Err(BackendError::Failed(format!(
                    "snapshot {name} has dependent clones"
                )));
            }
            self.snapshots.remove(name);
            return Ok(());
        }
        if let Some(reason) = self.undeletable.get(name) {
            return Err(BackendError::Failed(reason.clone()));
        }
        if self.snapshots.iter().any(|s| snapshot_volume(s) == name) {
            return Err(BackendError::Failed(format!(
                "volume {name} has children (snapshots)"
            )));
        }
        self.volumes.remove(name);
        Ok(())
    }
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::Busy => "busy",
        Fault::UnknownBefore => "unknown-before",
        Fault::UnknownAfter => "unknown-after",
    }
}

struct Server {
    /// The server's global lock: every call holds it for `hold`.
    lock: tokio::sync::Mutex<()>,
    hold: Duration,
    /// The hold of a listing (default: `hold`).
    list_hold: Duration,
    /// Destroys as one channel program (one call) or one by one (a call each).
    batched_destroy: bool,
    device_delay: Duration,
    world: StdMutex<World>,
}

impl Server {
    fn new() -> Server {
        Server {
            lock: tokio::sync::Mutex::new(()),
            hold: HOLD,
            list_hold: HOLD,
            batched_destroy: true,
            device_delay: Duration::from_millis(20),
            world: StdMutex::new(World {
                external: [GOLDEN.to_string()].into(),
                rng: 0x2545_f491_4f6c_dd1d,
                ..World::default()
            }),
        }
    }

    fn with_faults(self, busy_rate: f64, unknown_rate: f64, seed: u64) -> Server {
        {
            let mut world = self.world();
            world.busy_rate = busy_rate;
            world.unknown_rate = unknown_rate;
            world.rng = seed | 1;
        }
        self
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// One server call: take the lock, hold it half the time, do the work (unless a fault
    /// says otherwise), hold the other half. A caller that drops the call in the second half
    /// has had the work done without hearing of it.
    async fn call<T>(
        &self,
        method: &'static str,
        work: impl FnOnce(&mut World) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let hold = if method == "list" {
            self.list_hold
        } else {
            self.hold
        };
        let _lock = self.lock.lock().await;
        let start = TokioInstant::now();
        let fault = {
            let mut world = self.world();
            *world.calls.entry(method).or_default() += 1;
            world.fault(method)
        };
        sleep(hold / 2).await;
        let result = match fault {
            Some(Fault::Busy) => Err(BackendError::Busy("dataset is busy".into())),
            Some(Fault::UnknownBefore) => Err(BackendError::Unknown("zfs was killed".into())),
            Some(Fault::UnknownAfter) => {
                work(&mut self.world()).and(Err(BackendError::Unknown("zfs was killed".into())))
            }
            None => work(&mut self.world()),
        };
        sleep(hold / 2).await;
        self.world().held.push((start, TokioInstant::now()));
        result
    }

    fn total_calls(&self) -> u64 {
        self.world().calls.values().sum()
    }

    fn calls_of(&self, method: &str) -> u64 {
        self.world().calls.get(method).copied().unwrap_or(0)
    }

    fn held_total(&self) -> Duration {
        self.world().held.iter().map(|(a, b)| *b - *a).sum()
    }

    /// Time the lock was free between the first call and the last.
    fn idle_between_calls(&self) -> Duration {
        let mut held = self.world().held.clone();
        held.sort();
        held.windows(2)
            .map(|pair| pair[1].0.saturating_duration_since(pair[0].1))
            .sum()
    }

    fn volume_names(&self) -> Vec<String> {
        self.world().volumes.keys().cloned().collect()
    }

    /// An existing volume keel made, with a snapshot clones can come from.
    fn add_base(&self, name: &str, snapshot: &str) {
        let mut world = self.world();
        world.volumes.insert(
            name.into(),
            ObservedVolume {
                size: 1 << 30,
                owner: Some("keel".into()),
                volblocksize: Some(16384),
                ..Default::default()
            },
        );
        world.snapshots.insert(format!("{name}@{snapshot}"));
    }
}

impl VolumeBackend for Server {
    fn describe(&self) -> String {
        format!("test server {PARENT}")
    }

    fn list(&self) -> BackendFuture<'_, Observed> {
        Box::pin(self.call("list", |world| {
            Ok(Observed {
                volumes: world.volumes.clone(),
                snapshots: world.snapshots.iter().cloned().collect(),
            })
        }))
    }

    fn create<'a>(&'a self, spec: &'a VolumeSpec, owner: &'a str) -> BackendFuture<'a, ()> {
        Box::pin(self.call("create", move |world| {
            if world.volumes.contains_key(&spec.name) {
                world.duplicates += 1;
                return Err(BackendError::Failed(format!(
                    "{PARENT}/{}: dataset already exists",
                    spec.name
                )));
            }
            if let Some(reason) = world.broken.get(&spec.name) {
                return Err(BackendError::Failed(reason.clone()));
            }
            if let Some(origin) = &spec.clone_of {
                let in_pool = origin
                    .strip_prefix(&format!("{PARENT}/"))
                    .is_some_and(|rel| world.snapshots.contains(rel));
                if !in_pool && !world.external.contains(origin) {
                    return Err(BackendError::Failed(format!("{origin}: no such snapshot")));
                }
            }
            world.volumes.insert(
                spec.name.clone(),
                ObservedVolume {
                    size: spec.size,
                    origin: spec.clone_of.clone(),
                    owner: Some(owner.to_owned()),
                    lun_tag: Some(spec.lun_tag.clone()),
                    volblocksize: Some(spec.volblocksize.unwrap_or(16384)),
                },
            );
            world.created.push(spec.name.clone());
            Ok(())
        }))
    }

    fn destroy<'a>(&'a self, names: &'a [String]) -> BackendFuture<'a, usize> {
        Box::pin(async move {
            if self.batched_destroy {
                // A channel program: all or nothing, one call.
                self.call("destroy", |world| {
                    let mut after = World {
                        volumes: world.volumes.clone(),
                        snapshots: world.snapshots.clone(),
                        undeletable: world.undeletable.clone(),
                        ..World::default()
                    };
                    for name in names {
                        after.destroy_one(name)?;
                    }
                    world.volumes = after.volumes;
                    world.snapshots = after.snapshots;
                    Ok(1)
                })
                .await
            } else {
                for name in names {
                    self.call("destroy", |world| world.destroy_one(name))
                        .await?;
                }
                Ok(names.len())
            }
        })
    }

    fn destroy_snapshots<'a>(&'a self, snapshots: &'a [String]) -> BackendFuture<'a, usize> {
        Box::pin(async move {
            let mut by_volume: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
            for snapshot in snapshots {
                by_volume
                    .entry(snapshot_volume(snapshot))
                    .or_default()
                    .push(snapshot);
            }
            for group in by_volume.values() {
                self.call("destroy_snapshots", |world| {
                    if let Some(busy) = group.iter().find(|s| world.has_clones(s)) {
                        return Err(BackendError::Failed(format!(
                            "snapshot {busy} has dependent clones"
                        )));
                    }
                    for snapshot in group {
                        world.snapshots.remove(*snapshot);
                    }
                    Ok(())
                })
                .await?;
            }
            Ok(by_volume.len())
        })
    }

    fn grow<'a>(&'a self, name: &'a str, size: u64) -> BackendFuture<'a, ()> {
        Box::pin(
            self.call("grow", move |world| match world.volumes.get_mut(name) {
                Some(volume) => {
                    volume.size = volume.size.max(size);
                    Ok(())
                }
                None => Err(BackendError::Failed(format!(
                    "{name}: dataset does not exist"
                ))),
            }),
        )
    }

    fn device_path(&self, name: &str) -> PathBuf {
        PathBuf::from("/dev/zvol").join(PARENT).join(name)
    }

    fn wait_device<'a>(&'a self, name: &'a str, timeout: Duration) -> BackendFuture<'a, PathBuf> {
        Box::pin(async move {
            sleep(self.device_delay.min(timeout)).await;
            if self.world().volumes.contains_key(name) {
                Ok(self.device_path(name))
            } else {
                Err(BackendError::Failed(format!(
                    "{name}: no device node after {timeout:?}"
                )))
            }
        })
    }
}

fn settings() -> PoolSettings {
    PoolSettings {
        name: "tank".into(),
        kind: PoolKind::Zfs {
            parent: PARENT.into(),
            command: vec!["zfs".into()],
            device_root: "/dev/zvol".into(),
        },
        owner: "keel".into(),
        device_wait: Duration::from_secs(30),
    }
}

fn vm(i: usize) -> String {
    format!("vm{i:03}")
}

fn clone_spec(name: &str, clone_of: &str) -> VolumeSpec {
    VolumeSpec {
        pool: "tank".into(),
        name: name.into(),
        size: 1 << 30,
        clone_of: Some(clone_of.into()),
        volblocksize: None,
        sparse: true,
        on_remove: OnRemove::Destroy,
        lun_tag: format!("iqn.test:{name} LUN 0 naa.6001405"),
    }
}

struct Harness {
    server: Arc<Server>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(server: Server) -> Harness {
        Harness {
            server: Arc::new(server),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn start(&self) -> (Provisioner, UnboundedReceiver<VolumeEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let backend: Arc<dyn VolumeBackend> = self.server.clone();
        let provisioner =
            Provisioner::start(vec![(settings(), backend)], self.dir.path().into(), events)
                .unwrap();
        (provisioner, receiver)
    }

    fn state_file(&self) -> PathBuf {
        self.dir.path().join("tank.json")
    }
}

/// Collects events until `done` says so (virtual time; fails after an hour of it).
async fn events_until(
    receiver: &mut UnboundedReceiver<VolumeEvent>,
    mut done: impl FnMut(&[VolumeEvent]) -> bool,
) -> Vec<VolumeEvent> {
    let mut seen = Vec::new();
    while !done(&seen) {
        match tokio::time::timeout(Duration::from_secs(3600), receiver.recv()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => panic!("the provisioner stopped; events so far: {seen:?}"),
            Err(_) => panic!("no event for an hour; events so far: {seen:?}"),
        }
    }
    seen
}

fn seen_ready_volblocksize(events: &[VolumeEvent], volume: &str) -> Option<u64> {
    events.iter().find_map(|e| match e {
        VolumeEvent::Ready {
            name, volblocksize, ..
        } if name == volume => *volblocksize,
        _ => None,
    })
}

fn count_ready(events: &[VolumeEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, VolumeEvent::Ready { .. }))
        .count()
}

fn count_destroyed(events: &[VolumeEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, VolumeEvent::Destroyed { .. }))
        .count()
}

fn failures(events: &[VolumeEvent]) -> Vec<&VolumeEvent> {
    events
        .iter()
        .filter(|e| matches!(e, VolumeEvent::Failed { .. }))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_hundred_clones_take_a_hundred_calls_back_to_back() {
    let h = Harness::new(Server::new());
    let started = TokioInstant::now();
    let (p, mut events) = h.start();
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    let seen = events_until(&mut events, |e| count_ready(e) == 100).await;
    let took = started.elapsed();
    let (calls, held, idle) = (
        h.server.total_calls(),
        h.server.held_total(),
        h.server.idle_between_calls(),
    );
    println!(
        "100 clones: {calls} server calls, ready after {took:?}, lock held {held:?}, idle between calls {idle:?}"
    );
    assert!(failures(&seen).is_empty(), "{seen:?}");
    assert!(calls <= 105, "{calls} calls");
    assert_eq!(h.server.calls_of("create"), 100);
    assert!(
        took.as_secs_f64() <= 1.1 * held.as_secs_f64(),
        "{took:?} vs {held:?}"
    );
    assert!(
        idle < HOLD / 10,
        "the lock idled {idle:?} while work was queued"
    );
    assert_eq!(h.server.world().duplicates, 0);

    let VolumeEvent::Ready {
        path, volblocksize, ..
    } = &seen[0]
    else {
        panic!()
    };
    assert!(path.starts_with("/dev/zvol/tank/keel"));
    assert_eq!(
        *volblocksize, None,
        "not declared and not listed since: the pool's default"
    );
    let stats = &p.stats()[0];
    assert_eq!(stats.calls(CallKind::List, CallResult::Ok), 1);
    assert_eq!(stats.calls(CallKind::Create, CallResult::Ok), 100);
    assert_eq!(stats.total_calls(), calls);
    assert_eq!(stats.queue_length, 0);
    assert_eq!(stats.declaration_to_ready.count, 100);
    assert!(stats.time_in_calls >= held, "{:?}", stats.time_in_calls);
    let status = p.status();
    assert_eq!(status.len(), 100);
    assert!(status.iter().all(|s| s.state == VolumeState::Ready));
    // The last one waited for 99 others.
    assert!(status[99].in_queue >= HOLD * 99, "{:?}", status[99]);

    // Declaring again changes nothing and costs nothing.
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    sleep(Duration::from_secs(60)).await;
    assert_eq!(h.server.total_calls(), calls);
    assert!(events.try_recv().is_err());
    p.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn five_percent_busy_still_brings_every_volume_up() {
    let h = Harness::new(Server::new().with_faults(0.05, 0.0, 7));
    let (p, mut events) = h.start();
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    let seen = events_until(&mut events, |e| count_ready(e) == 100).await;
    assert!(failures(&seen).is_empty(), "{seen:?}");
    let busy = h.server.world().injected.get("busy").copied().unwrap_or(0);
    let stats = &p.stats()[0];
    println!(
        "5 % busy: {busy} injected, {} retries, {} server calls",
        stats.retries,
        h.server.total_calls()
    );
    assert!(busy > 0);
    assert_eq!(stats.retries, busy, "every busy call retried once");
    assert_eq!(
        stats.calls(CallKind::Create, CallResult::Busy)
            + stats.calls(CallKind::List, CallResult::Busy),
        busy
    );
    assert_eq!(h.server.world().created.len(), 100);
    assert_eq!(h.server.world().duplicates, 0);
    assert!(h.server.total_calls() <= 101 + 2 * busy);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_listed_again_never_duplicated() {
    let h = Harness::new(Server::new().with_faults(0.0, 0.15, 11));
    let (p, mut events) = h.start();
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    let seen = events_until(&mut events, |e| count_ready(e) == 100).await;
    assert!(failures(&seen).is_empty(), "{seen:?}");
    let world = h.server.world();
    let after = world.injected.get("unknown-after").copied().unwrap_or(0);
    println!(
        "15 % unknown: {:?} injected, {} lists, {} creates",
        world.injected, world.calls["list"], world.calls["create"]
    );
    assert!(after > 0, "some calls did the work and lost the answer");
    assert_eq!(
        world.duplicates, 0,
        "a volume made by a lost call was adopted, not made again"
    );
    assert_eq!(world.created.len(), 100);
    assert!(
        world.calls["list"] > 1,
        "listed again after each unknown outcome"
    );
    drop(world);
    assert!(p.stats()[0].calls(CallKind::Create, CallResult::Unknown) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_demanded_volume_goes_first() {
    let h = Harness::new(Server::new());
    let (p, mut events) = h.start();
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    p.demand("tank", &vm(99));
    let seen = events_until(&mut events, |e| count_ready(e) >= 5).await;
    let created = h.server.world().created.clone();
    let position = created.iter().position(|n| *n == vm(99));
    println!("the demanded volume was created as number {position:?}");
    assert!(position.is_some_and(|p| p < 5), "{created:?}");
    assert!(
        seen.iter()
            .take(5)
            .any(|e| matches!(e, VolumeEvent::Ready { name, .. } if *name == vm(99)))
    );
}

#[tokio::test(start_paused = true)]
async fn demand_mid_burst_overtakes_the_queue() {
    let h = Harness::new(Server::new());
    let (p, mut events) = h.start();
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    events_until(&mut events, |e| count_ready(e) >= 10).await;
    assert!(
        p.status()
            .iter()
            .any(|s| s.name == vm(80) && s.state == VolumeState::Queued)
    );
    p.demand("tank", &vm(80));
    // Behind the call running and the one already waiting at the server's lock (the
    // pipelined make), then its own call and its device.
    sleep(HOLD * 4).await;
    assert!(
        p.status()
            .iter()
            .any(|s| s.name == vm(80) && s.state == VolumeState::Ready)
    );
}

/// 100 clones of a base volume keel made, each with a snapshot of its own, plus a volume
/// somebody else made; all of keel's asked to be destroyed, the base first (it must wait).
#[tokio::test(start_paused = true)]
async fn teardown_of_a_hundred_goes_in_dependency_order_in_few_calls() {
    let h = Harness::new(Server::new());
    h.server.add_base("base", "gold");
    {
        let mut world = h.server.world();
        world.volumes.insert(
            "theirs".into(),
            ObservedVolume {
                size: 1,
                ..Default::default()
            },
        );
    }
    let (p, mut events) = h.start();
    let origin = format!("{PARENT}/base@gold");
    for i in 0..100 {
        p.declare(clone_spec(&vm(i), &origin)).unwrap();
    }
    events_until(&mut events, |e| count_ready(e) == 100).await;
    for i in 0..100 {
        h.server
            .world()
            .snapshots
            .insert(format!("{}@daily", vm(i)));
    }
    let before = h.server.total_calls();

    p.undeclare("tank", "base", true).await.unwrap();
    let text = std::fs::read_to_string(h.state_file()).unwrap();
    assert!(
        text.contains("\"base\""),
        "the request is on disk when undeclare returns: {text}"
    );
    for i in 0..100 {
        p.undeclare("tank", &vm(i), true).await.unwrap();
    }
    p.undeclare("tank", "theirs", true).await.unwrap();
    let seen = events_until(&mut events, |e| {
        count_destroyed(e) == 101 && !failures(e).is_empty()
    })
    .await;
    let failed = failures(&seen);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let VolumeEvent::Failed { name, reason, .. } = failed[0] else {
        panic!()
    };
    assert_eq!(name, "theirs");
    assert!(reason.contains("not created by keel"), "{reason}");
    let base_at = seen
        .iter()
        .position(|e| matches!(e, VolumeEvent::Destroyed { name, .. } if name == "base"));
    assert!(base_at.is_some());
    assert!(
        seen.iter().rposition(
            |e| matches!(e, VolumeEvent::Destroyed { name, .. } if name.starts_with("vm"))
        ) < base_at,
        "every clone before the base"
    );
    assert_eq!(h.server.volume_names(), ["theirs"]);
    assert!(
        h.server.world().snapshots.is_empty(),
        "{:?}",
        h.server.world().snapshots
    );
    let calls = h.server.total_calls() - before;
    let stats = &p.stats()[0];
    println!(
        "teardown: {calls} server calls ({} destroy, {} destroy_snapshots backend calls)",
        stats.calls(CallKind::Destroy, CallResult::Ok),
        stats.calls(CallKind::DestroySnapshots, CallResult::Ok),
    );
    assert!(
        stats.calls(CallKind::Destroy, CallResult::Ok) <= 3,
        "destroys are batched"
    );
    assert!(
        stats.calls(CallKind::DestroySnapshots, CallResult::Ok) <= 3,
        "snapshot destroys are batched"
    );
    assert!(p.status().iter().all(|s| s.name == "theirs"));
    p.shutdown().await;
    assert!(!h.state_file().exists(), "no state file left behind");
}

#[tokio::test(start_paused = true)]
async fn a_busy_teardown_is_retried_to_the_end() {
    let h = Harness::new(Server::new().with_faults(0.2, 0.1, 5));
    h.server.add_base("base", "gold");
    let origin = format!("{PARENT}/base@gold");
    {
        let mut world = h.server.world();
        for i in 0..30 {
            world.volumes.insert(
                vm(i),
                ObservedVolume {
                    size: 1 << 30,
                    origin: Some(origin.clone()),
                    owner: Some("keel".into()),
                    ..Default::default()
                },
            );
            world.snapshots.insert(format!("{}@s", vm(i)));
        }
    }
    let (p, mut events) = h.start();
    p.undeclare("tank", "base", true).await.unwrap();
    for i in 0..30 {
        p.undeclare("tank", &vm(i), true).await.unwrap();
    }
    let seen = events_until(&mut events, |e| count_destroyed(e) == 31).await;
    assert!(failures(&seen).is_empty(), "{seen:?}");
    assert!(h.server.volume_names().is_empty());
    assert!(h.server.world().snapshots.is_empty());
    assert!(p.stats()[0].retries > 0);
    p.shutdown().await; // the last removal from the state file is written by now
    assert!(!h.state_file().exists());
}

/// Clones of a base keel made, without snapshots of their own.
fn add_clones(server: &Server, count: usize) {
    let origin = format!("{PARENT}/base@gold");
    let mut world = server.world();
    for i in 0..count {
        world.volumes.insert(
            vm(i),
            ObservedVolume {
                size: 1 << 30,
                origin: Some(origin.clone()),
                owner: Some("keel".into()),
                ..Default::default()
            },
        );
    }
}

/// The base is asked to go while its clones' destroy waits out a busy server: it waits for
/// them instead of failing.
#[tokio::test(start_paused = true)]
async fn a_base_waits_for_its_clones_destroys_to_come_back() {
    let mut server = Server::new();
    server.list_hold = Duration::ZERO; // the base is planned before the clones' retry is due
    let h = Harness::new(server);
    h.server.add_base("base", "gold");
    add_clones(&h.server, 10);
    h.server.world().script = vec![("destroy", Fault::Busy)];
    let (p, mut events) = h.start();
    let names: Vec<String> = (0..10).map(vm).collect();
    let undeclared =
        futures_util::future::join_all(names.iter().map(|n| p.undeclare("tank", n, true))).await;
    assert!(undeclared.iter().all(Result::is_ok));
    // The clones' destroy comes back busy at 0.5 s; their retry is due 0.1-0.2 s later.
    sleep(HOLD + Duration::from_millis(10)).await;
    assert_eq!(h.server.calls_of("destroy"), 1);
    p.undeclare("tank", "base", true).await.unwrap();
    sleep(Duration::from_millis(10)).await;
    let base = p.status().into_iter().find(|s| s.name == "base").unwrap();
    assert_eq!(
        (base.state, base.attempts),
        (VolumeState::Destroying, 1),
        "refused, waiting"
    );
    assert_eq!(
        h.server.calls_of("destroy"),
        1,
        "nothing destroyed meanwhile"
    );
    let seen = events_until(&mut events, |e| count_destroyed(e) == 11).await;
    assert!(failures(&seen).is_empty(), "{seen:?}");
    assert!(matches!(seen.last(), Some(VolumeEvent::Destroyed { name, .. }) if name == "base"));
    assert!(h.server.volume_names().is_empty());
    assert!(h.server.world().snapshots.is_empty());
    assert_eq!(p.stats()[0].calls(CallKind::Destroy, CallResult::Busy), 1);
}

/// One volume of a batch cannot be destroyed: the batch goes one by one, the rest go, that
/// one fails with the server's reason and its request stays on disk for a later try; the base
/// it was cloned from is refused, naming it.
#[tokio::test(start_paused = true)]
async fn one_undeletable_volume_fails_alone() {
    let h = Harness::new(Server::new());
    h.server.add_base("base", "gold");
    add_clones(&h.server, 5);
    h.server
        .world()
        .undeletable
        .insert(vm(2), "dataset is in use by a process".into());
    let (p, mut events) = h.start();
    p.undeclare("tank", "base", true).await.unwrap();
    for i in 0..5 {
        p.undeclare("tank", &vm(i), true).await.unwrap();
    }
    let seen = events_until(&mut events, |e| {
        count_destroyed(e) == 4 && failures(e).len() == 2
    })
    .await;
    let failed: Vec<(&str, &str)> = failures(&seen)
        .into_iter()
        .map(|e| match e {
            VolumeEvent::Failed { name, reason, .. } => (name.as_str(), reason.as_str()),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        failed[0],
        (vm(2).as_str(), "dataset is in use by a process")
    );
    assert_eq!(failed[1].0, "base");
    assert!(
        failed[1].1.contains(&vm(2)),
        "the base stays for the clone that stays: {}",
        failed[1].1
    );
    assert_eq!(h.server.volume_names(), ["base".to_string(), vm(2)]);
    assert!(h.server.world().snapshots.contains("base@gold"));
    let status = p.status();
    assert_eq!(
        status[1].state,
        VolumeState::Failed("dataset is in use by a process".into())
    );
    p.shutdown().await;
    let text = std::fs::read_to_string(h.state_file()).unwrap();
    let saved: SavedState = serde_json::from_str(&text).unwrap();
    assert_eq!(saved.destroy, [vm(2)]);
}

/// Kills the provisioner (drops it, cutting its running call short: the work of a call cut in
/// its second half is done) at several points of a creation and of a teardown; a new one on
/// the same state directory and server converges with no orphan and no duplicate.
#[tokio::test(start_paused = true)]
async fn crashes_during_creation_and_teardown_converge() {
    let create_crashes = [0.1, 0.3, 7.8, 20.3, 49.9];
    let destroy_crashes = [0.2, 0.8, 3.3, 10.9, 24.6];
    for (create_at, destroy_at) in create_crashes.into_iter().zip(destroy_crashes) {
        let mut server = Server::new();
        server.batched_destroy = false; // one call per destroy: teardown takes many steps
        let h = Harness::new(server);
        h.server.add_base("base", "gold");
        let origin = format!("{PARENT}/base@gold");
        let declared: Vec<VolumeSpec> = (0..100).map(|i| clone_spec(&vm(i), &origin)).collect();

        // Creation, cut short.
        let (p, _events) = h.start();
        for spec in &declared {
            p.declare(spec.clone()).unwrap();
        }
        sleep(Duration::from_secs_f64(create_at)).await;
        drop(p);
        sleep(Duration::from_millis(1)).await;
        let made_before = h.server.world().created.len();

        // Restart: the same declarations converge.
        let (p, mut events) = h.start();
        for spec in &declared {
            p.declare(spec.clone()).unwrap();
        }
        let seen = events_until(&mut events, |e| count_ready(e) == 100).await;
        assert!(
            failures(&seen).is_empty(),
            "crash at {create_at}s: {seen:?}"
        );
        {
            let world = h.server.world();
            assert_eq!(world.duplicates, 0, "crash at {create_at}s");
            assert_eq!(world.created.len(), 100, "crash at {create_at}s");
            assert_eq!(world.volumes.len(), 101);
        }

        // Teardown of half of them, cut short.
        for spec in declared.iter().step_by(2) {
            p.undeclare("tank", &spec.name, true).await.unwrap();
        }
        sleep(Duration::from_secs_f64(destroy_at)).await;
        drop(p);
        sleep(Duration::from_millis(1)).await;
        let left_before = h.server.world().volumes.len();
        // Every volume asked to go that is still there is still asked for on disk.
        let requested: Vec<String> = match std::fs::read_to_string(h.state_file()) {
            Ok(text) => serde_json::from_str::<SavedState>(&text).unwrap().destroy,
            Err(_) => Vec::new(),
        };
        for spec in declared.iter().step_by(2) {
            if h.server.world().volumes.contains_key(&spec.name) {
                assert!(
                    requested.contains(&spec.name),
                    "crash at {destroy_at}s: {} not on disk",
                    spec.name
                );
            }
        }
        assert!(
            left_before > 51,
            "crash at {destroy_at}s: the crash came mid-way"
        );

        // Restart with the other half declared.
        let (p, mut events) = h.start();
        for spec in declared.iter().skip(1).step_by(2) {
            p.declare(spec.clone()).unwrap();
        }
        let seen = events_until(&mut events, |e| {
            count_ready(e) == 50 && count_destroyed(e) == 50
        })
        .await;
        assert!(
            failures(&seen).is_empty(),
            "crash at {destroy_at}s: {seen:?}"
        );
        let mut expected: Vec<String> = (1..100).step_by(2).map(vm).collect();
        expected.insert(0, "base".into());
        assert_eq!(h.server.volume_names(), expected, "crash at {destroy_at}s");
        p.shutdown().await;
        assert!(!h.state_file().exists(), "crash at {destroy_at}s");
        println!(
            "crash at {create_at}s of creation ({made_before} made) and {destroy_at}s of teardown \
             ({} left of 101): converged",
            left_before
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_volume_stays_failed_until_declared_again() {
    let h = Harness::new(Server::new());
    h.server
        .world()
        .broken
        .insert("bad".into(), "out of space".into());
    let (p, mut events) = h.start();
    p.declare(clone_spec("bad", GOLDEN)).unwrap();
    p.declare(clone_spec("nosnap", "tank/nothing@x")).unwrap();
    let seen = events_until(&mut events, |e| failures(e).len() == 2).await;
    assert!(seen.iter().any(|e| matches!(e, VolumeEvent::Failed { name, reason, .. } if name == "bad" && reason == "out of space")));
    let calls = h.server.calls_of("create");
    sleep(Duration::from_secs(60)).await;
    assert_eq!(h.server.calls_of("create"), calls, "not retried");
    let status = p.status();
    assert_eq!(status[0].state, VolumeState::Failed("out of space".into()));

    h.server.world().broken.clear();
    p.declare(clone_spec("bad", GOLDEN)).unwrap();
    let seen = events_until(&mut events, |e| count_ready(e) == 1).await;
    assert!(matches!(&seen[0], VolumeEvent::Ready { name, .. } if name == "bad"));
}

#[tokio::test(start_paused = true)]
async fn existing_volumes_are_adopted_and_grown_without_creating() {
    let h = Harness::new(Server::new());
    h.server.add_base("small", "s");
    {
        let mut world = h.server.world();
        world.volumes.insert(
            "foreign".into(),
            ObservedVolume {
                size: 1 << 20,
                ..Default::default()
            },
        );
    }
    let (p, mut events) = h.start();
    let mut small = clone_spec("small", GOLDEN);
    small.size = 4 << 30;
    p.declare(small.clone()).unwrap();
    p.declare(clone_spec("foreign", GOLDEN)).unwrap();
    let first = events_until(&mut events, |e| count_ready(e) == 2).await;
    assert_eq!(h.server.calls_of("create"), 0);
    assert_eq!(
        h.server.calls_of("grow"),
        1,
        "only keel's own volume is grown"
    );
    assert_eq!(h.server.world().volumes["small"].size, 4 << 30);
    assert_eq!(
        h.server.world().volumes["foreign"].size,
        1 << 20,
        "never grown: not ours"
    );
    let small_ready = seen_ready_volblocksize(&first, "small");
    assert_eq!(small_ready, Some(16384), "from the listing");

    // A larger size declared for a ready volume grows it and says ready again.
    small.size = 8 << 30;
    p.declare(small).unwrap();
    events_until(&mut events, |e| count_ready(e) == 1).await;
    assert_eq!(h.server.world().volumes["small"].size, 8 << 30);
}

#[tokio::test(start_paused = true)]
async fn undeclared_while_queued_or_running_is_not_made_ready() {
    let h = Harness::new(Server::new());
    let (p, mut events) = h.start();
    for i in 0..5 {
        p.declare(clone_spec(&vm(i), GOLDEN)).unwrap();
    }
    // vm000 is being created when this arrives (the list took the first hold).
    sleep(HOLD + HOLD / 4).await;
    assert_eq!(p.status()[0].state, VolumeState::Creating);
    p.undeclare("tank", &vm(0), false).await.unwrap();
    p.undeclare("tank", &vm(4), false).await.unwrap();
    let seen = events_until(&mut events, |e| count_ready(e) == 3).await;
    sleep(Duration::from_secs(10)).await;
    assert!(events.try_recv().is_err());
    assert!(
        !seen.iter().any(
            |e| matches!(e, VolumeEvent::Ready { name, .. } if *name == vm(0) || *name == vm(4))
        )
    );
    assert_eq!(
        h.server.calls_of("create"),
        4,
        "vm004 never made; vm000 made and kept"
    );
    assert!(h.server.volume_names().contains(&vm(0)));
}

#[tokio::test(start_paused = true)]
async fn declared_again_cancels_a_pending_destroy_even_after_a_restart() {
    let h = Harness::new(Server::new());
    h.server.add_base("keepme", "s");
    h.server.world().snapshots.clear();
    std::fs::write(
        h.state_file(),
        r#"{"version": 1, "destroy": ["keepme", "gone"]}"#,
    )
    .unwrap();
    let (p, mut events) = h.start();
    p.declare(clone_spec("keepme", GOLDEN)).unwrap();
    let seen = events_until(&mut events, |e| {
        count_ready(e) == 1 && count_destroyed(e) == 1
    })
    .await;
    assert!(
        seen.iter()
            .any(|e| matches!(e, VolumeEvent::Destroyed { name, .. } if name == "gone"))
    );
    assert_eq!(h.server.volume_names(), ["keepme"]);
    p.shutdown().await;
    assert!(!h.state_file().exists());
}

#[tokio::test(start_paused = true)]
async fn a_broken_state_file_stops_the_start_with_its_name() {
    let h = Harness::new(Server::new());
    std::fs::write(h.state_file(), "{ not json").unwrap();
    let (events, _receiver) = mpsc::unbounded_channel();
    let backend: Arc<dyn VolumeBackend> = h.server.clone();
    let error = Provisioner::start(vec![(settings(), backend)], h.dir.path().into(), events)
        .err()
        .unwrap();
    assert!(format!("{error:#}").contains("tank.json"), "{error:#}");

    let mut bad = settings();
    bad.name = "../escape".into();
    let (events, _receiver) = mpsc::unbounded_channel();
    let backend: Arc<dyn VolumeBackend> = h.server.clone();
    assert!(Provisioner::start(vec![(bad, backend)], h.dir.path().into(), events).is_err());
}

#[tokio::test(start_paused = true)]
async fn unknown_pools_are_errors_and_shutdown_waits_for_the_running_call() {
    let h = Harness::new(Server::new());
    let (p, _events) = h.start();
    let mut spec = clone_spec("x", GOLDEN);
    spec.pool = "nope".into();
    assert!(p.declare(spec).unwrap_err().contains("nope"));
    assert!(p.undeclare("nope", "x", true).await.is_err());
    p.declare(clone_spec("x", GOLDEN)).unwrap();
    sleep(HOLD + HOLD / 4).await; // the create is running
    p.shutdown().await;
    assert_eq!(h.server.world().created, ["x"], "the running call finished");
    assert!(p.declare(clone_spec("y", GOLDEN)).is_err());
}

#[test]
fn backoff_doubles_to_five_seconds_with_jitter() {
    let mut jitter = Jitter::new();
    for attempts in 0..20 {
        let delay = backoff(attempts, &mut jitter);
        let base = BACKOFF_FIRST
            .saturating_mul(1 << attempts.min(5))
            .min(BACKOFF_MAX);
        assert!(delay >= base / 2 && delay <= base, "{attempts}: {delay:?}");
    }
    assert!(backoff(30, &mut jitter) <= BACKOFF_MAX);
}

#[test]
fn ready_histogram_buckets() {
    let mut histogram = ReadyHistogram::default();
    histogram.observe(Duration::from_millis(500));
    histogram.observe(Duration::from_secs(7));
    histogram.observe(Duration::from_secs(100_000));
    let cumulative = histogram.cumulative();
    assert_eq!(cumulative[0], (1.0, 1));
    assert_eq!(cumulative[3], (10.0, 2));
    assert_eq!(cumulative.last().unwrap().1, 2);
    assert_eq!(histogram.count, 3);
}

#[tokio::test(start_paused = true)]
async fn a_destroy_that_cannot_reach_the_disk_is_refused_not_done() {
    let h = Harness::new(Server::new());
    h.server.add_base("base", "gold");
    h.server.world().snapshots.clear();
    let (p, _events) = h.start();
    // The temp file cannot be created where a directory stands.
    std::fs::create_dir(h.dir.path().join("tank.json.tmp")).unwrap();
    let error = p.undeclare("tank", "base", true).await.unwrap_err();
    assert!(
        error.contains("cannot record the destroy of tank/base"),
        "{error}"
    );
    assert!(p.status().is_empty(), "withdrawn: {:?}", p.status());
    sleep(Duration::from_secs(30)).await;
    assert_eq!(h.server.calls_of("destroy"), 0);
    assert_eq!(h.server.volume_names(), ["base"]);

    std::fs::remove_dir(h.dir.path().join("tank.json.tmp")).unwrap();
    p.undeclare("tank", "base", true).await.unwrap();
    sleep(Duration::from_secs(30)).await;
    assert!(h.server.volume_names().is_empty());
}
