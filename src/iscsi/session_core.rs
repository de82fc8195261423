//! The protocol decisions of a full-feature session, without I/O (sans-IO, in the shape of
//! quinn-proto's `Connection`): the CmdSN window, the task table, commands that arrived
//! ahead of their turn, R2T and Data-Out sequencing, text exchanges, NOP pings, task
//! management and logout. No socket, no runtime, no timer: the driver
//! ([`super::connection`]) reads PDUs and feeds them in, runs the work the core asks for,
//! sends the PDUs it yields and wakes it at its deadline.
//!
//! # The contract
//!
//! - **Getters** ([`SessionCore::window`], [`SessionCore::is_closing`], ...) only look. The
//!   driver needs `window` and `tasks` (for the status report); the others serve the tests
//!   and the fuzz target.
//! - **`handle_*`** take what happened: a PDU read ([`SessionCore::handle_pdu`]), a command
//!   that has run ([`SessionCore::handle_completion`]), a write-buffer share granted
//!   ([`SessionCore::handle_budget`]), time passing ([`SessionCore::handle_timeout`]).
//! - **Mutators** ([`SessionCore::abandon_tasks`]) change the state on the driver's behalf.
//! - **`poll_*`** hand out what the core decided: PDUs to send
//!   ([`SessionCore::poll_transmit`]), work to run ([`SessionCore::poll_work`]), and the next
//!   deadline ([`SessionCore::poll_timeout`]). After any `handle_*` or mutator call the
//!   driver calls `poll_transmit` and `poll_work` in turn until both are `None`, acting on
//!   each item before asking for the next, and reschedules its timer from `poll_timeout`.
//!   Both come from one queue, in the order decided (each answers `None` while the other's
//!   item is ahead): a Reject queued before a [`Work::Close`] leaves before the connection
//!   closes, and a command that arrived early is released only once the one before it has
//!   been started.
//!
//! The window is shared with the writer, which stamps ExpCmdSN and MaxCmdSN on every PDU
//! as it leaves: the core advances ExpCmdSN and takes slots; a command handed out with
//! [`Work::Execute`] holds its slot until the driver frees it with
//! [`CmdWindow::complete`] when the command's work is over (before its reply is queued, so
//! the reply announces the wider window), then reports [`SessionCore::handle_completion`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::login::SessionType;
use super::params::{self, Negotiated};
use super::response::{CommandForReply, DataInLimits};
use super::text_exchange::{TextChunk, TextExchange, TextStep};
use super::window::CmdWindow;
use crate::scsi::{
    Aborted, Membership, Nexus, ScsiRequest, ScsiResponse, ScsiStatus, Sense, SenseKey,
    TargetDevice, TaskAttr, TaskFate, Tmf, TmfResponse, decode_lun,
};
use crate::wire::{
    self, AsyncMessage, DataOut, LogoutRequest, LogoutResponse, NopIn, NopOut, R2t, RESERVED_TAG,
    RawPdu, Reject, Reply, Request, ScsiCommand, SeqNums, TaskMgmtRequest, TaskMgmtResponse,
    TextRequest, TextResponse, WireError, text,
};

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    /// "Immediate command reject - too many immediate commands".
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
}

/// Task management function codes (§11.5.1) and responses (§11.6.1) as they are on the
/// wire; the functions themselves are SAM's ([`crate::scsi::tmf`]).
pub mod tmf_code {
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

/// iSCSI events of an Asynchronous Message (RFC 7143 §11.9.1, AsyncEvent).
pub mod async_event {
    /// The target requests a logout within Parameter3 seconds.
    pub const REQUEST_LOGOUT: u8 = 1;
    /// The target drops every connection of the session; Parameter2 is Time2Wait,
    /// Parameter3 Time2Retain.
    pub const DROP_ALL_CONNECTIONS: u8 = 3;
}

/// The longest a target-requested logout may take (Parameter3 is 16 bits of seconds; an
/// hour is already far beyond any initiator's patience).
pub const MAX_LOGOUT_GRACE: Duration = Duration::from_secs(3600);

/// The largest write keel buffers for one command: what the SCSI layer accepts in one
/// transfer. A larger ExpectedDataTransferLength is not buffered; the SCSI layer refuses the
/// command.
const MAX_WRITE_BUFFER: u32 = crate::scsi::MAX_TRANSFER_BYTES;

/// A Reject PDU (§11.17) quoting the rejected PDU's header.
pub fn reject_reply(reason: u8, bhs: &[u8; wire::BHS_LEN]) -> Reply {
    Reply::Reject(Reject {
        reason,
        sn: SeqNums::default(),
        data_sn: 0,
        data: Bytes::copy_from_slice(bhs),
    })
}

/// An Asynchronous Message carrying an iSCSI event (§11.9): no LUN, no data.
fn async_message(event: u8, parameter2: u16, parameter3: u16) -> Reply {
    Reply::Async(AsyncMessage {
        lun: [0; 8],
        sn: SeqNums::default(),
        event,
        vendor_code: 0,
        parameter1: 0,
        parameter2,
        parameter3,
        data: Bytes::new(),
    })
}

/// Write-buffer memory is counted in KiB (`Service::write_budget`).
fn budget_units(bytes: u32) -> u32 {
    bytes.div_ceil(1024)
}

/// The server's write-buffer memory (`write_buffer_mib`), shared by every session: a write
/// collects its data only once it holds a share of it.
pub trait WriteBudget {
    /// A share; dropping it returns the memory.
    type Share: Send;
    /// `units` KiB at once, if that much is free now.
    fn try_take(&self, units: u32) -> Option<Self::Share>;
}

/// The targets a SendTargets text request reports (RFC 7143 §6.3.1, Appendix C).
pub trait TargetCatalog: Send + Sync {
    /// For SendTargets=`which` ("All", or a target name): each target's name and portal
    /// group tag, only those this initiator may see.
    fn send_targets(&self, which: &str) -> Vec<(String, u16)>;
}

impl<F: Fn(&str) -> Vec<(String, u16)> + Send + Sync> TargetCatalog for F {
    fn send_targets(&self, which: &str) -> Vec<(String, u16)> {
        self(which)
    }
}

/// The SCSI side of a normal session: its target's logical units and its I_T nexus.
#[derive(Clone, Debug)]
pub struct ScsiPort {
    pub device: Arc<TargetDevice>,
    pub nexus: Arc<Nexus>,
}

/// What a session is, fixed at login.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub params: Negotiated,
    pub session_type: SessionType,
    /// The connection's CID (a logout names the connection it closes).
    pub cid: u16,
    /// The address the initiator reached us on: SendTargets reports it, never the bind
    /// address.
    pub local: SocketAddr,
    /// The CmdSN the first command carries (that of the login, §4.2.2.1).
    pub first_cmd_sn: u32,
    /// Commands the session may have queued at once.
    pub queue_depth: u32,
    /// A NOP-In ping goes out after this long without a PDU from the initiator; `None`:
    /// never.
    pub nop_interval: Option<Duration>,
    /// How long the initiator has to answer a ping before the connection is dropped.
    pub nop_timeout: Duration,
}

enum Output<S> {
    Transmit(Reply),
    Work(Work<S>),
}

/// What the driver is asked to do.
pub enum Work<S> {
    /// Run a command (its replies go to the writer once its work is over).
    Execute(Execution<S>),
    /// A write needs `units` KiB of write-buffer memory and could not have them at once:
    /// wait for them, then call [`SessionCore::handle_budget`] with the ticket. Stop
    /// waiting when `withdrawn` fires (the write is gone).
    NeedBudget {
        itt: u32,
        units: u32,
        ticket: u64,
        withdrawn: CancellationToken,
    },
    /// Send `response` once every token in `wait` has fired (the aborted tasks have
    /// finished, SAM-5 §7.2); then, for a TARGET COLD RESET, end every session to the
    /// target, this one too (§11.5.1).
    TaskManagement {
        response: Reply,
        wait: Vec<CancellationToken>,
        end_target_sessions: bool,
        /// The function's code (§11.5.1), for the metrics.
        function: u8,
    },
    /// The session logs out: wait for every command that is running, send `response`,
    /// close (§11.14: everything in flight completes before the session goes).
    Logout { response: Reply },
    /// Close the connection (after sending what was queued).
    Close,
}

/// One command to run, with what its reply needs.
pub struct Execution<S> {
    pub run: Run,
    pub for_reply: CommandForReply,
    pub limits: DataInLimits,
    /// Decides between the command's completion and an abort: the driver calls
    /// [`TaskFate::begin`] before acting and [`TaskFate::complete`] after.
    pub fate: Arc<TaskFate>,
    /// To fire when the command's work is over (task management waits on it).
    pub finished: CancellationToken,
    /// A write's share of the write-buffer memory: dropped once the command has run.
    pub budget: Option<S>,
}

/// What a started command does.
pub enum Run {
    /// Runs in the SCSI layer, on the session's target.
    Scsi {
        device: Arc<TargetDevice>,
        request: ScsiRequest,
    },
    /// Answers at once with a failure the transport found.
    Fail(ScsiResponse),
}

/// A command the session knows about, from arrival to its last reply.
struct Task<S> {
    lun: u64,
    /// Sent for immediate delivery: it holds a slot the CmdSN window did not grant.
    immediate: bool,
    /// Whether the task executes and replies or was aborted: decided once, atomically,
    /// between its own progress and task management (its own session's or, through the
    /// unit's task set, another's), so an initiator never sees both a status and a
    /// successful abort, and an aborted write never lands after the abort was reported.
    fate: Arc<TaskFate>,
    /// Cancelled when the task's work is over (its replies handed to the writer, or its
    /// abort settled): task management waits on it before reporting an abort.
    finished: CancellationToken,
    state: TaskState<S>,
    /// Its place in the logical unit's task set, left when the task is dropped.
    _membership: Option<Membership>,
}

enum TaskState<S> {
    /// A write still receiving its data.
    Collecting(Box<WriteCollect<S>>),
    /// Handed to the driver to run.
    Running,
}

/// A write collecting immediate, unsolicited and solicited data (RFC 7143 §4.2.3.2).
struct WriteCollect<S> {
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
    share: Share<S>,
    next_r2t_offset: u32,
    r2t_sn: u32,
    outstanding: Vec<OutstandingR2t>,
}

/// A collecting write's share of the write-buffer memory (`write_buffer_mib`).
enum Share<S> {
    /// Held until the write has run.
    Held(S),
    /// Asked for with this ticket: the buffer holds only the unsolicited data and no R2T
    /// goes out until the share is granted. Dropping the write (abort, connection end)
    /// drops the guard, which withdraws the request.
    Waiting { ticket: u64, _withdraw: DropGuard },
}

struct OutstandingR2t {
    ttt: u32,
    next: u32,
    end: u32,
    data_sn: u32,
}

/// The protocol state of one full-feature session (see the module documentation).
pub struct SessionCore<B: WriteBudget> {
    config: SessionConfig,
    /// `None` in a discovery session.
    scsi: Option<ScsiPort>,
    catalog: Box<dyn TargetCatalog>,
    budget: B,
    window: Arc<CmdWindow>,
    tasks: HashMap<u32, Task<B::Share>>,
    /// Commands that arrived ahead of ExpCmdSN, waiting for the gap to fill.
    ahead: HashMap<u32, (Request, [u8; wire::BHS_LEN])>,
    /// CmdSNs considered received without a command (aborted before arrival, §11.5.1).
    /// Each lies in the window (ExpCmdSN ..= MaxCmdSN when it was added) and is removed
    /// when ExpCmdSN passes it, so there are never more than the queue depth, and none is
    /// left to match a later command after CmdSN wraps.
    skip: HashSet<u32>,
    text: TextExchange,
    next_ttt: u32,
    next_ticket: u64,
    last_heard: Instant,
    /// The TTT of our unanswered NOP-In ping and when the initiator's time is up.
    ping: Option<(u32, Instant)>,
    /// PDUs to send and work to run, in the order they were decided: a PDU decided after a
    /// command was handed out leaves after that command started, as a driver acting at once
    /// would have it.
    out: VecDeque<Output<B::Share>>,
    /// Set once the core has decided the connection ends: it takes no more PDUs.
    closing: bool,
    /// When a logout the target asked for (AsyncEvent 1) is overdue.
    logout_deadline: Option<Instant>,
}

impl<B: WriteBudget> SessionCore<B> {
    /// A session that has just logged in at `now`.
    pub fn new(
        config: SessionConfig,
        scsi: Option<ScsiPort>,
        catalog: Box<dyn TargetCatalog>,
        budget: B,
        now: Instant,
    ) -> Self {
        let window = Arc::new(CmdWindow::new(config.first_cmd_sn, config.queue_depth));
        SessionCore {
            config,
            scsi,
            catalog,
            budget,
            window,
            tasks: HashMap::new(),
            ahead: HashMap::new(),
            skip: HashSet::new(),
            text: TextExchange::default(),
            next_ttt: 0,
            next_ticket: 0,
            last_heard: now,
            ping: None,
            out: VecDeque::new(),
            closing: false,
            logout_deadline: None,
        }
    }

    // ---------------------------------------------------------------- getters

    /// The command window, shared with the writer (which stamps it on every PDU) and with
    /// the commands (which free their slot when their work is over).
    pub fn window(&self) -> &Arc<CmdWindow> {
        &self.window
    }

    /// Whether the core has decided the connection ends. The driver learns that from
    /// [`Work::Close`] and [`Work::Logout`]; this is for the fuzz target's checks.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Tasks in the table: collecting data or running (the status report's commands in
    /// flight).
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Writes still receiving their data (each holds a window slot): for the fuzz target,
    /// which checks the window's slots against them and the commands running.
    pub fn collecting_writes(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Collecting(_)))
            .count()
    }

    /// Commands waiting for an earlier CmdSN.
    #[cfg(test)]
    pub fn queued_ahead(&self) -> usize {
        self.ahead.len()
    }

    // ---------------------------------------------------------------- handle_*

    /// One PDU from the initiator, framed by the codec; `raw.data_digest_ok` false when its
    /// data digest failed.
    pub fn handle_pdu(&mut self, now: Instant, raw: RawPdu) {
        if self.closing {
            return;
        }
        self.last_heard = now;
        self.ping = None;
        if !raw.data_digest_ok {
            // §7.8: discard the payload and tell the initiator. A data PDU still counts toward
            // its task, which then ends with CHECK CONDITION; other PDUs are simply dropped.
            warn!("data digest error; PDU rejected");
            self.reject(reject::DATA_DIGEST_ERROR, &raw.bhs);
            if let Ok(Request::DataOut(d)) = Request::decode(&raw.bhs, &raw.ahs, raw.data) {
                self.on_data_out(d, &raw.bhs, false);
            }
            return;
        }
        let request = match Request::decode(&raw.bhs, &raw.ahs, raw.data) {
            Ok(r) => r,
            Err(WireError::UnknownOpcode(op)) => {
                warn!("unknown opcode 0x{op:02x}; rejected");
                self.reject(reject::COMMAND_NOT_SUPPORTED, &raw.bhs);
                return;
            }
            Err(e) => {
                warn!("malformed PDU: {e}; rejected");
                self.reject(reject::INVALID_PDU_FIELD, &raw.bhs);
                return;
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
        match ordered {
            None => self.execute(request, &raw.bhs),
            Some((true, _)) => {
                if is_command {
                    if !self.takes_immediate_command() {
                        warn!("immediate command beyond the queue depth; rejected");
                        self.reject(reject::IMMEDIATE_COMMAND_REJECT, &raw.bhs);
                        return;
                    }
                    self.window.occupy();
                }
                self.execute(request, &raw.bhs);
            }
            Some((false, cmd_sn)) => {
                let exp = self.window.exp_cmd_sn();
                if !self.window.admits(cmd_sn)
                    || self.ahead.contains_key(&cmd_sn)
                    || self.skip.contains(&cmd_sn)
                {
                    // §4.2.2.1: outside the window, or a duplicate (queued already, or
                    // declared received by an ABORT TASK, §11.5.1): silently ignored.
                    debug!(cmd_sn, exp, "command outside the CmdSN window ignored");
                    return;
                }
                if cmd_sn != exp {
                    // Early: it runs once the commands before it have arrived.
                    self.ahead.insert(cmd_sn, (request, raw.bhs));
                    return;
                }
                self.window.accept(is_command);
                self.execute(request, &raw.bhs);
            }
        }
        // Commands that arrived early may run now, and so may those behind a CmdSN an ABORT
        // TASK declared received.
        self.run_ready();
    }

    /// The command `itt` handed out with [`Work::Execute`] has run (or was aborted): the tag
    /// is free again. The driver reports this before it queues the command's replies, since
    /// the initiator may reuse the tag as soon as it reads the last of them.
    pub fn handle_completion(&mut self, itt: u32) {
        // One lookup: this runs after every command.
        if let Entry::Occupied(task) = self.tasks.entry(itt)
            && let TaskState::Running = task.get().state
        {
            task.remove();
        }
    }

    /// The write `itt` got the write-buffer share asked for with `ticket`: size its buffer
    /// and ask for its data. A share for a write that is gone (aborted, or its unsolicited
    /// data was all of it) is dropped, which returns the memory.
    pub fn handle_budget(&mut self, itt: u32, ticket: u64, share: B::Share) {
        let Some(mut task) = self.tasks.remove(&itt) else {
            return;
        };
        if let TaskState::Collecting(c) = &mut task.state
            && matches!(c.share, Share::Waiting { ticket: t, .. } if t == ticket)
        {
            c.buffer.resize(c.command.expected_length as usize, 0);
            c.share = Share::Held(share);
            self.issue_r2ts(c);
        }
        self.tasks.insert(itt, task);
    }

    /// Time passed: pings a quiet initiator with a NOP-In (§11.18), and gives up on one that
    /// did not answer in time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        if self.logout_deadline.is_some_and(|deadline| now >= deadline) {
            self.drop_session();
            return;
        }
        match self.ping {
            Some((_, deadline)) if now >= deadline => {
                warn!(
                    "no answer to NOP-In within {:?}; dropping the connection",
                    self.config.nop_timeout
                );
                self.close();
            }
            Some(_) => {}
            None => {
                let Some(idle) = self.config.nop_interval else {
                    return;
                };
                if now < self.last_heard + idle {
                    return;
                }
                let ttt = self.allocate_ttt();
                self.send(Reply::NopIn(NopIn {
                    lun: [0; 8],
                    itt: RESERVED_TAG,
                    ttt,
                    sn: SeqNums::default(),
                    data: Bytes::new(),
                }));
                self.ping = Some((ttt, now + self.config.nop_timeout));
            }
        }
    }

    /// The target wants this session gone (its target was removed, or an operator asked):
    /// an Asynchronous Message with AsyncEvent 1 asks the initiator to log out within
    /// `grace` (Parameter3, in seconds; RFC 7143 §11.9.1). A Logout that arrives in time is
    /// served as any other, commands meanwhile too. If none has come by then, the session
    /// is dropped ([`Self::handle_timeout`]). A second request changes nothing.
    pub fn handle_logout_request(&mut self, now: Instant, grace: Duration) {
        if self.closing || self.logout_deadline.is_some() {
            return;
        }
        let grace = grace.clamp(Duration::from_secs(1), MAX_LOGOUT_GRACE);
        info!(
            grace_secs = grace.as_secs(),
            "asking the initiator to log out"
        );
        self.send(async_message(
            async_event::REQUEST_LOGOUT,
            0,
            u16::try_from(grace.as_secs()).unwrap_or(u16::MAX),
        ));
        self.logout_deadline = Some(now + grace);
    }

    // ---------------------------------------------------------------- mutators

    /// Forgets every task: writes still collecting data are dropped (their window slots and
    /// write-buffer shares freed); running commands go on in the driver, which waits for
    /// them. At logout and at the connection's end.
    pub fn abandon_tasks(&mut self) {
        for (_, task) in self.tasks.drain() {
            if let TaskState::Collecting(_) = task.state {
                self.window.complete();
            }
        }
        self.ahead.clear();
    }

    // ---------------------------------------------------------------- poll_*

    /// The next PDU to send; `None` also while a piece of work decided earlier waits in
    /// [`SessionCore::poll_work`].
    pub fn poll_transmit(&mut self) -> Option<Reply> {
        self.run_ready();
        match self.out.front() {
            Some(Output::Transmit(_)) => match self.out.pop_front() {
                Some(Output::Transmit(reply)) => Some(reply),
                _ => None,
            },
            _ => None,
        }
    }

    /// The next piece of work for the driver; `None` also while a PDU decided earlier waits
    /// in [`SessionCore::poll_transmit`].
    pub fn poll_work(&mut self) -> Option<Work<B::Share>> {
        self.run_ready();
        match self.out.front() {
            Some(Output::Work(_)) => match self.out.pop_front() {
                Some(Output::Work(work)) => Some(work),
                _ => None,
            },
            _ => None,
        }
    }

    /// When [`SessionCore::handle_timeout`] should be called next; `None`: never. Hearing
    /// from the initiator moves it later, so a driver that arms its timer lazily (and calls
    /// `handle_timeout` early) loses nothing.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing {
            return None;
        }
        let ping = match self.ping {
            Some((_, deadline)) => Some(deadline),
            None => self.config.nop_interval.map(|idle| self.last_heard + idle),
        };
        match (ping, self.logout_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------------- the protocol

    fn close(&mut self) {
        if !self.closing {
            self.closing = true;
            self.ask(Work::Close);
        }
    }

    /// The initiator did not log out when asked: it is told that every connection of the
    /// session is dropped (AsyncEvent 3, with the negotiated DefaultTime2Wait and
    /// DefaultTime2Retain, §11.9.1), then the connection closes.
    fn drop_session(&mut self) {
        warn!("no logout within the time given; dropping the session");
        let params = &self.config.params;
        let (wait, retain) = (params.default_time2wait, params.default_time2retain);
        self.send(async_message(
            async_event::DROP_ALL_CONNECTIONS,
            u16::try_from(wait).unwrap_or(u16::MAX),
            u16::try_from(retain).unwrap_or(u16::MAX),
        ));
        self.close();
    }

    fn send(&mut self, reply: Reply) {
        self.out.push_back(Output::Transmit(reply));
    }

    fn ask(&mut self, work: Work<B::Share>) {
        self.out.push_back(Output::Work(work));
    }

    fn reject(&mut self, reason: u8, bhs: &[u8; wire::BHS_LEN]) {
        self.send(reject_reply(reason, bhs));
    }

    /// Whether an immediate SCSI command may take a slot. The CmdSN window does not bound
    /// immediate commands (§4.2.2.1), so the queue depth does: beyond it they are refused
    /// (§11.17.1, reason 0x06), except that a target handles at least one immediate
    /// non-task-management request per connection at any time (§4.2.2.1; RFC 3720
    /// §3.2.2.1). The task table is scanned only when the window is full.
    fn takes_immediate_command(&self) -> bool {
        self.window.in_flight() < self.config.queue_depth
            || !self.tasks.values().any(|task| task.immediate)
    }

    /// Runs, in CmdSN order, the early commands whose turn has come, stepping over CmdSNs
    /// that count as received without a command. One at a time, and only once everything
    /// decided before has been handed out: a command released here is accepted after the
    /// one before it has started (and perhaps finished, freeing its window slot, at its
    /// first poll), as when they arrive in order.
    fn run_ready(&mut self) {
        // The common case, called from every poll: nothing waits, so no lookups.
        if self.ahead.is_empty() && self.skip.is_empty() {
            return;
        }
        while self.out.is_empty() && !self.closing {
            let exp = self.window.exp_cmd_sn();
            if self.skip.remove(&exp) {
                // Aborted before its turn: never runs, even if it is queued (abort_task
                // drops it from `ahead` and handle_pdu drops it on arrival; this is the
                // last guard, so no entry outlives ExpCmdSN's passing).
                self.ahead.remove(&exp);
                self.window.accept(false);
            } else if let Some((next, bhs)) = self.ahead.remove(&exp) {
                self.window.accept(matches!(next, Request::ScsiCommand(_)));
                self.execute(next, &bhs);
            } else {
                return;
            }
        }
    }

    fn execute(&mut self, request: Request, bhs: &[u8; wire::BHS_LEN]) {
        let discovery = self.config.session_type == SessionType::Discovery;
        match request {
            Request::NopOut(p) => self.on_nop_out(p),
            Request::Text(p) => self.on_text(p, bhs),
            Request::Logout(p) => self.on_logout(p),
            Request::ScsiCommand(p) if !discovery => self.on_command(p, bhs),
            Request::DataOut(p) if !discovery => self.on_data_out(p, bhs, true),
            Request::TaskMgmt(p) if !discovery => self.on_task_mgmt(p),
            Request::Snack(_) => {
                // SNACK needs ErrorRecoveryLevel > 0; keel negotiates 0.
                self.reject(reject::SNACK_REJECT, bhs);
            }
            Request::Login(_) => {
                warn!("Login Request in full feature phase; rejected");
                self.reject(reject::PROTOCOL_ERROR, bhs);
            }
            other => {
                if let Request::ScsiCommand(_) = other {
                    self.window.complete();
                }
                warn!(
                    "{} not allowed in a discovery session; rejected",
                    opcode_name(&other)
                );
                self.reject(reject::PROTOCOL_ERROR, bhs);
            }
        }
    }

    fn on_nop_out(&mut self, p: NopOut) {
        if p.itt == RESERVED_TAG {
            // The answer to one of our pings: nothing to send back.
            return;
        }
        // §11.19: echo the ping data back, trimmed to what the initiator can receive.
        let max = self.config.params.initiator_max_recv as usize;
        let data = p.data.slice(..p.data.len().min(max));
        self.send(Reply::NopIn(NopIn {
            lun: p.lun,
            itt: p.itt,
            ttt: RESERVED_TAG,
            sn: SeqNums::default(),
            data,
        }));
    }

    fn on_command(&mut self, cmd: ScsiCommand, bhs: &[u8; wire::BHS_LEN]) {
        if self.tasks.contains_key(&cmd.itt) {
            warn!(
                itt = cmd.itt,
                "command reuses the tag of a task in progress; rejected"
            );
            self.window.complete();
            self.reject(reject::TASK_IN_PROGRESS, bhs);
            return;
        }
        let params = &self.config.params;
        let edtl = cmd.expected_length;
        let immediate_len = cmd.data.len() as u32;
        if immediate_len > 0
            && (!cmd.write
                || !params.immediate_data
                || immediate_len > edtl
                || immediate_len > params.first_burst)
        {
            warn!(
                itt = cmd.itt,
                immediate_len, edtl, "immediate data not allowed here; rejected"
            );
            self.window.complete();
            self.reject(reject::PROTOCOL_ERROR, bhs);
            return;
        }
        let unsolicited_end = if cmd.final_bit || params.initial_r2t {
            immediate_len
        } else {
            params.first_burst.min(edtl)
        };
        let lun = decode_lun(cmd.lun).unwrap_or(u64::MAX);
        let fate = TaskFate::new();
        let finished = CancellationToken::new();
        let membership = self.scsi.as_ref().and_then(|scsi| {
            scsi.device.lun(lun).map(|lu| {
                lu.task_set()
                    .join(scsi.nexus.clone(), fate.clone(), finished.clone())
            })
        });
        let mut task = Task {
            lun,
            immediate: cmd.immediate,
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
            self.start(&task, cmd, Run::Fail(refuse), 0, None);
            self.tasks.insert(itt, task);
            return;
        }
        if !cmd.write || edtl == 0 || edtl > MAX_WRITE_BUFFER || immediate_len == edtl {
            // No data to collect (or too much to buffer: the SCSI layer refuses it), or all
            // of it came as immediate data: the command PDU's own buffer is the data.
            let run = self.scsi_request(&task, &cmd, cmd.data.clone());
            self.start(&task, cmd, run, 0, None);
            self.tasks.insert(itt, task);
            return;
        }
        // The buffer is sized once this write has its share of the write-buffer memory;
        // until then only the unsolicited data (at most FirstBurstLength) has a place.
        let (share, buffer_len) = match self.budget.try_take(budget_units(edtl)) {
            Some(share) => (Share::Held(share), edtl),
            None => (self.wait_for_budget(itt, edtl), unsolicited_end),
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
            self.issue_r2ts(&mut collect);
        }
        task.state = TaskState::Collecting(collect);
        self.tasks.insert(itt, task);
    }

    /// Asks the driver to wait for `edtl` bytes of write-buffer memory. Writes are served in
    /// arrival order (the driver's semaphore is fair).
    fn wait_for_budget(&mut self, itt: u32, edtl: u32) -> Share<B::Share> {
        debug!(
            itt,
            edtl, "write waits for write-buffer memory (write_buffer_mib)"
        );
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let withdrawn = CancellationToken::new();
        self.ask(Work::NeedBudget {
            itt,
            units: budget_units(edtl),
            ticket,
            withdrawn: withdrawn.clone(),
        });
        Share::Waiting {
            ticket,
            _withdraw: withdrawn.drop_guard(),
        }
    }

    /// Sends R2Ts until MaxOutstandingR2T are outstanding or all data is asked for.
    fn issue_r2ts(&mut self, c: &mut WriteCollect<B::Share>) {
        let edtl = c.command.expected_length;
        while c.outstanding.len() < self.config.params.max_outstanding_r2t as usize
            && c.next_r2t_offset < edtl
        {
            let length = self.config.params.max_burst.min(edtl - c.next_r2t_offset);
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
            self.send(Reply::R2t(r2t));
        }
    }

    /// One Data-Out PDU; `intact` is false when its data digest failed (its bytes then only
    /// count, and the task will fail). Data out of order ends the connection: at
    /// ErrorRecoveryLevel 0 there is no recovering the sequence.
    fn on_data_out(&mut self, d: DataOut, bhs: &[u8; wire::BHS_LEN], intact: bool) {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            debug!(itt = d.itt, "Data-Out for a task that is gone; ignored");
            return;
        };
        let TaskState::Collecting(c) = &mut task.state else {
            debug!(
                itt = d.itt,
                "Data-Out for a task not expecting data; ignored"
            );
            return;
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
                c.unsolicited_data_sn = c.unsolicited_data_sn.wrapping_add(1);
            }
            (ok, expected)
        } else {
            match c.outstanding.iter_mut().position(|r| r.ttt == d.ttt) {
                Some(i) if start == c.outstanding[i].next && end <= c.outstanding[i].end => {
                    let expected = c.outstanding[i].data_sn;
                    c.outstanding[i].next = end;
                    c.outstanding[i].data_sn = c.outstanding[i].data_sn.wrapping_add(1);
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
            self.reject(reject::PROTOCOL_ERROR, bhs);
            self.close();
            return;
        }
        if d.data_sn != expected_sn {
            // The offsets still tell where the data goes, so the stream stays in step: reject
            // the PDU and fail the task, keeping the session. ABORTED COMMAND, DATA PHASE
            // ERROR.
            warn!(
                itt = d.itt,
                data_sn = d.data_sn,
                expected_sn,
                "Data-Out with a wrong DataSN; the command will fail"
            );
            c.failure
                .get_or_insert(Sense::new(SenseKey::AbortedCommand, 0x4b, 0x00));
            self.reject(reject::PROTOCOL_ERROR, bhs);
        } else if intact {
            c.buffer[start as usize..end as usize].copy_from_slice(&d.data);
        } else {
            // §13.7.1: ABORTED COMMAND, "protocol service CRC error".
            c.failure
                .get_or_insert(Sense::new(SenseKey::AbortedCommand, 0x47, 0x05));
        }
        self.after_data_out(d.itt, len);
    }

    /// Counts `len` more bytes of a write's data: starts the command once all of it is in,
    /// or asks for more with R2Ts when an R2T sequence has completed.
    fn after_data_out(&mut self, itt: u32, len: u32) {
        let Some(mut task) = self.tasks.remove(&itt) else {
            return;
        };
        if let TaskState::Collecting(c) = &mut task.state {
            c.received += len;
            if c.received == c.command.expected_length {
                if let TaskState::Collecting(c) =
                    std::mem::replace(&mut task.state, TaskState::Running)
                {
                    self.finish_collect(&task, *c);
                }
            } else if let Share::Held(_) = c.share {
                self.issue_r2ts(c);
            }
        }
        self.tasks.insert(itt, task);
    }

    fn finish_collect(&mut self, task: &Task<B::Share>, c: WriteCollect<B::Share>) {
        let run = if let Some(sense) = &c.failure {
            Run::Fail(ScsiResponse::check_condition(sense, false))
        } else {
            self.scsi_request(task, &c.command, c.buffer.freeze())
        };
        // A write still waiting for its share can only finish here when its unsolicited
        // data was all of it; its small buffer then holds everything.
        let budget = match c.share {
            Share::Held(share) => Some(share),
            Share::Waiting { .. } => None,
        };
        self.start(task, c.command, run, c.r2t_sn, budget);
    }

    fn scsi_request(&self, task: &Task<B::Share>, cmd: &ScsiCommand, data_out: Bytes) -> Run {
        let Some(scsi) = &self.scsi else {
            // Only normal sessions reach here; they have a nexus.
            return Run::Fail(ScsiResponse::status(ScsiStatus::Busy));
        };
        Run::Scsi {
            device: scsi.device.clone(),
            request: ScsiRequest {
                nexus: scsi.nexus.clone(),
                lun: task.lun,
                cdb: cmd.cdb.clone(),
                data_out,
                expected_in: if cmd.read { cmd.expected_length } else { 0 },
                attr: task_attr(cmd.attr),
            },
        }
    }

    /// Hands the command to the driver to run. The caller keeps the task in the table (as
    /// running) until [`SessionCore::handle_completion`].
    fn start(
        &mut self,
        task: &Task<B::Share>,
        cmd: ScsiCommand,
        run: Run,
        r2t_count: u32,
        budget: Option<B::Share>,
    ) {
        let params = &self.config.params;
        self.ask(Work::Execute(Execution {
            run,
            for_reply: CommandForReply {
                itt: cmd.itt,
                lun: cmd.lun,
                expected_length: cmd.expected_length,
                read: cmd.read,
                write: cmd.write,
                r2t_count,
            },
            limits: DataInLimits {
                max_segment: params.initiator_max_recv,
                max_burst: params.max_burst,
            },
            fate: task.fate.clone(),
            finished: task.finished.clone(),
            budget,
        }));
    }

    fn on_task_mgmt(&mut self, p: TaskMgmtRequest) {
        let lun = decode_lun(p.lun).unwrap_or(u64::MAX);
        let Some(scsi) = self.scsi.clone() else {
            return;
        };
        let function = match p.function {
            tmf_code::ABORT_TASK_SET => Some(Tmf::AbortTaskSet),
            tmf_code::CLEAR_TASK_SET => Some(Tmf::ClearTaskSet),
            tmf_code::LOGICAL_UNIT_RESET => Some(Tmf::LogicalUnitReset),
            tmf_code::TARGET_WARM_RESET => Some(Tmf::TargetWarmReset),
            tmf_code::TARGET_COLD_RESET => Some(Tmf::TargetColdReset),
            _ => None,
        };
        let (response, wait) = match (p.function, function) {
            (tmf_code::ABORT_TASK, _) => self.abort_task(&p, lun),
            (_, Some(function)) => {
                // Which tasks the function reaches, on which nexuses, is SAM's (scsi::tmf);
                // this session's own tasks are in its table.
                let outcome = scsi
                    .device
                    .task_management(&scsi.nexus, function, lun, |reaches| {
                        self.abort_where(|t, _| reaches(t.lun)).1
                    });
                let response = match outcome.response {
                    TmfResponse::FunctionComplete => tmf_code::COMPLETE,
                    TmfResponse::IncorrectLun => tmf_code::NO_LUN,
                };
                (response, outcome.wait)
            }
            (tmf_code::TASK_REASSIGN, _) => (tmf_code::REASSIGN_NOT_SUPPORTED, Vec::new()),
            _ => (tmf_code::NOT_SUPPORTED, Vec::new()),
        };
        info!(
            function = p.function,
            lun,
            referenced = p.referenced_tag,
            response,
            "task management"
        );
        self.ask(Work::TaskManagement {
            response: Reply::TaskMgmt(TaskMgmtResponse {
                response,
                itt: p.itt,
                sn: SeqNums::default(),
            }),
            wait,
            end_target_sessions: p.function == tmf_code::TARGET_COLD_RESET,
            function: p.function,
        });
    }

    /// ABORT TASK (§11.5.1): the referenced task of this session, on the named LUN.
    fn abort_task(&mut self, p: &TaskMgmtRequest, lun: u64) -> (u8, Vec<CancellationToken>) {
        if self.tasks.contains_key(&p.referenced_tag) {
            let (aborted, waits) =
                self.abort_where(|t, itt| itt == p.referenced_tag && t.lun == lun);
            // A task already replying has completed: there is nothing to abort.
            let response = if aborted > 0 {
                tmf_code::COMPLETE
            } else {
                tmf_code::NO_TASK
            };
            return (response, waits);
        }
        // A task not received yet whose RefCmdSN lies in the command window, before this
        // request's CmdSN, counts as received and aborted ("Function complete"); outside the
        // window it does not exist (it already completed, or never will arrive).
        let in_window = wire::sn_le(self.window.exp_cmd_sn(), p.ref_cmd_sn)
            && wire::sn_le(p.ref_cmd_sn, self.window.max_cmd_sn())
            && wire::sn_lt(p.ref_cmd_sn, p.cmd_sn);
        if in_window {
            // §11.5.1: "consider the CmdSN as received". A command waiting ahead of a gap is
            // dropped, and either way its CmdSN is marked so ExpCmdSN can step over it.
            self.ahead.remove(&p.ref_cmd_sn);
            self.skip.insert(p.ref_cmd_sn);
        }
        let response = if in_window {
            tmf_code::COMPLETE
        } else {
            tmf_code::NO_TASK
        };
        (response, Vec::new())
    }

    /// Aborts the matching tasks that have not started replying: collecting ones are dropped
    /// at once, running ones will not reply. Returns how many were aborted and the handles to
    /// wait on before the abort may be reported.
    fn abort_where(
        &mut self,
        matches: impl Fn(&Task<B::Share>, u32) -> bool,
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

    fn on_text(&mut self, p: TextRequest, bhs: &[u8; wire::BHS_LEN]) {
        let max = self.config.params.initiator_max_recv;
        let fresh_ttt = self.allocate_ttt();
        let chunk = match self.text.receive(p.continue_bit, p.ttt, &p.data, fresh_ttt) {
            TextStep::NeedMore(ttt) => TextChunk {
                data: Bytes::new(),
                final_bit: false,
                continue_bit: false,
                ttt,
            },
            TextStep::Continue => self.text.next_chunk(max),
            TextStep::Error => {
                self.reject(reject::PROTOCOL_ERROR, bhs);
                return;
            }
            TextStep::Request(data) => {
                let pairs = match text::parse(&data) {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        warn!("bad text request: {e}");
                        self.reject(reject::PROTOCOL_ERROR, bhs);
                        return;
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
        }));
    }

    /// Answers a full-feature text request: SendTargets (§6.3.1, Appendix C); keys that can't
    /// be renegotiated here are refused.
    fn text_answer(&self, pairs: &[(String, String)]) -> Bytes {
        let mut answer: Vec<(String, String)> = Vec::new();
        let local = self.config.local;
        for (key, value) in pairs {
            if key == "SendTargets" {
                for (name, portal_group_tag) in self.catalog.send_targets(value) {
                    answer.push(("TargetName".into(), name));
                    answer.push((
                        "TargetAddress".into(),
                        format!(
                            "{},{portal_group_tag}",
                            SocketAddr::new(local.ip().to_canonical(), local.port()),
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

    fn on_logout(&mut self, p: LogoutRequest) {
        // Reason 0: close the session; 1: close this connection; 2: remove it for recovery,
        // which needs ErrorRecoveryLevel 2 (§11.14.1).
        let response = match p.reason {
            0 => 0,
            1 if p.cid == self.config.cid => 0,
            1 => 1,
            _ => 2,
        };
        let reply = Reply::Logout(LogoutResponse {
            response,
            itt: p.itt,
            sn: SeqNums::default(),
            time2wait: 0,
            time2retain: 0,
        });
        if response != 0 {
            self.send(reply);
            return;
        }
        // Everything in flight completes before the session goes (§11.14).
        info!("logged out");
        self.abandon_tasks();
        self.closing = true;
        self.ask(Work::Logout { response: reply });
    }

    fn allocate_ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        self.next_ttt
    }
}

/// The PDU's name in RFC 7143 (for logs).
pub(super) fn opcode_name(r: &Request) -> &'static str {
    match r {
        Request::NopOut(_) => "NOP-Out",
        Request::ScsiCommand(_) => "SCSI Command",
        Request::TaskMgmt(_) => "Task Management Request",
        Request::Login(_) => "Login Request",
        Request::Text(_) => "Text Request",
        Request::DataOut(_) => "Data-Out",
        Request::Logout(_) => "Logout Request",
        Request::Snack(_) => "SNACK",
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

#[cfg(test)]
#[path = "session_core_tests.rs"]
mod tests;
