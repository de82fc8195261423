//! Typed PDUs (RFC 7143 §11), both directions: the target decodes requests and encodes
//! replies; the test initiator does the opposite. Field offsets follow the RFC's figures.

use bytes::{BufMut, Bytes, BytesMut};

use super::{BHS_LEN, Opcode, Payload, WireError, be16, be32, put16, put32};

/// Flag bits used by several PDUs (byte 1).
const F_BIT: u8 = 0x80;
const IMMEDIATE_BIT: u8 = 0x40;

/// StatSN, ExpCmdSN and MaxCmdSN: bytes 24..36 of every target PDU. The connection's writer
/// stamps them at send time so they are always current.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqNums {
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl SeqNums {
    fn read(bhs: &[u8; BHS_LEN]) -> Self {
        SeqNums {
            stat_sn: be32(bhs, 24),
            exp_cmd_sn: be32(bhs, 28),
            max_cmd_sn: be32(bhs, 32),
        }
    }

    /// Writes the three numbers into a target PDU's header.
    pub fn stamp(&self, bhs: &mut [u8; BHS_LEN]) {
        put32(bhs, 24, self.stat_sn);
        put32(bhs, 28, self.exp_cmd_sn);
        put32(bhs, 32, self.max_cmd_sn);
    }
}

/// How a target PDU uses StatSN (RFC 7143 §4.2.2.2): most status-bearing PDUs take the next
/// StatSN and advance it; R2T and unsolicited NOP-In carry it without advancing; Data-In
/// without status carries none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatSnUse {
    Advance,
    Peek,
    Unused,
}

/// A target PDU ready for the writer: header, payload, and how to stamp StatSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutPdu {
    pub header: [u8; BHS_LEN],
    pub data: Payload,
    pub stat_sn: StatSnUse,
}

fn header(opcode: Opcode, flags: u8, data_len: usize) -> [u8; BHS_LEN] {
    let mut bhs = [0u8; BHS_LEN];
    bhs[0] = opcode as u8;
    bhs[1] = flags;
    let len = (data_len as u32).min(0x00ff_ffff).to_be_bytes();
    bhs[5..8].copy_from_slice(&len[1..4]);
    bhs
}

fn lun_at(bhs: &[u8; BHS_LEN]) -> [u8; 8] {
    let mut lun = [0u8; 8];
    lun.copy_from_slice(&bhs[8..16]);
    lun
}

fn check_opcode(bhs: &[u8; BHS_LEN], expected: Opcode) -> Result<(), WireError> {
    if bhs[0] & 0x3f == expected as u8 {
        Ok(())
    } else {
        Err(WireError::Malformed("opcode does not match the PDU type"))
    }
}

// ---------------------------------------------------------------------------------------
// Initiator PDUs
// ---------------------------------------------------------------------------------------

/// NOP-Out (§11.18).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// SCSI Command (§11.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_bit: bool,
    pub read: bool,
    pub write: bool,
    /// Task attribute (ATTR field, 3 bits).
    pub attr: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub expected_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The whole CDB: the 16 bytes of the BHS plus any Extended CDB AHS.
    pub cdb: Bytes,
    /// Bidirectional Expected Read-Data Length AHS, when present.
    pub bidi_read_length: Option<u32>,
    /// Immediate data.
    pub data: Bytes,
}

/// SCSI Task Management Function Request (§11.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub referenced_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Login Request (§11.12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// Text Request (§11.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Bytes,
}

/// SCSI Data-Out (§11.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOut {
    pub final_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub data: Bytes,
}

/// Logout Request (§11.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// SNACK Request (§11.16). Only meaningful at ErrorRecoveryLevel > 0; keel answers Reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnackRequest {
    pub snack_type: u8,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// Any PDU an initiator may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmt(TaskMgmtRequest),
    Login(LoginRequest),
    Text(TextRequest),
    DataOut(DataOut),
    Logout(LogoutRequest),
    Snack(SnackRequest),
}

/// Extended CDB AHS type (§11.2.2.3) and Bidirectional Read Length AHS type (§11.2.2.4).
const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;

impl Request {
    /// Decodes a framed initiator PDU.
    pub fn decode(bhs: &[u8; BHS_LEN], ahs: &[u8], data: Bytes) -> Result<Request, WireError> {
        let immediate = bhs[0] & IMMEDIATE_BIT != 0;
        let flags = bhs[1];
        let opcode = Opcode::from_u8(bhs[0]).ok_or(WireError::UnknownOpcode(bhs[0] & 0x3f))?;
        Ok(match opcode {
            Opcode::NopOut => Request::NopOut(NopOut {
                immediate,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
                data,
            }),
            Opcode::ScsiCommand => {
                let (extra_cdb, bidi_read_length) = parse_command_ahs(ahs)?;
                let mut cdb = BytesMut::with_capacity(16 + extra_cdb.len());
                cdb.extend_from_slice(&bhs[32..48]);
                cdb.extend_from_slice(extra_cdb);
                Request::ScsiCommand(ScsiCommand {
                    immediate,
                    final_bit: flags & F_BIT != 0,
                    read: flags & 0x40 != 0,
                    write: flags & 0x20 != 0,
                    attr: flags & 0x07,
                    lun: lun_at(bhs),
                    itt: be32(bhs, 16),
                    expected_length: be32(bhs, 20),
                    cmd_sn: be32(bhs, 24),
                    exp_stat_sn: be32(bhs, 28),
                    cdb: cdb.freeze(),
                    bidi_read_length,
                    data,
                })
            }
            Opcode::TaskMgmtRequest => Request::TaskMgmt(TaskMgmtRequest {
                immediate,
                function: flags & 0x7f,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                referenced_tag: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
                ref_cmd_sn: be32(bhs, 32),
                exp_data_sn: be32(bhs, 36),
            }),
            Opcode::LoginRequest => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&bhs[8..14]);
                Request::Login(LoginRequest {
                    transit: flags & 0x80 != 0,
                    continue_bit: flags & 0x40 != 0,
                    csg: (flags >> 2) & 0x03,
                    nsg: flags & 0x03,
                    version_max: bhs[2],
                    version_min: bhs[3],
                    isid,
                    tsih: be16(bhs, 14),
                    itt: be32(bhs, 16),
                    cid: be16(bhs, 20),
                    cmd_sn: be32(bhs, 24),
                    exp_stat_sn: be32(bhs, 28),
                    data,
                })
            }
            Opcode::TextRequest => Request::Text(TextRequest {
                immediate,
                final_bit: flags & 0x80 != 0,
                continue_bit: flags & 0x40 != 0,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
                data,
            }),
            Opcode::DataOut => Request::DataOut(DataOut {
                final_bit: flags & F_BIT != 0,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                exp_stat_sn: be32(bhs, 28),
                data_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
                data,
            }),
            Opcode::LogoutRequest => Request::Logout(LogoutRequest {
                immediate,
                reason: flags & 0x7f,
                itt: be32(bhs, 16),
                cid: be16(bhs, 20),
                cmd_sn: be32(bhs, 24),
                exp_stat_sn: be32(bhs, 28),
            }),
            Opcode::SnackRequest => Request::Snack(SnackRequest {
                snack_type: flags & 0x0f,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                exp_stat_sn: be32(bhs, 28),
                beg_run: be32(bhs, 40),
                run_length: be32(bhs, 44),
            }),
            other => return Err(WireError::UnknownOpcode(other as u8)),
        })
    }

    /// Encodes the PDU as an initiator sends it: header, AHS, data (used by test initiators).
    pub fn encode(&self) -> (Vec<u8>, Bytes) {
        let mut ahs = Vec::new();
        let (mut bhs, data) = match self {
            Request::NopOut(p) => {
                let mut h = header(Opcode::NopOut, F_BIT, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                set_immediate(&mut h, p.immediate);
                (h, p.data.clone())
            }
            Request::ScsiCommand(p) => {
                let flags = (if p.final_bit { F_BIT } else { 0 })
                    | (if p.read { 0x40 } else { 0 })
                    | (if p.write { 0x20 } else { 0 })
                    | (p.attr & 0x07);
                let mut h = header(Opcode::ScsiCommand, flags, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.expected_length);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                let base = p.cdb.len().min(16);
                h[32..32 + base].copy_from_slice(&p.cdb[..base]);
                if p.cdb.len() > 16 {
                    let extra = &p.cdb[16..];
                    ahs.extend_from_slice(&((extra.len() + 1) as u16).to_be_bytes());
                    ahs.push(AHS_EXTENDED_CDB);
                    ahs.push(0);
                    ahs.extend_from_slice(extra);
                    ahs.resize(ahs.len() + super::padding(ahs.len()), 0);
                }
                if let Some(len) = p.bidi_read_length {
                    ahs.extend_from_slice(&5u16.to_be_bytes());
                    ahs.push(AHS_BIDI_READ_LENGTH);
                    ahs.push(0);
                    ahs.extend_from_slice(&len.to_be_bytes());
                }
                h[4] = (ahs.len() / 4) as u8;
                set_immediate(&mut h, p.immediate);
                (h, p.data.clone())
            }
            Request::TaskMgmt(p) => {
                let mut h = header(Opcode::TaskMgmtRequest, F_BIT | (p.function & 0x7f), 0);
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.referenced_tag);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                put32(&mut h, 32, p.ref_cmd_sn);
                put32(&mut h, 36, p.exp_data_sn);
                set_immediate(&mut h, p.immediate);
                (h, Bytes::new())
            }
            Request::Login(p) => {
                let flags = (if p.transit { 0x80 } else { 0 })
                    | (if p.continue_bit { 0x40 } else { 0 })
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                let mut h = header(Opcode::LoginRequest, flags, p.data.len());
                h[2] = p.version_max;
                h[3] = p.version_min;
                h[8..14].copy_from_slice(&p.isid);
                put16(&mut h, 14, p.tsih);
                put32(&mut h, 16, p.itt);
                put16(&mut h, 20, p.cid);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                set_immediate(&mut h, true);
                (h, p.data.clone())
            }
            Request::Text(p) => {
                let flags =
                    (if p.final_bit { 0x80 } else { 0 }) | (if p.continue_bit { 0x40 } else { 0 });
                let mut h = header(Opcode::TextRequest, flags, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                set_immediate(&mut h, p.immediate);
                (h, p.data.clone())
            }
            Request::DataOut(p) => {
                let mut h = header(
                    Opcode::DataOut,
                    if p.final_bit { F_BIT } else { 0 },
                    p.data.len(),
                );
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 28, p.exp_stat_sn);
                put32(&mut h, 36, p.data_sn);
                put32(&mut h, 40, p.buffer_offset);
                (h, p.data.clone())
            }
            Request::Logout(p) => {
                let mut h = header(Opcode::LogoutRequest, F_BIT | (p.reason & 0x7f), 0);
                put32(&mut h, 16, p.itt);
                put16(&mut h, 20, p.cid);
                put32(&mut h, 24, p.cmd_sn);
                put32(&mut h, 28, p.exp_stat_sn);
                set_immediate(&mut h, p.immediate);
                (h, Bytes::new())
            }
            Request::Snack(p) => {
                let mut h = header(Opcode::SnackRequest, F_BIT | (p.snack_type & 0x0f), 0);
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 28, p.exp_stat_sn);
                put32(&mut h, 40, p.beg_run);
                put32(&mut h, 44, p.run_length);
                (h, Bytes::new())
            }
        };
        bhs[4] = (ahs.len() / 4) as u8;
        let mut head = bhs.to_vec();
        head.extend_from_slice(&ahs);
        (head, data)
    }
}

fn set_immediate(bhs: &mut [u8; BHS_LEN], immediate: bool) {
    if immediate {
        bhs[0] |= IMMEDIATE_BIT;
    }
}

/// Splits a SCSI Command's AHS into the extended CDB bytes and the bidirectional read length.
fn parse_command_ahs(mut ahs: &[u8]) -> Result<(&[u8], Option<u32>), WireError> {
    let mut extended: &[u8] = &[];
    let mut bidi = None;
    while !ahs.is_empty() {
        if ahs.len() < 4 {
            return Err(WireError::Malformed("truncated AHS"));
        }
        let len = u16::from_be_bytes([ahs[0], ahs[1]]) as usize;
        let kind = ahs[2];
        // AHSLength counts the AHS-specific bytes after the type byte (the first of which is
        // reserved); each AHS is padded to a multiple of 4 bytes.
        let total = 3 + len;
        let padded = total + super::padding(total);
        if len == 0 || padded > ahs.len() {
            return Err(WireError::Malformed("AHS length exceeds TotalAHSLength"));
        }
        match kind {
            AHS_EXTENDED_CDB => extended = &ahs[4..total],
            AHS_BIDI_READ_LENGTH if len == 5 => {
                bidi = Some(u32::from_be_bytes([ahs[4], ahs[5], ahs[6], ahs[7]]))
            }
            _ => return Err(WireError::Malformed("unsupported AHS type")),
        }
        ahs = &ahs[padded..];
    }
    Ok((extended, bidi))
}

// ---------------------------------------------------------------------------------------
// Target PDUs
// ---------------------------------------------------------------------------------------

/// NOP-In (§11.19).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NopIn {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: SeqNums,
    pub data: Bytes,
}

/// SCSI Response (§11.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiResponsePdu {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// iSCSI service response: 0 = command completed at target, 1 = target failure.
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub sn: SeqNums,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
    /// Sense data, without the 2-byte SenseLength prefix the wire carries.
    pub sense: Bytes,
}

/// SCSI Task Management Function Response (§11.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub sn: SeqNums,
}

/// Login Response (§11.13).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub sn: SeqNums,
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Bytes,
}

/// Text Response (§11.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextResponse {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: SeqNums,
    pub data: Bytes,
}

/// SCSI Data-In (§11.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataIn {
    pub final_bit: bool,
    pub acknowledge: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// Status carried in this PDU (the S bit), only on the final PDU of a command.
    pub status: Option<u8>,
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: SeqNums,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
    pub data: Payload,
}

/// Logout Response (§11.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub sn: SeqNums,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Ready To Transfer (§11.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2t {
    pub lun: [u8; 8],
    pub itt: u32,
    pub ttt: u32,
    pub sn: SeqNums,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_length: u32,
}

/// Asynchronous Message (§11.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: [u8; 8],
    pub sn: SeqNums,
    pub event: u8,
    pub vendor_code: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
    pub data: Bytes,
}

/// Reject (§11.17): the data segment is the header of the rejected PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: u8,
    pub sn: SeqNums,
    pub data_sn: u32,
    pub data: Bytes,
}

/// Any PDU a target may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    NopIn(NopIn),
    ScsiResponse(ScsiResponsePdu),
    TaskMgmt(TaskMgmtResponse),
    Login(LoginResponse),
    Text(TextResponse),
    DataIn(DataIn),
    Logout(LogoutResponse),
    R2t(R2t),
    Async(AsyncMessage),
    Reject(Reject),
}

impl Reply {
    /// Encodes the reply for the writer. StatSN/ExpCmdSN/MaxCmdSN from `sn` are written too;
    /// the connection's writer overwrites them with current values at send time.
    pub fn encode(&self) -> OutPdu {
        let (mut h, data, stat_sn, sn) = match self {
            Reply::NopIn(p) => {
                let mut h = header(Opcode::NopIn, F_BIT, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                // A NOP-In answering a NOP-Out takes a StatSN; a ping of our own does not.
                let use_ = if p.itt == super::RESERVED_TAG {
                    StatSnUse::Peek
                } else {
                    StatSnUse::Advance
                };
                (h, p.data.clone().into(), use_, p.sn)
            }
            Reply::ScsiResponse(p) => {
                let flags = F_BIT
                    | (if p.bidi_overflow { 0x10 } else { 0 })
                    | (if p.bidi_underflow { 0x08 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | (if p.underflow { 0x02 } else { 0 });
                let data = if p.sense.is_empty() {
                    Bytes::new()
                } else {
                    let mut d = BytesMut::with_capacity(2 + p.sense.len());
                    d.put_u16(p.sense.len() as u16);
                    d.extend_from_slice(&p.sense);
                    d.freeze()
                };
                let mut h = header(Opcode::ScsiResponse, flags, data.len());
                h[2] = p.response;
                h[3] = p.status;
                put32(&mut h, 16, p.itt);
                put32(&mut h, 36, p.exp_data_sn);
                put32(&mut h, 40, p.bidi_residual);
                put32(&mut h, 44, p.residual);
                (h, data.into(), StatSnUse::Advance, p.sn)
            }
            Reply::TaskMgmt(p) => {
                let mut h = header(Opcode::TaskMgmtResponse, F_BIT, 0);
                h[2] = p.response;
                put32(&mut h, 16, p.itt);
                (h, Payload::default(), StatSnUse::Advance, p.sn)
            }
            Reply::Login(p) => {
                let flags = (if p.transit { 0x80 } else { 0 })
                    | (if p.continue_bit { 0x40 } else { 0 })
                    | ((p.csg & 3) << 2)
                    | (p.nsg & 3);
                let mut h = header(Opcode::LoginResponse, flags, p.data.len());
                h[2] = p.version_max;
                h[3] = p.version_active;
                h[8..14].copy_from_slice(&p.isid);
                put16(&mut h, 14, p.tsih);
                put32(&mut h, 16, p.itt);
                h[36] = p.status_class;
                h[37] = p.status_detail;
                (h, p.data.clone().into(), StatSnUse::Advance, p.sn)
            }
            Reply::Text(p) => {
                let flags =
                    (if p.final_bit { 0x80 } else { 0 }) | (if p.continue_bit { 0x40 } else { 0 });
                let mut h = header(Opcode::TextResponse, flags, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                (h, p.data.clone().into(), StatSnUse::Advance, p.sn)
            }
            Reply::DataIn(p) => {
                let flags = (if p.final_bit { F_BIT } else { 0 })
                    | (if p.acknowledge { 0x40 } else { 0 })
                    | (if p.overflow { 0x04 } else { 0 })
                    | (if p.underflow { 0x02 } else { 0 })
                    | (if p.status.is_some() { 0x01 } else { 0 });
                let mut h = header(Opcode::DataIn, flags, p.data.len());
                h[3] = p.status.unwrap_or(0);
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 36, p.data_sn);
                put32(&mut h, 40, p.buffer_offset);
                put32(&mut h, 44, p.residual);
                let use_ = if p.status.is_some() {
                    StatSnUse::Advance
                } else {
                    StatSnUse::Unused
                };
                (h, p.data.clone(), use_, p.sn)
            }
            Reply::Logout(p) => {
                let mut h = header(Opcode::LogoutResponse, F_BIT, 0);
                h[2] = p.response;
                put32(&mut h, 16, p.itt);
                put16(&mut h, 40, p.time2wait);
                put16(&mut h, 42, p.time2retain);
                (h, Payload::default(), StatSnUse::Advance, p.sn)
            }
            Reply::R2t(p) => {
                let mut h = header(Opcode::R2t, F_BIT, 0);
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, p.itt);
                put32(&mut h, 20, p.ttt);
                put32(&mut h, 36, p.r2t_sn);
                put32(&mut h, 40, p.buffer_offset);
                put32(&mut h, 44, p.desired_length);
                (h, Payload::default(), StatSnUse::Peek, p.sn)
            }
            Reply::Async(p) => {
                let mut h = header(Opcode::AsyncMessage, F_BIT, p.data.len());
                h[8..16].copy_from_slice(&p.lun);
                put32(&mut h, 16, super::RESERVED_TAG);
                h[36] = p.event;
                h[37] = p.vendor_code;
                put16(&mut h, 38, p.parameter1);
                put16(&mut h, 40, p.parameter2);
                put16(&mut h, 42, p.parameter3);
                (h, p.data.clone().into(), StatSnUse::Advance, p.sn)
            }
            Reply::Reject(p) => {
                let mut h = header(Opcode::Reject, F_BIT, p.data.len());
                h[2] = p.reason;
                put32(&mut h, 16, super::RESERVED_TAG);
                put32(&mut h, 36, p.data_sn);
                (h, p.data.clone().into(), StatSnUse::Advance, p.sn)
            }
        };
        sn.stamp(&mut h);
        OutPdu {
            header: h,
            data,
            stat_sn,
        }
    }

    /// Decodes a target PDU (used by test initiators).
    pub fn decode(bhs: &[u8; BHS_LEN], data: Bytes) -> Result<Reply, WireError> {
        let flags = bhs[1];
        let sn = SeqNums::read(bhs);
        let opcode = Opcode::from_u8(bhs[0]).ok_or(WireError::UnknownOpcode(bhs[0] & 0x3f))?;
        check_opcode(bhs, opcode)?;
        Ok(match opcode {
            Opcode::NopIn => Reply::NopIn(NopIn {
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                sn,
                data,
            }),
            Opcode::ScsiResponse => {
                let sense = if data.len() >= 2 {
                    let len = u16::from_be_bytes([data[0], data[1]]) as usize;
                    data.slice(2..(2 + len).min(data.len()))
                } else {
                    Bytes::new()
                };
                Reply::ScsiResponse(ScsiResponsePdu {
                    bidi_overflow: flags & 0x10 != 0,
                    bidi_underflow: flags & 0x08 != 0,
                    overflow: flags & 0x04 != 0,
                    underflow: flags & 0x02 != 0,
                    response: bhs[2],
                    status: bhs[3],
                    itt: be32(bhs, 16),
                    sn,
                    exp_data_sn: be32(bhs, 36),
                    bidi_residual: be32(bhs, 40),
                    residual: be32(bhs, 44),
                    sense,
                })
            }
            Opcode::TaskMgmtResponse => Reply::TaskMgmt(TaskMgmtResponse {
                response: bhs[2],
                itt: be32(bhs, 16),
                sn,
            }),
            Opcode::LoginResponse => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&bhs[8..14]);
                Reply::Login(LoginResponse {
                    transit: flags & 0x80 != 0,
                    continue_bit: flags & 0x40 != 0,
                    csg: (flags >> 2) & 3,
                    nsg: flags & 3,
                    version_max: bhs[2],
                    version_active: bhs[3],
                    isid,
                    tsih: be16(bhs, 14),
                    itt: be32(bhs, 16),
                    sn,
                    status_class: bhs[36],
                    status_detail: bhs[37],
                    data,
                })
            }
            Opcode::TextResponse => Reply::Text(TextResponse {
                final_bit: flags & 0x80 != 0,
                continue_bit: flags & 0x40 != 0,
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                sn,
                data,
            }),
            Opcode::DataIn => Reply::DataIn(DataIn {
                final_bit: flags & F_BIT != 0,
                acknowledge: flags & 0x40 != 0,
                overflow: flags & 0x04 != 0,
                underflow: flags & 0x02 != 0,
                status: (flags & 0x01 != 0).then_some(bhs[3]),
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                sn,
                data_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
                residual: be32(bhs, 44),
                data: data.into(),
            }),
            Opcode::LogoutResponse => Reply::Logout(LogoutResponse {
                response: bhs[2],
                itt: be32(bhs, 16),
                sn,
                time2wait: be16(bhs, 40),
                time2retain: be16(bhs, 42),
            }),
            Opcode::R2t => Reply::R2t(R2t {
                lun: lun_at(bhs),
                itt: be32(bhs, 16),
                ttt: be32(bhs, 20),
                sn,
                r2t_sn: be32(bhs, 36),
                buffer_offset: be32(bhs, 40),
                desired_length: be32(bhs, 44),
            }),
            Opcode::AsyncMessage => Reply::Async(AsyncMessage {
                lun: lun_at(bhs),
                sn,
                event: bhs[36],
                vendor_code: bhs[37],
                parameter1: be16(bhs, 38),
                parameter2: be16(bhs, 40),
                parameter3: be16(bhs, 42),
                data,
            }),
            Opcode::Reject => Reply::Reject(Reject {
                reason: bhs[2],
                sn,
                data_sn: be32(bhs, 36),
                data,
            }),
            other => return Err(WireError::UnknownOpcode(other as u8)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn in_memory(payload: Payload) -> Bytes {
        payload
            .bytes()
            .cloned()
            .expect("encoded replies carry bytes")
    }

    fn split(head: &[u8]) -> ([u8; BHS_LEN], Vec<u8>) {
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&head[..BHS_LEN]);
        (bhs, head[BHS_LEN..].to_vec())
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn request() -> impl Strategy<Value = Request> {
        let cdb = proptest::collection::vec(any::<u8>(), 16..=48).prop_map(Bytes::from);
        prop_oneof![
            (
                any::<bool>(),
                any::<[u8; 8]>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                bytes()
            )
                .prop_map(|(immediate, lun, itt, ttt, cmd_sn, data)| Request::NopOut(
                    NopOut {
                        immediate,
                        lun,
                        itt,
                        ttt,
                        cmd_sn,
                        exp_stat_sn: cmd_sn ^ 1,
                        data
                    }
                )),
            (
                any::<(bool, bool, bool, bool)>(),
                0u8..8,
                any::<[u8; 8]>(),
                any::<(u32, u32, u32)>(),
                cdb,
                proptest::option::of(any::<u32>()),
                bytes()
            )
                .prop_map(
                    |(
                        (immediate, final_bit, read, write),
                        attr,
                        lun,
                        (itt, len, sn),
                        cdb,
                        bidi,
                        data,
                    )| {
                        Request::ScsiCommand(ScsiCommand {
                            immediate,
                            final_bit,
                            read,
                            write,
                            attr,
                            lun,
                            itt,
                            expected_length: len,
                            cmd_sn: sn,
                            exp_stat_sn: sn.wrapping_add(1),
                            cdb,
                            bidi_read_length: bidi,
                            data,
                        })
                    }
                ),
            (
                any::<(bool, u8, [u8; 8])>(),
                any::<(u32, u32, u32, u32, u32)>()
            )
                .prop_map(|((immediate, f, lun), (itt, rtt, sn, rsn, dsn))| {
                    Request::TaskMgmt(TaskMgmtRequest {
                        immediate,
                        function: f & 0x7f,
                        lun,
                        itt,
                        referenced_tag: rtt,
                        cmd_sn: sn,
                        exp_stat_sn: sn,
                        ref_cmd_sn: rsn,
                        exp_data_sn: dsn,
                    })
                }),
            (
                any::<(bool, bool, u8, u8, u8, u8)>(),
                any::<([u8; 6], u16, u32, u16, u32)>(),
                bytes()
            )
                .prop_map(
                    |((t, c, csg, nsg, vmax, vmin), (isid, tsih, itt, cid, sn), data)| {
                        Request::Login(LoginRequest {
                            transit: t,
                            continue_bit: c,
                            csg: csg & 3,
                            nsg: nsg & 3,
                            version_max: vmax,
                            version_min: vmin,
                            isid,
                            tsih,
                            itt,
                            cid,
                            cmd_sn: sn,
                            exp_stat_sn: sn,
                            data,
                        })
                    }
                ),
            (any::<(bool, bool, bool, [u8; 8], u32, u32, u32)>(), bytes()).prop_map(
                |((i, f, c, lun, itt, ttt, sn), data)| Request::Text(TextRequest {
                    immediate: i,
                    final_bit: f,
                    continue_bit: c,
                    lun,
                    itt,
                    ttt,
                    cmd_sn: sn,
                    exp_stat_sn: sn,
                    data
                })
            ),
            (any::<(bool, [u8; 8], u32, u32, u32, u32, u32)>(), bytes()).prop_map(
                |((f, lun, itt, ttt, esn, dsn, off), data)| Request::DataOut(DataOut {
                    final_bit: f,
                    lun,
                    itt,
                    ttt,
                    exp_stat_sn: esn,
                    data_sn: dsn,
                    buffer_offset: off,
                    data
                })
            ),
            any::<(bool, u8, u32, u16, u32, u32)>().prop_map(|(i, r, itt, cid, sn, esn)| {
                Request::Logout(LogoutRequest {
                    immediate: i,
                    reason: r & 0x7f,
                    itt,
                    cid,
                    cmd_sn: sn,
                    exp_stat_sn: esn,
                })
            }),
        ]
    }

    proptest! {
        #[test]
        fn requests_round_trip(req in request()) {
            let (head, data) = req.encode();
            let (bhs, ahs) = split(&head);
            prop_assert_eq!(Request::decode(&bhs, &ahs, data).unwrap(), req);
        }

        #[test]
        fn data_in_round_trips(final_bit: bool, status: Option<u8>, itt: u32, data_sn: u32,
                               offset: u32, residual: u32, o: bool, u: bool, data in bytes()) {
            let reply = Reply::DataIn(DataIn {
                final_bit, acknowledge: false, overflow: o, underflow: u, status,
                lun: [0; 8], itt, ttt: u32::MAX, sn: SeqNums { stat_sn: 0, exp_cmd_sn: 9, max_cmd_sn: 40 },
                data_sn, buffer_offset: offset, residual, data: data.into(),
            });
            let out = reply.encode();
            prop_assert_eq!(Reply::decode(&out.header, in_memory(out.data)).unwrap(), reply);
        }

        #[test]
        fn decoding_arbitrary_headers_never_panics(head in proptest::collection::vec(any::<u8>(), 48..100),
                                                   data in bytes()) {
            let (bhs, ahs) = split(&head);
            let _ = Request::decode(&bhs, &ahs, data.clone());
            let _ = Reply::decode(&bhs, data);
        }
    }

    #[test]
    fn target_replies_round_trip() {
        let sn = SeqNums {
            stat_sn: 5,
            exp_cmd_sn: 6,
            max_cmd_sn: 70,
        };
        let replies = vec![
            Reply::NopIn(NopIn {
                lun: [0; 8],
                itt: 1,
                ttt: u32::MAX,
                sn,
                data: Bytes::from_static(b"ping"),
            }),
            Reply::ScsiResponse(ScsiResponsePdu {
                underflow: true,
                status: 2,
                itt: 3,
                sn,
                residual: 512,
                sense: Bytes::from_static(&[
                    0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
                ]),
                ..Default::default()
            }),
            Reply::TaskMgmt(TaskMgmtResponse {
                response: 0,
                itt: 4,
                sn,
            }),
            Reply::Login(LoginResponse {
                transit: true,
                csg: 1,
                nsg: 3,
                isid: [1, 2, 3, 4, 5, 6],
                tsih: 7,
                itt: 8,
                sn,
                data: Bytes::from_static(b"A=B\0"),
                ..Default::default()
            }),
            Reply::Text(TextResponse {
                final_bit: true,
                continue_bit: false,
                lun: [0; 8],
                itt: 9,
                ttt: u32::MAX,
                sn,
                data: Bytes::new(),
            }),
            Reply::Logout(LogoutResponse {
                response: 0,
                itt: 10,
                sn,
                time2wait: 2,
                time2retain: 20,
            }),
            Reply::R2t(R2t {
                lun: [0, 1, 0, 0, 0, 0, 0, 0],
                itt: 11,
                ttt: 12,
                sn,
                r2t_sn: 1,
                buffer_offset: 8192,
                desired_length: 65536,
            }),
            Reply::Async(AsyncMessage {
                lun: [0; 8],
                sn,
                event: 1,
                vendor_code: 0,
                parameter1: 0,
                parameter2: 0,
                parameter3: 5,
                data: Bytes::new(),
            }),
            Reply::Reject(Reject {
                reason: 9,
                sn,
                data_sn: 0,
                data: Bytes::from(vec![0u8; 48]),
            }),
        ];
        for reply in replies {
            let out = reply.encode();
            assert_eq!(
                Reply::decode(&out.header, in_memory(out.data)).unwrap(),
                reply
            );
        }
    }

    #[test]
    fn stat_sn_use_follows_the_rfc() {
        let sn = SeqNums::default();
        let ping = Reply::NopIn(NopIn {
            lun: [0; 8],
            itt: u32::MAX,
            ttt: 1,
            sn,
            data: Bytes::new(),
        });
        assert_eq!(ping.encode().stat_sn, StatSnUse::Peek);
        let data_only = Reply::DataIn(DataIn {
            ..Default::default()
        });
        assert_eq!(data_only.encode().stat_sn, StatSnUse::Unused);
        let with_status = Reply::DataIn(DataIn {
            status: Some(0),
            ..Default::default()
        });
        assert_eq!(with_status.encode().stat_sn, StatSnUse::Advance);
    }

    #[test]
    fn extended_cdb_comes_back_whole() {
        let cdb: Vec<u8> = (0..32).collect();
        let req = Request::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: true,
            read: true,
            write: false,
            attr: 1,
            lun: [0; 8],
            itt: 1,
            expected_length: 512,
            cmd_sn: 1,
            exp_stat_sn: 1,
            cdb: Bytes::from(cdb.clone()),
            bidi_read_length: None,
            data: Bytes::new(),
        });
        let (head, _) = req.encode();
        assert_eq!(head.len() % 4, 0);
        let (bhs, ahs) = split(&head);
        match Request::decode(&bhs, &ahs, Bytes::new()).unwrap() {
            Request::ScsiCommand(c) => assert_eq!(&c.cdb[..], &cdb[..]),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn truncated_or_unknown_ahs_is_an_error() {
        assert!(parse_command_ahs(&[0, 9, 1, 0]).is_err());
        assert!(parse_command_ahs(&[0, 1, 7, 0]).is_err());
        assert!(parse_command_ahs(&[0, 1]).is_err());
    }
}
