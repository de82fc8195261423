//! Sizes as the files write them: a number of bytes, or text with a binary unit ("1GiB",
//! "256M"). Its own module so that the LUN keys (`config.rs`) and the volume keys
//! (`pools.rs`) share it without importing each other.

use serde::Deserialize;

/// A size written as a number of bytes or a string with a unit ("1GiB", "256M").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Parses `"1GiB"`, `"256M"`, `"4096"` or a bare integer; units are binary (K = 1024).
pub(super) fn parse_size(value: &SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Bytes(b) => Ok(*b),
        SizeValue::Text(t) => parse_size_text(t),
    }
}

/// Parses a size written as text: `"1GiB"`, `"256M"`, `"4096"`; units are binary (K = 1024).
/// The control protocol accepts sizes in the same form.
pub fn parse_size_text(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("size {text:?} does not start with a number"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "size {text:?} has an unknown unit (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}
