//! SANITIZE (SBC-4 §5.30, opcode 48h): OVERWRITE, BLOCK ERASE and EXIT FAILURE MODE.
//! CRYPTOGRAPHIC ERASE is not offered (keel keeps no media encryption key to destroy): the
//! command table has no row for it, so it is refused at the SERVICE ACTION field and REPORT
//! SUPPORTED OPERATION CODES does not list it.
//!
//! A sanitize operation runs on its own tokio task, apart from the command that started it:
//! with IMMED the command returns GOOD once its CDB and parameter list have been checked, and
//! without IMMED it waits for the operation's end; an abort of the command ends the wait, not
//! the operation, and resets do not reach it either (SBC-4 §4.33: once started, a sanitize
//! operation runs to its end). Meanwhile the unit refuses every command but INQUIRY, REPORT
//! LUNS and REQUEST SENSE with 02/04/1B and the progress indication ([`SanitizeState`]).
//!
//! The operation holds its row's ordering (the read-modify-write class: no read or write of
//! the medium overlaps it) from start to end, so a command admitted just before the unit
//! became busy finishes first and none writes under it.
//! OVERWRITE writes through the backend in [`CHUNK`]-sized pieces from one buffer (memory stays
//! bounded whatever the size of the unit), optionally paced to the unit's sanitize rate so a
//! long operation does not starve other units of the same storage. BLOCK ERASE discards
//! through the backend's UNMAP path (punched holes, which read back as zeros), or writes zeros
//! where the medium cannot discard.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::scsi::cdb::{self, byte_at};
use crate::scsi::commands::block_io::{
    FILL_CHUNK, capacity_blocks, writable_medium, write_same_unmaps,
};
use crate::scsi::opcodes::op::{
    SA_SANITIZE_BLOCK_ERASE as SA_BLOCK_ERASE,
    SA_SANITIZE_EXIT_FAILURE_MODE as SA_EXIT_FAILURE_MODE, SA_SANITIZE_OVERWRITE as SA_OVERWRITE,
};
use crate::scsi::ordering::Order;
use crate::scsi::sense::Sense;
use crate::scsi::unit::lu::LogicalUnit;
use crate::scsi::unit::sanitize::{SanitizeProgress, SanitizeState};
use crate::scsi::unit::task_set::TaskFate;
use crate::storage::BlockBackend;

/// The OVERWRITE parameter list header: INVERT/TEST/OVERWRITE COUNT, reserved,
/// INITIALIZATION PATTERN LENGTH (SBC-4 §5.30.3.2).
const OVERWRITE_HEADER: usize = 4;
/// Bytes written per backend call: the fill size WRITE SAME uses too.
const CHUNK: usize = FILL_CHUNK as usize;
/// BLOCK ERASE discards this much per backend call, so its progress moves.
const ERASE_CHUNK: u64 = 64 << 20;

/// A decoded SANITIZE CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SanitizeCdb {
    immed: bool,
    ause: bool,
    service_action: u8,
    parameter_list_length: u16,
}

/// SANITIZE(10): IMMED (byte 1 bit 7), AUSE (bit 5), SERVICE ACTION (bits 4-0), PARAMETER
/// LIST LENGTH (bytes 7-8). Byte 1 bit 6 and bytes 2-6 are reserved: set, they are refused
/// (SPC-4 §4.3.4.2).
fn decode(raw: &[u8]) -> Result<SanitizeCdb, Sense> {
    cdb::require_len(raw, 10)?;
    let flags = byte_at(raw, 1);
    if flags & 0x40 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(6)));
    }
    if let Some(byte) = (2..=6).find(|&i| byte_at(raw, i) != 0) {
        return Err(Sense::invalid_field_in_cdb(byte as u16, Some(7)));
    }
    Ok(SanitizeCdb {
        immed: flags & 0x80 != 0,
        ause: flags & 0x20 != 0,
        service_action: flags & 0x1F,
        parameter_list_length: u16::from_be_bytes([byte_at(raw, 7), byte_at(raw, 8)]),
    })
}

/// What an OVERWRITE writes (SBC-4 §5.30.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Overwrite {
    /// INVERT: the pattern is inverted between consecutive passes.
    invert: bool,
    /// OVERWRITE COUNT: passes, 1 to 31.
    passes: u8,
    /// INITIALIZATION PATTERN: 1 to (logical block length) bytes, repeated through each block.
    pattern: Bytes,
}

/// The OVERWRITE parameter list. The list must hold the header and a pattern of at most one
/// logical block (PARAMETER LIST LENGTH 5 to block length + 4, else INVALID FIELD IN CDB);
/// TEST is 00b (other values are vendor test modes keel does not have), OVERWRITE COUNT and
/// INITIALIZATION PATTERN LENGTH are not zero, and the pattern fits in the block and in the
/// list (else INVALID FIELD IN PARAMETER LIST).
fn decode_overwrite(list_len: u16, data: &Bytes, block_size: u32) -> Result<Overwrite, Sense> {
    let list_len = usize::from(list_len);
    let block = block_size as usize;
    if list_len <= OVERWRITE_HEADER || list_len > block + OVERWRITE_HEADER {
        return Err(Sense::invalid_field_in_cdb(7, Some(7)));
    }
    if data.len() < list_len {
        // The initiator sent less than its CDB announced.
        return Err(Sense::parameter_list_length_error());
    }
    let list = data.slice(..list_len);
    let invert = list[0] & 0x80 != 0;
    if list[0] & 0x60 != 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, Some(6)));
    }
    let passes = list[0] & 0x1F;
    if passes == 0 {
        return Err(Sense::invalid_field_in_parameter_list(0, Some(4)));
    }
    let pattern_len = usize::from(u16::from_be_bytes([list[2], list[3]]));
    if pattern_len == 0 || pattern_len > block || pattern_len > list_len - OVERWRITE_HEADER {
        return Err(Sense::invalid_field_in_parameter_list(2, Some(7)));
    }
    Ok(Overwrite {
        invert,
        passes,
        pattern: list.slice(OVERWRITE_HEADER..OVERWRITE_HEADER + pattern_len),
    })
}

/// Which sanitize operation runs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Operation {
    Overwrite(Overwrite),
    BlockErase,
}

impl Operation {
    /// For the log: the operation without its pattern bytes.
    fn describe(&self) -> String {
        match self {
            Operation::Overwrite(o) => format!(
                "OVERWRITE, {} pass(es) of a {}-byte pattern{}",
                o.passes,
                o.pattern.len(),
                if o.invert {
                    ", inverted between passes"
                } else {
                    ""
                }
            ),
            Operation::BlockErase => "BLOCK ERASE".to_string(),
        }
    }
}

/// SANITIZE for `lu`. `order`: its row's ordering, which the operation holds from start to
/// end. `fate`: the command's task, whose abort ends a wait without IMMED.
pub async fn sanitize(
    lu: &Arc<LogicalUnit>,
    order: Order<'_>,
    raw: &[u8],
    data_out: &Bytes,
    fate: Option<&Arc<TaskFate>>,
) -> Result<Bytes, Sense> {
    let cdb = decode(raw)?;
    let operation = match cdb.service_action {
        SA_EXIT_FAILURE_MODE => {
            require_no_parameter_list(&cdb)?;
            lu.sanitize_state().exit_failure_mode()?;
            return Ok(Bytes::new());
        }
        SA_BLOCK_ERASE => {
            require_no_parameter_list(&cdb)?;
            Operation::BlockErase
        }
        SA_OVERWRITE => Operation::Overwrite(decode_overwrite(
            cdb.parameter_list_length,
            data_out,
            lu.block_size(),
        )?),
        // CRYPTOGRAPHIC ERASE and the reserved service actions: the command table refuses
        // them before this; refused the same way should one get here.
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(4))),
    };
    let backend = writable_medium(lu)?;
    let capacity = capacity_blocks(backend.as_ref(), lu.block_size()) * u64::from(lu.block_size());
    let total = match &operation {
        Operation::Overwrite(o) => capacity * u64::from(o.passes),
        Operation::BlockErase => capacity,
    };
    let progress = lu.sanitize_state().begin(total)?;
    tracing::warn!(
        lun = lu.lun(),
        operation = operation.describe(),
        "sanitize operation started: the unit's data is being destroyed"
    );
    let unit = Arc::clone(lu);
    let ause = cdb.ause;
    let class = order.class();
    let job = tokio::spawn(async move {
        // However this task ends, a panic included, the unit leaves "in progress".
        let mut unended = EndsAsFailed {
            state: unit.sanitize_state(),
            ause,
            armed: true,
        };
        // The row's ordering, held by the operation rather than the command: nothing reads or
        // writes the medium until the operation ends (see the module notes).
        let _ordered = Order::of(&unit, class).enter().await;
        let outcome = run(
            &operation,
            backend.as_ref(),
            capacity,
            unit.block_size(),
            &progress,
            unit.sanitize_state(),
        )
        .await;
        if let Err(e) = &outcome {
            tracing::error!(
                lun = unit.lun(),
                "sanitize operation failed: {e}; the unit is in sanitize failure mode"
            );
        } else {
            tracing::info!(lun = unit.lun(), "sanitize operation complete");
        }
        unended.armed = false;
        unit.sanitize_state().end(outcome.is_ok(), ause);
        outcome.is_ok()
    });
    if cdb.immed {
        return Ok(Bytes::new());
    }
    wait_for(job, fate).await
}

/// Ends a sanitize operation as failed when its task stops without ending it (a panic in the
/// backend): otherwise the unit would answer SANITIZE IN PROGRESS forever.
struct EndsAsFailed<'a> {
    state: &'a SanitizeState,
    ause: bool,
    armed: bool,
}

impl Drop for EndsAsFailed<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.end(false, self.ause);
        }
    }
}

/// BLOCK ERASE and EXIT FAILURE MODE take no parameter list (SBC-4 §5.30.1): a PARAMETER LIST
/// LENGTH other than 0 is refused.
fn require_no_parameter_list(cdb: &SanitizeCdb) -> Result<(), Sense> {
    if cdb.parameter_list_length != 0 {
        return Err(Sense::invalid_field_in_cdb(7, Some(7)));
    }
    Ok(())
}

/// The end of a SANITIZE without IMMED: GOOD when the operation succeeded, MEDIUM ERROR,
/// SANITIZE COMMAND FAILED when it failed. An abort of the command stops the wait (its reply
/// is not sent); the operation goes on.
async fn wait_for(
    mut job: tokio::task::JoinHandle<bool>,
    fate: Option<&Arc<TaskFate>>,
) -> Result<Bytes, Sense> {
    let aborted = async {
        match fate {
            Some(fate) => fate.aborted().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        joined = &mut job => match joined {
            Ok(true) => Ok(Bytes::new()),
            Ok(false) | Err(_) => Err(Sense::sanitize_failed()),
        },
        () = aborted => Err(Sense::sanitize_in_progress(0)),
    }
}

/// Runs the operation over the first `capacity` bytes of `backend`, then flushes it: the
/// sanitized state must survive a power loss before the operation counts as done.
async fn run(
    operation: &Operation,
    backend: &dyn BlockBackend,
    capacity: u64,
    block_size: u32,
    progress: &SanitizeProgress,
    state: &SanitizeState,
) -> std::io::Result<()> {
    match operation {
        Operation::Overwrite(o) => {
            let mut pace = Pace::new(state.rate());
            for pass in 0..o.passes {
                // INVERT: passes 2, 4, ... write the inverted pattern (SBC-4 §5.30.3.2).
                let inverted = o.invert && pass % 2 == 1;
                let chunk = pattern_chunk(&o.pattern, block_size as usize, inverted);
                write_all(backend, capacity, &chunk, progress, &mut pace).await?;
            }
        }
        // Only where discarded blocks read back as zeros (the rule WRITE SAME's UNMAP bit
        // follows): elsewhere a discard could leave the old data readable.
        Operation::BlockErase if write_same_unmaps(&backend.provisioning()) => {
            let mut offset = 0;
            while offset < capacity {
                let len = ERASE_CHUNK.min(capacity - offset);
                backend.discard(offset, len).await?;
                progress.advance(len);
                offset += len;
            }
        }
        Operation::BlockErase => {
            // No discard here: zeros make the old data as unrecoverable as a punched hole.
            let zeros = Bytes::from(vec![0u8; CHUNK]);
            let mut pace = Pace::new(state.rate());
            write_all(backend, capacity, &zeros, progress, &mut pace).await?;
        }
    }
    backend.flush().await
}

/// One [`CHUNK`] of blocks of `block` bytes, each holding `pattern` repeated from its start
/// (a partial copy at its end), inverted if asked.
fn pattern_chunk(pattern: &[u8], block: usize, inverted: bool) -> Bytes {
    let mut one_block: Vec<u8> = pattern.iter().copied().cycle().take(block).collect();
    if inverted {
        one_block.iter_mut().for_each(|b| *b = !*b);
    }
    let mut chunk = BytesMut::with_capacity(CHUNK);
    while chunk.len() + block <= CHUNK {
        chunk.extend_from_slice(&one_block);
    }
    chunk.freeze()
}

/// Writes `chunk` over `[0, capacity)`, counting progress and keeping to the pace.
async fn write_all(
    backend: &dyn BlockBackend,
    capacity: u64,
    chunk: &Bytes,
    progress: &SanitizeProgress,
    pace: &mut Pace,
) -> std::io::Result<()> {
    let mut offset = 0u64;
    while offset < capacity {
        let len =
            usize::try_from((capacity - offset).min(chunk.len() as u64)).unwrap_or(chunk.len());
        backend.write_at(offset, chunk.slice(..len), false).await?;
        progress.advance(len as u64);
        offset += len as u64;
        pace.wait(len as u64).await;
    }
    Ok(())
}

/// Keeps writes at or under a rate, bytes per second, measured from the operation's start.
struct Pace {
    rate: Option<u64>,
    start: tokio::time::Instant,
    bytes: u64,
}

impl Pace {
    fn new(rate: Option<u64>) -> Self {
        Pace {
            rate,
            start: tokio::time::Instant::now(),
            bytes: 0,
        }
    }

    /// `bytes` more were written: sleeps until all written so far are due at the rate.
    async fn wait(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            tokio::time::sleep_until(self.start + due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::scsi::opcodes::op::{self, SANITIZE};
    use crate::scsi::unit::lu::LuIdentity;
    use crate::scsi::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TargetDevice, TaskAttr};
    use crate::storage::{IoFuture, MemoryBackend};

    const BLOCK: u32 = 512;
    const BLOCKS: u64 = 64;

    fn cdb(service_action: u8, immed: bool, ause: bool, list_len: u16) -> [u8; 10] {
        let mut cdb = [0u8; 10];
        cdb[0] = SANITIZE;
        cdb[1] = service_action | if immed { 0x80 } else { 0 } | if ause { 0x20 } else { 0 };
        cdb[7..9].copy_from_slice(&list_len.to_be_bytes());
        cdb
    }

    fn overwrite_list(invert: bool, passes: u8, pattern: &[u8]) -> Bytes {
        let mut list = vec![passes | if invert { 0x80 } else { 0 }, 0];
        list.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
        list.extend_from_slice(pattern);
        Bytes::from(list)
    }

    /// A memory medium whose writes fail while `failing` is set.
    #[derive(Debug)]
    struct Flaky {
        inner: MemoryBackend,
        failing: AtomicBool,
    }

    impl BlockBackend for Flaky {
        fn size_bytes(&self) -> u64 {
            self.inner.size_bytes()
        }
        fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
            self.inner.read_at(offset, len)
        }
        fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
            if self.failing.load(Ordering::SeqCst) {
                return Box::pin(async { Err(std::io::Error::other("injected failure")) });
            }
            self.inner.write_at(offset, data, fua)
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            self.inner.flush()
        }
        fn describe(&self) -> String {
            "flaky".to_string()
        }
    }

    fn unit(backend: Arc<dyn BlockBackend>, rate: Option<u64>) -> Arc<LogicalUnit> {
        Arc::new(
            LogicalUnit::new(
                LuIdentity::derived("iqn.2026-01.test:t", 0),
                BLOCK,
                Some(backend),
                false,
            )
            .with_sanitize_rate(rate),
        )
    }

    fn memory_unit() -> (Arc<LogicalUnit>, Arc<MemoryBackend>) {
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        (unit(backend.clone(), None), backend)
    }

    async fn run_on(target: &TargetDevice, cdb: &[u8], data_out: Bytes) -> ScsiResponse {
        target
            .execute(ScsiRequest {
                nexus: Arc::new(Nexus::for_test("a")),
                lun: 0,
                cdb: Bytes::copy_from_slice(cdb),
                data_out,
                expected_in: 4096,
                attr: TaskAttr::Simple,
            })
            .await
    }

    /// Runs the commands once to clear the power-on unit attention.
    async fn target_with(lu: Arc<LogicalUnit>) -> TargetDevice {
        let target = TargetDevice::new("iqn.2026-01.test:t");
        target.add_lun(lu);
        run_on(&target, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], Bytes::new()).await;
        target
    }

    fn key_asc_ascq(response: &ScsiResponse) -> (u8, u8, u8) {
        assert_eq!(response.status, ScsiStatus::CheckCondition, "{response:?}");
        let s = response.sense.as_ref().expect("sense");
        (s[2] & 0x0F, s[12], s[13])
    }

    #[test]
    fn reserved_cdb_fields_are_refused() {
        assert!(decode(&cdb(SA_OVERWRITE, false, false, 8)).is_ok());
        let mut bad = cdb(SA_OVERWRITE, false, false, 8);
        bad[1] |= 0x40;
        assert_eq!(
            decode(&bad).unwrap_err().field_pointer,
            Some((true, 1, Some(6)))
        );
        for byte in 2..=6 {
            let mut bad = cdb(SA_BLOCK_ERASE, false, false, 0);
            bad[byte] = 1;
            assert_eq!(
                decode(&bad).unwrap_err().field_pointer,
                Some((true, byte as u16, Some(7)))
            );
        }
    }

    #[test]
    fn overwrite_parameter_list_rules() {
        let ok = overwrite_list(true, 3, &[0xAA; 4]);
        let parsed = decode_overwrite(ok.len() as u16, &ok, BLOCK).unwrap();
        assert_eq!(
            (parsed.invert, parsed.passes, &parsed.pattern[..]),
            (true, 3, &[0xAA; 4][..])
        );
        // PARAMETER LIST LENGTH 0..=4 and beyond a block plus the header: the CDB is wrong.
        let whole = overwrite_list(false, 1, &[0x55; BLOCK as usize]);
        for len in [0u16, 4, BLOCK as u16 + 5] {
            let padded = Bytes::from([&whole[..], &[0u8; 8]].concat());
            let err = decode_overwrite(len, &padded, BLOCK).unwrap_err();
            assert_eq!(
                (err.asc, err.field_pointer),
                (0x24, Some((true, 7, Some(7))))
            );
        }
        assert!(decode_overwrite(BLOCK as u16 + 4, &whole, BLOCK).is_ok());
        // OVERWRITE COUNT 0, TEST not 00b, a pattern of 0 bytes, longer than a block or
        // than the list: the list is wrong.
        let field = |list: Bytes| decode_overwrite(list.len() as u16, &list, BLOCK).unwrap_err();
        assert_eq!(
            field(overwrite_list(false, 0, &[1])).field_pointer,
            Some((false, 0, Some(4)))
        );
        let mut test_mode = overwrite_list(false, 1, &[1]).to_vec();
        test_mode[0] |= 0x20;
        assert_eq!(field(Bytes::from(test_mode)).asc, 0x26);
        let mut empty = overwrite_list(false, 1, &[0; 8]).to_vec();
        empty[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            field(Bytes::from(empty)).field_pointer,
            Some((false, 2, Some(7)))
        );
        let mut too_long = overwrite_list(false, 1, &[0; 8]).to_vec();
        too_long[2..4].copy_from_slice(&9u16.to_be_bytes());
        assert_eq!(
            field(Bytes::from(too_long)).field_pointer,
            Some((false, 2, Some(7)))
        );
        // Less data than announced.
        let short = overwrite_list(false, 1, &[1; 4]);
        assert_eq!(decode_overwrite(16, &short, BLOCK).unwrap_err().asc, 0x1A);
    }

    #[test]
    fn the_pattern_starts_every_block_and_inverts() {
        let chunk = pattern_chunk(&[1, 2, 3], 512, false);
        assert_eq!(chunk.len(), CHUNK);
        assert_eq!(&chunk[..4], &[1, 2, 3, 1]);
        assert_eq!(&chunk[510..515], &[1, 2, 1, 2, 3]);
        let inverted = pattern_chunk(&[0x0F], 4096, true);
        assert!(inverted.iter().all(|&b| b == 0xF0));
    }

    #[tokio::test]
    async fn overwrite_fills_every_block_with_the_pattern_of_the_last_pass() {
        let (lu, backend) = memory_unit();
        let target = target_with(lu).await;
        backend
            .write_at(0, Bytes::from(vec![b'a'; 4096]), false)
            .await
            .unwrap();
        // Two passes, INVERT: the second writes the inverted pattern.
        let list = overwrite_list(true, 2, &[0x12, 0x34, 0x56]);
        let response = run_on(
            &target,
            &cdb(SA_OVERWRITE, false, false, list.len() as u16),
            list.clone(),
        )
        .await;
        assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
        assert_eq!(response.data_out_used, list.len() as u32);
        let data = backend
            .read_at(0, (BLOCKS * u64::from(BLOCK)) as usize)
            .await
            .unwrap();
        let expected: Vec<u8> = [0x12u8, 0x34, 0x56]
            .iter()
            .map(|b| !b)
            .cycle()
            .take(BLOCK as usize)
            .collect();
        for block in data.chunks(BLOCK as usize) {
            assert_eq!(block, &expected[..]);
        }
        // One pass with INVERT writes the pattern itself.
        let list = overwrite_list(true, 1, &[0xAA]);
        let response = run_on(&target, &cdb(SA_OVERWRITE, false, false, 5), list).await;
        assert_eq!(response.status, ScsiStatus::Good);
        let data = backend.read_at(0, 4096).await.unwrap();
        assert!(data.iter().all(|&b| b == 0xAA));
    }

    #[tokio::test]
    async fn block_erase_discards_and_reads_return_zeros() {
        let (lu, backend) = memory_unit();
        let target = target_with(lu).await;
        backend
            .write_at(0, Bytes::from(vec![b'a'; 32768]), false)
            .await
            .unwrap();
        // BLOCK ERASE and EXIT FAILURE MODE take no parameter list.
        for sa in [SA_BLOCK_ERASE, SA_EXIT_FAILURE_MODE] {
            let refused = run_on(&target, &cdb(sa, false, false, 8), Bytes::from(vec![0; 8])).await;
            assert_eq!(key_asc_ascq(&refused), (0x05, 0x24, 0x00));
        }
        let response = run_on(&target, &cdb(SA_BLOCK_ERASE, false, false, 0), Bytes::new()).await;
        assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
        assert!(
            backend
                .read_at(0, 32768)
                .await
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
        let extents = backend
            .allocation(0, BLOCKS * u64::from(BLOCK))
            .await
            .unwrap();
        assert!(extents.iter().all(|e| !e.mapped), "{extents:?}");
    }

    /// A medium that discards but whose discarded ranges do not read back as zeros (no
    /// LBPRZ): its discard leaves 0xEE behind.
    #[derive(Debug)]
    struct DiscardKeepsJunk(MemoryBackend);

    impl BlockBackend for DiscardKeepsJunk {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
            self.0.read_at(offset, len)
        }
        fn write_at(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<'_, ()> {
            self.0.write_at(offset, data, fua)
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            self.0.flush()
        }
        fn describe(&self) -> String {
            "discard-keeps-junk".to_string()
        }
        fn supports_discard(&self) -> bool {
            true
        }
        fn discard(&self, offset: u64, len: u64) -> IoFuture<'_, ()> {
            let junk = Bytes::from(vec![0xEE; usize::try_from(len).unwrap_or(0)]);
            self.0.write_at(offset, junk, false)
        }
        fn provisioning(&self) -> crate::storage::Provisioning {
            crate::storage::Provisioning {
                discard: true,
                discard_zeroes: false,
                ..self.0.provisioning()
            }
        }
    }

    #[tokio::test]
    async fn block_erase_writes_zeros_where_a_discard_would_not_read_back_as_zeros() {
        let backend = Arc::new(DiscardKeepsJunk(MemoryBackend::new(
            BLOCKS * u64::from(BLOCK),
        )));
        let target = target_with(unit(backend.clone(), None)).await;
        backend
            .write_at(0, Bytes::from(vec![b'a'; 32768]), false)
            .await
            .unwrap();
        let response = run_on(&target, &cdb(SA_BLOCK_ERASE, false, false, 0), Bytes::new()).await;
        assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
        let data = backend.read_at(0, 32768).await.unwrap();
        assert!(data.iter().all(|&b| b == 0), "old or junk data left behind");
    }

    /// A medium whose writes panic.
    #[derive(Debug)]
    struct PanicsOnWrite(MemoryBackend);

    impl BlockBackend for PanicsOnWrite {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn read_at(&self, offset: u64, len: usize) -> IoFuture<'_, Bytes> {
            self.0.read_at(offset, len)
        }
        fn write_at(&self, _offset: u64, _data: Bytes, _fua: bool) -> IoFuture<'_, ()> {
            Box::pin(async { panic!("injected panic in the backend") })
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            self.0.flush()
        }
        fn describe(&self) -> String {
            "panics-on-write".to_string()
        }
    }

    #[tokio::test]
    async fn an_operation_whose_task_panics_leaves_the_unit_in_failure_mode_not_in_progress() {
        let backend = Arc::new(PanicsOnWrite(MemoryBackend::new(BLOCKS * u64::from(BLOCK))));
        let lu = unit(backend, None);
        let target = target_with(Arc::clone(&lu)).await;
        let list = overwrite_list(false, 1, &[1]);
        let started = run_on(&target, &cdb(SA_OVERWRITE, true, false, 5), list).await;
        assert_eq!(started.status, ScsiStatus::Good, "{started:?}");
        for _ in 0..250 {
            if !lu.sanitize_state().in_progress() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tur = run_on(&target, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], Bytes::new()).await;
        assert_eq!(key_asc_ascq(&tur), (0x03, 0x31, 0x03));
    }

    #[tokio::test]
    async fn crypto_erase_and_unknown_service_actions_are_refused_at_the_service_action() {
        let (lu, _) = memory_unit();
        let target = target_with(lu).await;
        for sa in (0..0x1F).filter(|sa| ![SA_OVERWRITE, SA_BLOCK_ERASE].contains(sa)) {
            let response = run_on(&target, &cdb(sa, false, false, 0), Bytes::new()).await;
            assert_eq!(
                key_asc_ascq(&response),
                (0x05, 0x24, 0x00),
                "service action {sa:#x}"
            );
            let s = response.sense.unwrap();
            assert_eq!(&s[15..18], &[0xC0 | 0x08 | 4, 0, 1]);
        }
    }

    #[tokio::test]
    async fn a_write_protected_unit_refuses_to_sanitize() {
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        let lu = Arc::new(LogicalUnit::new(
            LuIdentity::derived("iqn.2026-01.test:t", 0),
            BLOCK,
            Some(backend),
            true,
        ));
        let target = target_with(lu).await;
        let list = overwrite_list(false, 1, &[1]);
        let response = run_on(&target, &cdb(SA_OVERWRITE, false, false, 5), list).await;
        assert_eq!(key_asc_ascq(&response), (0x07, 0x27, 0x00));
        let response = run_on(&target, &cdb(SA_BLOCK_ERASE, false, false, 0), Bytes::new()).await;
        assert_eq!(key_asc_ascq(&response), (0x07, 0x27, 0x00));
    }

    #[tokio::test]
    async fn while_an_immediate_sanitize_runs_only_inquiry_report_luns_and_request_sense_do() {
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        // 32 KiB at 64 KiB/s: half a second.
        let lu = unit(backend.clone(), Some(64 << 10));
        let target = target_with(Arc::clone(&lu)).await;
        let list = overwrite_list(false, 1, &[0x5A]);
        let response = run_on(&target, &cdb(SA_OVERWRITE, true, false, 5), list.clone()).await;
        assert_eq!(response.status, ScsiStatus::Good, "IMMED returns at once");
        assert!(lu.sanitize_state().in_progress());
        for refused in [
            vec![op::TEST_UNIT_READY, 0, 0, 0, 0, 0],
            vec![op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            vec![op::START_STOP_UNIT, 1, 0, 0, 1, 0],
            cdb(SA_OVERWRITE, false, false, 5).to_vec(),
        ] {
            let response = run_on(&target, &refused, list.clone()).await;
            assert_eq!(
                key_asc_ascq(&response),
                (0x02, 0x04, 0x1B),
                "{:#x}",
                refused[0]
            );
            assert_eq!(
                response.sense.unwrap()[15] & 0x80,
                0x80,
                "SKSV: progress indication"
            );
        }
        let inquiry = run_on(&target, &[op::INQUIRY, 0, 0, 0, 96, 0], Bytes::new()).await;
        assert_eq!(inquiry.status, ScsiStatus::Good);
        let luns = run_on(
            &target,
            &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            Bytes::new(),
        )
        .await;
        assert_eq!(luns.status, ScsiStatus::Good);
        // REQUEST SENSE returns the condition with its progress, and the progress moves.
        let request_sense = [op::REQUEST_SENSE, 0, 0, 0, 18, 0];
        let first = run_on(&target, &request_sense, Bytes::new()).await;
        assert_eq!(first.status, ScsiStatus::Good);
        assert_eq!(
            (first.data_in[2], first.data_in[12], first.data_in[13]),
            (0x02, 0x04, 0x1B)
        );
        let progress = |d: &Bytes| u16::from_be_bytes([d[16], d[17]]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let later = run_on(&target, &request_sense, Bytes::new()).await;
        assert!(
            progress(&later.data_in) > progress(&first.data_in),
            "{first:?} {later:?}"
        );
        wait_until_sanitized_with(&lu, backend.as_ref(), 0x5A).await;
        let tur = run_on(&target, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0], Bytes::new()).await;
        assert_eq!(tur.status, ScsiStatus::Good);
    }

    /// Waits for the running operation to end; then the medium holds `byte` everywhere.
    async fn wait_until_sanitized_with(lu: &LogicalUnit, backend: &dyn BlockBackend, byte: u8) {
        while lu.sanitize_state().in_progress() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let size = usize::try_from(backend.size_bytes()).unwrap();
        let data = backend.read_at(0, size).await.unwrap();
        assert!(data.iter().all(|&b| b == byte));
    }

    #[tokio::test]
    async fn an_aborted_sanitize_command_stops_waiting_and_the_operation_goes_on() {
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        let lu = unit(backend.clone(), Some(64 << 10));
        let fate = TaskFate::new();
        fate.begin().unwrap();
        let list = overwrite_list(false, 1, &[0x77]);
        let waiting = {
            let (lu, fate) = (Arc::clone(&lu), Arc::clone(&fate));
            tokio::spawn(async move {
                let cdb = cdb(SA_OVERWRITE, false, false, 5);
                let order = Order::for_command(&lu, &cdb);
                sanitize(&lu, order, &cdb, &list, Some(&fate)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        fate.abort(crate::scsi::unit::task_set::Aborted::Silently);
        let ended = tokio::time::timeout(Duration::from_millis(300), waiting).await;
        assert!(ended.is_ok(), "the aborted command returned");
        assert!(lu.sanitize_state().in_progress(), "the operation goes on");
        wait_until_sanitized_with(&lu, backend.as_ref(), 0x77).await;
    }

    #[tokio::test]
    async fn a_failed_sanitize_leaves_failure_mode_only_as_ause_allows() {
        let flaky = Arc::new(Flaky {
            inner: MemoryBackend::new(BLOCKS * u64::from(BLOCK)),
            failing: AtomicBool::new(true),
        });
        let lu = unit(flaky.clone(), None);
        let target = target_with(lu).await;
        let list = overwrite_list(false, 1, &[1]);
        let overwrite = cdb(SA_OVERWRITE, false, false, 5);
        let exit = cdb(SA_EXIT_FAILURE_MODE, false, false, 0);
        let tur = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];

        // AUSE = 0: the command fails, the unit is in failure mode, EXIT FAILURE MODE is
        // refused, and only a successful sanitize ends it.
        let failed = run_on(&target, &overwrite, list.clone()).await;
        assert_eq!(key_asc_ascq(&failed), (0x03, 0x31, 0x03));
        assert_eq!(
            key_asc_ascq(&run_on(&target, &tur, Bytes::new()).await),
            (0x03, 0x31, 0x03)
        );
        let sense = run_on(&target, &[op::REQUEST_SENSE, 0, 0, 0, 18, 0], Bytes::new()).await;
        assert_eq!(
            (sense.data_in[2], sense.data_in[12], sense.data_in[13]),
            (0x03, 0x31, 0x03)
        );
        assert_eq!(
            key_asc_ascq(&run_on(&target, &exit, Bytes::new()).await),
            (0x05, 0x24, 0x00)
        );
        flaky.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            run_on(&target, &overwrite, list.clone()).await.status,
            ScsiStatus::Good
        );
        assert_eq!(
            run_on(&target, &tur, Bytes::new()).await.status,
            ScsiStatus::Good
        );

        // AUSE = 1: EXIT FAILURE MODE ends it.
        flaky.failing.store(true, Ordering::SeqCst);
        let failed = run_on(&target, &cdb(SA_OVERWRITE, false, true, 5), list.clone()).await;
        assert_eq!(key_asc_ascq(&failed), (0x03, 0x31, 0x03));
        assert_eq!(
            run_on(&target, &exit, Bytes::new()).await.status,
            ScsiStatus::Good
        );
        assert_eq!(
            run_on(&target, &tur, Bytes::new()).await.status,
            ScsiStatus::Good
        );
        // Outside failure mode, EXIT FAILURE MODE does nothing and succeeds.
        assert_eq!(
            run_on(&target, &exit, Bytes::new()).await.status,
            ScsiStatus::Good
        );
    }

    #[test]
    fn the_table_says_who_runs_during_a_sanitize() {
        use crate::scsi::table::supported_commands;
        use crate::scsi::unit::sanitize::DuringSanitize;
        for row in supported_commands() {
            let expected = match row.opcode {
                op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE => DuringSanitize::Runs,
                SANITIZE => DuringSanitize::Sanitize,
                _ => DuringSanitize::Refused,
            };
            assert_eq!(row.during_sanitize, expected, "{}", row.name);
        }
        let service_actions: Vec<_> = supported_commands()
            .iter()
            .filter(|row| row.opcode == SANITIZE)
            .map(|row| row.service_action)
            .collect();
        assert_eq!(
            service_actions,
            [
                Some(SA_OVERWRITE),
                Some(SA_BLOCK_ERASE),
                Some(SA_EXIT_FAILURE_MODE)
            ]
        );
    }
}
