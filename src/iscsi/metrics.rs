//! The counters behind keel's Prometheus metrics, kept off the shared state of the command
//! path.
//!
//! A command's accounting (its LUN's commands, bytes and latency) is written to counter
//! blocks that belong to its connection: every task of a connection runs on the one thread
//! the connection was dealt to (`server/threads.rs`), and only the connection's reader writes
//! them ([`ConnectionStats::record`], on the completion each command already reports). A
//! single writer needs no read-modify-write instruction: a Relaxed load and a Relaxed store
//! (plain moves on x86-64 and arm64), on a cache line no other connection writes
//! ([`LunCounters`] is 64-byte aligned). Nothing is locked and no line is shared per command.
//!
//! The list of live blocks ([`Metrics`]) changes only when a connection starts, when it
//! first uses a LUN, and when it ends — then its blocks are folded into the retired totals, in
//! the same critical section that removes them, so a scrape never counts a connection twice
//! or loses it. A scrape ([`Metrics::lun_totals`]) sums retired and live blocks; it may read
//! a block while its writer writes, and sees each counter either before or after the
//! command, which is all a monotonic counter needs. A histogram's count is the sum of its
//! buckets, so the two always agree.
//!
//! Logins and task management functions are rare: they are counted under a mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::scsi::{CommandClass, ScsiResponse, ScsiStatus};

use super::session_core::tmf_code;

/// Latency buckets: upper bounds of 2^(k+4) µs for k in 0..20 (16 µs to about 8.4 s),
/// then +Inf. Log-scale, fixed: a command's bucket is found with one leading-zero count.
pub const LATENCY_BOUNDS: usize = 20;
const BUCKET_SLOTS: usize = LATENCY_BOUNDS + 1;
/// log2 of the first bucket's bound in µs.
const FIRST_BOUND_LOG2_MICROS: u32 = 4;

/// The upper bound of bucket `i` in seconds (`i < LATENCY_BOUNDS`).
pub fn bucket_bound_seconds(i: usize) -> f64 {
    (1u64 << (i as u32 + FIRST_BOUND_LOG2_MICROS)) as f64 / 1e6
}

/// The bucket a command of `nanos` falls in: the first whose bound is at least its
/// duration rounded up to whole µs.
fn bucket_of(nanos: u64) -> usize {
    let micros = nanos.div_ceil(1000);
    // ceil(log2(micros)), with 0 and 1 µs in the first bucket.
    let ceil_log2 = u64::BITS - micros.saturating_sub(1).leading_zeros();
    (ceil_log2.saturating_sub(FIRST_BOUND_LOG2_MICROS) as usize).min(LATENCY_BOUNDS)
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// What one finished command adds to its LUN's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandSample {
    pub lun: u64,
    pub class: CommandClass,
    /// Medium bytes read or written (0 for other commands and for failed ones).
    pub bytes: u64,
    /// From the start of its execution (all its write data received) to its outcome.
    pub nanos: u64,
}

impl CommandSample {
    /// The sample of a command of `class` that ended with `outcome`, having sent
    /// `data_in_sent` bytes of read data and received `data_out_received` bytes of write data
    /// (at most its expected transfer length). None when the target has no such LUN: the
    /// initiator picks the LUN, and counting LUNs that do not exist would let it make
    /// counter blocks and exported series without bound.
    pub fn new(
        lun: u64,
        class: CommandClass,
        outcome: &ScsiResponse,
        data_in_sent: usize,
        data_out_received: usize,
        nanos: u64,
    ) -> Option<CommandSample> {
        if outcome.block_size == 0 {
            return None;
        }
        let good = outcome.status == ScsiStatus::Good;
        let bytes = match class {
            CommandClass::Read if good => data_in_sent as u64,
            CommandClass::Write if good => written_bytes(outcome, data_out_received),
            _ => 0,
        };
        Some(CommandSample {
            lun,
            class,
            bytes,
            nanos,
        })
    }
}

/// What a good medium write wrote: the whole blocks of its data received, at most what its
/// CDB's TRANSFER LENGTH asked for (SBC-4 §5.40; FCP-4 §9.4.2 for data short of it).
fn written_bytes(outcome: &ScsiResponse, data_out_received: usize) -> u64 {
    let block_size = u64::from(outcome.block_size);
    let received = data_out_received as u64;
    let whole_blocks = received.checked_div(block_size).unwrap_or(0) * block_size;
    u64::from(outcome.data_out_used).min(whole_blocks)
}

/// One command class's counters in one [`LunCounters`] block.
#[derive(Debug, Default)]
struct ClassCounters {
    bytes: AtomicU64,
    duration_nanos: AtomicU64,
    /// Commands per latency bucket (not cumulative); their sum is the command count.
    buckets: [AtomicU64; BUCKET_SLOTS],
}

/// One connection's counters for one LUN: written by the connection's thread only.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct LunCounters {
    classes: [ClassCounters; 3],
}

impl LunCounters {
    /// Counts one command: single writer, no read-modify-write.
    #[inline]
    pub fn record(&self, class: CommandClass, bytes: u64, nanos: u64) {
        let counters = &self.classes[class as usize];
        bump(&counters.buckets[bucket_of(nanos)], 1);
        if bytes != 0 {
            bump(&counters.bytes, bytes);
        }
        bump(&counters.duration_nanos, nanos);
    }
}

/// A snapshot of one command class of one LUN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassTotals {
    pub bytes: u64,
    pub duration_nanos: u64,
    /// Per bucket (not cumulative); the last is +Inf.
    pub buckets: [u64; BUCKET_SLOTS],
}

impl ClassTotals {
    pub fn commands(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// A snapshot of a LUN's counters, summed over connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LunTotals {
    /// Indexed by `CommandClass as usize`.
    pub classes: [ClassTotals; 3],
}

impl LunTotals {
    pub fn class(&self, class: CommandClass) -> &ClassTotals {
        &self.classes[class as usize]
    }

    fn add_block(&mut self, block: &LunCounters) {
        for (total, live) in self.classes.iter_mut().zip(&block.classes) {
            total.bytes = total.bytes.wrapping_add(live.bytes.load(Ordering::Relaxed));
            total.duration_nanos = total
                .duration_nanos
                .wrapping_add(live.duration_nanos.load(Ordering::Relaxed));
            for (t, l) in total.buckets.iter_mut().zip(&live.buckets) {
                *t = t.wrapping_add(l.load(Ordering::Relaxed));
            }
        }
    }
}

/// What a scrape or a status report sees of one live connection.
#[derive(Debug)]
pub struct ConnectionCounters {
    target: String,
    /// Commands the session knows of (arrived, not yet finished): the core's task count,
    /// stored by the reader after each event.
    in_flight: AtomicU64,
    /// This connection's block per LUN it has used: pushed to on a LUN's first command.
    luns: Mutex<Vec<(u64, Arc<LunCounters>)>>,
}

impl ConnectionCounters {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn luns(&self) -> MutexGuard<'_, Vec<(u64, Arc<LunCounters>)>> {
        self.luns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The outcome class of a login (RFC 7143 §11.13.5: the Status-Class of the final Login
/// Response).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoginResult {
    Success,
    Redirect,
    InitiatorError,
    TargetError,
}

impl LoginResult {
    pub fn of_status_class(class: u8) -> LoginResult {
        match class {
            0 => LoginResult::Success,
            1 => LoginResult::Redirect,
            2 => LoginResult::InitiatorError,
            _ => LoginResult::TargetError,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::Redirect => "redirect",
            LoginResult::InitiatorError => "initiator_error",
            LoginResult::TargetError => "target_error",
        }
    }
}

/// The name of a task management function code (RFC 7143 §11.5.1).
pub fn tmf_function_name(function: u8) -> &'static str {
    match function {
        tmf_code::ABORT_TASK => "abort_task",
        tmf_code::ABORT_TASK_SET => "abort_task_set",
        tmf_code::CLEAR_ACA => "clear_aca",
        tmf_code::CLEAR_TASK_SET => "clear_task_set",
        tmf_code::LOGICAL_UNIT_RESET => "logical_unit_reset",
        tmf_code::TARGET_WARM_RESET => "target_warm_reset",
        tmf_code::TARGET_COLD_RESET => "target_cold_reset",
        tmf_code::TASK_REASSIGN => "task_reassign",
        _ => "unknown",
    }
}

/// The name of a task management response code (RFC 7143 §11.6.1).
pub fn tmf_response_name(response: u8) -> &'static str {
    match response {
        tmf_code::COMPLETE => "complete",
        tmf_code::NO_TASK => "no_task",
        tmf_code::NO_LUN => "no_lun",
        tmf_code::REASSIGN_NOT_SUPPORTED => "reassign_not_supported",
        tmf_code::NOT_SUPPORTED => "not_supported",
        255 => "rejected",
        _ => "other",
    }
}

/// Task management functions counted by (target, function, response).
pub type TmfCounts = BTreeMap<(String, &'static str, &'static str), u64>;

/// Every connection's counters, and the totals of those that have ended.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Tallies>,
}

#[derive(Debug, Default)]
struct Tallies {
    next_id: u64,
    live: HashMap<u64, Arc<ConnectionCounters>>,
    /// Totals of ended connections by (target, LUN).
    retired: BTreeMap<(String, u64), LunTotals>,
    /// Logins by (target, result); the target is empty where none was named or found.
    logins: BTreeMap<(String, LoginResult), u64>,
    tmfs: TmfCounts,
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, Tallies> {
        // Every update is a single insert or addition: a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection to `target` in its full feature phase; its counters count
    /// until the returned handle is dropped, then fold into the retired totals.
    pub fn connection(&self, target: &str) -> ConnectionStats<'_> {
        let shared = Arc::new(ConnectionCounters {
            target: target.to_owned(),
            in_flight: AtomicU64::new(0),
            luns: Mutex::new(Vec::new()),
        });
        let mut tallies = self.lock();
        let id = tallies.next_id;
        tallies.next_id += 1;
        tallies.live.insert(id, Arc::clone(&shared));
        ConnectionStats {
            metrics: self,
            id,
            shared,
            luns: Vec::new(),
        }
    }

    /// Counts a login that ended with `status_class` (0 success).
    pub fn count_login(&self, target: &str, status_class: u8) {
        let key = (
            target.to_owned(),
            LoginResult::of_status_class(status_class),
        );
        *self.lock().logins.entry(key).or_default() += 1;
    }

    /// Counts a task management function and its response.
    pub fn count_task_management(&self, target: &str, function: u8, response: u8) {
        let key = (
            target.to_owned(),
            tmf_function_name(function),
            tmf_response_name(response),
        );
        *self.lock().tmfs.entry(key).or_default() += 1;
    }

    /// Every LUN's totals so far, by (target, LUN): ended connections plus live ones.
    pub fn lun_totals(&self) -> BTreeMap<(String, u64), LunTotals> {
        let tallies = self.lock();
        let mut totals = tallies.retired.clone();
        for connection in tallies.live.values() {
            for (lun, block) in connection.luns().iter() {
                totals
                    .entry((connection.target.clone(), *lun))
                    .or_default()
                    .add_block(block);
            }
        }
        totals
    }

    /// Logins by (target, result).
    pub fn logins(&self) -> BTreeMap<(String, LoginResult), u64> {
        self.lock().logins.clone()
    }

    /// Task management functions by (target, function, response).
    pub fn task_management(&self) -> TmfCounts {
        self.lock().tmfs.clone()
    }

    /// Keeps the counts of the targets `names` (the empty name always stays) and the retired
    /// totals of the LUNs `luns`, and forgets the rest: a server that adds and removes many
    /// keeps memory (and the exported series) bounded. Live connections of a removed target
    /// or LUN keep their blocks until they end. [`super::Service::forget_removed_metrics`]
    /// calls it with what exists.
    pub fn forget_all_but(&self, names: &BTreeSet<String>, luns: &BTreeSet<(String, u64)>) {
        let mut tallies = self.lock();
        let kept = |target: &String| target.is_empty() || names.contains(target);
        tallies.retired.retain(|key, _| luns.contains(key));
        tallies.logins.retain(|(target, _), _| kept(target));
        tallies.tmfs.retain(|(target, _, _), _| kept(target));
    }
}

/// A connection's own side of its counters: the reader owns it. Dropping it folds the
/// connection's counts into the retired totals.
#[derive(Debug)]
pub struct ConnectionStats<'a> {
    metrics: &'a Metrics,
    id: u64,
    shared: Arc<ConnectionCounters>,
    /// The same blocks as `shared.luns`, looked up without its lock.
    luns: Vec<(u64, Arc<LunCounters>)>,
}

impl ConnectionStats<'_> {
    /// What others may read of this connection (commands in flight).
    pub fn shared(&self) -> &Arc<ConnectionCounters> {
        &self.shared
    }

    /// Counts one finished command (see [`Self::record`]).
    #[inline]
    pub fn record_sample(&mut self, sample: &CommandSample) {
        self.record(sample.lun, sample.class, sample.bytes, sample.nanos);
    }

    /// Counts one finished command. The block of a LUN this connection has not used yet is
    /// made and published here, once per LUN; otherwise nothing is shared or locked.
    #[inline]
    pub fn record(&mut self, lun: u64, class: CommandClass, bytes: u64, nanos: u64) {
        // A connection uses few LUNs: a linear search beats hashing.
        let block = match self.luns.iter().find(|(l, _)| *l == lun) {
            Some((_, block)) => block,
            None => self.add_lun(lun),
        };
        block.record(class, bytes, nanos);
    }

    #[cold]
    fn add_lun(&mut self, lun: u64) -> &Arc<LunCounters> {
        let block = Arc::new(LunCounters::default());
        self.shared.luns().push((lun, Arc::clone(&block)));
        self.luns.push((lun, block));
        &self.luns[self.luns.len() - 1].1
    }

    /// Publishes the number of commands in flight (single writer).
    #[inline]
    pub fn set_in_flight(&self, commands: usize) {
        self.shared
            .in_flight
            .store(commands as u64, Ordering::Relaxed);
    }
}

impl Drop for ConnectionStats<'_> {
    fn drop(&mut self) {
        let mut tallies = self.metrics.lock();
        // Removed and folded in one critical section: a scrape sees it live or retired.
        tallies.live.remove(&self.id);
        let target = self.shared.target.clone();
        for (lun, block) in self.shared.luns().iter() {
            tallies
                .retired
                .entry((target.clone(), *lun))
                .or_default()
                .add_block(block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_microseconds() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(16_000), 0);
        assert_eq!(bucket_of(16_001), 1);
        assert_eq!(bucket_of(32_000), 1);
        assert_eq!(bucket_of(1_000_000), 6); // 1 ms <= 1024 µs
        assert_eq!(bucket_of(u64::MAX), LATENCY_BOUNDS);
        assert_eq!(bucket_bound_seconds(0), 16e-6);
        // Every duration lands in the first bucket whose bound holds it.
        for nanos in [
            1,
            999,
            15_999,
            17_000,
            5_000_000,
            8_000_000_000,
            9_000_000_000,
        ] {
            let b = bucket_of(nanos);
            if b < LATENCY_BOUNDS {
                assert!(
                    nanos as f64 / 1e9 <= bucket_bound_seconds(b) + 1e-12,
                    "{nanos}"
                );
            }
            if b > 0 {
                assert!(nanos as f64 / 1e9 > bucket_bound_seconds(b - 1), "{nanos}");
            }
        }
    }

    #[test]
    fn a_sample_counts_medium_bytes_of_good_reads_and_writes_only() {
        let mut write = ScsiResponse::status(ScsiStatus::Good);
        write.data_out_used = 65_536;
        write.block_size = 512;
        assert_eq!(
            CommandSample::new(0, CommandClass::Write, &write, 0, 65_536, 1).map(|s| s.bytes),
            Some(65_536)
        );
        let mut read = ScsiResponse::good(bytes::Bytes::from(vec![0u8; 4096]));
        read.block_size = 512;
        assert_eq!(
            CommandSample::new(0, CommandClass::Read, &read, 1024, 0, 1).map(|s| s.bytes),
            Some(1024)
        );
        assert_eq!(
            CommandSample::new(0, CommandClass::Other, &read, 4096, 0, 1).map(|s| s.bytes),
            Some(0)
        );
        let mut failed = ScsiResponse::status(ScsiStatus::CheckCondition);
        failed.data_out_used = 512;
        failed.block_size = 512;
        assert_eq!(
            CommandSample::new(0, CommandClass::Write, &failed, 0, 512, 1).map(|s| s.bytes),
            Some(0)
        );
    }

    #[test]
    fn a_short_write_counts_the_whole_blocks_it_received() {
        // WRITE(10) of 2 blocks with 1 block and a half of data (EDTL): GOOD, 1 block
        // written (target.rs, short_write_data_follows_fcp4).
        let mut short = ScsiResponse::status(ScsiStatus::Good);
        short.data_out_used = 2 * 4096;
        short.block_size = 4096;
        assert_eq!(
            CommandSample::new(0, CommandClass::Write, &short, 0, 4096 + 2048, 1).map(|s| s.bytes),
            Some(4096)
        );
        // Data beyond the CDB's transfer length is never written.
        assert_eq!(
            CommandSample::new(0, CommandClass::Write, &short, 0, 3 * 4096, 1).map(|s| s.bytes),
            Some(2 * 4096)
        );
    }

    #[test]
    fn commands_to_luns_that_do_not_exist_are_not_counted() {
        // Answered without a logical unit (block size 0): the initiator chose the LUN.
        let no_lun = ScsiResponse::good(bytes::Bytes::from(vec![0u8; 96]));
        assert_eq!(
            CommandSample::new(7, CommandClass::Other, &no_lun, 96, 0, 1),
            None
        );
    }

    #[test]
    fn removed_targets_and_luns_are_forgotten() {
        let metrics = Metrics::default();
        let mut connection = metrics.connection("t");
        connection.record(0, CommandClass::Write, 512, 1);
        connection.record(1, CommandClass::Write, 512, 1);
        drop(connection);
        metrics
            .connection("gone")
            .record(0, CommandClass::Read, 512, 1);
        metrics.count_login("gone", 0);
        // Target t with LUN 0 only.
        let names = BTreeSet::from(["t".to_owned()]);
        let luns = BTreeSet::from([("t".to_owned(), 0)]);
        metrics.forget_all_but(&names, &luns);
        let keys: Vec<_> = metrics.lun_totals().into_keys().collect();
        assert_eq!(keys, [("t".to_owned(), 0)]);
        assert!(metrics.logins().is_empty());
    }

    #[test]
    fn a_block_fills_one_cache_line_of_its_own() {
        assert_eq!(std::mem::align_of::<LunCounters>(), 64);
    }

    #[test]
    fn live_connections_count_and_fold_into_retired_totals_when_they_end() {
        let metrics = Metrics::default();
        let mut a = metrics.connection("t");
        let mut b = metrics.connection("t");
        a.record(0, CommandClass::Write, 4096, 50_000);
        a.record(0, CommandClass::Read, 512, 10_000);
        b.record(0, CommandClass::Write, 8192, 70_000);
        b.record(3, CommandClass::Other, 0, 1_000);
        let live = metrics.lun_totals();
        let lun0 = &live[&("t".to_owned(), 0)];
        assert_eq!(lun0.class(CommandClass::Write).bytes, 12_288);
        assert_eq!(lun0.class(CommandClass::Write).commands(), 2);
        assert_eq!(lun0.class(CommandClass::Write).duration_nanos, 120_000);
        assert_eq!(lun0.class(CommandClass::Read).bytes, 512);
        assert_eq!(
            live[&("t".to_owned(), 3)]
                .class(CommandClass::Other)
                .commands(),
            1
        );

        a.set_in_flight(5);
        assert_eq!(a.shared().in_flight(), 5);
        drop(a);
        // Folded: the totals are unchanged, and keep growing with the live one.
        assert_eq!(metrics.lun_totals(), live);
        b.record(0, CommandClass::Write, 1, 1);
        drop(b);
        let after = metrics.lun_totals();
        assert_eq!(
            after[&("t".to_owned(), 0)].class(CommandClass::Write).bytes,
            12_289
        );
        assert!(metrics.lock().live.is_empty());

        metrics.forget_all_but(&BTreeSet::new(), &BTreeSet::new());
        assert!(metrics.lun_totals().is_empty());
    }

    #[test]
    fn logins_and_task_management_are_counted_by_class() {
        let metrics = Metrics::default();
        metrics.count_login("t", 0);
        metrics.count_login("t", 0);
        metrics.count_login("", 2);
        metrics.count_login("t", 3);
        let logins = metrics.logins();
        assert_eq!(logins[&("t".to_owned(), LoginResult::Success)], 2);
        assert_eq!(logins[&(String::new(), LoginResult::InitiatorError)], 1);
        assert_eq!(logins[&("t".to_owned(), LoginResult::TargetError)], 1);
        metrics.count_task_management("t", tmf_code::ABORT_TASK, tmf_code::NO_TASK);
        assert_eq!(
            metrics.task_management()[&("t".to_owned(), "abort_task", "no_task")],
            1
        );
        metrics.forget_all_but(&BTreeSet::new(), &BTreeSet::new());
        assert_eq!(metrics.logins().len(), 1, "the unnamed target stays");
    }
}
