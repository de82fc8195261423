//! Not a test but a benchmark (ignored by `cargo test`): what CRC32C digests cost keel on
//! 1 MiB reads at 8 in flight, with the test initiator (libiscsi, the fast initiator on
//! this machine, negotiates no data digests). The same keel, LUN and initiator with no
//! digests, header digests, and header + data digests, alternating, medians. Run by
//! `interop/bench --data-digests`, or:
//!
//!   cargo test --release --test digest_bench -- --ignored --nocapture
//!
//! The initiator computes and checks the digests too, in the same process, so the figure
//! bounds keel's share from above.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Initiator, Keel, TARGET};

const READ_BLOCKS: u16 = 2048; // 1 MiB
const LUN_BLOCKS: u32 = 512 * 2048; // 512 MiB
const SESSIONS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures (interop/bench --data-digests)"]
async fn one_mib_reads_with_and_without_digests() {
    let seconds: u64 = std::env::var("SECONDS_PER_RUN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let keel = Keel::start_on_tmpfs("512MiB", "").await;
    let cases: [(&str, &[(&str, &str)]); 3] = [
        ("none", &[]),
        ("header", &[("HeaderDigest", "CRC32C")]),
        (
            "header+data",
            &[("HeaderDigest", "CRC32C"), ("DataDigest", "CRC32C")],
        ),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (n, (_, keys)) in cases.iter().enumerate() {
            let rate = reads_per_second(keel.addr, keys, Duration::from_secs(seconds)).await;
            rates[n].push(rate);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    println!(
        "\n1 MiB reads, {SESSIONS} sessions x QD1, LUN on tmpfs, {rounds} rounds of {seconds} s, medians\n"
    );
    println!("| digests | keel | vs none |");
    println!("|---|---|---|");
    for (n, (name, _)) in cases.iter().enumerate() {
        println!(
            "| {name} | {:.2} GB/s | {:+.0} % |",
            medians[n] * f64::from(READ_BLOCKS) * 512.0 / 1e9,
            (medians[n] / medians[0] - 1.0) * 100.0
        );
    }
    keel.stop().await;
}

/// 1 MiB reads per second over `SESSIONS` sessions negotiated with `keys`, each with one
/// read in flight, for `how_long`.
async fn reads_per_second(addr: SocketAddr, keys: &[(&str, &str)], how_long: Duration) -> f64 {
    let mut keys = keys.to_vec();
    keys.push(("MaxRecvDataSegmentLength", "262144"));
    let start = Instant::now();
    let deadline = start + how_long;
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        let keys: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        sessions.push(tokio::spawn(async move {
            let keys: Vec<(&str, &str)> =
                keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut i = Initiator::connect(addr).await;
            i.isid[5] = s as u8 + 1;
            i.login(Some(TARGET), &keys).await;
            i.clear_unit_attention().await;
            let mut reads = 0u64;
            let mut lba = (s as u32) * 64 * u32::from(READ_BLOCKS);
            while Instant::now() < deadline {
                let r = i.read10(lba, READ_BLOCKS).await;
                assert_eq!(r.status, 0);
                reads += 1;
                lba = (lba + u32::from(READ_BLOCKS)) % LUN_BLOCKS;
            }
            i.logout().await;
            reads
        }));
    }
    let mut total = 0;
    for s in sessions {
        total += s.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
