//! The files of a configuration: the main file and the `*.toml` files of its include
//! directory, read and validated as one whole.
//!
//! An included file holds `[[target]]` tables only. The directory is read in file-name order,
//! not recursively; hidden files (`.name`, which is also how keel names its temporary files)
//! and editor leftovers (`#name#`, `name~`) are skipped. A target name may be declared once
//! over all the files; a second declaration is an error naming both places.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{
    Config, ConfigError, ConfigErrors, Declared, ErrorKind, parse_main, parse_target_file,
};

/// Files read, written and removed, and directories listed: how the Store's tests check that
/// one change touches one file, however many targets there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FileCounts {
    pub reads: usize,
    pub writes: usize,
    pub removals: usize,
    pub listings: usize,
}

/// A validated configuration.
pub(super) struct Loaded {
    pub config: Config,
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
    let mut names = Names::new(source_name);
    for declared in main.targets {
        errors.extend(names.declare(&declared, None));
        config.targets.push(declared.target);
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
        Ok(Loaded { config })
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
}
