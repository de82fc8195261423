//! Reads and writes verified byte for byte under every way iSCSI can move write data:
//! immediate, unsolicited, solicited by R2T (with several outstanding), with and without
//! digests.

mod common;

use common::{Initiator, Keel, TARGET, pattern};

async fn write_then_read(i: &mut Initiator, lba: u32, len: usize, seed: u64) {
    let data = pattern(len, seed);
    let w = i.write10(lba, &data).await;
    assert_eq!(w.status, 0, "write failed: {:?}", w.sense_triple());
    let r = i.read10(lba, (len / 512) as u16).await;
    assert_eq!(r.status, 0);
    assert!(
        r.data == data,
        "read back differs at lba {lba}, {len} bytes"
    );
}

#[tokio::test]
async fn writes_round_trip_under_every_data_transfer_regime() {
    every_data_transfer_regime(Keel::start("64MiB", "").await).await;
}

/// On tmpfs, reads of 64 KiB and more leave by sendfile straight from the LUN's file (with a
/// data digest they are read into memory first): the same checks, byte for byte.
#[tokio::test]
async fn reads_sent_from_a_tmpfs_file_round_trip_under_every_regime() {
    every_data_transfer_regime(Keel::start_on_tmpfs("64MiB", "").await).await;
}

async fn every_data_transfer_regime(keel: Keel) {
    let regimes: &[&[(&str, &str)]] = &[
        // Immediate + unsolicited first burst, then R2Ts.
        &[
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("FirstBurstLength", "65536"),
            ("MaxRecvDataSegmentLength", "8192"),
        ],
        // Everything solicited, in small bursts, several R2Ts outstanding.
        &[
            ("ImmediateData", "No"),
            ("InitialR2T", "Yes"),
            ("MaxBurstLength", "16384"),
            ("MaxOutstandingR2T", "4"),
        ],
        // Immediate data only, then one R2T at a time.
        &[
            ("ImmediateData", "Yes"),
            ("InitialR2T", "Yes"),
            ("MaxOutstandingR2T", "1"),
        ],
        // Both digests.
        &[
            ("HeaderDigest", "CRC32C"),
            ("DataDigest", "CRC32C"),
            ("InitialR2T", "No"),
            ("MaxBurstLength", "65536"),
        ],
        // A header digest only; Data-In in small PDUs and sequences.
        &[
            ("HeaderDigest", "CRC32C"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("MaxBurstLength", "16384"),
            ("FirstBurstLength", "16384"),
        ],
    ];
    for (n, keys) in regimes.iter().enumerate() {
        let mut i = Initiator::connect(keel.addr).await;
        i.isid[5] = n as u8 + 10;
        i.login(Some(TARGET), keys).await;
        i.clear_unit_attention().await;
        for (k, len) in [512usize, 4096, 65536, 1 << 20, 3 * 512 + (1 << 19)]
            .into_iter()
            .enumerate()
        {
            write_then_read(
                &mut i,
                (n * 4096 + k * 2048) as u32,
                len,
                (n * 10 + k) as u64,
            )
            .await;
        }
        assert_eq!(i.logout().await, 0);
    }
    keel.stop().await;
}

#[tokio::test]
async fn data_is_durable_across_a_restart() {
    let keel = Keel::start("8MiB", "").await;
    let data = pattern(1 << 20, 99);
    {
        let mut i = Initiator::connect(keel.addr).await;
        i.login(Some(TARGET), &[]).await;
        i.clear_unit_attention().await;
        assert_eq!(i.write10(100, &data).await.status, 0);
        // SYNCHRONIZE CACHE (10).
        assert_eq!(
            i.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, None)
                .await
                .status,
            0
        );
    }
    let dir = keel.stop().await;
    let on_disk = std::fs::read(dir.path().join("disk0.img")).unwrap();
    assert!(on_disk[100 * 512..100 * 512 + data.len()] == data[..]);
}

#[tokio::test]
async fn scsi_errors_and_residuals_reach_the_initiator() {
    let keel = Keel::start("1MiB", "").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    // The first command of a new nexus reports the power-on unit attention.
    let ua = i.scsi(0, &[0u8; 6], 0, None).await;
    assert_eq!((ua.status, ua.sense_triple()), (2, (6, 0x29, 0)));
    assert_eq!(i.scsi(0, &[0u8; 6], 0, None).await.status, 0);
    // READ past the end: LBA OUT OF RANGE.
    let r = i.read10(2047, 2).await;
    assert_eq!((r.status, r.sense_triple()), (2, (5, 0x21, 0)));
    // An unknown opcode.
    let r = i.scsi(0, &[0xc7, 0, 0, 0, 0, 0], 0, None).await;
    assert_eq!((r.status, r.sense_triple()), (2, (5, 0x20, 0)));
    // INQUIRY with a larger allocation than the data: underflow residual.
    let r = i.scsi(0, &[0x12, 0, 0, 0, 255, 0], 255, None).await;
    assert_eq!(r.status, 0);
    assert!(r.underflow && r.residual == 255 - r.data.len() as u32);
    // INQUIRY with a smaller expected length than the allocation length: overflow.
    let r = i.scsi(0, &[0x12, 0, 0, 0, 96, 0], 16, None).await;
    assert!(r.overflow && r.data.len() == 16);
    // A LUN that does not exist.
    let r = i.scsi(5, &[0u8; 6], 0, None).await;
    assert_eq!((r.status, r.sense_triple()), (2, (5, 0x25, 0)));
    // READ CAPACITY (16) gives the size.
    let r = i
        .scsi(
            0,
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            32,
            None,
        )
        .await;
    assert_eq!(u64::from_be_bytes(r.data[0..8].try_into().unwrap()), 2047);
    keel.stop().await;
}

#[tokio::test]
async fn many_commands_in_flight_complete() {
    let keel = Keel::start("16MiB", "queue_depth = 16").await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[("InitialR2T", "No")]).await;
    i.clear_unit_attention().await;
    // More writes than the window, sequentially — the window must keep opening.
    for k in 0..100u32 {
        write_then_read(&mut i, k * 64, 4096, k as u64).await;
    }
    assert!(keel::wire::sn_le(i.cmd_sn, i.max_cmd_sn.wrapping_add(1)));
    keel.stop().await;
}

/// One session through each storage engine: writes of several sizes (one with FUA), reads
/// back, SYNCHRONIZE CACHE.
async fn session_with_engine(engine: &str) {
    let keel = Keel::start("16MiB", &format!("io_engine = \"{engine}\"")).await;
    let mut i = Initiator::connect(keel.addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    for (k, len) in [512usize, 4096, 65536, 1 << 20].into_iter().enumerate() {
        write_then_read(&mut i, (k * 4096) as u32, len, 500 + k as u64).await;
    }
    // WRITE (10) with FUA, 8 blocks at LBA 30000.
    let data = pattern(4096, 77);
    let w = i
        .scsi(
            0,
            &[0x2a, 0x08, 0, 0, 0x75, 0x30, 0, 0, 8, 0],
            0,
            Some(&data),
        )
        .await;
    assert_eq!(
        w.status,
        0,
        "{engine}: FUA write failed: {:?}",
        w.sense_triple()
    );
    assert!(i.read10(30000, 8).await.data == data, "{engine}");
    let sync = i.scsi(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, None).await;
    assert_eq!(sync.status, 0, "{engine}");
    assert_eq!(i.logout().await, 0);
    keel.stop().await;
}

#[tokio::test]
async fn a_session_on_the_thread_pool_engine() {
    session_with_engine("threads").await;
}

#[tokio::test]
async fn a_session_on_the_io_uring_engine() {
    session_with_engine("io_uring").await;
}

/// `write_buffer_mib` bounds the memory of write data being received over all connections:
/// a write that does not fit gets no R2T until an earlier one has let go of its share, and
/// then completes normally.
#[tokio::test]
async fn a_write_that_does_not_fit_the_write_buffer_waits_for_memory() {
    use std::time::Duration;
    let keel = Keel::start("64MiB", "write_buffer_mib = 8").await;
    // A takes all 8 MiB: an 8 MiB write whose data it never sends.
    let mut a = common::honest_session(&keel, 1).await;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[7..9].copy_from_slice(&16384u16.to_be_bytes());
    let itt = a.next_itt();
    a.send_command(itt, &cdb, 8 << 20, true).await;
    match a.recv().await {
        Some(keel::wire::Reply::R2t(r)) => assert_eq!(r.itt, itt),
        other => panic!("expected an R2T for the 8 MiB write, got {other:?}"),
    }
    // B's 1 MiB write must wait: no room left.
    let mut b = common::honest_session(&keel, 2).await;
    let data = pattern(1 << 20, 7);
    let write = tokio::spawn(async move {
        let status = b.write10(20_000, &data).await.status;
        (b, data, status)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the write ran without buffer memory");
    // A goes away; its share returns and B's write proceeds.
    drop(a);
    let (mut b, data, status) = tokio::time::timeout(Duration::from_secs(10), write)
        .await
        .expect("the waiting write never got its memory")
        .unwrap();
    assert_eq!(status, 0);
    let r = b.read10(20_000, 2048).await;
    assert!(r.status == 0 && r.data == data, "read back differs");
    // Everything was returned: a write of the whole budget still fits.
    let full = pattern(8 << 20, 8);
    let w = tokio::time::timeout(Duration::from_secs(10), b.write10(0, &full)).await;
    assert_eq!(w.expect("an 8 MiB write waited forever").status, 0);
    keel.stop().await;
}
