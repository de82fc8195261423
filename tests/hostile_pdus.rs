//! Hostile PDUs: garbage, oversized segments, undecodable PDUs, Data-Out out of order or with
//! a wrong DataSN or digest. Bad input gets an answer or a closed connection, never a crash,
//! and never disturbs other sessions.

mod common;

use common::{Initiator, Keel, TARGET, honest_session, pattern, still_serves};
use keel::wire::Request;

#[tokio::test]
async fn garbage_on_a_fresh_connection_is_dropped() {
    let keel = Keel::start("16MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    for seed in 0..20u64 {
        let mut bad = Initiator::connect(keel.addr).await;
        let _ = bad.send_raw(&pattern(48 * 3 + seed as usize, seed)).await;
        bad.expect_closed().await;
        still_serves(&mut honest, seed).await;
    }
    assert!(keel.is_running());
    keel.stop().await;
}

#[tokio::test]
async fn an_oversized_data_segment_closes_only_that_connection() {
    let keel = Keel::start("16MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    let mut bad = honest_session(&keel, 2).await;
    // A NOP-Out claiming 16 MB of data, far beyond the negotiated MaxRecvDataSegmentLength.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x40;
    bhs[1] = 0x80;
    bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    bhs[16..20].copy_from_slice(&1u32.to_be_bytes());
    bad.send_raw(&bhs).await.unwrap();
    bad.expect_closed().await;
    still_serves(&mut honest, 3).await;
    keel.stop().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_command_harms_no_one() {
    let keel = Keel::start("16MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    for round in 0..5u8 {
        let mut bad = honest_session(&keel, 10 + round).await;
        // A 1 MiB write that sends its command and then vanishes.
        bad.send_command(
            1,
            &[0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
            1 << 20,
            true,
        )
        .await;
        drop(bad);
        still_serves(&mut honest, round as u64 + 5).await;
    }
    // A fresh session still logs in afterwards.
    let mut late = honest_session(&keel, 99).await;
    still_serves(&mut late, 20).await;
    keel.stop().await;
}

#[tokio::test]
async fn undecodable_pdus_are_rejected_in_session() {
    let keel = Keel::start("16MiB", "").await;
    let mut i = honest_session(&keel, 1).await;
    // An opcode no initiator may send.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1c;
    bhs[1] = 0x80;
    i.send_raw(&bhs).await.unwrap();
    match i.recv().await {
        Some(keel::wire::Reply::Reject(r)) => assert_eq!((r.reason, &r.data[..]), (0x05, &bhs[..])),
        other => panic!("expected a Reject, got {other:?}"),
    }
    still_serves(&mut i, 1).await;
    keel.stop().await;
}

/// A 2-block WRITE(10) that expects all its data through R2T (ImmediateData=No,
/// InitialR2T=Yes), so the test controls every Data-Out.
async fn solicited_write(keel: &Keel, isid: u8) -> (Initiator, keel::wire::R2t) {
    let mut i = Initiator::connect(keel.addr).await;
    i.isid[5] = isid;
    i.login(
        Some(TARGET),
        &[("ImmediateData", "No"), ("InitialR2T", "Yes")],
    )
    .await;
    i.clear_unit_attention().await;
    i.send_command(
        77,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
        1024,
        true,
    )
    .await;
    match i.recv().await {
        Some(keel::wire::Reply::R2t(r)) => (i, r),
        other => panic!("expected an R2T, got {other:?}"),
    }
}

fn data_out(r2t: &keel::wire::R2t, data_sn: u32, offset: u32, len: usize) -> Request {
    Request::DataOut(keel::wire::DataOut {
        final_bit: offset as usize + len == 1024,
        lun: [0; 8],
        itt: r2t.itt,
        ttt: r2t.ttt,
        exp_stat_sn: 0,
        data_sn,
        buffer_offset: offset,
        data: bytes::Bytes::from(vec![0xab; len]),
    })
}

#[tokio::test]
async fn a_wrong_data_sn_fails_the_command_and_keeps_the_session() {
    let keel = Keel::start("16MiB", "").await;
    let (mut i, r2t) = solicited_write(&keel, 2).await;
    i.send(&data_out(&r2t, 0, 0, 512)).await;
    i.send(&data_out(&r2t, 5, 512, 512)).await;
    let mut rejected = false;
    loop {
        match i.recv().await {
            Some(keel::wire::Reply::Reject(r)) => rejected = r.reason == 0x04,
            Some(keel::wire::Reply::ScsiResponse(r)) => {
                assert_eq!((r.status, r.sense[2] & 0x0f, r.sense[12]), (2, 0x0b, 0x4b));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rejected);
    // Nothing was written, and the session goes on.
    assert!(i.read10(0, 2).await.data.iter().all(|&b| b == 0));
    still_serves(&mut i, 4).await;
    keel.stop().await;
}

#[tokio::test]
async fn data_out_of_order_ends_only_that_connection() {
    let keel = Keel::start("16MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    let (mut bad, r2t) = solicited_write(&keel, 2).await;
    bad.send(&data_out(&r2t, 0, 512, 512)).await;
    bad.expect_closed().await;
    still_serves(&mut honest, 5).await;
    keel.stop().await;
}

#[tokio::test]
async fn a_data_digest_error_fails_the_task_with_crc_sense() {
    let keel = Keel::start("16MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(
        Some(TARGET),
        &[
            ("DataDigest", "CRC32C"),
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
        ],
    )
    .await;
    i.clear_unit_attention().await;
    i.send_command(
        5,
        &[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        512,
        true,
    )
    .await;
    let Some(keel::wire::Reply::R2t(r2t)) = i.recv().await else {
        panic!("expected an R2T")
    };
    // Frame the Data-Out by hand and spoil its data digest.
    let (head, data) = match data_out(&r2t, 0, 0, 512) {
        Request::DataOut(mut d) => {
            d.final_bit = true;
            Request::DataOut(d).encode()
        }
        _ => unreachable!(),
    };
    let mut parts = Vec::new();
    keel::wire::framing::frame_parts(&head, &data, false, true, &mut parts);
    let mut wire: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    let last = wire.len() - 1;
    wire[last] ^= 0xff;
    i.send_raw(&wire).await.unwrap();
    let mut saw_reject = false;
    loop {
        match i.recv().await {
            Some(keel::wire::Reply::Reject(r)) => {
                assert_eq!(r.reason, 0x02);
                saw_reject = true;
            }
            Some(keel::wire::Reply::ScsiResponse(r)) => {
                assert_eq!(r.status, 2);
                assert_eq!(
                    (r.sense[2] & 0x0f, r.sense[12], r.sense[13]),
                    (0x0b, 0x47, 0x05)
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_reject);
    // Nothing was written: the block still reads as zeros.
    let r = i.read10(9, 1).await;
    assert!(r.data.iter().all(|&b| b == 0));
    keel.stop().await;
}
