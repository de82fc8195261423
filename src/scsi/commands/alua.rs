//! Asymmetric logical unit access (SPC-4 §5.16): REPORT TARGET PORT GROUPS (SPC-4 §6.36).
//!
//! keel supports implicit ALUA only (INQUIRY TPGS = 01b) and every path is equal: each target
//! port (an iSCSI portal group, whose tag is the relative target port identifier) is its own
//! target port group with the same identifier, always active/optimized. Nothing transitions,
//! so SET TARGET PORT GROUPS is not supported. A failover moves the portal, not the state.

use bytes::Bytes;

use super::spc::truncate;
use crate::scsi::Nexus;
use crate::scsi::cdb;
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::LogicalUnit;

/// ASYMMETRIC ACCESS STATE 0h: active/optimized (SPC-4 §6.36.2 table 247).
const STATE_ACTIVE_OPTIMIZED: u8 = 0x0;
/// Supported states: AO_SUP only (byte 1 of a target port group descriptor).
const AO_SUP: u8 = 0x01;

/// REPORT TARGET PORT GROUPS parameter data (SPC-4 §6.36.2) for the target ports `ports`
/// (relative target port identifiers, which double as group ids), length-only or extended
/// header format.
pub fn rtpg_data(ports: &[u16], extended: bool) -> Vec<u8> {
    let mut data = vec![0u8; 4];
    if extended {
        // FORMAT TYPE 001b, IMPLICIT TRANSITION TIME 0 (transitions never happen).
        data.extend_from_slice(&[0x10, 0, 0, 0]);
    }
    for &port in ports {
        let [hi, lo] = port.to_be_bytes();
        // Target port group descriptor: state, supported states, group, reserved, STATUS
        // CODE 0 (no status), vendor specific, TARGET PORT COUNT 1; then one target port
        // descriptor (2 obsolete bytes, RELATIVE TARGET PORT IDENTIFIER).
        data.extend_from_slice(&[STATE_ACTIVE_OPTIMIZED, AO_SUP, hi, lo, 0, 0, 0, 1]);
        data.extend_from_slice(&[0, 0, hi, lo]);
    }
    // RETURN DATA LENGTH counts what follows the field itself.
    let len = u32::try_from(data.len() - 4).unwrap_or(u32::MAX);
    data[0..4].copy_from_slice(&len.to_be_bytes());
    data
}

/// The target ports through which `lu` is reachable as far as the unit knows: the asking
/// nexus's and those of every nexus it has seen, ascending, without duplicates.
pub fn known_ports(lu: &LogicalUnit, nexus: &Nexus) -> Vec<u16> {
    let mut ports: Vec<u16> = lu
        .unit_attentions()
        .known_nexuses()
        .iter()
        .map(|n| n.relative_port)
        .chain(std::iter::once(nexus.relative_port))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// REPORT TARGET PORT GROUPS.
pub fn report_target_port_groups(
    lu: &LogicalUnit,
    nexus: &Nexus,
    raw: &[u8],
) -> Result<Bytes, Sense> {
    cdb::require_len(raw, 12)?;
    let extended = match raw[1] >> 5 {
        0b000 => false,
        0b001 => true,
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(7))),
    };
    let alloc_len = u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]);
    Ok(truncate(
        rtpg_data(&known_ports(lu, nexus), extended),
        usize::try_from(alloc_len).unwrap_or(usize::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::scsi::LuIdentity;

    #[test]
    fn length_only_and_extended_formats() {
        let d = rtpg_data(&[1], false);
        assert_eq!(
            d,
            vec![0, 0, 0, 12, 0x00, 0x01, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        let d = rtpg_data(&[1, 0x102], true);
        assert_eq!(&d[0..8], &[0, 0, 0, 28, 0x10, 0, 0, 0]);
        assert_eq!(&d[8..20], &[0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(&d[20..32], &[0, 1, 1, 2, 0, 0, 0, 1, 0, 0, 1, 2]);
    }

    fn nexus(name: &str, port: u16) -> Nexus {
        Nexus {
            initiator_port: Arc::from(name),
            target_port: Arc::from(format!("iqn.t,t,0x{port:04x}")),
            relative_port: port,
        }
    }

    #[test]
    fn groups_are_the_ports_seen() {
        let lu = LogicalUnit::new(LuIdentity::derived("iqn.t", 0), 512, None, false);
        let a = nexus("a", 2);
        assert_eq!(known_ports(&lu, &a), vec![2]);
        lu.unit_attentions().take(&nexus("b", 1));
        lu.unit_attentions().take(&nexus("c", 2));
        assert_eq!(known_ports(&lu, &a), vec![1, 2]);

        let mut raw = [0u8; 12];
        raw[0] = 0xA3;
        raw[1] = 0x0A;
        raw[9] = 255;
        let d = report_target_port_groups(&lu, &a, &raw).unwrap();
        assert_eq!(d.len(), 4 + 2 * 12);
        raw[1] = 0x2A;
        assert_eq!(
            report_target_port_groups(&lu, &a, &raw).unwrap().len(),
            8 + 24
        );
        raw[1] = 0x4A;
        let err = report_target_port_groups(&lu, &a, &raw).unwrap_err();
        assert_eq!(err.field_pointer, Some((true, 1, Some(7))));
        raw[1] = 0x0A;
        raw[9] = 6;
        assert_eq!(report_target_port_groups(&lu, &a, &raw).unwrap().len(), 6);
    }
}
