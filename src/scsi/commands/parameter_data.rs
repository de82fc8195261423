//! What every command that returns parameter data shares: the allocation length rule, ASCII
//! fields, the peripheral byte. Command files import this, not each other.

use bytes::Bytes;

/// Peripheral device type 00h: direct access block device (SBC-3).
pub const DEVICE_TYPE_DISK: u8 = 0x00;
/// Peripheral qualifier 011b with device type 1Fh: no logical unit here (SPC-4 §6.6.2).
pub const PERIPHERAL_NO_LUN: u8 = 0x7F;

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
