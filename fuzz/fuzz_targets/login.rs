//! The sans-IO login state machine (src/iscsi/login.rs, with src/iscsi/auth.rs and
//! chap.rs) driven by a sequence of arbitrary Login Requests, with and without CHAP.
//!
//! Input: byte 0 picks the configuration (bits 0-1: no CHAP, one-way CHAP, mutual CHAP on
//! the target; bit 2: CHAP on discovery; bit 3: an allow list on the target; bits 4-5: the
//! CHAP algorithms allowed; bit 6: a random source that fails). The rest is a byte stream
//! framed as on the wire (login limits); each Login Request in it goes to the machine until
//! it completes or fails. Challenges are deterministic (every random byte is 0x11, as in
//! src/iscsi/login_auth_tests.rs), so a seed can carry the right CHAP_R and the fuzzer can
//! explore past authentication.
//!
//! Invariants: every response echoes the request's ITT and ISID, carries well-formed text,
//! and survives encode and decode as a Login Response; a failure has a non-zero status
//! class and no transit; a continuing response has status 0; a completed login went to the
//! full feature phase, names a target for a normal session, and, whenever the target (or
//! the discovery portal) demands CHAP, names a user of its policy: nobody gets in without
//! authenticating, and nobody not on the allow list gets in at all.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use keel::iscsi::Settings;
use keel::iscsi::access::AllowList;
use keel::iscsi::chap::{ALGORITHMS, Algorithm, ChapPolicy, Credential, Secret};
use keel::iscsi::login::{
    FULL_FEATURE_PHASE, LoginAccess, LoginMachine, LoginStep, LoginTarget, SessionType,
};
use keel::wire::{FrameLimits, LoginResponse, PduCodec, Reply, Request, text};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const TARGET: &str = "iqn.2026-11.org.example:disk0";
const MAX_REQUESTS: usize = 64;

fn fixed_random(buf: &mut [u8]) -> bool {
    buf.fill(0x11);
    true
}

fn failing_random(_: &mut [u8]) -> bool {
    false
}

fn policy(mutual: bool) -> ChapPolicy {
    ChapPolicy {
        users: vec![
            Credential {
                user: "alice".into(),
                secret: Secret::new(b"alice-secret-123".to_vec()),
            },
            Credential {
                user: "bob".into(),
                secret: Secret::new(b"bob-secret-4567890".to_vec()),
            },
        ],
        mutual: mutual.then(|| Credential {
            user: "keel-target".into(),
            secret: Secret::new(b"target-secret-456".to_vec()),
        }),
    }
}

fn algorithms(sel: u8) -> Vec<Algorithm> {
    let all: Vec<Algorithm> = ALGORITHMS.iter().map(|d| d.algorithm).collect();
    match sel & 3 {
        0 => all,
        1 => vec![Algorithm::Md5],
        2 => vec![Algorithm::Sha256, Algorithm::Sha3_256],
        _ => vec![Algorithm::Sha1],
    }
}

fn check_response(r: &LoginResponse, itt: u32, isid: [u8; 6]) {
    assert_eq!(r.itt, itt);
    assert_eq!(r.isid, isid);
    assert!(
        text::parse(&r.data).is_ok(),
        "keel sent malformed text: {:?}",
        r.data
    );
    let out = Reply::Login(r.clone()).encode();
    assert_eq!(
        Reply::decode(&out.header, r.data.clone()),
        Ok(Reply::Login(r.clone()))
    );
}

fuzz_target!(|input: &[u8]| {
    let Some((&cfg, stream)) = input.split_first() else {
        return;
    };
    let target_chap = match cfg & 3 {
        1 => Some(Arc::new(policy(false))),
        2 => Some(Arc::new(policy(true))),
        _ => None,
    };
    let discovery_chap = (cfg & 4 != 0).then(|| Arc::new(policy(false)));
    let allowed = if cfg & 8 != 0 {
        AllowList::new(["iqn.1993-08.org.debian:*".to_string()])
    } else {
        AllowList::default()
    };
    let allowed = Arc::new(allowed);
    let target = LoginTarget {
        name: TARGET.into(),
        alias: Some("disk0".into()),
        portal_group_tag: 1,
        chap: target_chap.clone(),
        allowed: Arc::clone(&allowed),
    };
    let find = |name: &str| (name == TARGET).then(|| target.clone());
    let access = LoginAccess {
        algorithms: algorithms(cfg >> 4),
        discovery_chap: discovery_chap.clone(),
        random: if cfg & 0x40 != 0 {
            failing_random
        } else {
            fixed_random
        },
    };
    let mut machine = LoginMachine::new(&Settings::default()).with_access(access);

    let mut codec = PduCodec::new(FrameLimits::LOGIN);
    let mut buf = BytesMut::from(stream);
    for _ in 0..MAX_REQUESTS {
        let raw = match codec.decode(&mut buf) {
            Ok(Some(raw)) => raw,
            _ => return,
        };
        let Ok(Request::Login(req)) = Request::decode(&raw.bhs, &raw.ahs, raw.data) else {
            continue;
        };
        match machine.step(&req, &find) {
            LoginStep::Respond(r) => {
                check_response(&r, req.itt, req.isid);
                assert_eq!((r.status_class, r.status_detail), (0, 0));
                assert!(!r.transit || r.nsg > req.csg, "transit to {}", r.nsg);
            }
            LoginStep::Fail(r, why) => {
                check_response(&r, req.itt, req.isid);
                assert_ne!(r.status_class, 0, "failure with success status: {why}");
                assert!(!r.transit);
                return;
            }
            LoginStep::Complete(r, outcome) => {
                check_response(&r, req.itt, req.isid);
                assert_eq!((r.status_class, r.status_detail), (0, 0));
                assert!(r.transit && r.nsg == FULL_FEATURE_PHASE);
                assert!(!outcome.initiator_name.is_empty());
                let demanded = match outcome.session_type {
                    SessionType::Discovery => {
                        assert!(outcome.target.is_none());
                        discovery_chap.as_deref()
                    }
                    SessionType::Normal => {
                        let t = outcome
                            .target
                            .as_ref()
                            .expect("a normal session names a target");
                        assert_eq!(t.name, TARGET);
                        assert!(
                            allowed.permits(&outcome.initiator_name),
                            "{:?} got past the allow list",
                            outcome.initiator_name
                        );
                        target_chap.as_deref()
                    }
                };
                if let Some(policy) = demanded {
                    let user = outcome
                        .chap_user
                        .as_deref()
                        .expect("logged in without CHAP where CHAP is demanded");
                    assert!(policy.user(user).is_some(), "unknown CHAP user {user:?}");
                }
                let p = outcome.params;
                assert!(p.first_burst <= p.max_burst);
                return;
            }
        }
    }
});
