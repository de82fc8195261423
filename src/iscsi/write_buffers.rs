//! The server's write-buffer memory (`write_buffer_mib`) as a connection uses it: the
//! [`WriteBudget`] the session core takes shares from at once, and the wait, off the reader,
//! for a share that was not free (its grant goes back to the reader as a [`BudgetGrant`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::session_core::WriteBudget;

/// The server's write-buffer memory, in KiB: a fair semaphore, so waiting writes are
/// served in arrival order.
pub(super) struct WriteBuffers(pub(super) Arc<Semaphore>);

impl WriteBudget for WriteBuffers {
    type Share = OwnedSemaphorePermit;

    fn try_take(&self, units: u32) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.0).try_acquire_many_owned(units).ok()
    }
}

/// A write-buffer share for the write with this tag and ticket.
pub(super) struct BudgetGrant {
    pub(super) itt: u32,
    pub(super) ticket: u64,
    pub(super) permit: OwnedSemaphorePermit,
}

/// Waits, off the reader, for `units` KiB of the server's write-buffer memory and hands
/// the share to the reader through `grants`. If the write or its connection ends first, the
/// wait ends with it.
pub(super) fn wait_for_budget(
    budget: &Arc<Semaphore>,
    grants: &mpsc::UnboundedSender<BudgetGrant>,
    itt: u32,
    units: u32,
    ticket: u64,
    withdrawn: CancellationToken,
) {
    let (budget, grants) = (Arc::clone(budget), grants.clone());
    tokio::spawn(async move {
        tokio::select! {
            permit = budget.acquire_many_owned(units) => {
                if let Ok(permit) = permit {
                    let _ = grants.send(BudgetGrant { itt, ticket, permit });
                }
            }
            _ = withdrawn.cancelled() => {}
            _ = grants.closed() => {}
        }
    });
}
