//! SANITIZE (SBC-4 §5.30) over real sessions: what OVERWRITE and BLOCK ERASE leave on the
//! medium, what every initiator gets while an operation runs (02/04/1B with the progress
//! indication), that an abort or a reset ends the command but not the operation, and that a
//! reservation holds SANITIZE off like a write.

mod common;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Initiator, Keel};
use keel::wire::{Reply, Request, ScsiCommand, TaskMgmtRequest};

const SANITIZE: u8 = 0x48;
const OVERWRITE: u8 = 0x01;
const BLOCK_ERASE: u8 = 0x02;
const CRYPTOGRAPHIC_ERASE: u8 = 0x03;
const IMMED: u8 = 0x80;
const TUR: [u8; 6] = [0; 6];
const SANITIZE_IN_PROGRESS: (u8, u8, u8) = (0x02, 0x04, 0x1B);
const BLOCK: usize = 512;

fn sanitize_cdb(flags_and_action: u8, list_len: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = SANITIZE;
    cdb[1] = flags_and_action;
    cdb[7..9].copy_from_slice(&list_len.to_be_bytes());
    cdb
}

/// An OVERWRITE parameter list: one pass of `pattern`.
fn one_pass_of(pattern: &[u8]) -> Vec<u8> {
    let mut list = vec![0x01, 0x00];
    list.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    list.extend_from_slice(pattern);
    list
}

async fn overwrite(i: &mut Initiator, flags: u8, pattern: &[u8]) -> common::ScsiResult {
    let list = one_pass_of(pattern);
    let cdb = sanitize_cdb(flags | OVERWRITE, list.len() as u16);
    i.scsi(0, &cdb, 0, Some(&list)).await
}

/// A unit of `size` whose overwrites run at `rate` (a size per second), so a test sees them
/// run.
async fn paced_keel(size: &str, rate: &str) -> Keel {
    let lun_extra = format!("sanitize_rate = \"{rate}\"");
    Keel::start_in(tempfile::tempdir().unwrap(), size, &lun_extra).await
}

/// TEST UNIT READY until the unit is ready again, within `limit`.
async fn wait_until_ready(i: &mut Initiator, limit: Duration) {
    let start = Instant::now();
    loop {
        let r = i.scsi(0, &TUR, 0, None).await;
        if r.status == 0 {
            return;
        }
        assert_eq!(r.sense_triple(), SANITIZE_IN_PROGRESS, "{r:?}");
        assert!(start.elapsed() < limit, "the sanitize did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PROGRESS INDICATION of fixed-format sense data (SPC-4 §4.5.2.4.4), with SKSV set.
fn progress(sense: &[u8]) -> u16 {
    assert_eq!(sense[15] & 0x80, 0x80, "SKSV: {sense:?}");
    u16::from_be_bytes([sense[16], sense[17]])
}

#[tokio::test]
async fn overwrite_writes_the_pattern_and_block_erase_leaves_zeros_and_holes() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = common::honest_session(&keel, 1).await;
    let last_lba = (1 << 20) / BLOCK as u32 - 8;
    for lba in [0, last_lba] {
        assert_eq!(i.write10(lba, &[b'a'; 8 * BLOCK]).await.status, 0);
    }

    let r = overwrite(&mut i, 0, &[0x12, 0x34, 0x56]).await;
    assert_eq!(r.status, 0, "{r:?}");
    let block: Vec<u8> = [0x12, 0x34, 0x56]
        .iter()
        .copied()
        .cycle()
        .take(BLOCK)
        .collect();
    for lba in [0, last_lba] {
        let read = i.read10(lba, 8).await;
        assert_eq!(read.status, 0);
        for b in read.data.chunks(BLOCK) {
            assert_eq!(b, &block[..], "every block starts with the pattern");
        }
    }

    let r = i.scsi(0, &sanitize_cdb(BLOCK_ERASE, 0), 0, None).await;
    assert_eq!(r.status, 0, "{r:?}");
    for lba in [0, last_lba] {
        let read = i.read10(lba, 8).await;
        assert!(read.status == 0 && read.data.iter().all(|&b| b == 0));
    }
    // GET LBA STATUS: one descriptor, deallocated, over the whole unit.
    let mut get_lba_status = [0u8; 16];
    get_lba_status[0] = 0x9E;
    get_lba_status[1] = 0x12;
    get_lba_status[13] = 64;
    let status = i.scsi(0, &get_lba_status, 64, None).await;
    assert_eq!(status.status, 0);
    let d = &status.data[8..24];
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), 0);
    assert_eq!(
        u32::from_be_bytes(d[8..12].try_into().unwrap()),
        (1 << 20) / BLOCK as u32
    );
    assert_eq!(d[12] & 0x0F, 1, "deallocated");
    keel.stop().await;
}

#[tokio::test]
async fn reports_and_refusals_say_what_is_offered() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = common::honest_session(&keel, 1).await;
    // REPORT SUPPORTED OPERATION CODES, one command by opcode and service action.
    let rsoc = |sa: u8| [0xA3, 0x0C, 0x02, SANITIZE, 0x00, sa, 0, 0, 1, 0, 0, 0];
    for (sa, usage) in [(OVERWRITE, 0xA1), (BLOCK_ERASE, 0xA2), (0x1F, 0xBF)] {
        let r = i.scsi(0, &rsoc(sa), 256, None).await;
        assert_eq!(r.status, 0);
        assert_eq!(r.data[1] & 0x07, 0x03, "service action {sa:#x} supported");
        assert_eq!(&r.data[2..6], &[0, 10, SANITIZE, usage]);
        assert_eq!(&r.data[11..13], &[0xFF, 0xFF], "PARAMETER LIST LENGTH");
    }
    let r = i.scsi(0, &rsoc(CRYPTOGRAPHIC_ERASE), 256, None).await;
    assert_eq!(r.data[1] & 0x07, 0x01, "CRYPTOGRAPHIC ERASE is not offered");
    let r = i
        .scsi(0, &sanitize_cdb(CRYPTOGRAPHIC_ERASE, 0), 0, None)
        .await;
    assert_eq!(r.sense_triple(), (0x05, 0x24, 0x00));
    assert_eq!(
        &r.sense[15..18],
        &[0xCC, 0x00, 0x01],
        "points at the SERVICE ACTION"
    );
    // Block device characteristics: WABEREQ 01b, WACEREQ 00b.
    let r = i
        .scsi(0, &[0x12, 0x01, 0xB1, 0x00, 0xFF, 0x00], 255, None)
        .await;
    assert_eq!((r.data[1], r.data[7] & 0xF0), (0xB1, 0x40));
    // Parameter list rules.
    let short = i
        .scsi(0, &sanitize_cdb(OVERWRITE, 4), 0, Some(&[1, 0, 0, 0]))
        .await;
    assert_eq!(short.sense_triple(), (0x05, 0x24, 0x00));
    let list = vec![0u8; 8];
    let erase_with_list = i
        .scsi(0, &sanitize_cdb(BLOCK_ERASE, 8), 0, Some(&list))
        .await;
    assert_eq!(erase_with_list.sense_triple(), (0x05, 0x24, 0x00));
    keel.stop().await;
}

#[tokio::test]
async fn while_an_immediate_sanitize_runs_every_initiator_sees_it_and_its_progress() {
    // 4 MiB at 2 MiB/s: about two seconds.
    let keel = paced_keel("4MiB", "2MiB").await;
    let mut a = common::honest_session(&keel, 1).await;
    let mut b = common::honest_session(&keel, 2).await;
    let started = Instant::now();
    let r = overwrite(&mut a, IMMED, &[0xC3]).await;
    assert_eq!(r.status, 0, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "IMMED returns at once"
    );

    for cdb in [TUR.to_vec(), vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]] {
        let r = b.scsi(0, &cdb, 512, None).await;
        assert_eq!(r.sense_triple(), SANITIZE_IN_PROGRESS, "{r:?}");
        progress(&r.sense);
    }
    let again = overwrite(&mut b, 0, &[1]).await;
    assert_eq!(
        again.sense_triple(),
        SANITIZE_IN_PROGRESS,
        "one operation at a time"
    );
    assert_eq!(b.scsi(0, &[0x12, 0, 0, 0, 96, 0], 96, None).await.status, 0);
    let luns = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0];
    assert_eq!(b.scsi(0, &luns, 64, None).await.status, 0);

    let request_sense = [0x03, 0, 0, 0, 18, 0];
    let first = b.scsi(0, &request_sense, 18, None).await;
    assert_eq!(first.status, 0);
    assert_eq!(
        (first.data[2], first.data[12], first.data[13]),
        SANITIZE_IN_PROGRESS
    );
    // The progress moves (in 1 MiB steps here: a quarter every half second).
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let later = b.scsi(0, &request_sense, 18, None).await;
        assert_eq!(
            (later.data[2], later.data[12], later.data[13]),
            SANITIZE_IN_PROGRESS,
            "the operation ended before its progress was seen to move"
        );
        if progress(&later.data) > progress(&first.data) {
            break;
        }
    }

    wait_until_ready(&mut b, Duration::from_secs(30)).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "paced");
    let read = b.read10(8000, 8).await;
    assert!(read.status == 0 && read.data.iter().all(|&x| x == 0xC3));
    keel.stop().await;
}

#[tokio::test]
async fn an_abort_or_a_reset_ends_the_command_not_the_operation() {
    const ABORT_TASK: u8 = 1;
    const LOGICAL_UNIT_RESET: u8 = 5;
    let keel = paced_keel("4MiB", "1MiB").await;
    let mut a = common::honest_session(&keel, 1).await;
    let mut b = common::honest_session(&keel, 2).await;
    assert!(a.params.immediate_data, "the list goes as immediate data");

    // SANITIZE without IMMED: no status until the operation ends.
    let list = Bytes::from(one_pass_of(&[0x3C]));
    let mut cdb = BytesMut::from(&sanitize_cdb(OVERWRITE, list.len() as u16)[..]);
    cdb.resize(16, 0);
    let itt = a.next_itt();
    let sanitize_sn = a.cmd_sn;
    a.send(&Request::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: true,
        attr: 1,
        lun: [0; 8],
        itt,
        expected_length: list.len() as u32,
        cmd_sn: sanitize_sn,
        exp_stat_sn: a.exp_stat_sn,
        cdb: cdb.freeze(),
        bidi_read_length: None,
        data: list,
    }))
    .await;
    a.cmd_sn += 1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.scsi(0, &TUR, 0, None).await.sense_triple(),
        SANITIZE_IN_PROGRESS
    );

    let tmf = |i: &mut Initiator, function: u8, referenced_tag: u32, ref_cmd_sn: u32| {
        Request::TaskMgmt(TaskMgmtRequest {
            immediate: true,
            function,
            lun: [0; 8],
            itt: i.next_itt(),
            referenced_tag,
            cmd_sn: i.cmd_sn,
            exp_stat_sn: i.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        })
    };
    let abort = tmf(&mut a, ABORT_TASK, itt, sanitize_sn);
    let asked = Instant::now();
    a.send(&abort).await;
    match tokio::time::timeout(Duration::from_secs(2), a.recv()).await {
        Ok(Some(Reply::TaskMgmt(r))) => assert_eq!(r.response, 0, "FUNCTION COMPLETE"),
        other => panic!("expected the ABORT TASK response at once, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(
        b.scsi(0, &TUR, 0, None).await.sense_triple(),
        SANITIZE_IN_PROGRESS
    );

    let reset = tmf(&mut b, LOGICAL_UNIT_RESET, 0, 0);
    b.send(&reset).await;
    match tokio::time::timeout(Duration::from_secs(2), b.recv()).await {
        Ok(Some(Reply::TaskMgmt(r))) => assert_eq!(r.response, 0),
        other => panic!("expected the LOGICAL UNIT RESET response at once, got {other:?}"),
    }
    // The reset's unit attention first (SAM-5 §5.14), then the sanitize again.
    assert_eq!(b.scsi(0, &TUR, 0, None).await.sense_triple().0, 0x06);
    assert_eq!(
        b.scsi(0, &TUR, 0, None).await.sense_triple(),
        SANITIZE_IN_PROGRESS
    );

    wait_until_ready(&mut b, Duration::from_secs(30)).await;
    let read = b.read10(0, 8).await;
    assert!(read.status == 0 && read.data.iter().all(|&x| x == 0x3C));
    keel.stop().await;
}

/// OVERWRITE and BLOCK ERASE from `i` both get RESERVATION CONFLICT.
async fn both_conflict(i: &mut Initiator) {
    assert_eq!(overwrite(i, 0, &[1]).await.status, 0x18);
    let erase = i.scsi(0, &sanitize_cdb(BLOCK_ERASE, 0), 0, None).await;
    assert_eq!(erase.status, 0x18);
}

#[tokio::test]
async fn a_reservation_holds_sanitize_off_like_a_write() {
    let keel = Keel::start("1MiB", "").await;
    let mut a = common::honest_session(&keel, 1).await;
    let mut b = common::honest_session(&keel, 2).await;
    // SPC-2 RESERVE(6) by b.
    assert_eq!(b.scsi(0, &[0x16, 0, 0, 0, 0, 0], 0, None).await.status, 0);
    both_conflict(&mut a).await;
    assert_eq!(b.scsi(0, &[0x17, 0, 0, 0, 0, 0], 0, None).await.status, 0);

    // Persistent reservation, Write Exclusive, held by b; a is not registered.
    let prout = |sa: u8, pr_type: u8, key: u64, sa_key: u64| {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5F;
        cdb[1] = sa;
        cdb[2] = pr_type;
        cdb[8] = 24;
        let mut list = vec![0u8; 24];
        list[0..8].copy_from_slice(&key.to_be_bytes());
        list[8..16].copy_from_slice(&sa_key.to_be_bytes());
        (cdb, list)
    };
    let (cdb, list) = prout(0x00, 0, 0, 0xB0B);
    assert_eq!(b.scsi(0, &cdb, 0, Some(&list)).await.status, 0);
    let (cdb, list) = prout(0x01, 0x01, 0xB0B, 0);
    assert_eq!(b.scsi(0, &cdb, 0, Some(&list)).await.status, 0);
    both_conflict(&mut a).await;
    // The holder may.
    assert_eq!(
        b.scsi(0, &sanitize_cdb(BLOCK_ERASE, 0), 0, None)
            .await
            .status,
        0
    );
    keel.stop().await;
}
