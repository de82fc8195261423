//! The configuration's files on disk: which entries of an include directory are target
//! files, counted reads, and the durable writes (atomic replace, removal, directory
//! creation) the [`Store`] edits them with. Parsing and validation are `config.rs`'s; this
//! module only touches the file system, so it imports nothing from it.
//!
//! [`Store`]: super::Store

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where a target is declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// In the main configuration file (or the embedded default).
    Main,
    /// In this file of the include directory.
    Included(PathBuf),
}

/// Files read, written and removed, and directories listed: how the Store's tests check that
/// one change touches one file, however many targets there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FileCounts {
    pub reads: usize,
    pub writes: usize,
    pub removals: usize,
    pub listings: usize,
}

/// Reads a file's text, counting it.
pub(super) fn read(path: &Path, counts: &mut FileCounts) -> io::Result<String> {
    counts.reads += 1;
    fs::read_to_string(path)
}

/// The `*.toml` files of an include directory, sorted by name; hidden files, editor
/// leftovers and anything not a regular file are skipped.
pub(super) fn list_include_dir(dir: &Path, counts: &mut FileCounts) -> io::Result<Vec<PathBuf>> {
    counts.listings += 1;
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // A name that is not UTF-8 cannot end in ".toml" as far as the operator can tell.
        let Some(name) = name.to_str() else { continue };
        if !is_target_file_name(name) {
            continue;
        }
        let path = entry.path();
        // fs::metadata follows symlinks: a link to a file is read, a directory is not.
        if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a directory entry's name is a target file: `*.toml`, not hidden (keel's own
/// temporary files and editors' swap files start with '.'), not an editor leftover.
fn is_target_file_name(name: &str) -> bool {
    name.ends_with(".toml")
        && name.len() > ".toml".len()
        && !name.starts_with('.')
        && !name.starts_with('#')
}

/// Replaces `path` with `text` so that a crash leaves the old file or the new one, never a
/// mix: a temporary file in the same directory, fsync, rename over `path`, fsync the
/// directory. A replaced file keeps its permissions, owner and group; a new one is 0600 (it
/// may hold CHAP secrets). A symlink (loads follow them) stays a symlink: the file it points
/// to is the one replaced.
pub(super) fn write_atomically(path: &Path, text: &str, counts: &mut FileCounts) -> io::Result<()> {
    let existing = match fs::canonicalize(path) {
        Ok(real) => Some((fs::metadata(&real)?, real)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let path = existing.as_ref().map_or(path, |(_, real)| real.as_path());
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    // Hidden, so a load never mistakes it for a target file.
    let temp = dir.join(format!(".{}.keel-tmp", file_name.to_string_lossy()));
    let mode = match &existing {
        Some((m, _)) => m.permissions().mode() & 0o7777,
        None => 0o600,
    };
    counts.writes += 1;
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        if let Some((m, _)) = &existing {
            // The group often grants the access (a 0640 file of group keel); a file created
            // here would get this process's instead.
            let temp_meta = file.metadata()?;
            if (temp_meta.uid(), temp_meta.gid()) != (m.uid(), m.gid()) {
                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
            }
        }
        // A leftover temporary file from a crash keeps its old mode through `open`, and
        // chown clears set-id bits.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Removes `path` durably (the directory is synced).
pub(super) fn remove_durably(path: &Path, counts: &mut FileCounts) -> io::Result<()> {
    counts.removals += 1;
    fs::remove_file(path)?;
    sync_dir(parent_dir(path))
}

/// Creates `dir` (and its parents) when missing, durably.
pub(super) fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir)?;
    sync_dir(parent_dir(dir))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync of a directory: makes a rename, creation or removal in it durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_toml_files_are_target_files() {
        for good in ["a.toml", "iqn.2026-11.org.example:a.toml", "0.toml"] {
            assert!(is_target_file_name(good), "{good}");
        }
        for bad in [
            ".toml",
            ".a.toml",
            ".a.toml.keel-tmp",
            ".a.toml.swp",
            "#a.toml#",
            "a.toml~",
            "a.toml.bak",
            "a.tom",
            "readme",
        ] {
            assert!(!is_target_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_atomic_write_replaces_keeps_the_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        let mut counts = FileCounts::default();
        write_atomically(&path, "one\n", &mut counts).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "a new file may hold secrets");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "two\n", &mut counts).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(mode(&path), 0o640);
        assert_eq!(counts.writes, 2);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.toml"]);
    }

    #[test]
    fn an_atomic_write_through_a_symlink_replaces_the_target_and_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        let include = dir.path().join("targets.d");
        fs::create_dir_all(&real_dir).unwrap();
        fs::create_dir_all(&include).unwrap();
        let real = real_dir.join("a.toml");
        fs::write(&real, "one\n").unwrap();
        let link = include.join("a.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, "two\n", &mut FileCounts::default()).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "two\n");
        let entries = |d: &Path| fs::read_dir(d).unwrap().count();
        assert_eq!((entries(&include), entries(&real_dir)), (1, 1));
    }

    #[test]
    fn an_atomic_write_keeps_the_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        fs::write(&path, "one\n").unwrap();
        let me = fs::metadata(&path).unwrap();
        // Only root may give a file away; others can still check that nothing changes.
        let (uid, gid) = if me.uid() == 0 {
            (4321, 4322)
        } else {
            (me.uid(), me.gid())
        };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomically(&path, "two\n", &mut FileCounts::default()).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!((after.uid(), after.gid()), (uid, gid));
        assert_eq!(after.permissions().mode() & 0o777, 0o640);
    }
}
