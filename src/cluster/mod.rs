//! keel as a member of a CTDB cluster (issue 14), the way smbd is one.
//!
//! - `ctdb/protocol.rs` (sans-IO): ctdbd's client protocol, packets in and out as bytes.
//! - `ctdb/client.rs`: an async client over ctdbd's unix socket (connection registration
//!   for tickle ACKs, IP release/takeover events, node and recovery state).
//! - `ctdb_tool.rs`: `ClusterView` (the serving rule and the reservation gate, judged from
//!   ctdbd's node map) and the `ctdb` tool, for the persistent-database calls.
//! - `pr_store.rs`: the reservation tables in a CTDB persistent database.
//! - `settings.rs`: `[cluster]`, decoded by the configuration layer.

pub mod ctdb;
pub mod ctdb_tool;
pub mod pr_store;
pub mod settings;

pub use ctdb_tool::{ClusterView, CtdbTool};
pub use pr_store::CtdbReservationStore;
pub use settings::ClusterSettings;
