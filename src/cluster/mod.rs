//! keel in a CTDB cluster (issue 14): the settings of `[cluster]`, what `ctdb status` says
//! about the cluster, and the reservation tables kept in a CTDB persistent database.

pub mod ctdb_tool;
pub mod pr_store;
pub mod settings;

pub use ctdb_tool::{ClusterView, CtdbTool};
pub use pr_store::CtdbReservationStore;
pub use settings::ClusterSettings;
