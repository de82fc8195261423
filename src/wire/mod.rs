//! iSCSI wire format (RFC 7143 §11): framing, typed PDUs, digests and text keys.
//!
//! Pure: bytes in, typed PDUs out, and back. Nothing here touches a socket, so everything is
//! tested (and fuzzed) without one. Layout of every PDU: a 48-byte Basic Header Segment, an
//! optional Additional Header Segment, an optional header digest, a data segment padded to a
//! multiple of 4 bytes, and an optional data digest.

pub mod digest;
pub mod framing;
pub mod pdu;
pub mod text;

pub use crate::payload::{FileSlice, Payload};
pub use framing::{FrameLimits, PduCodec, RawPdu};
pub use pdu::*;

/// Length of the Basic Header Segment (RFC 7143 §11.2).
pub const BHS_LEN: usize = 48;

/// The "reserved" tag value (RFC 7143 §11.2.1.8): no task, or no target transfer tag.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (RFC 7143 §11.2.1.2). Initiator opcodes are below 0x20, target opcodes above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    pub fn from_u8(value: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match value & 0x3f {
            0x00 => NopOut,
            0x01 => ScsiCommand,
            0x02 => TaskMgmtRequest,
            0x03 => LoginRequest,
            0x04 => TextRequest,
            0x05 => DataOut,
            0x06 => LogoutRequest,
            0x10 => SnackRequest,
            0x20 => NopIn,
            0x21 => ScsiResponse,
            0x22 => TaskMgmtResponse,
            0x23 => LoginResponse,
            0x24 => TextResponse,
            0x25 => DataIn,
            0x26 => LogoutResponse,
            0x31 => R2t,
            0x32 => AsyncMessage,
            0x3f => Reject,
            _ => return None,
        })
    }
}

/// Why a PDU could not be framed or decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("header digest mismatch")]
    HeaderDigest,
    #[error("data digest mismatch")]
    DataDigest,
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataSegmentTooLong { len: u32, max: u32 },
    #[error("unknown or target-only opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

/// Reads a big-endian u32 at `at` in the BHS.
pub(crate) fn be32(bhs: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]])
}

pub(crate) fn be16(bhs: &[u8; BHS_LEN], at: usize) -> u16 {
    u16::from_be_bytes([bhs[at], bhs[at + 1]])
}

pub(crate) fn put32(bhs: &mut [u8; BHS_LEN], at: usize, value: u32) {
    bhs[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

pub(crate) fn put16(bhs: &mut [u8; BHS_LEN], at: usize, value: u16) {
    bhs[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The 24-bit DataSegmentLength in bytes 5..8.
pub fn data_segment_length(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

/// TotalAHSLength (byte 4) in bytes (it is counted in 4-byte words).
pub fn ahs_length(bhs: &[u8; BHS_LEN]) -> usize {
    bhs[4] as usize * 4
}

/// Bytes of padding after a data segment of `len` bytes (RFC 7143 §11.1: to a 4-byte boundary).
pub fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Serial number arithmetic for CmdSN/StatSN (RFC 1982, 32 bits, as RFC 7143 §4.2.2.1 asks):
/// whether `a` is less than `b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// Whether `a` is less than or equal to `b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_fff0, 5));
        assert!(!sn_lt(5, 0xffff_fff0));
        assert!(sn_le(7, 7));
        assert!(!sn_lt(7, 7));
    }

    #[test]
    fn padding_to_four() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 3);
        assert_eq!(padding(4), 0);
        assert_eq!(padding(6), 2);
    }

    #[test]
    fn every_opcode_round_trips() {
        for v in 0..=0x3fu8 {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op as u8, v);
            }
        }
    }
}
