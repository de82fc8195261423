//! One TCP connection: login, then a discovery or normal session, until logout, error,
//! reinstatement or shutdown.
//!
//! Ownership: the reader (this task) owns the session state — the task table, the CmdSN
//! order, R2T bookkeeping. Commands run as their own tokio tasks and hand their reply PDUs to
//! the writer task, which owns the socket's write half and StatSN, and stamps ExpCmdSN and
//! MaxCmdSN from the shared [`CmdWindow`] as each PDU leaves.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::limits::OverLimit;
use super::login::{LoginOutcome, SessionType};
use super::login_driver::{LoggedIn, login_phase, opcode_name};
use super::params::{self, Negotiated};
use super::response::{CommandForReply, DataInLimits, reply_pdus};
use super::session::SessionGuard;
use super::text_exchange::{TextExchange, TextStep};
use super::window::CmdWindow;
use super::writer::write_loop;
use super::{Service, Target};
use crate::scsi::task_set::{Aborted, Membership, TaskFate};
use crate::scsi::{Nexus, ScsiRequest, ScsiResponse, Sense, SenseKey, TaskAttr, cdb};
use crate::wire::framing::FrameError;
use crate::wire::{
    self, DataOut, FrameLimits, LogoutRequest, LogoutResponse, NopIn, NopOut, OutPdu, PduCodec,
    R2t, RESERVED_TAG, Reject, Reply, Request, ScsiCommand, SeqNums, TaskMgmtRequest,
    TaskMgmtResponse, TextRequest, TextResponse, WireError, text,
};

/// Reject reasons (RFC 7143 §11.17.1).
mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Task management function codes (§11.5.1) and responses (§11.6.1).
mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;

    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const REASSIGN_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
}

/// The largest write keel buffers for one command: what the SCSI layer accepts in one
/// transfer. A larger ExpectedDataTransferLength is not buffered; the SCSI layer refuses the
/// command.
const MAX_WRITE_BUFFER: u32 = crate::scsi::sbc::MAX_TRANSFER_BYTES;

/// How often a session waiting for commands stuck in the backend says so.
const DRAIN_REPORT: Duration = Duration::from_secs(30);

/// Serves one accepted connection to its end.
pub async fn serve(stream: TcpStream, ctx: Arc<Service>) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let span = tracing::info_span!("conn", %peer);
    async move {
        // Counted for the connection limits until this task ends.
        let slot = match stream.peer_addr() {
            Ok(addr) => ctx.connections.acquire(addr.ip(), &ctx.limits).map(Some),
            Err(_) => Ok(None),
        };
        let (_slot, over) = match slot {
            Ok(slot) => (slot, None),
            Err(over) => (None, Some(over)),
        };
        match run(stream, &ctx, over).await {
            Ok(()) => debug!("connection closed"),
            Err(e) => info!("connection ended: {e}"),
        }
    }
    .instrument(span)
    .await
}

/// Read buffer of a connection in the login phase, and of one in the full feature phase.
const LOGIN_READ_BUFFER: usize = 4 * 1024;
const SESSION_READ_BUFFER: usize = 64 * 1024;

async fn run(
    stream: TcpStream,
    ctx: &Arc<Service>,
    over: Option<OverLimit>,
) -> Result<(), FrameError> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr()?;
    let (rd, mut wr) = stream.into_split();
    // A connection that has not logged in gets a small read buffer (a login PDU is at most
    // 48 + 8192 bytes, and the buffer grows when one needs more): a thousand idle
    // connections then cost a few MiB, not 64 KiB each of heap that the allocator keeps
    // after they are gone. The full-size buffer comes with the full feature phase.
    let mut reader =
        FramedRead::with_capacity(rd, PduCodec::new(FrameLimits::LOGIN), LOGIN_READ_BUFFER);

    let login_time = Duration::from_secs(ctx.settings.login_timeout_secs);
    let login = tokio::select! {
        r = tokio::time::timeout(login_time, login_phase(&mut reader, &mut wr, ctx, over)) => match r {
            Ok(r) => r?,
            Err(_) => {
                info!("login did not complete within {login_time:?}; dropping the connection");
                return Ok(());
            }
        },
        _ = ctx.shutdown.cancelled() => return Ok(()),
    };
    let Some(LoggedIn {
        outcome,
        guard,
        stat_sn,
    }) = login
    else {
        return Ok(());
    };

    let params = outcome.params;
    reader.read_buffer_mut().reserve(SESSION_READ_BUFFER);
    reader.decoder_mut().limits = FrameLimits {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        max_data_segment: params.target_max_recv,
    };
    let target = outcome
        .target
        .as_ref()
        .and_then(|t| ctx.targets.get(&t.name));
    let span = tracing::info_span!(
        "session",
        initiator = %outcome.initiator_name,
        isid = %hex(&outcome.isid),
        tsih = guard.tsih,
        target = %target.as_ref().map(|t| t.name.as_str()).unwrap_or("discovery"),
    );
    info!(parent: &span, chap_user = outcome.chap_user.as_deref().unwrap_or("-"), header_digest = params.header_digest, data_digest = params.data_digest,
          max_recv = params.initiator_max_recv, max_burst = params.max_burst, "logged in");

    let window = Arc::new(CmdWindow::new(outcome.cmd_sn, ctx.settings.queue_depth));
    let (out_tx, out_rx) = mpsc::channel(1024);
    let writer = tokio::spawn(
        write_loop(
            wr,
            out_rx,
            stat_sn,
            window.clone(),
            params.header_digest,
            params.data_digest,
        )
        .instrument(span.clone()),
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (grant_tx, grant_rx) = mpsc::unbounded_channel();
    let nexus = target.as_ref().map(|t| {
        Arc::new(Nexus {
            initiator_port: format!("{},i,0x{}", outcome.initiator_name, hex(&outcome.isid)).into(),
            target_port: format!("{},t,0x{:04x}", t.name, t.portal_group_tag).into(),
            relative_port: t.portal_group_tag,
        })
    });
    let mut session = Session {
        ctx,
        guard: &guard,
        outcome: &outcome,
        params,
        target,
        nexus,
        window,
        out: out_tx,
        tasks: HashMap::new(),
        ahead: HashMap::new(),
        skip: HashSet::new(),
        running: TaskTracker::new(),
        done_tx,
        grant_tx,
        next_ticket: 0,
        text: TextExchange::default(),
        next_ttt: 0,
        local,
    };
    let result = session
        .full_feature(&mut reader, done_rx, grant_rx)
        .instrument(span.clone())
        .await;
    session.drain().instrument(span.clone()).await;
    if let (Some(target), Some(nexus)) = (&session.target, &session.nexus) {
        target.device.nexus_lost(nexus);
    }
    drop(session);
    // All senders are gone once the commands have drained: the writer flushes and exits.
    match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(Err(e))) => debug!(parent: &span, "writer: {e}"),
        Err(_) => debug!(parent: &span, "writer did not finish in time"),
        _ => {}
    }
    info!(parent: &span, "session ended");
    drop(guard);
    result
}

/// A command the session knows about, from arrival to its last reply.
struct Task {
    lun: u64,
    /// Whether the task executes and replies or was aborted: decided once, atomically,
    /// between its own progress and task management (its own session's or, through the
    /// unit's task set, another's), so an initiator never sees both a status and a
    /// successful abort, and an aborted write never lands after the abort was reported.
    fate: Arc<TaskFate>,
    /// Cancelled when the task's work is over (its replies handed to the writer, or its
    /// abort settled): task management waits on it before reporting an abort.
    finished: CancellationToken,
    state: TaskState,
    /// Its place in the logical unit's task set, left when the task is dropped.
    _membership: Option<Membership>,
}

enum TaskState {
    /// A write still receiving its data.
    Collecting(Box<WriteCollect>),
    /// Running in the SCSI layer.
    Running,
}

/// What a started task does: run in the SCSI layer, or answer at once with a failure the
/// transport found.
enum Work {
    Execute(ScsiRequest),
    Fail(ScsiResponse),
}

/// A write collecting immediate, unsolicited and solicited data (RFC 7143 §4.2.3.2).
struct WriteCollect {
    command: ScsiCommand,
    buffer: BytesMut,
    received: u32,
    unsolicited_next: u32,
    unsolicited_end: u32,
    /// DataSN expected next in the unsolicited sequence (every sequence counts from 0).
    unsolicited_data_sn: u32,
    /// Set when a Data-Out was unusable (bad data digest, wrong DataSN): the task then ends
    /// with CHECK CONDITION and this sense once all its data is in (RFC 7143 §7.8 b).
    failure: Option<Sense>,
    /// This write's share of the server's write-buffer memory.
    share: Share,
    next_r2t_offset: u32,
    r2t_sn: u32,
    outstanding: Vec<OutstandingR2t>,
}

/// A collecting write's share of the write-buffer memory (`write_buffer_mib`).
enum Share {
    /// Held until the write has run.
    Held(OwnedSemaphorePermit),
    /// Asked for with this ticket: the buffer holds only the unsolicited data and no R2T
    /// goes out until the share is granted. Dropping the write (abort, connection end)
    /// drops the guard, which takes the request out of the queue.
    Waiting {
        ticket: u64,
        _withdraw: tokio_util::sync::DropGuard,
    },
}

/// A write-buffer share for the write with this tag and ticket.
struct BudgetGrant {
    itt: u32,
    ticket: u64,
    permit: OwnedSemaphorePermit,
}

/// Write-buffer memory is counted in KiB (`Service::write_budget`).
fn budget_units(bytes: u32) -> u32 {
    bytes.div_ceil(1024)
}

struct OutstandingR2t {
    ttt: u32,
    next: u32,
    end: u32,
    data_sn: u32,
}

enum Flow {
    Continue,
    Close,
}

struct Session<'a> {
    ctx: &'a Arc<Service>,
    guard: &'a SessionGuard<'a>,
    outcome: &'a LoginOutcome,
    params: Negotiated,
    target: Option<Arc<Target>>,
    nexus: Option<Arc<Nexus>>,
    window: Arc<CmdWindow>,
    out: mpsc::Sender<OutPdu>,
    tasks: HashMap<u32, Task>,
    /// Commands that arrived ahead of ExpCmdSN, waiting for the gap to fill.
    ahead: HashMap<u32, (Request, [u8; wire::BHS_LEN])>,
    /// CmdSNs considered received without a command (aborted before arrival, §11.5.1).
    skip: HashSet<u32>,
    /// Every command task of the session, so its end can wait for all of them.
    running: TaskTracker,
    done_tx: mpsc::UnboundedSender<u32>,
    /// Write-buffer shares granted to writes that had to wait for one.
    grant_tx: mpsc::UnboundedSender<BudgetGrant>,
    next_ticket: u64,
    text: TextExchange,
    next_ttt: u32,
    local: SocketAddr,
}

impl Session<'_> {
    async fn full_feature(
        &mut self,
        reader: &mut FramedRead<OwnedReadHalf, PduCodec>,
        mut done_rx: mpsc::UnboundedReceiver<u32>,
        mut grant_rx: mpsc::UnboundedReceiver<BudgetGrant>,
    ) -> Result<(), FrameError> {
        let interval = self.ctx.settings.nop_interval_secs;
        let idle_limit = Duration::from_secs(if interval == 0 {
            86_400 * 365
        } else {
            interval
        });
        let ping_timeout = Duration::from_secs(self.ctx.settings.nop_timeout_secs);
        let mut last_heard = Instant::now();
        let mut ping: Option<(u32, Instant)> = None;
        // Made once, not per PDU: each of these registers with a waiter list or the timer
        // wheel, which per PDU showed in profiles. The idle timer is moved lazily: hearing
        // from the initiator does not reset it; when it fires, it checks whether the
        // connection has really been quiet for the whole interval.
        let replaced = self.guard.cancel.clone().cancelled_owned();
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        let timer = tokio::time::sleep_until(last_heard + idle_limit);
        tokio::pin!(replaced, shutdown, timer);
        loop {
            tokio::select! {
                biased;
                _ = &mut replaced => {
                    info!("session replaced or reset; closing");
                    return Ok(());
                }
                _ = &mut shutdown => {
                    info!("server shutting down; closing the session");
                    return Ok(());
                }
                Some(itt) = done_rx.recv() => {
                    self.tasks.remove(&itt);
                }
                Some(grant) = grant_rx.recv() => {
                    self.on_budget_granted(grant).await;
                }
                pdu = reader.next() => {
                    let raw = match pdu {
                        None => return Ok(()),
                        Some(Ok(raw)) => raw,
                        Some(Err(FrameError::Wire(WireError::DataSegmentTooLong { len, max }))) => {
                            warn!("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}; closing");
                            if let Some(header) = reader.read_buffer().get(..wire::BHS_LEN) {
                                let mut bhs = [0u8; wire::BHS_LEN];
                                bhs.copy_from_slice(header);
                                self.reject(reject::PROTOCOL_ERROR, &bhs).await;
                            }
                            return Ok(());
                        }
                        Some(Err(e)) => return Err(e),
                    };
                    last_heard = Instant::now();
                    ping = None;
                    if let Flow::Close = self.on_pdu(raw).await {
                        return Ok(());
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    match ping {
                        Some((_, deadline)) if now >= deadline => {
                            warn!("no answer to NOP-In within {ping_timeout:?}; dropping the connection");
                            return Ok(());
                        }
                        Some((_, deadline)) => timer.as_mut().reset(deadline),
                        None if now < last_heard + idle_limit => {
                            timer.as_mut().reset(last_heard + idle_limit);
                        }
                        None => {
                            let ttt = self.allocate_ttt();
                            self.send(Reply::NopIn(NopIn { lun: [0; 8], itt: RESERVED_TAG, ttt, sn: SeqNums::default(), data: Bytes::new() })).await;
                            ping = Some((ttt, now + ping_timeout));
                            timer.as_mut().reset(now + ping_timeout);
                        }
                    }
                }
            }
        }
    }

    async fn on_pdu(&mut self, raw: wire::RawPdu) -> Flow {
        if !raw.data_digest_ok {
            // §7.8: discard the payload and tell the initiator. A data PDU still counts toward
            // its task, which then ends with CHECK CONDITION; other PDUs are simply dropped.
            warn!("data digest error; PDU rejected");
            self.reject(reject::DATA_DIGEST_ERROR, &raw.bhs).await;
            if let Ok(Request::DataOut(d)) = Request::decode(&raw.bhs, &raw.ahs, raw.data) {
                return self.on_data_out(d, &raw.bhs, false).await;
            }
            return Flow::Continue;
        }
        let request = match Request::decode(&raw.bhs, &raw.ahs, raw.data) {
            Ok(r) => r,
            Err(WireError::UnknownOpcode(op)) => {
                warn!("unknown opcode 0x{op:02x}; rejected");
                self.reject(reject::COMMAND_NOT_SUPPORTED, &raw.bhs).await;
                return Flow::Continue;
            }
            Err(e) => {
                warn!("malformed PDU: {e}; rejected");
                self.reject(reject::INVALID_PDU_FIELD, &raw.bhs).await;
                return Flow::Continue;
            }
        };
        let ordered = match &request {
            Request::NopOut(p) if p.itt == RESERVED_TAG => None,
            Request::NopOut(p) => Some((p.immediate, p.cmd_sn)),
            Request::ScsiCommand(p) => Some((p.immediate, p.cmd_sn)),
            Request::TaskMgmt(p) => Some((p.immediate, p.cmd_sn)),
            Request::Text(p) => Some((p.immediate, p.cmd_sn)),
            Request::Logout(p) => Some((p.immediate, p.cmd_sn)),
            Request::Login(_) | Request::DataOut(_) | Request::Snack(_) => None,
        };
        let is_command = matches!(request, Request::ScsiCommand(_));
        let flow = match ordered {
            None => self.execute(request, &raw.bhs).await,
            Some((true, _)) => {
                if is_command {
                    self.window.occupy();
                }
                self.execute(request, &raw.bhs).await
            }
            Some((false, cmd_sn)) => {
                let exp = self.window.exp_cmd_sn();
                if !self.window.admits(cmd_sn) || self.ahead.contains_key(&cmd_sn) {
                    // §4.2.2.1: outside the window (or a duplicate): silently ignored.
                    debug!(cmd_sn, exp, "command outside the CmdSN window ignored");
                    return Flow::Continue;
                }
                if cmd_sn != exp {
                    // Early: it runs once the commands before it have arrived.
                    self.ahead.insert(cmd_sn, (request, raw.bhs));
                    return Flow::Continue;
                }
                self.window.accept(is_command);
                self.execute(request, &raw.bhs).await
            }
        };
        match flow {
            Flow::Close => Flow::Close,
            // Commands that arrived early may run now, and so may those behind a CmdSN an
            // ABORT TASK declared received.
            Flow::Continue => self.run_ready().await,
        }
    }

    /// Runs, in CmdSN order, the early commands whose turn has come, stepping over CmdSNs
    /// that count as received without a command.
    async fn run_ready(&mut self) -> Flow {
        loop {
            let exp = self.window.exp_cmd_sn();
            if let Some((next, bhs)) = self.ahead.remove(&exp) {
                self.window.accept(matches!(next, Request::ScsiCommand(_)));
                if let Flow::Close = self.execute(next, &bhs).await {
                    return Flow::Close;
                }
            } else if self.skip.remove(&exp) {
                self.window.accept(false);
            } else {
                return Flow::Continue;
            }
        }
    }

    async fn execute(&mut self, request: Request, bhs: &[u8; wire::BHS_LEN]) -> Flow {
        let discovery = self.outcome.session_type == SessionType::Discovery;
        match request {
            Request::NopOut(p) => self.on_nop_out(p).await,
            Request::Text(p) => return self.on_text(p, bhs).await,
            Request::Logout(p) => return self.on_logout(p).await,
            Request::ScsiCommand(p) if !discovery => self.on_command(p, bhs).await,
            Request::DataOut(p) if !discovery => return self.on_data_out(p, bhs, true).await,
            Request::TaskMgmt(p) if !discovery => return self.on_task_mgmt(p).await,
            Request::Snack(_) => {
                // SNACK needs ErrorRecoveryLevel > 0; keel negotiates 0.
                self.reject(reject::SNACK_REJECT, bhs).await;
            }
            Request::Login(_) => {
                warn!("Login Request in full feature phase; rejected");
                self.reject(reject::PROTOCOL_ERROR, bhs).await;
            }
            other => {
                if let Request::ScsiCommand(_) = other {
                    self.window.complete();
                }
                warn!(
                    "{} not allowed in a discovery session; rejected",
                    opcode_name(&other)
                );
                self.reject(reject::PROTOCOL_ERROR, bhs).await;
            }
        }
        Flow::Continue
    }

    async fn on_nop_out(&mut self, p: NopOut) {
        if p.itt == RESERVED_TAG {
            // The answer to one of our pings: nothing to send back.
            return;
        }
        // §11.19: echo the ping data back, trimmed to what the initiator can receive.
        let max = self.params.initiator_max_recv as usize;
        let data = p.data.slice(..p.data.len().min(max));
        self.send(Reply::NopIn(NopIn {
            lun: p.lun,
            itt: p.itt,
            ttt: RESERVED_TAG,
            sn: SeqNums::default(),
            data,
        }))
        .await;
    }

    async fn on_command(&mut self, cmd: ScsiCommand, bhs: &[u8; wire::BHS_LEN]) {
        if self.tasks.contains_key(&cmd.itt) {
            warn!(
                itt = cmd.itt,
                "command reuses the tag of a task in progress; rejected"
            );
            self.window.complete();
            self.reject(reject::TASK_IN_PROGRESS, bhs).await;
            return;
        }
        let edtl = cmd.expected_length;
        let immediate_len = cmd.data.len() as u32;
        if immediate_len > 0
            && (!cmd.write
                || !self.params.immediate_data
                || immediate_len > edtl
                || immediate_len > self.params.first_burst)
        {
            warn!(
                itt = cmd.itt,
                immediate_len, edtl, "immediate data not allowed here; rejected"
            );
            self.window.complete();
            self.reject(reject::PROTOCOL_ERROR, bhs).await;
            return;
        }
        let lun = cdb::decode_lun(cmd.lun).unwrap_or(u64::MAX);
        let fate = TaskFate::new();
        let finished = CancellationToken::new();
        let membership = match (&self.target, &self.nexus) {
            (Some(target), Some(nexus)) => target.device.lun(lun).map(|lu| {
                lu.task_set()
                    .join(nexus.clone(), fate.clone(), finished.clone())
            }),
            _ => None,
        };
        let mut task = Task {
            lun,
            fate,
            finished,
            state: TaskState::Running,
            _membership: membership,
        };
        let itt = cmd.itt;
        if cmd.read && cmd.write {
            // Bidirectional commands need a second buffer keel does not keep yet.
            warn!(itt, "bidirectional command refused");
            let refuse =
                ScsiResponse::check_condition(&Sense::invalid_field_in_cdb(0, None), false);
            self.start(&mut task, cmd, Work::Fail(refuse), 0, None)
                .await;
            self.tasks.insert(itt, task);
            return;
        }
        if !cmd.write || edtl == 0 || edtl > MAX_WRITE_BUFFER || immediate_len == edtl {
            // No data to collect (or too much to buffer: the SCSI layer refuses it), or all
            // of it came as immediate data: the command PDU's own buffer is the data.
            let work = self.scsi_request(&task, &cmd, cmd.data.clone());
            self.start(&mut task, cmd, work, 0, None).await;
            self.tasks.insert(itt, task);
            return;
        }
        let unsolicited_end = if cmd.final_bit || self.params.initial_r2t {
            immediate_len
        } else {
            self.params.first_burst.min(edtl)
        };
        // The buffer is sized once this write has its share of the write-buffer memory;
        // until then only the unsolicited data (at most FirstBurstLength) has a place.
        let (share, buffer_len) =
            match Arc::clone(&self.ctx.write_budget).try_acquire_many_owned(budget_units(edtl)) {
                Ok(permit) => (Share::Held(permit), edtl),
                Err(_) => (self.wait_for_budget(itt, edtl), unsolicited_end),
            };
        let mut buffer = BytesMut::zeroed(buffer_len as usize);
        buffer[..cmd.data.len()].copy_from_slice(&cmd.data);
        let mut collect = Box::new(WriteCollect {
            command: ScsiCommand {
                data: Bytes::new(),
                ..cmd
            },
            buffer,
            received: immediate_len,
            unsolicited_next: immediate_len,
            unsolicited_end,
            unsolicited_data_sn: 0,
            failure: None,
            share,
            next_r2t_offset: unsolicited_end,
            r2t_sn: 0,
            outstanding: Vec::new(),
        });
        // Not all the data came as immediate data (that case went above): ask for the rest.
        if let Share::Held(_) = collect.share {
            self.issue_r2ts(&mut collect).await;
        }
        task.state = TaskState::Collecting(collect);
        self.tasks.insert(itt, task);
    }

    /// Waits, off the reader, for `edtl` bytes of the server's write-buffer memory and hands
    /// the share to the reader. Writes are served in arrival order (the semaphore is fair).
    /// If the write or its connection ends first, the wait ends with it.
    fn wait_for_budget(&mut self, itt: u32, edtl: u32) -> Share {
        debug!(
            itt,
            edtl, "write waits for write-buffer memory (write_buffer_mib)"
        );
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let budget = Arc::clone(&self.ctx.write_budget);
        let grants = self.grant_tx.clone();
        let withdrawn = CancellationToken::new();
        let withdraw = withdrawn.clone().drop_guard();
        tokio::spawn(async move {
            tokio::select! {
                permit = budget.acquire_many_owned(budget_units(edtl)) => {
                    if let Ok(permit) = permit {
                        let _ = grants.send(BudgetGrant { itt, ticket, permit });
                    }
                }
                _ = withdrawn.cancelled() => {}
                _ = grants.closed() => {}
            }
        });
        Share::Waiting {
            ticket,
            _withdraw: withdraw,
        }
    }

    /// A waiting write got its memory: size its buffer and ask for its data. A grant for a
    /// task that is gone (aborted, or its unsolicited data was all of it) is dropped, which
    /// returns the memory.
    async fn on_budget_granted(&mut self, grant: BudgetGrant) {
        let Some(mut task) = self.tasks.remove(&grant.itt) else {
            return;
        };
        if let TaskState::Collecting(c) = &mut task.state
            && matches!(c.share, Share::Waiting { ticket, .. } if ticket == grant.ticket)
        {
            c.buffer.resize(c.command.expected_length as usize, 0);
            c.share = Share::Held(grant.permit);
            self.issue_r2ts(c).await;
        }
        self.tasks.insert(grant.itt, task);
    }

    /// Sends R2Ts until MaxOutstandingR2T are outstanding or all data is asked for.
    async fn issue_r2ts(&mut self, c: &mut WriteCollect) {
        let edtl = c.command.expected_length;
        while c.outstanding.len() < self.params.max_outstanding_r2t as usize
            && c.next_r2t_offset < edtl
        {
            let length = self.params.max_burst.min(edtl - c.next_r2t_offset);
            let ttt = self.allocate_ttt();
            let r2t = R2t {
                lun: c.command.lun,
                itt: c.command.itt,
                ttt,
                sn: SeqNums::default(),
                r2t_sn: c.r2t_sn,
                buffer_offset: c.next_r2t_offset,
                desired_length: length,
            };
            c.outstanding.push(OutstandingR2t {
                ttt,
                next: c.next_r2t_offset,
                end: c.next_r2t_offset + length,
                data_sn: 0,
            });
            c.r2t_sn += 1;
            c.next_r2t_offset += length;
            self.send(Reply::R2t(r2t)).await;
        }
    }

    /// One Data-Out PDU; `intact` is false when its data digest failed (its bytes then only
    /// count, and the task will fail). Data out of order, or with the wrong DataSN, ends the
    /// connection: at ErrorRecoveryLevel 0 there is no recovering the sequence.
    async fn on_data_out(&mut self, d: DataOut, bhs: &[u8; wire::BHS_LEN], intact: bool) -> Flow {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            debug!(itt = d.itt, "Data-Out for a task that is gone; ignored");
            return Flow::Continue;
        };
        let TaskState::Collecting(c) = &mut task.state else {
            debug!(
                itt = d.itt,
                "Data-Out for a task not expecting data; ignored"
            );
            return Flow::Continue;
        };
        let len = d.data.len() as u32;
        let start = d.buffer_offset;
        let end = start.saturating_add(len);
        // Data arrives in order (DataPDUInOrder=Yes): each PDU continues its sequence, the
        // unsolicited burst or one R2T's, and numbers itself with the sequence's next DataSN.
        let (in_order, expected_sn) = if d.ttt == RESERVED_TAG {
            // The F bit ends the unsolicited burst, which must then be complete (§4.2.5.2).
            let ok = start == c.unsolicited_next
                && end <= c.unsolicited_end
                && (!d.final_bit || end == c.unsolicited_end);
            let expected = c.unsolicited_data_sn;
            if ok {
                c.unsolicited_next = end;
                c.unsolicited_data_sn += 1;
            }
            (ok, expected)
        } else {
            match c.outstanding.iter_mut().position(|r| r.ttt == d.ttt) {
                Some(i) if start == c.outstanding[i].next && end <= c.outstanding[i].end => {
                    let expected = c.outstanding[i].data_sn;
                    c.outstanding[i].next = end;
                    c.outstanding[i].data_sn += 1;
                    if end == c.outstanding[i].end {
                        c.outstanding.remove(i);
                    }
                    (true, expected)
                }
                _ => (false, 0),
            }
        };
        if !in_order {
            // The data stream cannot be followed any more; at ERL 0 the connection ends.
            warn!(
                itt = d.itt,
                offset = start,
                len,
                ttt = d.ttt,
                "Data-Out out of order or out of range; closing"
            );
            self.reject(reject::PROTOCOL_ERROR, bhs).await;
            return Flow::Close;
        }
        if d.data_sn != expected_sn {
            // The offsets still tell where the data goes, so the stream stays in step: reject
            // the PDU and fail the task, keeping the session.
            warn!(
                itt = d.itt,
                data_sn = d.data_sn,
                expected_sn,
                "Data-Out with a wrong DataSN; the command will fail"
            );
            self.reject(reject::PROTOCOL_ERROR, bhs).await;
            if let Some(Task {
                state: TaskState::Collecting(c),
                ..
            }) = self.tasks.get_mut(&d.itt)
            {
                // ABORTED COMMAND, DATA PHASE ERROR.
                c.failure
                    .get_or_insert(Sense::new(SenseKey::AbortedCommand, 0x4b, 0x00));
            }
            return self.after_data_out(d.itt, len).await;
        }
        if intact {
            c.buffer[start as usize..end as usize].copy_from_slice(&d.data);
        } else {
            // §13.7.1: ABORTED COMMAND, "protocol service CRC error".
            c.failure
                .get_or_insert(Sense::new(SenseKey::AbortedCommand, 0x47, 0x05));
        }
        self.after_data_out(d.itt, len).await
    }

    /// Counts `len` more bytes of a write's data: starts the command once all of it is in,
    /// or asks for more with R2Ts when an R2T sequence has completed.
    async fn after_data_out(&mut self, itt: u32, len: u32) -> Flow {
        let Some(mut task) = self.tasks.remove(&itt) else {
            return Flow::Continue;
        };
        if let TaskState::Collecting(c) = &mut task.state {
            c.received += len;
            if c.received == c.command.expected_length {
                if let TaskState::Collecting(c) =
                    std::mem::replace(&mut task.state, TaskState::Running)
                {
                    self.finish_collect(&mut task, *c).await;
                }
            } else if let Share::Held(_) = c.share {
                self.issue_r2ts(c).await;
            }
        }
        self.tasks.insert(itt, task);
        Flow::Continue
    }

    async fn finish_collect(&mut self, task: &mut Task, c: WriteCollect) {
        let work = if let Some(sense) = &c.failure {
            Work::Fail(ScsiResponse::check_condition(sense, false))
        } else {
            self.scsi_request(task, &c.command, c.buffer.freeze())
        };
        // A write still waiting for its share can only finish here when its unsolicited
        // data was all of it; its small buffer then holds everything.
        let budget = match c.share {
            Share::Held(permit) => Some(permit),
            Share::Waiting { .. } => None,
        };
        self.start(task, c.command, work, c.r2t_sn, budget).await;
    }

    fn scsi_request(&self, task: &Task, cmd: &ScsiCommand, data_out: Bytes) -> Work {
        let Some(nexus) = self.nexus.clone() else {
            // Only normal sessions reach here; a nexus exists.
            return Work::Fail(ScsiResponse::status(crate::scsi::ScsiStatus::Busy));
        };
        Work::Execute(ScsiRequest {
            nexus,
            lun: task.lun,
            cdb: cmd.cdb.clone(),
            data_out,
            expected_in: if cmd.read { cmd.expected_length } else { 0 },
            attr: task_attr(cmd.attr),
        })
    }

    /// Runs the command's work on its own tokio task, tracked by the session.
    /// `budget`, a write's share of the write-buffer memory, is returned when the command
    /// has run and its data is gone.
    async fn start(
        &mut self,
        task: &mut Task,
        cmd: ScsiCommand,
        work: Work,
        r2t_count: u32,
        budget: Option<OwnedSemaphorePermit>,
    ) {
        let info = CommandForReply {
            itt: cmd.itt,
            lun: cmd.lun,
            expected_length: cmd.expected_length,
            read: cmd.read,
            write: cmd.write,
            r2t_count,
        };
        let limits = DataInLimits {
            max_segment: self.params.initiator_max_recv,
            max_burst: self.params.max_burst,
        };
        let target = self.target.clone();
        let out = self.out.clone();
        let window = self.window.clone();
        let done = self.done_tx.clone();
        let fate = task.fate.clone();
        let finished = task.finished.clone();
        let command = Box::pin(
            async move {
                // Fires however this future ends, so nobody waits on it forever.
                let _finished = finished.drop_guard();
                let ended = match fate.begin() {
                    // Aborted before it started: it never acts on the medium.
                    Err(aborted) => Err(aborted),
                    Ok(()) => {
                        let outcome = match (work, target) {
                            (Work::Execute(request), Some(target)) => {
                                target.device.execute(request).await
                            }
                            (Work::Fail(response), _) => response,
                            (Work::Execute(_), None) => {
                                ScsiResponse::status(crate::scsi::ScsiStatus::Busy)
                            }
                        };
                        fate.complete().map(|()| outcome)
                    }
                };
                drop(budget);
                window.complete();
                // Tell the reader first: once the reply is out, the initiator may reuse the tag.
                let _ = done.send(info.itt);
                let outcome = match ended {
                    Ok(outcome) => outcome,
                    Err(Aborted::Silently) => return,
                    // Aborted by another nexus: TAS = 1 (control mode page), so it says so.
                    Err(Aborted::Reported) => {
                        ScsiResponse::status(crate::scsi::ScsiStatus::TaskAborted)
                    }
                };
                for reply in reply_pdus(&info, &outcome, limits) {
                    if out.send(reply.encode()).await.is_err() {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        // Many commands finish at their first poll (reads served from memory, refusals):
        // those run right here, sparing a task spawn and a hop to another thread. The others
        // go on on their own task, tracked with the session's.
        let mut command = command;
        let first = std::future::poll_fn(|cx| Poll::Ready(command.as_mut().poll(cx))).await;
        if first.is_pending() {
            self.running.spawn(command);
        }
        task.state = TaskState::Running;
    }

    async fn on_task_mgmt(&mut self, p: TaskMgmtRequest) -> Flow {
        let lun = cdb::decode_lun(p.lun).unwrap_or(u64::MAX);
        let (Some(target), Some(nexus)) = (self.target.clone(), self.nexus.clone()) else {
            return Flow::Continue;
        };
        let (response, waits) = match p.function {
            tmf::ABORT_TASK => {
                if self.tasks.contains_key(&p.referenced_tag) {
                    let (aborted, waits) =
                        self.abort_where(|t, itt| itt == p.referenced_tag && t.lun == lun);
                    // A task already replying has completed: there is nothing to abort.
                    (
                        if aborted > 0 {
                            tmf::COMPLETE
                        } else {
                            tmf::NO_TASK
                        },
                        waits,
                    )
                } else {
                    // §11.5.1: a task not received yet whose RefCmdSN lies in the command
                    // window, before this request's CmdSN, counts as received and aborted
                    // ("Function complete"); outside the window it does not exist (it already
                    // completed, or never will arrive).
                    let in_window = wire::sn_le(self.window.exp_cmd_sn(), p.ref_cmd_sn)
                        && wire::sn_le(p.ref_cmd_sn, self.window.max_cmd_sn())
                        && wire::sn_lt(p.ref_cmd_sn, p.cmd_sn);
                    if in_window && self.ahead.remove(&p.ref_cmd_sn).is_none() {
                        self.skip.insert(p.ref_cmd_sn);
                    }
                    (
                        if in_window {
                            tmf::COMPLETE
                        } else {
                            tmf::NO_TASK
                        },
                        Vec::new(),
                    )
                }
            }
            // ABORT TASK SET: the issuing nexus's tasks (SAM-5 §7.3). CLEAR TASK SET: every
            // nexus's, the task set being shared (SAM-5 §7.4; control mode page TST = 000b).
            tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET => match target.device.lun(lun) {
                None => (tmf::NO_LUN, Vec::new()),
                Some(lu) => {
                    let mut waits = self.abort_where(|t, _| t.lun == lun).1;
                    if p.function == tmf::CLEAR_TASK_SET {
                        waits.extend(lu.task_set().abort_where(&nexus, |n| *n != *nexus));
                    }
                    (tmf::COMPLETE, waits)
                }
            },
            // Resets abort every nexus's tasks; the others' end with TASK ABORTED.
            tmf::LOGICAL_UNIT_RESET => {
                let (_, mut waits) = self.abort_where(|t, _| t.lun == lun);
                if let Some(lu) = target.device.lun(lun) {
                    waits.extend(lu.task_set().abort_where(&nexus, |n| *n != *nexus));
                }
                if target.device.reset_lun(lun, &nexus) {
                    (tmf::COMPLETE, waits)
                } else {
                    (tmf::NO_LUN, waits)
                }
            }
            tmf::TARGET_WARM_RESET | tmf::TARGET_COLD_RESET => {
                let (_, mut waits) = self.abort_where(|_, _| true);
                for lu in target.device.luns() {
                    waits.extend(lu.task_set().abort_where(&nexus, |n| *n != *nexus));
                }
                target.device.reset_all(&nexus);
                (tmf::COMPLETE, waits)
            }
            tmf::TASK_REASSIGN => (tmf::REASSIGN_NOT_SUPPORTED, Vec::new()),
            tmf::CLEAR_ACA => (tmf::NOT_SUPPORTED, Vec::new()),
            _ => (tmf::NOT_SUPPORTED, Vec::new()),
        };
        info!(
            function = p.function,
            lun,
            referenced = p.referenced_tag,
            response,
            "task management"
        );
        let reply = Reply::TaskMgmt(TaskMgmtResponse {
            response,
            itt: p.itt,
            sn: SeqNums::default(),
        });
        let out = self.out.clone();
        let cold = p.function == tmf::TARGET_COLD_RESET;
        let ctx = self.ctx.clone();
        let target_name = target.name.clone();
        // The response waits until the aborted tasks have really finished (SAM-5 §7.2): a
        // write acknowledged as aborted must not land afterwards.
        tokio::spawn(
            async move {
                // No time limit: reporting an abort before the task's I/O is over would let a
                // write land after the initiator was told it never would.
                for finished in waits {
                    finished.cancelled().await;
                }
                let _ = out.send(reply.encode()).await;
                if cold {
                    // §11.5.1: a cold reset also ends every session to the target, this one too.
                    // At once: the response is already queued ahead of the writer's final flush,
                    // and no command the initiator sends after reading it may still run (it
                    // would meet the reset's unit attention on a session that is going away).
                    ctx.sessions.cancel_target(&target_name);
                }
            }
            .in_current_span(),
        );
        Flow::Continue
    }

    /// Aborts the matching tasks that have not started replying: collecting ones are dropped
    /// at once, running ones will not reply. Returns how many were aborted and the handles to
    /// wait on before the abort may be reported.
    fn abort_where(
        &mut self,
        matches: impl Fn(&Task, u32) -> bool,
    ) -> (usize, Vec<CancellationToken>) {
        let itts: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(itt, t)| matches(t, **itt))
            .map(|(itt, _)| *itt)
            .collect();
        let mut aborted = 0;
        let mut waits = Vec::new();
        for itt in itts {
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            // Whatever its fate, a running task is waited for: it may still be writing.
            if let TaskState::Running = task.state {
                waits.push(task.finished.clone());
            }
            if !task.fate.abort(Aborted::Silently).aborted() {
                // Already replying (or aborted by an earlier function): nothing more to do.
                continue;
            }
            aborted += 1;
            if let TaskState::Collecting(_) = task.state {
                self.tasks.remove(&itt);
                self.window.complete();
            }
        }
        (aborted, waits)
    }

    async fn on_text(&mut self, p: TextRequest, bhs: &[u8; wire::BHS_LEN]) -> Flow {
        let max = self.params.initiator_max_recv;
        let fresh_ttt = self.allocate_ttt();
        let chunk = match self.text.receive(p.continue_bit, p.ttt, &p.data, fresh_ttt) {
            TextStep::NeedMore(ttt) => super::text_exchange::TextChunk {
                data: Bytes::new(),
                final_bit: false,
                continue_bit: false,
                ttt,
            },
            TextStep::Continue => self.text.next_chunk(max),
            TextStep::Error => {
                self.reject(reject::PROTOCOL_ERROR, bhs).await;
                return Flow::Continue;
            }
            TextStep::Request(data) => {
                let pairs = match text::parse(&data) {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        warn!("bad text request: {e}");
                        self.reject(reject::PROTOCOL_ERROR, bhs).await;
                        return Flow::Continue;
                    }
                };
                let answer = self.text_answer(&pairs);
                self.text.respond(answer, max, fresh_ttt)
            }
        };
        self.send(Reply::Text(TextResponse {
            final_bit: chunk.final_bit,
            continue_bit: chunk.continue_bit,
            lun: p.lun,
            itt: p.itt,
            ttt: chunk.ttt,
            sn: SeqNums::default(),
            data: chunk.data,
        }))
        .await;
        Flow::Continue
    }

    /// Answers a full-feature text request: SendTargets (§6.3.1, Appendix C); keys that can't
    /// be renegotiated here are refused.
    fn text_answer(&self, pairs: &[(String, String)]) -> Bytes {
        let mut answer: Vec<(String, String)> = Vec::new();
        for (key, value) in pairs {
            if key == "SendTargets" {
                // Discovery shows only the targets this initiator is allowed to use.
                let visible = |t: &Arc<Target>| t.allowed.permits(&self.outcome.initiator_name);
                let targets: Vec<Arc<Target>> = match (self.outcome.session_type, value.as_str()) {
                    (SessionType::Discovery, "All") => self
                        .ctx
                        .targets
                        .list()
                        .into_iter()
                        .filter(visible)
                        .collect(),
                    (SessionType::Discovery, name) => self
                        .ctx
                        .targets
                        .get(name)
                        .into_iter()
                        .filter(visible)
                        .collect(),
                    // In a normal session only the session's own target is reported.
                    (SessionType::Normal, _) => self.target.clone().into_iter().collect(),
                };
                for t in targets {
                    answer.push(("TargetName".into(), t.name.clone()));
                    // The address the initiator reached us on, never the bind address.
                    answer.push((
                        "TargetAddress".into(),
                        format!(
                            "{},{}",
                            SocketAddr::new(self.local.ip().to_canonical(), self.local.port()),
                            t.portal_group_tag
                        ),
                    ));
                }
            } else if params::lookup(key).is_some() {
                answer.push((key.clone(), "Reject".into()));
            } else {
                answer.push((key.clone(), "NotUnderstood".into()));
            }
        }
        text::encode(&answer)
    }

    async fn on_logout(&mut self, p: LogoutRequest) -> Flow {
        // Reason 0: close the session; 1: close this connection; 2: remove it for recovery,
        // which needs ErrorRecoveryLevel 2 (§11.14.1).
        let response = match p.reason {
            0 => 0,
            1 if p.cid == self.outcome.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response == 0 {
            // Everything in flight completes before the session goes (§11.14).
            self.drain().await;
        }
        self.send(Reply::Logout(LogoutResponse {
            response,
            itt: p.itt,
            sn: SeqNums::default(),
            time2wait: 0,
            time2retain: 0,
        }))
        .await;
        if response == 0 {
            info!("logged out");
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Waits for every command task of the session to finish (aborted ones too) and drops
    /// writes still collecting data. There is no time limit: until the backend has finished
    /// the old I/O, a replacement session must not start (its writes could be overtaken).
    async fn drain(&mut self) {
        for (_, task) in self.tasks.drain() {
            if let TaskState::Collecting(_) = task.state {
                self.window.complete();
            }
        }
        self.running.close();
        while tokio::time::timeout(DRAIN_REPORT, self.running.wait())
            .await
            .is_err()
        {
            warn!(
                commands = self.running.len(),
                "still waiting for commands stuck in the backend"
            );
        }
        self.running.reopen();
    }

    fn allocate_ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        self.next_ttt
    }

    /// Queues a PDU for the writer; gives up if the session is being torn down meanwhile, so
    /// a stuck socket cannot hold the reader.
    async fn send(&self, reply: Reply) {
        tokio::select! {
            _ = self.out.send(reply.encode()) => {}
            _ = self.guard.cancel.cancelled() => {}
            _ = self.ctx.shutdown.cancelled() => {}
        }
    }

    async fn reject(&self, reason: u8, bhs: &[u8; wire::BHS_LEN]) {
        self.send(Reply::Reject(Reject {
            reason,
            sn: SeqNums::default(),
            data_sn: 0,
            data: Bytes::copy_from_slice(bhs),
        }))
        .await;
    }
}

fn task_attr(attr: u8) -> TaskAttr {
    match attr {
        0 => TaskAttr::Untagged,
        1 => TaskAttr::Simple,
        2 => TaskAttr::Ordered,
        3 => TaskAttr::HeadOfQueue,
        4 => TaskAttr::Aca,
        _ => TaskAttr::Simple,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
