//! `keel drill` against keel in this process: nothing acknowledged is lost through a plain
//! run or through a restart of keel on the same port and file, and the reservation the drill
//! holds survives a reconnect of the same I_T nexus.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use keel::config;
use keel::drill::{self, Options, ReservationType, Stop};
use keel::server::Server;

const TARGET: &str = common::TARGET;

/// keel serving `dir/disk0.img` (4 KiB blocks) on `addr`, stopped like SIGTERM through the
/// sender.
async fn serve(
    dir: &std::path::Path,
    addr: SocketAddr,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    serve_with(dir, addr, "").await
}

/// [`serve`] with `server_extra` lines in [server].
async fn serve_with(
    dir: &std::path::Path,
    addr: SocketAddr,
    server_extra: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let text = format!(
        "[server]\nportals = [\"{addr}\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"\"\n{server_extra}\n\
         [[target]]\nname = \"{TARGET}\"\n\
         [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"16MiB\"\nblock_size = 4096\n",
        dir.display()
    );
    let config = config::parse(&text, "test").unwrap();
    let server = Server::bind(&config).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (tx, task)
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn options(addr: SocketAddr, seconds: f64) -> Options {
    let mut o = Options::new(&addr.to_string(), TARGET);
    o.duration = Some(Duration::from_secs_f64(seconds));
    o.print_events = false;
    o.queue_depth = 4;
    o.blocks = 512;
    o.verify_every = Some(Duration::from_secs(1));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_against_keel_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let (summary, events) = drill::run(options(addr, 3.0), Stop::default())
        .await
        .unwrap();
    assert!(
        summary.passed,
        "{}\n{}",
        summary.render(),
        events.join("\n")
    );
    assert_eq!(summary.lost, 0);
    assert_eq!(summary.block_size, 4096);
    assert!(summary.writes_acknowledged > 100, "{}", summary.render());
    assert!(summary.reads_verified > 100, "{}", summary.render());
    assert!(
        summary.full_read_backs >= 2,
        "periodic and final: {}",
        summary.render()
    );
    assert_eq!(summary.reconnects, 0);
    assert!(summary.unit_attentions >= 1, "power on reset reported");
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
}

/// Runs a drill (4 s, with a WERO reservation) through a SIGTERM-style restart of keel on
/// the same port and file, 1.2 s in.
async fn through_a_restart(aptpl: bool) -> (drill::Summary, String) {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let mut o = options(addr, 4.0);
    o.pr_key = Some(0xd11);
    o.reserve = Some(ReservationType(5));
    o.pr_aptpl = aptpl;
    let drill = tokio::spawn(drill::run(o, Stop::default()));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let (summary, events) = drill.await.unwrap().unwrap();
    let text = format!("{}\n{}", summary.render(), events.join("\n"));
    assert_eq!(summary.lost, 0, "{text}");
    assert_eq!(summary.corrupted, 0, "{text}");
    assert_eq!(summary.errors, 0, "{text}");
    assert!(summary.reconnects >= 1, "{text}");
    assert!(
        events
            .iter()
            .any(|e| e.contains("read-back of") && e.contains("after reconnect")),
        "{text}"
    );
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
    (summary, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_without_aptpl_is_reported_gone_after_a_restart_and_not_taken_back() {
    let (summary, text) = through_a_restart(false).await;
    assert_eq!(summary.reservation_changes, 1, "{text}");
    assert!(!summary.passed, "{text}");
    let change = &summary.reservation_change_messages[0];
    assert!(
        change.contains("no longer registered") && change.contains("WERO reservation gone"),
        "{text}"
    );
    assert!(!text.contains("re-established"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_with_aptpl_survives_a_restart_of_keel() {
    let (summary, text) = through_a_restart(true).await;
    assert_eq!(summary.reservation_changes, 0, "{text}");
    assert!(text.contains("reservation state unchanged"), "{text}");
    assert!(summary.passed, "{text}");
}

/// Writes without immediate data: every block goes in Data-Out, after an R2T (InitialR2T=Yes)
/// or unsolicited (InitialR2T=No).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_writes_through_r2t_and_unsolicited_data_out() {
    for initial_r2t in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let extra = format!("immediate_data = false\ninitial_r2t = {initial_r2t}");
        let (stop_keel, keel) = serve_with(dir.path(), addr, &extra).await;
        let (summary, events) = drill::run(options(addr, 1.5), Stop::default())
            .await
            .unwrap();
        let text = format!("{}\n{}", summary.render(), events.join("\n"));
        assert!(summary.passed, "{text}");
        assert!(summary.writes_acknowledged > 50, "{text}");
        let negotiated = format!(
            "ImmediateData=No, InitialR2T={}",
            if initial_r2t { "Yes" } else { "No" }
        );
        assert!(text.contains(&negotiated), "{text}");
        let _ = stop_keel.send(());
        keel.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_region_past_the_end_of_the_lu_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let mut o = options(addr, 1.0);
    o.first_lba = 4000; // the LU has 4096 blocks of 4 KiB
    o.blocks = 200;
    match drill::run(o, Stop::default()).await {
        Err(drill::Fatal::Usage(why)) => assert!(why.contains("do not fit"), "{why}"),
        other => panic!("expected a usage error, got {:?}", other.map(|(s, _)| s)),
    }
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stop_request_ends_the_drill_cleanly_with_a_final_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let mut o = options(addr, 0.0);
    o.duration = None;
    let stop = Stop::default();
    let drill = tokio::spawn(drill::run(o, stop.clone()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.request();
    let (summary, events) = tokio::time::timeout(Duration::from_secs(30), drill)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(summary.passed, "{}", summary.render());
    assert!(events.iter().any(|e| e.contains("stop requested")));
    assert!(events.iter().any(|e| e.contains("(final)")));
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
}

/// A drill that is not registered, writing into another drill's WRITE EXCLUSIVE –
/// REGISTRANTS ONLY reservation: every write is refused (RESERVATION CONFLICT, reported as
/// an error, never acknowledged), and the drill goes on probing at a pace, not as fast as
/// the target can refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intruder_gets_conflicts_at_a_pace() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (stop_keel, keel) = serve(dir.path(), addr).await;
    let mut holder = options(addr, 3.0);
    holder.pr_key = Some(0x401d);
    holder.reserve = Some(ReservationType(5));
    let holder = tokio::spawn(drill::run(holder, Stop::default()));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut intruder = options(addr, 1.0);
    intruder.initiator = "iqn.2026-12.io.keel:intruder".into();
    intruder.first_lba = 1024;
    intruder.blocks = 8;
    let (summary, events) = drill::run(intruder, Stop::default()).await.unwrap();
    let text = format!("{}\n{}", summary.render(), events.join("\n"));
    assert_eq!(summary.writes_acknowledged, 0, "{text}");
    assert!(summary.errors >= 1, "{text}");
    assert!(
        summary
            .error_messages
            .iter()
            .all(|m| m.contains("RESERVATION CONFLICT")),
        "{text}"
    );
    // One pause per conflict, queue_depth (4) on the wire: at most about 40 a second, where
    // a drill that did not pause made over 15,000.
    assert!(summary.errors <= 100, "{text}");
    let (held, events) = holder.await.unwrap().unwrap();
    assert!(held.passed, "{}\n{}", held.render(), events.join("\n"));
    let _ = stop_keel.send(());
    keel.await.unwrap().unwrap();
}
