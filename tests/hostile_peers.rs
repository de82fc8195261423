//! Hostile peers: floods of login keys and connections, slowloris logins, commands outside the
//! window, SNACK at ERL 0, logout with commands in flight. Each case gets an RFC answer or a
//! dropped connection, an honest session keeps doing verified I/O beside it, and keel's
//! descriptors and memory come back afterwards.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{INITIATOR, Initiator, Keel, KeelProcess, honest_session, pattern, still_serves};
use keel::wire::{DataOut, RESERVED_TAG, Reply, Request, SnackRequest, TaskMgmtRequest, text};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn snack_at_error_recovery_level_0_is_rejected() {
    let keel = Keel::start("8MiB", "").await;
    let mut i = honest_session(&keel, 1).await;
    let snack = Request::Snack(SnackRequest {
        snack_type: 0,
        lun: [0; 8],
        itt: 9,
        ttt: RESERVED_TAG,
        exp_stat_sn: i.exp_stat_sn,
        beg_run: 0,
        run_length: 0,
    });
    i.send(&snack).await;
    match i.recv().await {
        Some(Reply::Reject(r)) => assert_eq!(r.reason, 0x03),
        other => panic!("expected a SNACK reject, got {other:?}"),
    }
    still_serves(&mut i, 1).await;
    keel.stop().await;
}

#[tokio::test]
async fn login_key_floods_and_overlong_values_are_refused() {
    let keel = Keel::start("8MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    // 70 KiB of keys, sent as continued login PDUs of 8 KiB each.
    let mut flood = Initiator::connect(keel.addr).await;
    let keys: Vec<(String, String)> = (0..7000)
        .map(|k| (format!("X-k{k}"), "v".repeat(4)))
        .collect();
    let all = text::encode(&keys);
    let mut refused = false;
    for (n, chunk) in all.chunks(8192).enumerate() {
        let last = (n + 1) * 8192 >= all.len();
        let req = security_login(flood.isid, !last, Bytes::copy_from_slice(chunk));
        flood.send(&req).await;
        match flood.recv().await {
            Some(Reply::Login(r)) if r.status_class != 0 => {
                refused = true;
                break;
            }
            Some(Reply::Login(_)) => continue,
            None => {
                refused = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(refused, "70 KiB of login keys must be refused");
    // A value far beyond any key's limit, inside one 8 KiB login segment: refused.
    let mut long = Initiator::connect(keel.addr).await;
    let huge = "a".repeat(8000);
    let r = long
        .login_step(
            0,
            1,
            true,
            &[("InitiatorName", INITIATOR), ("TargetName", &huge)],
        )
        .await;
    assert_ne!(r.status_class, 0);
    // A login PDU beyond the 8 KiB segment login allows: the connection is dropped.
    let mut oversized = Initiator::connect(keel.addr).await;
    let req = Request::Login(keel::wire::LoginRequest {
        transit: true,
        continue_bit: false,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid: oversized.isid,
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data: text::encode(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", &"b".repeat(9000)),
        ]),
    });
    oversized.send(&req).await;
    oversized.expect_closed().await;
    still_serves(&mut honest, 2).await;
    keel.stop().await;
}

#[tokio::test]
async fn commands_outside_the_window_and_bogus_tags_are_harmless() {
    let keel = Keel::start("8MiB", "").await;
    let mut i = honest_session(&keel, 1).await;
    // A command far beyond MaxCmdSN is silently ignored (RFC 7143 §4.2.2.1)...
    let real = i.cmd_sn;
    i.cmd_sn = real.wrapping_add(100_000);
    i.send_command(500, &[0u8; 6], 0, false).await;
    // ...and so is one from the past.
    i.cmd_sn = real.wrapping_sub(5);
    i.send_command(501, &[0u8; 6], 0, false).await;
    i.cmd_sn = real;
    // Data-Out for a task that does not exist is ignored.
    let stray = Request::DataOut(DataOut {
        final_bit: true,
        lun: [0; 8],
        itt: 0xdead,
        ttt: 7,
        exp_stat_sn: i.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
        data: Bytes::from(vec![1u8; 512]),
    });
    i.send(&stray).await;
    // TMF on a bogus task: "task does not exist"; on a bogus LUN: "LUN does not exist".
    for (function, lun, expect) in [(1u8, [0u8; 8], 1u8), (2, [0, 9, 0, 0, 0, 0, 0, 0], 2)] {
        let itt = i.next_itt();
        let tmf = Request::TaskMgmt(TaskMgmtRequest {
            immediate: true,
            function,
            lun,
            itt,
            referenced_tag: 0xbeef,
            cmd_sn: i.cmd_sn,
            exp_stat_sn: i.exp_stat_sn,
            ref_cmd_sn: i.cmd_sn.wrapping_sub(1000),
            exp_data_sn: 0,
        });
        i.send(&tmf).await;
        match i.recv().await {
            Some(Reply::TaskMgmt(r)) => assert_eq!((r.itt, r.response), (itt, expect)),
            other => panic!("{other:?}"),
        }
    }
    // Nothing of the above got an answer or disturbed the session.
    still_serves(&mut i, 3).await;
    keel.stop().await;
}

#[tokio::test]
async fn logout_while_commands_are_in_flight_completes_them_first() {
    let keel = Keel::start("8MiB", "").await;
    let mut i = honest_session(&keel, 1).await;
    // Queue writes without waiting for them, then log out at once.
    for k in 0..8u32 {
        let mut cdb = vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        cdb[2..6].copy_from_slice(&(k * 8).to_be_bytes());
        let itt = i.next_itt();
        // All data as immediate data (4 KiB fits the default FirstBurstLength).
        let cmd = Request::ScsiCommand(keel::wire::ScsiCommand {
            immediate: false,
            final_bit: true,
            read: false,
            write: true,
            attr: 1,
            lun: [0; 8],
            itt,
            expected_length: 4096,
            cmd_sn: i.cmd_sn,
            exp_stat_sn: i.exp_stat_sn,
            cdb: {
                let mut c = cdb.clone();
                c.resize(16, 0);
                Bytes::from(c)
            },
            bidi_read_length: None,
            data: Bytes::from(pattern(4096, k as u64)),
        });
        i.cmd_sn += 1;
        i.send(&cmd).await;
    }
    let logout = Request::Logout(keel::wire::LogoutRequest {
        immediate: true,
        reason: 0,
        itt: 999,
        cid: 0,
        cmd_sn: i.cmd_sn,
        exp_stat_sn: i.exp_stat_sn,
    });
    i.send(&logout).await;
    let mut statuses = 0;
    loop {
        match i.recv().await {
            Some(Reply::ScsiResponse(r)) => {
                assert_eq!(r.status, 0);
                statuses += 1;
            }
            Some(Reply::Logout(r)) => {
                assert_eq!(r.response, 0);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        statuses, 8,
        "every write answered before the logout response"
    );
    i.expect_closed().await;
    // The writes landed.
    let mut check = honest_session(&keel, 2).await;
    for k in 0..8u32 {
        assert_eq!(check.read10(k * 8, 8).await.data, pattern(4096, k as u64));
    }
    keel.stop().await;
}

#[tokio::test]
async fn a_thousand_connect_close_cycles_leave_no_descriptors_behind() {
    let keel = Keel::start("8MiB", "").await;
    let mut honest = honest_session(&keel, 1).await;
    let before = open_fds();
    for n in 0..1000u32 {
        let s = tokio::net::TcpStream::connect(keel.addr).await.unwrap();
        if n % 3 == 0 {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut { s }, &[0x43, 0x87, 0, 0]).await;
        } else {
            drop(s);
        }
    }
    still_serves(&mut honest, 4).await;
    // Let keel notice the closes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds() > before + 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        open_fds() <= before + 4,
        "descriptors before {before}, after {}",
        open_fds()
    );
    keel.stop().await;
}

#[tokio::test]
async fn a_slowloris_login_is_dropped_at_the_login_timeout() {
    let keel = Keel::start("8MiB", "login_timeout_secs = 1").await;
    let mut honest = honest_session(&keel, 1).await;
    let mut slow = Initiator::connect(keel.addr).await;
    let started = Instant::now();
    // Half a header, a byte at a time, slower than the timeout allows.
    for b in [0x43u8, 0x87, 0, 0, 0, 0] {
        if slow.send_raw(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    slow.expect_closed().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "dropped after {took:?}");
    still_serves(&mut honest, 5).await;
    keel.stop().await;
}

/// One round of hostile connections against `addr`: garbage, a header claiming 16 MB of
/// data, a login text flood, connections that go silent mid-login, and sessions that vanish
/// with a write outstanding. Everything is dropped by the end of the round except the
/// connections that never sent a byte, which are handed back (keel must close them at its
/// login timeout); also returns keel's descriptor count (`pid`) while it was all open.
async fn hostile_round(
    addr: std::net::SocketAddr,
    pid: u32,
    round: u32,
) -> (Vec<tokio::net::TcpStream>, usize) {
    let mut held = Vec::new();
    let mut silent = Vec::new();
    for n in 0..60u32 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let seed = u64::from(round * 100 + n);
        let bytes = match n % 4 {
            0 => pattern(48 * 3 + n as usize, seed),
            1 => {
                let mut bhs = vec![0u8; 48];
                bhs[0] = 0x43;
                bhs[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
                bhs
            }
            2 => vec![0x43, 0x87, 0, 0, 0, 0],
            _ => Vec::new(),
        };
        if bytes.is_empty() {
            silent.push(s);
            continue;
        }
        let _ = tokio::io::AsyncWriteExt::write_all(&mut s, &bytes).await;
        held.push(s);
    }
    // A login flood: continued login PDUs until keel refuses the text (it caps it at 64 KiB).
    let mut flood = Initiator::connect(addr).await;
    let chunk = text::encode(&[("X-flood", "v".repeat(8000))]);
    for _ in 0..12 {
        let req = security_login(flood.isid, true, chunk.clone());
        flood.send(&req).await;
        match flood.recv().await {
            Some(Reply::Login(r)) if r.status_class == 0 => continue,
            _ => break,
        }
    }
    // Sessions that send a 1 MiB write command and vanish before its data.
    for k in 0..4u8 {
        let mut bad = common::honest_session_at(addr, 100 + k).await;
        bad.send_command(
            1,
            &[0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
            1 << 20,
            true,
        )
        .await;
    }
    let open = common::Usage::of(pid).map(|u| u.fds).unwrap_or(0);
    drop(flood);
    drop(held);
    (silent, open)
}

#[tokio::test]
async fn after_hostile_connections_keels_descriptors_and_memory_return() {
    // keel as a child process: its /proc entries are its own, whatever else this test
    // binary runs at the same time.
    let mut keel = KeelProcess::start("16MiB", "login_timeout_secs = 2").await;
    let mut honest = common::honest_session_at(keel.addr, 1).await;
    still_serves(&mut honest, 1).await;
    let start = keel.usage();
    // One round first, so the memory baseline includes what keel allocates once and keeps
    // (allocator arenas, buffers of the honest session).
    let (silent, _) = hostile_round(keel.addr, keel.pid(), 0).await;
    drop(silent);
    let before = keel
        .settle(Duration::from_secs(20), |u| u.fds <= start.fds + 2)
        .await;
    assert!(
        before.fds <= start.fds + 2,
        "descriptors at start {start:?}, after one round {before:?}"
    );
    let mut during = 0;
    let mut silent = Vec::new();
    for round in 1..=10 {
        let (quiet, open) = hostile_round(keel.addr, keel.pid(), round).await;
        silent.extend(quiet);
        during = during.max(open);
        still_serves(&mut honest, u64::from(round) + 1).await;
    }
    // The silent connections (still open on this side) end at keel's 2 s login timeout; the
    // rest ended as soon as keel saw EOF.
    let after = keel
        .settle(Duration::from_secs(20), |u| u.fds <= before.fds + 2)
        .await;
    for s in &mut silent {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(s, &mut byte),
        )
        .await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was not closed by keel: {n:?}"
        );
    }
    eprintln!("keel usage: start {start:?}, before {before:?}, most fds {during}, after {after:?}");
    assert!(
        during > before.fds + 10,
        "the hostile connections never reached keel: {during} descriptors"
    );
    assert!(
        after.fds <= before.fds + 2,
        "descriptors before {before:?}, after {after:?}"
    );
    // The allocator keeps some of what ~180 concurrent connections used (measured: +3 to
    // +6 MiB here, flat over 30 rounds); a leak of a few KiB per connection over these
    // ~700 connections would not fit in the slack.
    assert!(
        after.rss_kib <= before.rss_kib + 16 * 1024,
        "memory before {before:?}, after {after:?}"
    );
    still_serves(&mut honest, 9).await;
    keel.stop().await;
}

/// A security-stage Login Request carrying `data`; with `continued` set, more text follows
/// (C bit) and the stage does not move on yet, otherwise it asks for the next stage (T bit).
fn security_login(isid: [u8; 6], continued: bool, data: Bytes) -> Request {
    Request::Login(keel::wire::LoginRequest {
        transit: !continued,
        continue_bit: continued,
        csg: 0,
        nsg: 1,
        version_max: 0,
        version_min: 0,
        isid,
        tsih: 0,
        itt: 0,
        cid: 0,
        cmd_sn: 1,
        exp_stat_sn: 0,
        data,
    })
}
