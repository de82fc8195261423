//! Authentication and access control over real sockets: CHAP one-way and mutual (normal and
//! discovery sessions), allow lists in login and SendTargets, connection and session limits.

mod common;

use common::{Chap, INITIATOR, Initiator, Keel, TARGET};

const ALICE: &[u8] = b"alice-secret-123";
const TARGET_SECRET: &[u8] = b"target-secret-456";

const CHAP_TARGET: &str = "[[target.chap]]\nuser = \"alice\"\nsecret = \"alice-secret-123\"\n\
     [target.mutual_chap]\nuser = \"keel-disk0\"\nsecret = \"target-secret-456\"\n";

fn alice(algorithms: &'static str) -> Chap<'static> {
    Chap {
        user: "alice",
        secret: ALICE,
        algorithms,
        mutual: None,
    }
}

#[tokio::test]
async fn one_way_chap_with_each_algorithm_then_io() {
    let keel = Keel::start_with("4MiB", "", CHAP_TARGET).await;
    for algorithms in ["5", "6", "7", "8", "7,6,5"] {
        let mut i = Initiator::connect(keel.addr).await;
        i.login_chap(Some(TARGET), &alice(algorithms))
            .await
            .unwrap_or_else(|s| panic!("CHAP_A={algorithms}: refused with {s:x?}"));
        i.clear_unit_attention().await;
        let data = common::pattern(4096, 1);
        assert_eq!(i.write10(0, &data).await.status, 0);
        assert_eq!(i.read10(0, 8).await.data, data);
        assert_eq!(i.logout().await, 0);
    }
    keel.stop().await;
}

#[tokio::test]
async fn mutual_chap_proves_the_target() {
    let keel = Keel::start_with("1MiB", "", CHAP_TARGET).await;
    let mut i = Initiator::connect(keel.addr).await;
    let chap = Chap {
        mutual: Some(("keel-disk0", TARGET_SECRET)),
        ..alice("8,7")
    };
    i.login_chap(Some(TARGET), &chap).await.unwrap();
    assert_eq!(i.logout().await, 0);
    keel.stop().await;
}

#[tokio::test]
async fn wrong_credentials_and_no_auth_get_0201() {
    let keel = Keel::start_with("1MiB", "", CHAP_TARGET).await;
    let wrong = Chap {
        secret: b"not-alices-secret",
        ..alice("5")
    };
    let mut i = Initiator::connect(keel.addr).await;
    assert_eq!(i.login_chap(Some(TARGET), &wrong).await, Err((2, 1)));
    i.expect_closed().await;
    let stranger = Chap {
        user: "mallory",
        ..alice("5")
    };
    let mut i = Initiator::connect(keel.addr).await;
    assert_eq!(i.login_chap(Some(TARGET), &stranger).await, Err((2, 1)));
    let mut i = Initiator::connect(keel.addr).await;
    assert_eq!(
        i.login_status(Some(TARGET)).await,
        (2, 1),
        "AuthMethod=None only"
    );
    assert!(keel.is_running());
    keel.stop().await;
}

#[tokio::test]
async fn discovery_chap_guards_send_targets() {
    let keel = Keel::start_with(
        "1MiB",
        "[[server.discovery_chap]]\nuser = \"disc\"\nsecret = \"discovery-secret\"\n",
        "",
    )
    .await;
    let mut i = Initiator::connect(keel.addr).await;
    assert_eq!(i.login_status(None).await, (2, 1));
    let mut i = Initiator::connect(keel.addr).await;
    let chap = Chap {
        user: "disc",
        secret: b"discovery-secret",
        algorithms: "7",
        mutual: None,
    };
    i.login_chap(None, &chap).await.unwrap();
    let keys = i.text(&[("SendTargets", "All")]).await;
    assert!(keys.iter().any(|(k, v)| k == "TargetName" && v == TARGET));
    // The target itself needs no CHAP.
    let mut n = Initiator::connect(keel.addr).await;
    n.login(Some(TARGET), &[]).await;
    keel.stop().await;
}

#[tokio::test]
async fn allow_lists_hide_targets_and_refuse_logins_with_0202() {
    let keel = Keel::start_with(
        "1MiB",
        "",
        "allowed_initiators = [\"iqn.2026-11.org.example:test-*\"]\n",
    )
    .await;
    // INITIATOR matches the pattern: it sees the target and logs in.
    let mut i = Initiator::connect(keel.addr).await;
    i.login(None, &[]).await;
    let keys = i.text(&[("SendTargets", "All")]).await;
    assert!(keys.iter().any(|(k, v)| k == "TargetName" && v == TARGET));
    let mut n = Initiator::connect(keel.addr).await;
    n.login(Some(TARGET), &[]).await;
    assert!(INITIATOR.starts_with("iqn.2026-11.org.example:test-"));

    // Another initiator sees nothing, by name or in All, and is refused with 0x0202.
    let mut other = Initiator::connect(keel.addr).await;
    other.name = "iqn.1993-08.org.debian:01:stranger".into();
    other.login(None, &[]).await;
    let keys = other.text(&[("SendTargets", "All")]).await;
    assert!(keys.is_empty(), "{keys:?}");
    let keys = other.text(&[("SendTargets", TARGET)]).await;
    assert!(keys.is_empty(), "{keys:?}");
    let mut other = Initiator::connect(keel.addr).await;
    other.name = "iqn.1993-08.org.debian:01:stranger".into();
    assert_eq!(other.login_status(Some(TARGET)).await, (2, 2));
    // A target that does not exist stays "not found" for everyone.
    let mut other = Initiator::connect(keel.addr).await;
    other.name = "iqn.1993-08.org.debian:01:stranger".into();
    assert_eq!(
        other
            .login_status(Some("iqn.2026-11.org.example:nope"))
            .await,
        (2, 3)
    );
    keel.stop().await;
}

#[tokio::test]
async fn limits_refuse_with_0302() {
    let keel = Keel::start(
        "1MiB",
        "max_connections_per_address = 2\nmax_sessions_per_initiator = 1\n",
    )
    .await;
    let mut first = Initiator::connect(keel.addr).await;
    first.login(Some(TARGET), &[]).await;
    // A second session of the same initiator name (another ISID) is over the session limit.
    let mut second = Initiator::connect(keel.addr).await;
    second.isid[5] = 2;
    let started = std::time::Instant::now();
    assert_eq!(second.login_status(Some(TARGET)).await, (0, 0));
    let r = second.login_step(1, 3, true, &[]).await;
    assert_eq!((r.status_class, r.status_detail), (3, 2));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "refusals are held"
    );
    second.expect_closed().await;
    // Reinstating the same session (same ISID) is not a new session.
    let mut again = Initiator::connect(keel.addr).await;
    again.login(Some(TARGET), &[]).await;
    // Two connections from 127.0.0.1 are open (first's may be closing): a third is refused.
    let mut other = Initiator::connect(keel.addr).await;
    other.name = "iqn.2026-11.org.example:other".into();
    let _held = Initiator::connect(keel.addr).await;
    let mut third = Initiator::connect(keel.addr).await;
    third.name = "iqn.2026-11.org.example:third".into();
    assert_eq!(third.login_status(Some(TARGET)).await, (3, 2));
    drop(other);
    keel.stop().await;
}
