//! Which class a command belongs to for accounting (the metrics' per-LUN read/write/other
//! counters and latency histograms): a medium read (READ(6/10/12/16), SBC-4 §5.14-5.17), a
//! medium write carrying its own data (WRITE(6/10/12/16), WRITE AND VERIFY, WRITE ATOMIC(16),
//! SBC-4 §5.40-5.48), or anything else. One byte compared: it costs nothing on the command
//! path.

use super::opcodes::op;

/// The accounting class of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandClass {
    Read = 0,
    Write = 1,
    Other = 2,
}

impl CommandClass {
    pub const ALL: [CommandClass; 3] =
        [CommandClass::Read, CommandClass::Write, CommandClass::Other];

    /// The class of the command whose CDB this is.
    pub fn of(cdb: &[u8]) -> CommandClass {
        match cdb.first().copied() {
            Some(op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16) => CommandClass::Read,
            Some(
                op::WRITE_6
                | op::WRITE_10
                | op::WRITE_12
                | op::WRITE_16
                | op::WRITE_AND_VERIFY_10
                | op::WRITE_AND_VERIFY_12
                | op::WRITE_AND_VERIFY_16
                | op::WRITE_ATOMIC_16,
            ) => CommandClass::Write,
            _ => CommandClass::Other,
        }
    }

    /// The label value in the metrics.
    pub fn name(self) -> &'static str {
        match self {
            CommandClass::Read => "read",
            CommandClass::Write => "write",
            CommandClass::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_writes_and_the_rest() {
        assert_eq!(CommandClass::of(&[op::READ_16, 0]), CommandClass::Read);
        assert_eq!(CommandClass::of(&[op::WRITE_10]), CommandClass::Write);
        assert_eq!(
            CommandClass::of(&[op::WRITE_ATOMIC_16]),
            CommandClass::Write
        );
        // COMPARE AND WRITE carries twice its length and writes only on a match.
        assert_eq!(
            CommandClass::of(&[op::COMPARE_AND_WRITE]),
            CommandClass::Other
        );
        assert_eq!(CommandClass::of(&[op::INQUIRY]), CommandClass::Other);
        assert_eq!(CommandClass::of(&[]), CommandClass::Other);
        for (i, class) in CommandClass::ALL.iter().enumerate() {
            assert_eq!(*class as usize, i);
        }
    }
}
