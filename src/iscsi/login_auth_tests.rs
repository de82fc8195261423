//! Login machine tests for authentication and access control: CHAP one-way and mutual,
//! algorithm and AuthMethod negotiation, allow lists.

use std::sync::Arc;

use super::tests::req;
use super::*;
use crate::iscsi::access::AllowList;
use crate::iscsi::chap::{Credential, Secret};

const TARGET: &str = "iqn.2026-11.org.example:disk0";
const ALICE_SECRET: &[u8] = b"alice-secret-123";
const TARGET_SECRET: &[u8] = b"target-secret-456";

/// Deterministic "random" bytes: the challenge is 0x11 repeated, the identifier 0x11.
fn fixed_random(buf: &mut [u8]) -> bool {
    buf.fill(0x11);
    true
}

fn policy(mutual: bool) -> ChapPolicy {
    ChapPolicy {
        users: vec![Credential {
            user: "alice".into(),
            secret: Secret::new(ALICE_SECRET.to_vec()),
        }],
        mutual: mutual.then(|| Credential {
            user: "keel-target".into(),
            secret: Secret::new(TARGET_SECRET.to_vec()),
        }),
    }
}

fn target(chap: Option<ChapPolicy>, allowed: &[&str]) -> LoginTarget {
    LoginTarget {
        name: TARGET.into(),
        alias: None,
        portal_group_tag: 1,
        chap: chap.map(Arc::new),
        allowed: Arc::new(AllowList::new(allowed.iter().map(|s| s.to_string()))),
    }
}

fn machine(algorithms: &[Algorithm], discovery: Option<ChapPolicy>) -> LoginMachine {
    LoginMachine::new(&Settings::default()).with_access(LoginAccess {
        algorithms: algorithms.to_vec(),
        discovery_chap: discovery.map(Arc::new),
        random: fixed_random,
    })
}

fn all() -> Vec<Algorithm> {
    chap::ALGORITHMS.iter().map(|d| d.algorithm).collect()
}

fn get(r: &LoginResponse, key: &str) -> Option<String> {
    text::parse(&r.data)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

fn respond(step: LoginStep) -> LoginResponse {
    match step {
        LoginStep::Respond(r) => r,
        other => panic!("expected Respond, got {other:?}"),
    }
}

fn failed(step: LoginStep) -> (status::Status, String) {
    match step {
        LoginStep::Fail(r, why) => ((r.status_class, r.status_detail), why),
        other => panic!("expected Fail, got {other:?}"),
    }
}

/// Runs the first two security exchanges; returns the challenge response's keys.
fn start_chap(
    m: &mut LoginMachine,
    find: &dyn Fn(&str) -> Option<LoginTarget>,
    chap_a: &str,
) -> LoginResponse {
    let r = respond(m.step(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.x:i"),
                ("TargetName", TARGET),
                ("AuthMethod", "CHAP,None"),
            ],
        ),
        find,
    ));
    assert_eq!(get(&r, "AuthMethod").as_deref(), Some("CHAP"));
    assert!(!r.transit, "no transit while CHAP is under way");
    respond(m.step(&req(0, 1, false, &[("CHAP_A", chap_a)]), find))
}

fn challenge_of(r: &LoginResponse) -> (Algorithm, u8, Vec<u8>) {
    let code: u32 = get(r, "CHAP_A").unwrap().parse().unwrap();
    let id = chap::parse_identifier(&get(r, "CHAP_I").unwrap()).unwrap();
    let c = chap::decode_binary(&get(r, "CHAP_C").unwrap()).unwrap();
    (Algorithm::from_code(code).unwrap(), id, c)
}

#[test]
fn one_way_chap_logs_in_and_reaches_full_feature() {
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let mut m = machine(&all(), None);
    let r = start_chap(&mut m, &find, "5");
    let (alg, id, challenge) = challenge_of(&r);
    assert_eq!((alg, id), (Algorithm::Md5, 0x11));
    assert_eq!(challenge.len(), 16);
    let answer = chap::response(alg, id, &Secret::new(ALICE_SECRET.to_vec()), &challenge);
    let r = respond(m.step(
        &req(
            0,
            1,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &chap::encode_hex(&answer))],
        ),
        &find,
    ));
    assert!(r.transit && r.nsg == 1 && r.status_class == 0);
    assert_eq!(
        get(&r, "CHAP_N"),
        None,
        "one-way: the target answers nothing"
    );
    let LoginStep::Complete(_, outcome) = m.step(&req(1, 3, true, &[]), &find) else {
        panic!("operational stage failed")
    };
    assert_eq!(outcome.chap_user.as_deref(), Some("alice"));
}

#[test]
fn mutual_chap_answers_the_initiators_challenge_with_the_target_secret() {
    let find = |_: &str| Some(target(Some(policy(true)), &[]));
    let mut m = machine(&all(), None);
    let (alg, id, challenge) = challenge_of(&start_chap(&mut m, &find, "7,6,5"));
    assert_eq!(alg, Algorithm::Sha256);
    assert_eq!(challenge.len(), 32);
    let answer = chap::response(alg, id, &Secret::new(ALICE_SECRET.to_vec()), &challenge);
    let their_challenge = [0x5au8; 24];
    let r = respond(m.step(
        &req(
            0,
            1,
            true,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &chap::encode_hex(&answer)),
                ("CHAP_I", "77"),
                ("CHAP_C", &chap::encode_hex(&their_challenge)),
            ],
        ),
        &find,
    ));
    assert!(r.transit);
    assert_eq!(get(&r, "CHAP_N").as_deref(), Some("keel-target"));
    let expected = chap::response(
        alg,
        77,
        &Secret::new(TARGET_SECRET.to_vec()),
        &their_challenge,
    );
    assert_eq!(get(&r, "CHAP_R"), Some(chap::encode_hex(&expected)));
}

#[test]
fn wrong_secret_unknown_user_and_bad_encodings_fail_with_0201() {
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let wrong = |pairs: &[(&str, &str)]| {
        let mut m = machine(&all(), None);
        start_chap(&mut m, &find, "5");
        failed(m.step(&req(0, 1, true, pairs), &find))
    };
    let (alg, id, challenge) = (Algorithm::Md5, 0x11, vec![0x11; 16]);
    let bad = chap::encode_hex(&chap::response(
        alg,
        id,
        &Secret::new(b"not-the-secret".to_vec()),
        &challenge,
    ));
    let good = chap::encode_hex(&chap::response(
        alg,
        id,
        &Secret::new(ALICE_SECRET.to_vec()),
        &challenge,
    ));
    let (s, why) = wrong(&[("CHAP_N", "alice"), ("CHAP_R", &bad)]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("wrong response"), "{why}");
    assert!(!why.contains("alice-secret"), "{why}");
    let (s, why) = wrong(&[("CHAP_N", "mallory"), ("CHAP_R", &good)]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("unknown"), "{why}");
    let (s, _) = wrong(&[("CHAP_N", "alice"), ("CHAP_R", "0xzz")]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    let (s, _) = wrong(&[("CHAP_N", "alice")]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    // The right answer in base64 is accepted too.
    let mut m = machine(&all(), None);
    start_chap(&mut m, &find, "5");
    let b64 = {
        let raw = chap::response(alg, id, &Secret::new(ALICE_SECRET.to_vec()), &challenge);
        format!("0b{}", base64(&raw))
    };
    let r = respond(m.step(
        &req(0, 1, true, &[("CHAP_N", "alice"), ("CHAP_R", &b64)]),
        &find,
    ));
    assert!(r.transit);
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
        for _ in chunk.len()..3 {
            out.push('=');
        }
    }
    out
}

#[test]
fn algorithms_are_negotiated_from_the_allowed_set() {
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let mut m = machine(&all(), None);
    let (alg, _, c) = challenge_of(&start_chap(&mut m, &find, "5,6,7,8"));
    assert_eq!((alg, c.len()), (Algorithm::Sha3_256, 32));
    let mut m = machine(&all(), None);
    let (alg, _, c) = challenge_of(&start_chap(&mut m, &find, "6,5"));
    assert_eq!((alg, c.len()), (Algorithm::Sha1, 20));
    // A FIPS-style configuration without MD5 refuses an MD5-only initiator.
    let mut m = machine(&[Algorithm::Sha256, Algorithm::Sha1], None);
    respond(m.step(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.x:i"),
                ("TargetName", TARGET),
                ("AuthMethod", "CHAP"),
            ],
        ),
        &find,
    ));
    let (s, why) = failed(m.step(&req(0, 1, false, &[("CHAP_A", "5")]), &find));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("no algorithm allowed"), "{why}");
}

#[test]
fn chap_a_may_ride_with_auth_method() {
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let mut m = machine(&all(), None);
    let r = respond(m.step(
        &req(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.x:i"),
                ("TargetName", TARGET),
                ("AuthMethod", "CHAP"),
                ("CHAP_A", "5"),
            ],
        ),
        &find,
    ));
    assert_eq!(get(&r, "AuthMethod").as_deref(), Some("CHAP"));
    assert_eq!(get(&r, "CHAP_A").as_deref(), Some("5"));
    assert!(!r.transit);
}

#[test]
fn auth_method_negotiation() {
    let chap_target = |_: &str| Some(target(Some(policy(false)), &[]));
    let open_target = |_: &str| Some(target(None, &[]));
    let first = |methods: &'static str| {
        req(
            0,
            1,
            true,
            &[
                ("InitiatorName", "iqn.x:i"),
                ("TargetName", TARGET),
                ("AuthMethod", methods),
            ],
        )
    };
    // A CHAP target and an initiator that offers None only.
    let (s, why) = failed(machine(&all(), None).step(&first("None"), &chap_target));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("requires CHAP"), "{why}");
    // An open target and an initiator offering CHAP first: None is chosen.
    let r = respond(machine(&all(), None).step(&first("CHAP,None"), &open_target));
    assert_eq!(get(&r, "AuthMethod").as_deref(), Some("None"));
    assert!(r.transit);
    // An open target and an initiator that insists on CHAP.
    let (s, _) = failed(machine(&all(), None).step(&first("CHAP"), &open_target));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    // A CHAP target: leaving the security stage without AuthMethod is refused...
    let (s, _) = failed(machine(&all(), None).step(
        &req(
            0,
            1,
            true,
            &[("InitiatorName", "iqn.x:i"), ("TargetName", TARGET)],
        ),
        &chap_target,
    ));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    // ...and so is skipping the security stage altogether.
    let (s, why) = failed(machine(&all(), None).step(
        &req(
            1,
            3,
            true,
            &[("InitiatorName", "iqn.x:i"), ("TargetName", TARGET)],
        ),
        &chap_target,
    ));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("skipped"), "{why}");
    // CHAP keys in the operational stage are a protocol error.
    let mut m = machine(&all(), None);
    let (s, _) = failed(m.step(
        &req(
            1,
            3,
            true,
            &[
                ("InitiatorName", "iqn.x:i"),
                ("TargetName", TARGET),
                ("CHAP_A", "5"),
            ],
        ),
        &open_target,
    ));
    assert_eq!(s, status::INITIATOR_ERROR);
}

#[test]
fn mutual_chap_refusals() {
    let answer = chap::encode_hex(&chap::response(
        Algorithm::Md5,
        0x11,
        &Secret::new(ALICE_SECRET.to_vec()),
        &[0x11; 16],
    ));
    let attempt = |mutual: bool, extra: &[(&str, &str)]| {
        let find = move |_: &str| Some(target(Some(policy(mutual)), &[]));
        let mut m = machine(&all(), None);
        start_chap(&mut m, &find, "5");
        let mut pairs = vec![("CHAP_N", "alice"), ("CHAP_R", answer.as_str())];
        pairs.extend_from_slice(extra);
        failed(m.step(&req(0, 1, true, &pairs), &find))
    };
    // Our own challenge reflected back.
    let ours = chap::encode_hex(&[0x11; 16]);
    let (s, why) = attempt(true, &[("CHAP_I", "1"), ("CHAP_C", &ours)]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("reflection"), "{why}");
    // Mutual CHAP asked of a target without its own credential.
    let (s, why) = attempt(false, &[("CHAP_I", "1"), ("CHAP_C", "0x0102030405")]);
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    assert!(why.contains("no target credential"), "{why}");
    // Half a challenge, a bad identifier, an oversized challenge.
    assert_eq!(
        attempt(true, &[("CHAP_I", "1")]).0,
        status::AUTHENTICATION_FAILED
    );
    assert_eq!(
        attempt(true, &[("CHAP_I", "300"), ("CHAP_C", "0x01")]).0,
        status::AUTHENTICATION_FAILED
    );
    let huge = chap::encode_hex(&[7u8; 1025]);
    assert_eq!(
        attempt(true, &[("CHAP_I", "1"), ("CHAP_C", &huge)]).0,
        status::AUTHENTICATION_FAILED
    );
}

#[test]
fn allow_lists_refuse_with_0202_and_unknown_targets_stay_0203() {
    let find = |name: &str| {
        (name == TARGET).then(|| target(None, &["iqn.2026-11.org.example:*", "iqn.x:exact"]))
    };
    let login = |initiator: &str, target_name: &str| {
        machine(&all(), None).step(
            &req(
                0,
                1,
                true,
                &[
                    ("InitiatorName", initiator),
                    ("TargetName", target_name),
                    ("AuthMethod", "None"),
                ],
            ),
            &find,
        )
    };
    assert!(matches!(
        login("iqn.x:exact", TARGET),
        LoginStep::Respond(_)
    ));
    assert!(matches!(
        login("iqn.2026-11.org.example:host7", TARGET),
        LoginStep::Respond(_)
    ));
    let (s, why) = failed(login("iqn.y:other", TARGET));
    assert_eq!(s, status::AUTHORIZATION_FAILED);
    assert!(why.contains("not allowed"), "{why}");
    let (s, _) = failed(login("iqn.y:other", "iqn.2026-11.org.example:nope"));
    assert_eq!(s, status::NOT_FOUND);
}

#[test]
fn discovery_sessions_use_the_discovery_policy() {
    let find = |_: &str| None;
    let first = req(
        0,
        1,
        true,
        &[
            ("InitiatorName", "iqn.x:i"),
            ("SessionType", "Discovery"),
            ("AuthMethod", "CHAP,None"),
        ],
    );
    // Without a discovery policy, discovery is open.
    let r = respond(machine(&all(), None).step(&first, &find));
    assert_eq!(get(&r, "AuthMethod").as_deref(), Some("None"));
    // With one, CHAP runs.
    let mut m = machine(&all(), Some(policy(false)));
    let r = respond(m.step(&first, &find));
    assert_eq!(get(&r, "AuthMethod").as_deref(), Some("CHAP"));
    let (alg, id, c) = challenge_of(&respond(
        m.step(&req(0, 1, false, &[("CHAP_A", "6")]), &find),
    ));
    let answer = chap::response(alg, id, &Secret::new(ALICE_SECRET.to_vec()), &c);
    let r = respond(m.step(
        &req(
            0,
            1,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &chap::encode_hex(&answer))],
        ),
        &find,
    ));
    assert!(r.transit);
    assert!(matches!(
        m.step(&req(1, 3, true, &[]), &find),
        LoginStep::Complete(..)
    ));
}

/// Found by fuzzing (fuzz/seeds/login/regress-continued-first-request): when the first
/// request's text came in continued PDUs, the machine did not treat the completed request as
/// the first one, so a normal session logged in without a target, past the allow list and
/// CHAP, and a discovery session past discovery CHAP.
#[test]
fn a_continued_first_request_gets_the_first_requests_checks() {
    fn continued(
        m: &mut LoginMachine,
        csg: u8,
        pairs: &[(&str, &str)],
        find: &dyn Fn(&str) -> Option<LoginTarget>,
    ) -> LoginStep {
        let full = text::encode(pairs);
        let mut head = req(csg, 3, false, &[]);
        head.continue_bit = true;
        head.data = full.slice(..10);
        assert!(matches!(m.step(&head, find), LoginStep::Respond(_)));
        let mut tail = req(csg, 3, true, &[]);
        tail.data = full.slice(10..);
        m.step(&tail, find)
    }
    let normal = [("InitiatorName", "iqn.y:other"), ("TargetName", TARGET)];

    // A CHAP target, straight to the operational stage: refused, as without the C bit.
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let (s, _) = failed(continued(&mut machine(&all(), None), 1, &normal, &find));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    // An allow list that does not name the initiator.
    let find = |_: &str| Some(target(None, &["iqn.x:*"]));
    let (s, _) = failed(continued(&mut machine(&all(), None), 0, &normal, &find));
    assert_eq!(s, status::AUTHORIZATION_FAILED);
    // An unknown target.
    let (s, _) = failed(continued(&mut machine(&all(), None), 0, &normal, &|_| None));
    assert_eq!(s, status::NOT_FOUND);
    // Discovery CHAP, skipped through the operational stage.
    let discovery = [
        ("InitiatorName", "iqn.y:other"),
        ("SessionType", "Discovery"),
    ];
    let mut m = machine(&all(), Some(policy(false)));
    let (s, _) = failed(continued(&mut m, 1, &discovery, &|_| None));
    assert_eq!(s, status::AUTHENTICATION_FAILED);
    // And the lawful case still completes, with the target named.
    let find = |_: &str| Some(target(None, &[]));
    match continued(&mut machine(&all(), None), 0, &normal, &find) {
        LoginStep::Complete(_, outcome) => {
            assert_eq!(outcome.target.map(|t| t.name).as_deref(), Some(TARGET))
        }
        other => panic!("expected Complete, got {other:?}"),
    }
}

/// Found by fuzzing (fuzz/seeds/login/regress-renamed-after-allow-list): a later request
/// could change InitiatorName after the allow list had admitted the first one's, and the
/// session then ran under the new name. Changing SessionType went further: Normal for the
/// target lookup, Discovery (open) to leave the security stage without CHAP, Normal again
/// to complete: a session on a CHAP target with no authentication at all.
#[test]
fn names_and_session_type_cannot_change_after_the_first_request() {
    let find = |_: &str| Some(target(None, &["iqn.x:*"]));
    let mut m = machine(&all(), None);
    let first = [("InitiatorName", "iqn.x:i"), ("TargetName", TARGET)];
    assert!(respond(m.step(&req(0, 1, true, &first), &find)).transit);
    let (s, why) = failed(m.step(&req(1, 3, true, &[("InitiatorName", "iqn.y:evil")]), &find));
    assert_eq!(s, status::INITIATOR_ERROR);
    assert!(why.contains("InitiatorName"), "{why}");

    // The CHAP bypass: stay in the security stage as Normal (target found, CHAP demanded),
    // then declare Discovery (open here) with AuthMethod=None and transit, then Normal again.
    // Unfixed, the third request completed a normal session with no CHAP user.
    let find = |_: &str| Some(target(Some(policy(false)), &[]));
    let mut m = machine(&all(), None);
    let r = respond(m.step(
        &req(
            0,
            1,
            false,
            &[("InitiatorName", "iqn.x:i"), ("TargetName", TARGET)],
        ),
        &find,
    ));
    assert!(!r.transit);
    let (s, _) = failed(m.step(
        &req(
            0,
            1,
            true,
            &[("SessionType", "Discovery"), ("AuthMethod", "None")],
        ),
        &find,
    ));
    assert_eq!(s, status::INITIATOR_ERROR);

    let mut m = machine(&all(), None);
    respond(m.step(&req(0, 1, true, &first), &|_| Some(target(None, &[]))));
    let (s, _) = failed(m.step(
        &req(
            1,
            3,
            true,
            &[("TargetName", "iqn.2026-11.org.example:other")],
        ),
        &|_| Some(target(None, &[])),
    ));
    assert_eq!(s, status::INITIATOR_ERROR);

    // Repeating the same declarations is harmless.
    let find = |_: &str| Some(target(None, &[]));
    let mut m = machine(&all(), None);
    respond(m.step(&req(0, 1, true, &first), &find));
    let again = [
        ("InitiatorName", "iqn.x:i"),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
    ];
    assert!(matches!(
        m.step(&req(1, 3, true, &again), &find),
        LoginStep::Complete(..)
    ));
}
