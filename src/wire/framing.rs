//! Splits a byte stream into PDUs (RFC 7143 §11.1) and checks digests and length limits.
//!
//! The decoder is a plain `tokio_util` [`Decoder`] over a `BytesMut`, so it is tested without
//! a socket. Its limits change once login negotiates digests and segment lengths.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::digest::crc32c;
use super::{BHS_LEN, WireError, ahs_length, data_segment_length, padding};

/// What the receiving side accepts on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    pub header_digest: bool,
    pub data_digest: bool,
    /// Our MaxRecvDataSegmentLength: a longer data segment is a protocol error.
    pub max_data_segment: u32,
}

impl FrameLimits {
    /// Limits during login: no digests, and the RFC's default 8192-byte segments.
    pub const LOGIN: FrameLimits = FrameLimits {
        header_digest: false,
        data_digest: false,
        max_data_segment: 8192,
    };
}

/// A framed PDU: header, AHS and data, with digests checked and stripped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPdu {
    pub bhs: [u8; BHS_LEN],
    pub ahs: Bytes,
    pub data: Bytes,
    /// False when the data digest did not match: the PDU is framed correctly (so the stream
    /// stays in sync) but its payload must not be used (RFC 7143 §7.8: answer with Reject).
    pub data_digest_ok: bool,
}

/// Errors that end a connection: framing is lost or the stream broke.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decoder of initiator PDUs (the same framing serves target PDUs in tests).
#[derive(Debug)]
pub struct PduCodec {
    pub limits: FrameLimits,
}

impl PduCodec {
    pub fn new(limits: FrameLimits) -> Self {
        PduCodec { limits }
    }
}

impl Decoder for PduCodec {
    type Item = RawPdu;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawPdu>, FrameError> {
        if src.len() < BHS_LEN {
            src.reserve(BHS_LEN - src.len());
            return Ok(None);
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&src[..BHS_LEN]);
        let data_len = data_segment_length(&bhs);
        if data_len > self.limits.max_data_segment {
            return Err(WireError::DataSegmentTooLong {
                len: data_len,
                max: self.limits.max_data_segment,
            }
            .into());
        }
        let ahs_len = ahs_length(&bhs);
        let header_digest = if self.limits.header_digest { 4 } else { 0 };
        let data_len = data_len as usize;
        let padded_data = data_len + padding(data_len);
        let data_digest = if self.limits.data_digest && data_len > 0 {
            4
        } else {
            0
        };
        let total = BHS_LEN + ahs_len + header_digest + padded_data + data_digest;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }

        let frame = src.split_to(total).freeze();
        let header_end = BHS_LEN + ahs_len;
        if header_digest > 0 {
            let expected = crc32c(&[&frame[..header_end]]).to_le_bytes();
            if frame[header_end..header_end + 4] != expected {
                return Err(WireError::HeaderDigest.into());
            }
        }
        let data_start = header_end + header_digest;
        let mut data_digest_ok = true;
        if data_digest > 0 {
            let padded = &frame[data_start..data_start + padded_data];
            let expected = crc32c(&[padded]).to_le_bytes();
            data_digest_ok = frame[data_start + padded_data..total] == expected;
        }
        Ok(Some(RawPdu {
            bhs,
            ahs: frame.slice(BHS_LEN..header_end),
            data: frame.slice(data_start..data_start + data_len),
            data_digest_ok,
        }))
    }
}

/// Serializes one PDU's header (BHS + AHS) and data with padding and digests, as a list of
/// buffers for a vectored write. The data buffer is not copied.
pub fn frame_parts(
    head: &[u8],
    data: &Bytes,
    header_digest: bool,
    data_digest: bool,
    out: &mut Vec<Bytes>,
) {
    let mut head_buf = BytesMut::with_capacity(head.len() + 4);
    head_buf.extend_from_slice(head);
    if header_digest {
        head_buf.extend_from_slice(&crc32c(&[head]).to_le_bytes());
    }
    out.push(head_buf.freeze());
    if data.is_empty() {
        return;
    }
    out.push(data.clone());
    let pad = padding(data.len());
    let mut tail = BytesMut::with_capacity(8);
    tail.extend_from_slice(&[0u8; 3][..pad]);
    if data_digest {
        tail.extend_from_slice(&crc32c(&[data, &[0u8; 3][..pad]]).to_le_bytes());
    }
    if !tail.is_empty() {
        out.push(tail.freeze());
    }
}

/// A queue of buffers that a vectored socket write drains ([`Buf::chunks_vectored`] exposes
/// them all at once, so one `writev` carries many PDUs).
#[derive(Debug, Default)]
pub struct BufQueue {
    parts: std::collections::VecDeque<Bytes>,
    remaining: usize,
}

impl BufQueue {
    pub fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Buf for BufQueue {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map(|b| &b[..]).unwrap_or(&[])
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(self.parts.iter()) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        self.remaining = self.remaining.saturating_sub(cnt);
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NopOut, Request};

    fn encoded(req: &Request, hd: bool, dd: bool) -> BytesMut {
        let (head, data) = req.encode();
        let mut parts = Vec::new();
        frame_parts(&head, &data, hd, dd, &mut parts);
        let mut buf = BytesMut::new();
        for p in parts {
            buf.extend_from_slice(&p);
        }
        buf
    }

    fn nop(data: &'static [u8]) -> Request {
        Request::NopOut(NopOut {
            immediate: true,
            lun: [0; 8],
            itt: 1,
            ttt: u32::MAX,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: Bytes::from_static(data),
        })
    }

    #[test]
    fn frames_byte_by_byte_with_digests() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let wire = encoded(&nop(b"hello"), hd, dd);
            let mut codec = PduCodec::new(FrameLimits {
                header_digest: hd,
                data_digest: dd,
                max_data_segment: 8192,
            });
            let mut buf = BytesMut::new();
            let mut got = None;
            for b in wire.iter() {
                assert!(got.is_none(), "a PDU came out before all its bytes arrived");
                buf.extend_from_slice(&[*b]);
                got = codec.decode(&mut buf).unwrap();
            }
            let pdu = got.unwrap();
            assert!(pdu.data_digest_ok);
            assert_eq!(&pdu.data[..], b"hello");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn corrupt_header_digest_is_fatal_and_corrupt_data_digest_is_flagged() {
        let limits = FrameLimits {
            header_digest: true,
            data_digest: true,
            max_data_segment: 8192,
        };
        let mut wire = encoded(&nop(b"hello"), true, true);
        wire[10] ^= 1;
        assert!(matches!(
            PduCodec::new(limits).decode(&mut wire),
            Err(FrameError::Wire(WireError::HeaderDigest))
        ));
        let mut wire = encoded(&nop(b"hello"), true, true);
        wire[BHS_LEN + 4 + 1] ^= 1;
        let pdu = PduCodec::new(limits).decode(&mut wire).unwrap().unwrap();
        assert!(!pdu.data_digest_ok);
    }

    #[test]
    fn oversized_data_segment_is_refused_before_buffering_it() {
        let mut bhs = [0u8; BHS_LEN];
        bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut buf = BytesMut::from(&bhs[..]);
        let err = PduCodec::new(FrameLimits::LOGIN)
            .decode(&mut buf)
            .unwrap_err();
        assert!(matches!(
            err,
            FrameError::Wire(WireError::DataSegmentTooLong { .. })
        ));
    }

    #[test]
    fn buf_queue_advances_across_parts() {
        let mut q = BufQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::new());
        q.push(Bytes::from_static(b"defg"));
        assert_eq!(q.remaining(), 7);
        q.advance(4);
        assert_eq!(q.chunk(), b"efg");
        q.advance(3);
        assert!(q.is_empty());
    }
}
