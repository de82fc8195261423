//! The limits a logical unit announces in the block limits VPD page (SBC-4 §6.6.4) and
//! enforces on the commands they bound. State-side: the atomic journal sizes its records by
//! them and the transport sizes its write buffers by them, neither of which may import the
//! command handlers. Leaf of `unit/`: a unit asks for its own limits
//! ([`LogicalUnit::atomic_limits`](super::lu::LogicalUnit::atomic_limits)), never the reverse.

use crate::scsi::sense::Sense;

/// Largest single READ/WRITE accepted, in bytes (reported in the block limits VPD page as
/// MAXIMUM TRANSFER LENGTH in blocks). Bounds the memory one command can pin.
pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;

/// MAXIMUM COMPARE AND WRITE LENGTH in the block limits page (SBC-4 §6.6.4): the CDB field is
/// one byte, so 255 at most; also bounded so that the 2 × N blocks of data fit the maximum
/// transfer.
pub fn max_compare_and_write_blocks(block_size: u32) -> u8 {
    let fit = MAX_TRANSFER_BYTES / block_size.max(1) / 2;
    u8::try_from(fit).unwrap_or(MAX_COMPARE_AND_WRITE_BLOCKS)
}

/// Upper bound for [`max_compare_and_write_blocks`].
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

/// MAXIMUM WRITE SAME LENGTH bound in bytes. Writes go out in 1 MiB pieces, so this
/// bounds the time one command takes, not memory.
pub const MAX_WRITE_SAME_BYTES: u64 = 1 << 30;

/// MAXIMUM WRITE SAME LENGTH bound in blocks: FFFFh, the most WRITE SAME(10) can express,
/// so that both CDB sizes share one limit.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;

/// MAXIMUM WRITE SAME LENGTH in blocks (SBC-4 §6.6.4).
pub fn max_write_same_blocks(block_size: u32) -> u64 {
    (MAX_WRITE_SAME_BYTES / u64::from(block_size.max(1))).min(MAX_WRITE_SAME_BLOCKS)
}

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// MAXIMUM UNMAP LBA COUNT, in bytes (reported in blocks): 512 MiB keeps the count at or
/// below 2^20 blocks for 512-byte blocks, which libiscsi's Inquiry.BlockLimits calls sane.
pub const MAX_UNMAP_BYTES: u64 = 512 << 20;

/// Optimal transfer length granularity reported in the block limits page, in blocks.
pub const OPTIMAL_GRANULARITY_BLOCKS: u16 = 8;

/// MAXIMUM ATOMIC TRANSFER LENGTH, in bytes: 256 blocks of 4096 bytes, 2048 of 512. Bounds
/// what one journal record holds.
pub const MAX_ATOMIC_BYTES: u64 = 1 << 20;

/// The atomic write fields of the block limits VPD page (SBC-4 §6.6.4), in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicLimits {
    pub max_blocks: u32,
    pub alignment: u32,
    pub granularity: u32,
}

impl AtomicLimits {
    /// The limits for `block_size`-byte blocks, `lbppb` of them per physical block.
    pub fn new(block_size: u32, lbppb: u32) -> Self {
        let unit = lbppb.max(1);
        let bytes = MAX_ATOMIC_BYTES.min(u64::from(MAX_TRANSFER_BYTES));
        let fit = u32::try_from(bytes / u64::from(block_size.max(1))).unwrap_or(u32::MAX);
        // TRANSFER LENGTH is a 16-bit field; the maximum is a whole number of granules.
        let max_blocks = fit.min(u32::from(u16::MAX)) / unit * unit;
        AtomicLimits {
            max_blocks,
            alignment: unit,
            granularity: unit,
        }
    }

    /// Bytes 44..64 of the block limits page: MAXIMUM ATOMIC TRANSFER LENGTH, ATOMIC
    /// ALIGNMENT, ATOMIC TRANSFER LENGTH GRANULARITY, and the two boundary fields (0: atomic
    /// boundaries are not supported).
    pub fn page_fields(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.max_blocks.to_be_bytes());
        b[4..8].copy_from_slice(&self.alignment.to_be_bytes());
        b[8..12].copy_from_slice(&self.granularity.to_be_bytes());
        b
    }

    /// SBC-4 §4.29.2: the starting LBA must be a multiple of the alignment and the length a
    /// multiple of the granularity, at most the maximum (INVALID FIELD IN CDB otherwise,
    /// pointing at the LOGICAL BLOCK ADDRESS or TRANSFER LENGTH field).
    pub fn check(&self, lba: u64, blocks: u32) -> Result<(), Sense> {
        if self.alignment > 1 && !lba.is_multiple_of(u64::from(self.alignment)) {
            return Err(Sense::invalid_field_in_cdb(2, Some(7)));
        }
        if (self.granularity > 1 && !blocks.is_multiple_of(self.granularity))
            || blocks > self.max_blocks
        {
            return Err(Sense::invalid_field_in_cdb(12, Some(7)));
        }
        Ok(())
    }
}
