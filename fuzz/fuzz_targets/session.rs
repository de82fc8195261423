//! The sans-IO session core (src/iscsi/session_core.rs) driven by arbitrary PDU sequences,
//! with command completions, write-buffer grants, aborts and time interleaved, as its
//! driver (src/iscsi/connection.rs) would feed them.
//!
//! Input: byte 0 configures the session (bit 0: discovery; bit 1: InitialR2T; bit 2:
//! ImmediateData; bits 3-4: MaxOutstandingR2T - 1; bit 5: data digests; bit 6: almost no
//! write-buffer memory, so writes wait for grants; bit 7: MaxBurstLength 4096 instead of
//! 16384). Byte 1: the queue depth - 1 (low 4 bits) and the first CmdSN's top byte (high
//! 4 bits, near the wrap when 0xf). Then events, each a byte: 0x00-0x7f: one PDU follows,
//! framed as on the wire (after-login limits, MaxRecvDataSegmentLength 8192, data digests
//! per bit 5, so a bad digest reaches the core as one); 0x80-0x9f: the fake executor
//! completes running command number (low 5 bits, modulo); 0xa0-0xbf: it starts one (its
//! fate begins, so a task management abort finds it executing); 0xc0-0xdf: the clock
//! advances by (low 5 bits) seconds and the core's deadline is handled; 0xe0-0xef: a
//! waiting write gets its memory; 0xf0-0xff: the connection ends there. A framing error ends the input (the driver would close the connection).
//!
//! Invariants: no panic; every reply the core emits encodes and decodes as a target PDU;
//! a command tag is never handed out to run while a previous command with it still runs;
//! the window's slots in use are exactly the running commands plus the writes collecting
//! data; ExpCmdSN and the announced MaxCmdSN never run backwards; an R2T asks for at most
//! MaxBurstLength and never nothing; once the core decides to close, it emits nothing more
//! for PDUs.
#![no_main]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use keel::iscsi::login::SessionType;
use keel::iscsi::params::Negotiated;
use keel::iscsi::session_core::{
    Execution, Run, ScsiPort, SessionConfig, SessionCore, Work, WriteBudget,
};
use keel::scsi::{LogicalUnit, LuIdentity, Nexus, ScsiResponse, TargetDevice};
use keel::storage::MemoryBackend;
use keel::wire::{self, FrameLimits, PduCodec, Reply};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

const TARGET: &str = "iqn.2026-11.org.example:disk0";
const MAX_EVENTS: usize = 512;

/// Write-buffer memory in KiB, counted down; a share gives its units back when dropped.
struct Budget(Arc<AtomicU32>);
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
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |f| {
                f.checked_sub(units)
            })
            .ok()
            .map(|_| Units(self.0.clone(), units))
    }
}

fn device() -> Arc<TargetDevice> {
    static DEVICE: OnceLock<Arc<TargetDevice>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            let device = TargetDevice::new(TARGET);
            device.add_lun(Arc::new(LogicalUnit::new(
                LuIdentity::derived(TARGET, 0),
                512,
                Some(Arc::new(MemoryBackend::new(1 << 20))),
                false,
            )));
            Arc::new(device)
        })
        .clone()
}

fn params(config: u8) -> Negotiated {
    Negotiated {
        header_digest: false,
        data_digest: config & 0x20 != 0,
        initiator_max_recv: 8192,
        target_max_recv: 8192,
        max_burst: if config & 0x80 != 0 { 4096 } else { 16384 },
        first_burst: 4096,
        immediate_data: config & 0x04 != 0,
        initial_r2t: config & 0x02 != 0,
        max_outstanding_r2t: u32::from((config >> 3) & 0x03) + 1,
        data_pdu_in_order: true,
        data_sequence_in_order: true,
        default_time2wait: 2,
        default_time2retain: 0,
        error_recovery_level: 0,
        max_connections: 1,
    }
}

/// The driver's side: what the core handed out and the invariants over it.
struct Driver {
    core: SessionCore<Budget>,
    running: Vec<Execution<Units>>,
    running_itts: HashSet<u32>,
    budget_waits: Vec<(u32, u64, CancellationToken)>,
    max_burst: u32,
    exp_cmd_sn: u32,
    announced: u32,
    closed: bool,
}

impl Driver {
    /// Drains the core's output as the driver does, checking each piece.
    fn drive(&mut self) {
        loop {
            while let Some(reply) = self.core.poll_transmit() {
                self.deliver(reply);
            }
            let Some(work) = self.core.poll_work() else {
                break;
            };
            match work {
                Work::Execute(e) => {
                    assert!(
                        self.running_itts.insert(e.for_reply.itt),
                        "tag {:#x} handed out while a command with it still runs",
                        e.for_reply.itt
                    );
                    self.running.push(e);
                }
                Work::NeedBudget {
                    itt,
                    ticket,
                    withdrawn,
                    ..
                } => self.budget_waits.push((itt, ticket, withdrawn)),
                Work::TaskManagement { response, .. } => self.deliver(response),
                Work::Logout { response } => {
                    self.deliver(response);
                    self.closed = true;
                }
                Work::Close => self.closed = true,
            }
        }
        self.check_window();
    }

    fn deliver(&mut self, reply: Reply) {
        if let Reply::R2t(r2t) = &reply {
            assert!(
                r2t.desired_length > 0 && r2t.desired_length <= self.max_burst,
                "R2T for {} bytes",
                r2t.desired_length
            );
        }
        let window = self.core.window();
        let announced = window.announce();
        assert!(
            wire::sn_le(self.announced, announced),
            "MaxCmdSN ran backwards"
        );
        self.announced = announced;
        let out = reply.encode();
        let data = match &out.data {
            wire::Payload::Bytes(b) => b.clone(),
            wire::Payload::File(_) => Bytes::new(),
        };
        let decoded = Reply::decode(&out.header, data);
        assert!(decoded.is_ok(), "{reply:?} does not decode: {decoded:?}");
    }

    fn check_window(&mut self) {
        let window = self.core.window();
        let exp = window.exp_cmd_sn();
        assert!(wire::sn_le(self.exp_cmd_sn, exp), "ExpCmdSN ran backwards");
        self.exp_cmd_sn = exp;
        assert_eq!(
            window.in_flight() as usize,
            self.running.len() + self.core.collecting_writes(),
            "window slots in use vs commands running and writes collecting"
        );
    }

    /// The fake executor finishes one command, as the driver's command future does.
    fn complete(&mut self, pick: usize) {
        if self.running.is_empty() {
            return;
        }
        let e = self.running.swap_remove(pick % self.running.len());
        let ended = match e.fate.begin() {
            Err(_) => None,
            Ok(()) => {
                let outcome = match e.run {
                    Run::Scsi { request, .. } => ScsiResponse::good(Bytes::from(vec![
                        0u8;
                        request.expected_in.min(1 << 16)
                            as usize
                    ])),
                    Run::Fail(response) => response,
                };
                e.fate.complete().ok().map(|()| outcome)
            }
        };
        drop(e.budget);
        self.core.window().complete();
        e.finished.cancel();
        self.running_itts.remove(&e.for_reply.itt);
        self.core.handle_completion(e.for_reply.itt);
        if let Some(outcome) = ended {
            for reply in keel::iscsi::response::reply_pdus(&e.for_reply, &outcome, e.limits) {
                self.deliver(reply);
            }
        }
        self.drive();
    }
}

fuzz_target!(|input: &[u8]| {
    let [config, shape, events @ ..] = input else {
        return;
    };
    let params = params(*config);
    let discovery = config & 0x01 != 0;
    let free = Arc::new(AtomicU32::new(if config & 0x40 != 0 { 8 } else { 1 << 20 }));
    let first_cmd_sn = u32::from(shape >> 4) << 28 | 1;
    let first_cmd_sn = if shape >> 4 == 0xf {
        u32::MAX - 2
    } else {
        first_cmd_sn
    };
    let start = Instant::now();
    let mut now = start;
    let device = device();
    let scsi = (!discovery).then(|| ScsiPort {
        device: device.clone(),
        nexus: Arc::new(Nexus {
            initiator_port: Arc::from("iqn.2026-11.org.example:fuzz,i,0x000000000001"),
            target_port: Arc::from(format!("{TARGET},t,0x0001")),
            relative_port: 1,
        }),
    });
    let core = SessionCore::new(
        SessionConfig {
            params,
            session_type: if discovery {
                SessionType::Discovery
            } else {
                SessionType::Normal
            },
            cid: 1,
            local: "192.0.2.1:3260".parse().expect("a literal address"),
            first_cmd_sn,
            queue_depth: u32::from(shape & 0x0f) + 1,
            nop_interval: Some(Duration::from_secs(5)),
            nop_timeout: Duration::from_secs(3),
        },
        scsi,
        Box::new(|which: &str| {
            if which == "All" || which == TARGET {
                vec![(TARGET.to_string(), 1)]
            } else {
                Vec::new()
            }
        }),
        Budget(free.clone()),
        now,
    );
    let mut driver = Driver {
        exp_cmd_sn: core.window().exp_cmd_sn(),
        announced: core.window().announce(),
        core,
        running: Vec::new(),
        running_itts: HashSet::new(),
        budget_waits: Vec::new(),
        max_burst: params.max_burst,
        closed: false,
    };
    let mut codec = PduCodec::new(FrameLimits {
        header_digest: false,
        data_digest: params.data_digest,
        max_data_segment: params.target_max_recv,
    });
    let mut buf = BytesMut::from(events);
    for _ in 0..MAX_EVENTS {
        if buf.is_empty() {
            break;
        }
        let event = buf[0];
        bytes::Buf::advance(&mut buf, 1);
        match event {
            0x00..=0x7f => {
                let raw = match codec.decode(&mut buf) {
                    Ok(Some(raw)) => raw,
                    Ok(None) | Err(_) => break,
                };
                let was_closed = driver.core.is_closing();
                driver.core.handle_pdu(now, raw);
                if was_closed {
                    assert!(
                        driver.core.poll_transmit().is_none() && driver.core.poll_work().is_none(),
                        "output after the decision to close"
                    );
                }
                driver.drive();
            }
            0x80..=0x9f => driver.complete(usize::from(event & 0x1f)),
            0xa0..=0xbf => {
                if !driver.running.is_empty() {
                    let i = usize::from(event & 0x1f) % driver.running.len();
                    let _ = driver.running[i].fate.begin();
                }
            }
            0xc0..=0xdf => {
                now += Duration::from_secs(u64::from(event & 0x1f));
                driver.core.handle_timeout(now);
                if let Some(deadline) = driver.core.poll_timeout() {
                    assert!(deadline >= start, "a deadline before the session began");
                }
                driver.drive();
            }
            0xe0..=0xef => {
                if let Some((itt, ticket, _)) = driver.budget_waits.pop() {
                    // The fair semaphore grants it once memory frees up.
                    free.fetch_add(64, Ordering::AcqRel);
                    let share = Units(free.clone(), 0);
                    driver.core.handle_budget(itt, ticket, share);
                    driver.drive();
                }
            }
            // The connection ends (the rest of the input is not read).
            0xf0..=0xff => break,
        }
    }
    // The connection ends: the driver abandons what is left and lets the commands finish.
    driver.core.abandon_tasks();
    while !driver.running.is_empty() {
        driver.complete(0);
    }
    assert_eq!(driver.core.window().in_flight(), 0, "a window slot leaked");
    let _ = driver.closed;
});
