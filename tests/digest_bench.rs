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
const READ_BYTES: f64 = 2048.0 * 512.0;
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
    let mut cpu_per_gb: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (n, (_, keys)) in cases.iter().enumerate() {
            let cpu_before = connection_threads_cpu_seconds();
            let started = Instant::now();
            let rate = reads_per_second(keel.addr, keys, Duration::from_secs(seconds)).await;
            let gb = rate * started.elapsed().as_secs_f64() * READ_BYTES / 1e9;
            cpu_per_gb[n].push((connection_threads_cpu_seconds() - cpu_before) / gb);
            rates[n].push(rate);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let cpu: Vec<f64> = cpu_per_gb.iter_mut().map(|r| median(r)).collect();
    println!(
        "\n1 MiB reads, {SESSIONS} sessions x QD1, LUN on tmpfs, {rounds} rounds of {seconds} s, medians\n"
    );
    println!("| digests | GB/s | vs none | keel CPU s per GB | vs none |");
    println!("|---|---|---|---|---|");
    for (n, (name, _)) in cases.iter().enumerate() {
        println!(
            "| {name} | {:.2} | {:+.0} % | {:.3} | {:+.0} % |",
            medians[n] * READ_BYTES / 1e9,
            (medians[n] / medians[0] - 1.0) * 100.0,
            cpu[n],
            (cpu[n] / cpu[0] - 1.0) * 100.0
        );
    }
    println!(
        "\nGB/s is bound by the initiator here (it shares the process and the 2 cores); keel's CPU is its connection threads' (keel-conn-*), where all of a read's work runs."
    );
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

/// CPU seconds (user + system) of this process's keel connection threads so far, from
/// /proc/self/task/*/stat.
fn connection_threads_cpu_seconds() -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... utime (14th) stime (15th)
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("keel-conn") {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        ticks += field(11) + field(12);
    }
    ticks as f64 / ticks_per_second
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
