//! Text keys (src/wire/text.rs) and their negotiation (src/iscsi/params.rs), the CHAP value
//! parsers (src/iscsi/chap.rs) and the Text Request/Response exchange
//! (src/iscsi/text_exchange.rs).
//!
//! Input: byte 0 picks the settings, discovery or normal, and how the text is cut into
//! continued Text Requests; byte 1 the MaxRecvDataSegmentLength for the answer; the rest is
//! a text data segment.
//!
//! Invariants: parsed pairs are well formed and survive encode and parse; every negotiated
//! answer is a value the key allows (numbers inside the key's range and not beyond what
//! either side offered, digests one of the offered ones); FirstBurstLength never exceeds
//! MaxBurstLength after `finish`; hex CHAP values survive decode, encode, decode; a text
//! request collected from continued parts is the concatenation of the parts, and a long
//! answer comes back in parts no longer than the limit that concatenate to it.
#![no_main]

use bytes::Bytes;
use keel::iscsi::Settings;
use keel::iscsi::auth::AuthKeys;
use keel::iscsi::chap::{self, ALGORITHMS, Algorithm};
use keel::iscsi::params::{self, Answer, Negotiated, Rule};
use keel::iscsi::text_exchange::{TextExchange, TextStep};
use keel::wire::{RESERVED_TAG, text};
use libfuzzer_sys::fuzz_target;

fn settings(variant: u8) -> Settings {
    let d = Settings::default();
    match variant % 3 {
        0 => d,
        1 => Settings {
            max_recv_data_segment_length: 8192,
            max_burst_length: 65_536,
            first_burst_length: 65_536,
            max_outstanding_r2t: 1,
            immediate_data: false,
            initial_r2t: true,
            ..d
        },
        _ => Settings {
            max_recv_data_segment_length: 16_777_215,
            max_burst_length: 16_777_215,
            first_burst_length: 512,
            max_outstanding_r2t: 65_535,
            ..d
        },
    }
}

fn check_answer(key: &str, value: &str, rule: Rule, answer: &Answer, discovery: bool) {
    let Answer::Reply(reply) = answer else {
        assert!(
            matches!(rule, Rule::Declare | Rule::Login),
            "{key} was silent"
        );
        return;
    };
    if reply == "Reject" || (discovery && reply == "Irrelevant") {
        return;
    }
    match rule {
        Rule::And | Rule::Or => assert!(reply == "Yes" || reply == "No", "{key}={reply}"),
        Rule::Min { lo, hi } | Rule::Max { lo, hi } => {
            let n: u32 = reply
                .parse()
                .unwrap_or_else(|_| panic!("{key}={reply} is not a number"));
            let theirs = params::parse_number(value).expect("accepted an unparsable offer");
            assert!((lo..=hi).contains(&theirs), "{key}: accepted {theirs}");
            if matches!(rule, Rule::Min { .. }) {
                assert!(n <= theirs, "{key}: answered {n} above the offer {theirs}");
            } else {
                assert!(n >= theirs, "{key}: answered {n} below the offer {theirs}");
            }
        }
        Rule::Digest => {
            assert!(reply == "CRC32C" || reply == "None", "{key}={reply}");
            assert!(
                value.split(',').any(|v| v.trim() == reply),
                "{key}: answered {reply}, not offered in {value:?}"
            );
        }
        Rule::Fixed(fixed) => assert_eq!(reply, fixed),
        Rule::Declare | Rule::Login => panic!("{key} answered {reply}"),
    }
}

fn chap_values(value: &str) {
    if let Ok(bytes) = chap::decode_binary(value) {
        let hex = chap::encode_hex(&bytes);
        assert_eq!(chap::decode_binary(&hex).as_deref(), Ok(&bytes[..]));
    }
    let _ = chap::parse_identifier(value);
    let all: Vec<Algorithm> = ALGORITHMS.iter().map(|d| d.algorithm).collect();
    for allowed in [&all[..], &all[3..], &all[..1]] {
        if let Some(a) = chap::choose(value, allowed) {
            assert!(allowed.contains(&a));
            assert!(
                value
                    .split(',')
                    .filter_map(|v| params::parse_number(v.trim()))
                    .any(|c| c == a.code()),
                "chose {a} which {value:?} does not offer"
            );
        }
    }
}

fn exchange(cfg: u8, max_segment: u32, data: &[u8]) {
    // Cut the text into continued requests; each echoes the TTT the previous answer gave.
    let cut = 1 + usize::from(cfg >> 4) * 97;
    let mut x = TextExchange::default();
    let mut ttt = RESERVED_TAG;
    let parts: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(cut).collect()
    };
    let mut request = None;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match x.receive(!last, ttt, &Bytes::copy_from_slice(part), 100 + i as u32) {
            TextStep::NeedMore(t) => {
                assert!(!last);
                ttt = t;
            }
            TextStep::Request(r) => {
                assert!(last);
                request = Some(r);
            }
            other => panic!("part {i} gave {other:?}"),
        }
    }
    let request = request.expect("the last part completes the request");
    assert_eq!(&request[..], data);

    // Answer with the request itself, three times over, in parts.
    let answer = Bytes::from([data, data, data].concat());
    let limit = (max_segment as usize).max(512);
    let mut chunk = x.respond(answer.clone(), max_segment, 7);
    let mut got = Vec::new();
    for _ in 0..=answer.len() / 512 + 1 {
        assert!(chunk.data.len() <= limit);
        got.extend_from_slice(&chunk.data);
        if chunk.final_bit {
            break;
        }
        assert!(chunk.continue_bit && chunk.ttt == 7);
        assert_eq!(x.receive(false, 7, &Bytes::new(), 8), TextStep::Continue);
        chunk = x.next_chunk(max_segment);
    }
    assert!(chunk.final_bit, "the answer never ended");
    assert_eq!(got, answer);
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let cfg = input[0];
    let max_segment = u32::from(input[1]) * 64;
    let data = &input[2..];
    let settings = settings(cfg & 3);
    let discovery = cfg & 4 != 0;

    if data.len() <= 64 * 1024 {
        exchange(cfg, max_segment, data);
    }

    let Ok(pairs) = text::parse(data) else {
        return;
    };
    for (k, v) in &pairs {
        assert!(!k.is_empty() && k.len() <= text::MAX_KEY_LEN);
        assert!(!k.contains('=') && !k.contains('\0') && !v.contains('\0'));
        assert!(v.len() <= text::MAX_VALUE_LEN);
    }
    let encoded = text::encode(&pairs);
    assert_eq!(text::parse(&encoded).as_ref(), Ok(&pairs));

    let mut n = Negotiated::defaults(&settings);
    let mut auth = AuthKeys::default();
    for (k, v) in &pairs {
        if auth.take(k, v) {
            chap_values(v);
            continue;
        }
        let Some(def) = params::lookup(k) else {
            continue;
        };
        let answer = params::negotiate(def, v, discovery, &settings, &mut n);
        check_answer(k, v, def.rule, &answer, discovery);
    }
    params::finish(&mut n);
    assert!(n.first_burst <= n.max_burst);
    assert!((512..=16_777_215).contains(&n.initiator_max_recv));
    assert!(n.error_recovery_level == 0 && n.max_connections == 1);
});
