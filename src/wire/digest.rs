//! CRC32C header and data digests (RFC 7143 §11.1, §13.1 test vectors in the tests below).
//!
//! The digest goes on the wire least significant byte first, as Linux and libiscsi send it
//! (the RFC's example for 32 zero bytes reads `aa 36 91 8a`).

/// CRC32C (Castagnoli) of the given slices, in order; hardware-accelerated where available.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part))
}

/// The 4 digest bytes as they appear on the wire.
pub fn digest_bytes(parts: &[&[u8]]) -> [u8; 4] {
    crc32c(parts).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_test_vectors() {
        // RFC 3720 Appendix B.4 (kept in RFC 7143): CRC of 32 bytes of zeros and of ones.
        assert_eq!(digest_bytes(&[&[0u8; 32]]), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(digest_bytes(&[&[0xffu8; 32]]), [0x43, 0xab, 0xa8, 0x62]);
        let incrementing: Vec<u8> = (0u8..32).collect();
        assert_eq!(digest_bytes(&[&incrementing]), [0x4e, 0x79, 0xdd, 0x46]);
    }

    #[test]
    fn split_input_gives_the_same_crc() {
        let data: Vec<u8> = (0..100u8).collect();
        assert_eq!(crc32c(&[&data]), crc32c(&[&data[..37], &data[37..]]));
    }
}
