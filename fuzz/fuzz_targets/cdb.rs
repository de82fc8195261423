//! The CDB dispatcher (src/scsi/target.rs and every handler behind it) with memory-backed
//! logical units: a sequence of arbitrary commands from several I_T nexuses, with data-out,
//! so reservation, mode-select, unit-attention and copy state carries from one to the next.
//!
//! Input: records until the input ends (at most 16):
//!   byte 0: bits 0-1 nexus (three initiators; 3 is the first one again), bits 2-3 LUN
//!           (0: 512-byte blocks, 1: 4096-byte blocks, 2: read-only, 3: no such LUN),
//!           bits 4-6 task attribute, bit 7: a task management event instead of a command;
//!   byte 1: CDB length - 6 (6..=260 bytes, the transport's range), or the event;
//!   bytes 2-3: data-out length (big endian), bytes 4-6: expected read length;
//!   then the CDB and the data-out bytes (cut short at the end of the input).
//!
//! Invariants: sense data is present exactly when the status is CHECK CONDITION and is
//! well-formed fixed or descriptor sense; only GOOD (or CONDITION MET) carries data; data
//! never exceeds the CDB's allocation length; a successful READ returns exactly the blocks
//! it asked for; a write that succeeded reads back (data-out of a WRITE(10) on LUN 0 is
//! checked against a READ(10) from the same nexus when no reservation stands in the way).
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use keel::scsi::{
    LogicalUnit, LuIdentity, Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TargetDevice, TaskAttr,
};
use keel::storage::MemoryBackend;
use libfuzzer_sys::fuzz_target;

const TARGET: &str = "iqn.2026-11.org.example:disk0";
const MAX_COMMANDS: usize = 16;
const NO_SUCH_LUN: u64 = 7;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

fn nexus(n: u8) -> Arc<Nexus> {
    let (initiator, isid) = match n % 3 {
        0 => ("iqn.1993-08.org.debian:01:aaa", "0x23d000000001"),
        1 => ("iqn.1993-08.org.debian:01:bbb", "0x23d000000002"),
        _ => ("iqn.2004-10.com.ubuntu:01:ccc", "0x400001370000"),
    };
    Arc::new(Nexus {
        initiator_port: Arc::from(format!("{initiator},i,{isid}")),
        target_port: Arc::from(format!("{TARGET},t,0x0001")),
        relative_port: 1,
    })
}

fn lu(lun: u64, block: u32, blocks: u64, read_only: bool) -> Arc<LogicalUnit> {
    let backend = Arc::new(MemoryBackend::new(blocks * u64::from(block)));
    Arc::new(LogicalUnit::new(
        LuIdentity::derived(TARGET, lun),
        block,
        Some(backend),
        read_only,
    ))
}

fn block_size(lun: u64) -> Option<u32> {
    match lun {
        0 | 2 => Some(512),
        1 => Some(4096),
        _ => None,
    }
}

fn attr(bits: u8) -> TaskAttr {
    match bits % 5 {
        0 => TaskAttr::Simple,
        1 => TaskAttr::Ordered,
        2 => TaskAttr::HeadOfQueue,
        3 => TaskAttr::Aca,
        _ => TaskAttr::Untagged,
    }
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// The allocation length of commands that have one, where the CDB is long enough to hold it.
fn allocation_length(cdb: &[u8]) -> Option<u64> {
    let field = |from: usize, to: usize| cdb.get(from..to).map(be);
    match cdb[0] {
        0x03 | 0x1a => field(4, 5),
        0x12 => field(3, 5),
        0x5a | 0x4d | 0x5e | 0x37 => field(7, 9),
        0xa0 | 0xa3 | 0xb7 => field(6, 10),
        0x84 | 0x9e => field(10, 14),
        _ => None,
    }
}

/// Blocks a READ asks for, for the READ opcodes.
fn read_blocks(cdb: &[u8]) -> Option<u64> {
    match cdb[0] {
        0x08 => cdb.get(4).map(|&n| if n == 0 { 256 } else { u64::from(n) }),
        0x28 => cdb.get(7..9).map(be),
        0xa8 => cdb.get(6..10).map(be),
        0x88 => cdb.get(10..14).map(be),
        _ => None,
    }
}

fn check_sense(sense: &[u8]) {
    assert!(sense.len() >= 8 && sense.len() <= 252, "sense {sense:02x?}");
    match sense[0] & 0x7f {
        0x70 | 0x71 => assert_eq!(usize::from(sense[7]) + 8, sense.len(), "{sense:02x?}"),
        0x72 | 0x73 => assert_eq!(usize::from(sense[7]) + 8, sense.len(), "{sense:02x?}"),
        other => panic!("sense response code {other:#x}"),
    }
}

fn check(req: &ScsiRequest, r: &ScsiResponse) {
    assert_eq!(
        r.sense.is_some(),
        r.status == ScsiStatus::CheckCondition,
        "{:02x?} -> {r:?}",
        &req.cdb[..]
    );
    if let Some(sense) = &r.sense {
        check_sense(sense);
    }
    if !matches!(r.status, ScsiStatus::Good | ScsiStatus::ConditionMet) {
        assert!(r.data_in.is_empty(), "{:02x?} -> {r:?}", &req.cdb[..]);
        return;
    }
    if let Some(alloc) = allocation_length(&req.cdb) {
        assert!(
            r.data_in.len() as u64 <= alloc,
            "{:02x?}: {} bytes for an allocation length of {alloc}",
            &req.cdb[..],
            r.data_in.len()
        );
    }
    if let (Some(blocks), Some(bs)) = (read_blocks(&req.cdb), block_size(req.lun)) {
        assert_eq!(
            r.data_in.len() as u64,
            blocks * u64::from(bs),
            "{:02x?}",
            &req.cdb[..]
        );
    }
}

/// After a successful WRITE(10) on LUN 0, a READ(10) of the same blocks returns its data.
async fn check_write10(target: &TargetDevice, req: &ScsiRequest, r: &ScsiResponse) {
    let cdb = &req.cdb;
    if req.lun != 0 || cdb[0] != 0x2a || cdb.len() < 10 || r.status != ScsiStatus::Good {
        return;
    }
    let blocks = be(&cdb[7..9]) as usize;
    let len = blocks * 512;
    if len == 0 || req.data_out.len() < len {
        return;
    }
    let mut read = [0u8; 10];
    read[0] = 0x28;
    read[2..9].copy_from_slice(&cdb[2..9]);
    let back = target
        .execute(ScsiRequest {
            cdb: Bytes::copy_from_slice(&read),
            data_out: Bytes::new(),
            expected_in: len as u32,
            ..req.clone()
        })
        .await;
    if back.status == ScsiStatus::Good {
        assert_eq!(&back.data_in[..], &req.data_out[..len], "{cdb:02x?}");
    }
}

async fn run(input: &[u8]) {
    let target = TargetDevice::new(TARGET);
    target.add_lun(lu(0, 512, 2048, false));
    target.add_lun(lu(1, 4096, 256, false));
    target.add_lun(lu(2, 512, 64, true));

    let mut rest = input;
    for _ in 0..MAX_COMMANDS {
        if rest.len() < 7 {
            return;
        }
        let (head, tail) = rest.split_at(7);
        let who = nexus(head[0] & 3);
        let lun = match (head[0] >> 2) & 3 {
            3 => NO_SUCH_LUN,
            n => u64::from(n),
        };
        if head[0] & 0x80 != 0 {
            match head[1] % 3 {
                0 => {
                    target.reset_lun(lun, &who);
                }
                1 => target.reset_all(&who),
                _ => target.nexus_lost(&who),
            }
            rest = tail;
            continue;
        }
        let cdb_len = (usize::from(head[1]) + 6).min(260).min(tail.len());
        if cdb_len < 6 {
            return;
        }
        let (cdb, tail) = tail.split_at(cdb_len);
        let out_len = (be(&head[2..4]) as usize).min(tail.len());
        let (data_out, tail) = tail.split_at(out_len);
        rest = tail;
        let req = ScsiRequest {
            nexus: who,
            lun,
            cdb: Bytes::copy_from_slice(cdb),
            data_out: Bytes::copy_from_slice(data_out),
            expected_in: be(&head[4..7]) as u32,
            attr: attr(head[0] >> 4),
        };
        let r = target.execute(req.clone()).await;
        check(&req, &r);
        check_write10(&target, &req, &r).await;
    }
}

fuzz_target!(|input: &[u8]| {
    runtime().block_on(run(input));
});
