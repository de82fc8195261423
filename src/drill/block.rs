//! The blocks the drill writes describe themselves, so that a read-back needs nothing but the
//! ledger to tell intact, lost and corrupted apart.
//!
//! Layout (big-endian), one logical block each:
//!
//! | bytes  | field                                                          |
//! |--------|----------------------------------------------------------------|
//! | 0..8   | magic `KEELDRIL`                                               |
//! | 8..16  | the LBA the block was written to                               |
//! | 16..24 | the write's sequence number (unique within a run)              |
//! | 24..32 | the run id (random per drill run)                              |
//! | 32..36 | CRC32C of the whole block with these four bytes taken as zero  |
//! | 36..   | filler, a xorshift stream seeded from (lba, seq)               |

/// The first eight bytes of every drill block.
pub const MAGIC: [u8; 8] = *b"KEELDRIL";
/// Bytes of header before the filler.
pub const HEADER_LEN: usize = 36;
const CRC_AT: usize = 32;

/// What one write put in one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub lba: u64,
    pub seq: u64,
    pub run: u64,
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// All zeros: never written (or written by something that wrote zeros).
    Blank,
    /// A well-formed drill block for the LBA it was read from.
    Drill(Stamp),
    /// Anything else.
    Damaged(Damage),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Not zeros and no drill magic: foreign or garbled data.
    NoMagic,
    /// The magic is there but the CRC does not match the contents.
    BadCrc,
    /// A well-formed drill block, but written for another LBA (misdirected write or read).
    WrongLba(u64),
    /// The read returned fewer bytes than a block.
    Short(usize),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::NoMagic => write!(f, "neither zeros nor a drill block"),
            Damage::BadCrc => write!(f, "drill block with a bad CRC"),
            Damage::WrongLba(lba) => write!(f, "drill block of LBA {lba}"),
            Damage::Short(n) => write!(f, "short read ({n} bytes)"),
        }
    }
}

/// The block `stamp` describes, `block_len` bytes (at least [`HEADER_LEN`]).
pub fn encode(stamp: Stamp, block_len: usize) -> Vec<u8> {
    let mut block = vec![0u8; block_len.max(HEADER_LEN)];
    block[0..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&stamp.lba.to_be_bytes());
    block[16..24].copy_from_slice(&stamp.seq.to_be_bytes());
    block[24..32].copy_from_slice(&stamp.run.to_be_bytes());
    fill(&mut block[HEADER_LEN..], stamp.lba, stamp.seq);
    let crc = crc_of(&block);
    block[CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    block
}

/// Reads back a block that was read from `lba`.
pub fn decode(block: &[u8], lba: u64, block_len: usize) -> Content {
    if block.len() < block_len || block.len() < HEADER_LEN {
        return Content::Damaged(Damage::Short(block.len()));
    }
    let block = &block[..block_len];
    if block[0..8] != MAGIC {
        return if block.iter().all(|&b| b == 0) {
            Content::Blank
        } else {
            Content::Damaged(Damage::NoMagic)
        };
    }
    let stored = u32::from_be_bytes([block[32], block[33], block[34], block[35]]);
    if stored != crc_of(block) {
        return Content::Damaged(Damage::BadCrc);
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&block[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let written_for = field(8);
    if written_for != lba {
        return Content::Damaged(Damage::WrongLba(written_for));
    }
    Content::Drill(Stamp {
        lba,
        seq: field(16),
        run: field(24),
    })
}

/// CRC32C of the block with the CRC field counted as zeros.
fn crc_of(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &block[HEADER_LEN..])
}

/// Deterministic filler: a block's bytes follow from its (lba, seq) alone.
fn fill(out: &mut [u8], lba: u64, seq: u64) {
    let mut x =
        (lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seq.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)) | 1;
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        lba: 77,
        seq: 1234,
        run: 0xfeed,
    };

    #[test]
    fn a_block_reads_back_as_its_stamp() {
        for len in [512, 4096, 520] {
            let block = encode(STAMP, len);
            assert_eq!(block.len(), len);
            assert_eq!(decode(&block, 77, len), Content::Drill(STAMP));
        }
    }

    #[test]
    fn the_filler_depends_on_lba_and_seq() {
        let a = encode(STAMP, 4096);
        let b = encode(Stamp { seq: 1235, ..STAMP }, 4096);
        let c = encode(Stamp { lba: 78, ..STAMP }, 4096);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..]);
        assert_eq!(a, encode(STAMP, 4096), "deterministic");
    }

    #[test]
    fn zeros_are_blank_and_other_data_is_damage() {
        assert_eq!(decode(&[0u8; 512], 3, 512), Content::Blank);
        let mut junk = vec![0u8; 512];
        junk[100] = 1;
        assert_eq!(decode(&junk, 3, 512), Content::Damaged(Damage::NoMagic));
    }

    #[test]
    fn a_flipped_bit_anywhere_is_a_bad_crc() {
        for at in [9, 20, 30, 33, 40, 511] {
            let mut block = encode(STAMP, 512);
            block[at] ^= 0x10;
            let got = decode(&block, 77, 512);
            // Flipping a bit of the LBA field is caught by the CRC before the LBA check.
            assert_eq!(got, Content::Damaged(Damage::BadCrc), "bit at {at}");
        }
    }

    #[test]
    fn a_block_of_another_lba_is_misplaced() {
        let block = encode(STAMP, 512);
        assert_eq!(
            decode(&block, 78, 512),
            Content::Damaged(Damage::WrongLba(77))
        );
    }

    #[test]
    fn a_short_read_is_damage() {
        let block = encode(STAMP, 512);
        assert_eq!(
            decode(&block[..100], 77, 512),
            Content::Damaged(Damage::Short(100))
        );
    }
}
