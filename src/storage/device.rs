//! What a block device can do about deallocation, as its driver tells sysfs, and what keel
//! makes of it ([`provisioning`]; pure, so it is tested without devices).
//!
//! keel discards block devices with `BLKDISCARD` (`fallocate(PUNCH_HOLE)` on a block device is
//! the kernel's WRITE ZEROES, which e.g. OpenZFS zvols do not implement). What a discarded range
//! reads back as is up to the driver and the block layer promises nothing (Linux dropped
//! `discard_zeroes_data` in 4.12), so keel reports LBPRZ = 1 only for drivers known to return
//! zeros for every whole granule they discarded ([`ZEROING_DRIVERS`]) and zero-fills the
//! partial granules at the edges itself; anything else is thin with LBPRZ = 0.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Provisioning;

/// Drivers (names in /proc/devices) whose discarded granules read back as zeros:
/// - `zvol` (OpenZFS): a discard frees the volume's blocks (`dmu_free_long_range`); freed
///   blocks are holes and read as zeros. It rounds the range inward to volblocksize (= its
///   discard_granularity), leaving partial blocks untouched: keel zero-fills those.
/// - `loop`: a discard punches a hole in the backing file (`FALLOC_FL_PUNCH_HOLE`), which
///   reads as zeros, or fails.
pub const ZEROING_DRIVERS: &[&str] = &["zvol", "loop"];

/// A block device's limits, from `/sys/dev/block/MAJ:MIN` (of the whole disk for a partition).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The driver owning the disk's major number (/proc/devices), e.g. "zvol", "sd".
    pub driver: String,
    /// queue/logical_block_size.
    pub logical_block_size: u64,
    /// queue/discard_max_bytes: 0 when the device cannot discard.
    pub discard_max_bytes: u64,
    /// queue/discard_granularity.
    pub discard_granularity: u64,
    /// queue/minimum_io_size: the preferred minimum I/O size (the physical block size, or
    /// more; a zvol's volblocksize).
    pub minimum_io_size: u64,
    /// queue/optimal_io_size: 0 when the device does not say. Logged only: a zvol reports
    /// 32 MiB here (OpenZFS 2.3), far above keel's maximum transfer.
    pub optimal_io_size: u64,
    /// Byte offset of a partition in its disk (`start`, in 512-byte sectors); 0 for a disk.
    pub partition_start: u64,
}

/// What keel reports and does for a block device with `limits`: thin (LBPME) when it can
/// discard and is writable; discarded ranges read as zeros (LBPRZ) only for
/// [`ZEROING_DRIVERS`]; space is released in granules of discard_granularity (at least a
/// logical block), aligned to the disk rather than to a partition; the I/O granularity is the
/// preferred minimum I/O size (what Linux itself derives from OPTIMAL TRANSFER LENGTH
/// GRANULARITY on the initiator side, SBC-4 §6.6.4).
pub fn provisioning(limits: &DeviceLimits, read_only: bool) -> Provisioning {
    let lbs = limits.logical_block_size.max(512);
    let io_granularity = limits.minimum_io_size;
    if read_only || limits.discard_max_bytes == 0 {
        return Provisioning {
            io_granularity,
            ..Provisioning::FULLY_PROVISIONED
        };
    }
    let granularity = limits.discard_granularity.max(lbs);
    Provisioning {
        discard: true,
        discard_zeroes: ZEROING_DRIVERS.contains(&limits.driver.as_str()),
        granularity,
        alignment: (granularity - limits.partition_start % granularity) % granularity,
        io_granularity,
    }
}

/// How a discard of `[offset, offset + len)` is carried out on a device that releases space
/// in `granularity`-byte granules starting at `alignment`: the whole granules in `middle` are
/// discarded; `head` and `tail` (partial granules, possibly empty) are not deallocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscardSplit {
    pub head: Range<u64>,
    pub middle: Range<u64>,
    pub tail: Range<u64>,
}

/// Splits a discard at granule boundaries (see [`DiscardSplit`]). A range inside one granule
/// is all `head`. `granularity` 0 is treated as 1.
pub fn split_discard(offset: u64, len: u64, granularity: u64, alignment: u64) -> DiscardSplit {
    let g = granularity.max(1);
    let phase = alignment % g;
    let end = offset.saturating_add(len);
    // Granule boundaries are phase + k·g: the first at or after `offset`, the last at or
    // before `end`.
    let first = if offset <= phase {
        Some(phase)
    } else {
        match (offset - phase) % g {
            0 => Some(offset),
            r => offset.checked_add(g - r),
        }
    };
    let last = end.checked_sub(phase).map(|x| end - x % g);
    match (first, last) {
        (Some(first), Some(last)) if first < last => DiscardSplit {
            head: offset..first,
            middle: first..last,
            tail: last..end,
        },
        _ => DiscardSplit {
            head: offset..end,
            middle: end..end,
            tail: end..end,
        },
    }
}

/// Reads the limits of the block device open as `file` from sysfs and /proc/devices.
pub fn read_limits(file: &File) -> io::Result<DeviceLimits> {
    let rdev = file.metadata()?.rdev();
    limits_from(
        Path::new("/sys/dev/block"),
        rustix::fs::major(rdev),
        rustix::fs::minor(rdev),
        &std::fs::read_to_string("/proc/devices")?,
    )
}

/// [`read_limits`] with the sysfs root and the /proc/devices text given (for tests).
fn limits_from(
    sys_dev_block: &Path,
    major: u32,
    minor: u32,
    proc_devices: &str,
) -> io::Result<DeviceLimits> {
    let node = sys_dev_block.join(format!("{major}:{minor}"));
    // A partition has a `partition` file; its queue and driver are its disk's (the parent
    // directory in sysfs).
    let (disk, partition_start) = if node.join("partition").exists() {
        let sectors = read_u64(&node.join("start"))?;
        (node.join(".."), sectors.saturating_mul(512))
    } else {
        (node.clone(), 0)
    };
    let disk_major = std::fs::read_to_string(disk.join("dev"))?
        .trim()
        .split(':')
        .next()
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(major);
    let queue = disk.join("queue");
    Ok(DeviceLimits {
        driver: block_driver(proc_devices, disk_major).unwrap_or_default(),
        logical_block_size: read_u64(&queue.join("logical_block_size"))?,
        discard_max_bytes: read_u64(&queue.join("discard_max_bytes"))?,
        discard_granularity: read_u64(&queue.join("discard_granularity"))?,
        // Older kernels may lack it; "unknown" is a fine answer.
        minimum_io_size: read_u64(&queue.join("minimum_io_size")).unwrap_or(0),
        optimal_io_size: read_u64(&queue.join("optimal_io_size")).unwrap_or(0),
        partition_start,
    })
}

fn read_u64(path: &PathBuf) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    text.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e} ({:?})", path.display(), text.trim()),
        )
    })
}

/// The name /proc/devices gives block major `major` ("Block devices:" section).
fn block_driver(proc_devices: &str, major: u32) -> Option<String> {
    proc_devices
        .lines()
        .skip_while(|l| l.trim() != "Block devices:")
        .skip(1)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.parse::<u32>().ok()?, words.next()?))
        })
        .find(|&(m, _)| m == major)
        .map(|(_, name)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zvol() -> DeviceLimits {
        DeviceLimits {
            driver: "zvol".into(),
            logical_block_size: 512,
            discard_max_bytes: 64 << 20,
            discard_granularity: 4096,
            minimum_io_size: 4096,
            optimal_io_size: 32 << 20,
            partition_start: 0,
        }
    }

    #[test]
    fn a_zvol_is_thin_and_reads_zeros() {
        assert_eq!(
            provisioning(&zvol(), false),
            Provisioning {
                discard: true,
                discard_zeroes: true,
                granularity: 4096,
                alignment: 0,
                io_granularity: 4096,
            }
        );
        // Read-only: nothing to discard, but the I/O granularity stays true.
        assert_eq!(
            provisioning(&zvol(), true),
            Provisioning {
                io_granularity: 4096,
                ..Provisioning::FULLY_PROVISIONED
            }
        );
    }

    #[test]
    fn unknown_drivers_are_thin_without_lbprz_and_no_discard_is_not_thin() {
        let ssd = DeviceLimits {
            driver: "sd".into(),
            discard_granularity: 0,
            minimum_io_size: 0,
            ..zvol()
        };
        let p = provisioning(&ssd, false);
        assert!(p.discard && !p.discard_zeroes);
        assert_eq!(p.granularity, 512, "at least one logical block");
        let rotating = DeviceLimits {
            discard_max_bytes: 0,
            ..ssd
        };
        assert_eq!(
            provisioning(&rotating, false),
            Provisioning::FULLY_PROVISIONED
        );
        let looped = DeviceLimits {
            driver: "loop".into(),
            ..zvol()
        };
        assert!(provisioning(&looped, false).discard_zeroes);
    }

    #[test]
    fn a_partition_off_a_granule_boundary_moves_the_alignment() {
        let part = DeviceLimits {
            discard_granularity: 128 << 10,
            partition_start: 2048 * 512 + 4096,
            ..zvol()
        };
        assert_eq!(provisioning(&part, false).alignment, (128 << 10) - 4096);
    }

    #[test]
    fn discards_split_at_granule_boundaries() {
        let s = |o, l, g, a| {
            let d = split_discard(o, l, g, a);
            (d.head, d.middle, d.tail)
        };
        // Aligned: all middle.
        assert_eq!(
            s(8192, 8192, 4096, 0),
            (8192..8192, 8192..16384, 16384..16384)
        );
        // Ragged both ends.
        assert_eq!(
            s(512, 16384, 4096, 0),
            (512..4096, 4096..16384, 16384..16896)
        );
        // Inside one granule: all head, nothing discarded.
        assert_eq!(s(512, 1024, 4096, 0), (512..1536, 1536..1536, 1536..1536));
        // Spanning a boundary without a whole granule.
        assert_eq!(s(3584, 1024, 4096, 0), (3584..4608, 4608..4608, 4608..4608));
        // Granularity 1 (or 0): everything is discarded.
        assert_eq!(s(7, 5, 0, 0), (7..7, 7..12, 12..12));
        // Boundaries at 1024 + k·4096.
        assert_eq!(s(0, 10240, 4096, 1024), (0..1024, 1024..9216, 9216..10240));
        assert_eq!(s(0, 512, 4096, 1024), (0..512, 512..512, 512..512));
        // Empty.
        assert_eq!(s(4096, 0, 4096, 0), (4096..4096, 4096..4096, 4096..4096));
        // Near the top of the address space: no overflow.
        let top = u64::MAX - 4095;
        let d = split_discard(top - 4096, 4096, 4096, 0);
        assert_eq!(d.middle, top - 4096..top);
    }

    #[test]
    fn every_byte_lands_in_exactly_one_part() {
        for g in [1u64, 512, 4096, 12288] {
            for a in [0u64, 512, 3000] {
                for o in (0..20000).step_by(1531) {
                    for l in (0..30000).step_by(2777) {
                        let d = split_discard(o, l, g, a);
                        assert_eq!(d.head.start, o);
                        assert_eq!(d.head.end, d.middle.start);
                        assert_eq!(d.middle.end, d.tail.start);
                        assert_eq!(d.tail.end, o + l);
                        if !d.middle.is_empty() {
                            let phase = a % g;
                            assert_eq!((d.middle.start + g - phase) % g, 0, "{g} {a} {o} {l}");
                            assert_eq!((d.middle.end + g - phase) % g, 0, "{g} {a} {o} {l}");
                            // Edges are shorter than a granule.
                            assert!(d.head.end - d.head.start < g);
                            assert!(d.tail.end - d.tail.start < g);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn proc_devices_names_the_block_major() {
        let text = "Character devices:\n  1 mem\n  7 vcs\n\nBlock devices:\n  7 loop\n  8 sd\n\
                    230 zvol\n259 blkext\n";
        assert_eq!(block_driver(text, 230).as_deref(), Some("zvol"));
        assert_eq!(
            block_driver(text, 7).as_deref(),
            Some("loop"),
            "not the char 7"
        );
        assert_eq!(block_driver(text, 1), None);
        assert_eq!(block_driver("garbage", 7), None);
    }

    #[test]
    fn limits_are_read_from_sysfs_for_disks_and_partitions() {
        let root = tempfile::tempdir().unwrap();
        let disk = root.path().join("devices/zd0");
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::create_dir_all(disk.join("zd0p1")).unwrap();
        for (f, v) in [
            ("dev", "230:0"),
            ("queue/logical_block_size", "512"),
            ("queue/discard_max_bytes", "67108864"),
            ("queue/discard_granularity", "8192"),
            ("queue/minimum_io_size", "8192"),
            ("queue/optimal_io_size", "33554432"),
            ("zd0p1/dev", "230:1"),
            ("zd0p1/partition", "1"),
            ("zd0p1/start", "2049"),
        ] {
            std::fs::write(disk.join(f), format!("{v}\n")).unwrap();
        }
        let links = root.path().join("dev/block");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(&disk, links.join("230:0")).unwrap();
        std::os::unix::fs::symlink(disk.join("zd0p1"), links.join("230:1")).unwrap();
        let devices = "Block devices:\n230 zvol\n";
        let whole = limits_from(&links, 230, 0, devices).unwrap();
        assert_eq!(
            whole,
            DeviceLimits {
                driver: "zvol".into(),
                logical_block_size: 512,
                discard_max_bytes: 64 << 20,
                discard_granularity: 8192,
                minimum_io_size: 8192,
                optimal_io_size: 32 << 20,
                partition_start: 0,
            }
        );
        let part = limits_from(&links, 230, 1, devices).unwrap();
        assert_eq!(part.partition_start, 2049 * 512);
        assert_eq!(part.discard_granularity, 8192);
        // Garbage in sysfs is an error, not a guess.
        std::fs::write(disk.join("queue/discard_max_bytes"), "lots\n").unwrap();
        assert!(limits_from(&links, 230, 0, devices).is_err());
        assert!(limits_from(&links, 230, 7, devices).is_err());
    }
}
