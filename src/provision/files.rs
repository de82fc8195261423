//! The files backend: a directory of sparse files, for machines without ZFS.
//!
//! A volume is the regular file `DIR/NAME`; its tags (owner, LUN, origin) are in the sidecar
//! `DIR/.keel/NAME.json`, written atomically. A clone (`clone_of = "golden@v1"`, a file in
//! `DIR`) is a reflink where the file system has them (`FICLONE`: btrfs, XFS), else a copy
//! that keeps holes; then it is grown to its size. A file whose name has an '@' and whose
//! part before it is a volume is that volume's snapshot ("NAME@SNAP"), as in ZFS.
//!
//! Creation is crash-safe: the file is made under a temporary name in `DIR`
//! (`.keel-tmp-...`), sized and synced, then the sidecar is written, then the file is
//! linked to its name without ever replacing a file that is there, then the directory is
//! synced. A crash leaves at most a temporary file and a sidecar without a file, both
//! keel's own, which the next [`VolumeBackend::list`] removes. Calls on one pool are made one
//! at a time (the provisioner's contract), so no other call is mid-way when it does.
//!
//! Names are single file names: no '/', not beginning with '.', at most 250 bytes (the
//! sidecar adds ".json" within the file system's 255), so nothing escapes `DIR`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{FallocateFlags, RenameFlags, SeekFrom};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::backend::{BackendError, BackendFuture, Observed, ObservedVolume, VolumeBackend};
use super::settings::{PoolKind, PoolSettings, VolumeSpec};

/// Where the sidecars live, inside the pool's directory.
const SIDECAR_DIR: &str = ".keel";
/// Prefix of a volume being created (in `DIR`) or a sidecar being written (in `.keel`).
const TEMP_PREFIX: &str = ".keel-tmp-";
/// Longest volume name: the sidecar's name adds ".json" and must fit NAME_MAX (255).
const MAX_NAME_BYTES: usize = 250;

/// A volume's tags, as keel recorded them when it made the volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tags {
    owner: Option<String>,
    lun: Option<String>,
    origin: Option<String>,
}

/// A pool of kind `files`.
pub struct FilesBackend {
    dir: PathBuf,
}

impl FilesBackend {
    /// The backend of a `files` pool; fails if `settings` is of another kind.
    pub fn new(settings: &PoolSettings) -> Result<Self, BackendError> {
        let PoolKind::Files { dir } = &settings.kind else {
            return Err(BackendError::Failed(format!(
                "pool {:?} is not of kind files",
                settings.name
            )));
        };
        if dir.as_os_str().is_empty() {
            return Err(BackendError::Failed(format!(
                "pool {:?}: the directory is empty",
                settings.name
            )));
        }
        Ok(FilesBackend { dir: dir.clone() })
    }

    /// The directory volumes live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs blocking file work off the runtime.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<'_, T> {
        let dir = self.dir.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&dir))
                .await
                .map_err(|e| BackendError::Unknown(format!("file work did not finish: {e}")))?
        })
    }
}

/// Checks a volume or clone-source file name; `snapshot` allows one '@'.
fn check_name(name: &str, snapshot: bool) -> Result<(), BackendError> {
    let refuse = |why: &str| Err(BackendError::Failed(format!("file name {name:?} {why}")));
    if name.is_empty() {
        return refuse("is empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return refuse(&format!(
            "is {} bytes; at most {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if name.contains('/') {
        return refuse("contains '/': a files pool has no nested volumes");
    }
    if name.starts_with('.') {
        return refuse("begins with '.' (reserved for keel's own files, and \"..\" escapes)");
    }
    if name.contains('\0') {
        return refuse("contains NUL");
    }
    if name.contains('@') && !snapshot {
        return refuse("contains '@', which names a snapshot");
    }
    Ok(())
}

fn io_error(what: impl std::fmt::Display, error: io::Error) -> BackendError {
    BackendError::Failed(format!("{what}: {error}"))
}

fn sidecar_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(SIDECAR_DIR).join(format!("{name}.json"))
}

fn random_suffix() -> io::Result<String> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, synced, renamed, directory
/// synced.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!("{TEMP_PREFIX}{}", random_suffix()?));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, dir.join(name))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written?;
    sync_dir(dir)
}

/// The tags of volume `name`: `None` if it has no sidecar, or one keel cannot read (then it
/// is not provably keel's, which is the safe reading).
fn read_tags(dir: &Path, name: &str) -> Option<Tags> {
    let path = sidecar_path(dir, name);
    let mut text = String::new();
    File::open(&path).ok()?.read_to_string(&mut text).ok()?;
    match serde_json::from_str(&text) {
        Ok(tags) => Some(tags),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "unreadable sidecar; volume taken as not keel's");
            None
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn list_dir(dir: &Path) -> Result<Observed, BackendError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Observed::default()),
        Err(error) => return Err(io_error(format!("cannot read {}", dir.display()), error)),
    };
    let mut observed = Observed::default();
    let mut snapshot_files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("cannot read {}", dir.display()), e))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue; // not a name keel could have made
        };
        if name.starts_with(TEMP_PREFIX) {
            // A creation cut short by a crash: keel's own, never a volume.
            remove_if_present(&entry.path())
                .map_err(|e| io_error(format!("cannot remove {}", entry.path().display()), e))?;
            continue;
        }
        if name.starts_with('.') || name.len() > MAX_NAME_BYTES {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if !file_type.is_file() {
            continue;
        }
        if name.contains('@') {
            snapshot_files.push(name);
            continue;
        }
        let metadata = entry
            .metadata()
            .map_err(|e| io_error(format!("cannot stat {}", entry.path().display()), e))?;
        let tags = read_tags(dir, &name).unwrap_or_default();
        observed.volumes.insert(
            name,
            ObservedVolume {
                size: metadata.len(),
                origin: tags.origin,
                owner: tags.owner,
                lun_tag: tags.lun,
                volblocksize: None,
            },
        );
    }
    snapshot_files.sort();
    observed.snapshots = snapshot_files
        .into_iter()
        .filter(|name| {
            let head = name.split_once('@').map_or("", |(head, _)| head);
            observed.volumes.contains_key(head)
        })
        .collect();
    remove_stale_sidecars(dir, &observed)?;
    Ok(observed)
}

/// Removes sidecars whose volume file is gone (a crash between writing the sidecar and
/// linking the file, or a file removed by hand) and sidecars cut short while written.
fn remove_stale_sidecars(dir: &Path, observed: &Observed) -> Result<(), BackendError> {
    let sidecars = dir.join(SIDECAR_DIR);
    let entries = match fs::read_dir(&sidecars) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(io_error(
                format!("cannot read {}", sidecars.display()),
                error,
            ));
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let stale = if name.starts_with(TEMP_PREFIX) {
            true
        } else if let Some(volume) = name.strip_suffix(".json") {
            !volume.starts_with('.') && !observed.volumes.contains_key(volume)
        } else {
            false
        };
        if stale {
            remove_if_present(&entry.path())
                .map_err(|e| io_error(format!("cannot remove {}", entry.path().display()), e))?;
        }
    }
    Ok(())
}

fn create_file(dir: &Path, spec: &VolumeSpec, owner: &str) -> Result<(), BackendError> {
    check_name(&spec.name, false)?;
    if owner.is_empty() {
        return Err(BackendError::Failed("the owner tag is empty".into()));
    }
    let target = dir.join(&spec.name);
    let tags = Tags {
        owner: Some(owner.to_string()),
        lun: Some(spec.lun_tag.clone()),
        origin: spec.clone_of.clone(),
    };
    if fs::symlink_metadata(&target).is_ok() {
        // A retry of a creation that did finish is done; anything else is not ours to touch.
        if read_tags(dir, &spec.name).as_ref() == Some(&tags) {
            return Ok(());
        }
        return Err(BackendError::Failed(format!(
            "{} already exists and keel did not make it",
            target.display()
        )));
    }
    let source = match &spec.clone_of {
        Some(source) => {
            check_name(source, true)?;
            let path = dir.join(source);
            let file = File::open(&path)
                .map_err(|e| io_error(format!("cannot open clone source {}", path.display()), e))?;
            let metadata = file
                .metadata()
                .map_err(|e| io_error(format!("cannot stat {}", path.display()), e))?;
            if !metadata.is_file() {
                return Err(BackendError::Failed(format!(
                    "clone source {} is not a regular file",
                    path.display()
                )));
            }
            Some((file, metadata.len()))
        }
        None => None,
    };
    let sidecars = dir.join(SIDECAR_DIR);
    fs::create_dir_all(&sidecars)
        .map_err(|e| io_error(format!("cannot create {}", sidecars.display()), e))?;
    let suffix = random_suffix().map_err(|e| io_error("no randomness", e))?;
    let temp_name = format!("{TEMP_PREFIX}{suffix}");
    let temp = dir.join(&temp_name);
    let made = (|| -> Result<(), BackendError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error(format!("cannot create {}", temp.display()), e))?;
        let size = match &source {
            Some((source, length)) => {
                clone_into(source, &file, *length)
                    .map_err(|e| io_error(format!("cannot clone into {}", temp.display()), e))?;
                spec.size.max(*length)
            }
            None => spec.size,
        };
        file.set_len(size)
            .map_err(|e| io_error(format!("cannot size {}", temp.display()), e))?;
        if !spec.sparse && source.is_none() && size > 0 {
            allocate(&file, size)
                .map_err(|e| io_error(format!("cannot allocate {}", temp.display()), e))?;
        }
        file.sync_all()
            .map_err(|e| io_error(format!("cannot sync {}", temp.display()), e))?;
        let text = serde_json::to_string(&tags)
            .map_err(|e| BackendError::Failed(format!("cannot encode tags: {e}")))?;
        write_atomically(&sidecars, &format!("{}.json", spec.name), text.as_bytes()).map_err(
            |e| {
                io_error(
                    format!("cannot write the sidecar in {}", sidecars.display()),
                    e,
                )
            },
        )?;
        link_without_replacing(dir, &temp_name, &spec.name).map_err(|e| {
            // Someone made the name meanwhile: the sidecar just written is not theirs.
            let _ = remove_if_present(&sidecar_path(dir, &spec.name));
            io_error(format!("cannot put the volume at {}", target.display()), e)
        })?;
        sync_dir(dir).map_err(|e| io_error(format!("cannot sync {}", dir.display()), e))
    })();
    let _ = remove_if_present(&temp);
    made
}

/// Thick provisioning: reserve the blocks (where the file system cannot, it stays sparse).
fn allocate(file: &File, size: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, FallocateFlags::empty(), 0, size) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Renames `dir/from` to `dir/to` unless `to` exists (RENAME_NOREPLACE; where the file
/// system lacks it, a hard link, which also never replaces). `from` may be left behind.
fn link_without_replacing(dir: &Path, from: &str, to: &str) -> io::Result<()> {
    let handle = File::open(dir)?;
    match rustix::fs::renameat_with(&handle, from, &handle, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            fs::hard_link(dir.join(from), dir.join(to))?;
            remove_if_present(&dir.join(from))
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Makes `target` (empty) a copy of `source` (`length` bytes): a reflink where the file
/// system shares blocks, else a copy of the data regions only, so holes stay holes.
fn clone_into(source: &File, target: &File, length: u64) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(target, source).is_ok() {
        return Ok(());
    }
    let mut offset = 0;
    while offset < length {
        let data = match rustix::fs::seek(source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(_) => {
                // No SEEK_DATA here: copy the rest as it is.
                copy_range(source, target, offset, length - offset)?;
                break;
            }
        };
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))
            .unwrap_or(length)
            .min(length);
        copy_range(source, target, data, hole.saturating_sub(data))?;
        offset = hole.max(data + 1);
    }
    Ok(())
}

/// Copies `count` bytes at `start` from `source` to the same offset in `target`: in the
/// kernel (copy_file_range) where it can, else through a buffer.
fn copy_range(source: &File, target: &File, start: u64, count: u64) -> io::Result<()> {
    let end = start + count;
    let mut position = start;
    while position < end {
        let mut read_at = position;
        let mut write_at = position;
        let chunk = usize::try_from((end - position).min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(
            source,
            Some(&mut read_at),
            target,
            Some(&mut write_at),
            chunk,
        ) {
            Ok(0) => return Ok(()), // the source ended early
            Ok(copied) => position += copied as u64,
            Err(_) => return copy_range_buffered(source, target, position, end),
        }
    }
    Ok(())
}

fn copy_range_buffered(source: &File, target: &File, start: u64, end: u64) -> io::Result<()> {
    let mut buffer = vec![0u8; 1 << 20];
    let mut position = start;
    while position < end {
        let want =
            usize::try_from((end - position).min(buffer.len() as u64)).unwrap_or(buffer.len());
        let read = source.read_at(&mut buffer[..want], position)?;
        if read == 0 {
            return Ok(());
        }
        target.write_all_at(&buffer[..read], position)?;
        position += read as u64;
    }
    Ok(())
}

fn destroy_files(dir: &Path, names: &[String]) -> Result<usize, BackendError> {
    for name in names {
        check_name(name, true)?;
    }
    for name in names {
        let path = dir.join(name);
        remove_if_present(&path)
            .map_err(|e| io_error(format!("cannot remove {}", path.display()), e))?;
        let sidecar = sidecar_path(dir, name);
        remove_if_present(&sidecar)
            .map_err(|e| io_error(format!("cannot remove {}", sidecar.display()), e))?;
    }
    match sync_dir(dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(io_error(format!("cannot sync {}", dir.display()), error))
        }
        _ => Ok(names.len()),
    }
}

fn destroy_snapshot_files(dir: &Path, snapshots: &[String]) -> Result<usize, BackendError> {
    let mut volumes: Vec<&str> = Vec::new();
    for snapshot in snapshots {
        check_name(snapshot, true)?;
        let Some((volume, _)) = snapshot.split_once('@') else {
            return Err(BackendError::Failed(format!(
                "{snapshot:?} is not a snapshot name (NAME@SNAP)"
            )));
        };
        if !volumes.contains(&volume) {
            volumes.push(volume);
        }
    }
    destroy_files(dir, snapshots)?;
    Ok(volumes.len())
}

fn grow_file(dir: &Path, name: &str, size: u64) -> Result<(), BackendError> {
    check_name(name, false)?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| io_error(format!("cannot open {}", path.display()), e))?;
    let length = file
        .metadata()
        .map_err(|e| io_error(format!("cannot stat {}", path.display()), e))?
        .len();
    if length >= size {
        return Ok(());
    }
    file.set_len(size)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(format!("cannot grow {}", path.display()), e))
}

impl VolumeBackend for FilesBackend {
    fn describe(&self) -> String {
        format!("files {}", self.dir.display())
    }

    fn list(&self) -> BackendFuture<'_, Observed> {
        self.blocking(list_dir)
    }

    fn create<'a>(&'a self, spec: &'a VolumeSpec, owner: &'a str) -> BackendFuture<'a, ()> {
        let spec = spec.clone();
        let owner = owner.to_string();
        self.blocking(move |dir| create_file(dir, &spec, &owner))
    }

    fn destroy<'a>(&'a self, names: &'a [String]) -> BackendFuture<'a, usize> {
        let names = names.to_vec();
        self.blocking(move |dir| destroy_files(dir, &names))
    }

    fn destroy_snapshots<'a>(&'a self, snapshots: &'a [String]) -> BackendFuture<'a, usize> {
        let snapshots = snapshots.to_vec();
        self.blocking(move |dir| destroy_snapshot_files(dir, &snapshots))
    }

    fn grow<'a>(&'a self, name: &'a str, size: u64) -> BackendFuture<'a, ()> {
        let name = name.to_string();
        self.blocking(move |dir| grow_file(dir, &name, size))
    }

    fn device_path(&self, name: &str) -> PathBuf {
        // Never an absolute path that would replace the directory (names are checked
        // elsewhere; this only keeps a bad one inside).
        self.dir.join(name.trim_start_matches('/'))
    }

    fn wait_device<'a>(&'a self, name: &'a str, _timeout: Duration) -> BackendFuture<'a, PathBuf> {
        let name = name.to_string();
        self.blocking(move |dir| {
            check_name(&name, false)?;
            let path = dir.join(&name);
            match fs::metadata(&path) {
                Ok(metadata) if metadata.is_file() => Ok(path),
                Ok(_) => Err(BackendError::Failed(format!(
                    "{} is not a regular file",
                    path.display()
                ))),
                Err(error) => Err(io_error(
                    format!("no volume file {}", path.display()),
                    error,
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::settings::OnRemove;
    use std::os::unix::fs::MetadataExt;

    fn backend(dir: &Path) -> FilesBackend {
        FilesBackend::new(&PoolSettings {
            name: "local".into(),
            kind: PoolKind::Files { dir: dir.into() },
            owner: "keel".into(),
            device_wait: Duration::from_secs(30),
        })
        .unwrap()
    }

    fn spec(name: &str, size: u64, clone_of: Option<&str>) -> VolumeSpec {
        VolumeSpec {
            pool: "local".into(),
            name: name.into(),
            size,
            clone_of: clone_of.map(String::from),
            volblocksize: None,
            sparse: true,
            on_remove: OnRemove::Destroy,
            lun_tag: format!("iqn.2026-01.org.example:{name} LUN 0 naa.6001405a1b2c3d4e"),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_requires_a_files_pool() {
        let settings = PoolSettings {
            name: "tank".into(),
            kind: PoolKind::Zfs {
                parent: "tank".into(),
                command: vec!["zfs".into()],
                device_root: "/dev/zvol".into(),
            },
            owner: "keel".into(),
            device_wait: Duration::from_secs(30),
        };
        assert!(FilesBackend::new(&settings).is_err());
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        assert_eq!(files.describe(), format!("files {}", dir.path().display()));
        assert_eq!(files.dir(), dir.path());
        assert_eq!(
            files.device_path("/etc/passwd"),
            dir.path().join("etc/passwd")
        );
    }

    #[tokio::test]
    async fn create_list_grow_destroy() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        assert_eq!(files.list().await.unwrap(), Observed::default());
        files
            .create(&spec("vm 01", 1 << 30, None), "keel")
            .await
            .unwrap();
        let path = dir.path().join("vm 01");
        let metadata = fs::metadata(&path).unwrap();
        assert_eq!(metadata.len(), 1 << 30);
        assert!(
            metadata.blocks() * 512 < 1 << 20,
            "sparse: {} blocks",
            metadata.blocks()
        );

        let observed = files.list().await.unwrap();
        let volume = &observed.volumes["vm 01"];
        assert_eq!(volume.size, 1 << 30);
        assert_eq!(volume.owner.as_deref(), Some("keel"));
        assert_eq!(
            volume.lun_tag.as_deref(),
            Some("iqn.2026-01.org.example:vm 01 LUN 0 naa.6001405a1b2c3d4e")
        );
        assert_eq!(volume.origin, None);
        assert_eq!(
            files.wait_device("vm 01", Duration::ZERO).await.unwrap(),
            path
        );

        files.grow("vm 01", 2 << 30).await.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 << 30);
        files.grow("vm 01", 1 << 20).await.unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 << 30, "never shrinks");

        assert_eq!(files.destroy(&names(&["vm 01", "gone"])).await, Ok(2));
        assert!(!path.exists());
        assert!(!sidecar_path(dir.path(), "vm 01").exists());
        assert_eq!(files.list().await.unwrap(), Observed::default());
        assert!(files.wait_device("vm 01", Duration::ZERO).await.is_err());
    }

    #[tokio::test]
    async fn thick_volumes_are_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        let mut thick = spec("thick", 4 << 20, None);
        thick.sparse = false;
        files.create(&thick, "keel").await.unwrap();
        let metadata = fs::metadata(dir.path().join("thick")).unwrap();
        // Allocated where the file system can (tmpfs, ext4, XFS, btrfs all can).
        assert!(
            metadata.blocks() * 512 >= 4 << 20,
            "{} blocks",
            metadata.blocks()
        );
    }

    #[tokio::test]
    async fn clones_copy_data_keep_holes_and_grow() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        let golden = dir.path().join("golden@v1");
        {
            let file = File::create(&golden).unwrap();
            file.set_len(64 << 20).unwrap();
            file.write_all_at(b"boot sector", 0).unwrap();
            file.write_all_at(b"middle", 32 << 20).unwrap();
        }
        files
            .create(&spec("vm1", 128 << 20, Some("golden@v1")), "keel")
            .await
            .unwrap();
        files
            .create(&spec("vm2", 1 << 20, Some("golden@v1")), "keel")
            .await
            .unwrap();
        let vm1 = File::open(dir.path().join("vm1")).unwrap();
        let mut buffer = [0u8; 11];
        vm1.read_exact_at(&mut buffer, 0).unwrap();
        assert_eq!(&buffer, b"boot sector");
        vm1.read_exact_at(&mut buffer[..6], 32 << 20).unwrap();
        assert_eq!(&buffer[..6], b"middle");
        let metadata = vm1.metadata().unwrap();
        assert_eq!(metadata.len(), 128 << 20);
        assert!(
            metadata.blocks() * 512 < 8 << 20,
            "holes kept: {} blocks",
            metadata.blocks()
        );
        // Never smaller than its source.
        assert_eq!(
            fs::metadata(dir.path().join("vm2")).unwrap().len(),
            64 << 20
        );

        let observed = files.list().await.unwrap();
        assert_eq!(observed.volumes["vm1"].origin.as_deref(), Some("golden@v1"));
        // "golden@v1" has no volume "golden": a clone source, not a volume or snapshot.
        assert!(!observed.volumes.contains_key("golden@v1"));
        assert!(observed.snapshots.is_empty());
        assert!(golden.exists());
    }

    #[tokio::test]
    async fn snapshots_of_volumes_are_listed_and_destroyed_per_volume() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        for name in ["a", "b"] {
            files
                .create(&spec(name, 1 << 20, None), "keel")
                .await
                .unwrap();
        }
        for name in ["a@1", "a@2", "b@x", "orphan@1"] {
            File::create(dir.path().join(name)).unwrap();
        }
        let observed = files.list().await.unwrap();
        assert_eq!(observed.snapshots, names(&["a@1", "a@2", "b@x"]));
        assert_eq!(observed.volumes.len(), 2);
        assert_eq!(
            files
                .destroy_snapshots(&names(&["a@1", "b@x", "a@2"]))
                .await,
            Ok(2)
        );
        assert!(files.list().await.unwrap().snapshots.is_empty());
        assert!(files.destroy_snapshots(&names(&["a"])).await.is_err());
    }

    #[tokio::test]
    async fn a_crash_mid_creation_leaves_only_keels_own_files_which_list_removes() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        files
            .create(&spec("kept", 1 << 20, None), "keel")
            .await
            .unwrap();
        // What a crash between the sidecar and the rename leaves: a temporary volume file
        // and a sidecar without its file; and a sidecar write cut short.
        fs::write(dir.path().join(".keel-tmp-0123456789abcdef"), b"partial").unwrap();
        fs::write(
            sidecar_path(dir.path(), "lost"),
            br#"{"owner":"keel","lun":"t","origin":null}"#,
        )
        .unwrap();
        fs::write(
            dir.path()
                .join(SIDECAR_DIR)
                .join(".keel-tmp-feedfacefeedface"),
            b"{",
        )
        .unwrap();
        let observed = files.list().await.unwrap();
        assert_eq!(observed.volumes.keys().collect::<Vec<_>>(), ["kept"]);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, [".keel", "kept"]);
        let sidecars: Vec<String> = fs::read_dir(dir.path().join(SIDECAR_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(sidecars, ["kept.json"]);
    }

    #[tokio::test]
    async fn existing_files_are_never_replaced_or_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        fs::write(dir.path().join("operator"), b"precious").unwrap();
        let err = files
            .create(&spec("operator", 1 << 20, None), "keel")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, BackendError::Failed(m) if m.contains("already exists")),
            "{err:?}"
        );
        assert_eq!(fs::read(dir.path().join("operator")).unwrap(), b"precious");
        assert!(!sidecar_path(dir.path(), "operator").exists());
        let observed = files.list().await.unwrap();
        assert_eq!(observed.volumes["operator"].owner, None);

        // A retried creation that had finished is done, not an error.
        files
            .create(&spec("mine", 1 << 20, None), "keel")
            .await
            .unwrap();
        files
            .create(&spec("mine", 1 << 20, None), "keel")
            .await
            .unwrap();
        // The rename itself never replaces.
        fs::write(dir.path().join("from"), b"new").unwrap();
        let err = link_without_replacing(dir.path(), "from", "operator").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("operator")).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn an_unreadable_sidecar_means_not_keels() {
        let dir = tempfile::tempdir().unwrap();
        let files = backend(dir.path());
        files
            .create(&spec("v", 1 << 20, None), "keel")
            .await
            .unwrap();
        fs::write(sidecar_path(dir.path(), "v"), b"{not json").unwrap();
        let observed = files.list().await.unwrap();
        assert_eq!(observed.volumes["v"].owner, None);
    }

    #[tokio::test]
    async fn names_that_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("pool");
        fs::create_dir(&inner).unwrap();
        let files = backend(&inner);
        let long = "x".repeat(251);
        for name in [
            "..",
            "../x",
            "/etc/x",
            "a/b",
            ".hidden",
            "",
            "a@b",
            long.as_str(),
        ] {
            assert!(
                files
                    .create(&spec(name, 1 << 20, None), "keel")
                    .await
                    .is_err(),
                "{name:?}"
            );
        }
        assert!(
            files
                .create(&spec("ok", 1 << 20, Some("../outside")), "keel")
                .await
                .is_err()
        );
        assert!(
            files
                .create(&spec("ok", 1 << 20, Some("missing@1")), "keel")
                .await
                .is_err()
        );
        assert!(files.destroy(&names(&["../pool"])).await.is_err());
        assert!(files.grow("..", 1).await.is_err());
        assert!(files.wait_device("../pool", Duration::ZERO).await.is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(
            !inner.join(".keel").exists()
                || fs::read_dir(inner.join(".keel")).unwrap().count() == 0
        );
    }

    #[test]
    fn sparse_copy_without_reflink_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let source = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("s"))
            .unwrap();
        source.set_len(16 << 20).unwrap();
        source.write_all_at(&[7u8; 4096], 8 << 20).unwrap();
        let target = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("t"))
            .unwrap();
        copy_range_buffered(&source, &target, 0, 0).unwrap();
        clone_into(&source, &target, 16 << 20).unwrap();
        target.set_len(16 << 20).unwrap();
        let mut buffer = [0u8; 4096];
        target.read_exact_at(&mut buffer, 8 << 20).unwrap();
        assert_eq!(buffer, [7u8; 4096]);
        target.read_exact_at(&mut buffer, 0).unwrap();
        assert_eq!(buffer, [0u8; 4096]);
    }
}
