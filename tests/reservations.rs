//! Persistent reservations over real sockets: APTPL state survives a restart of keel (built
//! from the same configuration and data directory), plain registrations do not.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Initiator, TARGET};
use keel::config;
use keel::server::Server;

/// keel in this process, serving one 1 MiB LUN from `dir`; stop it with the sender.
async fn start_in(
    dir: &Path,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let text = format!(
        "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"{0}/keel.sock\"\n\
         [[target]]\nname = \"{TARGET}\"\n\
         [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"1MiB\"\n",
        dir.display()
    );
    let server = Server::bind(&config::parse(&text, "test").unwrap())
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2 table 186).
const REGISTER: u8 = 0;
const RESERVE: u8 = 1;
const PREEMPT: u8 = 4;
const PREEMPT_AND_ABORT: u8 = 5;
/// Persistent reservation types (SPC-4 §6.15.3.3 table 176).
const WRITE_EXCLUSIVE: u8 = 1;
const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;
/// Status codes (SAM-5 §5.3.1).
const GOOD: u8 = 0;
const CHECK_CONDITION: u8 = 2;
const RESERVATION_CONFLICT: u8 = 0x18;

/// PERSISTENT RESERVE OUT with a basic parameter list.
async fn prout(i: &mut Initiator, sa: u8, pr_type: u8, key: u64, sark: u64, flags: u8) -> u8 {
    let cdb = [0x5F, sa, pr_type, 0, 0, 0, 0, 0, 24, 0];
    let mut data = [0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    data[20] = flags;
    i.scsi(0, &cdb, 0, Some(&data)).await.status
}

/// READ KEYS: (PRgeneration, keys).
async fn read_keys(i: &mut Initiator) -> (u32, Vec<u64>) {
    let r = i
        .scsi(0, &[0x5E, 0, 0, 0, 0, 0, 0, 4, 0, 0], 1024, None)
        .await;
    assert_eq!(r.status, 0, "{r:?}");
    let generation = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    let keys = r.data[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (generation, keys)
}

/// READ RESERVATION: (key, type) of the reservation, if any.
async fn read_reservation(i: &mut Initiator) -> Option<(u64, u8)> {
    let r = i
        .scsi(0, &[0x5E, 1, 0, 0, 0, 0, 0, 0, 64, 0], 64, None)
        .await;
    assert_eq!(r.status, 0, "{r:?}");
    (r.data.len() >= 24).then(|| {
        (
            u64::from_be_bytes(r.data[8..16].try_into().unwrap()),
            r.data[21],
        )
    })
}

async fn session(addr: SocketAddr) -> Initiator {
    let mut i = Initiator::connect(addr).await;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    i
}

async fn stop(
    tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn aptpl_registration_and_reservation_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, tx, task) = start_in(dir.path()).await;
    let mut i = session(addr).await;
    assert_eq!(prout(&mut i, 0, 0, 0, 0xC0FFEE, 0x01).await, 0);
    assert_eq!(prout(&mut i, 1, 1, 0xC0FFEE, 0, 0).await, 0);
    assert_eq!(i.logout().await, 0);
    stop(tx, task).await;

    let (addr, tx, task) = start_in(dir.path()).await;
    let mut i = session(addr).await;
    assert_eq!(read_keys(&mut i).await, (1, vec![0xC0FFEE]));
    assert_eq!(read_reservation(&mut i).await, Some((0xC0FFEE, 1)));
    // The same I_T nexus (same initiator name and ISID) is still the holder: it may write.
    assert_eq!(i.write10(0, &[7u8; 512]).await.status, 0);
    // Unregister with APTPL clear: nothing persists any more.
    assert_eq!(prout(&mut i, 0, 0, 0xC0FFEE, 0, 0).await, 0);
    assert_eq!(i.logout().await, 0);
    stop(tx, task).await;
    assert!(
        std::fs::read_dir(dir.path().join("reservations"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn registrations_without_aptpl_are_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, tx, task) = start_in(dir.path()).await;
    let mut i = session(addr).await;
    assert_eq!(prout(&mut i, 0, 0, 0, 0xBEEF, 0).await, 0);
    assert_eq!(read_keys(&mut i).await, (1, vec![0xBEEF]));
    assert_eq!(i.logout().await, 0);
    stop(tx, task).await;

    let (addr, tx, task) = start_in(dir.path()).await;
    let mut i = session(addr).await;
    assert_eq!(read_keys(&mut i).await, (0, vec![]));
    assert_eq!(i.logout().await, 0);
    stop(tx, task).await;
}

/// For demonstrating against a separately started keel binary:
/// `KEEL_ADDR=127.0.0.1:3260 KEEL_PR_STEP=register|read cargo test --test reservations -- --ignored`.
/// `register` registers key 0xC0FFEE with APTPL and reserves Write Exclusive; `read` prints
/// READ KEYS and READ RESERVATION.
#[tokio::test]
#[ignore = "drives an external keel; see the doc comment"]
async fn external_keel_probe() {
    let addr: SocketAddr = std::env::var("KEEL_ADDR").unwrap().parse().unwrap();
    let mut i = session(addr).await;
    if std::env::var("KEEL_PR_STEP").as_deref() == Ok("register") {
        assert_eq!(prout(&mut i, 6, 0, 0, 0xC0FFEE, 0x01).await, 0);
        assert_eq!(prout(&mut i, 1, 1, 0xC0FFEE, 0, 0).await, 0);
        println!("registered 0xC0FFEE with APTPL, reserved Write Exclusive");
    }
    let (generation, keys) = read_keys(&mut i).await;
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:#x}")).collect();
    println!("READ KEYS: PRgeneration {generation}, keys {keys:?}");
    println!("READ RESERVATION: {:?}", read_reservation(&mut i).await);
    assert_eq!(i.logout().await, 0);
}

/// PREEMPT AND ABORT aborts the preempted nexus's tasks: its write still receiving data ends
/// with TASK ABORTED and never lands, while the preempting command completes.
#[tokio::test]
async fn preempt_and_abort_aborts_the_preempted_nexus_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, tx, task) = start_in(dir.path()).await;
    let mut a = session(addr).await;
    let mut b = common::honest_session_at(addr, 2).await;
    assert_eq!(prout(&mut a, REGISTER, 0, 0, 0xA, 0).await, 0);
    assert_eq!(prout(&mut b, REGISTER, 0, 0, 0xB, 0).await, 0);
    assert_eq!(
        prout(&mut b, RESERVE, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 0xB, 0, 0).await,
        0
    );
    // B starts a write and holds its data back.
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[2..6].copy_from_slice(&64u32.to_be_bytes());
    cdb[7..9].copy_from_slice(&16u16.to_be_bytes());
    let itt = b.next_itt();
    b.send_command(itt, &cdb, 8192, true).await;
    let r2t = match b.recv().await {
        Some(keel::wire::Reply::R2t(r)) => r,
        other => panic!("expected an R2T, got {other:?}"),
    };
    // A preempts B's key and aborts its tasks.
    let preempt = prout(
        &mut a,
        PREEMPT_AND_ABORT,
        WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
        0xA,
        0xB,
        0,
    );
    let status = tokio::time::timeout(Duration::from_secs(5), preempt).await;
    assert_eq!(
        status.expect("PREEMPT AND ABORT waited for a write that never started"),
        0
    );
    let data = bytes::Bytes::from(common::pattern(8192, 9));
    let (offset, len) = (r2t.buffer_offset as usize, r2t.desired_length as usize);
    b.send_data(&data, [0; 8], itt, r2t.ttt, offset, len).await;
    match b.recv().await {
        Some(keel::wire::Reply::ScsiResponse(r)) => assert_eq!((r.itt, r.status), (itt, 0x40)),
        other => panic!("expected TASK ABORTED, got {other:?}"),
    }
    let r = a.read10(64, 16).await;
    assert_eq!(r.status, 0);
    assert!(r.data.iter().all(|&x| x == 0), "the aborted write landed");
    assert_eq!(read_keys(&mut a).await.1, vec![0xA]);
    drop((a, b));
    stop(tx, task).await;
}

/// A registered node that does not hold the reservation preempts its own key, as a cluster's
/// fence agent does when it re-registers a node (SPC-4 r36f §5.13.11.2.5): GOOD, and every
/// registration with that key goes, the sender's included; the other nexus that had the key
/// hears REGISTRATIONS PREEMPTED, the sender and the holder hear nothing, the reservation
/// stays.
#[tokio::test]
async fn preempting_its_own_key_unregisters_every_nexus_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, tx, task) = start_in(dir.path()).await;
    let mut holder = session(addr).await;
    let mut fencer = common::honest_session_at(addr, 2).await;
    let mut twin = common::honest_session_at(addr, 3).await;
    assert_eq!(prout(&mut holder, REGISTER, 0, 0, 0xA, 0).await, GOOD);
    assert_eq!(prout(&mut fencer, REGISTER, 0, 0, 0xB, 0).await, GOOD);
    assert_eq!(prout(&mut twin, REGISTER, 0, 0, 0xB, 0).await, GOOD);
    assert_eq!(
        prout(&mut holder, RESERVE, WRITE_EXCLUSIVE, 0xA, 0, 0).await,
        GOOD
    );

    assert_eq!(
        prout(&mut fencer, PREEMPT, WRITE_EXCLUSIVE, 0xB, 0xB, 0).await,
        GOOD
    );
    // No unit attention for the sender: its next command just runs.
    assert_eq!(read_keys(&mut fencer).await, (4, vec![0xA]));
    assert_eq!(
        read_reservation(&mut fencer).await,
        Some((0xA, WRITE_EXCLUSIVE))
    );
    let tur = [0u8; 6];
    let r = twin.scsi(0, &tur, 0, None).await;
    assert_eq!(
        (r.status, r.sense_triple()),
        (CHECK_CONDITION, (0x6, 0x2A, 0x05)),
        "REGISTRATIONS PREEMPTED for the other nexus with the key"
    );
    assert_eq!(holder.scsi(0, &tur, 0, None).await.status, GOOD);
    // The sender is unregistered now: a second PREEMPT conflicts.
    assert_eq!(
        prout(&mut fencer, PREEMPT, WRITE_EXCLUSIVE, 0xB, 0xB, 0).await,
        RESERVATION_CONFLICT
    );
    drop((holder, fencer, twin));
    stop(tx, task).await;
}
