//! A removable LUN (`removable = true`) over real sockets: initiators see RMB, eject and load
//! the medium, and a prevention of medium removal lasts only as long as its I_T nexus.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Initiator, TARGET, pattern};
use keel::config;
use keel::server::Server;

const TUR: [u8; 6] = [0; 6];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const EJECT: [u8; 6] = [0x1B, 0, 0, 0, 0x02, 0];
const LOAD: [u8; 6] = [0x1B, 0, 0, 0, 0x03, 0];
const PREVENT: [u8; 6] = [0x1E, 0, 0, 0, 1, 0];
const NO_MEDIUM: (u8, u8, u8) = (0x02, 0x3A, 0x00);
const PREVENTED: (u8, u8, u8) = (0x05, 0x53, 0x02);
const CHECK_CONDITION: u8 = 0x02;

struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// keel in this process with one removable 1 MiB LUN in `dir`.
async fn start_in(dir: &Path) -> Running {
    let text = format!(
        "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{0}\"\ncontrol_socket = \"{0}/keel.sock\"\n\
         [[target]]\nname = \"{TARGET}\"\n\
         [[target.lun]]\nlun = 0\nfile = \"media.img\"\nsize = \"1MiB\"\nremovable = true\n",
        dir.display()
    );
    let server = Server::bind(&config::parse(&text, "test").unwrap())
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running { addr, stop, task }
}

async fn session(addr: std::net::SocketAddr, isid: u8) -> Initiator {
    let mut i = Initiator::connect(addr).await;
    i.isid[5] = isid;
    i.login(Some(TARGET), &[]).await;
    i.clear_unit_attention().await;
    i
}

/// Ejects from `i`, retrying while a prevention that is being released still holds (a
/// session's end is processed just after its logout response or its socket's close).
async fn eject_once_allowed(i: &mut Initiator) {
    for _ in 0..100 {
        let r = i.scsi(0, &EJECT, 0, None).await;
        if r.status == 0 {
            return;
        }
        assert_eq!(r.sense_triple(), PREVENTED, "{r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the prevention never ended");
}

#[tokio::test]
async fn eject_load_and_prevent_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let keel = start_in(dir.path()).await;
    let mut a = session(keel.addr, 1).await;
    let mut b = session(keel.addr, 2).await;

    let r = a.scsi(0, &INQUIRY, 96, None).await;
    assert_eq!(r.data[1] & 0x80, 0x80, "RMB");

    // Data written before an eject is there after the load.
    let data = pattern(8192, 7);
    assert_eq!(a.write10(16, &data).await.status, 0);
    assert_eq!(a.scsi(0, &EJECT, 0, None).await.status, 0);
    for cdb in [&TUR[..], &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0][..]] {
        let r = b.scsi(0, cdb, 512, None).await;
        assert_eq!(r.status, CHECK_CONDITION, "{cdb:?}");
        assert_eq!(r.sense_triple(), NO_MEDIUM, "{cdb:?}");
    }
    assert_eq!(b.scsi(0, &INQUIRY, 96, None).await.status, 0);
    assert_eq!(a.scsi(0, &LOAD, 0, None).await.status, 0);
    // b is told the medium may have changed, once.
    let r = b.scsi(0, &TUR, 0, None).await;
    assert_eq!(r.sense_triple(), (0x06, 0x28, 0x00), "{r:?}");
    let r = b.read10(16, 16).await;
    assert_eq!(r.status, 0);
    assert_eq!(r.data, data);

    // a's prevention holds against b until a logs out.
    assert_eq!(a.scsi(0, &PREVENT, 0, None).await.status, 0);
    let r = b.scsi(0, &EJECT, 0, None).await;
    assert_eq!(r.sense_triple(), PREVENTED, "{r:?}");
    assert_eq!(a.logout().await, 0);
    drop(a);
    eject_once_allowed(&mut b).await;
    assert_eq!(b.scsi(0, &TUR, 0, None).await.sense_triple(), NO_MEDIUM);
    assert_eq!(b.scsi(0, &LOAD, 0, None).await.status, 0);

    // A connection that just drops (I_T nexus loss) ends its prevention too.
    let mut c = session(keel.addr, 3).await;
    assert_eq!(c.scsi(0, &PREVENT, 0, None).await.status, 0);
    let r = b.scsi(0, &EJECT, 0, None).await;
    assert_eq!(r.sense_triple(), PREVENTED, "{r:?}");
    drop(c);
    eject_once_allowed(&mut b).await;
    assert_eq!(b.scsi(0, &LOAD, 0, None).await.status, 0);
    assert_eq!(b.scsi(0, &TUR, 0, None).await.status, 0);

    let _ = keel.stop.send(());
    tokio::time::timeout(Duration::from_secs(60), keel.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
