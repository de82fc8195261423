//! SCSI-3 persistent reservations (SPC-4 §5.13, PERSISTENT RESERVE IN §6.15, PERSISTENT
//! RESERVE OUT §6.16): the pure state machine.
//!
//! Nothing here locks, waits or touches a file. [`apply_prout`] takes the current
//! [`PrState`], the I_T nexus and the command, and returns either the next state plus the unit
//! attentions it raises, or the answer that refuses it. The handlers at the end of this file
//! persist the next state before it adopts it, so a refused save leaves everything unchanged.
//!
//! Registrations are keyed by the I_T nexus (SPC-4 §5.13.7 "Registering"): an initiator port
//! (`name,i,0xISID` for iSCSI) and a target port, or every target port with ALL_TG_PT. An iSCSI
//! TransportID of format 00b names an initiator device without an ISID; its registration
//! (`initiator` without `,i,0x`) covers every initiator port of that name.

use bytes::Bytes;

use super::parameter_data::truncate;
use crate::scsi::cdb::{be16, be32, be64};
use crate::scsi::ordering::Order;
use crate::scsi::sense::{Sense, SenseKey};
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::unit::pr_state::{
    ISID_SEPARATOR, NexusId, PrNotice, PrState, PrType, Registration, Reservation,
};
use crate::scsi::{Nexus, ScsiResponse, ScsiStatus};

/// Most registrations one logical unit keeps; one more answers INSUFFICIENT REGISTRATION
/// RESOURCES (SPC-4 §6.16.2). Bounds memory and the size of READ FULL STATUS data.
pub const MAX_REGISTRATIONS: usize = 256;

/// PERSISTENT RESERVE OUT parameter list length without TransportIDs (SPC-4 §6.16.3).
pub const BASIC_PARAMETER_LIST_LEN: usize = 24;

/// iSCSI protocol identifier in TransportIDs (SPC-4 §7.6.1 table 444).
const PROTOCOL_ISCSI: u8 = 0x5;

/// PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1 table 170).
pub mod prin_sa {
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2 table 186).
pub mod prout_sa {
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Who gets a unit attention after a PERSISTENT RESERVE OUT: the I_T nexuses these
/// registrations cover, except the one that sent the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub to: Vec<Registration>,
    pub sense: Sense,
}

/// A PERSISTENT RESERVE OUT that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: PrState,
    pub notices: Vec<Notice>,
    /// PREEMPT AND ABORT: the tasks of the nexuses these registrations cover are aborted
    /// before the command completes (SPC-4 §5.13.11.2.3).
    pub abort: Vec<Registration>,
}

/// A PERSISTENT RESERVE OUT that did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl From<Sense> for Refusal {
    fn from(sense: Sense) -> Self {
        Refusal::Check(sense)
    }
}

/// 06/2A/03 RESERVATIONS PREEMPTED.
pub const fn reservations_preempted() -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, 0x03)
}

/// 06/2A/04 RESERVATIONS RELEASED.
pub const fn reservations_released() -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, 0x04)
}

/// 06/2A/05 REGISTRATIONS PREEMPTED.
pub const fn registrations_preempted() -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, 0x05)
}

/// 05/26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
pub const fn invalid_release() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x26, 0x04)
}

/// 05/55/04 INSUFFICIENT REGISTRATION RESOURCES.
pub const fn insufficient_registration_resources() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x55, 0x04)
}

/// A decoded PERSISTENT RESERVE OUT CDB (SPC-4 §6.16.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProutCdb {
    pub service_action: u8,
    pub scope: u8,
    pub type_code: u8,
    pub parameter_list_length: u32,
}

/// Decodes a PERSISTENT RESERVE OUT CDB; the generic checks (length, CONTROL) ran already.
pub fn decode_prout(cdb: &[u8]) -> Result<ProutCdb, Sense> {
    let service_action = cdb.get(1).map_or(0, |b| b & 0x1F);
    if service_action > prout_sa::REGISTER_AND_MOVE {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    let scope_type = cdb.get(2).copied().unwrap_or(0);
    Ok(ProutCdb {
        service_action,
        scope: scope_type >> 4,
        type_code: scope_type & 0x0F,
        parameter_list_length: be32(cdb, 5),
    })
}

/// A decoded PERSISTENT RESERVE IN CDB (SPC-4 §6.15.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrinCdb {
    pub service_action: u8,
    pub allocation_length: u16,
}

pub fn decode_prin(cdb: &[u8]) -> Result<PrinCdb, Sense> {
    let service_action = cdb.get(1).map_or(0, |b| b & 0x1F);
    if service_action > prin_sa::READ_FULL_STATUS {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    Ok(PrinCdb {
        service_action,
        allocation_length: be16(cdb, 7),
    })
}

/// The basic PERSISTENT RESERVE OUT parameter list (SPC-4 §6.16.3 table 190).
#[derive(Clone, Debug, PartialEq, Eq)]
struct BasicParams {
    reservation_key: u64,
    service_action_key: u64,
    spec_i_pt: bool,
    all_tg_pt: bool,
    aptpl: bool,
    /// With SPEC_I_PT: the initiator specs of the TransportIDs and their offsets.
    transport_ids: Vec<(String, usize)>,
}

fn decode_basic(cdb: &ProutCdb, data: &[u8]) -> Result<BasicParams, Sense> {
    let len = usize::try_from(cdb.parameter_list_length).unwrap_or(usize::MAX);
    if len < BASIC_PARAMETER_LIST_LEN || data.len() < len {
        return Err(Sense::parameter_list_length_error());
    }
    let data = &data[..len];
    let flags = data[20];
    let spec_i_pt = flags & 0x08 != 0;
    let mut transport_ids = Vec::new();
    if spec_i_pt {
        // SPC-4 §6.16.3: with SPEC_I_PT the list carries a TRANSPORTID PARAMETER DATA LENGTH
        // and that many bytes of TransportIDs, and nothing else.
        if len < BASIC_PARAMETER_LIST_LEN + 4 {
            return Err(Sense::parameter_list_length_error());
        }
        let tid_len = usize::try_from(be32(data, 24)).unwrap_or(usize::MAX);
        if BASIC_PARAMETER_LIST_LEN + 4 + tid_len != len {
            return Err(Sense::parameter_list_length_error());
        }
        transport_ids = parse_transport_ids(&data[28..], 28)?;
    } else if len != BASIC_PARAMETER_LIST_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    Ok(BasicParams {
        reservation_key: be64(data, 0),
        service_action_key: be64(data, 8),
        spec_i_pt,
        all_tg_pt: flags & 0x04 != 0,
        aptpl: flags & 0x01 != 0,
        transport_ids,
    })
}

/// Parses consecutive iSCSI TransportIDs (SPC-4 §7.6.4.6): format 00b carries an iSCSI name,
/// format 01b `name,i,0xISID`. `base` is the offset of `data` in the parameter list, for
/// field pointers. Returns each initiator spec with its offset.
pub fn parse_transport_ids(data: &[u8], base: usize) -> Result<Vec<(String, usize)>, Sense> {
    let mut ids = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (spec, used) = parse_transport_id(&data[at..], base + at)?;
        ids.push((spec, base + at));
        at += used;
    }
    Ok(ids)
}

/// One iSCSI TransportID at the start of `data`: its initiator spec and its length.
pub fn parse_transport_id(data: &[u8], offset: usize) -> Result<(String, usize), Sense> {
    if data.len() < 4 {
        return Err(Sense::parameter_list_length_error());
    }
    let format = data[0] >> 6;
    if data[0] & 0x0F != PROTOCOL_ISCSI {
        return Err(Sense::invalid_field_in_parameter_list(offset, Some(3)));
    }
    if format > 1 {
        return Err(Sense::invalid_field_in_parameter_list(offset, Some(7)));
    }
    let additional = usize::from(be16(data, 2));
    let total = 4 + additional;
    if additional % 4 != 0 || additional == 0 {
        return Err(Sense::invalid_field_in_parameter_list(offset + 2, None));
    }
    let Some(body) = data.get(4..total) else {
        return Err(Sense::parameter_list_length_error());
    };
    let text_len = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let text = std::str::from_utf8(&body[..text_len])
        .map_err(|_| Sense::invalid_field_in_parameter_list(offset + 4, None))?;
    let well_formed = match (format, text.split_once(ISID_SEPARATOR)) {
        (0, None) => !text.is_empty(),
        (1, Some((name, isid))) => {
            !name.is_empty() && isid.len() == 12 && isid.chars().all(|c| c.is_ascii_hexdigit())
        }
        _ => false,
    };
    if !well_formed || text.chars().any(|c| c.is_control() || c == ' ') {
        return Err(Sense::invalid_field_in_parameter_list(offset + 4, None));
    }
    Ok((text.to_ascii_lowercase(), total))
}

/// Encodes an initiator spec as an iSCSI TransportID: format 01b for a port name, 00b for a
/// bare name; NUL terminated, padded to a multiple of four, at least 24 bytes (SPC-4
/// §7.6.4.6: ADDITIONAL LENGTH at least 20).
pub fn encode_transport_id(initiator: &str) -> Vec<u8> {
    let format: u8 = if initiator.contains(ISID_SEPARATOR) {
        1
    } else {
        0
    };
    let padded = (initiator.len() + 1).div_ceil(4).max(5) * 4;
    let mut out = Vec::with_capacity(4 + padded);
    out.push((format << 6) | PROTOCOL_ISCSI);
    out.push(0);
    let additional = u16::try_from(padded).unwrap_or(u16::MAX);
    out.extend_from_slice(&additional.to_be_bytes());
    out.extend_from_slice(initiator.as_bytes());
    out.resize(4 + padded, 0);
    out
}

/// What the device server can do (REPORT CAPABILITIES).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// A store is configured: APTPL can be honoured (PTPL_C).
    pub persist_through_power_loss: bool,
}

/// Runs one PERSISTENT RESERVE OUT against `state` for `nexus`.
pub fn apply_prout(
    state: &PrState,
    nexus: &Nexus,
    cdb: &ProutCdb,
    data: &[u8],
    caps: Capabilities,
) -> Result<Outcome, Refusal> {
    use prout_sa::*;
    match cdb.service_action {
        REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY => {
            let params = decode_basic(cdb, data)?;
            check_aptpl(params.aptpl, caps, 20)?;
            register(
                state,
                nexus,
                &params,
                cdb.service_action == REGISTER_AND_IGNORE_EXISTING_KEY,
            )
        }
        RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT => {
            // SPC-4 §6.16.2: only LU_SCOPE exists; TYPE must be one of table 176.
            if cdb.scope != 0 {
                return Err(Sense::invalid_field_in_cdb(2, Some(7)).into());
            }
            let Some(pr_type) = PrType::from_code(cdb.type_code) else {
                return Err(Sense::invalid_field_in_cdb(2, Some(3)).into());
            };
            let params = decode_basic(cdb, data)?;
            if params.spec_i_pt {
                return Err(Sense::invalid_field_in_parameter_list(20, Some(3)).into());
            }
            let key = registered_key(state, nexus)?;
            if key != params.reservation_key {
                return Err(Refusal::Conflict);
            }
            match cdb.service_action {
                RESERVE => reserve(state, nexus, pr_type),
                RELEASE => release(state, nexus, pr_type),
                abort => preempt(
                    state,
                    nexus,
                    pr_type,
                    params.service_action_key,
                    abort == PREEMPT_AND_ABORT,
                ),
            }
        }
        CLEAR => {
            let params = decode_basic(cdb, data)?;
            if params.spec_i_pt {
                return Err(Sense::invalid_field_in_parameter_list(20, Some(3)).into());
            }
            if registered_key(state, nexus)? != params.reservation_key {
                return Err(Refusal::Conflict);
            }
            clear(state)
        }
        _ => register_and_move(state, nexus, cdb, data, caps),
    }
}

/// SPC-4 §6.16.3: a device server that cannot persist through power loss refuses APTPL set.
fn check_aptpl(aptpl: bool, caps: Capabilities, byte: usize) -> Result<(), Refusal> {
    if aptpl && !caps.persist_through_power_loss {
        Err(Sense::invalid_field_in_parameter_list(byte, Some(0)).into())
    } else {
        Ok(())
    }
}

/// The key `nexus` is registered with; an unregistered nexus gets RESERVATION CONFLICT for
/// every service action but the registering ones (SPC-4 §5.13.1 and §6.16.2 table 186).
fn registered_key(state: &PrState, nexus: &Nexus) -> Result<u64, Refusal> {
    state
        .registration(nexus)
        .map(|r| r.key)
        .ok_or(Refusal::Conflict)
}

fn unchanged(state: &PrState) -> Result<Outcome, Refusal> {
    Ok(Outcome {
        abort: Vec::new(),
        state: state.clone(),
        notices: Vec::new(),
    })
}

/// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-4 §5.13.7).
fn register(
    state: &PrState,
    nexus: &Nexus,
    params: &BasicParams,
    ignore_existing: bool,
) -> Result<Outcome, Refusal> {
    let mut next = state.clone();
    let mut notices = Vec::new();
    match state.registration_index(nexus) {
        None => {
            // §5.13.7.2: an unregistered nexus must send RESERVATION KEY zero (REGISTER).
            if !ignore_existing && params.reservation_key != 0 {
                return Err(Refusal::Conflict);
            }
            if ignore_existing && params.spec_i_pt {
                return Err(Sense::invalid_field_in_parameter_list(20, Some(3)).into());
            }
            if params.service_action_key == 0 {
                // Unregistering an unregistered nexus: nothing to do, GOOD.
                return unchanged(state);
            }
            let own = Registration {
                key: params.service_action_key,
                initiator: nexus.initiator_port.to_string(),
                target_port: nexus.target_port.to_string(),
                relative_port: nexus.relative_port,
                all_target_ports: params.all_tg_pt,
            };
            let mut added = vec![own];
            for (initiator, offset) in &params.transport_ids {
                let candidate = Registration {
                    initiator: initiator.clone(),
                    ..added[0].clone()
                };
                // A TransportID naming an already registered nexus (or one named twice) is
                // refused as a whole, before anything is registered (SPC-4 §6.16.3).
                if state
                    .registrations
                    .iter()
                    .chain(added.iter())
                    .any(|r| r.overlaps(&candidate))
                {
                    return Err(Sense::invalid_field_in_parameter_list(*offset, None).into());
                }
                added.push(candidate);
            }
            if state.registrations.len() + added.len() > MAX_REGISTRATIONS {
                return Err(insufficient_registration_resources().into());
            }
            next.registrations.extend(added);
        }
        Some(index) => {
            if !ignore_existing && state.registrations[index].key != params.reservation_key {
                return Err(Refusal::Conflict);
            }
            // §6.16.3: SPEC_I_PT from a registered nexus is an invalid field.
            if params.spec_i_pt {
                return Err(Sense::invalid_field_in_parameter_list(20, Some(3)).into());
            }
            if params.service_action_key == 0 {
                notices = unregister(&mut next, nexus, index);
            } else {
                next.registrations[index].key = params.service_action_key;
            }
        }
    }
    next.aptpl = params.aptpl;
    next.bump_generation();
    Ok(Outcome {
        abort: Vec::new(),
        state: next,
        notices,
    })
}

/// Removes registration `index` (of `nexus`) and what goes with it (SPC-4 §5.13.11.2.2
/// "Releasing" by unregistering): a holder's reservation is released; an all-registrants
/// reservation only with its last registrant. Releasing a registrants-only reservation this
/// way tells the other registrants RESERVATIONS RELEASED.
fn unregister(state: &mut PrState, nexus: &Nexus, index: usize) -> Vec<Notice> {
    state.registrations.remove(index);
    let mut notices = Vec::new();
    match &state.reservation {
        Some(Reservation {
            holder: Some(id),
            pr_type,
        }) if id.is(nexus) => {
            if matches!(
                pr_type,
                PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
            ) {
                notices.push(Notice {
                    to: state.registrations.clone(),
                    sense: reservations_released(),
                });
            }
            state.reservation = None;
        }
        Some(Reservation { holder: None, .. }) if state.registrations.is_empty() => {
            state.reservation = None;
        }
        _ => {}
    }
    notices
}

/// RESERVE (SPC-4 §5.13.9): the generation does not change.
fn reserve(state: &PrState, nexus: &Nexus, pr_type: PrType) -> Result<Outcome, Refusal> {
    match &state.reservation {
        // The holder may repeat its reservation, not change it (§5.13.9).
        Some(existing) if state.is_holder(nexus) && existing.pr_type == pr_type => unchanged(state),
        Some(_) => Err(Refusal::Conflict),
        None => {
            let mut next = state.clone();
            next.reservation = Some(Reservation {
                pr_type,
                holder: (!pr_type.all_registrants()).then(|| NexusId::of(nexus)),
            });
            Ok(Outcome {
                abort: Vec::new(),
                state: next,
                notices: Vec::new(),
            })
        }
    }
}

/// RELEASE (SPC-4 §5.13.11.2): a non-holder's RELEASE does nothing; the holder must name the
/// reservation's type. Releasing a registrants-only or all-registrants reservation tells the
/// other registrants RESERVATIONS RELEASED.
fn release(state: &PrState, nexus: &Nexus, pr_type: PrType) -> Result<Outcome, Refusal> {
    let Some(existing) = &state.reservation else {
        return unchanged(state);
    };
    if !state.is_holder(nexus) {
        return unchanged(state);
    }
    if existing.pr_type != pr_type {
        return Err(invalid_release().into());
    }
    let mut notices = Vec::new();
    if existing.pr_type.registrants_have_access() {
        notices.push(Notice {
            to: state.registrations.clone(),
            sense: reservations_released(),
        });
    }
    let mut next = state.clone();
    next.reservation = None;
    Ok(Outcome {
        abort: Vec::new(),
        state: next,
        notices,
    })
}

/// CLEAR (SPC-4 §5.13.11.2.4): every registration and the reservation go; the others hear
/// RESERVATIONS PREEMPTED.
fn clear(state: &PrState) -> Result<Outcome, Refusal> {
    let mut next = state.clone();
    next.registrations.clear();
    next.reservation = None;
    next.bump_generation();
    Ok(Outcome {
        abort: Vec::new(),
        state: next,
        notices: vec![Notice {
            to: state.registrations.clone(),
            sense: reservations_preempted(),
        }],
    })
}

/// Removes the registrations with `key`, except the one covering `spared` (if any). Returns
/// what was removed.
fn remove_keyed(state: &mut PrState, key: u64, spared: Option<&Nexus>) -> Vec<Registration> {
    let (removed, kept) = std::mem::take(&mut state.registrations)
        .into_iter()
        .partition(|r| r.key == key && !spared.is_some_and(|nexus| r.covers(nexus)));
    state.registrations = kept;
    removed
}

/// PREEMPT and PREEMPT AND ABORT (SPC-4 r36f §5.13.11.2.4 table 53 and figure 9, §5.13.11.2.5,
/// §5.13.11.2.6).
///
/// The unit attentions and aborts name registrations, the sender's among them when it went;
/// the caller never delivers either to the sending I_T nexus itself (§5.13.11.2.5: "no unit
/// attention condition is established for the I_T nexus on which the PERSISTENT RESERVE OUT
/// command was received"), but does to the other nexuses such a registration covers.
fn preempt(
    state: &PrState,
    nexus: &Nexus,
    pr_type: PrType,
    key: u64,
    abort: bool,
) -> Result<Outcome, Refusal> {
    let mut next = state.clone();
    let mut notices = Vec::new();
    let mut aborted = Vec::new();
    let all_registrants = state
        .reservation
        .as_ref()
        .is_some_and(|r| r.pr_type.all_registrants());
    // §5.13.11.2.4.1 table 53: SERVICE ACTION RESERVATION KEY zero only means something
    // against an all-registrants reservation.
    if key == 0 && !all_registrants {
        return Err(Sense::invalid_field_in_parameter_list(8, None).into());
    }
    let holder_key = state.reservation.as_ref().and_then(|r| {
        r.holder.as_ref().and_then(|id| {
            state
                .registrations
                .iter()
                .find(|reg| reg.is_for(id))
                .map(|reg| reg.key)
        })
    });
    let new_reservation = Reservation {
        pr_type,
        holder: (!pr_type.all_registrants()).then(|| NexusId::of(nexus)),
    };
    let removed = if all_registrants && key == 0 {
        // §5.13.11.2.4.3 b): every registration but the sender's goes; the sender's
        // reservation replaces the all-registrants one.
        let (removed, kept) = std::mem::take(&mut next.registrations)
            .into_iter()
            .partition(|r| !r.covers(nexus));
        next.registrations = kept;
        next.reservation = Some(new_reservation);
        removed
    } else if holder_key == Some(key) {
        // §5.13.11.2.4.3: preempting the holder (possibly the sender itself): the
        // registrations with its key go, except the sender's, which stays; the sender holds
        // the new reservation; if its type changed the remaining registrants hear
        // RESERVATIONS RELEASED.
        let previous_type = state.reservation.as_ref().map(|r| r.pr_type);
        let removed = remove_keyed(&mut next, key, Some(nexus));
        next.reservation = Some(new_reservation);
        if previous_type != Some(pr_type) {
            notices.push(Notice {
                to: next.registrations.clone(),
                sense: reservations_released(),
            });
        }
        removed
    } else {
        // §5.13.11.2.5: the key is no holder's (or an all-registrants reservation's, or there
        // is no reservation): every registration with it goes, the sender's own included,
        // since "it is not an error" for the two keys to be equal ("The registration is
        // removed."). Nothing else changes: a reservation stays with its holder(s).
        let removed = remove_keyed(&mut next, key, None);
        if removed.is_empty() {
            return Err(Refusal::Conflict);
        }
        removed
    };
    if !removed.is_empty() {
        notices.push(Notice {
            to: removed.clone(),
            sense: registrations_preempted(),
        });
        if abort {
            aborted = removed;
        }
    }
    // An all-registrants reservation whose registrants all went is released with them.
    if next
        .reservation
        .as_ref()
        .is_some_and(|r| r.holder.is_none())
        && next.registrations.is_empty()
    {
        next.reservation = None;
    }
    next.bump_generation();
    Ok(Outcome {
        abort: aborted,
        state: next,
        notices,
    })
}

/// REGISTER AND MOVE (SPC-4 §5.13.8, parameter list §6.16.4 table 192).
fn register_and_move(
    state: &PrState,
    nexus: &Nexus,
    cdb: &ProutCdb,
    data: &[u8],
    caps: Capabilities,
) -> Result<Outcome, Refusal> {
    let len = usize::try_from(cdb.parameter_list_length).unwrap_or(usize::MAX);
    if len < BASIC_PARAMETER_LIST_LEN || data.len() < len {
        return Err(Sense::parameter_list_length_error().into());
    }
    let data = &data[..len];
    let tid_len = usize::try_from(be32(data, 20)).unwrap_or(usize::MAX);
    if tid_len == 0 || BASIC_PARAMETER_LIST_LEN.saturating_add(tid_len) > len {
        return Err(Sense::parameter_list_length_error().into());
    }
    let reservation_key = be64(data, 0);
    let service_action_key = be64(data, 8);
    let unreg = data[17] & 0x02 != 0;
    let aptpl = data[17] & 0x01 != 0;
    let relative_port = be16(data, 18);
    let sender_key = registered_key(state, nexus)?;
    if sender_key != reservation_key {
        return Err(Refusal::Conflict);
    }
    check_aptpl(aptpl, caps, 17)?;
    // §5.13.8: only the holder of a reservation that is not all-registrants can move it.
    let Some(reservation) = &state.reservation else {
        return Err(Refusal::Conflict);
    };
    if reservation.pr_type.all_registrants() || !state.is_holder(nexus) {
        return Err(Refusal::Conflict);
    }
    if service_action_key == 0 {
        return Err(Sense::invalid_field_in_parameter_list(8, None).into());
    }
    // Each keel target has one target port (its portal group); another relative port
    // identifier names nothing.
    if relative_port != nexus.relative_port {
        return Err(Sense::invalid_field_in_parameter_list(18, None).into());
    }
    let (initiator, _) = parse_transport_id(&data[24..24 + tid_len], 24)?;
    let destination = NexusId {
        initiator,
        target_port: nexus.target_port.to_string(),
        relative_port,
    };
    if destination.is(nexus) {
        return Err(Sense::invalid_field_in_parameter_list(24, None).into());
    }
    let mut next = state.clone();
    if !next.registrations.iter().any(|r| r.is_for(&destination)) {
        if next.registrations.len() >= MAX_REGISTRATIONS {
            return Err(insufficient_registration_resources().into());
        }
        next.registrations.push(Registration {
            key: service_action_key,
            initiator: destination.initiator.clone(),
            target_port: destination.target_port.clone(),
            relative_port,
            all_target_ports: false,
        });
    }
    next.reservation = Some(Reservation {
        pr_type: reservation.pr_type,
        holder: Some(destination),
    });
    if unreg && let Some(index) = next.registration_index(nexus) {
        next.registrations.remove(index);
    }
    next.aptpl = aptpl;
    next.bump_generation();
    Ok(Outcome {
        abort: Vec::new(),
        state: next,
        notices: Vec::new(),
    })
}

/// PERSISTENT RESERVE IN parameter data, before the allocation length cut.
pub fn prin_data(state: &PrState, service_action: u8, caps: Capabilities) -> Vec<u8> {
    match service_action {
        prin_sa::READ_KEYS => read_keys(state),
        prin_sa::READ_RESERVATION => read_reservation(state),
        prin_sa::REPORT_CAPABILITIES => report_capabilities(state, caps),
        _ => read_full_status(state),
    }
}

fn header(generation: u32, additional_length: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + additional_length);
    out.extend_from_slice(&generation.to_be_bytes());
    let len = u32::try_from(additional_length).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out
}

/// READ KEYS (SPC-4 §6.15.2): every registered key, one per registration.
fn read_keys(state: &PrState) -> Vec<u8> {
    let mut out = header(state.generation, 8 * state.registrations.len());
    for r in &state.registrations {
        out.extend_from_slice(&r.key.to_be_bytes());
    }
    out
}

/// READ RESERVATION (SPC-4 §6.15.3): the reservation key is zero for all-registrants types.
fn read_reservation(state: &PrState) -> Vec<u8> {
    let Some(reservation) = &state.reservation else {
        return header(state.generation, 0);
    };
    let key = match &reservation.holder {
        None => 0,
        Some(id) => state
            .registrations
            .iter()
            .find(|r| r.is_for(id))
            .map_or(0, |r| r.key),
    };
    let mut out = header(state.generation, 16);
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, reservation.pr_type.code(), 0, 0]);
    out
}

/// REPORT CAPABILITIES (SPC-4 §6.15.4 table 178).
fn report_capabilities(state: &PrState, caps: Capabilities) -> Vec<u8> {
    // CRH: RESERVE/RELEASE follow SPC-4's exceptions to SPC-2 behaviour; SIP_C, ATP_C:
    // SPEC_I_PT and ALL_TG_PT work; PTPL_C when a store can persist.
    let mut byte2 = 0x10 | 0x08 | 0x04;
    let mut byte3 = 0x80 | (0x1 << 4); // TMV; ALLOW COMMANDS 001b: TUR passes WE/EA.
    if caps.persist_through_power_loss {
        byte2 |= 0x01;
        if state.aptpl {
            byte3 |= 0x01;
        }
    }
    // Type mask: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
    vec![
        0,
        8,
        byte2,
        byte3,
        0x80 | 0x40 | 0x20 | 0x08 | 0x02,
        0x01,
        0,
        0,
    ]
}

/// READ FULL STATUS (SPC-4 §6.15.5): one descriptor per registration.
fn read_full_status(state: &PrState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &state.registrations {
        let holds = state.registration_holds(r);
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.push(u8::from(r.all_target_ports) << 1 | u8::from(holds));
        let scope_type = state
            .reservation
            .as_ref()
            .filter(|_| holds)
            .map_or(0, |res| res.pr_type.code());
        body.push(scope_type);
        body.extend_from_slice(&[0, 0, 0, 0]);
        body.extend_from_slice(&r.relative_port.to_be_bytes());
        let tid = encode_transport_id(&r.initiator);
        let tid_len = u32::try_from(tid.len()).unwrap_or(u32::MAX);
        body.extend_from_slice(&tid_len.to_be_bytes());
        body.extend_from_slice(&tid);
    }
    let mut out = header(state.generation, body.len());
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------
// The handlers: the state machine above applied to the logical unit's state.

/// 04/44/00 INTERNAL TARGET FAILURE: the state could not be made persistent (SPC-4 §4.5.6
/// table 52); nothing changed.
pub const fn persist_failed() -> Sense {
    Sense::new(SenseKey::HardwareError, 0x44, 0x00)
}

/// RESERVATION CONFLICT status (SAM-5 §5.3.1).
fn conflict() -> ScsiResponse {
    ScsiResponse::status(ScsiStatus::ReservationConflict)
}

/// PERSISTENT RESERVE IN (SPC-4 §6.15).
pub fn persistent_reserve_in(
    lu: &LogicalUnit,
    _nexus: &Nexus,
    cdb: &[u8],
) -> Result<ScsiResponse, Sense> {
    let request = decode_prin(cdb)?;
    let reservations = lu.reservations();
    let caps = Capabilities {
        persist_through_power_loss: reservations.persists_through_power_loss(),
    };
    let data = prin_data(&reservations.snapshot(), request.service_action, caps);
    Ok(ScsiResponse::good(truncate(
        data,
        usize::from(request.allocation_length),
    )))
}

/// PERSISTENT RESERVE OUT (SPC-4 §6.16): decide on a copy, save it while APTPL is (or was)
/// set, then adopt it and raise the unit attentions.
pub async fn persistent_reserve_out(
    lu: &LogicalUnit,
    order: Order<'_>,
    nexus: &Nexus,
    cdb: &[u8],
    data: &Bytes,
) -> Result<ScsiResponse, Sense> {
    let request = decode_prout(cdb)?;
    let reservations = lu.reservations();
    let _changing = order.enter().await;
    let (current, store) = {
        let inner = reservations.lock();
        if inner.spc2_holder.is_some() {
            return Ok(conflict());
        }
        (inner.pr.clone(), inner.store.clone())
    };
    let caps = Capabilities {
        persist_through_power_loss: store.is_some(),
    };
    let outcome = match apply_prout(&current, nexus, &request, data, caps) {
        Ok(outcome) => outcome,
        Err(Refusal::Conflict) => return Ok(conflict()),
        Err(Refusal::Check(sense)) => return Err(sense),
    };
    if outcome.state != current {
        // A local store keeps APTPL state only (SPC-4 §5.13.5); a shared (cluster) store
        // gets every change, so the node that takes the unit over serves the same table.
        if let Some((store, unit)) = &store
            && (store.shared() || outcome.state.aptpl || current.aptpl)
        {
            let to_save = (store.shared() || outcome.state.aptpl).then(|| outcome.state.clone());
            let notices = if store.shared() {
                outcome
                    .notices
                    .iter()
                    .map(|n| PrNotice {
                        to: n.to.clone(),
                        from: NexusId::of(nexus),
                        asc: n.sense.asc,
                        ascq: n.sense.ascq,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            match store.save_change(unit, to_save, notices).await {
                Ok(()) => {}
                // The cluster may not change the table now (recovery, no majority): BUSY
                // (SAM-5 §5.3.1) makes the initiator retry, where a CHECK CONDITION would
                // fail the registration; nothing was adopted.
                Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                    tracing::info!(unit = %unit, "persistent reservation change refused for now: {e}");
                    return Ok(ScsiResponse::status(ScsiStatus::Busy));
                }
                Err(e) => {
                    tracing::warn!(unit = %unit, "cannot save persistent reservations: {e}");
                    return Err(persist_failed());
                }
            }
        }
        reservations.lock().pr = outcome.state;
    }
    let unit_attentions = lu.unit_attentions();
    let known = unit_attentions.known_nexuses();
    for notice in &outcome.notices {
        for other in known.iter().filter(|n| *n != nexus) {
            if notice.to.iter().any(|r| r.covers(other)) {
                unit_attentions.establish(other, notice.sense.clone());
            }
        }
    }
    if !outcome.abort.is_empty() {
        // PREEMPT AND ABORT (SPC-4 §5.13.11.2.3): the preempted nexuses' tasks are aborted
        // (ending with TASK ABORTED) and the command completes only once none of them can
        // still touch the medium. Other reservation changes may go on meanwhile.
        drop(_changing);
        let waits = lu.task_set().abort_where(nexus, |n| {
            n != nexus && outcome.abort.iter().any(|r| r.covers(n))
        });
        for finished in waits {
            finished.cancelled().await;
        }
    }
    Ok(ScsiResponse::good(Bytes::new()))
}

#[cfg(test)]
#[path = "persistent_reservations_tests.rs"]
mod tests;
