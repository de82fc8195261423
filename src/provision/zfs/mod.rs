//! The ZFS backend: zvols under a parent dataset, managed through the `zfs` CLI (libzfs has
//! no stable ABI), each call one async child process whose `-H -p` output is parsed
//! strictly.
//!
//! - `command.rs` (sans-IO): the argument lists, the batched-destroy channel program, and
//!   how a failed call is classified (busy / unknown / failed).
//! - `output.rs` (sans-IO): the parsers of `zfs list` and `zfs get` output.
//! - `runner.rs`: the child process (tokio::process, bounded run time, kill on drop).
//!
//! Calls per operation: list 1; create 1; clone 1 (plus one `zfs get` the first time a
//! snapshot is cloned, to learn its size: cached, since a snapshot never changes); destroy
//! 1 per [`command::PROGRAM_BATCH`] names with `zfs program`, else 1 per name; snapshot
//! destroy 1 per volume; grow 2 (it reads the size first, so it can never shrink).

mod command;
pub mod output;
mod runner;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::backend::{BackendError, BackendFuture, Observed, VolumeBackend};
use super::names::{validate_dataset, validate_snapshot, validate_volume_name};
use super::settings::{LUN_PROPERTY, OWNER_PROPERTY, PoolKind, PoolSettings, VolumeSpec};
use command::{Exit, is_missing};
use output::{DatasetKind, ListEntry};
use runner::{Finished, Runner};

/// How long one `zfs` call may take before it is killed and its outcome is unknown. Calls
/// queue behind the server's lock; minutes are normal under load.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// Runs of the destroy program per batch at most (see `ZfsBackend::destroy_batch`).
const PROGRAM_ROUNDS: usize = 3;
/// How often [`VolumeBackend::wait_device`] looks for the device node.
const DEVICE_POLL: Duration = Duration::from_millis(50);

/// What a clone needs to know about its snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SnapshotSizes {
    volsize: u64,
    volblocksize: u64,
}

/// A pool of kind `zfs`: volumes are zvols `PARENT/NAME`.
pub struct ZfsBackend {
    parent: String,
    /// The pool `zfs program` runs on: the parent's first component.
    pool: String,
    device_root: PathBuf,
    runner: Runner,
    /// Where the channel program is written for `zfs program` (default: the temp dir).
    script_dir: PathBuf,
    program_batch: usize,
    /// Set once `zfs program` was refused (old zfs, not root, a wrapper that does not allow
    /// it): destroys go one by one from then on.
    program_refused: AtomicBool,
    /// Sizes of snapshots cloned from, by full name. A snapshot is immutable; an entry is
    /// dropped when a clone from it fails and when keel destroys it.
    snapshot_sizes: Mutex<HashMap<String, SnapshotSizes>>,
}

impl ZfsBackend {
    /// The backend of a `zfs` pool. Fails if `settings` is not of kind zfs, its parent is not
    /// a valid dataset name or its command is empty.
    pub fn new(settings: &PoolSettings) -> Result<Self, BackendError> {
        let PoolKind::Zfs {
            parent,
            command,
            device_root,
        } = &settings.kind
        else {
            return Err(BackendError::Failed(format!(
                "pool {:?} is not of kind zfs",
                settings.name
            )));
        };
        validate_dataset(parent).map_err(|why| {
            BackendError::Failed(format!("pool {:?}: parent dataset: {why}", settings.name))
        })?;
        if command.first().is_none_or(|program| program.is_empty()) {
            return Err(BackendError::Failed(format!(
                "pool {:?}: the zfs command is empty",
                settings.name
            )));
        }
        let pool = parent.split('/').next().unwrap_or(parent).to_string();
        Ok(ZfsBackend {
            parent: parent.clone(),
            pool,
            device_root: device_root.clone(),
            runner: Runner {
                command: command.clone(),
                timeout: DEFAULT_COMMAND_TIMEOUT,
            },
            script_dir: std::env::temp_dir(),
            program_batch: command::PROGRAM_BATCH,
            program_refused: AtomicBool::new(false),
            snapshot_sizes: Mutex::new(HashMap::new()),
        })
    }

    /// Sets how long one `zfs` call may run before it is killed (its outcome then unknown).
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.runner.timeout = timeout;
        self
    }

    /// Sets where the channel program file is written for `zfs program`.
    pub fn with_script_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.script_dir = dir.into();
        self
    }

    /// Removes channel program files that a keel killed during a `zfs program` call left in
    /// the script directory (a file is removed right after its call otherwise): those whose
    /// writer's pid (in the name) is not a running process. A live process's file, and
    /// anything not named like keel's, is never touched. Returns how many were removed.
    pub fn sweep_stale_program_files(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.script_dir) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(program_file_pid) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => tracing::warn!(
                    path = %entry.path().display(),
                    %error,
                    "cannot remove a stale channel program file"
                ),
            }
        }
        if removed > 0 {
            tracing::info!(
                dir = %self.script_dir.display(),
                removed,
                "removed channel program files left by a keel that was killed"
            );
        }
        removed
    }

    /// Sets how many names one `zfs program` call destroys (at least 1).
    pub fn with_program_batch(mut self, names: usize) -> Self {
        self.program_batch = names.max(1);
        self
    }

    /// The parent dataset volumes live under.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// "PARENT/NAME" for a volume name, checked.
    fn volume_name(&self, relative: &str) -> Result<String, BackendError> {
        validate_volume_name(&self.parent, relative).map_err(BackendError::Failed)?;
        Ok(format!("{}/{relative}", self.parent))
    }

    /// "PARENT/NAME" or "PARENT/NAME@SNAP", checked.
    fn dataset_or_snapshot_name(&self, relative: &str) -> Result<String, BackendError> {
        match relative.split_once('@') {
            None => self.volume_name(relative),
            Some((volume, _)) => {
                self.volume_name(volume)?;
                let full = format!("{}/{relative}", self.parent);
                validate_snapshot(&full).map_err(BackendError::Failed)?;
                Ok(full)
            }
        }
    }

    /// Runs one call; a failure is classified.
    async fn call(&self, args: Vec<String>) -> Result<Finished, BackendError> {
        let finished = self.runner.run(&args).await?;
        tracing::debug!(pool = %self.parent, call = ?args, exit = ?finished.exit, "zfs call");
        if finished.success() {
            Ok(finished)
        } else {
            Err(command::classify(
                &self.runner.describe(&args),
                &finished.exit,
                &finished.stderr,
            ))
        }
    }

    /// Runs one call that may find its target already gone: `Ok(false)` then.
    async fn call_unless_missing(&self, args: Vec<String>) -> Result<bool, BackendError> {
        let finished = self.runner.run(&args).await?;
        tracing::debug!(pool = %self.parent, call = ?args, exit = ?finished.exit, "zfs call");
        if finished.success() {
            return Ok(true);
        }
        if matches!(finished.exit, Exit::Code(_)) && is_missing(&finished.stderr) {
            return Ok(false);
        }
        Err(command::classify(
            &self.runner.describe(&args),
            &finished.exit,
            &finished.stderr,
        ))
    }

    async fn list_volumes(&self) -> Result<Observed, BackendError> {
        let args = command::list_args(&self.parent);
        let finished = self.runner.run(&args).await?;
        tracing::debug!(pool = %self.parent, exit = ?finished.exit, "zfs list");
        if !finished.success() {
            // The parent does not exist yet: nothing under it (the first create makes it).
            if matches!(finished.exit, Exit::Code(_)) && is_missing(&finished.stderr) {
                return Ok(Observed::default());
            }
            return Err(command::classify(
                &self.runner.describe(&args),
                &finished.exit,
                &finished.stderr,
            ));
        }
        let unreadable = |e: output::ParseError| {
            BackendError::Unknown(format!("unreadable zfs list output: {e}"))
        };
        let entries = output::parse_list(&finished.stdout).map_err(unreadable)?;
        let observed = output::observed_from_list(&self.parent, &entries).map_err(unreadable)?;
        self.remember_listed_snapshots(&entries);
        Ok(observed)
    }

    /// A listing shows the sizes of the snapshots under the parent (volsize on the snapshot
    /// line, volblocksize on its volume's): remember them for clones from them.
    fn remember_listed_snapshots(&self, entries: &[ListEntry]) {
        let blocks: HashMap<&str, u64> = entries
            .iter()
            .filter(|e| e.kind == DatasetKind::Volume)
            .filter_map(|e| Some((e.name.as_str(), e.volblocksize?)))
            .collect();
        let Ok(mut sizes) = self.snapshot_sizes.lock() else {
            return;
        };
        for entry in entries.iter().filter(|e| e.kind == DatasetKind::Snapshot) {
            let head = entry.name.split_once('@').map_or("", |(head, _)| head);
            if let (Some(volsize), Some(&volblocksize)) = (entry.volsize, blocks.get(head)) {
                sizes.insert(
                    entry.name.clone(),
                    SnapshotSizes {
                        volsize,
                        volblocksize,
                    },
                );
            }
        }
    }

    fn forget_snapshot(&self, snapshot: &str) {
        if let Ok(mut sizes) = self.snapshot_sizes.lock() {
            sizes.remove(snapshot);
        }
    }

    /// The size and block size of a snapshot to clone: cached, else one `zfs get` of the
    /// snapshot and its volume (ZFS shows volblocksize only on the volume).
    async fn snapshot_sizes(&self, snapshot: &str) -> Result<SnapshotSizes, BackendError> {
        if let Some(sizes) = self
            .snapshot_sizes
            .lock()
            .ok()
            .and_then(|sizes| sizes.get(snapshot).copied())
        {
            return Ok(sizes);
        }
        let head = snapshot.split_once('@').map_or(snapshot, |(head, _)| head);
        let finished = self
            .call(command::get_sizes_args(&[snapshot, head]))
            .await?;
        let unreadable = |e: output::ParseError| {
            BackendError::Unknown(format!("unreadable zfs get output: {e}"))
        };
        let values = output::parse_get(&finished.stdout).map_err(unreadable)?;
        let volsize = output::get_count(&values, snapshot, "volsize").map_err(unreadable)?;
        let volblocksize = match output::get_count(&values, snapshot, "volblocksize") {
            Ok(Some(size)) => Some(size),
            _ => output::get_count(&values, head, "volblocksize").map_err(unreadable)?,
        };
        let (Some(volsize), Some(volblocksize)) = (volsize, volblocksize) else {
            return Err(BackendError::Failed(format!(
                "cannot clone '{snapshot}': it is not a snapshot of a volume"
            )));
        };
        let sizes = SnapshotSizes {
            volsize,
            volblocksize,
        };
        if let Ok(mut cache) = self.snapshot_sizes.lock() {
            cache.insert(snapshot.to_string(), sizes);
        }
        Ok(sizes)
    }

    async fn create_volume(&self, spec: &VolumeSpec, owner: &str) -> Result<(), BackendError> {
        let full = self.volume_name(&spec.name)?;
        if owner.is_empty() {
            return Err(BackendError::Failed(format!(
                "{OWNER_PROPERTY} value is empty"
            )));
        }
        command::check_tag(OWNER_PROPERTY, owner).map_err(BackendError::Failed)?;
        command::check_tag(LUN_PROPERTY, &spec.lun_tag).map_err(BackendError::Failed)?;
        let Some(snapshot) = &spec.clone_of else {
            self.call(command::create_args(&full, spec, owner)).await?;
            return Ok(());
        };
        validate_snapshot(snapshot)
            .map_err(|why| BackendError::Failed(format!("clone_of: {why}")))?;
        if snapshot.split(['/', '@']).next() != Some(self.pool.as_str()) {
            return Err(BackendError::Failed(format!(
                "cannot clone '{snapshot}' into pool '{}': a clone must be in its snapshot's pool",
                self.pool
            )));
        }
        let sizes = self.snapshot_sizes(snapshot).await?;
        let wanted = command::round_up(spec.size, sizes.volblocksize)
            .ok_or_else(|| BackendError::Failed(format!("size {} is too large", spec.size)))?;
        // Only ever larger: `-o volsize` below the snapshot's would cut the image short.
        let volsize = (wanted > sizes.volsize).then_some(wanted);
        let args = command::clone_args(&full, snapshot, owner, &spec.lun_tag, volsize);
        let result = self.call(args).await.map(|_| ());
        if matches!(result, Err(BackendError::Failed(_))) {
            // Perhaps the snapshot is gone or was made anew: ask again next time.
            self.forget_snapshot(snapshot);
        }
        result
    }

    async fn grow_volume(&self, name: &str, size: u64) -> Result<(), BackendError> {
        let full = self.volume_name(name)?;
        let finished = self.call(command::get_sizes_args(&[&full])).await?;
        let unreadable = |e: output::ParseError| {
            BackendError::Unknown(format!("unreadable zfs get output: {e}"))
        };
        let values = output::parse_get(&finished.stdout).map_err(unreadable)?;
        let current = output::get_count(&values, &full, "volsize").map_err(unreadable)?;
        let block = output::get_count(&values, &full, "volblocksize").map_err(unreadable)?;
        let (Some(current), Some(block)) = (current, block) else {
            return Err(BackendError::Failed(format!("'{full}' is not a volume")));
        };
        let wanted = command::round_up(size, block)
            .ok_or_else(|| BackendError::Failed(format!("size {size} is too large")))?;
        if wanted <= current {
            return Ok(());
        }
        self.call(command::grow_args(&full, wanted)).await?;
        Ok(())
    }

    async fn destroy_datasets(&self, names: &[String]) -> Result<usize, BackendError> {
        let full: Vec<String> = names
            .iter()
            .map(|name| self.dataset_or_snapshot_name(name))
            .collect::<Result<_, _>>()?;
        let mut calls = 0;
        let mut remaining: &[String] = &full;
        while !remaining.is_empty() && !self.program_refused.load(Ordering::Relaxed) {
            let (batch, rest) = remaining.split_at(self.program_batch.min(remaining.len()));
            match self.destroy_batch(batch, &mut calls).await {
                Ok(true) => remaining = rest,
                Ok(false) => break, // refused: the batch goes one by one
                Err(error) => {
                    self.forget_snapshots(&full);
                    return Err(error);
                }
            }
        }
        for name in remaining {
            calls += 1;
            if let Err(error) = self.call_unless_missing(command::destroy_args(name)).await {
                self.forget_snapshots(&full);
                return Err(error);
            }
        }
        self.forget_snapshots(&full);
        Ok(calls)
    }

    fn forget_snapshots(&self, names: &[String]) {
        for name in names.iter().filter(|name| name.contains('@')) {
            self.forget_snapshot(name);
        }
    }

    /// Destroys `batch` with `zfs program`. `Ok(true)`: all gone. `Ok(false)`: channel
    /// programs are refused here (remembered); the batch is to go one by one.
    ///
    /// The program destroys all or nothing; when ZFS refuses some names (a busy volume),
    /// it is run again without them, so one busy clone does not hold up its batch. Removing
    /// a refused clone makes its snapshot and that snapshot's volume refused in turn (they
    /// still have a dependent), hence up to [`PROGRAM_ROUNDS`] runs. The first refusal, the
    /// cause, is returned.
    async fn destroy_batch(
        &self,
        batch: &[String],
        calls: &mut usize,
    ) -> Result<bool, BackendError> {
        let mut names = batch.to_vec();
        let mut first_error = None;
        for _ in 0..PROGRAM_ROUNDS {
            let failure = match self.run_program(&names, calls).await? {
                ProgramRun::Done => break,
                ProgramRun::Refused => return Ok(false),
                ProgramRun::Stopped(failure) => failure,
            };
            first_error.get_or_insert_with(|| failure.to_error());
            if !failure.nothing_destroyed || failure.refused.is_empty() {
                break;
            }
            names.retain(|name| !failure.refused.iter().any(|(_, refused)| refused == name));
            if names.is_empty() {
                break;
            }
        }
        match first_error {
            None => Ok(true),
            Some(error) => Err(error),
        }
    }

    async fn run_program(
        &self,
        names: &[String],
        calls: &mut usize,
    ) -> Result<ProgramRun, BackendError> {
        let script = match ProgramFile::write(&self.script_dir).await {
            Ok(script) => script,
            Err(error) => {
                tracing::warn!(
                    pool = %self.parent,
                    dir = %self.script_dir.display(),
                    %error,
                    "cannot write the destroy channel program; destroying one by one"
                );
                self.program_refused.store(true, Ordering::Relaxed);
                return Ok(ProgramRun::Refused);
            }
        };
        let args = command::program_args(&self.pool, &script.path_text(), names);
        let finished = self.runner.run(&args).await;
        script.remove().await;
        let finished = finished?;
        *calls += 1;
        tracing::debug!(pool = %self.parent, names = names.len(), exit = ?finished.exit, "zfs program");
        if finished.success() {
            return Ok(ProgramRun::Done);
        }
        let stderr = String::from_utf8_lossy(&finished.stderr);
        if !matches!(finished.exit, Exit::Code(_)) {
            return Err(command::classify(
                &self.runner.describe(&args),
                &finished.exit,
                &finished.stderr,
            ));
        }
        if let Some(failure) = command::parse_program_failure(&stderr) {
            return Ok(ProgramRun::Stopped(failure));
        }
        if command::program_refused(&stderr) {
            tracing::warn!(
                pool = %self.parent,
                stderr = %command::one_line(&finished.stderr),
                "zfs program refused; destroying one by one from now on"
            );
            self.program_refused.store(true, Ordering::Relaxed);
            return Ok(ProgramRun::Refused);
        }
        Err(command::classify(
            &self.runner.describe(&args),
            &finished.exit,
            &finished.stderr,
        ))
    }

    async fn destroy_snapshot_names(&self, snapshots: &[String]) -> Result<usize, BackendError> {
        // Group by volume, in the order volumes first appear.
        let mut volumes: Vec<(String, Vec<&str>)> = Vec::new();
        for relative in snapshots {
            let Some((volume, snapshot)) = relative.split_once('@') else {
                return Err(BackendError::Failed(format!(
                    "{relative:?} is not a snapshot name (NAME@SNAP)"
                )));
            };
            self.dataset_or_snapshot_name(relative)?;
            let full_volume = self.volume_name(volume)?;
            match volumes.iter_mut().find(|(name, _)| *name == full_volume) {
                Some((_, names)) => names.push(snapshot),
                None => volumes.push((full_volume, vec![snapshot])),
            }
        }
        let mut calls = 0;
        for (volume, names) in &volumes {
            calls += 1;
            let result = self
                .call_unless_missing(command::destroy_snapshots_args(volume, names))
                .await;
            for name in names {
                self.forget_snapshot(&format!("{volume}@{name}"));
            }
            result?;
        }
        Ok(calls)
    }

    async fn wait_for_device(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<PathBuf, BackendError> {
        self.volume_name(name)?;
        let path = self.device_path(name);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let error = match tokio::fs::File::open(&path).await {
                Ok(_) => return Ok(path),
                Err(error) => error,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Failed(format!(
                    "device {} did not become readable within {} s: {error}",
                    path.display(),
                    timeout.as_secs_f64()
                )));
            }
            tokio::time::sleep(DEVICE_POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }
}

enum ProgramRun {
    Done,
    Refused,
    Stopped(command::ProgramFailure),
}

/// The writer's pid in a program file's name, `keel-destroy-batch-PID-HEX16.lua`
/// ([`ProgramFile::write`]); `None` for any other name.
fn program_file_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("keel-destroy-batch-")?
        .strip_suffix(".lua")?;
    let (pid, suffix) = rest.split_once('-')?;
    let hex = suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    if hex && digits {
        pid.parse().ok()
    } else {
        None
    }
}

/// The destroy program in a file of its own for one `zfs program` call (created new with a
/// random name, so nothing else's file is ever used or overwritten), removed afterwards.
struct ProgramFile {
    path: PathBuf,
}

impl ProgramFile {
    async fn write(dir: &std::path::Path) -> std::io::Result<ProgramFile> {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!(
            "keel-destroy-batch-{}-{suffix}.lua",
            std::process::id()
        ));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        let written = async {
            file.write_all(command::DESTROY_PROGRAM.as_bytes()).await?;
            file.flush().await
        }
        .await;
        if let Err(error) = written {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(error);
        }
        Ok(ProgramFile { path })
    }

    fn path_text(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    async fn remove(self) {
        if let Err(error) = tokio::fs::remove_file(&self.path).await {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the channel program file");
        }
    }
}

impl VolumeBackend for ZfsBackend {
    fn describe(&self) -> String {
        format!("zfs {}", self.parent)
    }

    fn list(&self) -> BackendFuture<'_, Observed> {
        Box::pin(self.list_volumes())
    }

    fn create<'a>(&'a self, spec: &'a VolumeSpec, owner: &'a str) -> BackendFuture<'a, ()> {
        Box::pin(self.create_volume(spec, owner))
    }

    fn destroy<'a>(&'a self, names: &'a [String]) -> BackendFuture<'a, usize> {
        Box::pin(async move {
            if names.is_empty() {
                return Ok(0);
            }
            self.destroy_datasets(names).await
        })
    }

    fn destroy_snapshots<'a>(&'a self, snapshots: &'a [String]) -> BackendFuture<'a, usize> {
        Box::pin(self.destroy_snapshot_names(snapshots))
    }

    fn grow<'a>(&'a self, name: &'a str, size: u64) -> BackendFuture<'a, ()> {
        Box::pin(self.grow_volume(name, size))
    }

    fn device_path(&self, name: &str) -> PathBuf {
        // Never an absolute path that would replace the root (names are checked elsewhere).
        self.device_root
            .join(&self.parent)
            .join(name.trim_start_matches('/'))
    }

    fn wait_device<'a>(&'a self, name: &'a str, timeout: Duration) -> BackendFuture<'a, PathBuf> {
        Box::pin(self.wait_for_device(name, timeout))
    }
}
