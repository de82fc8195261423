//! Turns a SCSI outcome into iSCSI PDUs (RFC 7143 §11.4, §11.7): Data-In split to the
//! initiator's MaxRecvDataSegmentLength, sequences ended at MaxBurstLength, status collapsed
//! into the last Data-In when it is GOOD, and residuals against the expected length.

use crate::scsi::{ScsiResponse, ScsiStatus};
use crate::wire::{DataIn, Payload, RESERVED_TAG, Reply, ScsiResponsePdu};

/// What the transport knows about the command it answers.
#[derive(Clone, Copy, Debug)]
pub struct CommandForReply {
    pub itt: u32,
    pub lun: [u8; 8],
    pub expected_length: u32,
    pub read: bool,
    pub write: bool,
    /// R2Ts sent for the command (a write's ExpDataSN).
    pub r2t_count: u32,
}

/// Segment limits for Data-In.
#[derive(Clone, Copy, Debug)]
pub struct DataInLimits {
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_segment: u32,
    pub max_burst: u32,
}

/// Residual of a transfer: (overflow, underflow, count).
fn residual(expected: u32, actual: u32) -> (bool, bool, u32) {
    match actual.cmp(&expected) {
        std::cmp::Ordering::Greater => (true, false, actual - expected),
        std::cmp::Ordering::Less => (false, true, expected - actual),
        std::cmp::Ordering::Equal => (false, false, 0),
    }
}

/// How many bytes of read data go to the initiator: never more than it asked for
/// (§11.4.5.1: the rest is an overflow residual), none unless it asked to read (R bit).
pub fn data_in_sent(cmd: &CommandForReply, outcome: &ScsiResponse) -> usize {
    if cmd.read {
        outcome.data_in_len().min(cmd.expected_length as usize)
    } else {
        0
    }
}

/// The PDUs answering one command, in send order.
pub fn reply_pdus(
    cmd: &CommandForReply,
    outcome: &ScsiResponse,
    limits: DataInLimits,
) -> Vec<Reply> {
    let mut pdus = Vec::new();
    let full = outcome.data_in_len();
    let data: Payload = if cmd.read {
        let len = data_in_sent(cmd, outcome);
        match &outcome.data_in_file {
            Some(slice) => Payload::File(slice.slice(0, len)),
            None => Payload::Bytes(outcome.data_in.slice(..len)),
        }
    } else {
        Payload::default()
    };
    let (overflow, underflow, count) = if cmd.read {
        residual(cmd.expected_length, full as u32)
    } else if cmd.write {
        residual(cmd.expected_length, outcome.data_out_used)
    } else {
        // No data expected: anything the CDB wanted counts as overflow.
        residual(0, full as u32)
    };
    let good = outcome.status == ScsiStatus::Good && outcome.sense.is_none();
    let collapse = good && !data.is_empty();

    let max_segment = limits.max_segment.max(512) as usize;
    let max_burst = limits.max_burst.max(512) as usize;
    let mut offset = 0usize;
    let mut data_sn = 0u32;
    let mut in_burst = 0usize;
    while offset < data.len() {
        let len = max_segment
            .min(data.len() - offset)
            .min(max_burst - in_burst);
        let last = offset + len == data.len();
        in_burst += len;
        let end_of_sequence = last || in_burst == max_burst;
        if end_of_sequence {
            in_burst = 0;
        }
        let with_status = last && collapse;
        pdus.push(Reply::DataIn(DataIn {
            final_bit: end_of_sequence,
            status: with_status.then_some(outcome.status as u8),
            overflow: with_status && overflow,
            underflow: with_status && underflow,
            residual: if with_status { count } else { 0 },
            lun: cmd.lun,
            itt: cmd.itt,
            ttt: RESERVED_TAG,
            data_sn,
            buffer_offset: offset as u32,
            data: data.slice(offset, len),
            ..Default::default()
        }));
        data_sn += 1;
        offset += len;
    }
    if !collapse {
        pdus.push(Reply::ScsiResponse(ScsiResponsePdu {
            overflow,
            underflow,
            residual: count,
            response: 0,
            status: outcome.status as u8,
            itt: cmd.itt,
            exp_data_sn: if cmd.write { cmd.r2t_count } else { data_sn },
            sense: outcome.sense.clone().unwrap_or_default(),
            ..Default::default()
        }));
    }
    pdus
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cmd(expected_length: u32, read: bool) -> CommandForReply {
        CommandForReply {
            itt: 5,
            lun: [0; 8],
            expected_length,
            read,
            write: !read,
            r2t_count: 0,
        }
    }

    const LIMITS: DataInLimits = DataInLimits {
        max_segment: 8192,
        max_burst: 16384,
    };

    #[test]
    fn a_good_read_collapses_status_into_the_last_data_in() {
        let out = ScsiResponse::good(Bytes::from(vec![1u8; 20000]));
        let pdus = reply_pdus(&cmd(20000, true), &out, LIMITS);
        assert_eq!(pdus.len(), 3);
        let Reply::DataIn(first) = &pdus[0] else {
            panic!()
        };
        let Reply::DataIn(second) = &pdus[1] else {
            panic!()
        };
        let Reply::DataIn(last) = &pdus[2] else {
            panic!()
        };
        assert_eq!(
            (first.data.len(), first.final_bit, first.status),
            (8192, false, None)
        );
        // The sequence ends at MaxBurstLength.
        assert_eq!((second.buffer_offset, second.final_bit), (8192, true));
        assert_eq!(
            (last.data_sn, last.buffer_offset, last.data.len()),
            (2, 16384, 3616)
        );
        assert_eq!(last.status, Some(0));
        assert!(last.final_bit && !last.underflow && !last.overflow);
    }

    #[test]
    fn short_and_long_reads_report_residuals() {
        let out = ScsiResponse::good(Bytes::from(vec![0u8; 36]));
        let pdus = reply_pdus(&cmd(255, true), &out, LIMITS);
        let Reply::DataIn(d) = &pdus[0] else { panic!() };
        assert!(d.underflow && d.residual == 219 && d.data.len() == 36);
        let pdus = reply_pdus(&cmd(16, true), &out, LIMITS);
        let Reply::DataIn(d) = &pdus[0] else { panic!() };
        assert!(d.overflow && d.residual == 20 && d.data.len() == 16);
    }

    #[test]
    fn check_condition_goes_in_a_scsi_response_with_sense() {
        let out = ScsiResponse {
            status: ScsiStatus::CheckCondition,
            data_in: Bytes::new(),
            data_in_file: None,
            sense: Some(Bytes::from_static(&[0x70, 0, 5])),
            data_out_used: 0,
            block_size: 0,
        };
        let pdus = reply_pdus(&cmd(512, true), &out, LIMITS);
        assert_eq!(pdus.len(), 1);
        let Reply::ScsiResponse(r) = &pdus[0] else {
            panic!()
        };
        assert_eq!(r.status, 2);
        assert_eq!(&r.sense[..], &[0x70, 0, 5]);
        assert!(r.underflow && r.residual == 512);
    }

    #[test]
    fn writes_report_residuals_from_what_the_cdb_used() {
        let mut out = ScsiResponse::status(ScsiStatus::Good);
        out.data_out_used = 4096;
        let mut info = cmd(8192, false);
        info.r2t_count = 2;
        let pdus = reply_pdus(&info, &out, LIMITS);
        let Reply::ScsiResponse(r) = &pdus[0] else {
            panic!()
        };
        assert!(r.underflow && r.residual == 4096 && r.exp_data_sn == 2);
    }
}
