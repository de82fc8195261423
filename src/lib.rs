//! keel: a userspace iSCSI target.
//!
//! Layers, top to bottom; each imports only the layers below it (`interop/check-imports`
//! checks this and that there are no import cycles): [`server`] turns a configuration into
//! running objects and serves; [`admin`] (beside config) is the control socket's protocol,
//! socket and client; [`config`] decodes `targets.toml` into the lower layers' own
//! settings types (such as [`iscsi::Settings`]); [`cluster`] (beside provision) speaks to the
//! cluster manager (CTDB); [`iscsi`] speaks the protocol over TCP using
//! the pure codec in [`wire`]; [`scsi`] emulates logical units on top of [`storage`] backends.
//! Beside them, [`drill`] (`keel drill`) is an initiator of its own on [`wire`]: a failover
//! drill against any target, which uses nothing of the target side.

pub mod admin;
pub mod cluster;
pub mod config;
pub mod drill;
pub mod iscsi;
pub mod payload;
pub mod provision;
pub mod scsi;
pub mod server;
pub mod storage;
pub mod wire;
