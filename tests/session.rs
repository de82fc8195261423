//! Login, negotiation, discovery, task management, pings, reinstatement and logout, driven
//! over real sockets by the test initiator.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{INITIATOR, Initiator, Keel, TARGET};
use keel::wire::{RESERVED_TAG, Reply, Request, TaskMgmtRequest};

fn value<'a>(keys: &'a [(String, String)], key: &str) -> Option<&'a str> {
    keys.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn discovery_reports_targets_at_the_address_the_initiator_used() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(None, &[("HeaderDigest", "None"), ("DataDigest", "None")])
        .await;
    let keys = i.text(&[("SendTargets", "All")]).await;
    assert_eq!(value(&keys, "TargetName"), Some(TARGET));
    assert_eq!(
        value(&keys, "TargetAddress"),
        Some(format!("{},1", keel.addr).as_str())
    );
    assert_eq!(i.logout().await, 0);
    i.expect_closed().await;
    keel.stop().await;
}

/// An initiator may send its first command right behind its last login PDU: bytes read
/// with the login are carried into the full feature phase's own read buffer.
#[tokio::test]
async fn a_command_sent_in_the_same_write_as_the_last_login_pdu_is_answered() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    // TEST UNIT READY: answered with a status (here the power-on unit attention).
    let (itt, reply) = i.login_with_command_behind(TARGET, &[0u8; 6]).await;
    match reply {
        Reply::ScsiResponse(r) => assert_eq!(r.itt, itt),
        other => panic!("expected the command's response, got {other:?}"),
    }
    keel.stop().await;
}

#[tokio::test]
async fn negotiation_answers_every_key() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    let keys = i
        .login(
            Some(TARGET),
            &[
                ("HeaderDigest", "CRC32C,None"),
                ("DataDigest", "CRC32C,None"),
                ("MaxRecvDataSegmentLength", "65536"),
                ("MaxBurstLength", "524288"),
                ("FirstBurstLength", "65536"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("MaxOutstandingR2T", "1"),
                ("ErrorRecoveryLevel", "0"),
                ("MaxConnections", "4"),
                ("X-org.example.Private", "1"),
                ("IFMarker", "No"),
            ],
        )
        .await;
    assert_eq!(value(&keys, "HeaderDigest"), Some("CRC32C"));
    assert_eq!(value(&keys, "DataDigest"), Some("CRC32C"));
    assert_eq!(value(&keys, "MaxBurstLength"), Some("524288"));
    assert_eq!(value(&keys, "InitialR2T"), Some("Yes"));
    assert_eq!(value(&keys, "MaxConnections"), Some("1"));
    assert_eq!(value(&keys, "X-org.example.Private"), Some("NotUnderstood"));
    assert!(
        value(&keys, "MaxRecvDataSegmentLength").is_some(),
        "the target declares its receive limit"
    );
    // With both digests on, commands still work.
    i.clear_unit_attention().await;
    let r = i.read10(0, 8).await;
    assert_eq!((r.status, r.data.len()), (0, 4096));
    keel.stop().await;
}

#[tokio::test]
async fn login_failures_carry_the_rfc_status() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    let r = i
        .login_step(
            0,
            1,
            true,
            &[
                ("InitiatorName", INITIATOR),
                ("TargetName", "iqn.2026-11.org.example:nope"),
            ],
        )
        .await;
    assert_eq!((r.status_class, r.status_detail), (2, 3));
    i.expect_closed().await;

    let mut i = Initiator::connect(keel.addr).await;
    let r = i.login_step(0, 1, true, &[("TargetName", TARGET)]).await;
    assert_eq!((r.status_class, r.status_detail), (2, 7));

    // A TSIH that names no session.
    let mut i = Initiator::connect(keel.addr).await;
    i.tsih = 0x4242;
    let r = i
        .login_step(
            0,
            1,
            true,
            &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
        )
        .await;
    assert_eq!((r.status_class, r.status_detail), (2, 0x0a));
    keel.stop().await;
}

#[tokio::test]
async fn a_new_login_with_the_same_isid_replaces_the_old_session() {
    let keel = Keel::start("1MiB", "").await;
    let mut old = Initiator::connect(keel.addr).await;
    old.login(Some(TARGET), &[]).await;
    old.clear_unit_attention().await;
    let mut new = Initiator::connect(keel.addr).await;
    new.login(Some(TARGET), &[]).await;
    assert_ne!(new.tsih, old.tsih);
    old.expect_closed().await;
    // Ending the old session was an I_T nexus loss (SAM-5 §6.3.4): the nexus hears of it
    // through a unit attention (29h), then works.
    let ua = new.scsi(0, &[0u8; 6], 0, None).await;
    assert_eq!(
        (ua.status, ua.sense_triple().0, ua.sense_triple().1),
        (2, 6, 0x29)
    );
    assert_eq!(new.scsi(0, &[0u8; 6], 0, None).await.status, 0);
    keel.stop().await;
}

#[tokio::test]
async fn nop_out_is_echoed_and_idle_connections_are_pinged() {
    let keel = Keel::start("1MiB", "nop_interval_secs = 1\nnop_timeout_secs = 1").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    let itt = i.next_itt();
    let ping = Request::NopOut(keel::wire::NopOut {
        immediate: true,
        lun: [0; 8],
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        data: Bytes::from_static(b"are you there"),
    });
    i.send(&ping).await;
    match i.recv().await {
        Some(Reply::NopIn(n)) => assert_eq!((n.itt, &n.data[..]), (itt, &b"are you there"[..])),
        other => panic!("{other:?}"),
    }
    // Idle: keel pings us; answering keeps the session.
    match i.recv().await {
        Some(Reply::NopIn(n)) => {
            assert_eq!(n.itt, RESERVED_TAG);
            assert_ne!(n.ttt, RESERVED_TAG);
            i.answer_ping(n.ttt).await;
        }
        other => panic!("expected a ping, got {other:?}"),
    }
    i.clear_unit_attention().await;
    // Not answering gets the connection dropped.
    let started = std::time::Instant::now();
    loop {
        match i.recv().await {
            Some(Reply::NopIn(_)) => continue,
            None => break,
            Some(other) => panic!("{other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    keel.stop().await;
}

async fn tmf(i: &mut Initiator, function: u8, referenced_tag: u32) -> u8 {
    let itt = i.next_itt();
    let req = Request::TaskMgmt(TaskMgmtRequest {
        immediate: true,
        function,
        lun: [0; 8],
        itt,
        referenced_tag,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        ref_cmd_sn: i.cmd_sn,
        exp_data_sn: 0,
    });
    i.send(&req).await;
    match i.recv().await {
        Some(Reply::TaskMgmt(r)) => {
            assert_eq!(r.itt, itt);
            r.response
        }
        other => panic!("expected a TMF response, got {other:?}"),
    }
}

#[tokio::test]
async fn task_management_functions_answer_and_reset_raises_a_unit_attention() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    // ABORT TASK of a task that never existed (its CmdSN not yet seen): "task does not exist".
    assert_eq!(tmf(&mut i, 1, 0x7777).await, 1);
    assert_eq!(tmf(&mut i, 2, RESERVED_TAG).await, 0);
    assert_eq!(tmf(&mut i, 4, RESERVED_TAG).await, 0);
    assert_eq!(tmf(&mut i, 5, RESERVED_TAG).await, 0);
    let r = i.scsi(0, &[0u8; 6], 0, None).await;
    assert_eq!(
        (r.status, r.sense_triple().0, r.sense_triple().1),
        (2, 6, 0x29),
        "unit attention after LUN reset"
    );
    assert_eq!(tmf(&mut i, 6, RESERVED_TAG).await, 0);
    assert_eq!(
        tmf(&mut i, 8, RESERVED_TAG).await,
        4,
        "task reassign needs ERL 2"
    );
    i.clear_unit_attention().await;
    let w = i.write10(10, &common::pattern(4096, 1)).await;
    assert_eq!(w.status, 0);
    // TARGET COLD RESET ends the session after answering.
    assert_eq!(tmf(&mut i, 7, RESERVED_TAG).await, 0);
    i.expect_closed().await;
    keel.stop().await;
}

#[tokio::test]
async fn shutdown_with_a_session_open_is_clean() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    assert_eq!(i.write10(0, &common::pattern(8192, 2)).await.status, 0);
    keel.stop().await;
    i.expect_closed().await;
}

#[tokio::test]
async fn aborting_a_command_that_never_arrived_unblocks_the_ones_behind_it() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    // CmdSN n is "lost"; n+1 (a TEST UNIT READY) arrives and must wait for it.
    let lost = i.cmd_sn;
    i.cmd_sn += 1;
    let itt = i.next_itt();
    i.send_command(itt, &[0u8; 6], 0, false).await;
    // ABORT TASK for the lost one (§11.5.1: RefCmdSN in the window, below the TMF's CmdSN).
    let tmf_itt = i.next_itt();
    let abort = Request::TaskMgmt(TaskMgmtRequest {
        immediate: true,
        function: 1,
        lun: [0; 8],
        itt: tmf_itt,
        referenced_tag: 0x5555,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
        ref_cmd_sn: lost,
        exp_data_sn: 0,
    });
    i.send(&abort).await;
    let mut got_tmf = false;
    let mut got_tur = false;
    while !(got_tmf && got_tur) {
        match i.recv().await {
            Some(Reply::TaskMgmt(r)) => {
                assert_eq!((r.itt, r.response), (tmf_itt, 0));
                got_tmf = true;
            }
            Some(Reply::ScsiResponse(r)) => {
                assert_eq!((r.itt, r.status), (itt, 0));
                got_tur = true;
            }
            other => panic!("{other:?}"),
        }
    }
    keel.stop().await;
}

/// A LOGICAL UNIT RESET from one session aborts another session's task too: a write still
/// receiving its data is stopped for good (the reset need not wait for it), ends with TASK
/// ABORTED once its data is in (TAS = 1), and its data never reaches the medium.
#[tokio::test]
async fn a_reset_aborts_other_sessions_tasks_and_their_data_never_lands() {
    const LOGICAL_UNIT_RESET: u8 = 5;
    let keel = Keel::start("16MiB", "").await;
    let mut a = common::honest_session(&keel, 1).await;
    let mut b = common::honest_session(&keel, 2).await;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&100u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&128u16.to_be_bytes());
    let itt = b.next_itt();
    b.send_command(itt, &cdb, 65536, true).await;
    let r2t = match b.recv().await {
        Some(Reply::R2t(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    let reset = tokio::time::timeout(Duration::from_secs(5), tmf(&mut a, LOGICAL_UNIT_RESET, 0));
    assert_eq!(
        reset
            .await
            .expect("the reset waited for a write that never started"),
        0
    );
    let data = Bytes::from(common::pattern(65536, 5));
    let (offset, len) = (r2t.buffer_offset as usize, r2t.desired_length as usize);
    b.send_data(&data, [0; 8], itt, r2t.ttt, offset, len).await;
    match b.recv().await {
        Some(Reply::ScsiResponse(r)) => assert_eq!((r.itt, r.status), (itt, 0x40)),
        other => panic!("expected TASK ABORTED, got {other:?}"),
    }
    b.clear_unit_attention().await;
    let r = b.read10(100, 128).await;
    assert_eq!(r.status, 0);
    assert!(r.data.iter().all(|&x| x == 0), "the aborted write landed");
    keel.stop().await;
}
