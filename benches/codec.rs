//! Micro-benchmarks of the hot protocol paths (issue 4): CRC32C digests, framing a PDU out of
//! a receive buffer, decoding a SCSI command, and serializing a Data-In for a vectored write.
//! `cargo bench --bench codec`; figures are per operation, on whatever machine runs them.

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tokio_util::codec::Decoder;

use keel::wire::digest::crc32c;
use keel::wire::framing::frame_parts;
use keel::wire::{BHS_LEN, DataIn, FrameLimits, PduCodec, Reply, Request, ScsiCommand, SeqNums};

fn read10(itt: u32) -> Request {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x28;
    cdb[2..6].copy_from_slice(&1234u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&8u16.to_be_bytes());
    Request::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read: true,
        write: false,
        attr: 1,
        lun: [0; 8],
        itt,
        expected_length: 4096,
        cmd_sn: itt,
        exp_stat_sn: itt,
        cdb: Bytes::copy_from_slice(&cdb),
        bidi_read_length: None,
        data: Bytes::new(),
    })
}

/// The bytes an initiator puts on the wire for `req`, with or without digests.
fn wire_bytes(req: &Request, digests: bool) -> Vec<u8> {
    let (head, data) = req.encode();
    let mut parts = Vec::new();
    frame_parts(&head, &data, digests, digests, &mut parts);
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

fn digests(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for size in [48usize, 4096, 262_144] {
        let buf = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &buf, |b, buf| {
            b.iter(|| crc32c(&[black_box(buf)]))
        });
    }
    group.finish();
}

fn decoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for digests in [false, true] {
        let limits = FrameLimits {
            header_digest: digests,
            data_digest: digests,
            max_data_segment: 262_144,
        };
        // 32 commands back to back, as a busy initiator's segment arrives.
        let stream: Vec<u8> = (0..32)
            .flat_map(|i| wire_bytes(&read10(i), digests))
            .collect();
        let name = if digests {
            "scsi-command x32, digests"
        } else {
            "scsi-command x32"
        };
        group.throughput(Throughput::Elements(32));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut codec = PduCodec::new(limits);
                let mut buf = BytesMut::from(&stream[..]);
                let mut n = 0;
                while let Ok(Some(raw)) = codec.decode(&mut buf) {
                    let req = Request::decode(&raw.bhs, &raw.ahs, raw.data);
                    n += usize::from(req.is_ok());
                }
                assert_eq!(n, 32);
            })
        });
    }
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (size, digests) in [
        (4096usize, false),
        (4096, true),
        (262_144, false),
        (262_144, true),
    ] {
        let reply = Reply::DataIn(DataIn {
            final_bit: true,
            acknowledge: false,
            overflow: false,
            underflow: false,
            status: Some(0),
            lun: [0; 8],
            itt: 7,
            ttt: u32::MAX,
            sn: SeqNums {
                stat_sn: 1,
                exp_cmd_sn: 2,
                max_cmd_sn: 33,
            },
            data_sn: 0,
            buffer_offset: 0,
            residual: 0,
            data: Bytes::from(vec![0x3cu8; size]).into(),
        });
        let name = format!("data-in {size}{}", if digests { ", digests" } else { "" });
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| {
            let mut parts = Vec::with_capacity(4);
            b.iter(|| {
                parts.clear();
                let out = reply.encode();
                let head: &[u8; BHS_LEN] = &out.header;
                let data = out.data.bytes().expect("in memory");
                frame_parts(head, data, digests, digests, &mut parts);
                black_box(&parts);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, digests, decoding, encoding);
criterion_main!(benches);
