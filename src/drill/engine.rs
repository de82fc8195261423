//! The drill's loop: connect (again), set up, keep commands in flight, judge what comes
//! back, and settle everything at the end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backoff::Backoff;
use super::block::{self, Stamp};
use super::conn::{Completion, Connection, Event, LoginSpec};
use super::ledger::{Ledger, Verdict};
use super::report::{Reporter, Summary};
use super::scsi::{self, Outcome, PrView, prin, prout};
use super::{Fatal, Options, Pattern, Stop};

/// Largest logical block the drill handles (one block per command).
const MAX_BLOCK: u32 = 1 << 20;
/// How long BUSY or TASK SET FULL holds back the next command.
const BUSY_PAUSE: Duration = Duration::from_millis(20);
/// How long a RESERVATION CONFLICT holds back the next command. The conflict is final for
/// its command (an error the drill reports), but another initiator holds the unit and will
/// keep doing so for a while: the drill goes on probing, not hammering (without the pause,
/// an unregistered drill sent 15,000 commands a second into a WERO reservation).
const CONFLICT_PAUSE: Duration = Duration::from_millis(100);
/// Setup commands answered with a unit attention or BUSY are sent again this many times.
const SETUP_ATTEMPTS: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    SpotRead,
    VerifyRead,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Write => "WRITE",
            Kind::SpotRead | Kind::VerifyRead => "READ",
        }
    }
}

#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    lba: u64,
    /// The write's sequence number (0 for reads).
    seq: u64,
    data: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Writing and reading.
    Running,
    /// Stopped: unanswered commands are settled, nothing new is written.
    Draining,
    /// Reading back every recorded LBA.
    FinalVerify,
    Done,
}

/// How a connection's run ended, when it was not lost.
enum End {
    Done,
    /// Stopped before the final read-back finished (second stop, or the grace ran out).
    GaveUp(&'static str),
}

/// Why a connection is given up.
type Dropped = String;

enum SetupError {
    Dropped(Dropped),
    Fatal(Fatal),
}

struct Drill {
    o: Options,
    lun: [u8; 8],
    spec: LoginSpec,
    run: u64,
    rng: u64,
    block_len: usize,
    ledger: Ledger,
    next_seq: u64,
    new_ops: u64,
    cursor: u64,
    retry: VecDeque<Op>,
    verify: VecDeque<u64>,
    on_wire: HashMap<u32, (Op, Instant)>,
    wire_lbas: HashSet<u64>,
    phase: Phase,
    end_at: Option<Instant>,
    grace_ends: Option<Instant>,
    hold_until: Option<Instant>,
    next_verify: Option<Instant>,
    last_completion: Option<Instant>,
    /// The persistent-reservation state the drill holds (or last saw), with a key.
    held: Option<PrView>,
    full_status_unsupported: bool,
    report: Reporter,
}

/// Runs the drill until its duration ends or `stop` is requested; returns the summary and
/// the event lines.
pub async fn run(o: Options, stop: Stop) -> Result<(Summary, Vec<String>), Fatal> {
    o.validate().map_err(Fatal::Usage)?;
    let run = getrandom::u64().unwrap_or(0x5eed_0000_0000_0001 ^ std::process::id() as u64);
    let mut random = [0u8; 5];
    let _ = getrandom::fill(&mut random);
    // ISID type 10b (random, RFC 7143 §11.12.5): one per drill, kept across reconnects.
    let isid = [0x80, random[0], random[1], random[2], random[3], random[4]];
    let spec = LoginSpec {
        portal: o.portal.clone(),
        initiator: o.initiator.clone(),
        target: o.target.clone(),
        isid,
    };
    let summary = Summary {
        portal: o.portal.clone(),
        target: o.target.clone(),
        lun: o.lun,
        initiator: o.initiator.clone(),
        isid: isid.iter().map(|b| format!("{b:02x}")).collect(),
        run_id: format!("{run:016x}"),
        first_lba: o.first_lba,
        blocks: o.blocks,
        ..Summary::default()
    };
    let now = Instant::now();
    let mut d = Drill {
        lun: scsi::encode_lun(o.lun),
        spec,
        run,
        rng: run | 1,
        block_len: 0,
        ledger: Ledger::new(run),
        next_seq: 1,
        new_ops: 0,
        cursor: 0,
        retry: VecDeque::new(),
        verify: VecDeque::new(),
        on_wire: HashMap::new(),
        wire_lbas: HashSet::new(),
        phase: Phase::Running,
        end_at: o.duration.map(|t| now + t),
        grace_ends: None,
        hold_until: None,
        next_verify: None,
        last_completion: None,
        held: None,
        full_status_unsupported: false,
        report: Reporter::new(o.print_events, summary),
        o,
    };
    d.report.event(&format!(
        "drill of {} LUN {} at {} as {} (ISID {}, run {})",
        d.o.target,
        d.o.lun,
        d.o.portal,
        d.o.initiator,
        d.report.summary.isid,
        d.report.summary.run_id
    ));
    d.drive(&stop).await?;
    Ok(d.report.finish())
}

impl Drill {
    async fn drive(&mut self, stop: &Stop) -> Result<(), Fatal> {
        let mut set_up = false;
        let mut down_since: Option<Instant> = None;
        loop {
            let Some(mut conn) = self.connect(stop, set_up).await? else {
                break;
            };
            if let Some(since) = down_since.take() {
                self.report.summary.reconnects += 1;
                self.report.event(&format!(
                    "reconnected after {} ms (same ISID)",
                    since.elapsed().as_millis()
                ));
            }
            let prepared = if set_up {
                self.after_reconnect(&mut conn).await
            } else {
                match self.setup(&mut conn).await {
                    Ok(()) => {
                        set_up = true;
                        Ok(())
                    }
                    Err(SetupError::Fatal(f)) => {
                        conn.logout(Duration::from_secs(2)).await;
                        return Err(f);
                    }
                    Err(SetupError::Dropped(why)) => Err(why),
                }
            };
            let outcome = match prepared {
                Ok(()) => self.pump(&mut conn, stop).await,
                Err(why) => Err(why),
            };
            match outcome {
                Ok(End::Done) => {
                    self.release(&mut conn).await;
                    conn.logout(Duration::from_secs(2)).await;
                    self.report.event("done; logged out");
                    return Ok(());
                }
                Ok(End::GaveUp(why)) => {
                    self.report.event(&format!("giving up: {why}"));
                    conn.logout(Duration::from_secs(2)).await;
                    break;
                }
                Err(why) => {
                    self.dropped(&why);
                    down_since = Some(Instant::now());
                }
            }
        }
        // Not done: stopped hard, or never back in time.
        if !set_up {
            self.report
                .error("never logged in and set up the LU; nothing was written".into());
            return Ok(());
        }
        let unverified = if self.phase == Phase::FinalVerify {
            self.verify.len()
        } else {
            self.ledger.recorded().len()
        };
        if unverified > 0 {
            self.report.error(format!(
                "the final read-back did not complete: {unverified} recorded LBAs not verified"
            ));
        }
        let open = self
            .retry
            .iter()
            .filter(|op| op.kind == Kind::Write)
            .count();
        if open > 0 {
            self.report.event(&format!(
                "{open} writes were never acknowledged (their fate stays open)"
            ));
        }
        Ok(())
    }

    /// Moves to draining when the duration is over or a stop was asked for.
    fn check_clock(&mut self, stop: &Stop) {
        if self.phase != Phase::Running {
            return;
        }
        let now = Instant::now();
        let why = if stop.requested() {
            "stop requested"
        } else if self.end_at.is_some_and(|end| now >= end) {
            "duration reached"
        } else {
            return;
        };
        self.phase = Phase::Draining;
        self.grace_ends = Some(now + self.o.grace);
        self.report.event(&format!(
            "{why}: settling unanswered commands, then a final read-back"
        ));
    }

    fn grace_over(&self) -> bool {
        self.grace_ends.is_some_and(|t| Instant::now() >= t)
    }

    /// Logs in, again and again with backoff, until it works or the drill is over.
    async fn connect(&mut self, stop: &Stop, set_up: bool) -> Result<Option<Connection>, Fatal> {
        let mut backoff = Backoff::standard();
        let mut attempts = 0u32;
        let mut refusal_reported = false;
        loop {
            self.check_clock(stop);
            if stop.aborted() || self.grace_over() || (!set_up && self.phase != Phase::Running) {
                return Ok(None);
            }
            attempts += 1;
            let failure =
                match tokio::time::timeout(self.o.command_timeout, Connection::login(&self.spec))
                    .await
                {
                    Ok(Ok(conn)) => return Ok(Some(conn)),
                    Ok(Err(e)) if e.is_permanent_refusal() && !set_up => {
                        return Err(Fatal::Setup(format!("{}: {e}", self.o.target)));
                    }
                    Ok(Err(e)) if e.is_permanent_refusal() => {
                        if !refusal_reported {
                            refusal_reported = true;
                            self.report.error(format!("login: {e} (still retrying)"));
                        }
                        e.to_string()
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!(
                        "login took longer than {} s",
                        self.o.command_timeout.as_secs_f64()
                    ),
                };
            if attempts == 1 || attempts.is_multiple_of(10) {
                self.report
                    .event(&format!("login attempt {attempts} failed: {failure}"));
            }
            let delay = backoff.next_delay();
            let level = stop.level();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.beyond(level) => {}
            }
        }
    }

    /// Notes a command's completion: the gap since the previous one is an I/O stall.
    fn completed_now(&mut self) {
        let now = Instant::now();
        if let Some(last) = self.last_completion {
            let gap = now - last;
            let ms = gap.as_millis() as u64;
            if ms > self.report.summary.longest_stall_ms {
                self.report.summary.longest_stall_ms = ms;
            }
            if gap >= self.o.stall_report {
                self.report
                    .event(&format!("I/O stall: no command completed for {ms} ms"));
            }
        }
        self.last_completion = Some(now);
    }

    /// One command to its end with nothing else in flight: unit attentions and BUSY are
    /// counted and the command is sent again.
    async fn exec(
        &mut self,
        conn: &mut Connection,
        what: &str,
        cdb: [u8; 16],
        read_len: u32,
        data: Bytes,
    ) -> Result<Completion, Dropped> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let c = match tokio::time::timeout(
                self.o.command_timeout,
                conn.execute(self.lun, cdb, read_len, data.clone()),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => {
                    return Err(format!(
                        "{what} got no status within {} s",
                        self.o.command_timeout.as_secs_f64()
                    ));
                }
            };
            self.completed_now();
            match c.outcome {
                Outcome::UnitAttention { .. } if attempt < SETUP_ATTEMPTS => {
                    self.report.summary.unit_attentions += 1;
                    self.report
                        .event(&format!("{} on {what}: sent again", c.outcome));
                }
                Outcome::Busy(_) if attempt < SETUP_ATTEMPTS => {
                    self.report.summary.busy += 1;
                    tokio::time::sleep(BUSY_PAUSE).await;
                }
                _ => return Ok(c),
            }
        }
    }

    /// The first connection: the LU answers, its block size, the region fits, and the
    /// reservation is taken.
    async fn setup(&mut self, conn: &mut Connection) -> Result<(), SetupError> {
        let c = self
            .exec(
                conn,
                "TEST UNIT READY",
                scsi::test_unit_ready(),
                0,
                Bytes::new(),
            )
            .await
            .map_err(SetupError::Dropped)?;
        if c.outcome != Outcome::Good {
            return Err(SetupError::Fatal(Fatal::Setup(format!(
                "TEST UNIT READY of LUN {}: {}",
                self.o.lun, c.outcome
            ))));
        }
        let c = self
            .exec(
                conn,
                "READ CAPACITY (16)",
                scsi::read_capacity16(),
                32,
                Bytes::new(),
            )
            .await
            .map_err(SetupError::Dropped)?;
        let capacity = match (c.outcome, scsi::parse_read_capacity16(&c.data)) {
            (Outcome::Good, Some(cap)) => cap,
            (outcome, _) => {
                return Err(SetupError::Fatal(Fatal::Setup(format!(
                    "READ CAPACITY (16): {outcome} ({} bytes)",
                    c.data.len()
                ))));
            }
        };
        let (block_len, count) = capacity;
        if !(block::HEADER_LEN as u32..=MAX_BLOCK).contains(&block_len) {
            return Err(SetupError::Fatal(Fatal::Setup(format!(
                "the LU's block size {block_len} is outside what the drill handles (36..1 MiB)"
            ))));
        }
        let end = self.o.first_lba + self.o.blocks;
        if end > count {
            return Err(SetupError::Fatal(Fatal::Usage(format!(
                "LBAs {}..{} do not fit the LU's {count} blocks (--first-lba, --blocks)",
                self.o.first_lba,
                end - 1
            ))));
        }
        self.block_len = block_len as usize;
        self.report.summary.block_size = block_len;
        self.report.event(&format!(
            "LU has {count} blocks of {block_len} bytes; writing LBAs {}..{} (ImmediateData={}, InitialR2T={})",
            self.o.first_lba,
            end - 1,
            yes_no(conn.negotiated.immediate_data),
            yes_no(conn.negotiated.initial_r2t)
        ));
        if let Some(key) = self.o.pr_key {
            self.take_reservation(conn, key)
                .await
                .map_err(|e| match e {
                    Ok(why) => SetupError::Fatal(Fatal::Setup(why)),
                    Err(dropped) => SetupError::Dropped(dropped),
                })?;
        }
        self.next_verify = self.o.verify_every.map(|t| Instant::now() + t);
        Ok(())
    }

    /// Registers `key` (REGISTER AND IGNORE EXISTING KEY) and reserves when asked. The
    /// error is `Ok(refusal)` when the target refused, `Err(dropped)` when the connection
    /// went.
    async fn take_reservation(
        &mut self,
        conn: &mut Connection,
        key: u64,
    ) -> Result<(), Result<String, Dropped>> {
        let (cdb, params) = scsi::pr_out(
            prout::REGISTER_AND_IGNORE_EXISTING_KEY,
            None,
            0,
            key,
            self.o.pr_aptpl,
        );
        let c = self
            .exec(
                conn,
                "PERSISTENT RESERVE OUT (REGISTER)",
                cdb,
                0,
                Bytes::from(params),
            )
            .await
            .map_err(Err)?;
        if c.outcome != Outcome::Good {
            return Err(Ok(format!("registering key {key:#x}: {}", c.outcome)));
        }
        let mut what = format!(
            "registered key {key:#x}{}",
            if self.o.pr_aptpl { " (APTPL)" } else { "" }
        );
        if let Some(kind) = self.o.reserve {
            let (cdb, params) = scsi::pr_out(prout::RESERVE, Some(kind), key, 0, false);
            let c = self
                .exec(
                    conn,
                    "PERSISTENT RESERVE OUT (RESERVE)",
                    cdb,
                    0,
                    Bytes::from(params),
                )
                .await
                .map_err(Err)?;
            if c.outcome != Outcome::Good {
                return Err(Ok(format!(
                    "reserving {kind} with key {key:#x}: {}",
                    c.outcome
                )));
            }
            what.push_str(&format!(", reserved {kind}"));
        }
        self.report.event(&what);
        self.held = Some(PrView::held(key, self.o.reserve));
        Ok(())
    }

    /// What the target says about reservations now: READ FULL STATUS, or READ KEYS and
    /// READ RESERVATION where full status is not supported. `Ok(Err(why))`: the target
    /// would not say.
    async fn read_reservations(
        &mut self,
        conn: &mut Connection,
    ) -> Result<Result<PrView, String>, Dropped> {
        const ALLOCATION: u16 = 8192;
        if !self.full_status_unsupported {
            let c = self
                .exec(
                    conn,
                    "PERSISTENT RESERVE IN (READ FULL STATUS)",
                    scsi::pr_in(prin::READ_FULL_STATUS, ALLOCATION),
                    ALLOCATION as u32,
                    Bytes::new(),
                )
                .await?;
            match c.outcome {
                Outcome::Good => {
                    return Ok(scsi::parse_full_status(&c.data)
                        .ok_or_else(|| "READ FULL STATUS data too short".to_string()));
                }
                Outcome::Check { key: 0x05, .. } => self.full_status_unsupported = true,
                other => return Ok(Err(format!("READ FULL STATUS: {other}"))),
            }
        }
        let c = self
            .exec(
                conn,
                "PERSISTENT RESERVE IN (READ KEYS)",
                scsi::pr_in(prin::READ_KEYS, ALLOCATION),
                ALLOCATION as u32,
                Bytes::new(),
            )
            .await?;
        let keys = match (c.outcome, scsi::parse_read_keys(&c.data)) {
            (Outcome::Good, Some(keys)) => keys,
            (outcome, _) => return Ok(Err(format!("READ KEYS: {outcome}"))),
        };
        let c = self
            .exec(
                conn,
                "PERSISTENT RESERVE IN (READ RESERVATION)",
                scsi::pr_in(prin::READ_RESERVATION, ALLOCATION),
                ALLOCATION as u32,
                Bytes::new(),
            )
            .await?;
        let reservation = match (c.outcome, scsi::parse_read_reservation(&c.data)) {
            (Outcome::Good, Some(r)) => r,
            (outcome, _) => return Ok(Err(format!("READ RESERVATION: {outcome}"))),
        };
        Ok(Ok(PrView { keys, reservation }))
    }

    /// After a reconnect: the reservation state is compared with what the drill held, and
    /// every recorded LBA is read back before anything is written again.
    async fn after_reconnect(&mut self, conn: &mut Connection) -> Result<(), Dropped> {
        if let (Some(key), Some(held)) = (self.o.pr_key, self.held.clone()) {
            match self.read_reservations(conn).await? {
                Err(why) => self.report.error(format!("reading reservations: {why}")),
                Ok(now) => match held.change(&now, key) {
                    None => self
                        .report
                        .event(&format!("reservation state unchanged ({now})")),
                    Some(change) => {
                        self.report.reservation_changed(format!(
                            "after reconnect: {change} (held {held}; target has {now})"
                        ));
                        if self.o.pr_reestablish {
                            match self.take_reservation(conn, key).await {
                                Ok(()) => self.report.event("reservation re-established"),
                                Err(Ok(refusal)) => self
                                    .report
                                    .error(format!("re-establishing the reservation: {refusal}")),
                                Err(Err(dropped)) => return Err(dropped),
                            }
                        } else {
                            // Not taken back: from now on, changes are against what was seen.
                            self.held = Some(now);
                        }
                    }
                },
            }
        }
        if self.o.verify_on_reconnect {
            self.queue_read_back("after reconnect");
        }
        Ok(())
    }

    fn queue_read_back(&mut self, why: &str) {
        let recorded = self.ledger.recorded();
        if recorded.is_empty() {
            return;
        }
        self.report.summary.full_read_backs += 1;
        self.report.event(&format!(
            "read-back of {} recorded LBAs {why}",
            recorded.len()
        ));
        self.verify.extend(recorded);
    }

    /// Keeps commands in flight on one connection until the drill is done, or the
    /// connection is lost (`Err`).
    async fn pump(&mut self, conn: &mut Connection, stop: &Stop) -> Result<End, Dropped> {
        loop {
            if stop.aborted() {
                return Ok(End::GaveUp("stopped a second time"));
            }
            self.check_clock(stop);
            if self.grace_over() {
                return Ok(End::GaveUp("the grace period after the stop ran out"));
            }
            let now = Instant::now();
            if self.phase == Phase::Running
                && let Some(due) = self.next_verify
                && now >= due
            {
                if self.verify.is_empty() {
                    self.queue_read_back("(periodic)");
                }
                self.next_verify = self.o.verify_every.map(|t| now + t);
            }
            let idle = self.retry.is_empty() && self.on_wire.is_empty() && self.verify.is_empty();
            if idle && self.phase == Phase::Draining {
                self.phase = Phase::FinalVerify;
                self.queue_read_back("(final)");
                continue;
            }
            if idle && self.phase == Phase::FinalVerify {
                self.phase = Phase::Done;
                return Ok(End::Done);
            }
            while self.on_wire.len() < self.o.queue_depth && conn.window_open() {
                let Some(op) = self.next_op(now) else {
                    break;
                };
                self.send(conn, op).await?;
            }
            let Some(oldest) = self.on_wire.values().map(|(_, at)| *at).min() else {
                let until = self
                    .hold_until
                    .unwrap_or(now + Duration::from_millis(10))
                    .max(now + Duration::from_millis(1));
                let level = stop.level();
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = stop.beyond(level) => {}
                }
                continue;
            };
            let deadline = oldest + self.o.command_timeout;
            match tokio::time::timeout_at(deadline.into(), conn.next_event()).await {
                Err(_) => {
                    return Err(format!(
                        "a command got no status within {} s",
                        self.o.command_timeout.as_secs_f64()
                    ));
                }
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(Event::Nothing)) => {}
                Ok(Ok(Event::Completed(c))) => self.complete(c),
            }
        }
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn free(&self, lba: u64) -> bool {
        !self.wire_lbas.contains(&lba) && !self.retry.iter().any(|op| op.lba == lba)
    }

    /// The next command: read-backs first, then commands to send again, then new work.
    fn next_op(&mut self, now: Instant) -> Option<Op> {
        if self.hold_until.is_some_and(|h| now < h) {
            return None;
        }
        self.hold_until = None;
        for _ in 0..self.verify.len() {
            let lba = self.verify.pop_front()?;
            if !self.ledger.is_recorded(lba) {
                continue;
            }
            if self.wire_lbas.contains(&lba) {
                self.verify.push_back(lba);
                continue;
            }
            return Some(read_op(Kind::VerifyRead, lba));
        }
        if let Some(at) = self
            .retry
            .iter()
            .position(|op| !self.wire_lbas.contains(&op.lba))
        {
            return self.retry.remove(at);
        }
        if self.phase != Phase::Running {
            return None;
        }
        self.new_ops += 1;
        if self.o.read_every > 0 && self.new_ops.is_multiple_of(self.o.read_every) {
            for _ in 0..8 {
                let lba = self.o.first_lba + self.random() % self.o.blocks;
                if self.ledger.is_recorded(lba) && self.free(lba) {
                    return Some(read_op(Kind::SpotRead, lba));
                }
            }
        }
        let lba = match self.o.pattern {
            Pattern::Random => {
                let mut found = None;
                for _ in 0..16 {
                    let lba = self.o.first_lba + self.random() % self.o.blocks;
                    if self.free(lba) {
                        found = Some(lba);
                        break;
                    }
                }
                found?
            }
            Pattern::Sequential => {
                let tries = self.o.blocks.min(self.o.queue_depth as u64 + 1);
                let mut found = None;
                for _ in 0..tries {
                    let lba = self.o.first_lba + self.cursor % self.o.blocks;
                    self.cursor = self.cursor.wrapping_add(1);
                    if self.free(lba) {
                        found = Some(lba);
                        break;
                    }
                }
                found?
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let stamp = Stamp {
            lba,
            seq,
            run: self.run,
        };
        Some(Op {
            kind: Kind::Write,
            lba,
            seq,
            data: Bytes::from(block::encode(stamp, self.block_len)),
        })
    }

    async fn send(&mut self, conn: &mut Connection, op: Op) -> Result<(), Dropped> {
        let (cdb, read_len) = match op.kind {
            Kind::Write => {
                self.ledger.sent(op.lba, op.seq);
                (scsi::write16(op.lba, 1, self.o.fua), 0)
            }
            Kind::SpotRead | Kind::VerifyRead => (scsi::read16(op.lba, 1), self.block_len as u32),
        };
        let sent = tokio::time::timeout(
            self.o.command_timeout,
            conn.submit(self.lun, cdb, read_len, op.data.clone()),
        )
        .await;
        match sent {
            Ok(Ok(itt)) => {
                self.wire_lbas.insert(op.lba);
                self.on_wire.insert(itt, (op, Instant::now()));
                Ok(())
            }
            Ok(Err(e)) => {
                self.unanswered(vec![op]);
                Err(e.to_string())
            }
            Err(_) => {
                self.unanswered(vec![op]);
                Err(format!(
                    "sending a command took longer than {} s",
                    self.o.command_timeout.as_secs_f64()
                ))
            }
        }
    }

    /// Commands without an answer go to the front of the retry queue, in their order.
    fn unanswered(&mut self, ops: Vec<Op>) {
        for op in ops.into_iter().rev() {
            if op.kind == Kind::Write {
                self.report.summary.writes_retried += 1;
            }
            self.retry.push_front(op);
        }
    }

    /// The connection is gone: everything on it will be sent again.
    fn dropped(&mut self, why: &str) {
        let mut ops: Vec<(Op, Instant)> = self.on_wire.drain().map(|(_, v)| v).collect();
        ops.sort_by_key(|(_, at)| *at);
        self.wire_lbas.clear();
        let n = ops.len();
        self.unanswered(ops.into_iter().map(|(op, _)| op).collect());
        self.report.event(&format!(
            "disconnect: {why} ({n} commands unanswered, to be sent again)"
        ));
    }

    fn complete(&mut self, c: Completion) {
        let Some((op, _)) = self.on_wire.remove(&c.itt) else {
            return;
        };
        self.wire_lbas.remove(&op.lba);
        self.completed_now();
        match c.outcome {
            Outcome::Good => match op.kind {
                Kind::Write => {
                    self.ledger.acknowledged(op.lba, op.seq);
                    self.report.summary.writes_acknowledged += 1;
                }
                Kind::SpotRead | Kind::VerifyRead => self.judge(op.lba, &c.data),
            },
            Outcome::UnitAttention { .. } => {
                self.report.summary.unit_attentions += 1;
                self.report.event(&format!(
                    "{} on {} of LBA {}: sent again",
                    c.outcome,
                    op.kind.name(),
                    op.lba
                ));
                self.retry.push_front(op);
            }
            Outcome::Busy(_) => {
                self.report.summary.busy += 1;
                let n = self.report.summary.busy;
                if n <= 10 || n.is_multiple_of(100) {
                    self.report
                        .event(&format!("{} (#{n}): sent again shortly", c.outcome));
                }
                self.hold_until = Some(Instant::now() + BUSY_PAUSE);
                self.retry.push_front(op);
            }
            other => {
                if op.kind == Kind::Write && other.did_nothing() {
                    self.ledger.refused(op.lba, op.seq);
                }
                if other == Outcome::ReservationConflict {
                    self.hold_until = Some(Instant::now() + CONFLICT_PAUSE);
                }
                self.report
                    .error(format!("{} of LBA {}: {other}", op.kind.name(), op.lba));
            }
        }
    }

    fn judge(&mut self, lba: u64, data: &[u8]) {
        let content = block::decode(data, lba, self.block_len);
        match self.ledger.verify(lba, content) {
            Verdict::Intact => self.report.summary.reads_verified += 1,
            Verdict::Unrecorded => {}
            Verdict::Lost { expected, found } => self.report.lost(
                lba,
                format!("acknowledged write seq {expected} is gone; found {found}"),
            ),
            Verdict::Corrupted(why) => self.report.corrupted(lba, why.to_string()),
        }
    }

    /// At the end: the registration (and so the reservation) the drill took is released.
    async fn release(&mut self, conn: &mut Connection) {
        let (Some(key), Some(held)) = (self.o.pr_key, &self.held) else {
            return;
        };
        if !held.keys.contains(&key) {
            return;
        }
        let (cdb, params) =
            scsi::pr_out(prout::REGISTER_AND_IGNORE_EXISTING_KEY, None, 0, 0, false);
        match self
            .exec(
                conn,
                "PERSISTENT RESERVE OUT (unregister)",
                cdb,
                0,
                Bytes::from(params),
            )
            .await
        {
            Ok(c) if c.outcome == Outcome::Good => self.report.event(&format!(
                "unregistered key {key:#x} (its reservation went with it)"
            )),
            Ok(c) => self
                .report
                .event(&format!("could not unregister key {key:#x}: {}", c.outcome)),
            Err(why) => self
                .report
                .event(&format!("could not unregister key {key:#x}: {why}")),
        }
    }
}

fn read_op(kind: Kind, lba: u64) -> Op {
    Op {
        kind,
        lba,
        seq: 0,
        data: Bytes::new(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "Yes" } else { "No" }
}
