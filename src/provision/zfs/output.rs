//! Strict parsers of `zfs ... -H -p` output (sans-IO).
//!
//! Scripted mode (`-H`) prints one line per dataset, fields separated by exactly one TAB, no
//! header, no padding; `-p` prints numbers as exact decimal integers. A field that does not
//! apply to a dataset, an unset user property and the `origin` of a dataset that is not a
//! clone are all printed as "-" (OpenZFS 2.3 `cmd/zfs/zfs_main.c`, `collect_dataset`). Names
//! never contain a TAB or a newline (zfs_namecheck.c), so only the user-property values,
//! which are free text, could; a line with the wrong number of fields is an error, never a
//! guess. Every error names its line; nothing here panics on any input.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use nom::branch::alt;
use nom::bytes::complete::{tag, take_till};
use nom::character::complete::{char, digit1};
use nom::combinator::{all_consuming, map_res, value};
use nom::multi::separated_list1;
use nom::{IResult, Parser};

use crate::provision::backend::{Observed, ObservedVolume};
use crate::provision::names::{Percent, check_reported, check_snapshot};
use crate::provision::settings::{LUN_PROPERTY, OWNER_PROPERTY};

/// The columns of the listing keel asks for, in order (`zfs list -H -p -o ...`).
pub const LIST_COLUMNS: [&str; 7] = [
    "name",
    "type",
    "volsize",
    "volblocksize",
    "origin",
    OWNER_PROPERTY,
    LUN_PROPERTY,
];

/// The columns of a `zfs get` keel asks for (`zfs get -H -p -o name,property,value ...`).
pub const GET_COLUMNS: [&str; 3] = ["name", "property", "value"];

/// A malformed piece of output. `line` is 1-based; 0 means the output as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// The `type` property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    Filesystem,
    Volume,
    Snapshot,
    Bookmark,
}

/// One line of `zfs list -H -p -o name,type,volsize,volblocksize,origin,keel:owner,keel:lun`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// 1-based line number, for errors found later.
    pub line: usize,
    /// Full name, e.g. "tank/keel/vm 01" or "tank/keel/vm 01@base".
    pub name: String,
    pub kind: DatasetKind,
    pub volsize: Option<u64>,
    pub volblocksize: Option<u64>,
    /// Full snapshot name, for a clone.
    pub origin: Option<String>,
    pub owner: Option<String>,
    pub lun_tag: Option<String>,
}

/// One line of `zfs get -H -p -o name,property,value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyValue {
    pub name: String,
    pub property: String,
    /// `None` for "-" (not applicable or unset).
    pub value: Option<String>,
}

/// Splits output into lines, each checked to be UTF-8 and newline-terminated (`zfs` ends
/// every line with '\n'; a last line without one is output cut short).
fn lines(output: &[u8]) -> Result<Vec<(usize, &str)>, ParseError> {
    if output.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = output.strip_suffix(b"\n") else {
        let last = output.split(|&b| b == b'\n').count();
        return Err(error(
            last,
            "the output ends without a newline (cut short?)",
        ));
    };
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(index, bytes)| {
            let number = index + 1;
            std::str::from_utf8(bytes)
                .map(|text| (number, text))
                .map_err(|_| error(number, "not valid UTF-8"))
        })
        .collect()
}

/// A line's TAB-separated fields (possibly empty ones).
fn tab_fields(line: &str) -> IResult<&str, Vec<&str>> {
    all_consuming(separated_list1(char('\t'), take_till(|c| c == '\t'))).parse(line)
}

fn fields<'a>(number: usize, line: &'a str, columns: &[&str]) -> Result<Vec<&'a str>, ParseError> {
    let found = match tab_fields(line) {
        Ok((_, found)) => found,
        Err(_) => return Err(error(number, "cannot split the line into fields")),
    };
    if found.len() != columns.len() {
        return Err(error(
            number,
            format!(
                "expected {} TAB-separated fields ({}), found {}",
                columns.len(),
                columns.join(","),
                found.len()
            ),
        ));
    }
    Ok(found)
}

fn kind(input: &str) -> IResult<&str, DatasetKind> {
    all_consuming(alt((
        value(DatasetKind::Filesystem, tag("filesystem")),
        value(DatasetKind::Volume, tag("volume")),
        value(DatasetKind::Snapshot, tag("snapshot")),
        value(DatasetKind::Bookmark, tag("bookmark")),
    )))
    .parse(input)
}

/// "-" or an exact decimal integer that fits in 64 bits (no sign, no suffix, no spaces).
fn count(input: &str) -> IResult<&str, Option<u64>> {
    all_consuming(alt((
        value(None, tag("-")),
        map_res(digit1, |digits: &str| digits.parse::<u64>().map(Some)),
    )))
    .parse(input)
}

fn parse_count(number: usize, column: &str, field: &str) -> Result<Option<u64>, ParseError> {
    count(field).map(|(_, parsed)| parsed).map_err(|_| {
        error(
            number,
            format!("{column}: expected '-' or an integer below 2^64, found {field:?}"),
        )
    })
}

/// "-" is ZFS's "unset" (a user property whose value is literally "-" reads the same).
fn optional_text(field: &str) -> Option<String> {
    (field != "-").then(|| field.to_string())
}

/// Parses `zfs list -H -p -o name,type,volsize,volblocksize,origin,keel:owner,keel:lun`.
pub fn parse_list(output: &[u8]) -> Result<Vec<ListEntry>, ParseError> {
    let mut entries = Vec::new();
    for (number, line) in lines(output)? {
        let found = fields(number, line, &LIST_COLUMNS)?;
        let [
            name,
            kind_field,
            volsize,
            volblocksize,
            origin,
            owner,
            lun_tag,
        ] = found[..]
        else {
            return Err(error(number, "wrong number of fields"));
        };
        let (_, kind) = kind(kind_field).map_err(|_| {
            error(
                number,
                format!(
                    "type: expected filesystem, volume, snapshot or bookmark, found {kind_field:?}"
                ),
            )
        })?;
        if kind != DatasetKind::Bookmark {
            check_reported(name).map_err(|why| error(number, why))?;
            if name.contains('@') != (kind == DatasetKind::Snapshot) {
                return Err(error(
                    number,
                    format!("{name:?} has type {kind_field} but a snapshot name is NAME@SNAP"),
                ));
            }
        }
        let origin = optional_text(origin);
        if let Some(origin) = &origin {
            check_snapshot(origin, Percent::Accept)
                .map_err(|why| error(number, format!("origin: {why}")))?;
        }
        let entry = ListEntry {
            line: number,
            name: name.to_string(),
            kind,
            volsize: parse_count(number, "volsize", volsize)?,
            volblocksize: parse_count(number, "volblocksize", volblocksize)?,
            origin,
            owner: optional_text(owner),
            lun_tag: optional_text(lun_tag),
        };
        if entry.kind == DatasetKind::Volume {
            if entry.volsize.is_none() {
                return Err(error(number, format!("volume {name:?} has no volsize")));
            }
            if entry.volblocksize.is_none() {
                return Err(error(
                    number,
                    format!("volume {name:?} has no volblocksize"),
                ));
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Turns a listing of `-r PARENT` into what is under the pool: volumes by name relative to
/// `parent`, and the snapshots of those volumes ("NAME@SNAP"). The parent itself, file
/// systems, bookmarks and snapshots of anything but a listed volume are left out. A name not
/// under `parent` is an error (the listing is not the one asked for).
pub fn observed_from_list(parent: &str, entries: &[ListEntry]) -> Result<Observed, ParseError> {
    let child_prefix = format!("{parent}/");
    let snapshot_prefix = format!("{parent}@");
    let mut volumes = BTreeMap::new();
    let mut snapshots = Vec::new();
    for entry in entries {
        if entry.kind == DatasetKind::Bookmark || entry.name == parent {
            continue;
        }
        if entry.name.starts_with(&snapshot_prefix) {
            continue; // a snapshot of the parent file system
        }
        let Some(relative) = entry.name.strip_prefix(&child_prefix) else {
            return Err(error(
                entry.line,
                format!("{:?} is not under {parent:?}", entry.name),
            ));
        };
        match entry.kind {
            DatasetKind::Volume => {
                let volume = ObservedVolume {
                    size: entry.volsize.unwrap_or_default(),
                    origin: entry.origin.clone(),
                    owner: entry.owner.clone(),
                    lun_tag: entry.lun_tag.clone(),
                    volblocksize: entry.volblocksize,
                };
                if volumes.insert(relative.to_string(), volume).is_some() {
                    return Err(error(
                        entry.line,
                        format!("{:?} is listed twice", entry.name),
                    ));
                }
            }
            DatasetKind::Snapshot => snapshots.push((entry.line, relative)),
            DatasetKind::Filesystem | DatasetKind::Bookmark => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    for (line, snapshot) in snapshots {
        let head = snapshot.split_once('@').map_or(snapshot, |(head, _)| head);
        if !volumes.contains_key(head) {
            continue; // a snapshot of a file system under the parent
        }
        if !seen.insert(snapshot) {
            return Err(error(line, format!("{snapshot:?} is listed twice")));
        }
        kept.push(snapshot.to_string());
    }
    Ok(Observed {
        volumes,
        snapshots: kept,
    })
}

/// [`parse_list`] then [`observed_from_list`].
pub fn parse_observed(parent: &str, output: &[u8]) -> Result<Observed, ParseError> {
    observed_from_list(parent, &parse_list(output)?)
}

/// Parses `zfs get -H -p -o name,property,value PROPS DATASETS`. Values are free text (a
/// user property may contain a TAB: then the line has too many fields and is an error).
pub fn parse_get(output: &[u8]) -> Result<Vec<PropertyValue>, ParseError> {
    let mut values = Vec::new();
    for (number, line) in lines(output)? {
        let found = fields(number, line, &GET_COLUMNS)?;
        let [name, property, text] = found[..] else {
            return Err(error(number, "wrong number of fields"));
        };
        if name.is_empty() || property.is_empty() {
            return Err(error(number, "empty name or property"));
        }
        values.push(PropertyValue {
            name: name.to_string(),
            property: property.to_string(),
            value: optional_text(text),
        });
    }
    Ok(values)
}

/// The integer value of `property` of `name` in a parsed `zfs get`: `Ok(None)` for "-",
/// an error if the line is missing or not an integer.
pub fn get_count(
    values: &[PropertyValue],
    name: &str,
    property: &str,
) -> Result<Option<u64>, ParseError> {
    let Some(found) = values
        .iter()
        .find(|v| v.name == name && v.property == property)
    else {
        return Err(error(0, format!("no {property} of {name:?} in the output")));
    };
    match &found.value {
        None => Ok(None),
        Some(text) => parse_count(0, property, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST_23: &[u8] = include_bytes!("../../../tests/data/zfs/list-volumes-2.3.txt");
    const LIST_EMPTY_23: &[u8] = include_bytes!("../../../tests/data/zfs/list-empty-2.3.txt");
    const GET_23: &[u8] = include_bytes!("../../../tests/data/zfs/get-snapshot-2.3.txt");

    /// Captured in the OpenZFS 2.3.2 guest (interop/vm/scenarios/provision), byte for byte.
    const REAL_CLONES: &[u8] =
        include_bytes!("../../../tests/data/zfs/captured-list-clones-2.3.2.txt");
    const REAL_LONG_NAMES: &[u8] =
        include_bytes!("../../../tests/data/zfs/captured-list-long-names-2.3.2.txt");

    // Captured with `-r tank`, the whole pool (keel lists `-r PARENT`): parsed with the pool as
    // the parent, keel's volumes are "keel/NAME" and the golden volume and snapshot are there.
    #[test]
    fn real_openzfs_output_of_keel_clones_parses() {
        let observed = parse_observed("tank", REAL_CLONES).unwrap();
        assert_eq!(observed.volumes.len(), 21);
        assert_eq!(observed.snapshots, ["golden@base"]);
        assert_eq!(observed.volumes["golden"].owner, None);
        for (name, volume) in observed.volumes.iter().filter(|(n, _)| *n != "golden") {
            let short = name.trim_start_matches("keel/");
            assert_eq!(volume.origin.as_deref(), Some("tank/golden@base"), "{name}");
            assert_eq!(volume.owner.as_deref(), Some("keel"), "{name}");
            assert_eq!(volume.size, 64 << 20, "{name}");
            assert_eq!(volume.volblocksize, Some(16384), "{name}");
            let tag = volume.lun_tag.as_deref().unwrap_or_default();
            assert!(
                tag.starts_with(&format!("iqn.2026-12.org.example:{short} LUN 0 naa.6")),
                "{name}: {tag}"
            );
        }
        // Strict: a line outside the parent is an error, not skipped.
        assert!(parse_observed("tank/keel", REAL_CLONES).is_err());
    }

    #[test]
    fn real_openzfs_output_with_200_character_names_and_a_space_parses() {
        let observed = parse_observed("tank", REAL_LONG_NAMES).unwrap();
        assert_eq!(observed.volumes.len(), 62);
        let clones = observed
            .volumes
            .iter()
            .filter(|(name, v)| {
                name.len() == "keel/".len() + 199 && v.origin.as_deref() == Some("tank/golden@base")
            })
            .count();
        assert_eq!(clones, 60, "every long-named clone, found by its origin");
        let spaced = &observed.volumes["keel/with space"];
        assert_eq!(spaced.owner, None, "made by hand, not keel's");
        assert_eq!(spaced.origin, None);
    }

    fn long_volume() -> String {
        // "tank/keel/" (10 bytes) + 245 = 255 bytes, the longest name ZFS allows.
        format!("tank/keel/{}", "l".repeat(245))
    }

    #[test]
    fn captured_listing_parses_to_volumes_and_their_snapshots() {
        let observed = parse_observed("tank/keel", LIST_23).unwrap();
        let names: Vec<&str> = observed.volumes.keys().map(String::as_str).collect();
        let long = long_volume();
        let long_relative = &long["tank/keel/".len()..];
        assert_eq!(
            names,
            vec![
                "golden",
                long_relative,
                "nested/vm03",
                "operator disk",
                "vm 01",
                "vm02",
            ]
        );
        let golden = &observed.volumes["golden"];
        assert_eq!(golden.size, 1_073_741_824);
        assert_eq!(golden.volblocksize, Some(16_384));
        assert_eq!(golden.origin, None);
        assert_eq!(golden.owner, None);
        assert_eq!(golden.lun_tag, None);
        let clone = &observed.volumes["vm 01"];
        assert_eq!(clone.origin.as_deref(), Some("tank/keel/golden@v1"));
        assert_eq!(clone.owner.as_deref(), Some("keel"));
        assert_eq!(
            clone.lun_tag.as_deref(),
            Some("iqn.2026-01.org.example:vm01 LUN 0 naa.6001405a1b2c3d4e")
        );
        assert_eq!(clone.size, 2_147_483_648);
        let foreign_clone = &observed.volumes["vm02"];
        assert_eq!(
            foreign_clone.origin.as_deref(),
            Some("tank/images/debian@2026-01")
        );
        let long = &observed.volumes[long_relative];
        assert_eq!(long.origin.as_deref(), Some("tank/keel/golden@v1"));
        assert_eq!(
            observed.snapshots,
            vec!["golden@v1".to_string(), "vm 01@before upgrade".to_string()]
        );
    }

    #[test]
    fn captured_empty_listing_and_empty_output() {
        assert_eq!(
            parse_observed("tank/keel", LIST_EMPTY_23).unwrap(),
            Observed::default()
        );
        assert_eq!(
            parse_observed("tank/keel", b"").unwrap(),
            Observed::default()
        );
    }

    #[test]
    fn every_line_of_the_capture_has_seven_fields_and_no_padding() {
        for line in LIST_23.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = std::str::from_utf8(line).unwrap();
            assert_eq!(text.split('\t').count(), 7, "{text:?}");
            assert!(!text.contains("  "), "{text:?}");
        }
    }

    fn line(fields: &[&str]) -> Vec<u8> {
        let mut text = fields.join("\t");
        text.push('\n');
        text.into_bytes()
    }

    const VOLUME: [&str; 7] = [
        "tank/keel/v",
        "volume",
        "1048576",
        "16384",
        "-",
        "keel",
        "t",
    ];

    fn with(index: usize, field: &str) -> Vec<u8> {
        let mut fields = VOLUME;
        fields[index] = field;
        line(&fields)
    }

    fn list_error(output: &[u8]) -> ParseError {
        parse_list(output).unwrap_err()
    }

    #[test]
    fn malformed_lines_are_errors_with_their_line_number() {
        let mut two = line(&VOLUME);
        two.extend(with(2, "1M"));
        let err = list_error(&two);
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("volsize"), "{err}");

        let cases: Vec<(Vec<u8>, &str)> = vec![
            (with(1, "zvol"), "type"),
            (with(2, ""), "volsize"),
            (with(2, "-1"), "volsize"),
            (with(2, "+5"), "volsize"),
            (with(2, "1 "), "volsize"),
            (with(2, "18446744073709551616"), "volsize"),
            (with(2, "-"), "has no volsize"),
            (with(3, "-"), "has no volblocksize"),
            (with(3, "16K"), "volblocksize"),
            (with(0, ""), "empty"),
            (with(0, "tank/keel//v"), "empty component"),
            (with(0, "tank/keel/v@s"), "snapshot name"),
            (with(4, "tank/golden"), "origin"),
            (
                b"tank/keel/v\tvolume\t1\t2\t-\tkeel\n".to_vec(),
                "expected 7",
            ),
            (
                b"tank/keel/v\tvolume\t1\t2\t-\tkeel\ta\tb\n".to_vec(),
                "expected 7",
            ),
            (b"tank/keel/v volume 1 2 - keel t\n".to_vec(), "expected 7"),
            (b"\n".to_vec(), "expected 7"),
            (b"tank/keel/v\tvolume\t1\t2\t-\tkeel\tt".to_vec(), "newline"),
            (
                b"tank/keel/\xff\tvolume\t1\t2\t-\tkeel\tt\n".to_vec(),
                "UTF-8",
            ),
            (
                b"tank/keel/v\r\tvolume\t1\t2\t-\tkeel\tt\n".to_vec(),
                "'\\r'",
            ),
        ];
        for (output, expect) in cases {
            let err = list_error(&output);
            assert_eq!(err.line, 1, "{err}");
            assert!(err.message.contains(expect), "{expect:?}: {err}");
        }
    }

    #[test]
    fn carriage_return_in_a_user_property_is_kept_not_guessed_away() {
        // A '\r' in the last field is part of a free-text value: no error, kept verbatim.
        let entries = parse_list(b"tank/keel/v\tvolume\t1\t2\t-\tkeel\tt\r\n").unwrap();
        assert_eq!(entries[0].lun_tag.as_deref(), Some("t\r"));
    }

    #[test]
    fn names_outside_the_parent_and_duplicates_are_errors() {
        let mut output = line(&VOLUME);
        output.extend(line(&["tank/other/v", "volume", "1", "2", "-", "-", "-"]));
        let err = parse_observed("tank/keel", &output).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("not under"), "{err}");

        // "tank/keelx" starts with "tank/keel" but is not under it.
        let err = parse_observed("tank/keel", &with(0, "tank/keelx/v")).unwrap_err();
        assert!(err.message.contains("not under"), "{err}");

        let mut output = line(&VOLUME);
        output.extend(line(&VOLUME));
        let err = parse_observed("tank/keel", &output).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("twice"), "{err}");
    }

    #[test]
    fn parent_file_systems_and_their_snapshots_are_ignored() {
        let mut output = line(&["tank/keel", "filesystem", "-", "-", "-", "-", "-"]);
        output.extend(line(&[
            "tank/keel@daily",
            "snapshot",
            "0",
            "-",
            "-",
            "-",
            "-",
        ]));
        output.extend(line(&[
            "tank/keel/fs",
            "filesystem",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]));
        output.extend(line(&[
            "tank/keel/fs@s",
            "snapshot",
            "0",
            "-",
            "-",
            "-",
            "-",
        ]));
        output.extend(line(&[
            "tank/keel/fs#b",
            "bookmark",
            "-",
            "-",
            "-",
            "-",
            "-",
        ]));
        output.extend(line(&VOLUME));
        output.extend(line(&[
            "tank/keel/v@s",
            "snapshot",
            "1048576",
            "-",
            "-",
            "keel",
            "t",
        ]));
        let observed = parse_observed("tank/keel", &output).unwrap();
        assert_eq!(observed.volumes.len(), 1);
        assert_eq!(observed.snapshots, vec!["v@s".to_string()]);
    }

    #[test]
    fn values_are_exact_and_dashes_are_none() {
        let output = line(&[
            "tank/keel/v",
            "volume",
            "18446744073709551615",
            "131072",
            "tank/keel/g@1",
            "-",
            "-",
        ]);
        let entry = &parse_list(&output).unwrap()[0];
        assert_eq!(entry.volsize, Some(u64::MAX));
        assert_eq!(entry.volblocksize, Some(131_072));
        assert_eq!(entry.owner, None);
        assert_eq!(entry.lun_tag, None);
        assert_eq!(entry.origin.as_deref(), Some("tank/keel/g@1"));
        // An empty user property value is a value, not "unset".
        let entry = &parse_list(&with(6, "")).unwrap()[0];
        assert_eq!(entry.lun_tag.as_deref(), Some(""));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples: [&[u8]; 6] = [
            b"\t\t\t\t\t\t\n",
            b"\0\n",
            b"\n\n\n",
            b"tank\tvolume\t\t\t\t\t\n",
            b"\xf0\x9f\x92\x96\n",
            LIST_23,
        ];
        for sample in samples {
            let _ = parse_observed("tank/keel", sample);
            for cut in 0..sample.len().min(300) {
                let _ = parse_observed("tank/keel", &sample[..cut]);
                let _ = parse_get(&sample[..cut]);
            }
        }
    }

    #[test]
    fn captured_get_of_a_snapshot_and_its_volume() {
        let values = parse_get(GET_23).unwrap();
        assert_eq!(values.len(), 4);
        assert_eq!(
            get_count(&values, "tank/images/debian@2026-01", "volsize"),
            Ok(Some(10_737_418_240))
        );
        assert_eq!(
            get_count(&values, "tank/images/debian@2026-01", "volblocksize"),
            Ok(None)
        );
        assert_eq!(
            get_count(&values, "tank/images/debian", "volblocksize"),
            Ok(Some(16_384))
        );
        assert!(get_count(&values, "tank/other", "volsize").is_err());
    }

    #[test]
    fn malformed_get_lines() {
        assert_eq!(parse_get(b"a\tvolsize\n").unwrap_err().line, 1);
        assert_eq!(
            parse_get(b"a\tvolsize\t1\n\tvolsize\t1\n")
                .unwrap_err()
                .line,
            2
        );
        let values = parse_get(b"a\tvolsize\tbig\n").unwrap();
        let err = get_count(&values, "a", "volsize").unwrap_err();
        assert!(err.message.contains("volsize"), "{err}");
    }
}
