//! One pool's pending jobs (sans-IO): at most one per volume, demanded jobs first, FIFO within
//! a class, retries delayed without holding up the rest. Every operation costs O(log n)
//! (ordered maps keyed by (class, sequence) and (time, sequence), a hash map from volume to
//! its job), so 10,000 queued jobs cost nothing: a scheduler walking a list of pending lock
//! requests once spun a whole core (`../shared/DESIGN.md` §3, seed 001).
//!
//! A popped job is out of the queue while it runs; the driver hands it back with
//! [`JobQueue::retry_at`] if the server was busy.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Identifies one job; also its place in FIFO order (a job keeps it across retries, so a
/// retried job goes before younger ones once its delay has passed).
pub type JobId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Make the volume exist as declared (create, clone, or adopt what is there).
    Create,
    /// Grow an existing volume to this many bytes.
    Grow(u64),
    Destroy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub volume: String,
    pub kind: JobKind,
    /// When this job (not a retry of it) was queued: time in the queue counts from here.
    pub queued_at: Instant,
    /// Failed tries so far (each [`JobQueue::retry_at`] adds one).
    pub attempts: u32,
    /// An initiator waits for the volume: the job goes before every undemanded one.
    pub demanded: bool,
}

/// A queued job as `keel status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedJob<'a> {
    pub volume: &'a str,
    pub id: JobId,
    pub kind: JobKind,
    pub queued_at: Instant,
    pub attempts: u32,
    pub demanded: bool,
    /// A retry's earliest start; `None`: ready now.
    pub not_before: Option<Instant>,
}

/// Scheduling class: demanded jobs before all others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Class {
    Demand,
    Normal,
}

/// Order of ready jobs: class, then FIFO by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadyKey(Class, JobId);

/// Order of delayed jobs: due time, then id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DelayedKey(Instant, JobId);

impl Ord for ReadyKey {
    fn cmp(&self, other: &Self) -> Ordering {
        count_comparison();
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}
impl PartialOrd for ReadyKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for DelayedKey {
    fn cmp(&self, other: &Self) -> Ordering {
        count_comparison();
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}
impl PartialOrd for DelayedKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
thread_local! {
    /// Key comparisons made by this thread's queues: the tests' measure of work, which does
    /// not depend on the machine's speed.
    static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn count_comparison() {
    #[cfg(test)]
    COMPARISONS.with(|c| c.set(c.get() + 1));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Ready(ReadyKey),
    Delayed(DelayedKey),
}

#[derive(Debug)]
struct Entry {
    job: Job,
    slot: Slot,
}

/// How a new job for a volume combines with the one already pending.
enum Merge {
    /// The pending job stays where it is (its place, delay, attempts, demand) with this kind.
    Keep(JobKind),
    /// The intent changed (made ↔ destroyed): the pending job is dropped and the new one is
    /// queued fresh at the back.
    Fresh,
}

/// Create and Grow are the same intent (make the volume as declared; what it takes is decided
/// when the job runs); Destroy is the opposite one.
fn merge(pending: JobKind, new: JobKind) -> Merge {
    match (pending, new) {
        (JobKind::Destroy, JobKind::Destroy) => Merge::Keep(JobKind::Destroy),
        (JobKind::Destroy, _) => Merge::Fresh,
        (_, JobKind::Destroy) => Merge::Fresh,
        // A creation makes the volume at its declared size: a grow adds nothing.
        (JobKind::Create, JobKind::Grow(_)) => Merge::Keep(JobKind::Create),
        (JobKind::Grow(_), JobKind::Create) => Merge::Keep(JobKind::Create),
        (JobKind::Grow(_), JobKind::Grow(size)) => Merge::Keep(JobKind::Grow(size)),
        (JobKind::Create, JobKind::Create) => Merge::Keep(JobKind::Create),
    }
}

#[derive(Debug, Default)]
pub struct JobQueue {
    jobs: HashMap<String, Entry>,
    /// Ready jobs other than destroys.
    ready: BTreeMap<ReadyKey, String>,
    /// Ready destroys (never demanded), kept apart so a batch of them is found without a scan.
    ready_destroys: BTreeMap<ReadyKey, String>,
    delayed: BTreeMap<DelayedKey, String>,
    next_id: JobId,
}

impl JobQueue {
    pub fn new() -> JobQueue {
        JobQueue::default()
    }

    /// Pending jobs, ready or delayed.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Queues a job for `volume`, combined with the one already pending for it: a Create or
    /// Grow after a Create or Grow updates the pending job in place (a Create covers a Grow);
    /// a Destroy after a Create (before it ran) replaces it, and so does a Create after a
    /// Destroy, as a fresh job at the back. Returns the id of the job that is now pending.
    pub fn push(&mut self, volume: &str, kind: JobKind, now: Instant) -> JobId {
        if let Some(entry) = self.jobs.get_mut(volume) {
            match merge(entry.job.kind, kind) {
                Merge::Keep(kind) => {
                    entry.job.kind = kind;
                    return entry.job.id;
                }
                Merge::Fresh => {
                    self.remove(volume);
                }
            }
        }
        let id = self.take_id();
        let job = Job {
            id,
            volume: volume.to_owned(),
            kind,
            queued_at: now,
            attempts: 0,
            demanded: false,
        };
        self.insert_ready(job);
        id
    }

    /// An initiator waits for `volume`: its pending job goes before every undemanded one
    /// (FIFO among demanded jobs). A delayed retry stays delayed, then runs first. Returns
    /// false when no Create or Grow is pending for it (destroys are never promoted).
    pub fn demand(&mut self, volume: &str) -> bool {
        let Some(entry) = self.jobs.get_mut(volume) else {
            return false;
        };
        if entry.job.kind == JobKind::Destroy {
            return false;
        }
        if entry.job.demanded {
            return true;
        }
        entry.job.demanded = true;
        if let Slot::Ready(key) = entry.slot {
            let promoted = ReadyKey(Class::Demand, key.1);
            entry.slot = Slot::Ready(promoted);
            if let Some(name) = self.ready.remove(&key) {
                self.ready.insert(promoted, name);
            }
        }
        true
    }

    /// Whether a job may run at `now`.
    pub fn has_ready(&mut self, now: Instant) -> bool {
        self.promote_due(now);
        !self.ready.is_empty() || !self.ready_destroys.is_empty()
    }

    /// Takes the first job that may run at `now`: demanded before others, then oldest first.
    pub fn pop_ready(&mut self, now: Instant) -> Option<Job> {
        self.promote_due(now);
        let first = self.ready.first_key_value().map(|(key, _)| *key);
        let first_destroy = self.ready_destroys.first_key_value().map(|(key, _)| *key);
        let volume = match (first, first_destroy) {
            (Some(key), Some(destroy)) if destroy < key => self.ready_destroys.pop_first(),
            (Some(_), _) => self.ready.pop_first(),
            (None, Some(_)) => self.ready_destroys.pop_first(),
            (None, None) => None,
        }
        .map(|(_, volume)| volume)?;
        self.jobs.remove(&volume).map(|entry| entry.job)
    }

    /// Takes the first job that may run at `now` if it makes a volume (Create or Grow) other
    /// than `busy` and no destroy comes before it: what may start while another make is
    /// still running.
    pub fn pop_ready_make(&mut self, now: Instant, busy: &str) -> Option<Job> {
        self.promote_due(now);
        let (key, volume) = self
            .ready
            .first_key_value()
            .map(|(key, volume)| (*key, volume.clone()))?;
        let destroy_first = self
            .ready_destroys
            .first_key_value()
            .is_some_and(|(destroy, _)| *destroy < key);
        if destroy_first || volume == busy {
            return None;
        }
        self.ready.pop_first();
        self.jobs.remove(&volume).map(|entry| entry.job)
    }

    /// Takes up to `max` destroys that may run at `now`, oldest first: one batch for the
    /// server.
    pub fn pop_destroys(&mut self, now: Instant, max: usize) -> Vec<Job> {
        self.promote_due(now);
        let mut batch = Vec::new();
        while batch.len() < max {
            let Some((_, volume)) = self.ready_destroys.pop_first() else {
                break;
            };
            if let Some(entry) = self.jobs.remove(&volume) {
                batch.push(entry.job);
            }
        }
        batch
    }

    /// Hands back a popped job that must run again, not before `at`, with one more attempt.
    /// If a job for the same volume was queued meanwhile, the two combine as in
    /// [`JobQueue::push`] with the returned job as the older one: a retried Create and a newer
    /// Create stay one delayed job; a newer Destroy wins over a retried Create.
    pub fn retry_at(&mut self, mut job: Job, at: Instant) {
        job.attempts = job.attempts.saturating_add(1);
        if let Some(pending) = self.jobs.get(&job.volume) {
            match merge(job.kind, pending.job.kind) {
                Merge::Keep(kind) => {
                    job.kind = kind;
                    job.demanded |= pending.job.demanded && kind != JobKind::Destroy;
                    self.remove(&job.volume.clone());
                }
                Merge::Fresh => return,
            }
        }
        let key = DelayedKey(at, job.id);
        self.delayed.insert(key, job.volume.clone());
        self.jobs.insert(
            job.volume.clone(),
            Entry {
                job,
                slot: Slot::Delayed(key),
            },
        );
    }

    /// When the earliest delayed job becomes ready (`None`: no delayed job). Ready jobs are
    /// found with [`JobQueue::pop_ready`].
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.delayed.first_key_value().map(|(key, _)| key.0)
    }

    /// Drops the pending job for `volume`, if any.
    pub fn remove(&mut self, volume: &str) -> Option<Job> {
        let entry = self.jobs.remove(volume)?;
        match entry.slot {
            Slot::Ready(key) => {
                self.ready.remove(&key);
                self.ready_destroys.remove(&key);
            }
            Slot::Delayed(key) => {
                self.delayed.remove(&key);
            }
        }
        Some(entry.job)
    }

    /// The pending job for `volume`.
    pub fn get(&self, volume: &str) -> Option<QueuedJob<'_>> {
        self.jobs
            .get_key_value(volume)
            .map(|(name, entry)| queued(name, entry))
    }

    /// Every pending job, in no particular order (for status).
    pub fn iter(&self) -> impl Iterator<Item = QueuedJob<'_>> + '_ {
        self.jobs.iter().map(|(name, entry)| queued(name, entry))
    }

    fn take_id(&mut self) -> JobId {
        self.next_id += 1;
        self.next_id
    }

    fn insert_ready(&mut self, job: Job) {
        let class = if job.demanded && job.kind != JobKind::Destroy {
            Class::Demand
        } else {
            Class::Normal
        };
        let key = ReadyKey(class, job.id);
        if job.kind == JobKind::Destroy {
            self.ready_destroys.insert(key, job.volume.clone());
        } else {
            self.ready.insert(key, job.volume.clone());
        }
        self.jobs.insert(
            job.volume.clone(),
            Entry {
                job,
                slot: Slot::Ready(key),
            },
        );
    }

    /// Moves delayed jobs whose time has come to the ready sets (each job once per retry).
    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let volume = entry.remove();
            if let Some(pending) = self.jobs.remove(&volume) {
                self.insert_ready(pending.job);
            }
        }
    }
}

fn queued<'a>(name: &'a str, entry: &Entry) -> QueuedJob<'a> {
    QueuedJob {
        volume: name,
        id: entry.job.id,
        kind: entry.job.kind,
        queued_at: entry.job.queued_at,
        attempts: entry.job.attempts,
        demanded: entry.job.demanded,
        not_before: match entry.slot {
            Slot::Ready(_) => None,
            Slot::Delayed(key) => Some(key.0),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn comparisons() -> u64 {
        COMPARISONS.with(|c| c.get())
    }

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    #[test]
    fn fifo_within_a_class_and_demand_first() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        for name in ["a", "b", "c", "d"] {
            q.push(name, JobKind::Create, t);
        }
        assert!(q.demand("c"));
        assert!(q.demand("c"), "demanding twice is harmless");
        assert!(q.demand("d"));
        assert!(!q.demand("nothing"));
        let order: Vec<String> = std::iter::from_fn(|| q.pop_ready(t))
            .map(|j| j.volume)
            .collect();
        assert_eq!(order, ["c", "d", "a", "b"]);
        assert!(q.is_empty());
    }

    #[test]
    fn combinations_for_one_volume() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        // Create then Grow: still one Create, same place.
        let id = q.push("v", JobKind::Create, t);
        assert_eq!(q.push("v", JobKind::Grow(10), t), id);
        assert_eq!(q.get("v").unwrap().kind, JobKind::Create);
        // Then Destroy before it ran: just a Destroy, fresh.
        let destroy = q.push("v", JobKind::Destroy, ms(t, 5));
        assert_ne!(destroy, id);
        let job = q.get("v").unwrap();
        assert_eq!((job.kind, job.queued_at), (JobKind::Destroy, ms(t, 5)));
        // Destroy twice: one job.
        assert_eq!(q.push("v", JobKind::Destroy, ms(t, 6)), destroy);
        // Declared again: the destroy is cancelled.
        let create = q.push("v", JobKind::Create, ms(t, 7));
        assert_ne!(create, destroy);
        assert_eq!(q.get("v").unwrap().kind, JobKind::Create);
        assert_eq!(q.len(), 1);
        // Grow then Grow: the newer size; Grow then Create: Create.
        let mut q = JobQueue::new();
        q.push("g", JobKind::Grow(10), t);
        q.push("g", JobKind::Grow(20), t);
        assert_eq!(q.get("g").unwrap().kind, JobKind::Grow(20));
        q.push("g", JobKind::Create, t);
        assert_eq!(q.get("g").unwrap().kind, JobKind::Create);
        // A demanded job that turns into a destroy is no longer demanded.
        q.demand("g");
        q.push("g", JobKind::Destroy, t);
        assert!(!q.get("g").unwrap().demanded);
        assert!(!q.demand("g"));
    }

    #[test]
    fn a_retry_waits_without_holding_up_others_and_keeps_its_place() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        q.push("a", JobKind::Create, t);
        q.push("b", JobKind::Create, t);
        q.push("c", JobKind::Create, t);
        let a = q.pop_ready(t).unwrap();
        q.retry_at(a, ms(t, 200));
        assert_eq!(q.next_wakeup(), Some(ms(t, 200)));
        assert_eq!(q.get("a").unwrap().not_before, Some(ms(t, 200)));
        assert_eq!(q.pop_ready(ms(t, 100)).unwrap().volume, "b");
        // Due: "a" is older than "c".
        let again = q.pop_ready(ms(t, 200)).unwrap();
        assert_eq!((again.volume.as_str(), again.attempts), ("a", 1));
        assert_eq!(q.pop_ready(ms(t, 200)).unwrap().volume, "c");
        assert_eq!(q.next_wakeup(), None);
    }

    #[test]
    fn a_retry_meets_a_newer_job_for_its_volume() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        // A Destroy queued while the Create ran wins over the Create's retry.
        q.push("v", JobKind::Create, t);
        let create = q.pop_ready(t).unwrap();
        let destroy = q.push("v", JobKind::Destroy, t);
        q.retry_at(create, ms(t, 100));
        let pending = q.get("v").unwrap();
        assert_eq!(
            (pending.id, pending.kind, pending.not_before),
            (destroy, JobKind::Destroy, None)
        );
        // A Create declared again while the Create ran: one job, delayed, demand kept.
        let mut q = JobQueue::new();
        q.push("v", JobKind::Create, t);
        let create = q.pop_ready(t).unwrap();
        q.push("v", JobKind::Create, t);
        q.demand("v");
        q.retry_at(create.clone(), ms(t, 100));
        let pending = q.get("v").unwrap();
        assert_eq!(
            (pending.id, pending.attempts, pending.demanded),
            (create.id, 1, true)
        );
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn destroys_come_out_in_one_batch() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        for i in 0..10 {
            q.push(&format!("d{i}"), JobKind::Destroy, t);
            q.push(&format!("c{i}"), JobKind::Create, t);
        }
        let first = q.pop_ready(t).unwrap();
        assert_eq!(
            (first.volume.as_str(), first.kind),
            ("d0", JobKind::Destroy)
        );
        let batch = q.pop_destroys(t, 100);
        assert_eq!(batch.len(), 9);
        assert!(batch.iter().all(|j| j.kind == JobKind::Destroy));
        assert_eq!(q.len(), 10);
        assert!(q.pop_destroys(t, 100).is_empty());
    }

    #[test]
    fn remove_forgets_a_job_wherever_it_is() {
        let t = Instant::now();
        let mut q = JobQueue::new();
        q.push("ready", JobKind::Create, t);
        q.push("destroy", JobKind::Destroy, t);
        q.push("late", JobKind::Create, t);
        let late = q.remove("late").unwrap();
        q.retry_at(late, ms(t, 50));
        assert_eq!(q.remove("ready").unwrap().volume, "ready");
        assert!(q.remove("destroy").is_some());
        assert!(q.remove("late").is_some());
        assert!(q.remove("late").is_none());
        assert!(q.is_empty());
        assert_eq!(q.next_wakeup(), None);
        assert!(q.pop_ready(ms(t, 100)).is_none());
    }

    /// 10,000 queued jobs: push, demand, pop, retry in a loop. The work is measured in key
    /// comparisons (the machine's speed plays no part): a scan of the queue would cost
    /// thousands per operation, the ordered maps cost a few dozen.
    #[test]
    fn ten_thousand_queued_jobs_cost_log_n_per_operation() {
        const JOBS: usize = 10_000;
        let t = Instant::now();
        let mut q = JobQueue::new();
        let before = comparisons();
        let mut operations = 0u64;
        for i in 0..JOBS {
            q.push(&format!("vol-{i:05}"), JobKind::Create, t);
            operations += 1;
        }
        assert_eq!(q.len(), JOBS);
        let mut now = t;
        let mut popped = Vec::new();
        let mut retries = 0;
        let mut step = 0u64;
        loop {
            let Some(job) = q.pop_ready(now) else {
                // Only retries are left: wait for the first.
                operations += 1;
                match q.next_wakeup() {
                    Some(at) => {
                        now = at;
                        continue;
                    }
                    None => break,
                }
            };
            operations += 1;
            step += 1;
            // Demand a job from the back of the queue now and then: it must come next.
            if step.is_multiple_of(97) {
                let target = format!("vol-{:05}", JOBS - 1 - (step as usize / 97));
                if q.demand(&target) {
                    operations += 1;
                    let next = q.pop_ready(now).unwrap();
                    operations += 1;
                    assert_eq!(next.volume, target);
                    popped.push(next.volume);
                }
            }
            // One job in ten is busy once: retried 1 ms later.
            if job.attempts == 0 && step.is_multiple_of(10) {
                q.retry_at(job, now + Duration::from_millis(1));
                operations += 1;
                retries += 1;
            } else {
                popped.push(job.volume);
            }
            now += Duration::from_micros(100);
            // Keep the queue large: re-queue new jobs while it drains.
            if step < 5_000 {
                q.push(&format!("late-{step:05}"), JobKind::Create, now);
                operations += 1;
            }
        }
        let total = JOBS + 4_999;
        assert_eq!(popped.len(), total, "every job ran once");
        popped.sort();
        popped.dedup();
        assert_eq!(popped.len(), total, "no job ran twice");
        println!("{retries} retries");
        assert!(
            retries > 500,
            "a retry lands on every tenth step now and then: {retries}"
        );
        let per_operation = (comparisons() - before) / operations;
        println!("{operations} operations, {per_operation} key comparisons each on average");
        assert!(
            per_operation < 64,
            "{per_operation} comparisons per operation"
        );
    }

    /// The same semantics, the obvious way: a list scanned on every call.
    #[derive(Default)]
    struct Model {
        jobs: Vec<(Job, Option<Instant>)>,
        next_id: JobId,
    }

    impl Model {
        fn position(&self, volume: &str) -> Option<usize> {
            self.jobs.iter().position(|(j, _)| j.volume == volume)
        }
        fn fresh(&mut self, volume: &str, kind: JobKind, now: Instant) -> JobId {
            self.next_id += 1;
            let job = Job {
                id: self.next_id,
                volume: volume.into(),
                kind,
                queued_at: now,
                attempts: 0,
                demanded: false,
            };
            self.jobs.push((job, None));
            self.next_id
        }
        fn push(&mut self, volume: &str, kind: JobKind, now: Instant) -> JobId {
            match self.position(volume) {
                None => self.fresh(volume, kind, now),
                Some(i) => {
                    let old = self.jobs[i].0.kind;
                    let same_intent = (old == JobKind::Destroy) == (kind == JobKind::Destroy);
                    if !same_intent {
                        self.jobs.remove(i);
                        return self.fresh(volume, kind, now);
                    }
                    let job = &mut self.jobs[i].0;
                    job.kind = match (old, kind) {
                        (JobKind::Grow(_), JobKind::Grow(n)) => JobKind::Grow(n),
                        (JobKind::Destroy, _) => JobKind::Destroy,
                        _ => JobKind::Create,
                    };
                    job.id
                }
            }
        }
        fn demand(&mut self, volume: &str) -> bool {
            match self.position(volume) {
                Some(i) if self.jobs[i].0.kind != JobKind::Destroy => {
                    self.jobs[i].0.demanded = true;
                    true
                }
                _ => false,
            }
        }
        fn rank(job: &Job) -> (u8, JobId) {
            (
                u8::from(!(job.demanded && job.kind != JobKind::Destroy)),
                job.id,
            )
        }
        fn pop_ready(&mut self, now: Instant) -> Option<Job> {
            let best = self
                .jobs
                .iter()
                .enumerate()
                .filter(|(_, (_, at))| at.is_none_or(|at| at <= now))
                .min_by_key(|(_, (j, _))| Model::rank(j))
                .map(|(i, _)| i)?;
            Some(self.jobs.remove(best).0)
        }
        fn pop_destroys(&mut self, now: Instant, max: usize) -> Vec<Job> {
            let mut out = Vec::new();
            while out.len() < max {
                let best = self
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, (j, at))| {
                        j.kind == JobKind::Destroy && at.is_none_or(|at| at <= now)
                    })
                    .min_by_key(|(_, (j, _))| j.id)
                    .map(|(i, _)| i);
                let Some(i) = best else { break };
                out.push(self.jobs.remove(i).0);
            }
            out
        }
        fn retry_at(&mut self, mut job: Job, at: Instant) {
            job.attempts += 1;
            if let Some(i) = self.position(&job.volume) {
                let pending = self.jobs[i].0.clone();
                let same_intent =
                    (pending.kind == JobKind::Destroy) == (job.kind == JobKind::Destroy);
                if !same_intent {
                    return;
                }
                job.kind = match (job.kind, pending.kind) {
                    (JobKind::Grow(_), JobKind::Grow(n)) => JobKind::Grow(n),
                    (JobKind::Destroy, _) => JobKind::Destroy,
                    _ => JobKind::Create,
                };
                job.demanded |= pending.demanded && job.kind != JobKind::Destroy;
                self.jobs.remove(i);
            }
            self.jobs.push((job, Some(at)));
        }
        fn remove(&mut self, volume: &str) -> Option<Job> {
            self.position(volume).map(|i| self.jobs.remove(i).0)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u8, JobKind),
        Demand(u8),
        PopReady,
        PopDestroys(usize),
        Retry(usize, u64),
        Remove(u8),
        Advance(u64),
    }

    fn kind() -> impl Strategy<Value = JobKind> {
        prop_oneof![
            Just(JobKind::Create),
            (1u64..4).prop_map(JobKind::Grow),
            Just(JobKind::Destroy),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..6, kind()).prop_map(|(v, k)| Op::Push(v, k)),
            1 => (0u8..6).prop_map(Op::Demand),
            2 => Just(Op::PopReady),
            1 => (0usize..4).prop_map(Op::PopDestroys),
            2 => (0usize..8, 0u64..300).prop_map(|(i, d)| Op::Retry(i, d)),
            1 => (0u8..6).prop_map(Op::Remove),
            1 => (0u64..200).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_scanned_list(ops in proptest::collection::vec(op(), 1..200)) {
            let start = Instant::now();
            let mut now = start;
            let mut q = JobQueue::new();
            let mut model = Model::default();
            // Jobs popped and not yet handed back (the same job on both sides).
            let mut running: Vec<Job> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(v, kind) => {
                        let name = format!("v{v}");
                        prop_assert_eq!(q.push(&name, kind, now), model.push(&name, kind, now));
                    }
                    Op::Demand(v) => {
                        let name = format!("v{v}");
                        prop_assert_eq!(q.demand(&name), model.demand(&name));
                    }
                    Op::PopReady => {
                        let got = q.pop_ready(now);
                        prop_assert_eq!(&got, &model.pop_ready(now));
                        running.extend(got);
                    }
                    Op::PopDestroys(max) => {
                        let got = q.pop_destroys(now, max);
                        prop_assert_eq!(&got, &model.pop_destroys(now, max));
                        running.extend(got);
                    }
                    Op::Retry(i, delay) => {
                        if !running.is_empty() {
                            let job = running.remove(i % running.len());
                            let at = now + Duration::from_millis(delay);
                            q.retry_at(job.clone(), at);
                            model.retry_at(job, at);
                        }
                    }
                    Op::Remove(v) => {
                        let name = format!("v{v}");
                        prop_assert_eq!(q.remove(&name), model.remove(&name));
                    }
                    Op::Advance(by) => now += Duration::from_millis(by),
                }
                prop_assert_eq!(q.len(), model.jobs.len());
                let earliest = model.jobs.iter().filter_map(|(_, at)| *at).min();
                // The queue forgets a delay once the job is promoted; compare only future ones.
                if let Some(at) = q.next_wakeup() {
                    prop_assert!(earliest.is_some_and(|e| e <= at));
                }
                for (job, _) in &model.jobs {
                    let queued = q.get(&job.volume).unwrap();
                    prop_assert_eq!((queued.id, queued.kind, queued.attempts, queued.demanded),
                        (job.id, job.kind, job.attempts, job.demanded));
                }
            }
        }
    }
}
