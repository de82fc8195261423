//! Third-party copy: EXTENDED COPY (LID1) (SPC-4 §6.4, opcode 83h service action 00h) and
//! RECEIVE COPY RESULTS (SPC-4 §6.22, opcode 84h) with the COPY STATUS (00h) and OPERATING
//! PARAMETERS (03h) service actions. This is what VMware's XCOPY offload (VAAI "full copy")
//! uses to clone and migrate virtual disks without moving the data through the host.
//!
//! The copy manager is the logical unit the command is addressed to; its copy targets (CSCDs)
//! are logical units of the same [`TargetDevice`](crate::scsi::TargetDevice) (the dispatcher
//! passes them in; this file does not import the target), named by identification descriptors
//! (CSCD type E4h, SPC-4 §6.4 "Identification descriptor CSCD descriptor format") carrying
//! the VPD 83h NAA designator. Only block→block segment descriptors (type 02h, SPC-4 §6.4 "Block device to block device operations")
//! are implemented.
//!
//! Processing happens in three steps:
//! 1. [`parse_parameter_list`] (pure): header, CSCD and segment descriptor lists, every
//!    ILLEGAL REQUEST condition of SPC-4 §6.4.3 ("errors detected before starting processing of
//!    the segment descriptors") with a field pointer into the parameter list;
//! 2. [`plan`] (pure, against the target's logical units): resolves every referenced CSCD to a
//!    logical unit and checks every segment against it before any data moves, so a list with a
//!    bad segment anywhere writes nothing. Unresolvable descriptors and ranges outside a copy
//!    target are reported COPY ABORTED (SPC-4 §6.4.3 "errors detected during processing"):
//!    that is what a copy target would have answered the copy manager, and what libiscsi's
//!    ExtendedCopy.ValidSegDescr expects;
//! 3. the copy itself, segment by segment, in [`COPY_CHUNK_BYTES`] pieces read from the source
//!    backend and written to the destination under the destination's write-order lock (held
//!    shared per chunk, so COMPARE AND WRITE — the VMware ATS heartbeat — never waits for a
//!    whole copy). Overlapping ranges within one logical unit are copied back to front when
//!    the destination lies above the source, so the result is that of reading the whole
//!    source first (memmove semantics).
//!
//! Work per command is bounded by the limits RECEIVE COPY RESULTS OPERATING PARAMETERS
//! announces: at most [`MAX_SEGMENT_DESCRIPTORS`] segments of at most [`MAX_SEGMENT_BYTES`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::parameter_data::truncate;
use super::reservation_access;
use crate::scsi::cdb::{be16, be32, be64, byte_at};
use crate::scsi::opcodes::op;
use crate::scsi::ordering::{Order, OrderClass};
use crate::scsi::sense::{Sense, SenseKey};
use crate::scsi::table;
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::{Nexus, ScsiResponse, ScsiStatus};

// ---------------------------------------------------------------------------------------
// Limits (reported by RECEIVE COPY RESULTS OPERATING PARAMETERS, SPC-4 §6.22.4).

/// MAXIMUM CSCD DESCRIPTOR COUNT. VMware sends two (source and destination).
pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// MAXIMUM DESCRIPTOR LIST LENGTH: CSCD plus segment descriptor list lengths, in bytes.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// MAXIMUM SEGMENT LENGTH in bytes (VMware's default XCOPY size is 4 MiB, its maximum
/// configurable size 16 MiB). With [`MAX_SEGMENT_DESCRIPTORS`] it bounds one command to
/// 512 MiB of copying.
pub const MAX_SEGMENT_BYTES: u32 = 32 << 20;
/// MAXIMUM CONCURRENT COPIES and TOTAL CONCURRENT COPIES: EXTENDED COPY commands one copy
/// manager (logical unit) runs at once, over all I_T nexuses.
pub const MAX_CONCURRENT_COPIES: u8 = 16;
/// Completed results held per I_T nexus and copy manager for COPY STATUS; the oldest is
/// dropped first.
pub const HELD_RESULTS: usize = 16;
/// Largest piece read and written at once.
pub const COPY_CHUNK_BYTES: u64 = 1 << 20;

/// Parameter list header length (SPC-4 §6.4, "EXTENDED COPY(LID1) parameter list").
pub const HEADER_LEN: usize = 16;
/// Identification descriptor CSCD descriptor type code.
pub const CSCD_IDENTIFICATION: u8 = 0xE4;
/// Block device to block device segment descriptor type code.
pub const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// CSCD descriptors are 32 bytes, except the IPv6 and IP copy service ones (64).
const CSCD_LEN: usize = 32;
const CSCD_LONG_LEN: usize = 64;
/// Block→block segment descriptor: 28 bytes, DESCRIPTOR LENGTH 0018h.
const BLOCK_TO_BLOCK_LEN: usize = 28;
/// The descriptor type codes OPERATING PARAMETERS lists as implemented.
const IMPLEMENTED_DESCRIPTOR_TYPES: [u8; 2] = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];

// ---------------------------------------------------------------------------------------
// Sense conditions (SPC-4 §6.4.3 and Annex D).

/// 05/26/06 TOO MANY TARGET DESCRIPTORS.
pub fn too_many_cscd_descriptors() -> Sense {
    Sense::in_parameter_list(0x06, 2, Some(7))
}

/// 05/26/07 UNSUPPORTED TARGET DESCRIPTOR TYPE CODE, at the descriptor's type code.
pub fn unsupported_cscd_type(byte: usize) -> Sense {
    Sense::in_parameter_list(0x07, byte, Some(7))
}

/// 05/26/08 TOO MANY SEGMENT DESCRIPTORS.
pub fn too_many_segment_descriptors() -> Sense {
    Sense::in_parameter_list(0x08, 8, Some(7))
}

/// 05/26/09 UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE, at the descriptor's type code.
pub fn unsupported_segment_type(byte: usize) -> Sense {
    Sense::in_parameter_list(0x09, byte, Some(7))
}

/// 05/00/16 OPERATION IN PROGRESS: the list identifier belongs to a copy still running on
/// this I_T nexus (SPC-4 §6.4, LIST IDENTIFIER field).
pub const fn operation_in_progress() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x00, 0x16)
}

/// 05/55/03 INSUFFICIENT RESOURCES: [`MAX_CONCURRENT_COPIES`] copies already run.
pub const fn insufficient_resources() -> Sense {
    Sense::new(SenseKey::IllegalRequest, 0x55, 0x03)
}

/// 0A/0D/02 COPY TARGET DEVICE NOT REACHABLE, pointing (segment pointer, SD = 0: relative to
/// the parameter list, SPC-4 §4.5.2.4.6) at the field that named the copy target.
pub fn copy_target_not_reachable(byte: usize) -> Sense {
    Sense {
        field_pointer: Some((false, u16::try_from(byte).unwrap_or(u16::MAX), None)),
        ..Sense::new(SenseKey::CopyAborted, 0x0D, 0x02)
    }
}

/// 0A/0D/01 THIRD PARTY DEVICE FAILURE: a copy target's medium failed a read or write.
pub fn third_party_device_failure(byte: usize) -> Sense {
    Sense {
        field_pointer: Some((false, u16::try_from(byte).unwrap_or(u16::MAX), None)),
        ..Sense::new(SenseKey::CopyAborted, 0x0D, 0x01)
    }
}

// ---------------------------------------------------------------------------------------
// Byte access over untrusted input: never panics, reads zeros past the end (callers check
// lengths first).

// ---------------------------------------------------------------------------------------
// CDBs.

/// EXTENDED COPY(LID1) CDB (SPC-4 §6.4.1): PARAMETER LIST LENGTH in bytes 10-13.
pub fn decode_extended_copy(cdb: &[u8]) -> Result<u32, Sense> {
    if cdb.first() != Some(&op::EXTENDED_COPY) {
        return Err(Sense::invalid_opcode());
    }
    if cdb.len() < 16 {
        return Err(Sense::invalid_cdb());
    }
    Ok(be32(cdb, 10))
}

/// RECEIVE COPY RESULTS CDB (SPC-4 §6.22.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveCopyResultsCdb {
    pub service_action: u8,
    pub list_id: u8,
    pub alloc_len: u32,
}

pub fn decode_receive_copy_results(cdb: &[u8]) -> Result<ReceiveCopyResultsCdb, Sense> {
    if cdb.first() != Some(&op::RECEIVE_COPY_RESULTS) {
        return Err(Sense::invalid_opcode());
    }
    if cdb.len() < 16 {
        return Err(Sense::invalid_cdb());
    }
    Ok(ReceiveCopyResultsCdb {
        service_action: byte_at(cdb, 1) & 0x1F,
        list_id: byte_at(cdb, 2),
        alloc_len: be32(cdb, 10),
    })
}

// ---------------------------------------------------------------------------------------
// The parameter list (pure).

/// LIST ID USAGE (SPC-4 §6.4, "LIST ID USAGE field" table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListIdUsage {
    /// 00b: results are held for RECEIVE COPY RESULTS; the list identifier is unique.
    Hold,
    /// 10b: nothing is held; the list identifier is unique while the copy runs.
    NoHold,
    /// 11b: no list identifier (it must be zero); nothing is held.
    NoListId,
}

/// A VPD 83h designation descriptor as an identification CSCD descriptor carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Designator {
    pub code_set: u8,
    pub association: u8,
    pub designator_type: u8,
    pub value: Vec<u8>,
}

/// An identification descriptor CSCD descriptor (type E4h) of a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cscd {
    /// Offset of the descriptor in the parameter list (for segment pointers).
    pub offset: usize,
    pub designator: Designator,
    /// DISK BLOCK LENGTH from the block device type specific parameters (bytes 29-31).
    pub disk_block_length: u32,
}

/// A block device to block device segment descriptor (type 02h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSegment {
    /// Offset of the descriptor in the parameter list.
    pub offset: usize,
    pub source: u16,
    pub destination: u16,
    /// DC: NUMBER OF BLOCKS counts destination blocks (else source blocks).
    pub destination_count: bool,
    pub blocks: u16,
    pub source_lba: u64,
    pub destination_lba: u64,
}

/// A parsed EXTENDED COPY(LID1) parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterList {
    pub list_id: u8,
    pub usage: ListIdUsage,
    pub cscds: Vec<Cscd>,
    pub segments: Vec<BlockSegment>,
}

/// Length of a CSCD descriptor by its type code (SPC-4 §6.4.5.1): IPv6 (EAh) and IP copy
/// service (EBh) descriptors are 64 bytes, all others 32.
fn cscd_len(type_code: u8) -> usize {
    match type_code {
        0xEA | 0xEB => CSCD_LONG_LEN,
        _ => CSCD_LEN,
    }
}

/// Parses an EXTENDED COPY(LID1) parameter list (SPC-4 §6.4). `None` for an empty list:
/// "a PARAMETER LIST LENGTH of zero ... shall not be considered an error" and nothing is done.
///
/// Order of checks (what libiscsi's ExtendedCopy.* tests rely on): header present, LIST ID
/// USAGE, descriptor list length within [`MAX_DESCRIPTOR_LIST_LENGTH`] (else PARAMETER LIST
/// LENGTH ERROR), no inline data, the lists fit in the parameter list (else PARAMETER LIST
/// LENGTH ERROR), descriptor counts (TOO MANY ...), then each descriptor.
pub fn parse_parameter_list(list: &[u8]) -> Result<Option<ParameterList>, Sense> {
    if list.is_empty() {
        return Ok(None);
    }
    if list.len() < HEADER_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    let list_id = byte_at(list, 0);
    let flags = byte_at(list, 1);
    let usage = match (flags >> 3) & 0x03 {
        0b00 => ListIdUsage::Hold,
        0b10 => ListIdUsage::NoHold,
        0b11 => ListIdUsage::NoListId,
        _ => return Err(Sense::invalid_field_in_parameter_list(1, Some(4))),
    };
    if usage == ListIdUsage::NoListId && list_id != 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, Some(7)));
    }
    let cscd_list_len = usize::from(be16(list, 2));
    let segment_list_len = be32(list, 8);
    let inline_len = be32(list, 12);
    let descriptors_len = u64::try_from(cscd_list_len)
        .ok()
        .and_then(|c| c.checked_add(u64::from(segment_list_len)));
    if descriptors_len.is_none_or(|len| len > u64::from(MAX_DESCRIPTOR_LIST_LENGTH)) {
        return Err(Sense::parameter_list_length_error());
    }
    // MAXIMUM INLINE DATA LENGTH is zero: no inline or embedded data segments.
    if inline_len != 0 {
        return Err(Sense::invalid_field_in_parameter_list(12, Some(7)));
    }
    // Both lengths are now within MAX_DESCRIPTOR_LIST_LENGTH, so these sums cannot overflow.
    let segment_list_len = segment_list_len as usize;
    let cscd_end = HEADER_LEN + cscd_list_len;
    let segment_end = cscd_end + segment_list_len;
    if segment_end > list.len() {
        return Err(Sense::parameter_list_length_error());
    }
    let cscd_offsets =
        descriptor_offsets(HEADER_LEN, cscd_end, |at| Some(cscd_len(byte_at(list, at))))
            .ok_or_else(|| Sense::invalid_field_in_parameter_list(2, Some(7)))?;
    if cscd_offsets.len() > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(too_many_cscd_descriptors());
    }
    // Segment descriptors carry their own length: DESCRIPTOR LENGTH (bytes 2-3) counts the
    // bytes after byte 3 (SPC-4 §6.4.6.1).
    let segment_offsets = descriptor_offsets(cscd_end, segment_end, |at| {
        (at + 4 <= segment_end).then(|| 4 + usize::from(be16(list, at + 2)))
    })
    .ok_or_else(|| Sense::invalid_field_in_parameter_list(8, Some(7)))?;
    if segment_offsets.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(too_many_segment_descriptors());
    }
    let cscds = cscd_offsets
        .into_iter()
        .map(|at| parse_cscd(list, at))
        .collect::<Result<Vec<_>, _>>()?;
    let segments = segment_offsets
        .into_iter()
        .map(|at| parse_segment(list, at))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(ParameterList {
        list_id,
        usage,
        cscds,
        segments,
    }))
}

/// Offsets of the descriptors tiling `start..end`, each `len_at(offset)` long, or `None` if
/// they do not tile it exactly. At most [`MAX_DESCRIPTOR_LIST_LENGTH`] / 4 + 1 iterations:
/// every descriptor is at least 4 bytes and the range was bounded by the caller. Stops once
/// more descriptors than any limit allows are found (the caller reports TOO MANY).
fn descriptor_offsets(
    start: usize,
    end: usize,
    len_at: impl Fn(usize) -> Option<usize>,
) -> Option<Vec<usize>> {
    let cap = usize::from(MAX_CSCD_DESCRIPTORS.max(MAX_SEGMENT_DESCRIPTORS)) + 1;
    let mut offsets = Vec::new();
    let mut at = start;
    while at < end {
        offsets.push(at);
        if offsets.len() >= cap {
            // Whatever follows, there are too many: no need to walk further.
            return Some(offsets);
        }
        let len = len_at(at)?;
        at = at.checked_add(len.max(4))?;
    }
    (at == end).then_some(offsets)
}

/// One CSCD descriptor at `at` (SPC-4 §6.4: CSCD descriptor header, "Identification descriptor CSCD descriptor format").
fn parse_cscd(list: &[u8], at: usize) -> Result<Cscd, Sense> {
    let type_code = byte_at(list, at);
    if type_code != CSCD_IDENTIFICATION {
        return Err(unsupported_cscd_type(at));
    }
    // Byte 1: LU ID TYPE (bits 7-6) and NUL (bit 5) are ignored for identification
    // descriptors in SPC-4 (libiscsi ExtendedCopy.ValidTgtDescr expects GOOD for a reserved
    // LU ID TYPE from an SPC-4 device); PERIPHERAL DEVICE TYPE must be 00h: only block
    // devices are copy targets here.
    let peripheral_type = byte_at(list, at + 1) & 0x1F;
    if peripheral_type != 0 {
        return Err(Sense::invalid_field_in_parameter_list(at + 1, Some(4)));
    }
    // Bytes 4-7: designation descriptor header; bytes 8-27: designator (at most 20 bytes).
    let code_set = byte_at(list, at + 4) & 0x0F;
    let association = (byte_at(list, at + 5) >> 4) & 0x03;
    let designator_type = byte_at(list, at + 5) & 0x0F;
    let designator_len = usize::from(byte_at(list, at + 7));
    if designator_len > 20 {
        return Err(Sense::invalid_field_in_parameter_list(at + 7, Some(7)));
    }
    let value = list
        .get(at + 8..at + 8 + designator_len)
        .ok_or_else(Sense::parameter_list_length_error)?
        .to_vec();
    // Bytes 28-31: block device type specific parameters, DISK BLOCK LENGTH in 29-31.
    let disk_block_length = be32(list, at + 28) & 0x00FF_FFFF;
    Ok(Cscd {
        offset: at,
        designator: Designator {
            code_set,
            association,
            designator_type,
            value,
        },
        disk_block_length,
    })
}

/// One segment descriptor at `at` (SPC-4 §6.4: segment descriptor header, "Block device to block device operations").
fn parse_segment(list: &[u8], at: usize) -> Result<BlockSegment, Sense> {
    let type_code = byte_at(list, at);
    if type_code != SEGMENT_BLOCK_TO_BLOCK {
        return Err(unsupported_segment_type(at));
    }
    if usize::from(be16(list, at + 2)) + 4 != BLOCK_TO_BLOCK_LEN {
        return Err(Sense::invalid_field_in_parameter_list(at + 2, Some(7)));
    }
    let flags = byte_at(list, at + 1);
    // CAT (bit 0) only matters when a residue is left over, which block→block copies
    // between equal-sized blocks never do (plan() refuses any residue).
    Ok(BlockSegment {
        offset: at,
        source: be16(list, at + 4),
        destination: be16(list, at + 6),
        destination_count: flags & 0x02 != 0,
        blocks: be16(list, at + 10),
        source_lba: be64(list, at + 12),
        destination_lba: be64(list, at + 20),
    })
}

// ---------------------------------------------------------------------------------------
// Planning (pure, against the target's logical units).

/// One segment ready to copy: ranges checked against both copy targets.
#[derive(Clone)]
pub struct PlannedSegment {
    pub offset: usize,
    pub source: Arc<LogicalUnit>,
    pub destination: Arc<LogicalUnit>,
    /// Byte offsets on the media and the byte count.
    pub source_offset: u64,
    pub destination_offset: u64,
    pub bytes: u64,
}

impl std::fmt::Debug for PlannedSegment {
    /// The logical units by LUN only (their Debug output includes the medium).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedSegment")
            .field("offset", &self.offset)
            .field("source_lun", &self.source.lun())
            .field("destination_lun", &self.destination.lun())
            .field("source_offset", &self.source_offset)
            .field("destination_offset", &self.destination_offset)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl PlannedSegment {
    /// Whether the destination range overlaps the source range above it on the same
    /// medium: then a front-to-back chunked copy would read what it already wrote.
    pub fn needs_backward_copy(&self) -> bool {
        Arc::ptr_eq(&self.source, &self.destination)
            && self.destination_offset > self.source_offset
            && self.destination_offset < self.source_offset.saturating_add(self.bytes)
    }
}

/// Whether `designator` names `lu`: its VPD 83h NAA designator, logical unit association.
fn names(designator: &Designator, lu: &LogicalUnit) -> bool {
    const CODE_SET_BINARY: u8 = 0x1;
    const TYPE_NAA: u8 = 0x3;
    const ASSOC_LOGICAL_UNIT: u8 = 0x0;
    designator.code_set == CODE_SET_BINARY
        && designator.designator_type == TYPE_NAA
        && designator.association == ASSOC_LOGICAL_UNIT
        && designator.value == lu.identity().naa
}

/// The logical unit the CSCD descriptor at `index` names, with its block size checked.
fn resolve(
    list: &ParameterList,
    index: u16,
    index_field: usize,
    luns: &[Arc<LogicalUnit>],
) -> Result<Arc<LogicalUnit>, Sense> {
    // Indices past the list, the special values C000h-FFFFh included (SPC-4 §6.4.6.1
    // "CSCD descriptor ID values"), name nothing this copy manager can reach.
    let cscd = list
        .cscds
        .get(usize::from(index))
        .ok_or_else(|| copy_target_not_reachable(index_field))?;
    let lu = luns
        .iter()
        .find(|lu| names(&cscd.designator, lu))
        .ok_or_else(|| copy_target_not_reachable(cscd.offset + 4))?;
    // A copy target that is not ready cannot be reached either.
    if lu.not_ready_sense().is_some() {
        return Err(copy_target_not_reachable(cscd.offset + 4));
    }
    if cscd.disk_block_length != lu.block_size() {
        return Err(Sense::invalid_field_in_parameter_list(
            cscd.offset + 29,
            Some(7),
        ));
    }
    Ok(Arc::clone(lu))
}

/// Resolves and checks every segment before any data moves.
pub fn plan(list: &ParameterList, luns: &[Arc<LogicalUnit>]) -> Result<Vec<PlannedSegment>, Sense> {
    list.segments
        .iter()
        .map(|segment| {
            let at = segment.offset;
            let source = resolve(list, segment.source, at + 4, luns)?;
            let destination = resolve(list, segment.destination, at + 6, luns)?;
            if destination.is_read_only() {
                return Err(Sense::write_protected());
            }
            let (source_bs, destination_bs) = (
                u64::from(source.block_size()),
                u64::from(destination.block_size()),
            );
            let counted_bs = if segment.destination_count {
                destination_bs
            } else {
                source_bs
            };
            let bytes = u64::from(segment.blocks) * counted_bs;
            // No residue (SPC-4 §6.4, block→block segment PAD/CAT rules): whole blocks on both sides.
            if bytes % source_bs != 0 || bytes % destination_bs != 0 {
                return Err(Sense::invalid_field_in_parameter_list(at + 10, Some(7)));
            }
            if bytes > u64::from(MAX_SEGMENT_BYTES) {
                return Err(Sense::invalid_field_in_parameter_list(at + 10, Some(7)));
            }
            let in_range = |lu: &LogicalUnit, lba: u64, bs: u64| -> Option<u64> {
                let end = lba.checked_add(bytes / bs)?;
                (end <= lu.capacity_blocks()).then(|| lba.checked_mul(bs))?
            };
            // A range outside a copy target is what the target would refuse with LOGICAL
            // BLOCK ADDRESS OUT OF RANGE; the copy manager reports COPY ABORTED.
            let source_offset = in_range(&source, segment.source_lba, source_bs)
                .ok_or_else(|| copy_target_not_reachable(at + 12))?;
            let destination_offset =
                in_range(&destination, segment.destination_lba, destination_bs)
                    .ok_or_else(|| copy_target_not_reachable(at + 20))?;
            Ok(PlannedSegment {
                offset: at,
                source,
                destination,
                source_offset,
                destination_offset,
                bytes,
            })
        })
        .collect()
}

/// The chunks of a segment as `(offset within the segment, length)`, back to front when
/// `backward`. Each chunk is at most [`COPY_CHUNK_BYTES`] (a multiple of every block size).
pub fn chunks(bytes: u64, backward: bool) -> impl Iterator<Item = (u64, u64)> {
    let count = bytes.div_ceil(COPY_CHUNK_BYTES);
    (0..count).map(move |i| {
        let index = if backward { count - 1 - i } else { i };
        let start = index * COPY_CHUNK_BYTES;
        (start, COPY_CHUNK_BYTES.min(bytes - start))
    })
}

// ---------------------------------------------------------------------------------------
// Copy results held per I_T nexus (RECEIVE COPY RESULTS, SPC-4 §6.22.3).

/// COPY MANAGER STATUS (SPC-4 §6.22, COPY STATUS service action).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyState {
    InProgress = 0x00,
    Completed = 0x01,
    Failed = 0x02,
}

#[derive(Clone, Debug)]
struct CopyRecord {
    nexus: Nexus,
    lun: u64,
    list_id: Option<u8>,
    hold: bool,
    state: CopyState,
    segments_processed: u16,
    bytes: u64,
}

/// What COPY STATUS reports for one list identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyStatus {
    pub state: CopyState,
    pub segments_processed: u16,
    pub bytes: u64,
}

/// Running copies and held results of every copy manager of a target. A std mutex held
/// only for a few map operations, never across an await.
#[derive(Debug, Default)]
pub struct CopyResults {
    next_id: Mutex<u64>,
    records: Mutex<HashMap<u64, CopyRecord>>,
    /// Completion order of held records per (nexus, lun), for eviction.
    held: Mutex<HashMap<(Nexus, u64), VecDeque<u64>>>,
}

/// A running copy's registration; marks it failed if dropped unfinished (the command was
/// aborted), so its list identifier is free again.
pub struct RunningCopy<'a> {
    results: &'a CopyResults,
    id: u64,
    finished: bool,
}

impl CopyResults {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<u64, CopyRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a copy starting on `nexus` at copy manager `lun`. Refused while another copy
    /// of this nexus uses the same list identifier (OPERATION IN PROGRESS) or when the copy
    /// manager already runs [`MAX_CONCURRENT_COPIES`].
    pub fn begin(
        &self,
        nexus: &Nexus,
        lun: u64,
        list_id: u8,
        usage: ListIdUsage,
    ) -> Result<RunningCopy<'_>, Sense> {
        let list_id = (usage != ListIdUsage::NoListId).then_some(list_id);
        let mut records = self.records();
        let running_here = records
            .values()
            .filter(|r| r.lun == lun && r.state == CopyState::InProgress)
            .count();
        if list_id.is_some()
            && records.values().any(|r| {
                r.state == CopyState::InProgress
                    && r.lun == lun
                    && r.list_id == list_id
                    && r.nexus == *nexus
            })
        {
            return Err(operation_in_progress());
        }
        if running_here >= usize::from(MAX_CONCURRENT_COPIES) {
            return Err(insufficient_resources());
        }
        // A new copy with a held list identifier replaces the held result.
        if list_id.is_some() {
            records.retain(|_, r| {
                !(r.nexus == *nexus
                    && r.lun == lun
                    && r.list_id == list_id
                    && r.state != CopyState::InProgress)
            });
        }
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *next = next.wrapping_add(1);
            *next
        };
        records.insert(
            id,
            CopyRecord {
                nexus: nexus.clone(),
                lun,
                list_id,
                hold: usage == ListIdUsage::Hold,
                state: CopyState::InProgress,
                segments_processed: 0,
                bytes: 0,
            },
        );
        Ok(RunningCopy {
            results: self,
            id,
            finished: false,
        })
    }

    /// COPY STATUS for `list_id` of `nexus` at copy manager `lun`.
    pub fn status(&self, nexus: &Nexus, lun: u64, list_id: u8) -> Option<CopyStatus> {
        self.records()
            .values()
            .find(|r| {
                r.nexus == *nexus
                    && r.lun == lun
                    && r.list_id == Some(list_id)
                    && (r.hold || r.state == CopyState::InProgress)
            })
            .map(|r| CopyStatus {
                state: r.state,
                segments_processed: r.segments_processed,
                bytes: r.bytes,
            })
    }

    /// Forgets everything held for `nexus` (I_T nexus loss).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.records()
            .retain(|_, r| r.nexus != *nexus || r.state == CopyState::InProgress);
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _), _| n != nexus);
    }

    fn progress(&self, id: u64, segments_processed: u16, bytes: u64) {
        if let Some(r) = self.records().get_mut(&id) {
            r.segments_processed = segments_processed;
            r.bytes = bytes;
        }
    }

    fn finish(&self, id: u64, state: CopyState) {
        let mut records = self.records();
        let Some(record) = records.get_mut(&id) else {
            return;
        };
        record.state = state;
        if !record.hold {
            records.remove(&id);
            return;
        }
        let key = (record.nexus.clone(), record.lun);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let order = held.entry(key).or_default();
        order.retain(|old| records.contains_key(old));
        order.push_back(id);
        while order.len() > HELD_RESULTS {
            if let Some(oldest) = order.pop_front() {
                records.remove(&oldest);
            }
        }
    }
}

impl RunningCopy<'_> {
    pub fn progress(&self, segments_processed: u16, bytes: u64) {
        self.results.progress(self.id, segments_processed, bytes);
    }

    pub fn finish(mut self, ok: bool) {
        self.finished = true;
        let state = if ok {
            CopyState::Completed
        } else {
            CopyState::Failed
        };
        self.results.finish(self.id, state);
    }
}

impl Drop for RunningCopy<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.results.finish(self.id, CopyState::Failed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// RECEIVE COPY RESULTS parameter data (pure).

/// COPY STATUS parameter data (SPC-4 §6.22, COPY STATUS service action): AVAILABLE DATA 8, HDD 0 (nothing held is
/// ever discarded early), COPY MANAGER STATUS, SEGMENTS PROCESSED, TRANSFER COUNT UNITS and
/// TRANSFER COUNT (the smallest binary unit in which the count fits 32 bits).
pub fn copy_status_data(status: &CopyStatus) -> Vec<u8> {
    let mut units = 0u8;
    let mut count = status.bytes;
    while count > u64::from(u32::MAX) {
        count >>= 10;
        units += 1;
    }
    let mut data = vec![0u8; 12];
    data[0..4].copy_from_slice(&8u32.to_be_bytes());
    data[4] = status.state as u8;
    data[5..7].copy_from_slice(&status.segments_processed.to_be_bytes());
    data[7] = units;
    data[8..12].copy_from_slice(&u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes());
    data
}

/// OPERATING PARAMETERS parameter data (SPC-4 §6.22, OPERATING PARAMETERS service action) for a copy manager whose logical
/// blocks are `block_size` bytes.
pub fn operating_parameters_data(block_size: u32) -> Vec<u8> {
    let mut data = vec![0u8; 44];
    data[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
    data[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    data[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    data[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    data[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    data[34..36].copy_from_slice(&u16::from(MAX_CONCURRENT_COPIES).to_be_bytes());
    data[36] = MAX_CONCURRENT_COPIES;
    // DATA SEGMENT GRANULARITY (log2 bytes): segments move whole logical blocks.
    data[37] = u8::try_from(block_size.max(1).trailing_zeros()).unwrap_or(0);
    data[43] = IMPLEMENTED_DESCRIPTOR_TYPES.len() as u8;
    data.extend_from_slice(&IMPLEMENTED_DESCRIPTOR_TYPES);
    let available = u32::try_from(data.len() - 4).unwrap_or(u32::MAX);
    data[0..4].copy_from_slice(&available.to_be_bytes());
    data
}

// ---------------------------------------------------------------------------------------
// Handlers.

/// RECEIVE COPY RESULTS (SPC-4 §6.22). Unsupported service actions never get here (the
/// command table refuses them with INVALID FIELD IN CDB).
pub fn receive_copy_results(
    results: &CopyResults,
    lu: &LogicalUnit,
    nexus: &Nexus,
    raw_cdb: &[u8],
) -> Result<Bytes, Sense> {
    let cdb = decode_receive_copy_results(raw_cdb)?;
    let data = match cdb.service_action {
        op::SA_OPERATING_PARAMETERS => operating_parameters_data(lu.block_size()),
        op::SA_COPY_STATUS => {
            let status = results
                .status(nexus, lu.lun(), cdb.list_id)
                .ok_or_else(|| Sense::invalid_field_in_cdb(2, Some(7)))?;
            copy_status_data(&status)
        }
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    let alloc_len = usize::try_from(cdb.alloc_len).unwrap_or(usize::MAX);
    Ok(truncate(data, alloc_len))
}

/// EXTENDED COPY(LID1) (SPC-4 §6.4), run to completion within the command. `luns` are the
/// logical units of the target, the copy targets a CSCD descriptor may name; `copy_results`
/// is where the target keeps the status RECEIVE COPY RESULTS reports.
pub async fn extended_copy(
    copy_results: &CopyResults,
    luns: &[Arc<LogicalUnit>],
    lu: &LogicalUnit,
    nexus: &Nexus,
    raw_cdb: &[u8],
    data_out: &Bytes,
) -> Result<ScsiResponse, Sense> {
    let param_len = usize::try_from(decode_extended_copy(raw_cdb)?).unwrap_or(usize::MAX);
    // A shorter data-out buffer than the CDB announces truncates the list.
    let list_bytes = data_out
        .get(..param_len)
        .ok_or_else(Sense::parameter_list_length_error)?;
    let Some(list) = parse_parameter_list(list_bytes)? else {
        return Ok(ScsiResponse::good(Bytes::new()));
    };
    // Registered before planning, so that a list refused while planning (COPY ABORTED,
    // reservation conflicts) leaves a held "completed with errors" status for its list
    // identifier rather than an older result under the same identifier.
    let running = copy_results.begin(nexus, lu.lun(), list.list_id, list.usage)?;
    let planned = plan(&list, luns)?;
    // The copy manager reads and writes its copy targets on behalf of this I_T nexus: their
    // reservations apply as to that nexus's own READ and WRITE. The addressed unit was
    // already checked (EXTENDED COPY counts as a write there).
    for segment in &planned {
        let conflict = (segment.source.lun() != lu.lun()
            && reservation_access::conflicts(
                segment.source.reservations(),
                nexus,
                table::READ_ACCESS.pr,
                table::READ_ACCESS.spc2,
            ))
            || (segment.destination.lun() != lu.lun()
                && reservation_access::conflicts(
                    segment.destination.reservations(),
                    nexus,
                    table::WRITE_ACCESS.pr,
                    table::WRITE_ACCESS.spc2,
                ));
        if conflict {
            return Ok(ScsiResponse::status(ScsiStatus::ReservationConflict));
        }
    }
    let mut copied = 0u64;
    for (index, segment) in planned.iter().enumerate() {
        if let Err(sense) = copy_segment(segment).await {
            running.finish(false);
            return Err(sense);
        }
        copied = copied.saturating_add(segment.bytes);
        running.progress(u16::try_from(index + 1).unwrap_or(u16::MAX), copied);
    }
    running.finish(true);
    Ok(ScsiResponse::good(Bytes::new()))
}

/// Copies one planned segment chunk by chunk (see the module documentation).
async fn copy_segment(segment: &PlannedSegment) -> Result<(), Sense> {
    if Arc::ptr_eq(&segment.source, &segment.destination)
        && segment.source_offset == segment.destination_offset
    {
        return Ok(());
    }
    let unreachable = || copy_target_not_reachable(segment.offset);
    let source = segment.source.medium().map_err(|_| unreachable())?;
    let destination = segment.destination.medium().map_err(|_| unreachable())?;
    let fua = !segment.destination.write_cache_enabled();
    for (start, len) in chunks(segment.bytes, segment.needs_backward_copy()) {
        let failure = || third_party_device_failure(segment.offset);
        let len = usize::try_from(len).map_err(|_| failure())?;
        let read_at = segment.source_offset + start;
        // Ordered as a READ of the source would be; released before the destination's
        // ordering is entered.
        let read_order = Order::of(&segment.source, OrderClass::Read).enter().await;
        let data = source.read_at(read_at, len).await.map_err(|error| {
            tracing::warn!(backend = %source.describe(), offset = read_at, %error, "copy read failed");
            failure()
        })?;
        drop(read_order);
        if data.len() != len {
            return Err(failure());
        }
        let write_at = segment.destination_offset + start;
        let _write_order = Order::of(&segment.destination, OrderClass::Write)
            .enter()
            .await;
        destination
            .write_at(write_at, data, fua)
            .await
            .map_err(|error| {
                tracing::warn!(backend = %destination.describe(), offset = write_at, %error, "copy write failed");
                failure()
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::unit::lu::LuIdentity;
    use crate::scsi::{ScsiRequest, TargetDevice, TaskAttr};
    use crate::storage::MemoryBackend;

    const TARGET: &str = "iqn.2026-11.org.example:xcopy";
    const BS: u32 = 512;
    const BLOCKS: u64 = 16384;

    // --- parameter list builders (the layout libiscsi's populate_* helpers produce) ---

    fn header(list_id: u8, usage_bits: u8, cscd_len: u16, segment_len: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0] = list_id;
        h[1] = usage_bits << 3;
        h[2..4].copy_from_slice(&cscd_len.to_be_bytes());
        h[8..12].copy_from_slice(&segment_len.to_be_bytes());
        h
    }

    fn naa_of(lun: u64) -> [u8; 16] {
        LuIdentity::derived(TARGET, lun).naa
    }

    fn cscd(naa: &[u8; 16], block_size: u32) -> Vec<u8> {
        let mut d = vec![0u8; CSCD_LEN];
        d[0] = CSCD_IDENTIFICATION;
        d[4] = 0x01; // binary
        d[5] = 0x03; // LU association, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&block_size.to_be_bytes()[1..]);
        d
    }

    fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut d = vec![0u8; BLOCK_TO_BLOCK_LEN];
        d[0] = SEGMENT_BLOCK_TO_BLOCK;
        d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        d[4..6].copy_from_slice(&src.to_be_bytes());
        d[6..8].copy_from_slice(&dst.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src_lba.to_be_bytes());
        d[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        d
    }

    /// A list with `cscds` and `segments`, list identifier `list_id`, LIST ID USAGE 00b.
    fn list_of(list_id: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segments.concat();
        let mut l = header(list_id, 0, c.len() as u16, s.len() as u32);
        l.extend(c);
        l.extend(s);
        l
    }

    fn simple_list() -> Vec<u8> {
        list_of(1, &[cscd(&naa_of(0), BS)], &[b2b(0, 0, 16, 0, 100)])
    }

    fn parse_err(list: &[u8]) -> Sense {
        parse_parameter_list(list).unwrap_err()
    }

    fn code(sense: &Sense) -> (u8, u8, u8) {
        (sense.key as u8, sense.asc, sense.ascq)
    }

    // --- parsing ---

    #[test]
    fn empty_list_does_nothing_and_a_short_header_is_a_length_error() {
        assert_eq!(parse_parameter_list(&[]).unwrap(), None);
        assert_eq!(code(&parse_err(&[0u8; 15])), (0x05, 0x1A, 0x00));
    }

    #[test]
    fn parses_the_libiscsi_simple_list() {
        let list = parse_parameter_list(&simple_list()).unwrap().unwrap();
        assert_eq!((list.list_id, list.usage), (1, ListIdUsage::Hold));
        assert_eq!(list.cscds.len(), 1);
        assert_eq!(list.cscds[0].designator.value, naa_of(0));
        assert_eq!(list.cscds[0].disk_block_length, BS);
        assert_eq!(
            list.segments,
            vec![BlockSegment {
                offset: 48,
                source: 0,
                destination: 0,
                destination_count: false,
                blocks: 16,
                source_lba: 0,
                destination_lba: 100,
            }]
        );
    }

    #[test]
    fn list_id_usage_rules() {
        let mut l = simple_list();
        l[1] = 0b01 << 3;
        let e = parse_err(&l);
        assert_eq!(code(&e), (0x05, 0x26, 0x00));
        assert_eq!(e.field_pointer, Some((false, 1, Some(4))));
        l[1] = 0b11 << 3;
        assert_eq!(parse_err(&l).field_pointer, Some((false, 0, Some(7))));
        l[0] = 0;
        let parsed = parse_parameter_list(&l).unwrap().unwrap();
        assert_eq!(parsed.usage, ListIdUsage::NoListId);
        l[1] = 0b10 << 3;
        let parsed = parse_parameter_list(&l).unwrap().unwrap();
        assert_eq!(parsed.usage, ListIdUsage::NoHold);
    }

    /// libiscsi ExtendedCopy.ParamHdr: the list cut inside the CSCD or the segment
    /// descriptor is a PARAMETER LIST LENGTH ERROR.
    #[test]
    fn truncated_lists_are_length_errors() {
        let l = simple_list();
        assert_eq!(code(&parse_err(&l[..HEADER_LEN + 31])), (0x05, 0x1A, 0x00));
        assert_eq!(code(&parse_err(&l[..l.len() - 1])), (0x05, 0x1A, 0x00));
        // Extra bytes after the lists are ignored.
        let mut longer = l.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(parse_parameter_list(&longer).is_ok());
    }

    #[test]
    fn inline_data_is_refused() {
        let mut l = simple_list();
        l[15] = 4;
        l.extend_from_slice(&[0; 4]);
        assert_eq!(parse_err(&l).field_pointer, Some((false, 12, Some(7))));
    }

    /// libiscsi ExtendedCopy.DescrLimits.
    #[test]
    fn descriptor_limits() {
        let c = cscd(&naa_of(0), BS);
        let s = b2b(0, 0, 1, 0, 1);
        let too_many_cscds = vec![c.clone(); usize::from(MAX_CSCD_DESCRIPTORS) + 1];
        let e = parse_err(&list_of(1, &too_many_cscds, std::slice::from_ref(&s)));
        assert_eq!(code(&e), (0x05, 0x26, 0x06));
        let too_many_segments = vec![s.clone(); usize::from(MAX_SEGMENT_DESCRIPTORS) + 1];
        let e = parse_err(&list_of(2, std::slice::from_ref(&c), &too_many_segments));
        assert_eq!(code(&e), (0x05, 0x26, 0x08));
        // The exact limits are fine.
        let at_limit = list_of(
            3,
            &vec![c.clone(); usize::from(MAX_CSCD_DESCRIPTORS)],
            &vec![s.clone(); usize::from(MAX_SEGMENT_DESCRIPTORS)],
        );
        assert!(at_limit.len() - HEADER_LEN <= MAX_DESCRIPTOR_LIST_LENGTH as usize);
        assert!(parse_parameter_list(&at_limit).is_ok());
        // Lists longer than MAXIMUM DESCRIPTOR LIST LENGTH: a length error first.
        let count = MAX_DESCRIPTOR_LIST_LENGTH as usize / BLOCK_TO_BLOCK_LEN + 1;
        let e = parse_err(&list_of(3, std::slice::from_ref(&c), &vec![s; count]));
        assert_eq!(code(&e), (0x05, 0x1A, 0x00));
        // Huge lengths in the header do not overflow anything.
        let mut h = header(4, 0, u16::MAX, u32::MAX);
        h.extend_from_slice(&[0; 64]);
        assert_eq!(code(&parse_err(&h)), (0x05, 0x1A, 0x00));
    }

    /// libiscsi ExtendedCopy.DescrType: a Fibre Channel N_Port_Name CSCD (E0h) and a
    /// stream-to-stream segment (03h).
    #[test]
    fn unsupported_descriptor_types() {
        let mut fc = cscd(&naa_of(0), BS);
        fc[0] = 0xE0;
        let e = parse_err(&list_of(1, &[fc], &[b2b(0, 0, 1, 0, 1)]));
        assert_eq!(code(&e), (0x05, 0x26, 0x07));
        assert_eq!(e.field_pointer, Some((false, 16, Some(7))));
        let mut stream = vec![0u8; 0x14];
        stream[0] = 0x03;
        stream[3] = 0x14 - 4;
        let e = parse_err(&list_of(1, &[cscd(&naa_of(0), BS)], &[stream]));
        assert_eq!(code(&e), (0x05, 0x26, 0x09));
        assert_eq!(e.field_pointer, Some((false, 48, Some(7))));
    }

    #[test]
    fn descriptor_field_checks() {
        // libiscsi ExtendedCopy.ValidTgtDescr: a reserved LU ID TYPE is ignored (SPC-4).
        let mut c = cscd(&naa_of(0), BS);
        c[1] = 0x02 << 6;
        assert!(parse_parameter_list(&list_of(1, &[c.clone()], &[b2b(0, 0, 1, 0, 1)])).is_ok());
        c[1] = 0x01; // peripheral type 01h: not a block device
        let e = parse_err(&list_of(1, &[c], &[b2b(0, 0, 1, 0, 1)]));
        assert_eq!(e.field_pointer, Some((false, 17, Some(4))));
        let mut long_designator = cscd(&naa_of(0), BS);
        long_designator[7] = 21;
        let e = parse_err(&list_of(1, &[long_designator], &[]));
        assert_eq!(e.field_pointer, Some((false, 23, Some(7))));
        let mut s = b2b(0, 0, 1, 0, 1);
        s[3] = 0x14;
        s.truncate(0x18);
        let e = parse_err(&list_of(1, &[cscd(&naa_of(0), BS)], &[s]));
        assert_eq!(code(&e), (0x05, 0x26, 0x00));
        assert_eq!(e.field_pointer, Some((false, 50, Some(7))));
        // A CSCD list that is not a whole number of descriptors.
        let mut l = list_of(1, &[cscd(&naa_of(0), BS)], &[]);
        l.extend_from_slice(&[0; 4]);
        l[3] = 36;
        assert_eq!(parse_err(&l).field_pointer, Some((false, 2, Some(7))));
    }

    #[test]
    fn random_lists_never_panic() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut l = simple_list();
            let at = (seed % l.len() as u64) as usize;
            l[at] = (seed >> 32) as u8;
            let cut = ((seed >> 40) as usize) % (l.len() + 1);
            let _ = parse_parameter_list(&l[..cut]);
        }
    }

    // --- planning ---

    fn memory_lu(lun: u64, blocks: u64) -> Arc<LogicalUnit> {
        memory_lu_with(lun, blocks, BS)
    }

    fn memory_lu_with(lun: u64, blocks: u64, block_size: u32) -> Arc<LogicalUnit> {
        Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, lun),
            block_size,
            Some(Arc::new(MemoryBackend::new(blocks * u64::from(block_size)))),
            false,
        ))
    }

    #[track_caller]
    fn plan_err(list: &[u8], luns: &[Arc<LogicalUnit>]) -> Sense {
        let parsed = parse_parameter_list(list).unwrap().unwrap();
        plan(&parsed, luns).unwrap_err()
    }

    #[test]
    fn plan_resolves_and_checks_ranges() {
        let luns = [memory_lu(0, BLOCKS), memory_lu(1, 64)];
        let l = list_of(
            1,
            &[cscd(&naa_of(0), BS), cscd(&naa_of(1), BS)],
            &[b2b(0, 1, 8, 10, 56), b2b(1, 0, 64, 0, 0)],
        );
        let parsed = parse_parameter_list(&l).unwrap().unwrap();
        let planned = plan(&parsed, &luns).unwrap();
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].destination.lun(), 1);
        assert_eq!(
            (
                planned[0].source_offset,
                planned[0].destination_offset,
                planned[0].bytes
            ),
            (10 * 512, 56 * 512, 8 * 512)
        );
        // libiscsi ExtendedCopy.ValidSegDescr: a destination index past the list, and a
        // range past the end of the copy target, are COPY ABORTED.
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(0), BS)], &[b2b(0, 1, 8, 0, 0)]),
            &luns,
        );
        assert_eq!(code(&e), (0x0A, 0x0D, 0x02));
        assert_eq!(e.field_pointer, Some((false, 54, None)));
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(1), BS)], &[b2b(0, 0, 8, 0, 57)]),
            &luns,
        );
        assert_eq!(code(&e), (0x0A, 0x0D, 0x02));
        assert_eq!(e.field_pointer, Some((false, 68, None)));
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(0), BS)], &[b2b(0, 0, 2, u64::MAX, 0)]),
            &luns,
        );
        assert_eq!(code(&e), (0x0A, 0x0D, 0x02));
        // A designator naming no logical unit of this target.
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(7), BS)], &[b2b(0, 0, 1, 0, 1)]),
            &luns,
        );
        assert_eq!(code(&e), (0x0A, 0x0D, 0x02));
        // The wrong block length.
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(0), 4096)], &[b2b(0, 0, 1, 0, 1)]),
            &luns,
        );
        assert_eq!(e.field_pointer, Some((false, 16 + 29, Some(7))));
        // More than MAXIMUM SEGMENT LENGTH (unreachable with 512-byte blocks: the 16-bit
        // NUMBER OF BLOCKS field stops just below it).
        let big = u16::try_from(MAX_SEGMENT_BYTES / 4096 + 1).unwrap();
        let e = plan_err(
            &list_of(1, &[cscd(&naa_of(0), 4096)], &[b2b(0, 0, big, 0, 0)]),
            &[memory_lu_with(0, u64::from(big) + 8, 4096)],
        );
        assert_eq!(e.field_pointer, Some((false, 58, Some(7))));
    }

    #[test]
    fn plan_refuses_unreachable_and_write_protected_targets() {
        let not_ready = Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BS,
            None,
            false,
        ));
        let l = list_of(1, &[cscd(&naa_of(0), BS)], &[b2b(0, 0, 1, 0, 1)]);
        assert_eq!(code(&plan_err(&l, &[not_ready])), (0x0A, 0x0D, 0x02));
        let read_only = Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BS,
            Some(Arc::new(MemoryBackend::new(BLOCKS * 512))),
            true,
        ));
        assert_eq!(plan_err(&l, &[read_only]), Sense::write_protected());
    }

    #[test]
    fn chunking_covers_the_segment_in_either_direction() {
        let bytes = 2 * COPY_CHUNK_BYTES + 4096;
        let forward: Vec<_> = chunks(bytes, false).collect();
        assert_eq!(
            forward,
            vec![
                (0, COPY_CHUNK_BYTES),
                (COPY_CHUNK_BYTES, COPY_CHUNK_BYTES),
                (2 * COPY_CHUNK_BYTES, 4096)
            ]
        );
        let mut backward: Vec<_> = chunks(bytes, true).collect();
        assert_eq!(backward[0], (2 * COPY_CHUNK_BYTES, 4096));
        backward.reverse();
        assert_eq!(backward, forward);
        assert_eq!(chunks(0, false).count(), 0);
    }

    // --- results ---

    fn nexus(name: &str) -> Arc<Nexus> {
        Arc::new(Nexus {
            initiator_port: Arc::from(format!("iqn.2026-11.test:{name},i,0x000000000001")),
            target_port: Arc::from(format!("{TARGET},t,0x0001")),
            relative_port: 1,
        })
    }

    #[test]
    fn copy_results_lifecycle() {
        let results = CopyResults::default();
        let (a, b) = (nexus("a"), nexus("b"));
        let running = results.begin(&a, 0, 5, ListIdUsage::Hold).unwrap();
        assert_eq!(
            results.begin(&a, 0, 5, ListIdUsage::Hold).err(),
            Some(operation_in_progress())
        );
        // Another nexus, or another copy manager, may use the same identifier.
        drop(results.begin(&b, 0, 5, ListIdUsage::Hold).unwrap());
        drop(results.begin(&a, 1, 5, ListIdUsage::NoHold).unwrap());
        running.progress(1, 512);
        assert_eq!(
            results.status(&a, 0, 5),
            Some(CopyStatus {
                state: CopyState::InProgress,
                segments_processed: 1,
                bytes: 512
            })
        );
        running.finish(true);
        assert_eq!(
            results.status(&a, 0, 5).unwrap().state,
            CopyState::Completed
        );
        // Dropped unfinished: failed, held.
        assert_eq!(results.status(&b, 0, 5).unwrap().state, CopyState::Failed);
        // NoHold results are not kept.
        assert_eq!(results.status(&a, 1, 5), None);
        // Only the last HELD_RESULTS are kept.
        for id in 10..10 + HELD_RESULTS as u8 {
            results
                .begin(&a, 0, id, ListIdUsage::Hold)
                .unwrap()
                .finish(true);
        }
        assert_eq!(results.status(&a, 0, 5), None);
        assert!(results.status(&a, 0, 10).is_some());
        results.nexus_lost(&a);
        assert_eq!(results.status(&a, 0, 10), None);
        assert!(results.status(&b, 0, 5).is_some());
        // The concurrency limit.
        let many: Vec<_> = (0..MAX_CONCURRENT_COPIES)
            .map(|i| results.begin(&a, 2, i, ListIdUsage::NoListId).unwrap())
            .collect();
        assert_eq!(
            results.begin(&b, 2, 0, ListIdUsage::Hold).err(),
            Some(insufficient_resources())
        );
        drop(many);
        assert!(results.begin(&b, 2, 0, ListIdUsage::Hold).is_ok());
    }

    #[test]
    fn result_data_layouts() {
        let d = copy_status_data(&CopyStatus {
            state: CopyState::Completed,
            segments_processed: 2,
            bytes: 1 << 20,
        });
        assert_eq!(d, vec![0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0x10, 0, 0]);
        let d = copy_status_data(&CopyStatus {
            state: CopyState::Failed,
            segments_processed: 0,
            bytes: 1 << 33,
        });
        assert_eq!((d[4], d[7]), (0x02, 1));
        assert_eq!(&d[8..12], &(1u32 << 23).to_be_bytes());
        let p = operating_parameters_data(512);
        assert_eq!(p.len(), 46);
        assert_eq!(&p[0..4], &42u32.to_be_bytes());
        assert_eq!(p[4], 0x01);
        assert_eq!(&p[8..10], &MAX_CSCD_DESCRIPTORS.to_be_bytes());
        assert_eq!(&p[10..12], &MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
        assert_eq!(&p[12..16], &MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
        assert_eq!(&p[16..20], &MAX_SEGMENT_BYTES.to_be_bytes());
        assert_eq!(p[37], 9);
        assert_eq!(&p[43..], &[2, 0x02, 0xE4]);
    }

    // --- end to end through the target ---

    fn target_with(luns: &[(u64, u64)]) -> TargetDevice {
        let target = TargetDevice::new(TARGET);
        for &(lun, blocks) in luns {
            target.add_lun(memory_lu(lun, blocks));
        }
        target
    }

    fn xcopy_cdb(len: usize) -> Vec<u8> {
        let mut cdb = vec![0u8; 16];
        cdb[0] = op::EXTENDED_COPY;
        cdb[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        cdb
    }

    fn rcr_cdb(service_action: u8, list_id: u8) -> Vec<u8> {
        let mut cdb = vec![0u8; 16];
        cdb[0] = op::RECEIVE_COPY_RESULTS;
        cdb[1] = service_action;
        cdb[2] = list_id;
        cdb[10..14].copy_from_slice(&1024u32.to_be_bytes());
        cdb
    }

    async fn run(
        target: &TargetDevice,
        n: &Arc<Nexus>,
        lun: u64,
        cdb: &[u8],
        data: Vec<u8>,
    ) -> ScsiResponse {
        target
            .execute(ScsiRequest {
                nexus: Arc::clone(n),
                lun,
                cdb: Bytes::copy_from_slice(cdb),
                data_out: Bytes::from(data),
                expected_in: 4096,
                attr: TaskAttr::Simple,
            })
            .await
    }

    /// A nexus that has consumed its power-on unit attentions on `luns`.
    async fn settled(target: &TargetDevice, name: &str, luns: &[u64]) -> Arc<Nexus> {
        let n = nexus(name);
        for &lun in luns {
            let _ = run(target, &n, lun, &[0; 6], vec![]).await;
        }
        n
    }

    async fn xcopy(target: &TargetDevice, n: &Arc<Nexus>, lun: u64, list: Vec<u8>) -> ScsiResponse {
        run(target, n, lun, &xcopy_cdb(list.len()), list).await
    }

    fn sense_of(r: &ScsiResponse) -> (u8, u8, u8) {
        let s = r.sense.as_ref().expect("sense");
        (s[2] & 0x0F, s[12], s[13])
    }

    /// Fills `blocks` blocks from `lba` with a pattern that differs per block.
    async fn fill(lu: &LogicalUnit, lba: u64, blocks: u64, tag: u8) {
        let mut data = Vec::new();
        for block in 0..blocks {
            data.extend(std::iter::repeat_n(tag ^ (block as u8), BS as usize));
        }
        let backend = lu.medium().unwrap();
        backend
            .write_at(lba * u64::from(BS), Bytes::from(data), false)
            .await
            .unwrap();
    }

    async fn read(lu: &LogicalUnit, lba: u64, blocks: u64) -> Bytes {
        lu.medium()
            .unwrap()
            .read_at(lba * u64::from(BS), (blocks * u64::from(BS)) as usize)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn copies_between_two_luns_and_reports_status() {
        let target = target_with(&[(0, BLOCKS), (1, BLOCKS)]);
        let n = settled(&target, "a", &[0, 1]).await;
        let (lu0, lu1) = (target.lun(0).unwrap(), target.lun(1).unwrap());
        // More than one chunk, not a whole number of chunks.
        let blocks = 2 * COPY_CHUNK_BYTES / u64::from(BS) + 3;
        fill(&lu0, 7, blocks, 0xA5).await;
        let list = list_of(
            9,
            &[cscd(&naa_of(0), BS), cscd(&naa_of(1), BS)],
            &[b2b(0, 1, blocks as u16, 7, 100)],
        );
        let len = list.len() as u32;
        let r = xcopy(&target, &n, 0, list).await;
        assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
        assert_eq!(r.data_out_used, len);
        assert_eq!(read(&lu1, 100, blocks).await, read(&lu0, 7, blocks).await);
        assert!(read(&lu1, 99, 1).await.iter().all(|&b| b == 0));
        let s = run(&target, &n, 0, &rcr_cdb(op::SA_COPY_STATUS, 9), vec![]).await;
        assert_eq!(s.status, ScsiStatus::Good);
        assert_eq!(&s.data_in[..8], &[0, 0, 0, 8, 0x01, 0, 1, 0]);
        assert_eq!(&s.data_in[8..12], &((blocks * 512) as u32).to_be_bytes());
        // Not for another nexus, nor another list identifier, nor another copy manager.
        let m = settled(&target, "b", &[0, 1]).await;
        let s = run(&target, &m, 0, &rcr_cdb(op::SA_COPY_STATUS, 9), vec![]).await;
        assert_eq!(sense_of(&s), (0x05, 0x24, 0x00));
        let s = run(&target, &n, 0, &rcr_cdb(op::SA_COPY_STATUS, 8), vec![]).await;
        assert_eq!(sense_of(&s), (0x05, 0x24, 0x00));
        let s = run(&target, &n, 1, &rcr_cdb(op::SA_COPY_STATUS, 9), vec![]).await;
        assert_eq!(sense_of(&s), (0x05, 0x24, 0x00));
        // Nexus loss forgets it.
        target.nexus_lost(&n);
        let n = settled(&target, "a", &[0]).await;
        let s = run(&target, &n, 0, &rcr_cdb(op::SA_COPY_STATUS, 9), vec![]).await;
        assert_eq!(sense_of(&s), (0x05, 0x24, 0x00));
    }

    #[tokio::test]
    async fn overlapping_copies_within_one_lun_act_like_memmove() {
        let target = target_with(&[(0, BLOCKS)]);
        let n = settled(&target, "a", &[0]).await;
        let lu = target.lun(0).unwrap();
        let blocks = 3 * COPY_CHUNK_BYTES / u64::from(BS);
        fill(&lu, 0, blocks, 0x11).await;
        let original = read(&lu, 0, blocks).await;
        // Destination above the source, overlapping: copied back to front.
        let up = list_of(
            1,
            &[cscd(&naa_of(0), BS)],
            &[b2b(0, 0, blocks as u16, 0, 5)],
        );
        assert_eq!(xcopy(&target, &n, 0, up).await.status, ScsiStatus::Good);
        assert_eq!(read(&lu, 5, blocks).await, original);
        // And back down (destination below the source): front to back.
        let down = list_of(
            1,
            &[cscd(&naa_of(0), BS)],
            &[b2b(0, 0, blocks as u16, 5, 0)],
        );
        assert_eq!(xcopy(&target, &n, 0, down).await.status, ScsiStatus::Good);
        assert_eq!(read(&lu, 0, blocks).await, original);
        // Onto itself: nothing changes.
        let same = list_of(1, &[cscd(&naa_of(0), BS)], &[b2b(0, 0, 8, 0, 0)]);
        assert_eq!(xcopy(&target, &n, 0, same).await.status, ScsiStatus::Good);
        assert_eq!(read(&lu, 0, blocks).await, original);
    }

    #[tokio::test]
    async fn a_bad_segment_anywhere_writes_nothing() {
        let target = target_with(&[(0, BLOCKS)]);
        let n = settled(&target, "a", &[0]).await;
        let lu = target.lun(0).unwrap();
        fill(&lu, 0, 8, 0x77).await;
        let list = list_of(
            1,
            &[cscd(&naa_of(0), BS)],
            &[b2b(0, 0, 8, 0, 100), b2b(0, 0, 8, 0, BLOCKS - 1)],
        );
        let r = xcopy(&target, &n, 0, list).await;
        assert_eq!(sense_of(&r), (0x0A, 0x0D, 0x02));
        assert!(read(&lu, 100, 8).await.iter().all(|&b| b == 0));
        // Its list identifier reports "completed with errors", nothing processed.
        let s = run(&target, &n, 0, &rcr_cdb(op::SA_COPY_STATUS, 1), vec![]).await;
        assert_eq!(&s.data_in[..], &[0, 0, 0, 8, 0x02, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn commands_through_the_target() {
        let target = target_with(&[(0, BLOCKS), (1, BLOCKS)]);
        let n = settled(&target, "a", &[0, 1]).await;
        // A zero-length list: GOOD, nothing held.
        let r = run(&target, &n, 0, &xcopy_cdb(0), vec![]).await;
        assert_eq!(r.status, ScsiStatus::Good);
        // Less data than PARAMETER LIST LENGTH: truncated.
        let list = simple_list();
        let r = run(&target, &n, 0, &xcopy_cdb(list.len()), list[..40].to_vec()).await;
        assert_eq!(sense_of(&r), (0x05, 0x1A, 0x00));
        // EXTENDED COPY(LID4) and unsupported RECEIVE COPY RESULTS service actions.
        let mut lid4 = xcopy_cdb(0);
        lid4[1] = 0x01;
        assert_eq!(
            sense_of(&run(&target, &n, 0, &lid4, vec![]).await),
            (0x05, 0x24, 0x00)
        );
        for sa in [0x01, 0x04] {
            let r = run(&target, &n, 0, &rcr_cdb(sa, 0), vec![]).await;
            assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        }
        let r = run(
            &target,
            &n,
            0,
            &rcr_cdb(op::SA_OPERATING_PARAMETERS, 0),
            vec![],
        )
        .await;
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(r.data_in, Bytes::from(operating_parameters_data(BS)));
        // Standard INQUIRY announces the copy manager.
        let r = run(&target, &n, 0, &[op::INQUIRY, 0, 0, 0, 96, 0], vec![]).await;
        assert_eq!(r.data_in[5] & 0x08, 0x08);
    }

    #[tokio::test]
    async fn copy_targets_reservations_apply_to_the_requesting_nexus() {
        let target = target_with(&[(0, BLOCKS), (1, BLOCKS)]);
        let a = settled(&target, "a", &[0, 1]).await;
        let b = settled(&target, "b", &[0, 1]).await;
        // b reserves LUN 1 (SPC-2 RESERVE(6)).
        let r = run(&target, &b, 1, &[0x16, 0, 0, 0, 0, 0], vec![]).await;
        assert_eq!(r.status, ScsiStatus::Good);
        let into_1 = list_of(
            1,
            &[cscd(&naa_of(0), BS), cscd(&naa_of(1), BS)],
            &[b2b(0, 1, 1, 0, 0)],
        );
        let r = xcopy(&target, &a, 0, into_1.clone()).await;
        assert_eq!(r.status, ScsiStatus::ReservationConflict);
        let r = xcopy(&target, &b, 0, into_1).await;
        assert_eq!(r.status, ScsiStatus::Good);
    }
}
