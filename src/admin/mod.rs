//! The control plane's edge: the line protocol of the control socket ([`protocol`]), the
//! socket that speaks it ([`socket`]), and the client the CLI uses ([`client`]), and the status report ([`status`]).
//!
//! This layer sits beside `config` (it may use config, iscsi and scsi types, never `server`):
//! it parses and bounds requests and hands each to the server as a [`protocol::Call`]; the
//! server's control loop owns the configuration store and carries the call out.

pub mod bulk;
pub mod client;
pub mod protocol;
pub mod socket;
pub mod status;

pub use protocol::{Call, CallError, Command, ErrorCode, LoginRedirect, LogoutFilter};
