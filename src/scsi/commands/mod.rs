//! The command handlers, one file per command family. Each imports the unit state
//! (`super::super::unit`), the CDB decoders and sense; the command table (`opcodes.rs`) and
//! the dispatcher (`target.rs`) call them.

pub mod alua;
pub mod atomic;
pub mod block_io;
pub mod compare_and_write;
pub mod log;
pub mod maintenance;
pub mod medium;
pub mod mode;
pub mod persistent_reservations;
pub mod provisioning;
pub mod reservation_access;
pub mod sbc;
pub mod spc;
pub mod spc2_reservations;
pub mod verify;
pub mod vpd;
pub mod write_same;
pub mod xcopy;

#[cfg(test)]
mod block_command_tests;
#[cfg(test)]
mod reservation_tests;
