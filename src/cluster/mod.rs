//! keel as a member of a cluster: today, a client of CTDB (issue 14), the way smbd is one.
//!
//! Layering: below server/config/admin (which will own the client and wire its events into
//! sessions and reservations), above iscsi/scsi/storage; it imports none of them yet.
//!
//! - `ctdb/protocol.rs` (sans-IO): ctdbd's client protocol, packets in and out as bytes.
//! - `ctdb/client.rs`: an async client over ctdbd's unix socket.

pub mod ctdb;
