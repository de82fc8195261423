//! What keel offers in iSCSI login negotiation, and its session timers: the iSCSI layer's own
//! options, with their defaults. `config` decodes `targets.toml` into this type (SPDK's
//! `spdk_iscsi_opts` pattern: the protocol layer owns its options, the front end only fills
//! them), so nothing in `iscsi` knows about the file.

/// Session-wide iSCSI settings: what keel offers in login negotiation, and its timers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Our MaxRecvDataSegmentLength (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Commands in flight per session: the CmdSN window.
    pub queue_depth: u32,
    /// Memory, over all connections, for write data being collected (MiB): a write that
    /// does not fit waits for R2Ts until earlier ones have finished.
    pub write_buffer_mib: u32,
    /// Idle time before keel pings the initiator with a NOP-In (0: never).
    pub nop_interval_secs: u64,
    /// How long a ping may go unanswered before the connection is dropped.
    pub nop_timeout_secs: u64,
    /// How long a connection may take from accept to full feature phase.
    pub login_timeout_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_recv_data_segment_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            first_burst_length: 256 * 1024,
            max_outstanding_r2t: 8,
            immediate_data: true,
            initial_r2t: false,
            queue_depth: 128,
            write_buffer_mib: 1024,
            nop_interval_secs: 10,
            nop_timeout_secs: 15,
            login_timeout_secs: 15,
        }
    }
}
