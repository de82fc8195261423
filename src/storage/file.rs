//! Regular files and block devices, through positional syscalls on tokio's blocking pool.
//!
//! The blocking pool is bounded (see the runtime builder in `main.rs`), so a slow disk queues
//! work instead of starving the runtime. Flush is `fdatasync`; FUA writes are followed by one.
//!
//! With an io_uring engine attached ([`FileBackend::with_engine`]), reads, writes, flushes and
//! file discards go through the ring instead (same semantics); allocation queries and
//! block-device discards (an ioctl) stay on the pool.
//!
//! Discard: a regular file punches holes (`fallocate(PUNCH_HOLE)`; zero-filled where the file
//! system cannot). A block device is discarded with `BLKDISCARD` when sysfs says it can
//! (see [`super::device`] for what is reported and why), else it is fully provisioned.
//!
//! Direct I/O ([`FileBackend::with_direct_io`], a block LUN's `direct`): a block device is
//! opened twice, once with O_DIRECT and once without. O_DIRECT bypasses the device's page
//! cache, which for a zvol would be a second copy of what the ARC already caches, and which
//! for any device costs a copy per transfer, readahead on random reads and writeback work
//! later. It demands that offsets and lengths be multiples of the device's logical block
//! size and that buffers start at multiples of its memory alignment (`statx` DIOALIGN, else
//! the logical block size); the kernel refuses anything else with EINVAL. So:
//! - a read or write whose offset and length are aligned takes the O_DIRECT descriptor:
//!   reads land in buffers allocated aligned (the io_uring engine's, or the page-aligned
//!   read-buffer pool's); write data, which arrives at whatever address its PDU left it, is
//!   used as it is when aligned and otherwise copied into an aligned buffer first. That
//!   copy was measured against the alternative of sending unaligned writes to the buffered
//!   descriptor: a 4 KiB copy costs well under a microsecond, while a buffered write on a
//!   loop device over tmpfs then costs a page-cache copy plus writeback through the loop
//!   driver later (interop/bench's block mode, see the README's figures);
//! - everything else (a LUN block size below the device's, which `auto` refuses anyway) and
//!   the zero-filled edges of discards that are not aligned take the buffered descriptor.
//!   The two stay coherent because the kernel writes back and drops cached pages of a range
//!   before a direct transfer on it, and BLKDISCARD drops them too;
//! - flush is `fdatasync` of the buffered descriptor: it writes back that descriptor's dirty
//!   pages and flushes the device's volatile cache, which holds the direct writes too; a FUA
//!   write is `RWF_DSYNC` (a FUA request) on whichever descriptor carries it.
//!
//! `auto` (the default for block devices) turns direct I/O on when the LUN's block size is a
//! multiple of the device's logical block size (so every command's transfer is aligned),
//! the alignment fits the buffers (at most [`BUFFER_ALIGN`]) and an O_DIRECT read of the
//! first block works; `on` demands all that and fails to open otherwise; `off` never uses it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{Bytes, BytesMut};

use super::device::{self, split_discard};
use super::pool::{BUFFER_ALIGN, BufferPool, aligned_empty, is_aligned};
use super::uring::{UringEngine, blkdev};
use super::{BlockBackend, Extent, IoFuture, Provisioning, push_extent};

/// Reads of this size and more go to the blocking pool even when an io_uring engine is
/// attached (see `read_at`).
const LARGE_READ: usize = 256 * 1024;

/// Reads up to this size are first tried from the page cache on the calling thread.
const INLINE_READ: usize = 64 * 1024;

/// Whether a block device is read and written with O_DIRECT (a block LUN's `direct`; see
/// the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// On when the device and the LUN's block size allow it, else off (logged).
    #[default]
    Auto,
    /// On, or the LUN fails to open with the reason.
    On,
    /// Always through the page cache.
    Off,
}

impl DirectIo {
    pub fn name(self) -> &'static str {
        match self {
            DirectIo::Auto => "auto",
            DirectIo::On => "true",
            DirectIo::Off => "false",
        }
    }
}

/// A block device's O_DIRECT descriptor and what its transfers must be aligned to.
#[derive(Debug)]
struct DirectFile {
    file: Arc<File>,
    /// Offsets and lengths are multiples of this (the logical block size).
    block: u64,
    /// Buffer addresses are multiples of this (a power of two, at most [`BUFFER_ALIGN`]).
    memory: usize,
}

/// A file or block device opened for positional I/O.
#[derive(Debug)]
pub struct FileBackend {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes; grows when the file is grown while it serves ([`BlockBackend::grow_to`]).
    size: AtomicU64,
    read_only: bool,
    /// A block device (all mapped for GET LBA STATUS) rather than a sparse regular file.
    block_device: bool,
    /// What discard can do here: for a file, holes of the file system's block size
    /// (st_blksize); for a block device, what its driver reports (see [`super::device`]).
    provisioning: Provisioning,
    /// The io_uring engine, or `None` for the blocking pool.
    engine: Option<Arc<UringEngine>>,
    /// Whether the kernel takes `RWF_NOWAIT` reads on this file (cleared the first time it
    /// says it does not).
    nowait_reads: std::sync::atomic::AtomicBool,
    /// The file lives on tmpfs or ramfs: its pages are memory, so a small read or write is a
    /// memcpy that cannot wait for a disk, and is done on the calling thread rather than
    /// through the ring (which hands tmpfs I/O to a kernel worker thread: two thread hops for
    /// a memcpy). Writes to one file do meet on its inode lock, but only for that memcpy.
    memory_resident: bool,
    /// Buffers for large reads, shared by the backends of one server.
    pool: Arc<BufferPool>,
    /// Where the thread-pool engine's syscalls run: one bounded pool for the whole server
    /// (`None`: the calling runtime's own).
    blocking_pool: Option<tokio::runtime::Handle>,
    /// A block device's O_DIRECT descriptor, when direct I/O is on.
    direct: Option<DirectFile>,
}

/// The O_DIRECT alignment `statx` reports for `file` (`STATX_DIOALIGN`: Linux 6.1, block
/// devices since 6.11): (offsets and lengths, buffer addresses). `None` where it says
/// nothing; the logical block size is then the rule for both.
fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    use rustix::fs::{AtFlags, StatxFlags, statx};
    let st = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN).ok()?;
    (st.stx_mask & StatxFlags::DIOALIGN.bits() != 0 && st.stx_dio_offset_align > 0)
        .then_some((st.stx_dio_offset_align, st.stx_dio_mem_align))
}

/// `statfs.f_type` of the file systems whose files are only ever memory (linux/magic.h).
const MEMORY_FILE_SYSTEMS: [u64; 2] = [0x0102_1994 /* tmpfs */, 0x8584_58f6 /* ramfs */];

fn is_memory_resident(file: &File) -> bool {
    rustix::fs::fstatfs(file)
        .map(|fs| MEMORY_FILE_SYSTEMS.contains(&(fs.f_type as u64)))
        .unwrap_or(false)
}

impl FileBackend {
    /// Opens a regular file, creating it sparse at `create_size` bytes when it is missing.
    /// An existing file keeps its size; `create_size` does not resize it.
    pub fn open_file(path: &Path, create_size: Option<u64>, read_only: bool) -> io::Result<Self> {
        let exists = path.exists();
        if !exists {
            let size = create_size.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{} does not exist and no size was given to create it",
                        path.display()
                    ),
                )
            })?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let file = OpenOptions::new().write(true).create_new(true).open(path)?;
            file.set_len(size)?;
            file.sync_all()?;
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a regular file (use `block =` for devices)",
                    path.display()
                ),
            ));
        }
        Ok(FileBackend {
            size: AtomicU64::new(meta.len()),
            memory_resident: is_memory_resident(&file),
            pool: BufferPool::new(),
            blocking_pool: None,
            file: Arc::new(file),
            path: path.to_owned(),
            read_only,
            block_device: false,
            provisioning: Provisioning {
                discard: !read_only,
                discard_zeroes: true,
                granularity: meta.blksize().max(512),
                alignment: 0,
                io_granularity: 0,
            },
            engine: None,
            nowait_reads: std::sync::atomic::AtomicBool::new(true),
            direct: None,
        })
    }

    /// Opens an existing block device; its size is read by seeking to its end, its discard
    /// capabilities from sysfs (unreadable: logged, and the device is fully provisioned).
    pub fn open_block_device(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.file_type().is_block_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a block device", path.display()),
            ));
        }
        let size = file.seek(SeekFrom::End(0))?;
        let provisioning = match device::read_limits(&file) {
            Ok(limits) => {
                let p = device::provisioning(&limits, read_only);
                tracing::info!(
                    device = %path.display(), driver = %limits.driver,
                    discard_max_bytes = limits.discard_max_bytes,
                    discard_granularity = limits.discard_granularity,
                    minimum_io_size = limits.minimum_io_size,
                    optimal_io_size = limits.optimal_io_size,
                    thin = p.discard, discard_zeroes = p.discard_zeroes,
                    "block device provisioning"
                );
                p
            }
            Err(error) => {
                tracing::warn!(
                    device = %path.display(), %error,
                    "cannot read the device's discard limits from sysfs: reporting it fully provisioned"
                );
                Provisioning::FULLY_PROVISIONED
            }
        };
        Ok(FileBackend {
            size: AtomicU64::new(size),
            file: Arc::new(file),
            path: path.to_owned(),
            read_only,
            block_device: true,
            provisioning,
            engine: None,
            nowait_reads: std::sync::atomic::AtomicBool::new(true),
            memory_resident: false,
            pool: BufferPool::new(),
            blocking_pool: None,
            direct: None,
        })
    }

    /// Turns direct I/O on or off for a block device served with `lun_block_size`-byte
    /// logical blocks (see the module documentation for what `auto` decides and why).
    /// `DirectIo::On` fails, with the reason, where direct I/O cannot be used; so does it on a
    /// regular file. `Auto` and `Off` never fail.
    pub fn with_direct_io(mut self, mode: DirectIo, lun_block_size: u32) -> io::Result<Self> {
        self.direct = None;
        if mode == DirectIo::Off {
            return Ok(self);
        }
        let refused = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: direct I/O is not possible: {why}", self.path.display()),
            )
        };
        if !self.block_device {
            return match mode {
                DirectIo::On => Err(refused(
                    "it is a regular file (direct applies to block devices)".into(),
                )),
                _ => Ok(self),
            };
        }
        match self.open_direct(lun_block_size) {
            Ok(direct) => {
                tracing::info!(
                    device = %self.path.display(), block = direct.block,
                    memory_alignment = direct.memory, "direct I/O (O_DIRECT) on"
                );
                self.direct = Some(direct);
                Ok(self)
            }
            Err(why) if mode == DirectIo::On => Err(refused(why)),
            Err(why) => {
                tracing::info!(device = %self.path.display(), "direct I/O off: {why}");
                Ok(self)
            }
        }
    }

    /// Opens the O_DIRECT descriptor and checks that keel's transfers will be aligned for it,
    /// or says why not.
    fn open_direct(&self, lun_block_size: u32) -> Result<DirectFile, String> {
        let logical = rustix::fs::ioctl_blksszget(&*self.file)
            .map_err(|e| format!("cannot read the logical block size: {e}"))?;
        let (block, memory) = dio_alignment(&self.file).unwrap_or((logical, logical));
        let block = block.max(logical);
        if block == 0 || !u64::from(lun_block_size).is_multiple_of(u64::from(block)) {
            return Err(format!(
                "the LUN's block size {lun_block_size} is not a multiple of the device's \
                 logical block size {block}"
            ));
        }
        let memory = memory.max(1) as usize;
        if !memory.is_power_of_two() || memory > BUFFER_ALIGN {
            return Err(format!(
                "the device wants buffers aligned to {memory} bytes (at most {BUFFER_ALIGN} \
                 is supported)"
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .custom_flags(libc::O_DIRECT)
            .open(&self.path)
            .map_err(|e| format!("cannot open it with O_DIRECT: {e}"))?;
        // The path may have been pointed at another device since the first open (a udev
        // symlink): both descriptors must be the same device.
        let (first, second) = (self.file.metadata(), file.metadata());
        match (first, second) {
            (Ok(a), Ok(b)) if a.rdev() == b.rdev() => {}
            _ => return Err("the path now names another device".into()),
        }
        // Some stacks accept the flag and fail the transfers: prove one read works.
        if self.size_bytes() >= u64::from(block) {
            let mut probe = aligned_empty(block as usize, memory);
            probe.resize(block as usize, 0);
            file.read_exact_at(&mut probe, 0)
                .map_err(|e| format!("an O_DIRECT read failed: {e}"))?;
        }
        Ok(DirectFile {
            file: Arc::new(file),
            block: u64::from(block),
            memory,
        })
    }

    /// Whether reads and writes go around the page cache (O_DIRECT).
    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
    }

    /// The O_DIRECT descriptor, when direct I/O is on and `len` bytes at `offset` are
    /// aligned for it.
    fn direct_for(&self, offset: u64, len: u64) -> Option<&DirectFile> {
        self.direct
            .as_ref()
            .filter(|d| len > 0 && offset.is_multiple_of(d.block) && len.is_multiple_of(d.block))
    }

    /// Sends reads, writes, flushes and discards through `engine` (`None`: the blocking pool).
    pub fn with_engine(mut self, engine: Option<Arc<UringEngine>>) -> Self {
        self.engine = engine;
        self
    }

    /// Runs its blocking syscalls on `runtime`'s blocking pool, whichever runtime the command
    /// runs on: connections live on per-core runtimes, and one busy connection should be able
    /// to use the whole server-wide pool, not a per-core slice of it.
    pub fn with_blocking_pool(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.blocking_pool = Some(runtime);
        self
    }

    /// Takes large-read buffers from `pool` (shared with other backends) instead of its own.
    pub fn with_buffer_pool(mut self, pool: Arc<BufferPool>) -> Self {
        self.pool = pool;
        self
    }

    /// Which engine serves this backend: "io_uring" or "threads".
    pub fn engine_name(&self) -> &'static str {
        if self.engine.is_some() {
            "io_uring"
        } else {
            "threads"
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        self.blocking_on(Arc::clone(&self.file), op).await
    }

    /// [`FileBackend::blocking`] on another descriptor of the same medium (the O_DIRECT one).
    async fn blocking_on<T: Send + 'static>(
        &self,
        file: Arc<File>,
        op: impl FnOnce(&File) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let job = move || op(&file);
        match &self.blocking_pool {
            Some(runtime) => runtime.spawn_blocking(job),
            None => tokio::task::spawn_blocking(job),
        }
        .await
        .map_err(|e| io::Error::other(format!("storage worker failed: {e}")))?
    }
}

impl FileBackend {
    /// A small read served straight from the page cache, on the calling thread, when every
    /// byte is already cached: `preadv2(RWF_NOWAIT)` never waits for the disk (it answers
    /// EAGAIN instead), so this cannot block the runtime, and a hit costs one memcpy instead
    /// of a round trip through another thread (the latency that dominates at queue depth 1).
    /// Anything else — a miss, a partial hit, a kernel without RWF_NOWAIT for this file
    /// system — returns `None` and takes the normal path. On tmpfs and ramfs, which take no
    /// RWF_NOWAIT but whose pages are all in memory, a plain read is the same memcpy.
    fn read_cached(&self, offset: u64, len: usize) -> Option<Bytes> {
        use std::sync::atomic::Ordering::Relaxed;
        if len == 0 || len > INLINE_READ {
            return None;
        }
        let flags = if self.memory_resident {
            rustix::io::ReadWriteFlags::empty()
        } else if self.nowait_reads.load(Relaxed) {
            rustix::io::ReadWriteFlags::NOWAIT
        } else {
            return None;
        };
        let mut buf = BytesMut::zeroed(len);
        let mut slices = [std::io::IoSliceMut::new(&mut buf)];
        match rustix::io::preadv2(&*self.file, &mut slices, offset, flags) {
            Ok(n) if n == len => Some(buf.freeze()),
            Ok(_) => None,
            Err(e)
                if flags.contains(rustix::io::ReadWriteFlags::NOWAIT)
                    && (e == rustix::io::Errno::OPNOTSUPP
                        || e == rustix::io::Errno::INVAL
                        || e == rustix::io::Errno::NOSYS) =>
            {
                self.nowait_reads.store(false, Relaxed);
                None
            }
            Err(_) => None,
        }
    }
}

impl BlockBackend for FileBackend {
    fn size_bytes(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A regular file is extended (sparse) to `bytes` and fsynced, so the new size survives a
    /// crash before anything is written there; a smaller size is refused (the data beyond
    /// it would be lost). A block device cannot be grown from here.
    fn grow_to(&self, bytes: u64) -> IoFuture<'_, u64> {
        let current = self.size_bytes();
        let refusal = if self.block_device {
            Some(format!(
                "{} is a block device: grow the device itself",
                self.path.display()
            ))
        } else if self.read_only {
            Some(format!("{} is read-only", self.path.display()))
        } else if bytes < current {
            Some(format!(
                "{} is {current} bytes; shrinking it to {bytes} would destroy data, refused",
                self.path.display()
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Box::pin(
                async move { Err(io::Error::new(io::ErrorKind::InvalidInput, refusal)) },
            );
        }
        let path = self.path.clone();
        Box::pin(async move {
            if bytes > current {
                self.blocking(move |file| {
                    // The file may have been grown outside keel: its length, not the size
                    // keel last knew, is what set_len must never go below.
                    let on_disk = file.metadata()?.len();
                    if bytes < on_disk {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{} is {on_disk} bytes; shrinking it to {bytes} would destroy \
                                 data, refused",
                                path.display()
                            ),
                        ));
                    }
                    if bytes > on_disk {
                        file.set_len(bytes)?;
                    }
                    file.sync_all()
                })
                .await?;
                // Commands check their range against this size: they see the new blocks only
                // once the file has them.
                self.size
                    .fetch_max(bytes, std::sync::atomic::Ordering::AcqRel);
            }
            Ok(self.size_bytes())
        })
    }

    fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
        if let Some(direct) = self.direct_for(offset, len as u64) {
            // No page cache to copy from: the ring only submits, whatever the size.
            if let Some(engine) = &self.engine {
                return Box::pin(engine.read_aligned(&direct.file, offset, len, direct.memory));
            }
            // Pooled buffers start on a page boundary.
            let mut buf = self.pool.take(len);
            return Box::pin(self.blocking_on(direct.file.clone(), move |file| {
                file.read_exact_at(buf.as_mut_slice(), offset)?;
                Ok(buf.into_bytes())
            }));
        }
        if let Some(data) = self.read_cached(offset, len) {
            return Box::pin(async move { Ok(data) });
        }
        // Large reads mostly copy from the page cache; on the ring's single thread those
        // copies serialize, while the blocking pool spreads them over the cores (measured
        // with interop/bench: 1 MiB reads at QD8 2.0-2.2 GB/s through the ring, 2.6-3.2 on
        // the pool). Small reads gain from the ring (4 KiB QD32: +25 %, -30 % CPU per I/O).
        if let Some(engine) = self.engine.as_ref().filter(|_| len < LARGE_READ) {
            return Box::pin(engine.read(&self.file, offset, len));
        }
        let mut buf = self.pool.take(len);
        Box::pin(self.blocking(move |file| {
            // Every byte is overwritten (or the read fails and the buffer goes back unused).
            file.read_exact_at(buf.as_mut_slice(), offset)?;
            Ok(buf.into_bytes())
        }))
    }

    fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
        if self.read_only {
            return Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "medium is read-only",
                ))
            });
        }
        if self.memory_resident && data.len() <= INLINE_READ {
            // FUA: tmpfs has nothing more durable than memory to flush to.
            let written = self.file.write_all_at(&data, offset);
            return Box::pin(async move { written });
        }
        if let Some(direct) = self.direct_for(offset, data.len() as u64) {
            let data = if is_aligned(&data, direct.memory) {
                data
            } else {
                let mut copy = aligned_empty(data.len(), direct.memory);
                copy.extend_from_slice(&data);
                copy.freeze()
            };
            if let Some(engine) = &self.engine {
                return Box::pin(engine.write_aligned(
                    &direct.file,
                    offset,
                    data,
                    fua,
                    direct.memory,
                ));
            }
            return Box::pin(self.blocking_on(direct.file.clone(), move |file| {
                file.write_all_at(&data, offset)?;
                if fua {
                    file.sync_data()?;
                }
                Ok(())
            }));
        }
        if let Some(engine) = &self.engine {
            return Box::pin(engine.write(&self.file, offset, data, fua));
        }
        Box::pin(self.blocking(move |file| {
            file.write_all_at(&data, offset)?;
            if fua {
                file.sync_data()?;
            }
            Ok(())
        }))
    }

    fn flush(&self) -> IoFuture<'_, ()> {
        if let Some(engine) = &self.engine {
            return Box::pin(engine.fdatasync(&self.file));
        }
        Box::pin(self.blocking(|file| file.sync_data()))
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn sendable_file(&self) -> Option<Arc<File>> {
        self.memory_resident.then(|| self.file.clone())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn supports_discard(&self) -> bool {
        // A read-only unit was opened with discard off (`open_file`, `device::provisioning`).
        self.provisioning.discard
    }

    /// A regular file: `fallocate(PUNCH_HOLE | KEEP_SIZE)` frees whole file system blocks and
    /// zeroes the partial ones at the edges; where the file system cannot (EOPNOTSUPP), the
    /// range is zero-filled so that LBPRZ stays true. A block device: see `discard_device`.
    fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
        if self.read_only {
            return Box::pin(async {
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "medium is read-only",
                ))
            });
        }
        if self.block_device {
            let p = self.provisioning;
            // The zero-filled edges go around the page cache too when they are aligned.
            let direct = self
                .direct
                .as_ref()
                .map(|d| (Arc::clone(&d.file), d.block, d.memory));
            return Box::pin(
                self.blocking(move |file| discard_device(file, direct.as_ref(), &p, offset, len)),
            );
        }
        if let Some(engine) = self.engine.as_ref().filter(|e| e.supports_fallocate())
            && len > 0
        {
            let mode = (rustix::fs::FallocateFlags::PUNCH_HOLE
                | rustix::fs::FallocateFlags::KEEP_SIZE)
                .bits() as i32;
            let punched = engine.fallocate(&self.file, mode, offset, len);
            return Box::pin(async move {
                match punched.await {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        self.blocking(move |file| zero_fill(file, offset, len))
                            .await
                    }
                    other => other,
                }
            });
        }
        Box::pin(self.blocking(move |file| {
            if len == 0 {
                return Ok(());
            }
            let flags =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            match rustix::fs::fallocate(file, flags, offset, len) {
                Ok(()) => Ok(()),
                Err(rustix::io::Errno::OPNOTSUPP) => zero_fill(file, offset, len),
                Err(errno) => Err(errno.into()),
            }
        }))
    }

    /// SEEK_DATA / SEEK_HOLE on regular files; block devices report everything mapped.
    fn allocation(&self, offset: u64, len: u64) -> IoFuture<'_, Vec<Extent>> {
        if self.block_device {
            return Box::pin(async move { Ok(vec![Extent { len, mapped: true }]) });
        }
        Box::pin(self.blocking(move |file| file_extents(file, offset, len)))
    }

    fn discard_granularity(&self) -> u64 {
        self.provisioning.granularity
    }

    fn provisioning(&self) -> Provisioning {
        self.provisioning
    }
}

/// Discards a block device range with `BLKDISCARD`, in whole granules only (a device may
/// ignore or round away partial ones; OpenZFS does). Where the device's discarded granules
/// read back as zeros (LBPRZ = 1), the partial granules at the edges are zero-filled so the
/// whole range does; otherwise (LBPRZ = 0) they are left as they are, which SBC-4 allows
/// (an unmapped block's content is then vendor specific).
///
/// `direct`: the O_DIRECT descriptor with its block and memory alignment, which zero-fills
/// the edges that are aligned for it.
fn discard_device(
    file: &File,
    direct: Option<&(Arc<File>, u64, usize)>,
    p: &Provisioning,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    if !p.discard {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the device cannot discard",
        ));
    }
    let split = split_discard(offset, len, p.granularity, p.alignment);
    blkdev::discard(
        file,
        split.middle.start,
        split.middle.end - split.middle.start,
    )?;
    if p.discard_zeroes {
        for edge in [split.head, split.tail] {
            let len = edge.end - edge.start;
            match direct {
                Some((direct, block, memory))
                    if edge.start.is_multiple_of(*block) && len.is_multiple_of(*block) =>
                {
                    zero_fill_aligned(direct, edge.start, len, *memory)?
                }
                _ => zero_fill(file, edge.start, len)?,
            }
        }
    }
    Ok(())
}

/// Writes zeros over `len` bytes at `offset`, 1 MiB at a time.
fn zero_fill(file: &File, offset: u64, len: u64) -> io::Result<()> {
    zero_fill_aligned(file, offset, len, 1)
}

/// [`zero_fill`] from a buffer whose address is a multiple of `align` (for O_DIRECT, whose
/// offsets and lengths the caller has checked; 1 MiB pieces keep them aligned).
fn zero_fill_aligned(file: &File, offset: u64, len: u64, align: usize) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let mut zeros = aligned_empty(CHUNK.min(len) as usize, align);
    zeros.resize(CHUNK.min(len) as usize, 0);
    let mut done = 0u64;
    while done < len {
        let n = CHUNK.min(len - done);
        let at = offset
            .checked_add(done)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        file.write_all_at(&zeros[..n as usize], at)?;
        done += n;
    }
    Ok(())
}

/// The data/hole layout of `[offset, offset + len)` of a regular file. A file system without
/// SEEK_DATA support (EINVAL) is reported as all data, which is never wrong: a hole reported
/// as mapped still reads as zeros.
fn file_extents(file: &File, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
    use rustix::fs::{SeekFrom as RSeek, seek};
    let end = offset.saturating_add(len);
    let mut extents = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data = match seek(file, RSeek::Data(pos)) {
            Ok(data) => data.min(end),
            // No data at or after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => end,
            Err(rustix::io::Errno::INVAL) if extents.is_empty() => {
                return Ok(vec![Extent { len, mapped: true }]);
            }
            Err(errno) => return Err(errno.into()),
        };
        push_extent(&mut extents, data.saturating_sub(pos), false);
        if data >= end {
            break;
        }
        // End of file counts as a hole, so this always succeeds within the file.
        let hole = seek(file, RSeek::Hole(data))?.clamp(data, end);
        if hole == data {
            // Defensive: no progress would loop forever; call the rest mapped.
            push_extent(&mut extents, end - data, true);
            break;
        }
        push_extent(&mut extents, hole - data, true);
        pos = hole;
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn cached_reads_are_exact_or_declined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cached.img");
        let backend = FileBackend::open_file(&path, Some(1 << 20), false).unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
        backend
            .write_at(4096, Bytes::from(data.clone()), false)
            .await
            .unwrap();
        // Just written, so in the page cache: served inline where the file system takes
        // RWF_NOWAIT, declined otherwise — never wrong, never partial.
        if let Some(hit) = backend.read_cached(4096, 8192) {
            assert_eq!(&hit[..], &data[..]);
        }
        assert!(
            backend.read_cached(0, INLINE_READ + 1).is_none(),
            "large reads take the normal path"
        );
        assert_eq!(&backend.read_at(4096, 8192).await.unwrap()[..], &data[..]);
        // Past the end: never served inline (the normal path reports the error).
        assert!(backend.read_cached((1 << 20) - 512, 1024).is_none());
        assert!(backend.read_at((1 << 20) - 512, 1024).await.is_err());
    }

    #[tokio::test]
    async fn tmpfs_files_are_read_inline() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return; // no tmpfs here: nothing to check
        };
        let path = dir.path().join("shm.img");
        let backend = FileBackend::open_file(&path, Some(1 << 20), false).unwrap();
        assert!(backend.memory_resident, "/dev/shm is tmpfs");
        let data = Bytes::from(vec![0x5a; 4096]);
        backend.write_at(8192, data.clone(), true).await.unwrap();
        assert_eq!(backend.read_cached(8192, 4096), Some(data));
        // Past the end: declined, the normal path reports the error.
        assert!(backend.read_cached((1 << 20) - 512, 1024).is_none());
    }

    use super::*;
    use futures_util::future::join_all;
    use std::time::Duration;

    /// Every test runs against each engine: the thread pool, io_uring, and io_uring splitting
    /// every transfer into odd 1000-byte pieces (the short-transfer path on every op).
    fn engines() -> Vec<(&'static str, Option<Arc<UringEngine>>)> {
        vec![
            ("threads", None),
            (
                "io_uring",
                Some(UringEngine::new().expect("io_uring works here")),
            ),
            (
                "io_uring/1000-byte pieces",
                Some(UringEngine::with_max_chunk(1000).expect("io_uring works here")),
            ),
        ]
    }

    fn open(path: &Path, size: Option<u64>, engine: &Option<Arc<UringEngine>>) -> FileBackend {
        FileBackend::open_file(path, size, false)
            .unwrap()
            .with_engine(engine.clone())
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn a_file_grows_while_open_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let backend = open(&path, Some(1 << 20), &None);
        backend
            .write_at(0, Bytes::from(vec![5u8; 512]), false)
            .await
            .unwrap();
        assert_eq!(backend.grow_to(2 << 20).await.unwrap(), 2 << 20);
        assert_eq!(backend.size_bytes(), 2 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        // The new blocks are there to write, the old data is kept.
        backend
            .write_at((2 << 20) - 512, Bytes::from(vec![6u8; 512]), false)
            .await
            .unwrap();
        assert_eq!(backend.read_at(0, 512).await.unwrap(), vec![5u8; 512]);
        // The same size again is no change; a smaller one is refused and changes nothing.
        assert_eq!(backend.grow_to(2 << 20).await.unwrap(), 2 << 20);
        let err = backend.grow_to(1 << 20).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("shrinking"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
    }

    #[tokio::test]
    async fn a_grow_never_truncates_a_file_grown_outside_keel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let backend = open(&path, Some(1 << 20), &None);
        // Grown by the operator behind keel's back, with data at the end.
        let outside = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        outside.set_len(4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&outside, &[9u8; 512], (4 << 20) - 512).unwrap();
        // Larger than what keel knew, smaller than the file: refused, nothing cut off.
        let err = backend.grow_to(2 << 20).await.unwrap_err();
        assert!(err.to_string().contains("shrinking"), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
        assert_eq!(backend.size_bytes(), 1 << 20);
        // The file's own length is a grow that writes nothing and shows the blocks.
        assert_eq!(backend.grow_to(4 << 20).await.unwrap(), 4 << 20);
        assert_eq!(
            backend.read_at((4 << 20) - 512, 512).await.unwrap(),
            vec![9u8; 512]
        );
    }

    #[tokio::test]
    async fn creates_a_sparse_file_and_round_trips_data() {
        for (name, engine) in engines() {
            creates_a_sparse_file_and_round_trips_data_with(&engine).await;
            eprintln!("{name}: ok");
        }
    }

    async fn creates_a_sparse_file_and_round_trips_data_with(engine: &Option<Arc<UringEngine>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/disk.img");
        let backend = open(&path, Some(1 << 20), engine);
        assert_eq!(backend.size_bytes(), 1 << 20);
        backend
            .write_at(4096, Bytes::from(vec![7u8; 512]), true)
            .await
            .unwrap();
        backend.flush().await.unwrap();
        assert_eq!(backend.read_at(4096, 512).await.unwrap(), vec![7u8; 512]);
        // Reopening keeps the size and the data; the size argument does not resize.
        let again = open(&path, Some(4096), engine);
        assert_eq!(again.size_bytes(), 1 << 20);
        assert_eq!(again.read_at(4096, 1).await.unwrap()[0], 7);
        // A read that crosses the end gets a short read, then nothing: an error, not a hang.
        let err = again.read_at((1 << 20) - 1, 2).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(again.read_at(1 << 20, 4096).await.is_err());
        assert!(again.read_at(0, 0).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn discard_punches_holes_that_read_as_zeros() {
        for (name, engine) in engines() {
            discard_punches_holes_that_read_as_zeros_with(&engine).await;
            eprintln!("{name}: ok");
        }
    }

    async fn discard_punches_holes_that_read_as_zeros_with(engine: &Option<Arc<UringEngine>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thin.img");
        let backend = open(&path, Some(1 << 20), engine);
        assert!(backend.supports_discard());
        // A fresh sparse file is one hole.
        assert_eq!(
            backend.allocation(0, 1 << 20).await.unwrap(),
            vec![Extent {
                len: 1 << 20,
                mapped: false
            }]
        );
        backend
            .write_at(0, Bytes::from(vec![0xAB; 256 << 10]), false)
            .await
            .unwrap();
        let extents = backend.allocation(0, 1 << 20).await.unwrap();
        assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), 1 << 20);
        assert!(extents[0].mapped && extents[0].len >= 256 << 10);
        // Punch 64 KiB in the middle: it reads as zeros and becomes a hole (whole fs blocks).
        backend.discard(64 << 10, 64 << 10).await.unwrap();
        assert_eq!(
            backend.read_at(64 << 10, 64 << 10).await.unwrap(),
            vec![0u8; 64 << 10]
        );
        assert_eq!(backend.read_at(0, 1).await.unwrap()[0], 0xAB);
        let extents = backend.allocation(0, 256 << 10).await.unwrap();
        assert_eq!(
            extents,
            vec![
                Extent {
                    len: 64 << 10,
                    mapped: true
                },
                Extent {
                    len: 64 << 10,
                    mapped: false
                },
                Extent {
                    len: 128 << 10,
                    mapped: true
                },
            ]
        );
        // A sub-block discard zeroes without freeing.
        backend.discard(512, 512).await.unwrap();
        assert_eq!(backend.read_at(512, 512).await.unwrap(), vec![0u8; 512]);
        assert_eq!(backend.read_at(1024, 1).await.unwrap()[0], 0xAB);
        // A query starting inside an extent starts there.
        let extents = backend.allocation(100 << 10, 10).await.unwrap();
        assert_eq!(
            extents,
            vec![Extent {
                len: 10,
                mapped: false
            }]
        );
    }

    /// UNMAP of a range not aligned to the file system block (WRITE SAME with UNMAP at LBA 1
    /// of a 4 KiB physical block, say): whole blocks inside become holes, the partial ones at
    /// the edges are zeroed in place, and nothing outside changes.
    #[tokio::test]
    async fn unaligned_discards_free_whole_blocks_and_zero_the_edges() {
        for (name, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(&dir.path().join("thin.img"), Some(1 << 20), &engine);
            let g = backend.discard_granularity();
            backend
                .write_at(0, Bytes::from(vec![0xAB; 256 << 10]), false)
                .await
                .unwrap();
            let (start, len) = (3 * 512, 3 * g + 1024);
            backend.discard(start, len).await.unwrap();
            let all = backend.read_at(0, 256 << 10).await.unwrap();
            for (i, &b) in all.iter().enumerate() {
                let inside = (start..start + len).contains(&(i as u64));
                assert_eq!(b, if inside { 0 } else { 0xAB }, "{name}: byte {i}");
            }
            // The whole file system blocks inside the range are holes now.
            let first = start.div_ceil(g) * g;
            let last = (start + len) / g * g;
            let extents = backend.allocation(first, last - first).await.unwrap();
            assert_eq!(
                extents,
                vec![Extent {
                    len: last - first,
                    mapped: false
                }],
                "{name}"
            );
            let edge = backend.allocation(0, first).await.unwrap();
            assert!(edge.iter().all(|e| e.mapped), "{name}: {edge:?}");
        }
    }

    /// A loop device attached for a test, detached (by its name) when dropped.
    struct Loop(String);
    impl Loop {
        /// `None` where loop devices cannot be made (not root, no losetup, a container).
        fn attach(file: &Path) -> Option<Loop> {
            Self::attach_with(file, &[])
        }

        fn attach_with(file: &Path, options: &[&str]) -> Option<Loop> {
            let out = std::process::Command::new("losetup")
                .args(["--find", "--show"])
                .args(options)
                .arg(file)
                .output()
                .ok()?;
            let dev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (out.status.success() && !dev.is_empty()).then_some(Loop(dev))
        }
    }
    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// BLKDISCARD through a real block device: a loop device over a sparse file (its driver
    /// punches holes, so discarded granules read as zeros and free the file's blocks). Partial
    /// granules at the edges are zero-filled, not freed. Skipped where no loop device can be
    /// attached.
    #[tokio::test]
    async fn block_device_discard_frees_whole_granules_and_zeroes_the_edges() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("loop.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let Some(dev) = Loop::attach(&img) else {
            eprintln!("skipped: cannot attach a loop device here");
            return;
        };
        for (name, engine) in engines() {
            let backend = FileBackend::open_block_device(Path::new(&dev.0), false)
                .unwrap()
                .with_engine(engine);
            let p = backend.provisioning();
            if !p.discard {
                eprintln!("skipped: {} cannot discard here ({p:?})", dev.0);
                return;
            }
            assert!(
                p.discard_zeroes,
                "loop devices read discarded granules as zeros"
            );
            let g = p.granularity;
            assert!(g >= 512 && (8 << 20) % g == 0, "{p:?}");
            backend
                .write_at(0, Bytes::from(vec![0xCD; 8 << 20]), true)
                .await
                .unwrap();
            let allocated = || std::fs::metadata(&img).unwrap().blocks() * 512;
            let before = allocated();
            assert!(before >= 8 << 20, "{name}: {before}");
            // From 512 bytes into the first granule to 512 bytes into the last one.
            backend.discard(512, (8 << 20) - g).await.unwrap();
            let back = backend.read_at(0, 8 << 20).await.unwrap();
            let end = (8 << 20) - g as usize + 512;
            assert!(
                back[..512].iter().all(|&b| b == 0xCD),
                "{name}: before the range"
            );
            assert!(
                back[512..end].iter().all(|&b| b == 0),
                "{name}: the discarded range reads as zeros"
            );
            assert!(
                back[end..].iter().all(|&b| b == 0xCD),
                "{name}: after the range"
            );
            let after = allocated();
            assert!(
                after <= before - (8 << 20) + 2 * g,
                "{name}: the whole granules were freed ({before} -> {after})"
            );
            // Read-only: not thin.
            let ro = FileBackend::open_block_device(Path::new(&dev.0), true).unwrap();
            assert!(!ro.supports_discard() && !ro.provisioning().discard);
            eprintln!("{name}: ok ({before} -> {after} bytes allocated)");
        }
    }

    /// A loop device over a fresh `size`-byte file, or `None` (the test then skips, saying so).
    fn loop_device(dir: &Path, size: u64, options: &[&str]) -> Option<(Loop, PathBuf)> {
        let img = dir.join("loop.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        match Loop::attach_with(&img, options) {
            Some(dev) => Some((dev, img)),
            None => {
                eprintln!("skipped: cannot attach a loop device here (needs root and losetup)");
                None
            }
        }
    }

    fn open_device(dev: &Loop, direct: DirectIo, lun_block: u32) -> io::Result<FileBackend> {
        FileBackend::open_block_device(Path::new(&dev.0), false)?.with_direct_io(direct, lun_block)
    }

    /// Copies `data` into `expected` at `at` (what the medium should now hold).
    fn put(expected: &mut [u8], at: usize, data: &[u8]) {
        expected[at..at + data.len()].copy_from_slice(data);
    }

    /// Bytes that start one byte past an aligned address, as write data sliced out of a PDU
    /// usually does: the direct path must copy them, not hand them to the kernel.
    fn misaligned(data: &[u8]) -> Bytes {
        let mut buf = aligned_empty(data.len() + 1, 4096);
        buf.extend_from_slice(&[0xEE]);
        buf.extend_from_slice(data);
        let bytes = buf.freeze().slice(1..);
        assert!(!is_aligned(&bytes, 512));
        bytes
    }

    /// O_DIRECT on a loop device, through every engine: aligned and misaligned write data,
    /// FUA, large transfers split into pieces, writes the direct descriptor cannot take
    /// (unaligned offsets: the buffered one does), discards with zero-filled edges — and each
    /// time the data reads back identical through the direct path, through a backend without
    /// direct I/O, and in the loop device's backing file itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_io_on_a_block_device_reads_back_identical_through_every_path() {
        let dir = tempfile::tempdir().unwrap();
        let Some((dev, img)) = loop_device(dir.path(), 16 << 20, &[]) else {
            return;
        };
        for (name, engine) in engines() {
            let direct = open_device(&dev, DirectIo::On, 512)
                .unwrap()
                .with_engine(engine.clone());
            assert!(direct.direct_io(), "{name}");
            let cached = open_device(&dev, DirectIo::Off, 512)
                .unwrap()
                .with_engine(engine.clone());
            assert!(!cached.direct_io());
            let mut expected = vec![0u8; 16 << 20];

            // Misaligned data (copied), aligned data (as is), FUA, and 8 MiB in pieces.
            let a = pattern(4096, 1);
            direct.write_at(0, misaligned(&a), false).await.unwrap();
            put(&mut expected, 0, &a);
            let mut b = aligned_empty(8192, 4096);
            b.extend_from_slice(&pattern(8192, 2));
            direct
                .write_at(4096, b.clone().freeze(), true)
                .await
                .unwrap();
            put(&mut expected, 4096, &b);
            let big = pattern(8 << 20, 3);
            direct
                .write_at(1 << 20, misaligned(&big), false)
                .await
                .unwrap();
            put(&mut expected, 1 << 20, &big);
            // 512-byte blocks at odd LBAs are aligned too (the device's block is 512).
            let c = pattern(1536, 4);
            direct
                .write_at(512 * 77, misaligned(&c), false)
                .await
                .unwrap();
            put(&mut expected, 512 * 77, &c);
            // Not aligned: the buffered descriptor writes it, and the direct reads see it.
            let d = pattern(300, 5);
            direct
                .write_at(10_000, Bytes::from(d.clone()), false)
                .await
                .unwrap();
            put(&mut expected, 10_000, &d);
            // Discard with partial granules at both edges (zero-filled) and whole ones freed.
            let g = direct.provisioning().granularity;
            if direct.supports_discard() && direct.provisioning().discard_zeroes {
                direct.discard(g + 512, 3 * g).await.unwrap();
                put(
                    &mut expected,
                    (g + 512) as usize,
                    &vec![0u8; 3 * g as usize],
                );
            }
            direct.flush().await.unwrap();

            assert!(
                direct.read_at(0, 16 << 20).await.unwrap() == expected,
                "{name}: direct reads"
            );
            assert!(
                cached.read_at(0, 16 << 20).await.unwrap() == expected,
                "{name}: buffered reads"
            );
            // Small reads at odd places, both ways.
            for (at, len) in [(512 * 77, 1536), (9728, 1024), (10_000, 300), (4096, 4096)] {
                let want = &expected[at..at + len];
                assert_eq!(
                    &direct.read_at(at as u64, len).await.unwrap()[..],
                    want,
                    "{name}"
                );
                assert_eq!(
                    &cached.read_at(at as u64, len).await.unwrap()[..],
                    want,
                    "{name}"
                );
            }
            // A buffered write is seen by a direct read of its block at once, and a direct
            // write by a buffered read (the kernel keeps the two descriptors coherent).
            let e = pattern(512, 6);
            cached
                .write_at(512 * 3000, Bytes::from(e.clone()), false)
                .await
                .unwrap();
            assert_eq!(
                &direct.read_at(512 * 3000, 512).await.unwrap()[..],
                &e[..],
                "{name}"
            );
            put(&mut expected, 512 * 3000, &e);
            let f = pattern(4096, 7);
            cached.read_at(512 * 4000, 4096).await.unwrap();
            direct
                .write_at(512 * 4000, misaligned(&f), false)
                .await
                .unwrap();
            assert_eq!(
                &cached.read_at(512 * 4000, 4096).await.unwrap()[..],
                &f[..],
                "{name}"
            );
            put(&mut expected, 512 * 4000, &f);
            // And it is in the loop device's file.
            direct.flush().await.unwrap();
            cached.flush().await.unwrap();
            drop((direct, cached));
            assert!(
                std::fs::read(&img).unwrap() == expected,
                "{name}: the backing file"
            );
            eprintln!("{name}: ok");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_direct_4k_writes_and_reads_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let Some((dev, _img)) = loop_device(dir.path(), 4 << 20, &[]) else {
            return;
        };
        for (name, engine) in engines() {
            let backend = open_device(&dev, DirectIo::Auto, 4096)
                .unwrap()
                .with_engine(engine);
            assert!(backend.direct_io(), "auto turns it on for a loop device");
            let backend = &backend;
            let writes = (0..1000u64).map(|i| async move {
                let data = pattern(4096, i + 100);
                let data = if i % 2 == 0 {
                    misaligned(&data)
                } else {
                    Bytes::from(data)
                };
                backend.write_at(i * 4096, data, i % 97 == 0).await
            });
            for r in join_all(writes).await {
                r.unwrap();
            }
            let reads =
                (0..1000u64).map(|i| async move { (i, backend.read_at(i * 4096, 4096).await) });
            for (i, r) in join_all(reads).await {
                assert!(
                    r.unwrap() == pattern(4096, i + 100),
                    "{name}: block {i} differs"
                );
            }
            eprintln!("{name}: ok");
        }
    }

    /// A device with 4 KiB logical blocks under a LUN of 512-byte blocks: a command could
    /// address half a device block, so `auto` stays off and `true` says why; a LUN of 4 KiB
    /// blocks gets direct I/O. Reads past the end are errors either way.
    #[tokio::test]
    async fn direct_io_needs_the_lun_block_to_be_whole_device_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let Some((dev, _img)) = loop_device(dir.path(), 1 << 20, &["--sector-size", "4096"]) else {
            return;
        };
        let auto = open_device(&dev, DirectIo::Auto, 512).unwrap();
        assert!(!auto.direct_io());
        let err = open_device(&dev, DirectIo::On, 512).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a multiple of the device's logical block size 4096"),
            "{err}"
        );
        let on = open_device(&dev, DirectIo::On, 4096).unwrap();
        assert!(on.direct_io());
        on.write_at(4096, misaligned(&pattern(4096, 9)), true)
            .await
            .unwrap();
        assert!(on.read_at(4096, 4096).await.unwrap() == pattern(4096, 9));
        // 512 bytes of a 4 KiB block: not aligned, so the buffered descriptor takes it.
        on.write_at(4096 + 512, Bytes::from(vec![1u8; 512]), false)
            .await
            .unwrap();
        let back = on.read_at(4096, 4096).await.unwrap();
        assert_eq!(&back[..512], &pattern(4096, 9)[..512]);
        assert_eq!(&back[512..1024], &[1u8; 512][..]);
        assert!(on.read_at((1 << 20) - 4096, 8192).await.is_err());
        assert!(
            !open_device(&dev, DirectIo::Off, 512).unwrap().direct_io(),
            "off is off"
        );
        // Read-only: O_DIRECT reads, writes refused as before.
        let ro = FileBackend::open_block_device(Path::new(&dev.0), true)
            .unwrap()
            .with_direct_io(DirectIo::On, 4096)
            .unwrap();
        assert!(ro.direct_io());
        assert_eq!(
            &ro.read_at(4096, 512).await.unwrap()[..],
            &pattern(4096, 9)[..512]
        );
        assert!(
            ro.write_at(0, Bytes::from(vec![0u8; 4096]), false)
                .await
                .is_err()
        );
    }

    #[test]
    fn direct_io_is_for_block_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.img");
        let file = || FileBackend::open_file(&path, Some(1 << 20), false).unwrap();
        assert!(
            !file()
                .with_direct_io(DirectIo::Auto, 512)
                .unwrap()
                .direct_io()
        );
        let err = file().with_direct_io(DirectIo::On, 512).unwrap_err();
        assert!(err.to_string().contains("regular file"), "{err}");
    }

    #[test]
    fn missing_file_without_size_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileBackend::open_file(&dir.path().join("nope"), None, false).unwrap_err();
        assert!(err.to_string().contains("no size"));
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        for (_, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ro.img");
            FileBackend::open_file(&path, Some(4096), false).unwrap();
            let ro = FileBackend::open_file(&path, None, true)
                .unwrap()
                .with_engine(engine);
            assert!(
                ro.write_at(0, Bytes::from_static(b"x"), false)
                    .await
                    .is_err()
            );
            assert!(ro.discard(0, 512).await.is_err());
            assert_eq!(ro.read_at(0, 4096).await.unwrap(), vec![0u8; 4096]);
        }
    }

    #[tokio::test]
    async fn large_io_of_8_mib_round_trips() {
        for (name, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(&dir.path().join("big.img"), Some(32 << 20), &engine);
            let data = pattern(8 << 20, 8);
            backend
                .write_at(4096 + 512, Bytes::from(data.clone()), false)
                .await
                .unwrap();
            let back = backend.read_at(4096 + 512, 8 << 20).await.unwrap();
            assert!(back == data, "{name}: 8 MiB read back differs");
            eprintln!("{name}: ok");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_4k_writes_and_reads_are_verified() {
        for (name, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(&dir.path().join("many.img"), Some(4 << 20), &engine);
            let backend = &backend;
            let writes = (0..1000u64).map(|i| async move {
                let fua = i % 97 == 0;
                backend
                    .write_at(i * 4096, Bytes::from(pattern(4096, i)), fua)
                    .await
            });
            for r in join_all(writes).await {
                r.unwrap();
            }
            let reads =
                (0..1000u64).map(|i| async move { (i, backend.read_at(i * 4096, 4096).await) });
            for (i, r) in join_all(reads).await {
                assert!(r.unwrap() == pattern(4096, i), "{name}: block {i} differs");
            }
            eprintln!("{name}: ok");
        }
    }

    #[tokio::test]
    async fn flush_and_fua_writes_complete_and_persist_across_reopen() {
        for (name, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("durable.img");
            let backend = open(&path, Some(1 << 20), &engine);
            backend
                .write_at(0, Bytes::from(pattern(64 << 10, 1)), false)
                .await
                .unwrap();
            backend.flush().await.unwrap();
            backend
                .write_at(64 << 10, Bytes::from(pattern(4096, 2)), true)
                .await
                .unwrap();
            // An empty FUA write is just a flush.
            backend.write_at(0, Bytes::new(), true).await.unwrap();
            drop(backend);
            let again = open(&path, None, &engine);
            assert!(again.read_at(0, 64 << 10).await.unwrap() == pattern(64 << 10, 1));
            assert!(again.read_at(64 << 10, 4096).await.unwrap() == pattern(4096, 2));
            eprintln!("{name}: ok");
        }
    }

    /// A command whose future is dropped mid-flight (connection closed, task aborted): the
    /// kernel finishes into memory the engine still owns, nothing else is disturbed, the
    /// dropped write still lands, and the engine keeps serving.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_futures_mid_flight_corrupts_nothing() {
        for (name, engine) in engines() {
            let dir = tempfile::tempdir().unwrap();
            let backend = open(&dir.path().join("drop.img"), Some(64 << 20), &engine);
            backend
                .write_at(0, Bytes::from(vec![0xAA; 64 << 20]), false)
                .await
                .unwrap();
            for round in 0..4u64 {
                // Start 64 reads of 1 MiB and drop them after at most one poll.
                for i in 0..64u64 {
                    let fut = backend.read_at(i << 20, 1 << 20);
                    let _ = tokio::time::timeout(Duration::from_micros(1), fut).await;
                }
                // Fresh allocations of the same size must keep what we put there.
                let mine: Vec<Vec<u8>> = (0..64).map(|_| vec![0x55u8; 1 << 20]).collect();
                let write = backend.write_at(round << 20, Bytes::from(pattern(4096, round)), false);
                let _ = tokio::time::timeout(Duration::from_micros(1), write).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert!(mine.iter().all(|v| v.iter().all(|&b| b == 0x55)), "{name}");
                // The dropped write lands (it was started; nobody waits for it).
                let mut landed = false;
                for _ in 0..200 {
                    if backend.read_at(round << 20, 4096).await.unwrap() == pattern(4096, round) {
                        landed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(landed, "{name}: the dropped write never landed");
                assert_eq!(
                    backend.read_at((round << 20) + 4096, 4096).await.unwrap(),
                    vec![0xAA; 4096]
                );
            }
            eprintln!("{name}: ok");
        }
    }
}
