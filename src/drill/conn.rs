//! One iSCSI connection of the drill's initiator: login (no authentication, no digests),
//! then SCSI commands, several at once, each carried to its status: immediate and
//! unsolicited data as negotiated, Data-Out for every R2T, Data-In gathered.
//!
//! Built on keel's PDU codec (`wire`) and nothing of the target side. Nothing here retries or
//! times out: the drill's engine decides what a lost connection or a slow command means.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use super::scsi::Outcome;
use crate::wire::framing::{BufQueue, FrameError, frame_parts};
use crate::wire::{
    DataOut, FrameLimits, LoginRequest, LoginResponse, LogoutRequest, NopOut, PduCodec,
    RESERVED_TAG, Reply, Request, ScsiCommand, sn_le, text,
};

/// Our MaxRecvDataSegmentLength: what the target may put in one Data-In.
const MAX_RECV_SEGMENT: u32 = 262_144;

/// Who logs in to what.
#[derive(Clone, Debug)]
pub struct LoginSpec {
    pub portal: String,
    pub initiator: String,
    pub target: String,
    /// Kept across reconnects, so the target sees the same I_T nexus.
    pub isid: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("cannot connect to {portal}: {error}")]
    Connect { portal: String, error: io::Error },
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    #[error("the target closed the connection")]
    Closed,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("login refused: status 0x{class:02x}{detail:02x} ({})", login_status_text(*.class, *.detail))]
    LoginRefused { class: u8, detail: u8 },
    #[error("the target asked to end the connection (async event {0})")]
    TargetAsked(u8),
}

impl ConnError {
    /// Whether a login refusal says "try again later" (RFC 7143 §11.13.5: class 3, target
    /// errors such as service unavailable; class 1, redirection, which the drill does not
    /// follow but which says the target exists). Everything else that is not a refusal is a
    /// transport failure, which reconnecting is for.
    pub fn is_permanent_refusal(&self) -> bool {
        matches!(self, ConnError::LoginRefused { class, .. } if *class == 2)
    }
}

fn login_status_text(class: u8, detail: u8) -> &'static str {
    match (class, detail) {
        (1, _) => "redirection",
        (2, 0x01) => "authentication failure",
        (2, 0x02) => "authorization failure",
        (2, 0x03) => "target not found",
        (2, 0x04) => "target removed",
        (2, 0x05) => "unsupported version",
        (2, 0x06) => "too many connections",
        (2, 0x07) => "missing parameter",
        (2, 0x0a) => "session does not exist",
        (2, _) => "initiator error",
        (3, 0x01) => "service unavailable",
        (3, 0x02) => "out of resources",
        (3, _) => "target error",
        _ => "unknown",
    }
}

impl From<FrameError> for ConnError {
    fn from(e: FrameError) -> ConnError {
        match e {
            FrameError::Io(e) => ConnError::Io(e),
            FrameError::Wire(e) => ConnError::Protocol(e.to_string()),
        }
    }
}

/// Operational values in force after login (RFC 7143 §13).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst: u32,
    pub max_burst: u32,
    /// The target's MaxRecvDataSegmentLength: the longest Data-Out segment it takes.
    pub target_max_recv: u32,
}

impl Negotiated {
    /// The operational keys the drill offers: no digests, one connection, error recovery
    /// level 0, and both data shortcuts (the target's answer decides).
    pub fn offer() -> Vec<(&'static str, String)> {
        vec![
            ("HeaderDigest", "None".into()),
            ("DataDigest", "None".into()),
            ("MaxConnections", "1".into()),
            ("ErrorRecoveryLevel", "0".into()),
            ("ImmediateData", "Yes".into()),
            ("InitialR2T", "No".into()),
            ("MaxRecvDataSegmentLength", MAX_RECV_SEGMENT.to_string()),
            ("FirstBurstLength", "65536".into()),
            ("MaxBurstLength", "262144".into()),
            ("MaxOutstandingR2T", "1".into()),
            ("DataPDUInOrder", "Yes".into()),
            ("DataSequenceInOrder", "Yes".into()),
            ("DefaultTime2Wait", "0".into()),
            ("DefaultTime2Retain", "0".into()),
        ]
    }

    /// The values in force, from the keys the target answered (its results; RFC defaults
    /// for what it left out). A digest it turned on is an error: only None was offered.
    pub fn from_answer(keys: &[(String, String)]) -> Result<Negotiated, String> {
        let get = |k: &str| {
            keys.iter()
                .rev()
                .find(|(a, _)| a == k)
                .map(|(_, v)| v.as_str())
        };
        for digest in ["HeaderDigest", "DataDigest"] {
            if let Some(v) = get(digest)
                && v != "None"
            {
                return Err(format!("{digest}={v} answered to an offer of None"));
            }
        }
        let yes = |k: &str, default: bool| match get(k) {
            Some("Yes") => true,
            Some("No") => false,
            _ => default,
        };
        let num = |k: &str, default: u32| {
            get(k)
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&n| n >= 512)
                .unwrap_or(default)
        };
        // What was offered bounds what the answer may be (ImmediateData is an AND,
        // InitialR2T an OR): a target answering otherwise is taken at its stricter word.
        Ok(Negotiated {
            immediate_data: yes("ImmediateData", true),
            initial_r2t: yes("InitialR2T", true),
            first_burst: num("FirstBurstLength", 65536).min(65536),
            max_burst: num("MaxBurstLength", 262_144).min(262_144),
            target_max_recv: num("MaxRecvDataSegmentLength", 8192),
        })
    }
}

/// Keys a target declares (RFC 7143 §13): never answered.
const DECLARATIVE: [&str; 5] = [
    "TargetAlias",
    "TargetPortalGroupTag",
    "TargetAddress",
    "InitiatorAlias",
    "TaskReporting",
];

/// A command on its way.
struct Task {
    lun: [u8; 8],
    data_out: Bytes,
    read: Vec<u8>,
    got: usize,
}

/// A command's end.
#[derive(Debug)]
pub struct Completion {
    pub itt: u32,
    pub outcome: Outcome,
    pub data: Vec<u8>,
}

pub enum Event {
    Completed(Completion),
    /// A PDU that needed no decision (R2T answered, Data-In gathered, ping answered).
    Nothing,
}

pub struct Connection {
    reader: FramedRead<OwnedReadHalf, PduCodec>,
    writer: OwnedWriteHalf,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_cmd_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    pub negotiated: Negotiated,
}

impl Connection {
    /// Connects and logs in (a new session, TSIH 0: a target that still has the old
    /// session of this ISID reinstates it, RFC 7143 §6.3.5).
    pub async fn login(spec: &LoginSpec) -> Result<Connection, ConnError> {
        let stream =
            TcpStream::connect(&spec.portal)
                .await
                .map_err(|error| ConnError::Connect {
                    portal: spec.portal.clone(),
                    error,
                })?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let limits = FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data_segment: MAX_RECV_SEGMENT,
        };
        let mut conn = Connection {
            reader: FramedRead::new(rd, PduCodec::new(limits)),
            writer: wr,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_cmd_sn: 1,
            next_itt: 0,
            tasks: HashMap::new(),
            negotiated: Negotiated::from_answer(&[]).map_err(ConnError::Protocol)?,
        };
        // Security stage: no authentication.
        let first = [
            ("InitiatorName", spec.initiator.clone()),
            ("TargetName", spec.target.clone()),
            ("SessionType", "Normal".to_string()),
            ("AuthMethod", "None".to_string()),
        ];
        let mut r = conn.login_step(spec, 0, 1, &first).await?;
        let mut rounds = 0;
        while !(r.transit && r.nsg >= 1) {
            let keys = text::parse(&r.data).map_err(|e| ConnError::Protocol(e.to_string()))?;
            if let Some((_, method)) = keys.iter().find(|(k, _)| k == "AuthMethod")
                && method != "None"
            {
                return Err(ConnError::Protocol(format!(
                    "the target asks for AuthMethod={method}; the drill logs in without authentication"
                )));
            }
            rounds += 1;
            if rounds > 4 {
                return Err(ConnError::Protocol("the security stage did not end".into()));
            }
            r = conn.login_step(spec, 0, 1, &[]).await?;
        }
        // Operational stage, to full feature phase.
        let mut answered = Vec::new();
        let mut offer = Negotiated::offer();
        if r.nsg == 3 {
            // The target went straight to full feature phase: RFC defaults for everything.
            offer.clear();
        } else {
            let mut rounds = 0;
            loop {
                r = conn.login_step(spec, 1, 3, &offer).await?;
                let keys = text::parse(&r.data).map_err(|e| ConnError::Protocol(e.to_string()))?;
                let offered: Vec<&str> = offer.iter().map(|(k, _)| *k).collect();
                // Keys the target proposed on its own are accepted as it proposed them.
                let proposals: Vec<(&'static str, String)> = keys
                    .iter()
                    .filter(|(k, _)| !offered.contains(&k.as_str()))
                    .filter(|(k, _)| !DECLARATIVE.contains(&k.as_str()))
                    .filter_map(|(k, v)| {
                        Negotiated::offer()
                            .into_iter()
                            .find(|(o, _)| *o == k.as_str())
                            .map(|(o, _)| (o, v.clone()))
                    })
                    .collect();
                answered.extend(keys);
                if r.transit && r.nsg == 3 {
                    break;
                }
                rounds += 1;
                if rounds > 4 {
                    return Err(ConnError::Protocol(
                        "the operational stage did not end".into(),
                    ));
                }
                offer = proposals;
            }
        }
        conn.negotiated = Negotiated::from_answer(&answered).map_err(ConnError::Protocol)?;
        Ok(conn)
    }

    async fn login_step(
        &mut self,
        spec: &LoginSpec,
        csg: u8,
        nsg: u8,
        pairs: &[(&str, String)],
    ) -> Result<LoginResponse, ConnError> {
        let req = Request::Login(LoginRequest {
            transit: true,
            continue_bit: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: spec.isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: text::encode(pairs),
        });
        self.send(&req).await?;
        match self.recv().await? {
            Reply::Login(r) if (r.status_class, r.status_detail) == (0, 0) => Ok(r),
            Reply::Login(r) => Err(ConnError::LoginRefused {
                class: r.status_class,
                detail: r.status_detail,
            }),
            other => Err(ConnError::Protocol(format!(
                "expected a login response, got {}",
                pdu_name(&other)
            ))),
        }
    }

    async fn send(&mut self, req: &Request) -> Result<(), ConnError> {
        let (head, data) = req.encode();
        let mut parts = Vec::new();
        frame_parts(&head, &data, false, false, &mut parts);
        let mut queue = BufQueue::default();
        for p in parts {
            queue.push(p);
        }
        self.writer.write_all_buf(&mut queue).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Reply, ConnError> {
        let raw = self.reader.next().await.ok_or(ConnError::Closed)??;
        let reply =
            Reply::decode(&raw.bhs, raw.data).map_err(|e| ConnError::Protocol(e.to_string()))?;
        let (sn, advances) = match &reply {
            Reply::NopIn(p) => (Some(p.sn), p.itt != RESERVED_TAG),
            Reply::ScsiResponse(p) => (Some(p.sn), true),
            Reply::TaskMgmt(p) => (Some(p.sn), true),
            Reply::Login(p) => (Some(p.sn), true),
            Reply::Text(p) => (Some(p.sn), true),
            Reply::DataIn(p) => (p.status.map(|_| p.sn), true),
            Reply::Logout(p) => (Some(p.sn), true),
            Reply::R2t(p) => (Some(p.sn), false),
            Reply::Async(p) => (Some(p.sn), true),
            Reply::Reject(p) => (Some(p.sn), true),
        };
        if let Some(sn) = sn {
            // RFC 7143 §4.2.2.1: a MaxCmdSN below ExpCmdSN - 1 is ignored.
            if sn_le(sn.exp_cmd_sn.wrapping_sub(1), sn.max_cmd_sn) {
                self.max_cmd_sn = sn.max_cmd_sn;
            }
            if advances {
                self.exp_stat_sn = sn.stat_sn.wrapping_add(1);
            }
        }
        Ok(reply)
    }

    /// Whether the command window has room for one more command.
    pub fn window_open(&self) -> bool {
        sn_le(self.cmd_sn, self.max_cmd_sn)
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Sends a SCSI command (and its unsolicited data) and returns its task tag. `data_out`
    /// is the whole write buffer; empty for reads and non-data commands.
    pub async fn submit(
        &mut self,
        lun: [u8; 8],
        cdb: [u8; 16],
        read_len: u32,
        data_out: Bytes,
    ) -> Result<u32, ConnError> {
        self.next_itt = self.next_itt.wrapping_add(1);
        if self.next_itt == RESERVED_TAG {
            self.next_itt = 1;
        }
        let itt = self.next_itt;
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            read_len
        };
        let n = &self.negotiated;
        let first_burst = if write {
            n.first_burst.min(edtl) as usize
        } else {
            0
        };
        let immediate = if n.immediate_data {
            first_burst.min(n.target_max_recv as usize)
        } else {
            0
        };
        let unsolicited_end = if n.initial_r2t {
            immediate
        } else {
            first_burst
        };
        let cmd = Request::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: unsolicited_end == immediate,
            read: !write && read_len > 0,
            write,
            attr: 1, // SIMPLE
            lun,
            itt,
            expected_length: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: Bytes::copy_from_slice(&cdb),
            bidi_read_length: None,
            data: data_out.slice(..immediate),
        });
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.tasks.insert(
            itt,
            Task {
                lun,
                data_out: data_out.clone(),
                read: vec![0; if write { 0 } else { read_len as usize }],
                got: 0,
            },
        );
        self.send(&cmd).await?;
        if unsolicited_end > immediate {
            self.send_data(itt, RESERVED_TAG, immediate, unsolicited_end - immediate)
                .await?;
        }
        Ok(itt)
    }

    /// Data-Out for `len` bytes at `offset` of a task's write buffer, in segments the target
    /// takes.
    async fn send_data(
        &mut self,
        itt: u32,
        ttt: u32,
        offset: usize,
        len: usize,
    ) -> Result<(), ConnError> {
        let Some(task) = self.tasks.get(&itt) else {
            return Err(ConnError::Protocol(format!(
                "R2T for unknown task {itt:#x}"
            )));
        };
        let (lun, data) = (task.lun, task.data_out.clone());
        if offset + len > data.len() {
            return Err(ConnError::Protocol(format!(
                "R2T for bytes {offset}..{} of a {}-byte write",
                offset + len,
                data.len()
            )));
        }
        let segment = (self.negotiated.target_max_recv as usize).max(512);
        let mut sent = 0;
        let mut data_sn = 0;
        while sent < len {
            let n = segment.min(len - sent);
            let pdu = Request::DataOut(DataOut {
                final_bit: sent + n == len,
                lun,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: (offset + sent) as u32,
                data: data.slice(offset + sent..offset + sent + n),
            });
            self.send(&pdu).await?;
            sent += n;
            data_sn += 1;
        }
        Ok(())
    }

    /// Reads and handles one PDU from the target.
    pub async fn next_event(&mut self) -> Result<Event, ConnError> {
        match self.recv().await? {
            Reply::R2t(r) => {
                self.send_data(
                    r.itt,
                    r.ttt,
                    r.buffer_offset as usize,
                    r.desired_length as usize,
                )
                .await?;
                Ok(Event::Nothing)
            }
            Reply::DataIn(d) => {
                let Some(task) = self.tasks.get_mut(&d.itt) else {
                    return Err(ConnError::Protocol(format!(
                        "Data-In for unknown task {:#x}",
                        d.itt
                    )));
                };
                let Some(bytes) = d.data.bytes() else {
                    return Err(ConnError::Protocol("Data-In not in memory".into()));
                };
                let at = d.buffer_offset as usize;
                let Some(slot) = task.read.get_mut(at..at + bytes.len()) else {
                    return Err(ConnError::Protocol(format!(
                        "Data-In for bytes {at}..{} of a {}-byte read",
                        at + bytes.len(),
                        task.read.len()
                    )));
                };
                slot.copy_from_slice(bytes);
                task.got = task.got.max(at + bytes.len());
                match d.status {
                    Some(status) => Ok(Event::Completed(
                        self.complete(d.itt, Outcome::of(0, status, &[]))?,
                    )),
                    None => Ok(Event::Nothing),
                }
            }
            Reply::ScsiResponse(r) => {
                let outcome = Outcome::of(r.response, r.status, &r.sense);
                Ok(Event::Completed(self.complete(r.itt, outcome)?))
            }
            Reply::NopIn(n) if n.itt == RESERVED_TAG => {
                if n.ttt != RESERVED_TAG {
                    let ping = Request::NopOut(NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                        data: Bytes::new(),
                    });
                    self.send(&ping).await?;
                }
                Ok(Event::Nothing)
            }
            // 1: logout requested, 2: connection dropped, 3: session dropped.
            Reply::Async(a) if (1..=3).contains(&a.event) => Err(ConnError::TargetAsked(a.event)),
            Reply::Async(_) => Ok(Event::Nothing),
            Reply::Reject(r) => Err(ConnError::Protocol(format!(
                "the target rejected a PDU (reason 0x{:02x})",
                r.reason
            ))),
            other => Err(ConnError::Protocol(format!(
                "unexpected {} in full feature phase",
                pdu_name(&other)
            ))),
        }
    }

    fn complete(&mut self, itt: u32, outcome: Outcome) -> Result<Completion, ConnError> {
        let Some(task) = self.tasks.remove(&itt) else {
            return Err(ConnError::Protocol(format!(
                "status for unknown task {itt:#x}"
            )));
        };
        let mut data = task.read;
        data.truncate(task.got);
        Ok(Completion { itt, outcome, data })
    }

    /// Runs one command to its status (for setup and checks, nothing else in flight).
    pub async fn execute(
        &mut self,
        lun: [u8; 8],
        cdb: [u8; 16],
        read_len: u32,
        data_out: Bytes,
    ) -> Result<Completion, ConnError> {
        let itt = self.submit(lun, cdb, read_len, data_out).await?;
        loop {
            if let Event::Completed(c) = self.next_event().await?
                && c.itt == itt
            {
                return Ok(c);
            }
        }
    }

    /// Logs out (closing the session), waiting at most `within` for the answer.
    pub async fn logout(mut self, within: Duration) {
        self.next_itt = self.next_itt.wrapping_add(1);
        let req = Request::Logout(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: self.next_itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        });
        let _ = tokio::time::timeout(within, async {
            self.send(&req).await?;
            loop {
                if let Reply::Logout(_) = self.recv().await? {
                    return Ok::<(), ConnError>(());
                }
            }
        })
        .await;
        let _ = self.writer.shutdown().await;
    }
}

fn pdu_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::NopIn(_) => "NOP-In",
        Reply::ScsiResponse(_) => "SCSI Response",
        Reply::TaskMgmt(_) => "Task Management Response",
        Reply::Login(_) => "Login Response",
        Reply::Text(_) => "Text Response",
        Reply::DataIn(_) => "Data-In",
        Reply::Logout(_) => "Logout Response",
        Reply::R2t(_) => "R2T",
        Reply::Async(_) => "Async Message",
        Reply::Reject(_) => "Reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc_defaults_when_the_target_says_nothing() {
        let n = Negotiated::from_answer(&[]).unwrap();
        assert_eq!(
            n,
            Negotiated {
                immediate_data: true,
                initial_r2t: true,
                first_burst: 65536,
                max_burst: 262_144,
                target_max_recv: 8192
            }
        );
    }

    #[test]
    fn the_answer_decides() {
        let n = Negotiated::from_answer(&keys(&[
            ("ImmediateData", "No"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "8192"),
            ("MaxRecvDataSegmentLength", "4096"),
            ("TargetPortalGroupTag", "1"),
        ]))
        .unwrap();
        assert!(!n.immediate_data && !n.initial_r2t);
        assert_eq!(n.first_burst, 8192);
        assert_eq!(n.target_max_recv, 4096);
    }

    #[test]
    fn a_digest_that_was_not_offered_is_refused() {
        assert!(Negotiated::from_answer(&keys(&[("HeaderDigest", "CRC32C")])).is_err());
        assert!(Negotiated::from_answer(&keys(&[("DataDigest", "None")])).is_ok());
    }

    #[test]
    fn silly_lengths_fall_back_to_defaults() {
        let n = Negotiated::from_answer(&keys(&[
            ("MaxRecvDataSegmentLength", "0"),
            ("FirstBurstLength", "99999999"),
        ]))
        .unwrap();
        assert_eq!(n.target_max_recv, 8192);
        assert_eq!(n.first_burst, 65536);
    }

    #[test]
    fn only_class_2_refusals_are_permanent() {
        let refused = |class, detail| ConnError::LoginRefused { class, detail };
        assert!(refused(2, 3).is_permanent_refusal());
        assert!(!refused(3, 1).is_permanent_refusal());
        assert!(!ConnError::Closed.is_permanent_refusal());
        assert!(refused(2, 3).to_string().contains("target not found"));
    }
}
