//! The layering inside `scsi/` and around it, checked on the source text so a wrong `use`
//! fails `cargo test` (and so CI) instead of waiting for a reviewer:
//! - `unit/` (logical-unit state) never refers to `commands/` (the handlers);
//! - nothing in `scsi/` refers to the iSCSI codec (`crate::wire`): the transport and the SCSI
//!   layer share only the leaf `crate::payload`.

use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("src/scsi is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The lines of code (comments left out) of every file under `dir` that contain `needle`.
fn offending_lines(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(dir) {
        let text = fs::read_to_string(&file).expect("a source file is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains(needle) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

fn scsi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/scsi")
}

#[test]
fn unit_state_does_not_import_the_command_handlers() {
    let found = offending_lines(&scsi_dir().join("unit"), "commands");
    assert!(
        found.is_empty(),
        "unit/ refers to commands/:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scsi_layer_does_not_import_the_iscsi_codec() {
    // Spelled in two pieces so this file does not find itself.
    let codec = ["crate", "wire"].join("::");
    let found = offending_lines(&scsi_dir(), &codec);
    assert!(
        found.is_empty(),
        "scsi/ refers to the iSCSI codec:\n{}",
        found.join("\n")
    );
}
