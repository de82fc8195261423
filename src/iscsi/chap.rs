//! CHAP for the iSCSI login (RFC 7143 §12.1.3, RFC 1994): the algorithm table, the encodings
//! of binary key values (RFC 7143 §6.1), challenges, and response computation and
//! verification. Pure: no I/O, and the random source is handed in by the caller.
//!
//! A CHAP response is `H(identifier || secret || challenge)` (RFC 1994 §4.1), with `H` the
//! algorithm the two sides agreed on through `CHAP_A`.

use std::fmt;

use md5::Md5;
use sha1::Sha1;
use sha2::Sha256;
use sha3::Sha3_256;
use subtle::ConstantTimeEq;

/// A CHAP hash algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Sha3_256,
}

/// One row of the algorithm table.
#[derive(Clone, Copy, Debug)]
pub struct AlgorithmDef {
    pub algorithm: Algorithm,
    /// The value of `CHAP_A`: the IANA "PPP Authentication Algorithms" numbers that RFC 7143
    /// §12.1.3 refers to (5 MD5, 6 SHA-1, 7 SHA-256, 8 SHA3-256; tgt wrongly sends SHA-1 as 7).
    pub code: u32,
    /// The name used in the configuration.
    pub name: &'static str,
    pub digest_len: usize,
}

const fn def(
    algorithm: Algorithm,
    code: u32,
    name: &'static str,
    digest_len: usize,
) -> AlgorithmDef {
    AlgorithmDef {
        algorithm,
        code,
        name,
        digest_len,
    }
}

/// The algorithms keel knows, strongest first: the order in which keel prefers them.
pub const ALGORITHMS: &[AlgorithmDef] = &[
    def(Algorithm::Sha3_256, 8, "SHA3-256", 32),
    def(Algorithm::Sha256, 7, "SHA-256", 32),
    def(Algorithm::Sha1, 6, "SHA-1", 20),
    def(Algorithm::Md5, 5, "MD5", 16),
];

/// Shortest challenge keel sends, whatever the digest size (RFC 7143 §12.1.3 recommends
/// challenges at least as long as the digest; 16 bytes is MD5's).
pub const MIN_CHALLENGE: usize = 16;

/// Longest challenge keel accepts from an initiator (RFC 7143 §12.1.3: at most 1024 bytes).
pub const MAX_CHALLENGE: usize = 1024;

impl Algorithm {
    pub fn def(self) -> &'static AlgorithmDef {
        // Every variant has a row; the fallback is unreachable but keeps this total.
        ALGORITHMS
            .iter()
            .find(|d| d.algorithm == self)
            .unwrap_or(&ALGORITHMS[0])
    }

    pub fn code(self) -> u32 {
        self.def().code
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    pub fn from_code(code: u32) -> Option<Algorithm> {
        ALGORITHMS
            .iter()
            .find(|d| d.code == code)
            .map(|d| d.algorithm)
    }

    /// By configuration name, case-insensitively, with or without the dash ("sha256").
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let squash = |s: &str| s.replace('-', "").to_ascii_lowercase();
        ALGORITHMS
            .iter()
            .find(|d| squash(d.name) == squash(name))
            .map(|d| d.algorithm)
    }

    /// How many random bytes keel's challenge has: the digest size, at least 16.
    pub fn challenge_len(self) -> usize {
        self.def().digest_len.max(MIN_CHALLENGE)
    }

    /// Position in the preference order (0 is the strongest).
    fn rank(self) -> usize {
        ALGORITHMS
            .iter()
            .position(|d| d.algorithm == self)
            .unwrap_or(usize::MAX)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CHAP secret. Its `Debug` never shows the bytes, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
        Secret(bytes.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality, for checks that two configured secrets differ.
    pub fn same_as(&self, other: &Secret) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// A CHAP name and its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub secret: Secret,
}

/// What a target (or the discovery portal) demands: CHAP as one of `users`; `mutual` is the
/// target's own credential, for initiators that authenticate the target in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapPolicy {
    pub users: Vec<Credential>,
    pub mutual: Option<Credential>,
}

impl ChapPolicy {
    pub fn user(&self, name: &str) -> Option<&Credential> {
        self.users.iter().find(|c| c.user == name)
    }
}

/// `H(id || secret || challenge)` (RFC 1994 §4.1).
pub fn response(algorithm: Algorithm, id: u8, secret: &Secret, challenge: &[u8]) -> Vec<u8> {
    fn hash<D: sha2::Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        let mut h = D::new();
        h.update([id]);
        h.update(secret);
        h.update(challenge);
        h.finalize().to_vec()
    }
    let s = secret.bytes();
    match algorithm {
        Algorithm::Md5 => hash::<Md5>(id, s, challenge),
        Algorithm::Sha1 => hash::<Sha1>(id, s, challenge),
        Algorithm::Sha256 => hash::<Sha256>(id, s, challenge),
        Algorithm::Sha3_256 => hash::<Sha3_256>(id, s, challenge),
    }
}

/// Whether `answer` is the right response, compared in constant time.
pub fn verify(
    algorithm: Algorithm,
    id: u8,
    secret: &Secret,
    challenge: &[u8],
    answer: &[u8],
) -> bool {
    let expected = response(algorithm, id, secret, challenge);
    // `ct_eq` on slices of different lengths is false (the length is not secret).
    expected.as_slice().ct_eq(answer).into()
}

/// Picks the algorithm for a `CHAP_A` list (RFC 7143 §12.1.3: the initiator offers a list,
/// the target answers one of its values): the strongest one offered that is allowed.
/// Values that are not numbers or not known are skipped, as RFC 7143 §6.2 asks of list items.
pub fn choose(offered: &str, allowed: &[Algorithm]) -> Option<Algorithm> {
    offered
        .split(',')
        .filter_map(|v| super::params::parse_number(v.trim()))
        .filter_map(Algorithm::from_code)
        .filter(|a| allowed.contains(a))
        .min_by_key(|a| a.rank())
}

/// Parses `CHAP_I`: a number 0..255, decimal or `0x` hex (RFC 7143 §12.1.3, §6.1).
pub fn parse_identifier(value: &str) -> Option<u8> {
    super::params::parse_number(value.trim()).and_then(|n| u8::try_from(n).ok())
}

/// Decodes a binary value (RFC 7143 §6.1): `0x`/`0X` hex or `0b`/`0B` base64. An odd number
/// of hex digits reads as if it had a leading zero.
pub fn decode_binary(value: &str) -> Result<Vec<u8>, &'static str> {
    let (prefix, body) = value.split_at_checked(2).ok_or("too short")?;
    match prefix {
        "0x" | "0X" => decode_hex(body),
        "0b" | "0B" => decode_base64(body),
        _ => Err("not 0x (hex) or 0b (base64)"),
    }
}

fn decode_hex(body: &str) -> Result<Vec<u8>, &'static str> {
    let digits: Vec<u8> = body
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8).ok_or("not a hex digit"))
        .collect::<Result<_, _>>()?;
    if digits.is_empty() {
        return Err("no digits");
    }
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let (head, rest) = digits.split_at(digits.len() % 2);
    out.extend(head.iter().copied());
    out.extend(rest.chunks_exact(2).map(|p| (p[0] << 4) | p[1]));
    Ok(out)
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn decode_base64(body: &str) -> Result<Vec<u8>, &'static str> {
    let body = body.trim_end_matches('=');
    if body.is_empty() {
        return Err("no digits");
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in body.bytes() {
        let v = BASE64
            .iter()
            .position(|&b| b == c)
            .ok_or("not a base64 digit")? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing digit carries fewer than 8 bits: not a valid encoding.
    if bits >= 6 {
        return Err("truncated base64");
    }
    Ok(out)
}

/// Encodes bytes as a `0x` hex binary value, the form every initiator reads.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A random source: fills the buffer, or says it could not.
pub type Random = fn(&mut [u8]) -> bool;

/// The operating system's random generator.
pub fn os_random(buf: &mut [u8]) -> bool {
    getrandom::fill(buf).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"keel-chap-secret".to_vec())
    }

    /// Reference values computed independently with Python's hashlib:
    /// `hashlib.new(name, bytes([0x2a]) + b"keel-chap-secret" + bytes(range(16))).hexdigest()`
    const VECTORS: &[(Algorithm, &str)] = &[
        (Algorithm::Md5, "99e9e4093de03f3a1a61b4d73a345765"),
        (Algorithm::Sha1, "d287813981ed8f4f5f08385e65607f570576ef64"),
        (
            Algorithm::Sha256,
            "66b71997712aaf5e5707bb80dfcb715c77b0d317916acd22ca9ea40937409050",
        ),
        (
            Algorithm::Sha3_256,
            "d4cb2930c508431a4ea113ae6c0b343c9ca80ba4bf211a4cd40869b4716c62b4",
        ),
    ];

    #[test]
    fn responses_match_independent_vectors() {
        let challenge: Vec<u8> = (0..16).collect();
        for (alg, hex) in VECTORS {
            let r = response(*alg, 0x2a, &secret(), &challenge);
            assert_eq!(encode_hex(&r), format!("0x{hex}"), "{alg}");
            assert_eq!(r.len(), alg.def().digest_len);
            assert!(verify(*alg, 0x2a, &secret(), &challenge, &r));
            let mut wrong = r.clone();
            wrong[0] ^= 1;
            assert!(!verify(*alg, 0x2a, &secret(), &challenge, &wrong));
            assert!(!verify(*alg, 0x2b, &secret(), &challenge, &r));
            assert!(!verify(
                *alg,
                0x2a,
                &secret(),
                &challenge,
                &r[..r.len() - 1]
            ));
        }
    }

    #[test]
    fn the_table_numbers_are_iana() {
        assert_eq!(Algorithm::Md5.code(), 5);
        assert_eq!(Algorithm::Sha1.code(), 6);
        assert_eq!(Algorithm::Sha256.code(), 7);
        assert_eq!(Algorithm::Sha3_256.code(), 8);
        assert_eq!(Algorithm::from_name("sha256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("SHA3-256"), Some(Algorithm::Sha3_256));
        assert_eq!(Algorithm::from_name("md4"), None);
        assert_eq!(Algorithm::Md5.challenge_len(), 16);
        assert_eq!(Algorithm::Sha1.challenge_len(), 20);
        assert_eq!(Algorithm::Sha3_256.challenge_len(), 32);
    }

    #[test]
    fn the_strongest_allowed_algorithm_is_chosen_from_a_list() {
        let all: Vec<Algorithm> = ALGORITHMS.iter().map(|d| d.algorithm).collect();
        assert_eq!(choose("5", &all), Some(Algorithm::Md5));
        assert_eq!(choose("7,6,5", &all), Some(Algorithm::Sha256));
        assert_eq!(choose("5,6,7,8", &all), Some(Algorithm::Sha3_256));
        assert_eq!(choose("5, 0x6", &all), Some(Algorithm::Sha1));
        assert_eq!(choose("99,foo,5", &all), Some(Algorithm::Md5));
        let no_md5 = [Algorithm::Sha256, Algorithm::Sha1];
        assert_eq!(choose("5", &no_md5), None);
        assert_eq!(choose("8,5", &no_md5), None);
        assert_eq!(choose("", &all), None);
    }

    #[test]
    fn binary_values_in_hex_and_base64() {
        assert_eq!(decode_binary("0x00ff10"), Ok(vec![0, 0xff, 0x10]));
        assert_eq!(decode_binary("0XABC"), Ok(vec![0x0a, 0xbc]));
        assert_eq!(
            decode_binary("0bAAECAwQFBgcICQoLDA0ODw=="),
            Ok((0..16).collect())
        );
        assert_eq!(
            decode_binary("0BAAECAwQFBgcICQoLDA0ODw"),
            Ok((0..16).collect())
        );
        assert_eq!(decode_binary("0bYWJj"), Ok(b"abc".to_vec()));
        assert!(decode_binary("0x").is_err());
        assert!(decode_binary("0xzz").is_err());
        assert!(decode_binary("1234").is_err());
        assert!(decode_binary("0b!!").is_err());
        assert!(decode_binary("0bA").is_err());
        assert!(decode_binary("").is_err());
        assert!(decode_binary("0é").is_err());
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    #[test]
    fn identifiers() {
        assert_eq!(parse_identifier("0"), Some(0));
        assert_eq!(parse_identifier("255"), Some(255));
        assert_eq!(parse_identifier("0x2a"), Some(42));
        assert_eq!(parse_identifier("256"), None);
        assert_eq!(parse_identifier("x"), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credential {
            user: "alice".into(),
            secret: secret(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("keel-chap-secret"), "{shown}");
        assert!(shown.contains("alice"));
    }
}
