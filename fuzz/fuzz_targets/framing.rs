//! PDU framing and decoding (src/wire): arbitrary bytes into `PduCodec` under login limits
//! or after-login limits (digests on or off, any MaxRecvDataSegmentLength), every framed PDU
//! through `Request::decode` and `Reply::decode`.
//!
//! Input: byte 0 picks the limits and the chunk size of an incremental feed, bytes 1..4 a
//! segment limit; the rest is the byte stream.
//!
//! Invariants: feeding the stream in chunks gives exactly the PDUs (and the error) that
//! feeding it at once does; a framed PDU has the data and AHS lengths its header states and
//! no more data than the limit; a decoded request survives encode, framing (with the same
//! digests) and decode unchanged; `BufQueue` hands back exactly the bytes pushed into it.
#![no_main]

use bytes::{Buf, BytesMut};
use keel::wire::framing::{BufQueue, FrameError, frame_parts};
use keel::wire::{
    BHS_LEN, FrameLimits, PduCodec, RawPdu, Reply, Request, ahs_length, data_segment_length,
};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// At most this many PDUs per input (each consumes at least 48 bytes anyway).
const MAX_PDUS: usize = 4096;

fn limits(cfg: u8, seg: &[u8; 3]) -> FrameLimits {
    let max_data_segment = match (cfg >> 2) & 3 {
        0 => FrameLimits::LOGIN.max_data_segment,
        1 => 512,
        2 => 262_144,
        _ => u32::from_be_bytes([0, seg[0], seg[1], seg[2]]),
    };
    FrameLimits {
        header_digest: cfg & 1 != 0,
        data_digest: cfg & 2 != 0,
        max_data_segment,
    }
}

/// What one decode call gave: a PDU, or the error's text (errors are not `PartialEq`).
type Outcome = Result<RawPdu, String>;

fn describe(e: FrameError) -> String {
    e.to_string()
}

/// Decodes everything in `buf`, stopping at the first error or incomplete PDU.
fn drain(codec: &mut PduCodec, buf: &mut BytesMut, out: &mut Vec<Outcome>) -> bool {
    while out.len() < MAX_PDUS {
        match codec.decode(buf) {
            Ok(Some(pdu)) => out.push(Ok(pdu)),
            Ok(None) => return true,
            Err(e) => {
                out.push(Err(describe(e)));
                return false;
            }
        }
    }
    false
}

fn check_pdu(pdu: &RawPdu, limits: FrameLimits) {
    let declared = data_segment_length(&pdu.bhs);
    assert_eq!(pdu.data.len(), declared as usize);
    assert!(declared <= limits.max_data_segment);
    assert_eq!(pdu.ahs.len(), ahs_length(&pdu.bhs));
    if !limits.data_digest || pdu.data.is_empty() {
        assert!(pdu.data_digest_ok);
    }

    // Target-side parsing (the test initiator's) must never panic either.
    if let Ok(reply) = Reply::decode(&pdu.bhs, pdu.data.clone()) {
        let _ = reply.encode();
    }

    if !pdu.data_digest_ok {
        return;
    }
    let Ok(req) = Request::decode(&pdu.bhs, &pdu.ahs, pdu.data.clone()) else {
        return;
    };
    // Round trip: encode, frame with the same digests, decode again.
    let (head, data) = req.encode();
    assert!(head.len() >= BHS_LEN && (head.len() - BHS_LEN).is_multiple_of(4));
    let mut parts = Vec::new();
    frame_parts(
        &head,
        &data,
        limits.header_digest,
        limits.data_digest,
        &mut parts,
    );
    let wire: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();

    let mut queue = BufQueue::default();
    for p in &parts {
        queue.push(p.clone());
    }
    assert_eq!(queue.remaining(), wire.len());
    let mut drained = Vec::with_capacity(wire.len());
    let mut step = 1;
    while queue.has_remaining() {
        let chunk = queue.chunk();
        let n = step.min(chunk.len());
        drained.extend_from_slice(&chunk[..n]);
        queue.advance(n);
        step = step % 7 + 1;
    }
    assert_eq!(drained, wire);

    let mut codec = PduCodec::new(FrameLimits {
        max_data_segment: limits.max_data_segment.max(data.len() as u32),
        ..limits
    });
    let mut buf = BytesMut::from(&wire[..]);
    let again = match codec.decode(&mut buf) {
        Ok(Some(p)) => p,
        other => panic!("re-framed {req:?} did not decode: {other:?}"),
    };
    assert!(buf.is_empty(), "re-framed PDU left bytes behind");
    assert!(again.data_digest_ok);
    let decoded = Request::decode(&again.bhs, &again.ahs, again.data.clone())
        .unwrap_or_else(|e| panic!("re-encoded {req:?} failed to decode: {e}"));
    assert_eq!(decoded, req);
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let cfg = input[0];
    let limits = limits(cfg, &[input[1], input[2], input[3]]);
    let stream = &input[4..];

    let mut whole = Vec::new();
    let mut buf = BytesMut::from(stream);
    let mut codec = PduCodec::new(limits);
    let whole_clean = drain(&mut codec, &mut buf, &mut whole);

    // The same stream in chunks of 1..=16 bytes.
    let chunk = usize::from(cfg >> 4) + 1;
    let mut pieces = Vec::new();
    let mut inc = BytesMut::new();
    let mut codec = PduCodec::new(limits);
    let mut inc_clean = true;
    for part in stream.chunks(chunk) {
        inc.extend_from_slice(part);
        if !drain(&mut codec, &mut inc, &mut pieces) {
            inc_clean = false;
            break;
        }
    }
    assert_eq!(whole, pieces, "chunked feeding changed the outcome");
    if whole_clean && inc_clean {
        assert_eq!(buf, inc, "chunked feeding left different bytes");
    }

    for pdu in whole.iter().flatten() {
        check_pdu(pdu, limits);
    }
});
