//! Encoding that the parameter data of many commands shares: the peripheral device type byte,
//! fixed-width ASCII fields (SPC-4 §4.4.1) and allocation-length truncation (SPC-4 §4.3.5.6).
//! A leaf of `commands/`: the handlers and the VPD page builder import it, it imports none of
//! them, so INQUIRY (`spc.rs`) can use the VPD builder (`vpd.rs`) which uses the pieces other
//! command families export (`provisioning.rs`) without a way back.

use bytes::Bytes;

/// Peripheral device type 00h: direct access block device (SBC-3).
pub const DEVICE_TYPE_DISK: u8 = 0x00;

/// Cuts `data` to the allocation length (SPC-4 §4.3.5.6: never an error).
pub fn truncate(mut data: Vec<u8>, alloc_len: usize) -> Bytes {
    data.truncate(alloc_len);
    Bytes::from(data)
}

/// `text` as a fixed-width, space-padded ASCII field: characters outside printable ASCII
/// become spaces (SPC-4 §4.4.1 requires graphic ASCII), longer text is cut.
pub fn ascii_field(text: &str, width: usize) -> Vec<u8> {
    let mut field: Vec<u8> = text
        .bytes()
        .take(width)
        .map(|b| if (0x20..0x7F).contains(&b) { b } else { b' ' })
        .collect();
    field.resize(width, b' ');
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fields_are_padded_cut_and_sanitised() {
        assert_eq!(ascii_field("AB", 4), b"AB  ");
        assert_eq!(ascii_field("ABCDEFGH", 4), b"ABCD");
        assert_eq!(ascii_field("A\u{e9}", 4), b"A   ");
    }
}
