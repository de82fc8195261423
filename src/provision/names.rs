//! ZFS dataset and snapshot names, checked up front so that a bad name is a clear
//! configuration error instead of a failed `zfs` call in the middle of a batch.
//!
//! The rules are OpenZFS's (`module/zcommon/zfs_namecheck.c`, 2.3): a name is components
//! separated by '/', each made of ASCII letters, digits, '_', '-', '.', ':' and space; no
//! component is empty, "." or ".."; no leading or trailing '/'; the first component (the pool)
//! begins with a letter and is not a reserved vdev word; at most 255 bytes in all
//! (`ZFS_MAX_DATASET_NAME_LEN` is 256 including the terminating NUL); fewer than 50 levels of
//! nesting (`zfs_max_dataset_nesting`). A snapshot is a dataset name, one '@' and one more
//! component. ZFS itself also accepts '%' inside components (it names temporary datasets
//! "%recv" and the like); keel never makes such names, so its own names must not contain '%'
//! or '#' (bookmarks).

/// `ZFS_MAX_DATASET_NAME_LEN` (256) less the terminating NUL.
pub const MAX_NAME_BYTES: usize = 255;
/// `zfs_max_dataset_nesting`: a name may have at most 49 '/' separators.
pub const MAX_NESTING: usize = 50;

const ALLOWED: &str = "allowed are ASCII letters, digits, '_', '-', '.', ':' and space";

/// Checks a dataset (file system or volume) name keel will use, e.g. "tank/keel/vm 01".
pub fn validate_dataset(name: &str) -> Result<(), String> {
    check_dataset(name, Percent::Reject)
}

/// Checks a full snapshot name, e.g. "tank/golden@v1".
pub fn validate_snapshot(name: &str) -> Result<(), String> {
    check_snapshot(name, Percent::Reject)
}

/// Checks a volume name relative to its pool's parent dataset: `relative` is what a LUN's
/// `volume = "POOL/NAME"` gives as NAME (it may contain '/'); the full name
/// `PARENT/RELATIVE` must be a valid dataset name, including its length.
pub fn validate_volume_name(parent: &str, relative: &str) -> Result<(), String> {
    validate_dataset(parent).map_err(|why| format!("parent dataset: {why}"))?;
    if relative.is_empty() {
        return Err("volume name is empty".to_string());
    }
    if relative.contains('@') {
        return Err(format!(
            "volume name {relative:?} contains '@': a volume name cannot name a snapshot"
        ));
    }
    if relative.starts_with('/') {
        return Err(format!(
            "volume name {relative:?} begins with '/': it is relative to the parent dataset {parent:?}"
        ));
    }
    let full = format!("{parent}/{relative}");
    validate_dataset(&full).map_err(|why| format!("volume {relative:?} in {parent:?}: {why}"))
}

/// Whether '%' is accepted inside components: ZFS itself accepts it (names it lists), keel
/// does not make such names.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Percent {
    Accept,
    Reject,
}

/// Checks a name ZFS reported (in `zfs list` output): ZFS's own rules, '%' allowed.
pub(crate) fn check_reported(name: &str) -> Result<(), String> {
    if name.contains('@') {
        check_snapshot(name, Percent::Accept)
    } else {
        check_dataset(name, Percent::Accept)
    }
}

fn check_length(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes; ZFS allows at most {MAX_NAME_BYTES} \
             (ZFS_MAX_DATASET_NAME_LEN is 256 including the terminating NUL)",
            name.len()
        ));
    }
    Ok(())
}

pub(crate) fn check_dataset(name: &str, percent: Percent) -> Result<(), String> {
    if name.is_empty() {
        return Err("dataset name is empty".to_string());
    }
    check_length(name)?;
    if name.contains('@') {
        return Err(format!(
            "dataset name {name:?} contains '@', which separates a snapshot name"
        ));
    }
    if name.contains('#') {
        return Err(format!(
            "dataset name {name:?} contains '#', which separates a bookmark name"
        ));
    }
    if name.starts_with('/') {
        return Err(format!("dataset name {name:?} begins with '/'"));
    }
    if name.ends_with('/') {
        return Err(format!("dataset name {name:?} ends with '/'"));
    }
    let separators = name.matches('/').count();
    if separators >= MAX_NESTING {
        return Err(format!(
            "dataset name {name:?} is nested {separators} levels deep; ZFS allows fewer than {MAX_NESTING}"
        ));
    }
    for component in name.split('/') {
        check_component(name, component, percent)?;
    }
    let pool = name.split('/').next().unwrap_or_default();
    check_pool(name, pool)
}

pub(crate) fn check_snapshot(name: &str, percent: Percent) -> Result<(), String> {
    if name.is_empty() {
        return Err("snapshot name is empty".to_string());
    }
    check_length(name)?;
    let Some((dataset, snapshot)) = name.split_once('@') else {
        return Err(format!(
            "snapshot name {name:?} has no '@' (DATASET@SNAPSHOT)"
        ));
    };
    if snapshot.contains('@') {
        return Err(format!("snapshot name {name:?} has more than one '@'"));
    }
    if snapshot.contains('/') {
        return Err(format!("snapshot name {name:?} has a '/' after the '@'"));
    }
    if snapshot.is_empty() {
        return Err(format!("snapshot name {name:?} has nothing after the '@'"));
    }
    check_dataset(dataset, percent)?;
    check_component(name, snapshot, percent)
}

fn check_component(name: &str, component: &str, percent: Percent) -> Result<(), String> {
    if component.is_empty() {
        return Err(format!(
            "name {name:?} has an empty component (two '/' in a row)"
        ));
    }
    if component == "." || component == ".." {
        return Err(format!(
            "name {name:?} has a component {component:?}, which ZFS does not allow"
        ));
    }
    let allowed = |c: char| valid_char(c) || (c == '%' && percent == Percent::Accept);
    if let Some(bad) = component.chars().find(|&c| !allowed(c)) {
        return Err(format!(
            "name {name:?} contains the character {bad:?} in component {component:?}; {ALLOWED}"
        ));
    }
    Ok(())
}

fn check_pool(name: &str, pool: &str) -> Result<(), String> {
    if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "name {name:?}: its pool name {pool:?} must begin with a letter"
        ));
    }
    if matches!(pool, "mirror" | "raidz" | "draid") {
        return Err(format!(
            "name {name:?}: {pool:?} is reserved and cannot be a pool name"
        ));
    }
    Ok(())
}

/// zfs_namecheck.c's `valid_char`.
fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid dataset name of exactly `len` bytes under "tank/".
    fn long_name(len: usize) -> String {
        let mut name = "tank/".to_string();
        name.push_str(&"v".repeat(len - name.len()));
        name
    }

    #[test]
    fn accepts_ordinary_names_with_spaces_and_punctuation() {
        for name in [
            "tank",
            "tank/keel",
            "tank/keel/vm 01",
            "tank/keel/a.b:c_d-e",
            "Tank2/ leading space",
            "tank/trailing space ",
        ] {
            assert_eq!(validate_dataset(name), Ok(()), "{name}");
        }
        assert_eq!(validate_snapshot("tank/golden image@v 1"), Ok(()));
        assert_eq!(validate_snapshot("tank@now"), Ok(()));
    }

    #[test]
    fn length_limit_is_255_bytes() {
        assert_eq!(validate_dataset(&long_name(255)), Ok(()));
        let err = validate_dataset(&long_name(256)).unwrap_err();
        assert!(
            err.contains("256 bytes") && err.contains("at most 255"),
            "{err}"
        );
        let snapshot = format!("{}@s", long_name(253));
        assert_eq!(validate_snapshot(&snapshot), Ok(()));
        let snapshot = format!("{}@ss", long_name(253));
        assert!(
            validate_snapshot(&snapshot)
                .unwrap_err()
                .contains("at most 255")
        );
    }

    #[test]
    fn rejects_bad_structure_with_the_rule_named() {
        let cases = [
            ("", "empty"),
            ("/tank/a", "begins with '/'"),
            ("tank/a/", "ends with '/'"),
            ("tank//a", "empty component"),
            ("tank/./a", "\".\""),
            ("tank/../a", "\"..\""),
            ("tank/a@b", "'@'"),
            ("tank/a#b", "'#'"),
            ("tank/a%b", "'%'"),
            ("tank/a\tb", "'\\t'"),
            ("tank/ä", "'ä'"),
            ("tank/a*b", "'*'"),
            ("1tank/a", "must begin with a letter"),
            ("mirror/a", "reserved"),
        ];
        for (name, expect) in cases {
            let err = validate_dataset(name).unwrap_err();
            assert!(err.contains(expect), "{name:?}: {err}");
        }
    }

    #[test]
    fn nesting_limit() {
        let deep = format!("tank{}", "/a".repeat(50));
        assert!(validate_dataset(&deep).unwrap_err().contains("nested 50"));
        let ok = format!("tank{}", "/a".repeat(49));
        assert_eq!(validate_dataset(&ok), Ok(()));
    }

    #[test]
    fn snapshot_rules() {
        let cases = [
            ("tank/a", "no '@'"),
            ("tank/a@", "nothing after"),
            ("tank/a@b@c", "more than one '@'"),
            ("tank/a@b/c", "'/' after the '@'"),
            ("@b", "dataset name is empty"),
            ("tank/a@b%c", "'%'"),
            ("tank//a@b", "empty component"),
        ];
        for (name, expect) in cases {
            let err = validate_snapshot(name).unwrap_err();
            assert!(err.contains(expect), "{name:?}: {err}");
        }
    }

    #[test]
    fn volume_names_are_checked_in_full() {
        assert_eq!(validate_volume_name("tank/keel", "vm 01"), Ok(()));
        assert_eq!(validate_volume_name("tank/keel", "group/vm01"), Ok(()));
        // "tank/keel/" is 10 bytes: 245 more make 255.
        assert_eq!(validate_volume_name("tank/keel", &"x".repeat(245)), Ok(()));
        let err = validate_volume_name("tank/keel", &"x".repeat(246)).unwrap_err();
        assert!(err.contains("256 bytes"), "{err}");
        assert!(
            validate_volume_name("tank/keel", "")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            validate_volume_name("tank/keel", "a@b")
                .unwrap_err()
                .contains("'@'")
        );
        assert!(
            validate_volume_name("tank/keel", "/a")
                .unwrap_err()
                .contains("relative")
        );
        assert!(
            validate_volume_name("tank/keel", "a/")
                .unwrap_err()
                .contains("ends with")
        );
        assert!(
            validate_volume_name("tank/keel", "..")
                .unwrap_err()
                .contains("\"..\"")
        );
        assert!(
            validate_volume_name("tank//keel", "a")
                .unwrap_err()
                .starts_with("parent")
        );
    }

    #[test]
    fn reported_names_may_contain_percent() {
        assert_eq!(check_reported("tank/keel/%recv"), Ok(()));
        assert_eq!(check_reported("tank/keel/v@%x"), Ok(()));
        assert!(check_reported("tank/keel/a b@").is_err());
    }
}
