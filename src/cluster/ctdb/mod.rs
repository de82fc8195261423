//! The CTDB client: ctdbd's unix-socket protocol (`protocol`, sans-IO, checked against
//! packets captured from Debian 12's ctdbd 4.17) and an async client (`client`).

pub mod client;
#[cfg(test)]
pub(crate) mod fake;
pub mod protocol;

pub use client::{
    ClientConfig, ClientError, ClusterEvent, ClusterEvents, CtdbClient, DEFAULT_SOCKET,
    DEFAULT_TIMEOUT, NodeState, SharedClient,
};
pub use protocol::{Connection, NodeFlags, NodeInfo, RecoveryMode, Runstate};
