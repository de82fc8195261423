//! Task management responses: sent once the tasks they abort have really finished.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Service;
use crate::wire::{OutPdu, Reply};

/// Sends a task management response once the aborted tasks have really finished
/// (SAM-5 §7.2): a write acknowledged as aborted must not land afterwards. `end_sessions_of`
/// names the target whose sessions a cold reset ends (RFC 7143 §11.5.1).
pub(super) fn report_task_management(
    ctx: &Arc<Service>,
    out: mpsc::Sender<OutPdu>,
    response: Reply,
    wait: Vec<CancellationToken>,
    end_sessions_of: Option<String>,
) {
    let ctx = Arc::clone(ctx);
    tokio::spawn(
        async move {
            // No time limit: reporting an abort before the task's I/O is over would let a
            // write land after the initiator was told it never would.
            for finished in wait {
                finished.cancelled().await;
            }
            let _ = out.send(response.encode()).await;
            if let Some(target_name) = end_sessions_of {
                // §11.5.1: a cold reset also ends every session to the target, this one too.
                // At once: the response is already queued ahead of the writer's final flush,
                // and no command the initiator sends after reading it may still run (it
                // would meet the reset's unit attention on a session that is going away).
                ctx.sessions.cancel_target(&target_name);
            }
        }
        .in_current_span(),
    );
}
