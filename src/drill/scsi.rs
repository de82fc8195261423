//! The SCSI side of the drill, as an initiator sees it: the CDBs it sends, the statuses and
//! sense it must tell apart, and the persistent-reservation data it reads (sans-IO).
//!
//! The target side's own SCSI code is deliberately not used: the drill must judge any target
//! by the standards (SPC-4, SBC-4), not by keel's reading of them.

use std::fmt;

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const BUSY: u8 = 0x08;
pub const RESERVATION_CONFLICT: u8 = 0x18;
pub const TASK_SET_FULL: u8 = 0x28;

/// A LUN in the single-level format (SAM-5 §4.7): peripheral below 256, flat space above.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut raw = [0u8; 8];
    if lun < 256 {
        raw[1] = lun as u8;
    } else {
        raw[0] = 0x40 | ((lun >> 8) & 0x3f) as u8;
        raw[1] = (lun & 0xff) as u8;
    }
    raw
}

pub fn test_unit_ready() -> [u8; 16] {
    [0u8; 16]
}

/// READ CAPACITY (16), 32 bytes of parameter data.
pub fn read_capacity16() -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
    cdb
}

/// READ (16) of `blocks` blocks at `lba`.
pub fn read16(lba: u64, blocks: u32) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x88;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// WRITE (16) of `blocks` blocks at `lba`, with FUA when asked.
pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8a;
    if fua {
        cdb[1] = 0x08;
    }
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

/// Logical block length and block count from READ CAPACITY (16) data.
pub fn parse_read_capacity16(data: &[u8]) -> Option<(u32, u64)> {
    if data.len() < 12 {
        return None;
    }
    let mut last = [0u8; 8];
    last.copy_from_slice(&data[0..8]);
    let block_len = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    Some((block_len, u64::from_be_bytes(last).checked_add(1)?))
}

/// (sense key, ASC, ASCQ) from fixed (70h/71h) or descriptor (72h/73h) sense data.
pub fn sense_key(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x70 | 0x71 if sense.len() >= 3 => Some((sense[2] & 0x0f, 0, 0)),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

/// How the drill treats a completed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Good,
    /// CHECK CONDITION, UNIT ATTENTION: the command did nothing; report it and retry.
    UnitAttention {
        asc: u8,
        ascq: u8,
    },
    /// BUSY or TASK SET FULL: the command did nothing; retry a little later.
    Busy(u8),
    /// The command was refused without effect because of a reservation.
    ReservationConflict,
    /// Any other CHECK CONDITION.
    Check {
        key: u8,
        asc: u8,
        ascq: u8,
    },
    /// A status the drill has no use for, or a target failure (iSCSI response 1).
    Other {
        response: u8,
        status: u8,
    },
}

impl Outcome {
    pub fn of(response: u8, status: u8, sense: &[u8]) -> Outcome {
        if response != 0 {
            return Outcome::Other { response, status };
        }
        match status {
            GOOD => Outcome::Good,
            BUSY | TASK_SET_FULL => Outcome::Busy(status),
            RESERVATION_CONFLICT => Outcome::ReservationConflict,
            CHECK_CONDITION => match sense_key(sense) {
                Some((0x06, asc, ascq)) => Outcome::UnitAttention { asc, ascq },
                Some((key, asc, ascq)) => Outcome::Check { key, asc, ascq },
                None => Outcome::Check {
                    key: 0xff,
                    asc: 0xff,
                    ascq: 0xff,
                },
            },
            other => Outcome::Other {
                response,
                status: other,
            },
        }
    }

    /// Whether the target certainly did not carry the command out (so a write refused this
    /// way cannot be on the medium).
    pub fn did_nothing(&self) -> bool {
        match self {
            Outcome::UnitAttention { .. } | Outcome::Busy(_) | Outcome::ReservationConflict => true,
            // ILLEGAL REQUEST: the command was rejected before it ran.
            Outcome::Check { key: 0x05, .. } => true,
            _ => false,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Good => write!(f, "GOOD"),
            Outcome::UnitAttention { asc, ascq } => {
                write!(f, "UNIT ATTENTION 06/{asc:02X}/{ascq:02X}")
            }
            Outcome::Busy(BUSY) => write!(f, "BUSY"),
            Outcome::Busy(_) => write!(f, "TASK SET FULL"),
            Outcome::ReservationConflict => write!(f, "RESERVATION CONFLICT"),
            Outcome::Check { key, asc, ascq } => {
                write!(f, "CHECK CONDITION {key:02X}/{asc:02X}/{ascq:02X}")
            }
            Outcome::Other {
                response: 0,
                status,
            } => write!(f, "status 0x{status:02X}"),
            Outcome::Other { response, status } => {
                write!(f, "iSCSI response 0x{response:02X} (status 0x{status:02X})")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Persistent reservations (SPC-4 §6.15, §6.16)
// ---------------------------------------------------------------------------------------

/// PERSISTENT RESERVE IN service actions.
pub mod prin {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod prout {
    pub const RESERVE: u8 = 0x01;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
}

/// A persistent reservation type (SPC-4 table 169), by the names operators use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservationType(pub u8);

impl ReservationType {
    const NAMES: [(&'static str, u8); 6] = [
        ("we", 1),
        ("ea", 3),
        ("wero", 5),
        ("earo", 6),
        ("wear", 7),
        ("eaar", 8),
    ];

    /// `we`, `ex`/`ea`, `wero`, `earo`, `wear`, `eaar`, or the type's number.
    pub fn parse(text: &str) -> Result<ReservationType, String> {
        let lower = text.to_ascii_lowercase();
        let lower = match lower.as_str() {
            "ex" => "ea",
            "exro" => "earo",
            "exar" => "eaar",
            other => other,
        };
        if let Some((_, code)) = Self::NAMES.iter().find(|(n, _)| *n == lower) {
            return Ok(ReservationType(*code));
        }
        match lower.parse::<u8>() {
            Ok(code) if Self::NAMES.iter().any(|(_, c)| *c == code) => Ok(ReservationType(code)),
            _ => Err(format!(
                "unknown reservation type {text:?} (we, ex, wero, earo, wear, eaar or 1, 3, 5, 6, 7, 8)"
            )),
        }
    }

    /// All-registrants types have no single holder: every registrant holds them and the
    /// reservation key reported is zero (SPC-4 §5.13.10).
    pub fn all_registrants(&self) -> bool {
        matches!(self.0, 7 | 8)
    }
}

impl fmt::Display for ReservationType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMES.iter().find(|(_, c)| *c == self.0) {
            Some((name, _)) => write!(f, "{}", name.to_ascii_uppercase()),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// PERSISTENT RESERVE IN with `allocation` bytes.
pub fn pr_in(service_action: u8, allocation: u16) -> [u8; 16] {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5e;
    cdb[1] = service_action & 0x1f;
    cdb[7..9].copy_from_slice(&allocation.to_be_bytes());
    cdb
}

/// PERSISTENT RESERVE OUT (scope LU) and its 24-byte basic parameter list; `aptpl` asks
/// the target to keep the registrations through a power loss (meaningful on REGISTER).
pub fn pr_out(
    service_action: u8,
    kind: Option<ReservationType>,
    key: u64,
    service_action_key: u64,
    aptpl: bool,
) -> ([u8; 16], Vec<u8>) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x5f;
    cdb[1] = service_action & 0x1f;
    cdb[2] = kind.map_or(0, |k| k.0 & 0x0f);
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut params = vec![0u8; 24];
    params[0..8].copy_from_slice(&key.to_be_bytes());
    params[8..16].copy_from_slice(&service_action_key.to_be_bytes());
    if aptpl {
        params[20] = 0x01;
    }
    (cdb, params)
}

/// What the target says about persistent reservations, as far as the drill cares.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PrView {
    /// Every registered key.
    pub keys: Vec<u64>,
    /// The reservation: its key (zero for all-registrants types) and type.
    pub reservation: Option<(u64, ReservationType)>,
}

impl PrView {
    /// What the drill holds when it registered `key` and reserved `kind`.
    pub fn held(key: u64, kind: Option<ReservationType>) -> PrView {
        PrView {
            keys: vec![key],
            reservation: kind.map(|k| (if k.all_registrants() { 0 } else { key }, k)),
        }
    }

    /// How `now` differs from this, the state the drill held, for key `ours`: `None` if the
    /// drill still holds what it held.
    pub fn change(&self, now: &PrView, ours: u64) -> Option<String> {
        let mut what = Vec::new();
        let held_key = self.keys.contains(&ours);
        if held_key && !now.keys.contains(&ours) {
            what.push(format!("key {ours:#x} no longer registered"));
        }
        if let Some((key, kind)) = self.reservation {
            match now.reservation {
                None => what.push(format!("{kind} reservation gone")),
                Some((k, t)) if t != kind => what.push(format!(
                    "reservation changed from {kind} to {t} (key {k:#x})"
                )),
                Some((k, t)) if !kind.all_registrants() && k != key => {
                    what.push(format!("{t} reservation now held by key {k:#x}"))
                }
                Some(_) => {}
            }
        }
        if what.is_empty() {
            None
        } else {
            Some(what.join("; "))
        }
    }
}

impl fmt::Display for PrView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| format!("{k:#x}")).collect();
        write!(f, "keys [{}]", keys.join(", "))?;
        match self.reservation {
            Some((key, kind)) => write!(f, ", {kind} reservation by {key:#x}"),
            None => write!(f, ", no reservation"),
        }
    }
}

fn be64(data: &[u8], at: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    b.copy_from_slice(data.get(at..at + 8)?);
    Some(u64::from_be_bytes(b))
}

fn be32(data: &[u8], at: usize) -> Option<u32> {
    let mut b = [0u8; 4];
    b.copy_from_slice(data.get(at..at + 4)?);
    Some(u32::from_be_bytes(b))
}

/// READ KEYS parameter data: the registered keys (as many as the data holds).
pub fn parse_read_keys(data: &[u8]) -> Option<Vec<u64>> {
    let len = be32(data, 4)? as usize;
    let end = (8 + len).min(data.len());
    Some(
        (8..end)
            .step_by(8)
            .filter_map(|at| be64(data, at))
            .collect(),
    )
}

/// READ RESERVATION parameter data: the reservation, if any.
pub fn parse_read_reservation(data: &[u8]) -> Option<Option<(u64, ReservationType)>> {
    let len = be32(data, 4)?;
    if len < 16 {
        return Some(None);
    }
    let key = be64(data, 8)?;
    let kind = data.get(21)? & 0x0f;
    Some(Some((key, ReservationType(kind))))
}

/// READ FULL STATUS parameter data: every registration, and the reservation from the
/// descriptors with R_HOLDER set.
pub fn parse_full_status(data: &[u8]) -> Option<PrView> {
    let len = be32(data, 4)? as usize;
    let end = (8 + len).min(data.len());
    let mut at = 8;
    let mut view = PrView::default();
    while at + 24 <= end {
        let key = be64(data, at)?;
        let holder = data[at + 12] & 0x01 != 0;
        let kind = ReservationType(data[at + 13] & 0x0f);
        let tid_len = be32(data, at + 20)? as usize;
        if !view.keys.contains(&key) {
            view.keys.push(key);
        }
        if holder {
            let reported = if kind.all_registrants() { 0 } else { key };
            if view.reservation.is_none() {
                view.reservation = Some((reported, kind));
            }
        }
        at += 24 + tid_len;
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luns_are_single_level() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(1), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn read_and_write_16() {
        let w = write16(0x0102_0304_0506_0708, 1, true);
        assert_eq!(w[0], 0x8a);
        assert_eq!(w[1], 0x08);
        assert_eq!(&w[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&w[10..14], &[0, 0, 0, 1]);
        assert_eq!(read16(9, 2)[0], 0x88);
        assert_eq!(write16(1, 1, false)[1], 0);
    }

    #[test]
    fn capacity() {
        let mut data = [0u8; 32];
        data[7] = 0xff; // last LBA 255
        data[8..12].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(parse_read_capacity16(&data), Some((4096, 256)));
        assert_eq!(parse_read_capacity16(&data[..8]), None);
    }

    #[test]
    fn outcomes() {
        let fixed_ua = [0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x00];
        assert_eq!(
            Outcome::of(0, CHECK_CONDITION, &fixed_ua),
            Outcome::UnitAttention { asc: 0x29, ascq: 0 }
        );
        let descriptor = [0x72, 0x03, 0x11, 0x00, 0, 0, 0, 0];
        assert_eq!(
            Outcome::of(0, CHECK_CONDITION, &descriptor),
            Outcome::Check {
                key: 3,
                asc: 0x11,
                ascq: 0
            }
        );
        assert_eq!(Outcome::of(0, BUSY, &[]), Outcome::Busy(BUSY));
        assert_eq!(
            Outcome::of(0, TASK_SET_FULL, &[]),
            Outcome::Busy(TASK_SET_FULL)
        );
        assert_eq!(
            Outcome::of(0, RESERVATION_CONFLICT, &[]),
            Outcome::ReservationConflict
        );
        assert_eq!(
            Outcome::of(1, 0, &[]),
            Outcome::Other {
                response: 1,
                status: 0
            }
        );
        assert_eq!(Outcome::of(0, GOOD, &[]), Outcome::Good);
        assert!(Outcome::ReservationConflict.did_nothing());
        assert!(
            !Outcome::Check {
                key: 3,
                asc: 0x11,
                ascq: 0
            }
            .did_nothing()
        );
    }

    #[test]
    fn reservation_types_by_name_and_number() {
        assert_eq!(ReservationType::parse("WERO"), Ok(ReservationType(5)));
        assert_eq!(ReservationType::parse("ex"), Ok(ReservationType(3)));
        assert_eq!(ReservationType::parse("8"), Ok(ReservationType(8)));
        assert!(ReservationType::parse("2").is_err());
        assert!(ReservationType::parse("nope").is_err());
        assert_eq!(ReservationType(5).to_string(), "WERO");
    }

    #[test]
    fn pr_out_register_and_reserve() {
        let (cdb, params) = pr_out(prout::RESERVE, Some(ReservationType(5)), 0xabc, 0, false);
        assert_eq!(cdb[0], 0x5f);
        assert_eq!(cdb[1], 1);
        assert_eq!(cdb[2], 5);
        assert_eq!(&cdb[5..9], &[0, 0, 0, 24]);
        assert_eq!(be64(&params, 0), Some(0xabc));
        assert_eq!(params[20], 0);
        let (_, params) = pr_out(
            prout::REGISTER_AND_IGNORE_EXISTING_KEY,
            None,
            0,
            0xabc,
            true,
        );
        assert_eq!(be64(&params, 8), Some(0xabc));
        assert_eq!(params[20], 1, "APTPL");
    }

    fn keys_data(keys: &[u64]) -> Vec<u8> {
        let mut d = vec![0, 0, 0, 7];
        d.extend_from_slice(&((keys.len() * 8) as u32).to_be_bytes());
        for k in keys {
            d.extend_from_slice(&k.to_be_bytes());
        }
        d
    }

    #[test]
    fn read_keys_and_reservation() {
        assert_eq!(parse_read_keys(&keys_data(&[1, 2])), Some(vec![1, 2]));
        assert_eq!(parse_read_keys(&keys_data(&[])), Some(vec![]));
        let mut r = vec![0, 0, 0, 7, 0, 0, 0, 16];
        r.extend_from_slice(&0xabcu64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0x05, 0, 0]);
        assert_eq!(
            parse_read_reservation(&r),
            Some(Some((0xabc, ReservationType(5))))
        );
        assert_eq!(
            parse_read_reservation(&[0, 0, 0, 7, 0, 0, 0, 0]),
            Some(None)
        );
        assert_eq!(parse_read_reservation(&[0, 0]), None);
    }

    #[test]
    fn full_status() {
        let mut d = vec![0, 0, 0, 9, 0, 0, 0, 0];
        for (key, holder, tid) in [(0x11u64, false, 24usize), (0x22, true, 32)] {
            d.extend_from_slice(&key.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, 0, holder as u8, 0x05, 0, 0, 0, 0, 0, 0]);
            d.extend_from_slice(&(tid as u32).to_be_bytes());
            d.extend(std::iter::repeat_n(0u8, tid));
        }
        let len = (d.len() - 8) as u32;
        d[4..8].copy_from_slice(&len.to_be_bytes());
        let view = parse_full_status(&d).unwrap();
        assert_eq!(view.keys, vec![0x11, 0x22]);
        assert_eq!(view.reservation, Some((0x22, ReservationType(5))));
    }

    #[test]
    fn what_changed() {
        let held = PrView::held(0xabc, Some(ReservationType(5)));
        assert_eq!(held.change(&held, 0xabc), None);
        let gone = PrView::default();
        let why = held.change(&gone, 0xabc).unwrap();
        assert!(
            why.contains("no longer registered") && why.contains("WERO reservation gone"),
            "{why}"
        );
        let taken = PrView {
            keys: vec![0xabc, 0x1],
            reservation: Some((0x1, ReservationType(5))),
        };
        assert!(
            held.change(&taken, 0xabc)
                .unwrap()
                .contains("held by key 0x1")
        );
        let other_type = PrView {
            keys: vec![0xabc],
            reservation: Some((0xabc, ReservationType(1))),
        };
        assert!(
            held.change(&other_type, 0xabc)
                .unwrap()
                .contains("from WERO to WE")
        );
        // All-registrants reservations report key 0.
        let all = PrView::held(0xabc, Some(ReservationType(7)));
        assert_eq!(all.reservation, Some((0, ReservationType(7))));
        assert_eq!(all.change(&all, 0xabc), None);
        // Only registered: a new registrant elsewhere is no change of ours.
        let only_key = PrView::held(0xabc, None);
        let more = PrView {
            keys: vec![0x5, 0xabc],
            reservation: None,
        };
        assert_eq!(only_key.change(&more, 0xabc), None);
    }
}
