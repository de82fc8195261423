//! keel: a userspace iSCSI target.
//!
//! Layers, top to bottom (nothing below knows about the layer above): [`config`] describes
//! targets; [`iscsi`] speaks the protocol over TCP using the pure codec in [`wire`]; [`scsi`]
//! emulates logical units on top of [`storage`] backends.

pub mod config;
pub mod iscsi;
pub mod payload;
pub mod scsi;
pub mod server;
pub mod storage;
pub mod wire;
