//! The state of a logical unit, apart from the commands that read and change it (SAM-5 §4.6.4
//! logical unit; SPC-4 §5.13 reservations, §6.2 unit attentions, §7.5 mode parameters).
//!
//! Nothing here imports `commands/` (a test in `scsi/layering_tests.rs` checks it): state
//! types live here, so a handler depends on the state and never the other way round.

pub mod atomic_journal;
pub mod limits;
pub mod lu;
pub mod mode_values;
pub mod reservation_store;
pub mod reservations;
pub mod task_set;
pub mod ua;
