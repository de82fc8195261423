//! The metrics endpoint end to end: keel in-process with `metrics_listen`, driven by the
//! test initiator, scraped over HTTP.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{Keel, TARGET, honest_session, pattern};
use keel::wire::{Request, ScsiCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port free at the time of asking (keel binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: keel\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    response
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_write_of_n_bytes_adds_n_to_the_luns_written_bytes() {
    let port = free_port();
    let keel = Keel::start("4MiB", &format!("metrics_listen = \"127.0.0.1:{port}\"")).await;
    let written = format!("keel_lun_bytes_total{{target=\"{TARGET}\",lun=\"0\",class=\"write\"}}");
    let writes =
        format!("keel_lun_commands_total{{target=\"{TARGET}\",lun=\"0\",class=\"write\"}}");
    let read = format!("keel_lun_bytes_total{{target=\"{TARGET}\",lun=\"0\",class=\"read\"}}");
    let before = scrape(port).await;
    assert_eq!(sample(&before, &written), Some(0.0), "{before}");

    let mut session = honest_session(&keel, 1).await;
    let sizes = [4096usize, 65536, 1536];
    let mut lba = 0;
    for (seed, size) in sizes.iter().enumerate() {
        assert_eq!(
            session
                .write10(lba, &pattern(*size, seed as u64))
                .await
                .status,
            0
        );
        lba += (*size / 512) as u32;
    }
    assert_eq!(session.read10(0, 8).await.status, 0);
    let n: usize = sizes.iter().sum();

    // A command is counted when its completion reaches its connection's reader, which is
    // told before the reply leaves; still, allow the reader a moment.
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(port).await;
        if sample(&after, &written) == Some(n as f64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&after, &written), Some(n as f64), "{after}");
    assert_eq!(sample(&after, &writes), Some(sizes.len() as f64));
    assert_eq!(sample(&after, &read), Some(4096.0));
    let sessions = format!("keel_target_sessions{{target=\"{TARGET}\"}}");
    assert_eq!(sample(&after, &sessions), Some(1.0));
    let logins = format!("keel_logins_total{{target=\"{TARGET}\",result=\"success\"}}");
    assert_eq!(sample(&after, &logins), Some(1.0));

    // The session ends: what it counted stays.
    assert_eq!(session.logout().await, 0);
    session.expect_closed().await;
    let mut ended = String::new();
    for _ in 0..100 {
        ended = scrape(port).await;
        if sample(&ended, &sessions) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&ended, &sessions), Some(0.0), "{ended}");
    assert_eq!(sample(&ended, &written), Some(n as f64));
    keel.stop().await;
}

/// Sends WRITE(10) of `data` at `lba` with all its data immediate, and does not wait.
async fn send_write(session: &mut common::Initiator, lba: u32, data: &[u8]) {
    let blocks = (data.len() / 512) as u16;
    let mut cdb = BytesMut::from(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]);
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    let itt = session.next_itt();
    let command = Request::ScsiCommand(ScsiCommand {
        immediate: false,
        final_bit: true,
        read: false,
        write: true,
        attr: 1,
        lun: [0; 8],
        itt,
        expected_length: data.len() as u32,
        cmd_sn: session.cmd_sn,
        exp_stat_sn: session.exp_stat_sn,
        cdb: cdb.freeze(),
        bidi_read_length: None,
        data: Bytes::copy_from_slice(data),
    });
    session.cmd_sn = session.cmd_sn.wrapping_add(1);
    session.send(&command).await;
}

#[tokio::test]
async fn writes_still_running_when_the_connection_drops_are_counted() {
    let port = free_port();
    let keel = Keel::start("4MiB", &format!("metrics_listen = \"127.0.0.1:{port}\"")).await;
    let written = format!("keel_lun_bytes_total{{target=\"{TARGET}\",lun=\"0\",class=\"write\"}}");
    let sessions = format!("keel_target_sessions{{target=\"{TARGET}\"}}");
    let mut session = honest_session(&keel, 1).await;
    assert!(session.params.immediate_data && session.params.first_burst >= 4096);
    let writes = 16u32;
    for n in 0..writes {
        send_write(&mut session, n * 8, &pattern(4096, u64::from(n))).await;
    }
    // Gone before the writes' answers: the connection ends with them running or queued.
    drop(session);

    let mut ended = String::new();
    for _ in 0..250 {
        ended = scrape(port).await;
        if sample(&ended, &sessions) == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&ended, &sessions), Some(0.0), "{ended}");
    // What reached the medium is what was counted (all of it, unless the connection's
    // end cut some off before they were read).
    let mut check = honest_session(&keel, 2).await;
    let mut on_medium = 0;
    for n in 0..writes {
        let read = check.read10(n * 8, 8).await;
        if read.data == pattern(4096, u64::from(n)) {
            on_medium += 4096;
        }
    }
    assert!(on_medium > 0);
    assert_eq!(
        sample(&ended, &written),
        Some(f64::from(on_medium)),
        "{ended}"
    );
    keel.stop().await;
}
