//! The files of a configuration: the main file and the `*.toml` files of its include
//! directory, read and validated as one whole, and the atomic writes the [`Store`] edits
//! them with.
//!
//! An included file holds `[[target]]` tables only. The directory is read in file-name order,
//! not recursively; hidden files (`.name`, which is also how keel names its temporary files)
//! and editor leftovers (`#name#`, `name~`) are skipped. A target name may be declared once
//! over all the files; a second declaration is an error naming both places.
//!
//! [`Store`]: super::Store

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{
    Config, ConfigError, ConfigErrors, Declared, ErrorKind, parse_main, parse_target_file,
};

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

/// A validated configuration and the file of each of its targets.
pub(super) struct Loaded {
    pub config: Config,
    /// `origins[i]` declares `config.targets[i]`.
    pub origins: Vec<Origin>,
}

/// Reads a file's text, counting it.
pub(super) fn read(path: &Path, counts: &mut FileCounts) -> io::Result<String> {
    counts.reads += 1;
    fs::read_to_string(path)
}

/// Loads the main file at `path` and its include directory (relative to the file's own
/// directory).
pub(super) fn load_path(path: &Path, counts: &mut FileCounts) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let text = read(path, counts)
        .map_err(|e| ConfigErrors::one(ErrorKind::Io, &name, format!("cannot read: {e}")))?;
    let base = path.parent().unwrap_or(Path::new(""));
    load_text(&text, &name, base, counts)
}

/// Loads a main file's text; its include directory, when relative, is taken from `base_dir`.
/// Every error of every file is reported, each with its file.
pub(super) fn load_text(
    text: &str,
    source_name: &str,
    base_dir: &Path,
    counts: &mut FileCounts,
) -> Result<Loaded, ConfigErrors> {
    let main = parse_main(text).map_err(|e| ConfigErrors::invalid(source_name, vec![e]))?;
    let mut errors = main.errors;
    let mut config = main.config;
    let mut origins = Vec::new();
    let mut names = Names::new(source_name);
    for declared in main.targets {
        errors.extend(names.declare(&declared, None));
        config.targets.push(declared.target);
        origins.push(Origin::Main);
    }
    if let Some((dir, line)) = main.include {
        let dir = base_dir.join(dir);
        match list_include_dir(&dir, counts) {
            Ok(files) => {
                for file in files {
                    let shown = file.display().to_string();
                    let text = match read(&file, counts) {
                        Ok(text) => text,
                        Err(e) => {
                            errors.push(in_file(&shown, ConfigError::new(None, e.to_string())));
                            continue;
                        }
                    };
                    let part = parse_target_file(&text, &config.data_dir);
                    errors.extend(part.errors.into_iter().map(|e| in_file(&shown, e)));
                    let warnings = part.warnings.into_iter().map(|w| in_file(&shown, w));
                    config.warnings.extend(warnings);
                    for declared in part.targets {
                        errors.extend(names.declare(&declared, Some(&shown)));
                        config.targets.push(declared.target);
                        origins.push(Origin::Included(file.clone()));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                config.warnings.push(ConfigError::new(
                    Some(line),
                    format!(
                        "include directory {} does not exist: no targets from it (it is \
                         created when a target is added)",
                        dir.display()
                    ),
                ));
            }
            Err(e) => errors.push(ConfigError::new(
                Some(line),
                format!("include directory {}: {e}", dir.display()),
            )),
        }
        config.include = Some(dir);
    }
    if errors.is_empty() {
        Ok(Loaded { config, origins })
    } else {
        Err(ConfigErrors::invalid(source_name, errors))
    }
}

/// `error`, as found in `file`.
pub(super) fn in_file(file: &str, mut error: ConfigError) -> ConfigError {
    error.file.get_or_insert_with(|| file.to_string());
    error
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

/// Target names declared so far, for the one-declaration rule across files.
pub(super) struct Names<'a> {
    main_name: &'a str,
    /// Lower-cased name → (file, `None` for the main file; line).
    seen: BTreeMap<String, (Option<String>, usize)>,
}

impl<'a> Names<'a> {
    /// `main_name` shows the main file in messages.
    pub(super) fn new(main_name: &'a str) -> Self {
        Names {
            main_name,
            seen: BTreeMap::new(),
        }
    }

    /// Records a declaration in `file` (`None`: the main file); an error if the name is
    /// already declared, naming the first place.
    pub(super) fn declare(
        &mut self,
        declared: &Declared,
        file: Option<&str>,
    ) -> Option<ConfigError> {
        let name = &declared.target.name;
        let key = name.to_ascii_lowercase();
        if let Some((first_file, first_line)) = self.seen.get(&key) {
            let first = match (first_file.as_deref(), file) {
                (a, b) if a == b => format!("line {first_line}"),
                (a, _) => format!("{}:{first_line}", a.unwrap_or(self.main_name)),
            };
            return Some(ConfigError {
                file: file.map(str::to_string),
                line: Some(declared.line),
                message: format!("target {name:?} is declared twice (first at {first})"),
            });
        }
        self.seen
            .insert(key, (file.map(str::to_string), declared.line));
        None
    }
}

/// Replaces `path` with `text` so that a crash leaves the old file or the new one, never a
/// mix: a temporary file in the same directory, fsync, rename over `path`, fsync the
/// directory. A replaced file keeps its permissions; a new one is 0600 (it may hold CHAP
/// secrets).
pub(super) fn write_atomically(path: &Path, text: &str, counts: &mut FileCounts) -> io::Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    // Hidden, so a load never mistakes it for a target file.
    let temp = dir.join(format!(".{}.keel-tmp", file_name.to_string_lossy()));
    let mode = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => 0o600,
    };
    counts.writes += 1;
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)?;
        // A leftover temporary file from a crash keeps its old mode through `open`.
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
}
