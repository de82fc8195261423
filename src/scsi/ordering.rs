//! Command ordering within one logical unit, as data: every row of the command table names an
//! [`OrderClass`], [`ORDER`] says which classes may run at the same time, and [`Order`] takes
//! the guard that makes it so. The shape follows FreeBSD CTL's `ctl_ser_table.c` (a matrix of
//! serialization actions between command classes); the mechanism is the logical unit's
//! locks, documented in `unit/lu.rs`.
//!
//! The rules, against the standards:
//! - Reads and writes run concurrently (SAM-5 §8.6: SIMPLE tasks may run in any order; ORDSUP
//!   is clear in the Extended INQUIRY page, so ORDERED tasks are not serialized either).
//! - COMPARE AND WRITE and ORWRITE are read-modify-write: nothing reads or writes the medium
//!   between their read and their write (SBC-4 §5.3: "the compare and write operations shall
//!   be performed as an uninterrupted series of actions").
//! - WRITE ATOMIC: no command sees part of it (SBC-4 §4.29.2), so it excludes every medium
//!   access, including reads whose data is still being sent from the medium's file.
//! - A read whose data goes out from the medium's file (sendfile) holds its guard until the
//!   data is sent, which takes as long as the network does; so it is ordered only against
//!   WRITE ATOMIC, never holding up COMPARE AND WRITE or ORWRITE. A read takes this form
//!   only when the handler decides to send from the file ([`Order::enter_for_sending`]).
//! - Commands that change reservations (PERSISTENT RESERVE OUT, RESERVE, RELEASE) run one at
//!   a time, so the order of PRgeneration is the order the reservation store sees
//!   (SPC-4 §5.13.5).
//!
//! The guard is taken when the handler reaches the medium or the state (after decoding and
//! range checks, and for WRITE ATOMIC after its journal write), not before the handler runs:
//! a command that fails its checks never waits, and the journal write of an atomic write does
//! not hold up every other command. Which guard it is comes from the row, never from the
//! handler.

use tokio::sync::{MutexGuard, OwnedRwLockReadGuard, RwLockReadGuard, RwLockWriteGuard};

use super::unit::lu::LogicalUnit;

/// What a command does, as far as ordering goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderClass {
    /// Touches neither the medium's data nor the reservation state: runs with anything.
    Free,
    /// Reads the medium (READ, VERIFY, the copy manager's source reads).
    Read,
    /// A read whose data the transport sends from the medium's file after the command
    /// returned. Not a row's class: the READ rows' handler takes it instead of [`Read`].
    ///
    /// [`Read`]: OrderClass::Read
    SentRead,
    /// Writes the medium (WRITE, WRITE SAME, UNMAP, WRITE AND VERIFY, copy destinations).
    Write,
    /// Reads, then writes what it read (COMPARE AND WRITE, ORWRITE).
    ReadModifyWrite,
    /// WRITE ATOMIC's write in place.
    Atomic,
    /// Changes the reservation state (PERSISTENT RESERVE OUT, RESERVE, RELEASE).
    ReservationChange,
}

/// Whether a command of one class may run while one of another class holds its guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Pass,
    Block,
}

/// Number of classes; the order of [`CLASSES`] is the order of [`ORDER`]'s rows and columns.
pub const CLASSES_LEN: usize = 7;

/// Every class, in the order of [`ORDER`].
pub const CLASSES: [OrderClass; CLASSES_LEN] = [
    OrderClass::Free,
    OrderClass::Read,
    OrderClass::SentRead,
    OrderClass::Write,
    OrderClass::ReadModifyWrite,
    OrderClass::Atomic,
    OrderClass::ReservationChange,
];

use Action::{Block as B, Pass as P};

/// `ORDER[running][arriving]`: symmetric, so it reads the same either way. The locks behind
/// [`Order::enter`] implement it; the tests check them against it pair by pair, and the
/// compiler checks that it is symmetric and that [`CLASSES`] indexes it.
#[rustfmt::skip]
pub const ORDER: [[Action; CLASSES_LEN]; CLASSES_LEN] = [
    //               Free Read Sent Write RMW Atomic Resv
    /* Free      */ [P,   P,   P,   P,    P,  P,     P],
    /* Read      */ [P,   P,   P,   P,    B,  B,     P],
    /* SentRead  */ [P,   P,   P,   P,    P,  B,     P],
    /* Write     */ [P,   P,   P,   P,    B,  B,     P],
    /* RMW       */ [P,   B,   P,   B,    B,  B,     P],
    /* Atomic    */ [P,   B,   B,   B,    B,  B,     P],
    /* Resv      */ [P,   P,   P,   P,    P,  P,     B],
];

const _: () = assert!(well_formed(&ORDER, &CLASSES), "ORDER must be symmetric");

const fn well_formed(
    order: &[[Action; CLASSES_LEN]; CLASSES_LEN],
    classes: &[OrderClass; CLASSES_LEN],
) -> bool {
    let mut i = 0;
    while i < CLASSES_LEN {
        if classes[i].index() != i {
            return false;
        }
        let mut j = 0;
        while j < CLASSES_LEN {
            if order[i][j] as u8 != order[j][i] as u8 {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

impl OrderClass {
    /// The row and column of this class in [`ORDER`].
    pub const fn index(self) -> usize {
        match self {
            OrderClass::Free => 0,
            OrderClass::Read => 1,
            OrderClass::SentRead => 2,
            OrderClass::Write => 3,
            OrderClass::ReadModifyWrite => 4,
            OrderClass::Atomic => 5,
            OrderClass::ReservationChange => 6,
        }
    }
}

/// Held while a command does what its class says; dropping it lets blocked commands run.
#[must_use = "the ordering holds only while the guard lives"]
#[derive(Debug)]
pub enum OrderGuard<'a> {
    Free,
    /// The write-order lock shared (reads and writes).
    Shared {
        _guard: RwLockReadGuard<'a, ()>,
    },
    /// The write-order lock exclusive (read-modify-write).
    Exclusive {
        _guard: RwLockWriteGuard<'a, ()>,
    },
    /// The sent-read lock and then the write-order lock, both exclusive.
    Atomic {
        _sent_reads: RwLockWriteGuard<'a, ()>,
        _medium: RwLockWriteGuard<'a, ()>,
    },
    /// The reservation change lock.
    ReservationChange {
        _guard: MutexGuard<'a, ()>,
    },
    /// The sent-read lock shared, `None` once WRITE ATOMIC is in use on the unit (see
    /// [`Order::enter_for_sending`]).
    SentRead(Option<OwnedRwLockReadGuard<()>>),
}

/// A command's place in the ordering of its logical unit: the class its row names, ready to be
/// entered.
#[derive(Clone, Copy, Debug)]
pub struct Order<'a> {
    lu: &'a LogicalUnit,
    class: OrderClass,
}

impl<'a> Order<'a> {
    /// The ordering of a `class` command on `lu`. Dispatch builds it from the command's row;
    /// the copy manager builds one per copy target (its source reads as READ does, its
    /// destination writes as WRITE does).
    pub fn of(lu: &'a LogicalUnit, class: OrderClass) -> Self {
        Order { lu, class }
    }

    /// The class: for work that outlives its command (a sanitize operation), which takes the
    /// same ordering again on the unit it owns.
    pub fn class(&self) -> OrderClass {
        self.class
    }

    /// The ordering dispatch would give `cdb` (its row's class; free for a CDB the table
    /// does not know), for tests that call a handler directly.
    #[cfg(test)]
    pub fn for_command(lu: &'a LogicalUnit, cdb: &[u8]) -> Self {
        let class = super::table::lookup(cdb).map_or(OrderClass::Free, |row| row.order);
        Order::of(lu, class)
    }

    /// Waits until no command the class must not overlap holds its guard, and holds off the
    /// ones that must not overlap this one.
    pub async fn enter(&self) -> OrderGuard<'a> {
        match self.class {
            OrderClass::Free => OrderGuard::Free,
            // Reads and writes pass each other (ORDER): one shared lock for both.
            OrderClass::Read | OrderClass::Write => OrderGuard::Shared {
                _guard: self.lu.medium_access_shared().await,
            },
            OrderClass::SentRead => OrderGuard::SentRead(self.lu.sent_read_guard().await),
            OrderClass::ReadModifyWrite => OrderGuard::Exclusive {
                _guard: self.lu.write_exclusive().await,
            },
            OrderClass::Atomic => {
                // This order (sent reads first) is the only one any command takes both in.
                let sent_reads = self.lu.atomic_write_exclusive().await;
                let medium = self.lu.write_exclusive().await;
                OrderGuard::Atomic {
                    _sent_reads: sent_reads,
                    _medium: medium,
                }
            }
            OrderClass::ReservationChange => OrderGuard::ReservationChange {
                _guard: self.lu.reservations().changes().lock().await,
            },
        }
    }

    /// For a [`OrderClass::Read`] command whose data will be sent from the medium's file: the
    /// [`OrderClass::SentRead`] guard, owned so it can travel with the data until it is sent.
    /// `None` for other classes, or once WRITE ATOMIC is in use on the unit (its reads are
    /// copied then); the handler then copies the data under [`Order::enter`].
    pub async fn enter_for_sending(&self) -> Option<OwnedRwLockReadGuard<()>> {
        if self.class != OrderClass::Read {
            return None;
        }
        match Order::of(self.lu, OrderClass::SentRead).enter().await {
            OrderGuard::SentRead(guard) => guard,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;

    use super::*;
    use crate::scsi::LuIdentity;
    use crate::storage::MemoryBackend;

    fn lu() -> LogicalUnit {
        LogicalUnit::new(
            LuIdentity::derived("iqn.2026-01.test:t", 0),
            512,
            Some(Arc::new(MemoryBackend::new(64 * 512))),
            false,
        )
    }

    #[test]
    fn the_matrix_is_symmetric_and_indexed_by_classes() {
        for (i, class) in CLASSES.iter().enumerate() {
            assert_eq!(class.index(), i);
            for j in 0..CLASSES_LEN {
                assert_eq!(ORDER[i][j], ORDER[j][i], "{class:?} / {:?}", CLASSES[j]);
            }
        }
        // Free passes everything, and only commands that change something block their own
        // class.
        assert!(ORDER[0].iter().all(|a| *a == Action::Pass));
        for class in [OrderClass::Read, OrderClass::SentRead, OrderClass::Write] {
            assert_eq!(ORDER[class.index()][class.index()], Action::Pass);
        }
    }

    /// Holds the guard of one class and tries to enter every other: the locks must do what
    /// the matrix says, pair by pair.
    #[tokio::test]
    async fn the_locks_implement_the_matrix() {
        for running in CLASSES {
            for arriving in CLASSES {
                // A fresh unit each time: WRITE ATOMIC changes how later reads are sent.
                let lu = lu();
                let expected = ORDER[running.index()][arriving.index()];
                let held = hold(&lu, running).await;
                let entered = try_enter(&lu, arriving);
                assert_eq!(
                    if entered { Action::Pass } else { Action::Block },
                    expected,
                    "{arriving:?} arriving while {running:?} runs"
                );
                drop(held);
            }
        }
    }

    /// The guard of `class`; for SentRead the owned guard a READ sends its data under.
    async fn hold(lu: &LogicalUnit, class: OrderClass) -> OrderGuard<'_> {
        if class == OrderClass::SentRead {
            let guard = Order::of(lu, OrderClass::Read).enter_for_sending().await;
            assert!(guard.is_some());
            return OrderGuard::SentRead(guard);
        }
        Order::of(lu, class).enter().await
    }

    /// Whether `class` can enter right now. A read that would be sent from the file enters
    /// only with the sent-read guard in hand: while WRITE ATOMIC runs it gets none (the unit
    /// copies reads from then on) and is a copied read, which must wait.
    fn try_enter(lu: &LogicalUnit, class: OrderClass) -> bool {
        if class == OrderClass::SentRead {
            let sent = Order::of(lu, OrderClass::Read)
                .enter_for_sending()
                .now_or_never();
            if matches!(sent, Some(None)) {
                assert!(
                    !try_enter(lu, OrderClass::Read),
                    "the copied read must wait"
                );
            }
            return matches!(sent, Some(Some(_)));
        }
        Order::of(lu, class).enter().now_or_never().is_some()
    }
}
