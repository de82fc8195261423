//! The control plane's edge, beside `config`: what the control socket and the CLI exchange.
//! It may use config, iscsi and scsi types, never `server`.

pub mod status;
