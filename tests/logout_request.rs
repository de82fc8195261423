//! The target asks sessions to log out (RFC 7143 §11.9.1), over real sockets: the session
//! gets AsyncEvent 1 with the grace in Parameter3 and its Logout is served as usual; one that
//! does not log out in time gets AsyncEvent 3 (DefaultTime2Wait, DefaultTime2Retain) and is
//! closed. Only the sessions the filter matches are asked.

mod common;

use std::time::Duration;

use common::{Initiator, TARGET, honest_session_at, still_serves};
use keel::config;
use keel::iscsi::{PortalMatch, SessionFilter};
use keel::server::Server;
use keel::wire::{AsyncMessage, Reply};

async fn async_message(i: &mut Initiator) -> AsyncMessage {
    match i.recv().await {
        Some(Reply::Async(m)) => m,
        other => panic!("expected an Async Message, got {other:?}"),
    }
}

/// keel serving TARGET (one 1 MiB LUN in `dir`): its portal, its service, what stops it and
/// its task.
async fn serve_one_target(
    dir: &std::path::Path,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<keel::iscsi::Service>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let text = format!(
        "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\n\
         [[target]]\nname = \"{TARGET}\"\n\
         [[target.lun]]\nlun = 0\nfile = \"disk0.img\"\nsize = \"1MiB\"\n",
        dir.display()
    );
    let server = Server::bind(&config::parse(&text, "test").unwrap())
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    let service = server.service();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, service, tx, task)
}

#[tokio::test]
async fn asked_sessions_log_out_or_are_dropped_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, service, tx, task) = serve_one_target(dir.path()).await;

    let mut polite = honest_session_at(addr, 1).await;
    let mut stubborn = honest_session_at(addr, 2).await;
    let mut bystander = honest_session_at(addr, 3).await;
    let sessions = service.sessions.count();
    assert_eq!(sessions, 3);

    // Ask the first by its TSIH: it alone hears of it, and logs out normally.
    let by_tsih = SessionFilter {
        tsih: Some(polite.tsih),
        ..SessionFilter::default()
    };
    assert_eq!(
        service
            .sessions
            .request_logout(&by_tsih, Duration::from_secs(5)),
        1
    );
    let m = async_message(&mut polite).await;
    assert_eq!((m.event, m.parameter3), (1, 5));
    still_serves(&mut polite, 1).await;
    assert_eq!(polite.logout().await, 0);
    polite.expect_closed().await;

    // The second ignores the request: after the grace, AsyncEvent 3 and the close.
    let by_tsih_and_portal = SessionFilter {
        tsih: Some(stubborn.tsih),
        target: Some(TARGET.to_string()),
        portal: Some(PortalMatch::Address(addr)),
        ..SessionFilter::default()
    };
    let asked_at = tokio::time::Instant::now();
    assert_eq!(
        service
            .sessions
            .request_logout(&by_tsih_and_portal, Duration::from_secs(1)),
        1
    );
    let m = async_message(&mut stubborn).await;
    assert_eq!((m.event, m.parameter3), (1, 1));
    let m = async_message(&mut stubborn).await;
    assert!(asked_at.elapsed() >= Duration::from_secs(1));
    // keel negotiates the RFC defaults: DefaultTime2Wait 2, DefaultTime2Retain 20 (or less).
    assert_eq!(m.event, 3);
    assert_eq!(m.parameter2, 2);
    stubborn.expect_closed().await;

    // The third was never asked and still serves.
    still_serves(&mut bystander, 2).await;
    assert_eq!(service.sessions.count(), 1);
    assert_eq!(bystander.logout().await, 0);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A login that completes after its target was removed, and after the removal asked the
/// target's sessions to log out, is refused with 02/04 Target removed (RFC 7143 §11.13.5):
/// it would otherwise never be asked to log out, and serve no LUNs.
#[tokio::test]
async fn a_login_completing_after_its_target_was_removed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, service, tx, task) = serve_one_target(dir.path()).await;

    let mut late = Initiator::connect(addr).await;
    let name = late.name.clone();
    let security = late
        .login_step(
            0,
            1,
            true,
            &[
                ("InitiatorName", &name),
                ("AuthMethod", "None"),
                ("TargetName", TARGET),
                ("SessionType", "Normal"),
            ],
        )
        .await;
    assert_eq!((security.status_class, security.status_detail), (0, 0));

    // What removing the target does (server/apply.rs): out of the registry, then the
    // sessions registered so far are asked to log out; this login is not one of them yet.
    assert!(service.targets.remove(TARGET).is_some());
    let asked = service
        .sessions
        .request_logout(&SessionFilter::target(TARGET), Duration::from_secs(5));
    assert_eq!(asked, 0);

    let operational = late.login_step(1, 3, true, &[]).await;
    assert_eq!(
        (operational.status_class, operational.status_detail),
        (2, 4)
    );
    late.expect_closed().await;
    assert_eq!(service.sessions.count(), 0);
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
