//! What keel asks `zfs` to do and how it reads the answer when a call fails (sans-IO): the
//! argument lists, the channel program that destroys a batch in one call, and the
//! classification of failures into [`BackendError`]s.
//!
//! Checked against the OpenZFS 2.3.2 source (`cmd/zfs/zfs_main.c`, `lib/libzfs`,
//! `module/zfs/zfs_ioctl.c`, `man/man8/zfs-program.8`):
//! - `zfs create -p` and `zfs clone -p` succeed without doing anything when the target
//!   already exists, so callers list before creating and never take success as "made by us".
//! - `zfs clone -o volsize=N` is accepted: the properties go with the clone ioctl, which
//!   clones and sets them in the kernel in one call (and destroys the clone if setting
//!   fails); libzfs checks that N is a multiple of the snapshot's volblocksize and not 0. So a
//!   clone that must be larger than its snapshot takes one call, not clone + `zfs set`.
//! - `zfs create -V` rounds volsize up to a multiple of volblocksize itself; `zfs set` and
//!   `zfs clone -o volsize=` do not (they refuse), so keel rounds those up.
//! - `zfs program POOL FILE ARGS...` hands ARGS to the script as `(...)["argv"]`, a 1-based
//!   array of strings; default limits are 10 million Lua instructions and 10 MiB.
//!   `zfs.sync.destroy` and `zfs.check.destroy` return an errno (EBUSY also when a volume
//!   still has snapshots, EEXIST for children or dependent clones); a Lua `error()` ends the
//!   program with a non-zero exit and its message (and a Lua traceback) on stderr, after
//!   the destroys already done.

use std::time::Duration;

use crate::provision::backend::BackendError;
use crate::provision::settings::{LUN_PROPERTY, OWNER_PROPERTY, VolumeSpec};

use super::output::{GET_COLUMNS, LIST_COLUMNS};

/// The longest user property value ZFS stores (`ZAP_MAXVALUELEN` 8192 less the NUL).
const MAX_PROPERTY_VALUE: usize = 8191;

/// `zfs list` of every volume and snapshot under `parent`, in [`LIST_COLUMNS`].
pub(crate) fn list_args(parent: &str) -> Vec<String> {
    strings(&[
        "list",
        "-H",
        "-p",
        "-o",
        &LIST_COLUMNS.join(","),
        "-t",
        "volume,snapshot",
        "-r",
        parent,
    ])
}

/// `zfs create -p [-s] -V SIZE [-b VBS] -o keel:owner=O -o keel:lun=TAG FULL`.
pub(crate) fn create_args(full: &str, spec: &VolumeSpec, owner: &str) -> Vec<String> {
    let mut args = strings(&["create", "-p"]);
    if spec.sparse {
        args.push("-s".into());
    }
    args.push("-V".into());
    args.push(spec.size.to_string());
    if let Some(volblocksize) = spec.volblocksize {
        args.push("-b".into());
        args.push(volblocksize.to_string());
    }
    push_tags(&mut args, owner, &spec.lun_tag);
    args.push(full.into());
    args
}

/// `zfs clone -p -o keel:owner=O -o keel:lun=TAG [-o volsize=N] SNAPSHOT FULL`; `volsize`
/// only when the clone must be larger than its snapshot.
pub(crate) fn clone_args(
    full: &str,
    snapshot: &str,
    owner: &str,
    lun_tag: &str,
    volsize: Option<u64>,
) -> Vec<String> {
    let mut args = strings(&["clone", "-p"]);
    push_tags(&mut args, owner, lun_tag);
    if let Some(volsize) = volsize {
        args.push("-o".into());
        args.push(format!("volsize={volsize}"));
    }
    args.push(snapshot.into());
    args.push(full.into());
    args
}

fn push_tags(args: &mut Vec<String>, owner: &str, lun_tag: &str) {
    args.push("-o".into());
    args.push(format!("{OWNER_PROPERTY}={owner}"));
    args.push("-o".into());
    args.push(format!("{LUN_PROPERTY}={lun_tag}"));
}

/// `zfs get -H -p -o name,property,value volsize,volblocksize DATASET...`.
pub(crate) fn get_sizes_args(datasets: &[&str]) -> Vec<String> {
    let mut args = strings(&[
        "get",
        "-H",
        "-p",
        "-o",
        &GET_COLUMNS.join(","),
        "volsize,volblocksize",
    ]);
    args.extend(datasets.iter().map(|d| d.to_string()));
    args
}

/// `zfs set volsize=SIZE FULL`.
pub(crate) fn grow_args(full: &str, size: u64) -> Vec<String> {
    strings(&["set", &format!("volsize={size}"), full])
}

/// `zfs destroy FULL` (a volume or one snapshot).
pub(crate) fn destroy_args(full: &str) -> Vec<String> {
    strings(&["destroy", full])
}

/// `zfs destroy VOLUME@a,b,c`: the snapshots of one volume in one call (one txg).
pub(crate) fn destroy_snapshots_args(full_volume: &str, snapshots: &[&str]) -> Vec<String> {
    strings(&["destroy", &format!("{full_volume}@{}", snapshots.join(","))])
}

/// `zfs program POOL SCRIPT FULL...`.
pub(crate) fn program_args(pool: &str, script: &str, full_names: &[String]) -> Vec<String> {
    let mut args = strings(&["program", pool, script]);
    args.extend(full_names.iter().cloned());
    args
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Rounds `size` up to a multiple of `block` (`block` 0 leaves it as is).
pub(crate) fn round_up(size: u64, block: u64) -> Option<u64> {
    if block == 0 {
        return Some(size);
    }
    size.div_ceil(block).checked_mul(block)
}

/// Checks a value keel stores in a user property: it must survive `zfs list -H` (no TAB, no
/// newline, no other control character) and fit ZFS's limit.
pub(crate) fn check_tag(property: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_PROPERTY_VALUE {
        return Err(format!(
            "{property} value is {} bytes; ZFS stores at most {MAX_PROPERTY_VALUE}",
            value.len()
        ));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{property} value {value:?} contains the control character {bad:?}"
        ));
    }
    Ok(())
}

/// The channel program that destroys its `argv` in order in one call, all or nothing
/// (`interop/destroy-batch.lua`, shared with `interop/fake-zfs`, which runs the same code).
/// Names that do not exist are skipped; if any destroy would be refused, nothing is
/// destroyed and the error lists each refusal as "failed: ERRNO NAME"; a failure after
/// the checks passed stops with "destroyed K of N". Read by [`parse_program_failure`].
pub(crate) const DESTROY_PROGRAM: &str = include_str!("../../../interop/destroy-batch.lua");

/// Names per `zfs program` call: bounded so the argument list stays far below the kernel's
/// limits (ARG_MAX, the ioctl's nvlist size) with 255-byte names and the program far below
/// its default limits (10 million Lua instructions, 10 MiB: a few hundred instructions and
/// a few hundred bytes per name); and one refused batch holds up no more than this.
pub(crate) const PROGRAM_BATCH: usize = 100;

/// Why the destroy program stopped, read from its stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProgramFailure {
    /// The checks refused and nothing was destroyed (else some were, before `refused`).
    pub nothing_destroyed: bool,
    /// (errno, full name) of each dataset ZFS refused to destroy.
    pub refused: Vec<(i64, String)>,
}

impl ProgramFailure {
    /// One error for the batch: `Failed` if any refusal will not go away by waiting, else
    /// `Busy`; the message names the first such dataset and counts the others.
    pub(crate) fn to_error(&self) -> BackendError {
        let permanent = self.refused.iter().find(|(errno, _)| !is_transient(*errno));
        let (errno, name) = match permanent.or(self.refused.first()) {
            Some((errno, name)) => (*errno, name.as_str()),
            None => {
                return BackendError::Unknown(
                    "the destroy program stopped without naming a dataset".into(),
                );
            }
        };
        let others = match self.refused.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more refused)"),
        };
        let reason = match errno {
            EBUSY | EAGAIN => "dataset is busy (open, or it has snapshots not being destroyed)",
            EEXIST => "it has clones or children not being destroyed",
            ENOENT => "dataset does not exist",
            _ => "refused",
        };
        let message = format!("cannot destroy '{name}': {reason} (errno {errno}){others}");
        if permanent.is_some() {
            BackendError::Failed(message)
        } else {
            BackendError::Busy(message)
        }
    }
}

const ENOENT: i64 = 2;
const EAGAIN: i64 = 11;
const EBUSY: i64 = 16;
const EEXIST: i64 = 17;

fn is_transient(errno: i64) -> bool {
    matches!(errno, EBUSY | EAGAIN)
}

/// Finds the destroy program's own stop message in stderr, e.g.
/// "Channel program execution failed:\n[string \"channel program\"]:51: keel:destroy-batch:
/// nothing destroyed\nfailed: 16 tank/keel/vm 01\nstack traceback: ...". `None` when the
/// program did not run to report anything (refused, limits, no such subcommand).
pub(crate) fn parse_program_failure(stderr: &str) -> Option<ProgramFailure> {
    const MARKER: &str = "keel:destroy-batch: ";
    let rest = &stderr[stderr.find(MARKER)? + MARKER.len()..];
    let nothing_destroyed = rest.starts_with("nothing destroyed");
    if !nothing_destroyed && !rest.starts_with("destroyed ") {
        return None;
    }
    let refused = rest
        .lines()
        .skip(1)
        .map_while(|line| line.strip_prefix("failed: "))
        .filter_map(|line| {
            let (errno, name) = line.split_once(' ')?;
            Some((errno.parse::<i64>().ok()?, name.to_string()))
        })
        .collect();
    Some(ProgramFailure {
        nothing_destroyed,
        refused,
    })
}

/// Whether a failed `zfs program` looks like channel programs being unusable here (an old
/// `zfs` without the subcommand, a wrapper or sudo rule that refuses it, not root, limits)
/// rather than a busy pool.
pub(crate) fn program_refused(stderr: &str) -> bool {
    !is_busy(stderr) || stderr.contains("Channel program execution failed")
}

/// How a `zfs` process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed by keel after this long without finishing.
    TimedOut(Duration),
    /// Killed by keel: more output than it keeps.
    OutputTooLarge,
}

/// The error for a call that did not succeed. `call` names it ("zfs clone") for the
/// messages that have no stderr to quote.
pub(crate) fn classify(call: &str, exit: &Exit, stderr: &[u8]) -> BackendError {
    let text = one_line(stderr);
    let quoted = if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    };
    match exit {
        Exit::Signal(signal) => {
            BackendError::Unknown(format!("{call} was killed by signal {signal}{quoted}"))
        }
        Exit::TimedOut(limit) => BackendError::Unknown(format!(
            "{call} did not finish within {} s and was killed{quoted}",
            limit.as_secs_f64()
        )),
        Exit::OutputTooLarge => BackendError::Unknown(format!(
            "{call}: its output was more than keel reads, or could not be read"
        )),
        Exit::Code(code) => {
            if is_busy(&text) {
                BackendError::Busy(text)
            } else if text.is_empty() {
                BackendError::Failed(format!("{call} exited with status {code} and no message"))
            } else {
                BackendError::Failed(text)
            }
        }
    }
}

/// Busy, suspended or timed out: nothing changed, try again later.
pub(crate) fn is_busy(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    const PHRASES: [&str; 8] = [
        "dataset is busy",
        "pool is busy",
        "resource busy",
        "is currently suspended",
        "timed out",
        "timeout",
        "try again",
        "temporarily unavailable",
    ];
    if PHRASES.iter().any(|p| lower.contains(p)) {
        return true;
    }
    // "lock" as a word ("lock timeout", "could not acquire lock", "pool is locked"), never
    // inside "block" or "volblocksize".
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| matches!(word, "lock" | "locked" | "busy"))
}

/// Whether a failed call only says that what it was to act on does not exist.
pub(crate) fn is_missing(stderr: &[u8]) -> bool {
    let text = String::from_utf8_lossy(stderr);
    text.contains("dataset does not exist") || text.contains("could not find any snapshots")
}

/// stderr as one trimmed line: lines joined with "; ", at most 1000 bytes.
pub(crate) fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.len() > 1000 {
        let mut cut = 1000;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str(" ...");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provision::settings::OnRemove;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            pool: "tank".into(),
            name: "vm 01".into(),
            size: 1 << 30,
            clone_of: None,
            volblocksize: None,
            sparse: false,
            on_remove: OnRemove::Keep,
            lun_tag: "iqn.2026-01.org.example:vm01 LUN 0 naa.6001405a1b2c3d4e".into(),
        }
    }

    #[test]
    fn list_asks_for_the_columns_the_parser_reads() {
        assert_eq!(
            list_args("tank/keel"),
            [
                "list",
                "-H",
                "-p",
                "-o",
                "name,type,volsize,volblocksize,origin,keel:owner,keel:lun",
                "-t",
                "volume,snapshot",
                "-r",
                "tank/keel"
            ]
        );
    }

    #[test]
    fn create_thick_and_sparse() {
        let tag = "keel:lun=iqn.2026-01.org.example:vm01 LUN 0 naa.6001405a1b2c3d4e";
        assert_eq!(
            create_args("tank/keel/vm 01", &spec(), "keel"),
            [
                "create",
                "-p",
                "-V",
                "1073741824",
                "-o",
                "keel:owner=keel",
                "-o",
                tag,
                "tank/keel/vm 01"
            ]
        );
        let sparse = VolumeSpec {
            sparse: true,
            volblocksize: Some(65536),
            ..spec()
        };
        assert_eq!(
            create_args("tank/keel/vm 01", &sparse, "keel"),
            [
                "create",
                "-p",
                "-s",
                "-V",
                "1073741824",
                "-b",
                "65536",
                "-o",
                "keel:owner=keel",
                "-o",
                tag,
                "tank/keel/vm 01"
            ]
        );
    }

    #[test]
    fn clone_with_and_without_volsize() {
        assert_eq!(
            clone_args("tank/keel/a", "tank/g@v1", "keel", "t", None),
            [
                "clone",
                "-p",
                "-o",
                "keel:owner=keel",
                "-o",
                "keel:lun=t",
                "tank/g@v1",
                "tank/keel/a"
            ]
        );
        assert_eq!(
            clone_args("tank/keel/a", "tank/g@v1", "keel", "t", Some(4096)),
            [
                "clone",
                "-p",
                "-o",
                "keel:owner=keel",
                "-o",
                "keel:lun=t",
                "-o",
                "volsize=4096",
                "tank/g@v1",
                "tank/keel/a"
            ]
        );
    }

    #[test]
    fn other_commands() {
        assert_eq!(
            grow_args("tank/keel/a", 8192),
            ["set", "volsize=8192", "tank/keel/a"]
        );
        assert_eq!(destroy_args("tank/keel/a b"), ["destroy", "tank/keel/a b"]);
        assert_eq!(
            destroy_snapshots_args("tank/keel/a", &["s1", "s 2"]),
            ["destroy", "tank/keel/a@s1,s 2"]
        );
        assert_eq!(
            program_args(
                "tank",
                "/tmp/x.lua",
                &["tank/keel/a".into(), "tank/keel/b".into()]
            ),
            [
                "program",
                "tank",
                "/tmp/x.lua",
                "tank/keel/a",
                "tank/keel/b"
            ]
        );
        assert_eq!(
            get_sizes_args(&["tank/g@v1", "tank/g"]),
            [
                "get",
                "-H",
                "-p",
                "-o",
                "name,property,value",
                "volsize,volblocksize",
                "tank/g@v1",
                "tank/g"
            ]
        );
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 16384), Some(0));
        assert_eq!(round_up(1, 16384), Some(16384));
        assert_eq!(round_up(16384, 16384), Some(16384));
        assert_eq!(round_up(16385, 16384), Some(32768));
        assert_eq!(round_up(7, 0), Some(7));
        assert_eq!(round_up(u64::MAX, 16384), None);
    }

    #[test]
    fn tags_must_survive_a_listing() {
        assert_eq!(check_tag("keel:lun", "iqn.x:y LUN 0 naa.1"), Ok(()));
        assert!(
            check_tag("keel:lun", "a\tb")
                .unwrap_err()
                .contains("control")
        );
        assert!(check_tag("keel:lun", "a\nb").is_err());
        assert!(
            check_tag("keel:owner", &"x".repeat(8192))
                .unwrap_err()
                .contains("8191")
        );
    }

    #[test]
    fn failures_are_classified() {
        let busy = [
            "cannot destroy 'tank/keel/a': dataset is busy\n",
            "cannot create 'tank/keel/a': pool I/O is currently suspended\n",
            "cannot open 'tank': pool is busy\n",
            "fake-zfs: lock timeout after 30 s\n",
            "could not acquire the pool lock\n",
            "operation timed out\n",
        ];
        for stderr in busy {
            let err = classify("zfs destroy", &Exit::Code(1), stderr.as_bytes());
            assert!(matches!(err, BackendError::Busy(_)), "{stderr}: {err:?}");
        }
        let failed = [
            "cannot create 'tank/keel/a': out of space\n",
            "cannot create 'tank/keel/a': 'volsize' must be a multiple of volume block size (16K)\n",
            "cannot open 'tank/g@v1': dataset does not exist\n",
            "sudo: a password is required\n",
        ];
        for stderr in failed {
            let err = classify("zfs create", &Exit::Code(1), stderr.as_bytes());
            assert_eq!(err, BackendError::Failed(stderr.trim().to_string()));
        }
        assert_eq!(
            classify("zfs create", &Exit::Code(2), b"  \n"),
            BackendError::Failed("zfs create exited with status 2 and no message".into())
        );
        let err = classify("zfs clone", &Exit::Signal(9), b"");
        assert_eq!(
            err,
            BackendError::Unknown("zfs clone was killed by signal 9".into())
        );
        let err = classify("zfs clone", &Exit::TimedOut(Duration::from_secs(600)), b"");
        assert!(matches!(err, BackendError::Unknown(m) if m.contains("600 s")));
        assert!(matches!(
            classify("zfs list", &Exit::OutputTooLarge, b""),
            BackendError::Unknown(_)
        ));
    }

    #[test]
    fn stderr_becomes_one_line() {
        assert_eq!(
            one_line(b"cannot destroy 'a': filesystem has children\nuse '-r' to destroy the following datasets:\na/b\n"),
            "cannot destroy 'a': filesystem has children; use '-r' to destroy the following datasets:; a/b"
        );
        let long = "é".repeat(600);
        let line = one_line(long.as_bytes());
        assert!(line.len() <= 1004 && line.ends_with(" ..."));
    }

    #[test]
    fn missing_datasets_are_recognised() {
        assert!(is_missing(
            b"cannot open 'tank/keel/a': dataset does not exist\n"
        ));
        assert!(is_missing(
            b"could not find any snapshots to destroy; check snapshot names.\n"
        ));
        assert!(!is_missing(
            b"cannot destroy 'tank/keel/a': dataset is busy\n"
        ));
    }

    #[test]
    fn program_failures_are_read_from_the_scripts_messages() {
        let stderr = "Channel program execution failed:\n[string \"channel program\"]:51: \
                      keel:destroy-batch: nothing destroyed\nfailed: 16 tank/keel/vm 01\n\
                      failed: 17 tank/keel/golden@v1\nstack traceback:\n\t[C]: in function 'error'\n";
        let failure = parse_program_failure(stderr).unwrap();
        assert!(failure.nothing_destroyed);
        assert_eq!(
            failure.refused,
            vec![
                (16, "tank/keel/vm 01".to_string()),
                (17, "tank/keel/golden@v1".to_string())
            ]
        );
        // EEXIST will not go away by waiting: the batch is Failed, named by it.
        assert_eq!(
            failure.to_error(),
            BackendError::Failed(
                "cannot destroy 'tank/keel/golden@v1': it has clones or children not being \
                 destroyed (errno 17) (and 1 more refused)"
                    .into()
            )
        );
        let stderr = "x: keel:destroy-batch: destroyed 2 of 5\nfailed: 16 tank/keel/c\n";
        let failure = parse_program_failure(stderr).unwrap();
        assert!(!failure.nothing_destroyed);
        assert!(matches!(failure.to_error(), BackendError::Busy(m) if m.contains("tank/keel/c")));
        let failure = parse_program_failure("keel:destroy-batch: nothing destroyed\n").unwrap();
        assert!(matches!(failure.to_error(), BackendError::Unknown(_)));
        assert_eq!(
            parse_program_failure("Channel program execution failed:\nTimed out."),
            None
        );
        assert_eq!(
            parse_program_failure("keel:destroy-batch: something else"),
            None
        );
    }

    #[test]
    fn the_shared_program_reads_argv_and_reports_as_parsed() {
        assert!(DESTROY_PROGRAM.contains(r#"args["argv"]"#));
        assert!(DESTROY_PROGRAM.contains("zfs.sync.destroy(name)"));
        assert!(DESTROY_PROGRAM.contains(r#""keel:destroy-batch: nothing destroyed\n""#));
        assert!(DESTROY_PROGRAM.contains(r#""keel:destroy-batch: destroyed ""#));
        assert!(DESTROY_PROGRAM.contains(r#""failed: " .. err .. " " .. name"#));
    }

    #[test]
    fn refused_programs_fall_back_but_busy_pools_do_not() {
        assert!(program_refused("unrecognized command 'program'\n"));
        assert!(program_refused(
            "Channel program execution failed:\nPermission denied. Channel programs must be run as root.\n"
        ));
        assert!(program_refused(
            "Channel program execution failed:\nTimed out.\n"
        ));
        assert!(program_refused("sudo: a password is required\n"));
        assert!(!program_refused("cannot open 'tank': pool is busy\n"));
    }
}
