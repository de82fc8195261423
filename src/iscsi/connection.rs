//! One TCP connection: the login phase ([`super::login_driver`]), then a discovery or normal
//! session until logout, error, reinstatement or shutdown.
//!
//! This is the driver of the sans-IO [`SessionCore`], which makes every protocol decision.
//! The reader (this task) feeds it the PDUs it reads, the completions of commands and the
//! grants of write-buffer memory, and wakes it at its deadline; it runs the work the core
//! hands out — commands, each on its own tokio task unless it completes at its first poll,
//! right here — and sends the core's PDUs to the writer task ([`super::writer`]), which owns
//! the socket's write half and StatSN and stamps ExpCmdSN and MaxCmdSN from the shared
//! [`CmdWindow`] as each PDU leaves. Commands hand their reply PDUs to the writer directly.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

use super::Service;
use super::limits::OverLimit;
use super::login_driver::{LoggedIn, login, session_catalog};
use super::metrics::{CommandSample, ConnectionStats};
use super::response::{data_in_sent, reply_pdus};
use super::session::{SessionDetails, SessionGuard};
use super::session_core::{
    Execution, Run, ScsiPort, SessionConfig, SessionCore, Work, reject, reject_reply,
};
use super::task_report::report_task_management;
use super::write_buffers::{BudgetGrant, WriteBuffers, wait_for_budget};
use super::writer::write_loop;
use crate::scsi::{Aborted, CommandClass, Nexus, ScsiResponse, ScsiStatus};
use crate::wire::framing::FrameError;
use crate::wire::{self, FrameLimits, OutPdu, PduCodec, Reply, WireError};

/// How often a session waiting for commands stuck in the backend says so.
const DRAIN_REPORT: Duration = Duration::from_secs(30);

/// Where the idle timer rests when the session never pings.
const NEVER: Duration = Duration::from_secs(86_400 * 365);

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
    let peer = stream.peer_addr()?;
    let (rd, mut wr) = stream.into_split();
    // A connection that has not logged in gets a small read buffer (a login PDU is at most
    // 48 + 8192 bytes, and the buffer grows when one needs more): a thousand idle
    // connections then cost a few MiB, not 64 KiB each of heap that the allocator keeps
    // after they are gone. The full-size buffer comes with the full feature phase.
    let mut reader =
        FramedRead::with_capacity(rd, PduCodec::new(FrameLimits::LOGIN), LOGIN_READ_BUFFER);

    let login = login(&mut reader, &mut wr, ctx, over, local).await?;
    let Some(LoggedIn {
        outcome,
        guard,
        stat_sn,
        target,
    }) = login
    else {
        return Ok(());
    };

    guard.set_portal(local);
    let params = outcome.params;
    // A new buffer, not the login one grown: a BytesMut remembers the capacity it was made
    // with, and each time it must grow while earlier PDUs still hold its memory it allocates
    // only that much (or what is asked). Grown from the login's 4 KiB, every receive stopped
    // at the end of the PDU at hand: perf trace showed 1.6 receives per 4 KiB write, each
    // filling exactly the room reserved for the rest of its PDU, and an allocation per PDU.
    // Bytes the initiator sent right behind its last login PDU come along.
    let pending = reader.read_buffer_mut().split();
    let mut session_buffer = BytesMut::with_capacity(SESSION_READ_BUFFER);
    session_buffer.extend_from_slice(&pending);
    *reader.read_buffer_mut() = session_buffer;
    reader.decoder_mut().limits = FrameLimits {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
        max_data_segment: params.target_max_recv,
    };
    let span = tracing::info_span!(
        "session",
        initiator = %outcome.initiator_name,
        isid = %hex(&outcome.isid),
        tsih = guard.tsih,
        target = %target.as_ref().map(|t| t.name.as_str()).unwrap_or("discovery"),
    );
    info!(parent: &span, chap_user = outcome.chap_user.as_deref().unwrap_or("-"), header_digest = params.header_digest, data_digest = params.data_digest,
          max_recv = params.initiator_max_recv, max_burst = params.max_burst, "logged in");

    let scsi = target.as_ref().map(|t| ScsiPort {
        device: t.device.clone(),
        nexus: Arc::new(Nexus {
            initiator_port: format!("{},i,0x{}", outcome.initiator_name, hex(&outcome.isid)).into(),
            target_port: format!("{},t,0x{:04x}", t.name, t.portal_group_tag).into(),
            relative_port: t.portal_group_tag,
        }),
    });
    let port = scsi.clone();
    let own = target
        .as_ref()
        .map(|t| (t.name.clone(), t.portal_group_tag));
    let catalog = session_catalog(ctx, outcome.session_type, &outcome.initiator_name, own);
    let interval = ctx.settings.nop_interval_secs;
    let config = SessionConfig {
        params,
        session_type: outcome.session_type,
        cid: outcome.cid,
        local,
        first_cmd_sn: outcome.cmd_sn,
        queue_depth: ctx.settings.queue_depth,
        nop_interval: (interval != 0).then(|| Duration::from_secs(interval)),
        nop_timeout: Duration::from_secs(ctx.settings.nop_timeout_secs),
    };
    let budget = WriteBuffers(Arc::clone(&ctx.write_budget));
    let core = SessionCore::new(config, scsi, catalog, budget, Instant::now().into_std());
    let (out_tx, out_rx) = mpsc::channel(1024);
    let writer = tokio::spawn(
        write_loop(
            wr,
            out_rx,
            stat_sn,
            core.window().clone(),
            params.header_digest,
            params.data_digest,
        )
        .instrument(span.clone()),
    );
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (grant_tx, grant_rx) = mpsc::unbounded_channel();
    let stats = ctx
        .metrics
        .connection(target.as_ref().map_or("", |t| t.name.as_str()));
    let mut details = SessionDetails::new(outcome.cid, peer, local, &params);
    details.counters = Some(Arc::clone(stats.shared()));
    guard.describe(details);
    let mut session = Connection {
        ctx,
        guard: &guard,
        core,
        stats,
        target_name: target.map(|t| t.name.clone()),
        out: out_tx,
        running: TaskTracker::new(),
        done_tx,
        done_rx,
        grant_tx,
    };
    let result = session
        .full_feature(&mut reader, grant_rx)
        .instrument(span.clone())
        .await;
    session.wait_for_commands().instrument(span.clone()).await;
    if let Some(port) = &port {
        port.device.nexus_lost(&port.nexus);
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

/// A command's end, reported to the reader: its tag, and what it adds to the metrics.
struct Completion {
    itt: u32,
    sample: Option<CommandSample>,
}

enum Flow {
    Continue,
    Close,
}

/// The full-feature phase of one connection: the core and what runs around it.
struct Connection<'a> {
    ctx: &'a Arc<Service>,
    guard: &'a SessionGuard<'a>,
    core: SessionCore<WriteBuffers>,
    /// This connection's counters (metrics, commands in flight): the reader writes them.
    stats: ConnectionStats<'a>,
    /// The session's target (none in discovery): a cold reset ends its sessions.
    target_name: Option<String>,
    out: mpsc::Sender<OutPdu>,
    /// Every command task of the session, so its end can wait for all of them.
    running: TaskTracker,
    done_tx: mpsc::UnboundedSender<Completion>,
    /// Completions, read by the full feature loop and by the wait for commands at the end:
    /// a command that reached the medium is counted however the connection ends.
    done_rx: mpsc::UnboundedReceiver<Completion>,
    /// Write-buffer shares granted to writes that had to wait for one.
    grant_tx: mpsc::UnboundedSender<BudgetGrant>,
}

impl Connection<'_> {
    async fn full_feature(
        &mut self,
        reader: &mut FramedRead<OwnedReadHalf, PduCodec>,
        mut grant_rx: mpsc::UnboundedReceiver<BudgetGrant>,
    ) -> Result<(), FrameError> {
        // Made once, not per PDU: each of these registers with a waiter list or the timer
        // wheel, which per PDU showed in profiles. The timer is moved lazily: hearing from
        // the initiator does not reset it; when it fires, the core checks whether the
        // connection has really been quiet for the whole interval.
        let replaced = self.guard.cancel.clone().cancelled_owned();
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        let logout = self.guard.logout.requested().clone().cancelled_owned();
        let mut logout_asked = false;
        let timer = tokio::time::sleep_until(self.deadline());
        tokio::pin!(replaced, shutdown, logout, timer);
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
                _ = &mut logout, if !logout_asked => {
                    logout_asked = true;
                    self.core.handle_logout_request(Instant::now().into_std(), self.guard.logout.grace());
                    timer.as_mut().reset(self.deadline()); // the logout's may be nearest
                }
                Some(done) = self.done_rx.recv() => {
                    self.core.handle_completion(done.itt);
                    self.count(&done);
                }
                Some(grant) = grant_rx.recv() => {
                    self.core.handle_budget(grant.itt, grant.ticket, grant.permit);
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
                                self.send(reject_reply(reject::PROTOCOL_ERROR, &bhs)).await;
                            }
                            return Ok(());
                        }
                        Some(Err(e)) => return Err(e),
                    };
                    self.core.handle_pdu(Instant::now().into_std(), raw);
                }
                _ = &mut timer => {
                    self.core.handle_timeout(Instant::now().into_std());
                    timer.as_mut().reset(self.deadline());
                }
            }
            let flow = self.drive().await;
            self.stats.set_in_flight(self.core.tasks());
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    fn deadline(&self) -> Instant {
        match self.core.poll_timeout() {
            Some(at) => Instant::from_std(at),
            None => Instant::now() + NEVER,
        }
    }

    /// Sends what the core decided and runs the work it handed out, in the order decided.
    async fn drive(&mut self) -> Flow {
        loop {
            while let Some(reply) = self.core.poll_transmit() {
                self.send(reply).await;
            }
            let Some(work) = self.core.poll_work() else {
                return Flow::Continue;
            };
            match work {
                Work::Execute(execution) => self.start(execution).await,
                Work::NeedBudget {
                    itt,
                    units,
                    ticket,
                    withdrawn,
                } => {
                    let (budget, grants) = (&self.ctx.write_budget, &self.grant_tx);
                    wait_for_budget(budget, grants, itt, units, ticket, withdrawn);
                }
                Work::TaskManagement {
                    response,
                    wait,
                    end_target_sessions,
                    function,
                } => {
                    if let Reply::TaskMgmt(r) = &response {
                        let target = self.target_name.as_deref().unwrap_or_default();
                        let metrics = &self.ctx.metrics;
                        metrics.count_task_management(target, function, r.response);
                    }
                    let (out, target_name) = (self.out.clone(), self.target_name.clone());
                    let ending = end_target_sessions.then_some(target_name).flatten();
                    report_task_management(self.ctx, out, response, wait, ending);
                }
                Work::Logout { response } => {
                    self.wait_for_commands().await;
                    self.send(response).await;
                    return Flow::Close;
                }
                Work::Close => return Flow::Close,
            }
        }
    }

    /// Runs a command: on this task if it completes at its first poll, else on its own
    /// task, tracked by the session. Its write-buffer share is returned when the command
    /// has run and its data is gone.
    async fn start(&mut self, execution: Execution<OwnedSemaphorePermit>) {
        let Execution {
            run,
            for_reply,
            limits,
            fate,
            finished,
            budget,
        } = execution;
        let out = self.out.clone();
        let window = self.core.window().clone();
        let done = self.done_tx.clone();
        // Accounted per LUN and class (metrics): the latency runs from here to the outcome.
        let measured = match &run {
            Run::Scsi { request, .. } => Some((
                request.lun,
                CommandClass::of(&request.cdb),
                request.data_out.len(),
            )),
            Run::Fail(_) => None,
        };
        let started = std::time::Instant::now();
        let command = Box::pin(
            async move {
                // Fires however this future ends, so nobody waits on it forever.
                let _finished = finished.drop_guard();
                let (ended, sample) = match fate.begin() {
                    // Aborted before it started: it never acts on the medium.
                    Err(aborted) => (Err(aborted), None),
                    Ok(()) => {
                        let outcome = match run {
                            Run::Scsi { device, request } => {
                                device.execute_task(request, &fate).await
                            }
                            Run::Fail(response) => response,
                        };
                        // Counted as it ran, even if its fate is sealed as aborted after it
                        // (the connection ended meanwhile): a write that reached the medium
                        // is in the bytes written. Data-In only if its reply goes out.
                        let completed = fate.complete();
                        let sample = measured.and_then(|(lun, class, received)| {
                            let nanos = started.elapsed().as_nanos() as u64;
                            let sent = if completed.is_ok() {
                                data_in_sent(&for_reply, &outcome)
                            } else {
                                0
                            };
                            CommandSample::new(lun, class, &outcome, sent, received, nanos)
                        });
                        (completed.map(|()| outcome), sample)
                    }
                };
                drop(budget);
                window.complete();
                // Tell the reader first: once the reply is out, the initiator may reuse the tag.
                let itt = for_reply.itt;
                let _ = done.send(Completion { itt, sample });
                let outcome = match ended {
                    Ok(outcome) => outcome,
                    Err(Aborted::Silently) => return,
                    // Aborted by another nexus: TAS = 1 (control mode page), so it says so.
                    Err(Aborted::Reported) => ScsiResponse::status(ScsiStatus::TaskAborted),
                };
                for reply in reply_pdus(&for_reply, &outcome, limits) {
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
    }

    /// Adds a finished command to this connection's counters.
    fn count(&mut self, done: &Completion) {
        if let Some(sample) = &done.sample {
            self.stats.record_sample(sample);
        }
    }

    /// Waits for every command task of the session to finish (aborted ones too) and drops
    /// writes still collecting data. There is no time limit: until the backend has finished
    /// the old I/O, a replacement session must not start (its writes could be overtaken).
    /// Their completions are counted meanwhile, and those still queued at the end (the core
    /// has abandoned the tasks: only the counters learn of them).
    async fn wait_for_commands(&mut self) {
        self.core.abandon_tasks();
        self.running.close();
        let report = tokio::time::sleep(DRAIN_REPORT);
        tokio::pin!(report);
        loop {
            tokio::select! {
                () = self.running.wait() => break,
                Some(done) = self.done_rx.recv() => self.count(&done),
                () = &mut report => {
                    let commands = self.running.len();
                    warn!(commands, "still waiting for commands stuck in the backend");
                    report.as_mut().reset(Instant::now() + DRAIN_REPORT);
                }
            }
        }
        self.running.reopen();
        while let Ok(done) = self.done_rx.try_recv() {
            self.count(&done);
        }
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
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
