//! Text keys (RFC 7143 §6.1): `key=value` pairs, each ended by a NUL, in Login and Text
//! data segments.

use bytes::{BufMut, Bytes, BytesMut};

/// Longest key name (§6.1: up to 63 bytes).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value accepted (§6.1: 255 bytes for most keys, 8192 for a few such as CHAP
/// challenges; we accept the larger everywhere and let each key check its own).
pub const MAX_VALUE_LEN: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text key without '=': {0:?}")]
    MissingEquals(String),
    #[error("text key too long or empty: {0:?}")]
    BadKey(String),
    #[error("value of {0} is too long")]
    ValueTooLong(String),
    #[error("text data is not valid UTF-8")]
    NotUtf8,
}

/// Parses a text data segment into ordered pairs. A missing final NUL is tolerated (Windows
/// counts the final NUL in the length, others may not); empty strings between NULs are
/// skipped.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut pairs = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        let item = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| TextError::MissingEquals(truncate(item)))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(TextError::BadKey(truncate(key)));
        }
        if value.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong(key.to_string()));
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Encodes pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in pairs {
        out.put_slice(k.as_ref().as_bytes());
        out.put_u8(b'=');
        out.put_slice(v.as_ref().as_bytes());
        out.put_u8(0);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_pairs_with_and_without_final_nul() {
        let got = parse(b"InitiatorName=iqn.x\0SessionType=Normal").unwrap();
        assert_eq!(got[0], ("InitiatorName".into(), "iqn.x".into()));
        assert_eq!(got[1], ("SessionType".into(), "Normal".into()));
        assert_eq!(parse(b"A=\0\0").unwrap(), vec![("A".into(), "".into())]);
    }

    #[test]
    fn rejects_malformed_items() {
        assert!(matches!(
            parse(b"NoEquals\0"),
            Err(TextError::MissingEquals(_))
        ));
        assert!(matches!(parse(b"=v\0"), Err(TextError::BadKey(_))));
        let long_key = format!("{}=1", "K".repeat(64));
        assert!(matches!(
            parse(long_key.as_bytes()),
            Err(TextError::BadKey(_))
        ));
        assert!(matches!(
            parse(&[0xff, b'=', b'1']),
            Err(TextError::NotUtf8)
        ));
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9.-]{0,20}", "[ -~&&[^=]]{0,40}"), 0..10)) {
            let bytes = encode(&pairs);
            let parsed = parse(&bytes).unwrap();
            let expected: Vec<(String, String)> = pairs.into_iter().collect();
            prop_assert_eq!(parsed, expected);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&data);
        }
    }
}
