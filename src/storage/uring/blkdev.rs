//! Block-device ioctls that neither io_uring nor the safe wrappers offer (kept here because
//! this engine is the storage layer's one home for `unsafe`). Both engines call these on
//! tokio's blocking pool: the kernel runs a discard synchronously and it may take a while.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `BLKDISCARD` is `_IO(0x12, 119)` (linux/fs.h). libc does not export it, but it does export
/// `BLKSSZGET = _IO(0x12, 104)`: deriving from that keeps the architecture's `_IO` encoding
/// (the direction bits differ on mips, powerpc and sparc).
const BLKDISCARD: libc::Ioctl = libc::BLKSSZGET + (119 - 104);

/// `ioctl(BLKDISCARD, [offset, len])`: asks the device to deallocate the byte range. The
/// kernel first drops the range from the device's page cache (dirty pages included: they would
/// be discarded anyway), then issues discard requests, split to the device's limits, and
/// returns when they completed. `offset` and `len` must be multiples of the logical block size
/// (EINVAL otherwise); the file must be open for writing (EBADF otherwise). What the range
/// reads back as afterwards is up to the device (see `storage::device`).
pub(crate) fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads exactly two u64 (start, length) through the pointer and writes
    // nothing; `range` is a live, properly aligned [u64; 2] for the whole call. The descriptor
    // is borrowed from `file`, which outlives the call. On a descriptor that is not a block
    // device the kernel answers ENOTTY and touches nothing.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKDISCARD, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_number_is_io_0x12_119() {
        #[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64"))]
        assert_eq!(BLKDISCARD, 0x1277);
    }

    #[test]
    fn a_regular_file_is_refused_and_an_empty_range_is_a_no_op() {
        let file = tempfile::tempfile().unwrap();
        let err = discard(&file, 0, 4096).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        discard(&file, 0, 0).unwrap();
    }
}
