//! Transport-agnostic SCSI target: logical units, I_T nexus identity, SPC/SBC emulation.
//!
//! Knows nothing about iSCSI. The transport hands a [`ScsiRequest`] (CDB, write data already
//! collected) to a [`TargetDevice`] and gets a [`ScsiResponse`] back (status, read data,
//! encoded sense). Residual accounting is the transport's job: it compares what it expected
//! with `data_in.len()` (reads) and `data_out_used` (writes).
//!
//! Inside, two halves that depend one way: [`unit`] holds the state of a logical unit (the
//! unit itself, mode values, reservations, unit attentions, the task set, the atomic journal,
//! the limits) and imports nothing from [`commands`], which holds the handlers, one file per
//! command family. `table.rs` is the command table (one row per command), `ordering.rs` the
//! ordering rules between command classes, `target.rs` dispatches through both; `opcodes.rs`
//! names the opcodes.
//! Everything is private; what other layers use is re-exported below.

mod cdb;
mod command_class;
mod commands;
mod opcodes;
mod ordering;
mod sense;
mod table;
mod target;
mod tmf;
mod unit;

#[cfg(test)]
mod layering_tests;

use std::sync::Arc;

use bytes::Bytes;

use crate::payload::FileSlice;

pub use cdb::{decode_lun, encode_lun};
pub use command_class::CommandClass;
pub use sense::{Sense, SenseKey};
pub use target::TargetDevice;
pub use tmf::{Tmf, TmfOutcome, TmfResponse};
pub use unit::atomic_journal::{AtomicJournal, RecordHeader, encode_header, unit_key};
pub use unit::limits::MAX_TRANSFER_BYTES;
pub use unit::lu::{LogicalUnit, LuIdentity, Readiness};
pub use unit::mode_values::ModeValues;
pub use unit::pr_state::{NexusId, PrNotice, PrState, PrType, Registration, Reservation};
pub use unit::reservation_store::{FileReservationStore, ReservationStore, file_store};
pub use unit::task_set::{AbortOutcome, Aborted, Membership, TaskFate, TaskSet};

/// One I_T nexus (SAM-5 §4.6): who is talking to which target port. Everything a logical unit
/// keeps per initiator (unit attentions, later reservations) is keyed by this.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// SCSI initiator port name, e.g. `iqn.1993-08.org.debian:01:abc,i,0x23d000000001`.
    pub initiator_port: Arc<str>,
    /// SCSI target port name, e.g. `iqn.2026-11.org.example:disk0,t,0x0001`.
    pub target_port: Arc<str>,
    /// Relative target port identifier (VPD 0x83 designator type 4); equals the portal
    /// group tag for iSCSI.
    pub relative_port: u16,
}

#[cfg(test)]
impl Nexus {
    /// A nexus for unit tests: initiator `iqn.2026-01.test:NAME`, ISID 1, on port 1 of the
    /// target `iqn.2026-01.test:t`.
    pub(crate) fn for_test(name: &str) -> Nexus {
        Nexus {
            initiator_port: Arc::from(format!("iqn.2026-01.test:{name},i,0x000000000001")),
            target_port: Arc::from("iqn.2026-01.test:t,t,0x0001"),
            relative_port: 1,
        }
    }
}

/// SAM-5 task attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// SAM-5 status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// A command as the transport delivers it.
#[derive(Clone, Debug)]
pub struct ScsiRequest {
    pub nexus: Arc<Nexus>,
    pub lun: u64,
    /// The CDB as the transport received it: at least the command's CDB length (iSCSI
    /// always carries 16 bytes, more with an extended-CDB AHS); bytes past it are padding.
    pub cdb: Bytes,
    /// Write data, as much as the initiator sent (its expected transfer length).
    pub data_out: Bytes,
    /// How many bytes of read data the initiator expects (its expected transfer length).
    pub expected_in: u32,
    pub attr: TaskAttr,
}

/// The outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    /// Read data (already cut to the CDB's allocation length; the transport cuts it further to
    /// the initiator's expected length and reports the residual).
    pub data_in: Bytes,
    /// Read data still in the medium's file, for the transport to send from there (sendfile)
    /// instead of `data_in`, which is then empty (see [`crate::payload::FileSlice`]).
    pub data_in_file: Option<FileSlice>,
    /// Encoded sense data (fixed or descriptor format) for CHECK CONDITION.
    pub sense: Option<Bytes>,
    /// How many bytes of write data the command needed per its CDB (for write residuals).
    pub data_out_used: u32,
    /// The logical block size of the unit that ran the command (SBC-4 §6.2 READ CAPACITY);
    /// 0 when the target has no logical unit with its LUN (SAM-5 §5.12: answered without
    /// one). A medium write writes the whole blocks of its data received (FCP-4 §9.4.2).
    pub block_size: u32,
}

impl ScsiResponse {
    pub fn good(data_in: Bytes) -> Self {
        ScsiResponse {
            status: ScsiStatus::Good,
            data_in,
            data_in_file: None,
            sense: None,
            data_out_used: 0,
            block_size: 0,
        }
    }

    /// GOOD, with the read data to be sent from `slice` of the medium's file.
    pub fn good_from_file(slice: FileSlice) -> Self {
        ScsiResponse {
            data_in_file: Some(slice),
            ..ScsiResponse::status(ScsiStatus::Good)
        }
    }

    /// How many bytes of read data the command returns.
    pub fn data_in_len(&self) -> usize {
        match &self.data_in_file {
            Some(slice) => slice.len,
            None => self.data_in.len(),
        }
    }

    pub fn status(status: ScsiStatus) -> Self {
        ScsiResponse {
            status,
            data_in: Bytes::new(),
            data_in_file: None,
            sense: None,
            data_out_used: 0,
            block_size: 0,
        }
    }
}
