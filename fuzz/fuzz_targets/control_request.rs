//! The control socket's request parser (src/admin/protocol.rs).
//!
//! Input: one request line, any bytes (the socket hands the parser at most 64 KiB).
//!
//! Invariants: the parser never panics; an error carries a code with a wire name and a
//! non-empty message, and its reply is one valid JSON line that reads back as the same error
//! with the same id; an accepted command encodes to one request line that parses back to the
//! same id and command, and its target and LUN specs convert to TOML tables.
#![no_main]

use keel::admin::ErrorCode;
use keel::admin::protocol::{
    Command, encode_reply, encode_request, parse_reply, parse_request, to_toml_table,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    match parse_request(line) {
        Err((id, error)) => {
            assert!(ErrorCode::from_name(error.code.as_str()) == Some(error.code));
            assert!(!error.message.is_empty());
            let reply = encode_reply(id, &Err(error.clone()));
            assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(reply.last(), Some(&b'\n'));
            assert_eq!(parse_reply(&reply), Ok((id, Err(error))));
        }
        Ok((id, command)) => {
            let encoded = encode_request(id, &command);
            assert_eq!(encoded.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(parse_request(&encoded), Ok((id, command.clone())));
            match &command {
                Command::TargetAdd { target } => assert!(to_toml_table(target).is_ok()),
                Command::LunAdd { lun, .. } => assert!(to_toml_table(lun).is_ok()),
                _ => {}
            }
        }
    }
});
