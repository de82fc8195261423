//! The session core between two in-memory peers (after quinn-proto's `tests/util.rs`
//! `Pair`): an [`Initiator`] that numbers its commands and builds PDUs through the real
//! codec, and a [`Pair`] that feeds them to the core, plays the driver (the writer's window
//! announcements, a fake SCSI executor that completes `Execute` work on demand, budget
//! grants, the clock) and collects what the initiator would receive.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::iscsi::response::reply_pdus;
use crate::scsi::{LogicalUnit, LuIdentity};
use crate::storage::MemoryBackend;
use crate::wire::{ScsiResponsePdu, TextRequest};

const TARGET: &str = "iqn.2026-01.test:t";
const DEPTH: u32 = 8;
const NOP_INTERVAL: Duration = Duration::from_secs(5);
const NOP_TIMEOUT: Duration = Duration::from_secs(3);

fn params() -> Negotiated {
    Negotiated {
        header_digest: false,
        data_digest: false,
        initiator_max_recv: 8192,
        target_max_recv: 8192,
        max_burst: 16384,
        first_burst: 8192,
        immediate_data: true,
        initial_r2t: true,
        max_outstanding_r2t: 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        default_time2wait: 2,
        default_time2retain: 0,
        error_recovery_level: 0,
        max_connections: 1,
    }
}

/// Write-buffer memory counted down from a fixed amount.
struct Budget(Arc<AtomicU32>);

/// A share of [`Budget`]; dropping it gives the units back.
struct Units(Arc<AtomicU32>, u32);

impl Drop for Units {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, Ordering::AcqRel);
    }
}

impl WriteBudget for Budget {
    type Share = Units;
    fn try_take(&self, units: u32) -> Option<Units> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                free.checked_sub(units)
            })
            .ok()
            .map(|_| Units(self.0.clone(), units))
    }
}

struct Catalog;

impl TargetCatalog for Catalog {
    fn send_targets(&self, which: &str) -> Vec<(String, u16)> {
        [
            (TARGET.to_string(), 1),
            ("iqn.2026-01.test:other".to_string(), 2),
        ]
        .into_iter()
        .filter(|(name, _)| which == "All" || which == name)
        .collect()
    }
}

fn device() -> Arc<TargetDevice> {
    let device = TargetDevice::new(TARGET);
    for lun in [0, 1] {
        device.add_lun(Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, lun),
            512,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            false,
        )));
    }
    Arc::new(device)
}

fn lun(n: u8) -> [u8; 8] {
    [0, n, 0, 0, 0, 0, 0, 0]
}

/// The initiator's side: CmdSN and tag counters, and PDU builders.
struct Initiator {
    cmd_sn: u32,
    itt: u32,
}

impl Initiator {
    fn new() -> Self {
        Initiator {
            cmd_sn: 1,
            itt: 0x10,
        }
    }

    fn next(&mut self) -> (u32, u32) {
        let ids = (self.itt, self.cmd_sn);
        self.itt += 1;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        ids
    }

    fn command(&mut self, read: bool, write: bool, len: u32, immediate: Bytes) -> ScsiCommand {
        let (itt, cmd_sn) = self.next();
        let opcode = if write { 0x2a } else { 0x28 };
        let blocks = (len / 512) as u16;
        let mut cdb = vec![opcode, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        ScsiCommand {
            immediate: false,
            final_bit: true,
            read,
            write,
            attr: 1,
            lun: lun(0),
            itt,
            expected_length: len,
            cmd_sn,
            exp_stat_sn: 0,
            cdb: Bytes::from(cdb),
            bidi_read_length: None,
            data: immediate,
        }
    }

    fn read(&mut self, len: u32) -> Request {
        Request::ScsiCommand(self.command(true, false, len, Bytes::new()))
    }

    fn write(&mut self, len: u32, immediate: &[u8], final_bit: bool) -> Request {
        let mut cmd = self.command(false, true, len, Bytes::copy_from_slice(immediate));
        cmd.final_bit = final_bit;
        Request::ScsiCommand(cmd)
    }

    fn nop(&mut self) -> Request {
        let (itt, cmd_sn) = self.next();
        Request::NopOut(NopOut {
            immediate: false,
            lun: [0; 8],
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 0,
            data: Bytes::from_static(b"ping"),
        })
    }

    fn tmf(&mut self, function: u8, lun_number: u8, referenced: u32, ref_cmd_sn: u32) -> Request {
        // Immediate, as initiators send them: CmdSN is the next one, not advanced.
        let itt = self.itt;
        self.itt += 1;
        Request::TaskMgmt(TaskMgmtRequest {
            immediate: true,
            function,
            lun: lun(lun_number),
            itt,
            referenced_tag: referenced,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: 0,
            ref_cmd_sn,
            exp_data_sn: 0,
        })
    }

    fn text(&mut self, data: &[u8]) -> Request {
        let (itt, cmd_sn) = self.next();
        Request::Text(TextRequest {
            immediate: false,
            final_bit: true,
            continue_bit: false,
            lun: [0; 8],
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 0,
            data: Bytes::copy_from_slice(data),
        })
    }

    fn logout(&mut self, reason: u8, cid: u16) -> Request {
        let (itt, cmd_sn) = self.next();
        Request::Logout(LogoutRequest {
            immediate: false,
            reason,
            itt,
            cid,
            cmd_sn,
            exp_stat_sn: 0,
        })
    }
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, len: usize, fill: u8) -> Request {
    Request::DataOut(DataOut {
        final_bit: true,
        lun: lun(0),
        itt,
        ttt,
        exp_stat_sn: 0,
        data_sn,
        buffer_offset: offset,
        data: Bytes::from(vec![fill; len]),
    })
}

/// A PDU as the codec frames it.
fn raw(request: &Request) -> RawPdu {
    let (head, data) = request.encode();
    let mut bhs = [0u8; wire::BHS_LEN];
    bhs.copy_from_slice(&head[..wire::BHS_LEN]);
    RawPdu {
        bhs,
        ahs: Bytes::copy_from_slice(&head[wire::BHS_LEN..]),
        data,
        data_digest_ok: true,
    }
}

fn itt_of(request: &Request) -> u32 {
    match request {
        Request::ScsiCommand(c) => c.itt,
        Request::TaskMgmt(t) => t.itt,
        _ => RESERVED_TAG,
    }
}

/// The core and a stand-in for its driver and the SCSI layer.
struct Pair {
    core: SessionCore<Budget>,
    initiator: Initiator,
    now: Instant,
    free: Arc<AtomicU32>,
    /// What the initiator received, in order.
    received: VecDeque<Reply>,
    /// Commands handed out to run, not completed yet.
    running: Vec<Execution<Units>>,
    /// What executed commands were given as write data, by tag.
    written: Vec<(u32, Bytes)>,
    budget_waits: Vec<(u32, u64, CancellationToken)>,
    tmf: Vec<(Reply, Vec<CancellationToken>, bool)>,
    closed: bool,
    logout: Option<Reply>,
}

impl Pair {
    fn new() -> Self {
        Self::with(params(), SessionType::Normal, device())
    }

    fn with(params: Negotiated, session_type: SessionType, device: Arc<TargetDevice>) -> Self {
        let free = Arc::new(AtomicU32::new(1024));
        Self::sharing(params, session_type, device, "a", free)
    }

    fn sharing(
        params: Negotiated,
        session_type: SessionType,
        device: Arc<TargetDevice>,
        initiator: &str,
        free: Arc<AtomicU32>,
    ) -> Self {
        let now = Instant::now();
        let config = SessionConfig {
            params,
            session_type,
            cid: 1,
            local: "192.0.2.1:3260".parse().expect("a literal address"),
            first_cmd_sn: 1,
            queue_depth: DEPTH,
            nop_interval: Some(NOP_INTERVAL),
            nop_timeout: NOP_TIMEOUT,
        };
        let scsi = (session_type == SessionType::Normal).then(|| ScsiPort {
            device: device.clone(),
            nexus: Arc::new(Nexus::for_test(initiator)),
        });
        let core = SessionCore::new(config, scsi, Box::new(Catalog), Budget(free.clone()), now);
        Pair {
            core,
            initiator: Initiator::new(),
            now,
            free,
            received: VecDeque::new(),
            running: Vec::new(),
            written: Vec::new(),
            budget_waits: Vec::new(),
            tmf: Vec::new(),
            closed: false,
            logout: None,
        }
    }

    /// Sends `request`; returns its tag.
    fn send(&mut self, request: Request) -> u32 {
        self.send_raw(raw(&request));
        itt_of(&request)
    }

    fn send_raw(&mut self, raw: RawPdu) {
        self.core.handle_pdu(self.now, raw);
        self.drive();
    }

    /// What the driver does after every event.
    fn drive(&mut self) {
        loop {
            while let Some(reply) = self.core.poll_transmit() {
                self.deliver(reply);
            }
            match self.core.poll_work() {
                None => break,
                Some(Work::Execute(e)) => self.running.push(e),
                Some(Work::NeedBudget {
                    itt,
                    ticket,
                    withdrawn,
                    ..
                }) => self.budget_waits.push((itt, ticket, withdrawn)),
                Some(Work::TaskManagement {
                    response,
                    wait,
                    end_target_sessions,
                    ..
                }) => self.tmf.push((response, wait, end_target_sessions)),
                Some(Work::Logout { response }) => {
                    self.logout = Some(response);
                    self.closed = true;
                }
                Some(Work::Close) => self.closed = true,
            }
        }
    }

    /// The writer: every PDU announces the window.
    fn deliver(&mut self, reply: Reply) {
        self.core.window().announce();
        self.received.push_back(reply);
    }

    /// The fake executor runs the command `itt` to its end, as the driver's command future
    /// does: fate, window slot, completion, replies.
    fn complete(&mut self, itt: u32) {
        let i = self
            .running
            .iter()
            .position(|e| e.for_reply.itt == itt)
            .expect("the command was handed out");
        let e = self.running.remove(i);
        let ended = match e.fate.begin() {
            Err(aborted) => Err(aborted),
            Ok(()) => {
                let outcome = match e.run {
                    Run::Scsi { request, .. } => {
                        self.written.push((itt, request.data_out.clone()));
                        ScsiResponse::good(Bytes::from(vec![0u8; request.expected_in as usize]))
                    }
                    Run::Fail(response) => response,
                };
                e.fate.complete().map(|()| outcome)
            }
        };
        drop(e.budget);
        self.core.window().complete();
        e.finished.cancel();
        self.core.handle_completion(itt);
        self.drive();
        let outcome = match ended {
            Ok(outcome) => outcome,
            Err(Aborted::Silently) => return,
            Err(Aborted::Reported) => ScsiResponse::status(ScsiStatus::TaskAborted),
        };
        for reply in reply_pdus(&e.for_reply, &outcome, e.limits) {
            self.deliver(reply);
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
        self.drive();
    }

    fn grant_budget(&mut self) {
        for (itt, ticket, _) in std::mem::take(&mut self.budget_waits) {
            let units = 64;
            self.free.fetch_sub(units, Ordering::AcqRel);
            let share = Units(self.free.clone(), units);
            self.core.handle_budget(itt, ticket, share);
        }
        self.drive();
    }

    fn take(&mut self) -> Vec<Reply> {
        self.received.drain(..).collect()
    }

    fn r2ts(&mut self) -> Vec<R2t> {
        self.take()
            .into_iter()
            .map(|r| match r {
                Reply::R2t(r2t) => r2t,
                other => panic!("expected an R2T, got {other:?}"),
            })
            .collect()
    }

    fn running_itts(&self) -> Vec<u32> {
        self.running.iter().map(|e| e.for_reply.itt).collect()
    }
}

/// The status a command ended with: in its SCSI Response, or collapsed into its last
/// Data-In.
fn status_of(replies: &[Reply]) -> u8 {
    replies
        .iter()
        .find_map(|r| match r {
            Reply::ScsiResponse(s) => Some(s.status),
            Reply::DataIn(d) => d.status,
            _ => None,
        })
        .expect("a status")
}

fn reject_reason(reply: &Reply) -> Option<u8> {
    match reply {
        Reply::Reject(r) => Some(r.reason),
        _ => None,
    }
}

fn scsi_response(replies: &[Reply]) -> &ScsiResponsePdu {
    replies
        .iter()
        .find_map(|r| match r {
            Reply::ScsiResponse(s) => Some(s),
            _ => None,
        })
        .expect("a SCSI Response")
}

/// Sense key, ASC, ASCQ of fixed-format sense data.
fn sense_of(response: &ScsiResponsePdu) -> (u8, u8, u8) {
    let s = &response.sense;
    (s[2] & 0x0f, s[12], s[13])
}

fn tmf_response(pair: &mut Pair) -> u8 {
    match pair.tmf.pop().expect("a task management response").0 {
        Reply::TaskMgmt(t) => t.response,
        other => panic!("expected a TMF response, got {other:?}"),
    }
}

// ------------------------------------------------------------------------ CmdSN window

#[test]
fn commands_outside_the_window_and_duplicates_are_ignored() {
    let mut p = Pair::new();
    let mut late = Initiator::new();
    // Beyond MaxCmdSN (1 + DEPTH - 1).
    p.initiator.cmd_sn = 1 + DEPTH;
    let r = p.initiator.nop();
    p.send(r);
    assert!(
        p.received.is_empty(),
        "outside the window: silently ignored"
    );

    let first = late.nop();
    p.send(first.clone());
    assert_eq!(p.take().len(), 1, "CmdSN 1 answered");
    p.send(first);
    assert!(p.received.is_empty(), "a CmdSN already received is ignored");

    // Early arrivals: CmdSN 3 twice (the duplicate ignored), then 2 fills the gap.
    late.cmd_sn = 3;
    let third = late.nop();
    p.send(third.clone());
    p.send(third);
    assert_eq!(p.core.queued_ahead(), 1);
    assert!(p.received.is_empty(), "waits for CmdSN 2");
    late.cmd_sn = 2;
    p.send(late.nop());
    let replies = p.take();
    let itts: Vec<u32> = replies
        .iter()
        .map(|r| match r {
            Reply::NopIn(n) => n.itt,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(itts.len(), 2, "the gap filled: both run, in CmdSN order");
    assert!(itts[0] > itts[1], "CmdSN 2 (sent last) answered first");
    assert_eq!(p.core.window().exp_cmd_sn(), 4);
    assert_eq!(p.core.queued_ahead(), 0);
}

#[test]
fn immediate_commands_take_a_slot_without_advancing_exp_cmd_sn() {
    let mut p = Pair::new();
    let mut cmd = p.initiator.command(true, false, 512, Bytes::new());
    cmd.immediate = true;
    p.initiator.cmd_sn = 1; // an immediate command does not consume its CmdSN
    let itt = p.send(Request::ScsiCommand(cmd));
    assert_eq!(p.core.window().exp_cmd_sn(), 1);
    assert_eq!(p.core.window().in_flight(), 1);
    assert_eq!(
        p.core.window().max_cmd_sn(),
        DEPTH - 1,
        "the live window shrank"
    );
    p.complete(itt);
    assert_eq!(p.core.window().in_flight(), 0);
    assert_eq!(p.core.tasks(), 0);
    let replies = p.take();
    assert_eq!(status_of(&replies), 0);
}

#[test]
fn a_full_window_closes_until_a_command_completes() {
    let mut p = Pair::new();
    let itts: Vec<u32> = (0..DEPTH)
        .map(|_| {
            let r = p.initiator.read(512);
            p.send(r)
        })
        .collect();
    assert_eq!(p.running.len(), DEPTH as usize);
    let w = p.core.window();
    assert_eq!(w.max_cmd_sn(), w.exp_cmd_sn().wrapping_sub(1), "closed");
    let over = p.initiator.read(512);
    p.send(over);
    assert_eq!(p.running.len(), DEPTH as usize, "beyond MaxCmdSN: ignored");
    p.complete(itts[0]);
    assert_eq!(p.core.window().announce(), DEPTH + 1, "one slot open again");
    p.initiator.cmd_sn = DEPTH + 1;
    let again = p.initiator.read(512);
    p.send(again);
    assert_eq!(p.running.len(), DEPTH as usize);
}

#[test]
fn a_reused_tag_is_rejected_and_frees_its_slot() {
    let mut p = Pair::new();
    let first = p.initiator.command(true, false, 512, Bytes::new());
    let mut second = p.initiator.command(true, false, 512, Bytes::new());
    second.itt = first.itt;
    p.send(Request::ScsiCommand(first));
    p.send(Request::ScsiCommand(second));
    let replies = p.take();
    assert_eq!(reject_reason(&replies[0]), Some(reject::TASK_IN_PROGRESS));
    assert_eq!(p.core.window().in_flight(), 1);
}

// ------------------------------------------------------------------------ R2T sequencing

#[test]
fn r2ts_follow_max_outstanding_and_max_burst() {
    let mut params = params();
    params.max_outstanding_r2t = 2;
    let mut p = Pair::with(params, SessionType::Normal, device());
    let w = p.initiator.write(40960, &[], true);
    let itt = p.send(w);
    let r2ts = p.r2ts();
    assert_eq!(r2ts.len(), 2, "MaxOutstandingR2T");
    assert_eq!(
        r2ts.iter()
            .map(|r| (r.r2t_sn, r.buffer_offset, r.desired_length))
            .collect::<Vec<_>>(),
        [(0, 0, 16384), (1, 16384, 16384)],
        "MaxBurstLength chunks"
    );
    // The first burst in two PDUs: only its end frees an R2T.
    p.send(data_out(itt, r2ts[0].ttt, 0, 0, 8192, 1));
    assert!(p.received.is_empty());
    p.send(data_out(itt, r2ts[0].ttt, 1, 8192, 8192, 2));
    let third = p.r2ts();
    assert_eq!(
        (
            third[0].r2t_sn,
            third[0].buffer_offset,
            third[0].desired_length
        ),
        (2, 32768, 8192)
    );
    p.send(data_out(itt, r2ts[1].ttt, 0, 16384, 16384, 3));
    assert!(p.running.is_empty(), "not all data is in");
    p.send(data_out(itt, third[0].ttt, 0, 32768, 8192, 4));
    assert_eq!(p.running_itts(), [itt]);
    assert_eq!(
        p.running[0].for_reply.r2t_count, 3,
        "ExpDataSN of the response"
    );
    p.complete(itt);
    let data = &p.written[0].1;
    assert_eq!(
        (data[0], data[8192], data[16384], data[32768]),
        (1, 2, 3, 4)
    );
    assert_eq!(scsi_response(&p.take()).status, 0);
}

#[test]
fn unsolicited_data_fills_the_first_burst_before_any_r2t() {
    let mut params = params();
    params.initial_r2t = false;
    let mut p = Pair::with(params, SessionType::Normal, device());
    let w = p.initiator.write(20480, &[7u8; 4096], false);
    let itt = p.send(w);
    let r2ts = p.r2ts();
    assert_eq!(
        (r2ts[0].buffer_offset, r2ts[0].desired_length),
        (8192, 12288),
        "solicited data starts after FirstBurstLength"
    );
    // The unsolicited Data-Out continues the immediate data, DataSN from 0, F at its end.
    p.send(data_out(itt, RESERVED_TAG, 0, 4096, 4096, 8));
    p.send(data_out(itt, r2ts[0].ttt, 0, 8192, 12288, 9));
    p.complete(itt);
    let data = &p.written[0].1;
    assert_eq!((data[0], data[4096], data[8192]), (7, 8, 9));
}

#[test]
fn initial_r2t_means_no_unsolicited_data_phase() {
    let mut p = Pair::new(); // InitialR2T=Yes
    let w = p.initiator.write(8192, &[1u8; 4096], false);
    let itt = p.send(w);
    let r2ts = p.r2ts();
    assert_eq!(
        (r2ts[0].buffer_offset, r2ts[0].desired_length),
        (4096, 4096)
    );
    // An unsolicited Data-Out now is out of order: at ERL 0 the connection ends.
    p.send(data_out(itt, RESERVED_TAG, 0, 4096, 4096, 1));
    assert_eq!(reject_reason(&p.take()[0]), Some(reject::PROTOCOL_ERROR));
    assert!(p.closed && p.core.is_closing());
}

#[test]
fn immediate_data_beyond_the_rules_is_rejected() {
    let mut p = Pair::new();
    // More than FirstBurstLength.
    let w = p.initiator.write(16384, &[0u8; 12288], false);
    p.send(w);
    // Immediate data on a read.
    let mut read = p
        .initiator
        .command(true, false, 512, Bytes::from_static(&[0u8; 512]));
    read.write = false;
    p.send(Request::ScsiCommand(read));
    let replies = p.take();
    assert_eq!(replies.len(), 2);
    assert!(
        replies
            .iter()
            .all(|r| reject_reason(r) == Some(reject::PROTOCOL_ERROR))
    );
    assert_eq!(
        p.core.window().in_flight(),
        0,
        "refused commands free their slots"
    );

    let mut params = params();
    params.immediate_data = false;
    let mut p = Pair::with(params, SessionType::Normal, device());
    let w = p.initiator.write(1024, &[0u8; 512], false);
    p.send(w);
    assert_eq!(reject_reason(&p.take()[0]), Some(reject::PROTOCOL_ERROR));
}

#[test]
fn a_write_waits_for_its_budget_before_asking_for_data() {
    let mut p = Pair::new();
    p.free.store(0, Ordering::Release);
    let w = p.initiator.write(16384, &[], true);
    let itt = p.send(w);
    assert!(p.received.is_empty(), "no R2T without a buffer");
    assert_eq!(p.budget_waits.len(), 1);
    // A grant with a stale ticket is dropped.
    p.core.handle_budget(itt, 999, Units(p.free.clone(), 0));
    assert!(p.received.is_empty());
    p.free.store(64, Ordering::Release);
    p.grant_budget();
    let r2ts = p.r2ts();
    assert_eq!(r2ts[0].desired_length, 16384);
    p.send(data_out(itt, r2ts[0].ttt, 0, 0, 16384, 5));
    p.complete(itt);
    assert_eq!(p.free.load(Ordering::Acquire), 64, "the share came back");
}

// ------------------------------------------------------------------------ Data-Out errors

#[test]
fn a_wrong_data_sn_fails_the_task_and_keeps_the_session() {
    let mut p = Pair::new();
    let w = p.initiator.write(8192, &[], true);
    let itt = p.send(w);
    let r2t = p.r2ts()[0].clone();
    p.send(data_out(itt, r2t.ttt, 5, 0, 8192, 1));
    let replies = p.take();
    assert_eq!(reject_reason(&replies[0]), Some(reject::PROTOCOL_ERROR));
    assert!(!p.closed, "the offsets still follow: the session stays");
    p.complete(itt);
    let response = p.take();
    let response = scsi_response(&response);
    assert_eq!(response.status, ScsiStatus::CheckCondition as u8);
    assert_eq!(sense_of(response), (0x0b, 0x4b, 0x00), "DATA PHASE ERROR");
    assert!(p.written.is_empty(), "the write never ran");
}

#[test]
fn an_offset_out_of_order_closes_the_connection() {
    let mut p = Pair::new();
    let w = p.initiator.write(8192, &[], true);
    let itt = p.send(w);
    let r2t = p.r2ts()[0].clone();
    p.send(data_out(itt, r2t.ttt, 0, 512, 4096, 1));
    assert_eq!(reject_reason(&p.take()[0]), Some(reject::PROTOCOL_ERROR));
    assert!(p.closed);
    // Nothing is taken after the decision to close.
    let r = p.initiator.nop();
    p.send(r);
    assert!(p.received.is_empty());
}

#[test]
fn a_data_digest_failure_rejects_the_pdu_and_fails_its_task() {
    let mut p = Pair::new();
    let w = p.initiator.write(8192, &[], true);
    let itt = p.send(w);
    let r2t = p.r2ts()[0].clone();
    let mut bad = raw(&data_out(itt, r2t.ttt, 0, 0, 8192, 1));
    bad.data_digest_ok = false;
    p.send_raw(bad);
    assert_eq!(reject_reason(&p.take()[0]), Some(reject::DATA_DIGEST_ERROR));
    p.complete(itt);
    let response = p.take();
    assert_eq!(
        sense_of(scsi_response(&response)),
        (0x0b, 0x47, 0x05),
        "protocol service CRC error"
    );
    // Any other PDU with a bad digest is only rejected.
    let nop = p.initiator.nop();
    let mut nop = raw(&nop);
    nop.data_digest_ok = false;
    p.send_raw(nop);
    let replies = p.take();
    assert_eq!(replies.len(), 1);
    assert_eq!(reject_reason(&replies[0]), Some(reject::DATA_DIGEST_ERROR));
}

#[test]
fn undecodable_pdus_are_rejected() {
    let mut p = Pair::new();
    let nop = p.initiator.nop();
    let mut unknown = raw(&nop);
    unknown.bhs[0] = 0x1f;
    p.send_raw(unknown);
    assert_eq!(
        reject_reason(&p.take()[0]),
        Some(reject::COMMAND_NOT_SUPPORTED)
    );
    assert!(!p.closed);
}

// ------------------------------------------------------------------------ task management

#[test]
fn abort_task_drops_a_collecting_write_at_once() {
    let mut p = Pair::new();
    let w = p.initiator.write(8192, &[], true);
    let itt = p.send(w);
    let r2t = p.r2ts()[0].clone();
    let cmd_sn = p.initiator.cmd_sn.wrapping_sub(1);
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, itt, cmd_sn);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::COMPLETE);
    assert_eq!(p.core.tasks(), 0);
    assert_eq!(p.core.window().in_flight(), 0, "its slot is free");
    assert_eq!(p.free.load(Ordering::Acquire), 1024, "its buffer share too");
    p.send(data_out(itt, r2t.ttt, 0, 0, 8192, 1));
    assert!(
        p.received.is_empty() && !p.closed,
        "late data for it is ignored"
    );
}

#[test]
fn abort_task_of_a_running_command_waits_for_it_and_silences_it() {
    let mut p = Pair::new();
    let r = p.initiator.read(512);
    let itt = p.send(r);
    // The executor has started it.
    p.running[0].fate.begin().expect("not aborted yet");
    let cmd_sn = p.initiator.cmd_sn.wrapping_sub(1);
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, itt, cmd_sn);
    p.send(r);
    let (response, wait, cold) = p.tmf.pop().expect("a response");
    assert!(matches!(
        response,
        Reply::TaskMgmt(TaskMgmtResponse {
            response: tmf_code::COMPLETE,
            ..
        })
    ));
    assert!(!cold);
    assert_eq!(wait.len(), 1, "reported only once the command has finished");
    let e = p.running.remove(0);
    assert_eq!(
        e.fate.complete(),
        Err(Aborted::Silently),
        "no status for it"
    );
    e.finished.cancel();
    assert!(wait[0].is_cancelled());

    // On the wrong LUN the task is not found.
    let r = p.initiator.read(512);
    let other = p.send(r);
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 1, other, 0);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::NO_TASK);
}

#[test]
fn abort_task_ref_cmd_sn_rule_for_a_task_not_received() {
    let mut p = Pair::new();
    // CmdSN 1 never arrives; the initiator aborts it (RefCmdSN 1 < CmdSN 2, in the window).
    p.initiator.cmd_sn = 2;
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x99, 1);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::COMPLETE);
    // CmdSN 1 counts as received: CmdSN 2 runs at once.
    let r = p.initiator.read(512);
    let itt = p.send(r);
    assert_eq!(p.running_itts(), [itt]);
    assert_eq!(p.core.window().exp_cmd_sn(), 3);

    // A task waiting ahead of a gap is taken out of the queue.
    p.initiator.cmd_sn = 4;
    let early = p.initiator.read(512);
    p.send(early);
    assert_eq!(p.core.queued_ahead(), 1);
    p.initiator.cmd_sn = 5;
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x77, 4);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::COMPLETE);
    assert_eq!(p.core.queued_ahead(), 0);

    // Outside the window (already completed, or not before this request): no such task.
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x55, 1);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::NO_TASK);
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x56, 5);
    p.send(r);
    assert_eq!(
        tmf_response(&mut p),
        tmf_code::NO_TASK,
        "RefCmdSN not before CmdSN"
    );
}

/// Two sessions from different initiators to one target, sharing its write-buffer memory.
fn two_nexuses() -> (Pair, Pair, Arc<TargetDevice>) {
    let device = device();
    let free = Arc::new(AtomicU32::new(1024));
    let normal = SessionType::Normal;
    let a = Pair::sharing(params(), normal, device.clone(), "a", free.clone());
    let b = Pair::sharing(params(), normal, device.clone(), "b", free);
    (a, b, device)
}

#[test]
fn lun_reset_reaches_collecting_and_running_tasks_of_every_nexus() {
    let (mut a, mut b, device) = two_nexuses();
    let w = a.initiator.write(8192, &[], true);
    let collecting = a.send(w);
    let r = a.initiator.read(512);
    let running = a.send(r);
    let r = b.initiator.read(512);
    let other = b.send(r);
    a.take();

    let r = a.initiator.tmf(tmf_code::LOGICAL_UNIT_RESET, 0, 0, 0);
    a.send(r);
    let (_, wait, _) = a.tmf.last().expect("a response");
    assert_eq!(
        wait.len(),
        1,
        "the running task of this session is waited for"
    );
    assert_eq!(tmf_response(&mut a), tmf_code::COMPLETE);
    assert_eq!(a.core.tasks(), 1, "the collecting write is gone");
    a.complete(running);
    assert!(
        a.take().is_empty(),
        "this nexus's aborted task ends silently"
    );
    assert_eq!(a.core.window().in_flight(), 0);
    let _ = collecting;

    b.complete(other);
    let replies = b.take();
    assert_eq!(
        scsi_response(&replies).status,
        ScsiStatus::TaskAborted as u8,
        "another nexus's task ends with TASK ABORTED (TAS)"
    );

    let r = a.initiator.tmf(tmf_code::LOGICAL_UNIT_RESET, 7, 0, 0);
    a.send(r);
    assert_eq!(tmf_response(&mut a), tmf_code::NO_LUN);
    assert!(device.lun(7).is_none());
}

#[test]
fn abort_task_set_spares_other_nexuses_and_cold_reset_ends_sessions() {
    let (mut a, mut b, _) = two_nexuses();
    let r = b.initiator.read(512);
    let other = b.send(r);
    let r = a.initiator.read(512);
    let mine = a.send(r);
    let r = a.initiator.tmf(tmf_code::ABORT_TASK_SET, 0, 0, 0);
    a.send(r);
    assert_eq!(tmf_response(&mut a), tmf_code::COMPLETE);
    a.complete(mine);
    assert!(a.take().is_empty());
    b.complete(other);
    assert_eq!(status_of(&b.take()), 0, "not reached");

    let r = a.initiator.tmf(tmf_code::TARGET_COLD_RESET, 0, 0, 0);
    a.send(r);
    let (_, _, cold) = a.tmf.last().expect("a response");
    assert!(*cold, "the driver ends the target's sessions");
    let r = a.initiator.tmf(tmf_code::TASK_REASSIGN, 0, 0, 0);
    a.send(r);
    assert_eq!(tmf_response(&mut a), tmf_code::REASSIGN_NOT_SUPPORTED);
    let r = a.initiator.tmf(tmf_code::CLEAR_ACA, 0, 0, 0);
    a.send(r);
    assert_eq!(tmf_response(&mut a), tmf_code::NOT_SUPPORTED);
}

// ------------------------------------------------------------------------ the rest

#[test]
fn send_targets_in_discovery_and_normal_sessions() {
    let mut p = Pair::with(params(), SessionType::Discovery, device());
    let r = p.initiator.text(b"SendTargets=All\0");
    p.send(r);
    let replies = p.take();
    let Reply::Text(t) = &replies[0] else {
        panic!("expected a Text Response");
    };
    assert!(t.final_bit);
    let answer = text::parse(&t.data).expect("well-formed text");
    assert_eq!(
        answer,
        [
            ("TargetName".to_string(), TARGET.to_string()),
            ("TargetAddress".to_string(), "192.0.2.1:3260,1".to_string()),
            (
                "TargetName".to_string(),
                "iqn.2026-01.test:other".to_string()
            ),
            ("TargetAddress".to_string(), "192.0.2.1:3260,2".to_string()),
        ]
    );
    let r = p.initiator.text(b"MaxBurstLength=4096\0X-private=1\0");
    p.send(r);
    let replies = p.take();
    let Reply::Text(t) = &replies[0] else {
        panic!("expected a Text Response");
    };
    assert_eq!(
        text::parse(&t.data).expect("well-formed text"),
        [
            ("MaxBurstLength".to_string(), "Reject".to_string()),
            ("X-private".to_string(), "NotUnderstood".to_string()),
        ]
    );
    // SCSI commands have no place in a discovery session.
    let r = p.initiator.read(512);
    p.send(r);
    assert_eq!(reject_reason(&p.take()[0]), Some(reject::PROTOCOL_ERROR));
    assert_eq!(p.core.window().in_flight(), 0);
}

#[test]
fn an_unanswered_ping_ends_the_connection() {
    let mut p = Pair::new();
    assert_eq!(p.core.poll_timeout(), Some(p.now + NOP_INTERVAL));
    p.advance(NOP_INTERVAL - Duration::from_secs(1));
    assert!(p.received.is_empty(), "not quiet long enough");
    p.advance(Duration::from_secs(1));
    let replies = p.take();
    let Reply::NopIn(ping) = &replies[0] else {
        panic!("expected a NOP-In ping");
    };
    assert_eq!(ping.itt, RESERVED_TAG);
    assert_eq!(p.core.poll_timeout(), Some(p.now + NOP_TIMEOUT));

    // The answer (ITT reserved, our TTT) clears the ping; the next comes after a quiet
    // interval.
    p.send(Request::NopOut(NopOut {
        immediate: true,
        lun: [0; 8],
        itt: RESERVED_TAG,
        ttt: ping.ttt,
        cmd_sn: p.initiator.cmd_sn,
        exp_stat_sn: 0,
        data: Bytes::new(),
    }));
    assert!(p.received.is_empty(), "a ping answer is not answered");
    p.advance(NOP_TIMEOUT);
    assert!(!p.closed);
    p.advance(NOP_INTERVAL);
    assert!(matches!(p.take()[..], [Reply::NopIn(_)]));
    p.advance(NOP_TIMEOUT);
    assert!(p.closed, "no answer within NOP timeout");
    assert_eq!(p.core.poll_timeout(), None);
}

#[test]
fn logout_with_tasks_in_flight_waits_for_them() {
    let mut p = Pair::new();
    let r = p.initiator.read(512);
    let running = p.send(r);
    let w = p.initiator.write(8192, &[], true);
    p.send(w);
    p.take();
    // Closing another connection: keel has only this one (response 1, CID not found).
    let r = p.initiator.logout(1, 9);
    p.send(r);
    assert!(matches!(
        p.take()[..],
        [Reply::Logout(LogoutResponse { response: 1, .. })]
    ));
    assert!(!p.closed);

    let r = p.initiator.logout(0, 1);
    p.send(r);
    let Some(Reply::Logout(l)) = &p.logout else {
        panic!("expected a logout after the drain");
    };
    assert_eq!(l.response, 0);
    assert!(p.closed && p.core.is_closing());
    assert_eq!(p.core.tasks(), 0, "the collecting write is dropped");
    assert_eq!(
        p.core.window().in_flight(),
        1,
        "the running read still holds its slot"
    );
    assert_eq!(p.free.load(Ordering::Acquire), 1024);
    p.complete(running);
    assert_eq!(p.core.window().in_flight(), 0);
}

#[test]
fn abandoning_a_session_withdraws_waiting_writes() {
    let mut p = Pair::new();
    p.free.store(0, Ordering::Release);
    let w = p.initiator.write(8192, &[], true);
    p.send(w);
    let (_, _, withdrawn) = p.budget_waits.pop().expect("a budget request");
    assert!(!withdrawn.is_cancelled());
    p.core.abandon_tasks();
    assert!(
        withdrawn.is_cancelled(),
        "the wait for its memory ends with it"
    );
    assert_eq!(p.core.window().in_flight(), 0);
}

#[test]
fn snack_and_login_in_full_feature_phase_are_rejected() {
    let mut p = Pair::new();
    let nop = p.initiator.nop();
    let mut snack = raw(&nop);
    snack.bhs[0] = 0x10; // SNACK Request
    snack.bhs[1] = 0x80;
    p.send_raw(snack);
    let replies = p.take();
    assert_eq!(replies.len(), 1);
    assert!(matches!(
        reject_reason(&replies[0]),
        Some(reject::SNACK_REJECT | reject::INVALID_PDU_FIELD)
    ));
}

#[test]
fn abort_task_of_a_command_waiting_ahead_counts_its_cmd_sn_as_received() {
    let mut p = Pair::new();
    // CmdSN 2 arrives early (1 is missing) and is aborted while it waits.
    p.initiator.cmd_sn = 2;
    let early = p.initiator.read(512);
    p.send(early);
    assert_eq!(p.core.queued_ahead(), 1);
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x77, 2);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::COMPLETE);
    assert_eq!(p.core.queued_ahead(), 0);
    // §11.5.1: the target considers CmdSN 2 received, so once CmdSN 1 fills the gap,
    // ExpCmdSN moves past both and CmdSN 3 runs at once.
    p.initiator.cmd_sn = 1;
    let r = p.initiator.read(512);
    let itt1 = p.send(r);
    assert_eq!(p.core.window().exp_cmd_sn(), 3);
    p.initiator.cmd_sn = 3;
    let r = p.initiator.read(512);
    let itt3 = p.send(r);
    assert_eq!(p.running_itts(), [itt1, itt3]);
    assert_eq!(p.core.window().exp_cmd_sn(), 4);
}

#[test]
fn a_command_abort_task_declared_received_is_a_duplicate_when_it_arrives() {
    let mut p = Pair::new();
    // CmdSN 2 is aborted before it arrives (RefCmdSN 2 < CmdSN 3): "Function complete".
    p.initiator.cmd_sn = 3;
    let r = p.initiator.tmf(tmf_code::ABORT_TASK, 0, 0x77, 2);
    p.send(r);
    assert_eq!(tmf_response(&mut p), tmf_code::COMPLETE);
    // CmdSN 2 arrives after all: it counts as received already, so it is a duplicate and
    // silently ignored (§4.2.2.1), whether it comes early or in turn.
    p.initiator.cmd_sn = 2;
    let late = p.initiator.read(512);
    let itt2 = p.send(late);
    assert_eq!(p.core.queued_ahead(), 0);
    p.initiator.cmd_sn = 1;
    let r = p.initiator.read(512);
    let itt1 = p.send(r);
    assert_eq!(
        p.running_itts(),
        [itt1],
        "the aborted CmdSN 2 ({itt2:#x}) never runs"
    );
    assert_eq!(p.core.window().exp_cmd_sn(), 3);
    assert!(
        p.core.skip.is_empty(),
        "ExpCmdSN passed it: nothing left to skip"
    );
    p.initiator.cmd_sn = 2;
    let again = p.initiator.read(512);
    p.send(again);
    assert_eq!(p.running_itts(), [itt1]);
}

#[test]
fn cmd_sns_declared_received_stay_within_the_window() {
    let mut p = Pair::new();
    // CmdSN 1 is missing; the initiator aborts every CmdSN it could, and more.
    p.initiator.cmd_sn = 1 + 4 * DEPTH;
    for ref_cmd_sn in 2..4 * DEPTH {
        let r = p
            .initiator
            .tmf(tmf_code::ABORT_TASK, 0, 0x1000 + ref_cmd_sn, ref_cmd_sn);
        p.send(r);
    }
    assert!(
        p.core.skip.len() < DEPTH as usize,
        "only CmdSNs inside the window are remembered"
    );
    // CmdSN 1 arrives: ExpCmdSN steps over every aborted CmdSN and forgets them.
    p.initiator.cmd_sn = 1;
    let r = p.initiator.read(512);
    p.send(r);
    assert!(p.core.skip.is_empty());
    assert_eq!(p.core.window().exp_cmd_sn(), 1 + DEPTH);
}

impl Initiator {
    /// An immediate READ: its CmdSN is the next one, not advanced (§4.2.2.1).
    fn immediate_read(&mut self, len: u32) -> Request {
        let mut cmd = self.command(true, false, len, Bytes::new());
        cmd.immediate = true;
        self.cmd_sn = cmd.cmd_sn;
        Request::ScsiCommand(cmd)
    }
}

#[test]
fn immediate_commands_beyond_the_queue_depth_are_rejected() {
    let mut p = Pair::new();
    let mut admitted = Vec::new();
    for _ in 0..DEPTH {
        let r = p.initiator.immediate_read(512);
        admitted.push(p.send(r));
    }
    assert_eq!(p.running_itts(), admitted);
    assert!(p.received.is_empty());
    // One more than the depth: refused (§11.17.1 reason 0x06), holding no slot and no task.
    let r = p.initiator.immediate_read(512);
    p.send(r);
    let replies = p.take();
    assert_eq!(replies.len(), 1);
    assert_eq!(
        reject_reason(&replies[0]),
        Some(reject::IMMEDIATE_COMMAND_REJECT)
    );
    assert_eq!(p.core.window().in_flight(), DEPTH);
    assert_eq!(p.core.tasks(), DEPTH as usize);
    assert_eq!(
        p.core.window().exp_cmd_sn(),
        1,
        "immediate: no CmdSN consumed"
    );
    // A slot frees: the next immediate command runs again.
    p.complete(admitted[0]);
    p.take();
    let r = p.initiator.immediate_read(512);
    let again = p.send(r);
    assert!(p.running_itts().contains(&again));
    for itt in p.running_itts() {
        p.complete(itt);
    }
    assert_eq!(p.core.window().in_flight(), 0, "the window balances");
}

#[test]
fn one_immediate_command_is_taken_even_when_the_window_is_full() {
    let mut p = Pair::new();
    for _ in 0..DEPTH {
        let r = p.initiator.read(512);
        p.send(r);
    }
    // §4.2.2.1 (RFC 3720 §3.2.2.1): a target handles at least one immediate
    // non-task-management request per connection at any time.
    let r = p.initiator.immediate_read(512);
    let first = p.send(r);
    assert!(p.running_itts().contains(&first));
    assert!(p.received.is_empty());
    let r = p.initiator.immediate_read(512);
    p.send(r);
    assert_eq!(
        reject_reason(&p.take()[0]),
        Some(reject::IMMEDIATE_COMMAND_REJECT)
    );
    assert_eq!(p.core.window().in_flight(), DEPTH + 1);
    for itt in p.running_itts() {
        p.complete(itt);
    }
    assert_eq!(p.core.window().in_flight(), 0, "the window balances");
}

fn async_event(reply: &Reply) -> (u8, u16, u16, u16) {
    match reply {
        Reply::Async(m) => (m.event, m.parameter1, m.parameter2, m.parameter3),
        other => panic!("expected an Async Message, got {other:?}"),
    }
}

#[test]
fn a_requested_logout_is_asked_for_and_then_served_as_any_logout() {
    let mut p = Pair::new();
    let grace = Duration::from_secs(2);
    p.core.handle_logout_request(p.now, grace);
    p.drive();
    let replies = p.take();
    assert_eq!(replies.len(), 1);
    assert_eq!(
        async_event(&replies[0]),
        (async_event::REQUEST_LOGOUT, 0, 0, 2)
    );
    assert_eq!(p.core.poll_timeout(), Some(p.now + grace));
    // Asking again neither repeats the message nor moves the deadline.
    p.core
        .handle_logout_request(p.now + Duration::from_secs(1), Duration::from_secs(60));
    p.drive();
    assert!(p.received.is_empty());
    assert_eq!(p.core.poll_timeout(), Some(p.now + grace));

    // Commands still run until the initiator logs out, and the logout is the usual one.
    let r = p.initiator.read(512);
    let itt = p.send(r);
    p.complete(itt);
    assert_eq!(status_of(&p.take()), 0);
    let r = p.initiator.logout(0, 1);
    p.send(r);
    assert!(matches!(
        p.logout,
        Some(Reply::Logout(LogoutResponse { response: 0, .. }))
    ));
    assert_eq!(p.core.poll_timeout(), None);
    p.advance(grace);
    assert!(p.received.is_empty(), "no drop message after the logout");
}

#[test]
fn an_initiator_that_does_not_log_out_in_time_is_dropped() {
    let mut p = Pair::new();
    // A grace of 0 still gives the initiator a second.
    p.core.handle_logout_request(p.now, Duration::ZERO);
    p.drive();
    assert_eq!(async_event(&p.take()[0]).3, 1);
    p.advance(Duration::from_millis(999));
    assert!(p.received.is_empty() && !p.closed);
    p.advance(Duration::from_millis(1));
    let replies = p.take();
    assert_eq!(replies.len(), 1);
    // Parameter2/3: the session's DefaultTime2Wait and DefaultTime2Retain.
    assert_eq!(
        async_event(&replies[0]),
        (async_event::DROP_ALL_CONNECTIONS, 0, 2, 0)
    );
    assert!(p.closed && p.core.is_closing());
    assert_eq!(p.core.poll_timeout(), None);
}

#[test]
fn the_logout_deadline_comes_before_a_later_ping_and_a_closing_session_is_not_asked() {
    let mut p = Pair::new();
    p.core.handle_logout_request(p.now, MAX_LOGOUT_GRACE * 2);
    p.drive();
    assert_eq!(async_event(&p.take()[0]).3, 3600);
    assert_eq!(p.core.poll_timeout(), Some(p.now + NOP_INTERVAL));
    p.advance(NOP_INTERVAL);
    assert!(
        matches!(p.take()[..], [Reply::NopIn(_)]),
        "pings go on meanwhile"
    );

    let mut p = Pair::new();
    let r = p.initiator.logout(0, 1);
    p.send(r);
    p.take();
    p.core.handle_logout_request(p.now, Duration::from_secs(5));
    p.drive();
    assert!(p.received.is_empty());
    assert_eq!(p.core.poll_timeout(), None);
}
