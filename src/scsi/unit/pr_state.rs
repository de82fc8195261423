//! The persistent reservation state of one logical unit (SPC-4 §5.13): registrations, the
//! reservation, PRgeneration, APTPL. Plain data: what the reservation store saves and loads,
//! what PERSISTENT RESERVE OUT's state machine turns into the next state.

use serde::{Deserialize, Serialize};

use crate::scsi::Nexus;

/// The separator between the iSCSI name and the ISID in an initiator port name (RFC 7143
/// §4.2.7.1; SPC-4 §7.6.4.6 TransportID format 01b).
pub(in crate::scsi) const ISID_SEPARATOR: &str = ",i,0x";

/// Persistent reservation types (SPC-4 §6.15.3.3 table 176).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    /// Every type, in TYPE code order.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    pub fn from_code(code: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The TYPE field value.
    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registered I_T nexus is a reservation holder (SPC-4 §5.13.10).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registered I_T nexuses have access even though they do not hold the reservation.
    pub fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// A Write Exclusive type: everyone may still read.
    pub fn reads_allowed(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// Whether an initiator port name (`name,i,0xISID`) is covered by `spec`, which is either a
/// full initiator port name or a bare iSCSI name (every port of that initiator device). iSCSI
/// names and hex ISIDs compare without regard to case (RFC 7143 §4.2.7.2 names are
/// normalized to lower case).
fn initiator_covers(spec: &str, initiator_port: &str) -> bool {
    if spec.contains(ISID_SEPARATOR) {
        spec.eq_ignore_ascii_case(initiator_port)
    } else {
        let name = initiator_port
            .split_once(ISID_SEPARATOR)
            .map_or(initiator_port, |(name, _)| name);
        spec.eq_ignore_ascii_case(name)
    }
}

/// A unit attention a PERSISTENT RESERVE OUT owed to other I_T nexuses (SPC-4 §5.13.11:
/// REGISTRATIONS PREEMPTED, RESERVATIONS RELEASED, ...), kept beside the state in a shared
/// store: a node that serves some of those nexuses establishes it for them when it reloads
/// the state after another node's change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrNotice {
    /// The nexuses these registrations cover get it...
    pub to: Vec<Registration>,
    /// ...except the one whose command caused it.
    pub from: NexusId,
    /// The UNIT ATTENTION's additional sense code and qualifier.
    pub asc: u8,
    pub ascq: u8,
}

/// One I_T nexus as the persistent state remembers it (the reservation holder).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NexusId {
    /// Initiator port name, or a bare iSCSI name after REGISTER AND MOVE to a format 00b
    /// TransportID.
    pub initiator: String,
    pub target_port: String,
    pub relative_port: u16,
}

impl NexusId {
    pub fn of(nexus: &Nexus) -> NexusId {
        NexusId {
            initiator: nexus.initiator_port.to_string(),
            target_port: nexus.target_port.to_string(),
            relative_port: nexus.relative_port,
        }
    }

    pub fn is(&self, nexus: &Nexus) -> bool {
        *self.target_port == *nexus.target_port
            && initiator_covers(&self.initiator, &nexus.initiator_port)
    }
}

/// One registration (SPC-4 §5.13.7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// TOML integers are signed 64 bit; keys use all 64 bits, so they are stored as hex text.
    #[serde(with = "key_as_hex")]
    pub key: u64,
    /// Initiator port name, or a bare iSCSI name (format 00b TransportID: every port).
    pub initiator: String,
    pub target_port: String,
    pub relative_port: u16,
    /// Registered through every target port (ALL_TG_PT).
    pub all_target_ports: bool,
}

impl Registration {
    pub fn covers(&self, nexus: &Nexus) -> bool {
        (self.all_target_ports || *self.target_port == *nexus.target_port)
            && initiator_covers(&self.initiator, &nexus.initiator_port)
    }

    /// Whether this registration is the one for `id` (same initiator spec, same port).
    pub(in crate::scsi) fn is_for(&self, id: &NexusId) -> bool {
        (self.all_target_ports || self.target_port == id.target_port)
            && self.initiator.eq_ignore_ascii_case(&id.initiator)
    }

    /// Whether this registration and `other` could both cover one I_T nexus.
    pub(in crate::scsi) fn overlaps(&self, other: &Registration) -> bool {
        let ports = self.all_target_ports
            || other.all_target_ports
            || self.target_port == other.target_port;
        let initiators = initiator_covers(&self.initiator, &other.initiator)
            || initiator_covers(&other.initiator, &self.initiator);
        ports && initiators
    }
}

mod key_as_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{key:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_prefix("0x").unwrap_or(&text);
        u64::from_str_radix(digits, 16).map_err(serde::de::Error::custom)
    }
}

/// The persistent reservation (scope is always LU_SCOPE, the only one SPC-4 keeps).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub pr_type: PrType,
    /// The holder for non all-registrants types; `None` for all-registrants types, where
    /// every registered I_T nexus holds it (SPC-4 §5.13.10).
    pub holder: Option<NexusId>,
}

/// The persistent reservation state of one logical unit: what the store saves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRgeneration (SPC-4 §6.15.2): counts registration changes, wraps.
    pub generation: u32,
    /// Activate persist through power loss: the APTPL bit of the last successful REGISTER,
    /// REGISTER AND IGNORE EXISTING KEY or REGISTER AND MOVE (SPC-4 §5.13.5).
    pub aptpl: bool,
    pub registrations: Vec<Registration>,
    pub reservation: Option<Reservation>,
}

impl PrState {
    /// The registration of `nexus`, if any.
    pub fn registration(&self, nexus: &Nexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.covers(nexus))
    }

    pub(in crate::scsi) fn registration_index(&self, nexus: &Nexus) -> Option<usize> {
        self.registrations.iter().position(|r| r.covers(nexus))
    }

    pub fn is_registered(&self, nexus: &Nexus) -> bool {
        self.registration(nexus).is_some()
    }

    /// Whether `nexus` holds the reservation (SPC-4 §5.13.10).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation { holder: None, .. }) => self.is_registered(nexus),
            Some(Reservation {
                holder: Some(id), ..
            }) => id.is(nexus),
        }
    }

    /// Whether registration `r` belongs to a reservation holder (READ FULL STATUS R_HOLDER).
    pub(in crate::scsi) fn registration_holds(&self, r: &Registration) -> bool {
        match &self.reservation {
            None => false,
            Some(Reservation { holder: None, .. }) => true,
            Some(Reservation {
                holder: Some(id), ..
            }) => r.is_for(id),
        }
    }

    pub(in crate::scsi) fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}
