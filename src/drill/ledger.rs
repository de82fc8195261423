//! What the drill knows it wrote, and the verdict on what it reads back (sans-IO).
//!
//! For each LBA: the sequence number of the latest ACKNOWLEDGED write, and the writes sent
//! but not (yet) acknowledged. An unacknowledged write's fate is unknown (it may or may not
//! have reached the medium before its connection died), so a read-back may show the latest
//! acknowledged write or any later unacknowledged one; anything older, or nothing of this
//! run, means an acknowledged write was lost.

use std::collections::{BTreeMap, BTreeSet};

use super::block::{Content, Damage};

#[derive(Clone, Debug, Default)]
struct Record {
    acknowledged: Option<u64>,
    /// Sequence numbers sent and not acknowledged, all later than `acknowledged`.
    in_flight: BTreeSet<u64>,
}

/// What a read-back found instead of the write it should have shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Blank,
    /// A drill block of another run (a previous drill on the same LBAs).
    OtherRun,
    /// An older write of this run.
    Seq(u64),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Blank => write!(f, "zeros"),
            Found::OtherRun => write!(f, "a block of another drill run"),
            Found::Seq(s) => write!(f, "seq {s}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The latest acknowledged write, or a later one whose fate was open.
    Intact,
    /// No acknowledged write to check against (nothing to say).
    Unrecorded,
    /// An acknowledged write is gone: `expected` was acknowledged, `found` is older.
    Lost { expected: u64, found: Found },
    /// Damaged contents, or a write of this run this LBA never received.
    Corrupted(Corruption),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    Damaged(Damage),
    /// A sequence number never sent to this LBA (or newer than anything sent there).
    UnknownSeq(u64),
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::Damaged(d) => d.fmt(f),
            Corruption::UnknownSeq(s) => write!(f, "seq {s}, never written to this LBA"),
        }
    }
}

#[derive(Debug)]
pub struct Ledger {
    run: u64,
    records: BTreeMap<u64, Record>,
}

impl Ledger {
    pub fn new(run: u64) -> Ledger {
        Ledger {
            run,
            records: BTreeMap::new(),
        }
    }

    /// A write of `seq` to `lba` is being sent (again, if it is a retry).
    pub fn sent(&mut self, lba: u64, seq: u64) {
        let r = self.records.entry(lba).or_default();
        if r.acknowledged.is_none_or(|a| seq > a) {
            r.in_flight.insert(seq);
        }
    }

    /// The target acknowledged the write (GOOD status).
    pub fn acknowledged(&mut self, lba: u64, seq: u64) {
        let r = self.records.entry(lba).or_default();
        if r.acknowledged.is_none_or(|a| seq > a) {
            r.acknowledged = Some(seq);
        }
        r.in_flight.retain(|&s| s > seq);
    }

    /// The target refused the write without performing it (e.g. RESERVATION CONFLICT).
    pub fn refused(&mut self, lba: u64, seq: u64) {
        if let Some(r) = self.records.get_mut(&lba) {
            r.in_flight.remove(&seq);
        }
    }

    /// Whether `lba` has an acknowledged write to check.
    pub fn is_recorded(&self, lba: u64) -> bool {
        self.records
            .get(&lba)
            .is_some_and(|r| r.acknowledged.is_some())
    }

    /// Every LBA with an acknowledged write, in order.
    pub fn recorded(&self) -> Vec<u64> {
        self.records
            .iter()
            .filter(|(_, r)| r.acknowledged.is_some())
            .map(|(&lba, _)| lba)
            .collect()
    }

    /// Judges what a read of `lba` returned. A loss or corruption is reported once: the
    /// record then forgets the LBA until it is written again (the next read of it would
    /// only repeat the same news).
    pub fn verify(&mut self, lba: u64, content: Content) -> Verdict {
        let Some(record) = self.records.get_mut(&lba) else {
            return Verdict::Unrecorded;
        };
        let Some(acknowledged) = record.acknowledged else {
            return Verdict::Unrecorded;
        };
        let verdict = match content {
            Content::Damaged(d) => Verdict::Corrupted(Corruption::Damaged(d)),
            Content::Blank => Verdict::Lost {
                expected: acknowledged,
                found: Found::Blank,
            },
            Content::Drill(stamp) if stamp.run != self.run => Verdict::Lost {
                expected: acknowledged,
                found: Found::OtherRun,
            },
            Content::Drill(stamp) if stamp.seq == acknowledged => Verdict::Intact,
            Content::Drill(stamp) if stamp.seq < acknowledged => Verdict::Lost {
                expected: acknowledged,
                found: Found::Seq(stamp.seq),
            },
            Content::Drill(stamp) if record.in_flight.contains(&stamp.seq) => {
                // An unacknowledged write landed: it is now the one to expect.
                record.acknowledged = Some(stamp.seq);
                record.in_flight.retain(|&s| s > stamp.seq);
                Verdict::Intact
            }
            Content::Drill(stamp) => Verdict::Corrupted(Corruption::UnknownSeq(stamp.seq)),
        };
        if verdict != Verdict::Intact {
            self.records.remove(&lba);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::block::Stamp;

    const RUN: u64 = 42;

    fn seq(lba: u64, seq: u64) -> Content {
        Content::Drill(Stamp { lba, seq, run: RUN })
    }

    fn written(ledger: &mut Ledger, lba: u64, s: u64) {
        ledger.sent(lba, s);
        ledger.acknowledged(lba, s);
    }

    #[test]
    fn the_latest_acknowledged_write_is_intact() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 5, 1);
        written(&mut l, 5, 9);
        assert_eq!(l.verify(5, seq(5, 9)), Verdict::Intact);
        assert_eq!(l.verify(5, seq(5, 9)), Verdict::Intact, "again");
        assert_eq!(l.recorded(), vec![5]);
    }

    #[test]
    fn an_older_write_means_the_acknowledged_one_was_lost() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 5, 1);
        written(&mut l, 5, 9);
        assert_eq!(
            l.verify(5, seq(5, 1)),
            Verdict::Lost {
                expected: 9,
                found: Found::Seq(1)
            }
        );
        // Reported once; the LBA is no longer recorded until written again.
        assert_eq!(l.verify(5, seq(5, 1)), Verdict::Unrecorded);
        assert!(l.recorded().is_empty());
        written(&mut l, 5, 12);
        assert_eq!(l.verify(5, seq(5, 12)), Verdict::Intact);
    }

    #[test]
    fn zeros_or_another_run_where_a_write_was_acknowledged_is_a_loss() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 1, 3);
        written(&mut l, 2, 4);
        assert_eq!(
            l.verify(1, Content::Blank),
            Verdict::Lost {
                expected: 3,
                found: Found::Blank
            }
        );
        let other = Content::Drill(Stamp {
            lba: 2,
            seq: 4,
            run: RUN + 1,
        });
        assert_eq!(
            l.verify(2, other),
            Verdict::Lost {
                expected: 4,
                found: Found::OtherRun
            }
        );
    }

    #[test]
    fn an_unacknowledged_write_may_or_may_not_have_landed() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 7, 10);
        l.sent(7, 11); // connection died before the status came
        assert_eq!(l.verify(7, seq(7, 10)), Verdict::Intact, "not landed");
        assert_eq!(l.verify(7, seq(7, 11)), Verdict::Intact, "landed");
        // Once seen on the medium it is the write to expect: going back to 10 is a loss.
        assert_eq!(
            l.verify(7, seq(7, 10)),
            Verdict::Lost {
                expected: 11,
                found: Found::Seq(10)
            }
        );
    }

    #[test]
    fn a_retried_write_acknowledged_later_settles_it() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 7, 10);
        l.sent(7, 11);
        l.sent(7, 11); // the retry
        l.acknowledged(7, 11);
        assert_eq!(
            l.verify(7, seq(7, 10)),
            Verdict::Lost {
                expected: 11,
                found: Found::Seq(10)
            }
        );
    }

    #[test]
    fn an_lba_with_only_unacknowledged_writes_is_not_judged() {
        let mut l = Ledger::new(RUN);
        l.sent(3, 1);
        assert_eq!(l.verify(3, Content::Blank), Verdict::Unrecorded);
        assert!(!l.is_recorded(3));
        assert_eq!(l.verify(4, Content::Blank), Verdict::Unrecorded);
    }

    #[test]
    fn damage_and_unknown_sequence_numbers_are_corruption() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 1, 5);
        written(&mut l, 2, 6);
        assert_eq!(
            l.verify(1, Content::Damaged(Damage::BadCrc)),
            Verdict::Corrupted(Corruption::Damaged(Damage::BadCrc))
        );
        assert_eq!(
            l.verify(2, seq(2, 99)),
            Verdict::Corrupted(Corruption::UnknownSeq(99))
        );
    }

    #[test]
    fn a_refused_write_is_no_longer_a_possibility() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 1, 5);
        l.sent(1, 6);
        l.refused(1, 6);
        assert_eq!(
            l.verify(1, seq(1, 6)),
            Verdict::Corrupted(Corruption::UnknownSeq(6))
        );
    }

    #[test]
    fn a_late_acknowledgement_of_an_older_write_does_not_go_back() {
        let mut l = Ledger::new(RUN);
        written(&mut l, 1, 8);
        l.acknowledged(1, 3);
        assert_eq!(l.verify(1, seq(1, 8)), Verdict::Intact);
    }
}
