//! The SCSI target device: its logical units and command dispatch.
//!
//! [`TargetDevice::execute`] applies, in order (SAM-5 §5.14, SPC-4 §5.14 and §4.3):
//! 1. no such LUN: only INQUIRY, REPORT LUNS and REQUEST SENSE do anything useful;
//! 2. command table lookup (unknown opcode/service action still reports a pending UA first);
//!
//! then what the command's row (`table.rs`) says:
//! 3. pending unit attention, except for the commands that never report one;
//! 4. CDB length (the usage bitmap's) and CONTROL byte;
//! 5. reservation conflict (the row's SPC-3 PR and SPC-2 access);
//! 6. a sanitize operation running or failed, unless the row lets the command run then;
//! 7. readiness for commands that need the medium;
//! 8. the handler, given the ordering of the row's class (`ordering.rs`);
//! 9. the write residual: the row's Data-Out rule.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::cdb::{self, MAX_LUN};
use super::commands::{
    alua, atomic, compare_and_write, log, maintenance, medium, mode, persistent_reservations,
    provisioning, reservation_access, sanitize, sbc, spc, spc2_reservations, verify, write_same,
    xcopy,
};
use super::opcodes::op;
use super::ordering::Order;
use super::sense::Sense;
use super::table::{self, CommandInfo, Handler};
use super::unit::lu::{LogicalUnit, LuIdentity};
use super::unit::task_set::TaskFate;
use super::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus};
use crate::payload::Payload;

/// The logical units of one target. LUNs can be added and removed while sessions run.
#[derive(Debug)]
pub struct TargetDevice {
    name: String,
    luns: RwLock<BTreeMap<u64, Arc<LogicalUnit>>>,
    /// Running EXTENDED COPY commands and held COPY STATUS results of every copy manager.
    copy_results: xcopy::CopyResults,
}

impl TargetDevice {
    pub fn new(target_name: &str) -> Self {
        TargetDevice {
            name: target_name.to_string(),
            luns: RwLock::new(BTreeMap::new()),
            copy_results: xcopy::CopyResults::default(),
        }
    }

    /// The target's name (iSCSI IQN).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Running copies and held copy results (RECEIVE COPY RESULTS).
    pub fn copy_results(&self) -> &xcopy::CopyResults {
        &self.copy_results
    }

    fn read_luns(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<LogicalUnit>>> {
        // Writers only insert/remove map entries, so a poisoned lock is still consistent.
        self.luns.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_luns(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Arc<LogicalUnit>>> {
        self.luns.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `lu` under its LUN, replacing a unit with the same number, and tells every nexus
    /// known to the other units that the LUN inventory changed (06/3F/0E, SPC-4 §6.33). The new
    /// unit itself reports power-on to each nexus's first command.
    ///
    /// A LUN above [`MAX_LUN`] cannot be encoded in REPORT LUNS data; it is refused with a
    /// warning (configuration validates LUN numbers before this).
    pub fn add_lun(&self, lu: Arc<LogicalUnit>) {
        let lun = lu.lun();
        if lun > MAX_LUN {
            tracing::warn!(target = %self.name, lun, "LUN number too large, not added");
            return;
        }
        self.write_luns().insert(lun, lu);
        self.announce_inventory_change(lun);
    }

    /// Removes a LUN; the remaining units report REPORTED LUNS DATA HAS CHANGED.
    pub fn remove_lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        let removed = self.write_luns().remove(&lun);
        if removed.is_some() {
            self.announce_inventory_change(lun);
        }
        removed
    }

    fn announce_inventory_change(&self, changed: u64) {
        let others: Vec<Arc<LogicalUnit>> = self
            .read_luns()
            .iter()
            .filter(|(lun, _)| **lun != changed)
            .map(|(_, lu)| Arc::clone(lu))
            .collect();
        for lu in others {
            lu.unit_attentions()
                .establish_all(&Sense::reported_luns_changed(), None);
        }
    }

    pub fn lun(&self, lun: u64) -> Option<Arc<LogicalUnit>> {
        self.read_luns().get(&lun).cloned()
    }

    /// All logical units, sorted by LUN.
    pub fn luns(&self) -> Vec<Arc<LogicalUnit>> {
        self.read_luns().values().cloned().collect()
    }

    fn lun_numbers(&self) -> Vec<u64> {
        self.read_luns().keys().copied().collect()
    }

    /// Runs one command to completion.
    pub async fn execute(&self, req: ScsiRequest) -> ScsiResponse {
        self.run_command(req, None).await
    }

    /// Runs one command of a task the transport tracks: a command that waits on work going on
    /// without it (SANITIZE without IMMED, SBC-4 §5.30) stops waiting when `fate` says the
    /// task was aborted.
    pub async fn execute_task(&self, req: ScsiRequest, fate: &Arc<TaskFate>) -> ScsiResponse {
        self.run_command(req, Some(fate)).await
    }

    async fn run_command(&self, req: ScsiRequest, fate: Option<&Arc<TaskFate>>) -> ScsiResponse {
        let Some(lu) = self.lun(req.lun) else {
            return self.execute_without_lu(&req);
        };
        let row = table::lookup(&req.cdb);
        // The residual is against what the CDB asked for, whatever the outcome (its row's
        // rule; a CDB without a row goes by its opcode's, see `data_out_needed`).
        let data_out_used = match row {
            Ok(info) => info.data_out.bytes(&req.cdb, lu.block_size()),
            Err(_) => table::data_out_needed(&req.cdb, lu.block_size()),
        };
        let mut response = match self.dispatch(&lu, &req, row, fate).await {
            Ok(response) => response,
            Err(sense) => ScsiResponse::check_condition(&sense, lu.descriptor_sense()),
        };
        response.data_out_used = data_out_used;
        response.block_size = lu.block_size();
        response
    }

    async fn dispatch(
        &self,
        lu: &Arc<LogicalUnit>,
        req: &ScsiRequest,
        row: Result<&'static CommandInfo, Sense>,
        fate: Option<&Arc<TaskFate>>,
    ) -> Result<ScsiResponse, Sense> {
        let cdb = &req.cdb[..];
        let nexus = &req.nexus;
        let unit_attentions = lu.unit_attentions();
        let info = match row {
            Ok(info) => info,
            // Only INQUIRY, REPORT LUNS and REQUEST SENSE are exempt from reporting a unit
            // attention; an unsupported command reports it before its own error.
            Err(sense) => return Err(unit_attentions.take(nexus).unwrap_or(sense)),
        };
        if info.reports_unit_attention
            && let Some(ua) = unit_attentions.take(nexus)
        {
            return Err(ua);
        }
        check_cdb(cdb, info)?;
        // After unit attentions (SAM-5 §5.14: a pending UA is reported first), before
        // readiness: a conflicting command never touches the unit.
        if reservation_access::conflicts(lu.reservations(), nexus, info.pr.access(cdb), info.spc2) {
            return Ok(ScsiResponse::status(ScsiStatus::ReservationConflict));
        }
        if let Some(sense) = lu.sanitize_state().refusal(info.during_sanitize) {
            return Err(sense);
        }
        if !info.runs_not_ready
            && let Some(sense) = lu.not_ready_sense()
        {
            return Err(sense);
        }
        // The ordering of the row's class; each handler enters it when it reaches the medium
        // or the reservation state (see ordering.rs).
        let order = Order::of(lu, info.order);
        let data = match info.handler {
            Handler::TestUnitReady => Bytes::new(),
            Handler::StartStopUnit => {
                medium::start_stop_unit(lu, nexus, cdb).await?;
                Bytes::new()
            }
            Handler::PreventAllow => {
                medium::prevent_allow(lu, nexus, cdb)?;
                Bytes::new()
            }
            Handler::RequestSense => {
                let request = cdb::decode_request_sense(cdb)?;
                // SPC-4 §6.39: a pending unit attention is returned (and cleared), else the
                // condition a media access would get, else NO SENSE.
                let sense = unit_attentions
                    .take(nexus)
                    .or_else(|| lu.sanitize_state().condition())
                    .or_else(|| lu.not_ready_sense())
                    .unwrap_or_else(Sense::no_sense);
                spc::request_sense_data(&sense, &request)
            }
            Handler::Inquiry => spc::inquiry(lu, nexus, cdb)?,
            Handler::ReportLuns => spc::report_luns(&self.lun_numbers(), cdb)?,
            Handler::ModeSense => mode::mode_sense(lu, cdb)?,
            Handler::ReadCapacity10 => sbc::read_capacity10(lu, cdb)?,
            Handler::ReadCapacity16 => sbc::read_capacity16(lu, cdb)?,
            Handler::ReadWrite => match sbc::read_write(lu, order, cdb, &req.data_out).await? {
                Payload::Bytes(data) => data,
                Payload::File(slice) => return Ok(ScsiResponse::good_from_file(slice)),
            },
            Handler::SynchronizeCache => {
                sbc::synchronize_cache(lu, cdb).await?;
                Bytes::new()
            }
            Handler::ReportSupportedOpcodes => maintenance::report_supported_opcodes(cdb)?,
            Handler::ReportSupportedTmfs => maintenance::report_supported_tmfs(cdb)?,
            Handler::ReportTargetPortGroups => alua::report_target_port_groups(lu, nexus, cdb)?,
            Handler::ModeSelect => mode::mode_select(lu, nexus, cdb, &req.data_out)?,
            Handler::ReadDefectData => log::read_defect_data(cdb)?,
            Handler::LogSense => log::log_sense(cdb)?,
            Handler::PersistentReserveIn => {
                return persistent_reservations::persistent_reserve_in(lu, nexus, cdb);
            }
            Handler::PersistentReserveOut => {
                return persistent_reservations::persistent_reserve_out(
                    lu,
                    order,
                    nexus,
                    cdb,
                    &req.data_out,
                )
                .await;
            }
            Handler::Reserve => return spc2_reservations::reserve(lu, order, nexus, cdb).await,
            Handler::Release => return spc2_reservations::release(lu, order, nexus, cdb).await,
            Handler::CompareAndWrite => {
                compare_and_write::compare_and_write(lu, order, cdb, &req.data_out).await?
            }
            Handler::WriteSame => write_same::write_same(lu, order, cdb, &req.data_out).await?,
            Handler::Unmap => provisioning::unmap(lu, order, cdb, &req.data_out).await?,
            Handler::GetLbaStatus => provisioning::get_lba_status(lu, cdb).await?,
            Handler::Verify => verify::verify(lu, order, cdb, &req.data_out).await?,
            Handler::OrWrite => compare_and_write::orwrite(lu, order, cdb, &req.data_out).await?,
            Handler::PreFetch => verify::prefetch(lu, cdb).await?,
            Handler::WriteAtomic => atomic::write_atomic16(lu, order, cdb, &req.data_out).await?,
            Handler::ExtendedCopy => {
                return xcopy::extended_copy(
                    &self.copy_results,
                    &self.luns(),
                    lu,
                    nexus,
                    cdb,
                    &req.data_out,
                )
                .await;
            }
            Handler::ReceiveCopyResults => {
                xcopy::receive_copy_results(&self.copy_results, lu, nexus, cdb)?
            }
            Handler::Sanitize => sanitize::sanitize(lu, order, cdb, &req.data_out, fate).await?,
        };
        Ok(ScsiResponse::good(data))
    }

    /// A command for a LUN with no logical unit: INQUIRY answers peripheral qualifier 011b
    /// (SPC-4 §6.6.2), REPORT LUNS works (it describes the target, SPC-4 §6.33), REQUEST
    /// SENSE returns LOGICAL UNIT NOT SUPPORTED as its parameter data (SPC-4 §6.39), anything
    /// else fails with it (SAM-5 §5.9). Sense is fixed format: there is no unit to hold a D_SENSE setting.
    fn execute_without_lu(&self, req: &ScsiRequest) -> ScsiResponse {
        let cdb = &req.cdb[..];
        let result = match cdb.first().copied() {
            Some(code @ (op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)) => table::lookup(cdb)
                .and_then(|info| check_cdb(cdb, info))
                .and_then(|()| match code {
                    op::INQUIRY => {
                        spc::inquiry_no_lun(&LuIdentity::derived(&self.name, req.lun), cdb)
                    }
                    op::REPORT_LUNS => spc::report_luns(&self.lun_numbers(), cdb),
                    _ => cdb::decode_request_sense(cdb).map(|request| {
                        spc::request_sense_data(&Sense::lun_not_supported(), &request)
                    }),
                }),
            _ => Err(Sense::lun_not_supported()),
        };
        match result {
            Ok(data) => ScsiResponse::good(data),
            Err(sense) => ScsiResponse::check_condition(&sense, false),
        }
    }

    /// LOGICAL UNIT RESET task management (aborting its tasks is the transport's part).
    /// Returns false if there is no such LUN.
    ///
    /// SAM-5 §6.3.3 establishes BUS DEVICE RESET FUNCTION OCCURRED (06/29/03) for every I_T
    /// nexus, the issuing one (`by`) included; FreeBSD CTL (`ctl_do_lun_reset` establishes for
    /// all initiators) and LIO (which queues it for the issuer) agree that the issuer gets
    /// it. Mode parameters return to their defaults, preventions of medium removal end.
    pub fn reset_lun(&self, lun: u64, by: &Nexus) -> bool {
        let Some(lu) = self.lun(lun) else {
            return false;
        };
        tracing::info!(target = %self.name, lun, initiator = %by.initiator_port, "logical unit reset");
        reset(&lu, Sense::bus_device_reset());
        true
    }

    /// TARGET WARM/COLD RESET: a hard reset of every logical unit (SAM-5 §6.3.2). Every
    /// nexus, the issuer included, gets POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
    /// (06/29/00): the umbrella code of the reset class, which every initiator knows. The
    /// more specific SCSI BUS RESET OCCURRED (29/02) names a bus iSCSI does not have, and
    /// libiscsi's conformance helpers recognise only 29/00 after a target reset.
    pub fn reset_all(&self, by: &Nexus) {
        tracing::info!(target = %self.name, initiator = %by.initiator_port, "target reset");
        for lu in self.luns() {
            reset(&lu, Sense::power_on_reset());
        }
    }

    /// The I_T nexus went away (session closed or failed). Its unit attention state is
    /// forgotten, which keeps the per-unit maps bounded by live sessions: if the same nexus
    /// returns, its first command reports POWER ON, RESET, OR BUS DEVICE RESET OCCURRED
    /// (29/00) rather than SAM-5 §6.3.4's I_T NEXUS LOSS OCCURRED (29/07); both are reset
    /// class and initiators handle them alike. An SPC-2 reservation it held is released;
    /// persistent registrations stay. Its prevention of medium removal ends (SBC-4 §5.15).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for lu in self.luns() {
            lu.unit_attentions().forget(nexus);
            lu.reservations().nexus_lost(nexus);
            lu.prevent_medium_removal(nexus, false);
        }
        self.copy_results.nexus_lost(nexus);
    }
}

/// What a logical unit reset and a hard reset share (SAM-5 §6.3). A removable medium stays
/// where it is: a reset unlocks it (SBC-4 §5.15) but does not load or unload it.
fn reset(lu: &LogicalUnit, sense: Sense) {
    lu.reset_mode_parameters();
    lu.reservations().reset();
    lu.clear_medium_removal_preventions();
    lu.unit_attentions().establish_all(&sense, None);
}

/// The CDB is long enough for its command and the CONTROL byte asks for nothing unsupported.
fn check_cdb(cdb: &[u8], info: &CommandInfo) -> Result<(), Sense> {
    cdb::require_len(cdb, info.cdb_len())?;
    cdb::check_control_byte(cdb, info.cdb_len())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::scsi::Readiness;
    use crate::scsi::{ScsiStatus, TaskAttr};
    use crate::storage::{BlockBackend, IoFuture, MemoryBackend};

    const TARGET: &str = "iqn.2026-01.org.example:disk0";
    const BLOCK: u32 = 512;
    const BLOCKS: u64 = 2048;

    fn nexus(name: &str) -> Arc<Nexus> {
        Arc::new(Nexus {
            initiator_port: Arc::from(format!("iqn.1993-08.org.debian:01:{name},i,0x23d000000001")),
            target_port: Arc::from(format!("{TARGET},t,0x0001")),
            relative_port: 1,
        })
    }

    fn memory_lu(lun: u64) -> Arc<LogicalUnit> {
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, lun),
            BLOCK,
            Some(backend),
            false,
        ))
    }

    fn target_with_lun0() -> TargetDevice {
        let target = TargetDevice::new(TARGET);
        target.add_lun(memory_lu(0));
        target
    }

    fn request(nexus: &Arc<Nexus>, lun: u64, cdb: &[u8], data_out: Bytes) -> ScsiRequest {
        ScsiRequest {
            nexus: Arc::clone(nexus),
            lun,
            cdb: Bytes::copy_from_slice(cdb),
            data_out,
            expected_in: 1 << 20,
            attr: TaskAttr::Simple,
        }
    }

    async fn run(target: &TargetDevice, nexus: &Arc<Nexus>, lun: u64, cdb: &[u8]) -> ScsiResponse {
        target.execute(request(nexus, lun, cdb, Bytes::new())).await
    }

    /// Key, ASC, ASCQ of a CHECK CONDITION in either format.
    fn sense_of(response: &ScsiResponse) -> (u8, u8, u8) {
        assert_eq!(response.status, ScsiStatus::CheckCondition, "{response:?}");
        let s = response.sense.as_ref().expect("sense data");
        match s[0] & 0x7F {
            0x70 => (s[2] & 0x0F, s[12], s[13]),
            0x72 => (s[1] & 0x0F, s[2], s[3]),
            other => panic!("unexpected sense response code {other:#x}"),
        }
    }

    fn assert_good(response: &ScsiResponse) {
        assert_eq!(response.status, ScsiStatus::Good, "{response:?}");
        assert!(response.sense.is_none());
    }

    const TUR: [u8; 6] = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];
    const REQUEST_SENSE: [u8; 6] = [op::REQUEST_SENSE, 0, 0, 0, 252, 0];
    const INQUIRY: [u8; 6] = [op::INQUIRY, 0, 0, 0, 96, 0];
    const REPORT_LUNS: [u8; 12] = [op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];

    fn rw10(opcode: u8, flags: u8, lba: u32, blocks: u16) -> [u8; 10] {
        let mut cdb = [0u8; 10];
        cdb[0] = opcode;
        cdb[1] = flags;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }

    fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }

    /// A nexus that has already consumed its power-on unit attention on LUN 0.
    async fn settled(target: &TargetDevice, name: &str) -> Arc<Nexus> {
        let n = nexus(name);
        let _ = run(target, &n, 0, &TUR).await;
        n
    }

    #[tokio::test]
    async fn first_command_reports_power_on_then_clears() {
        let target = target_with_lun0();
        let n = nexus("a");
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
        assert_good(&run(&target, &n, 0, &TUR).await);
        // Per nexus: another initiator still gets its own.
        let m = nexus("b");
        assert_eq!(
            sense_of(&run(&target, &m, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
    }

    #[tokio::test]
    async fn inquiry_and_report_luns_do_not_report_or_clear_the_ua() {
        let target = target_with_lun0();
        let n = nexus("a");
        assert_good(&run(&target, &n, 0, &INQUIRY).await);
        assert_good(&run(&target, &n, 0, &REPORT_LUNS).await);
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
    }

    #[tokio::test]
    async fn request_sense_returns_the_ua_and_clears_it() {
        let target = target_with_lun0();
        let n = nexus("a");
        let r = run(&target, &n, 0, &REQUEST_SENSE).await;
        assert_good(&r);
        assert_eq!(r.data_in, Sense::power_on_reset().encode_fixed());
        let r = run(&target, &n, 0, &[op::REQUEST_SENSE, 1, 0, 0, 252, 0]).await;
        assert_eq!(r.data_in, Sense::no_sense().encode_descriptor());
        assert_good(&run(&target, &n, 0, &TUR).await);
    }

    #[tokio::test]
    async fn malformed_request_sense_keeps_the_ua() {
        let target = target_with_lun0();
        let n = nexus("a");
        let r = run(&target, &n, 0, &[op::REQUEST_SENSE, 0, 0, 0, 252, 0x04]).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
    }

    #[tokio::test]
    async fn unsupported_opcode_after_the_ua() {
        let target = target_with_lun0();
        let n = nexus("a");
        let unknown = [0xC5, 0, 0, 0, 0, 0];
        assert_eq!(
            sense_of(&run(&target, &n, 0, &unknown).await),
            (0x06, 0x29, 0x00)
        );
        assert_eq!(
            sense_of(&run(&target, &n, 0, &unknown).await),
            (0x05, 0x20, 0x00)
        );
        assert_eq!(
            sense_of(&run(&target, &n, 0, &[]).await),
            (0x05, 0x20, 0x00)
        );
        let bad_sa = [
            op::SERVICE_ACTION_IN_16,
            0x11,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            32,
            0,
            0,
        ];
        assert_eq!(
            sense_of(&run(&target, &n, 0, &bad_sa).await),
            (0x05, 0x24, 0x00)
        );
    }

    #[tokio::test]
    async fn naca_and_short_cdbs_are_invalid_fields() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let r = run(&target, &n, 0, &[op::TEST_UNIT_READY, 0, 0, 0, 0, 0x04]).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        let s = r.sense.unwrap();
        assert_eq!(&s[15..18], &[0xC0 | 0x08 | 2, 0, 5]);
        let r = run(&target, &n, 0, &[op::READ_10, 0, 0]).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    }

    #[tokio::test]
    async fn write_read_round_trip_in_every_size() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let payload: Vec<u8> = (0..4 * BLOCK as usize).map(|i| (i % 251) as u8).collect();
        let payload = Bytes::from(payload);

        let w = target
            .execute(request(
                &n,
                0,
                &rw10(op::WRITE_10, 0x08, 100, 4),
                payload.clone(),
            ))
            .await;
        assert_good(&w);
        assert_eq!(w.data_out_used, 4 * BLOCK);

        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 100, 4)).await;
        assert_good(&r);
        assert_eq!(r.data_in, payload);
        assert_eq!(r.data_out_used, 0);

        let r = run(&target, &n, 0, &rw16(op::READ_16, 101, 1)).await;
        assert_eq!(&r.data_in[..], &payload[BLOCK as usize..2 * BLOCK as usize]);

        let r = run(
            &target,
            &n,
            0,
            &[op::READ_12, 0, 0, 0, 0, 102, 0, 0, 0, 2, 0, 0],
        )
        .await;
        assert_eq!(&r.data_in[..], &payload[2 * BLOCK as usize..]);

        let one = Bytes::from(vec![0xAB; BLOCK as usize]);
        let w = target
            .execute(request(&n, 0, &[op::WRITE_6, 0, 0, 7, 1, 0], one.clone()))
            .await;
        assert_good(&w);
        let r = run(&target, &n, 0, &[op::READ_6, 0, 0, 7, 1, 0]).await;
        assert_eq!(r.data_in, one);

        // READ(6) with length 0 transfers 256 blocks.
        let r = run(&target, &n, 0, &[op::READ_6, 0, 0, 0, 0, 0]).await;
        assert_eq!(r.data_in.len(), 256 * BLOCK as usize);

        // Extra write data is ignored, the used amount reported.
        let w = target
            .execute(request(&n, 0, &rw16(op::WRITE_16, 0, 1), payload.clone()))
            .await;
        assert_good(&w);
        assert_eq!(w.data_out_used, BLOCK);
    }

    #[tokio::test]
    async fn zero_length_transfers_do_no_io_but_check_the_lba() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 5, 0)).await;
        assert_good(&r);
        assert!(r.data_in.is_empty());
        assert_good(&run(&target, &n, 0, &rw10(op::WRITE_10, 0, 5, 0)).await);
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, BLOCKS as u32, 0)).await;
        assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));
    }

    #[tokio::test]
    async fn out_of_range_and_oversized_transfers() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let last = (BLOCKS - 1) as u32;
        assert_good(&run(&target, &n, 0, &rw10(op::READ_10, 0, last, 1)).await);
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, last, 2)).await;
        assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));
        let r = run(&target, &n, 0, &rw16(op::READ_16, u64::MAX, 2)).await;
        assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));

        // A big LU so that only the transfer length is wrong.
        let big = TargetDevice::new(TARGET);
        big.add_lun(Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BLOCK,
            Some(Arc::new(ZeroBackend { size: 1 << 40 })),
            false,
        )));
        let n = settled(&big, "a").await;
        let max_blocks = crate::scsi::MAX_TRANSFER_BYTES / BLOCK;
        let r = run(&big, &n, 0, &rw16(op::READ_16, 0, max_blocks)).await;
        assert_good(&r);
        assert_eq!(r.data_in.len(), crate::scsi::MAX_TRANSFER_BYTES as usize);
        let r = run(&big, &n, 0, &rw16(op::READ_16, 0, max_blocks + 1)).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        assert_eq!(&r.sense.unwrap()[15..18], &[0xC0 | 0x08 | 7, 0, 10]);
    }

    #[tokio::test]
    async fn short_write_data_follows_fcp4() {
        // FCP-4 §9.4.2: the whole blocks received are written, GOOD, and the
        // transport reports the rest as overflow (data_out_used > EDTL).
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let w = target
            .execute(request(
                &n,
                0,
                &rw10(op::WRITE_10, 0, 0, 2),
                Bytes::from(vec![0xFF; BLOCK as usize]),
            ))
            .await;
        assert_good(&w);
        assert_eq!(w.data_out_used, 2 * BLOCK);
        // What the transport needs to count the one block written (metrics).
        assert_eq!(w.block_size, BLOCK);
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 0, 2)).await;
        assert!(r.data_in[..BLOCK as usize].iter().all(|&b| b == 0xFF));
        assert!(r.data_in[BLOCK as usize..].iter().all(|&b| b == 0));
        // A partial block: nothing written, INVALID FIELD IN COMMAND INFORMATION UNIT.
        let w = target
            .execute(request(
                &n,
                0,
                &rw10(op::WRITE_10, 0, 4, 1),
                Bytes::from(vec![0xFF; 200]),
            ))
            .await;
        assert_eq!(sense_of(&w), (0x05, 0x0E, 0x03));
        assert_eq!(w.data_out_used, BLOCK);
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 4, 1)).await;
        assert!(r.data_in.iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn protection_fields_are_refused() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0x20, 0, 1)).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    }

    #[tokio::test]
    async fn read_only_units_refuse_writes() {
        let target = TargetDevice::new(TARGET);
        let backend = Arc::new(MemoryBackend::new(1 << 20));
        target.add_lun(Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BLOCK,
            Some(backend),
            true,
        )));
        let n = settled(&target, "a").await;
        let w = target
            .execute(request(
                &n,
                0,
                &rw10(op::WRITE_10, 0, 0, 1),
                Bytes::from(vec![1; BLOCK as usize]),
            ))
            .await;
        assert_eq!(sense_of(&w), (0x07, 0x27, 0x00));
        assert_good(&run(&target, &n, 0, &rw10(op::READ_10, 0, 0, 1)).await);
        let ms = run(&target, &n, 0, &[op::MODE_SENSE_6, 0x08, 0x3F, 0, 255, 0]).await;
        assert_eq!(ms.data_in[2], 0x90);
    }

    #[tokio::test]
    async fn backend_errors_become_medium_errors() {
        let target = TargetDevice::new(TARGET);
        target.add_lun(Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BLOCK,
            Some(Arc::new(FailingBackend)),
            false,
        )));
        let n = settled(&target, "a").await;
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 3, 1)).await;
        assert_eq!(sense_of(&r), (0x03, 0x11, 0x00));
        let s = r.sense.unwrap();
        assert_eq!(s[0], 0xF0);
        assert_eq!(&s[3..7], &[0, 0, 0, 3]);
        let w = target
            .execute(request(
                &n,
                0,
                &rw10(op::WRITE_10, 0, 0, 1),
                Bytes::from(vec![1; BLOCK as usize]),
            ))
            .await;
        assert_eq!(sense_of(&w), (0x03, 0x0C, 0x00));
        let sync = [op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            sense_of(&run(&target, &n, 0, &sync).await),
            (0x03, 0x0C, 0x00)
        );
    }

    #[tokio::test]
    async fn synchronize_cache_checks_the_range() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        assert_good(
            &run(
                &target,
                &n,
                0,
                &[op::SYNCHRONIZE_CACHE_10, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            )
            .await,
        );
        let mut c16 = rw16(op::SYNCHRONIZE_CACHE_16, BLOCKS - 1, 1);
        assert_good(&run(&target, &n, 0, &c16).await);
        c16 = rw16(op::SYNCHRONIZE_CACHE_16, BLOCKS - 1, 2);
        assert_eq!(
            sense_of(&run(&target, &n, 0, &c16).await),
            (0x05, 0x21, 0x00)
        );
    }

    #[tokio::test]
    async fn read_capacity_small_and_huge() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let r = run(
            &target,
            &n,
            0,
            &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
        .await;
        assert_eq!(&r.data_in[..], &[0, 0, 0x07, 0xFF, 0, 0, 0x02, 0]);

        let huge = TargetDevice::new(TARGET);
        let blocks: u64 = (1 << 32) + 10;
        huge.add_lun(Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            4096,
            Some(Arc::new(ZeroBackend {
                size: blocks * 4096 + 17,
            })),
            false,
        )));
        let n = settled(&huge, "a").await;
        let r = run(
            &huge,
            &n,
            0,
            &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
        .await;
        assert_eq!(&r.data_in[..], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x10, 0]);
        let mut rc16 = [0u8; 16];
        rc16[0] = op::SERVICE_ACTION_IN_16;
        rc16[1] = op::SA_READ_CAPACITY_16;
        rc16[13] = 32;
        let r = run(&huge, &n, 0, &rc16).await;
        assert_good(&r);
        assert_eq!(r.data_in.len(), 32);
        assert_eq!(&r.data_in[..8], &(blocks - 1).to_be_bytes());
        assert_eq!(&r.data_in[8..12], &4096u32.to_be_bytes());
        rc16[13] = 12;
        assert_eq!(run(&huge, &n, 0, &rc16).await.data_in.len(), 12);
        // The last block is readable, the one after is not.
        let r = run(&huge, &n, 0, &rw16(op::READ_16, blocks - 1, 1)).await;
        assert_eq!(r.data_in.len(), 4096);
        let r = run(&huge, &n, 0, &rw16(op::READ_16, blocks, 1)).await;
        assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));
    }

    #[tokio::test]
    async fn not_ready_until_set_ready() {
        let target = TargetDevice::new(TARGET);
        let lu = Arc::new(LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BLOCK,
            None,
            false,
        ));
        target.add_lun(Arc::clone(&lu));
        let n = settled(&target, "a").await;
        assert_eq!(lu.readiness(), Readiness::BecomingReady);
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x02, 0x04, 0x01)
        );
        let rc10 = [op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            sense_of(&run(&target, &n, 0, &rc10).await),
            (0x02, 0x04, 0x01)
        );
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, 0, 1)).await;
        assert_eq!(sense_of(&r), (0x02, 0x04, 0x01));
        assert_good(&run(&target, &n, 0, &INQUIRY).await);
        assert_good(&run(&target, &n, 0, &REPORT_LUNS).await);
        let r = run(&target, &n, 0, &REQUEST_SENSE).await;
        assert_eq!(r.data_in, Sense::not_ready_becoming_ready().encode_fixed());
        let ms = run(&target, &n, 0, &[op::MODE_SENSE_6, 0, 0x08, 0, 255, 0]).await;
        assert_good(&ms);
        assert_eq!(&ms.data_in[4..12], &[0, 0, 0, 0, 0, 0, 2, 0]);

        lu.set_ready(Arc::new(MemoryBackend::new(1 << 20)));
        // The capacity went from nothing to 1 MiB: the nexus hears about it once.
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x2A, 0x09)
        );
        assert_good(&run(&target, &n, 0, &TUR).await);
        let r = run(&target, &n, 0, &rc10).await;
        assert_eq!(&r.data_in[..4], &[0, 0, 0x07, 0xFF]);

        lu.set_offline();
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x02, 0x04, 0x03)
        );
        assert!(lu.flush().await.is_ok());
    }

    #[tokio::test]
    async fn missing_lun_behaviour() {
        let target = target_with_lun0();
        let n = nexus("a");
        let r = run(&target, &n, 9, &INQUIRY).await;
        assert_good(&r);
        assert_eq!(r.data_in[0], 0x7F);
        assert_eq!(&r.data_in[8..16], b"KEEL    ");
        let r = run(&target, &n, 9, &REPORT_LUNS).await;
        assert_good(&r);
        assert_eq!(
            &r.data_in[..],
            &[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let r = run(&target, &n, 9, &REQUEST_SENSE).await;
        assert_good(&r);
        assert_eq!(r.data_in, Sense::lun_not_supported().encode_fixed());
        assert_eq!(
            sense_of(&run(&target, &n, 9, &TUR).await),
            (0x05, 0x25, 0x00)
        );
        let r = run(&target, &n, 9, &rw10(op::READ_10, 0, 0, 1)).await;
        assert_eq!(sense_of(&r), (0x05, 0x25, 0x00));
        let r = run(
            &target,
            &n,
            9,
            &[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        )
        .await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        // LUN 0 still reports its power-on UA: nothing above touched it.
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
    }

    #[tokio::test]
    async fn report_luns_lists_sorted_luns_with_flat_addressing() {
        let target = target_with_lun0();
        target.add_lun(memory_lu(300));
        target.add_lun(memory_lu(2));
        target.add_lun(memory_lu(MAX_LUN + 1));
        let n = nexus("a");
        let r = run(&target, &n, 0, &REPORT_LUNS).await;
        assert_eq!(&r.data_in[..8], &[0, 0, 0, 24, 0, 0, 0, 0]);
        assert_eq!(&r.data_in[8..10], &[0, 0]);
        assert_eq!(&r.data_in[16..18], &[0, 2]);
        assert_eq!(&r.data_in[24..26], &[0x41, 0x2C]);
        let luns: Vec<u64> = target.luns().iter().map(|lu| lu.lun()).collect();
        assert_eq!(luns, vec![0, 2, 300]);
    }

    #[tokio::test]
    async fn inventory_changes_raise_reported_luns_changed() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        target.add_lun(memory_lu(1));
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x3F, 0x0E)
        );
        assert_good(&run(&target, &n, 0, &TUR).await);
        // The new unit reports power-on, not the inventory change.
        assert_eq!(
            sense_of(&run(&target, &n, 1, &TUR).await),
            (0x06, 0x29, 0x00)
        );
        assert!(target.remove_lun(1).is_some());
        assert!(target.remove_lun(1).is_none());
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x06, 0x3F, 0x0E)
        );
        assert_eq!(
            sense_of(&run(&target, &n, 1, &TUR).await),
            (0x05, 0x25, 0x00)
        );
    }

    #[tokio::test]
    async fn resets_and_nexus_loss() {
        let target = target_with_lun0();
        let a = settled(&target, "a").await;
        let b = settled(&target, "b").await;
        assert!(!target.reset_lun(5, &a));
        assert!(target.reset_lun(0, &a));
        assert_eq!(
            sense_of(&run(&target, &a, 0, &TUR).await),
            (0x06, 0x29, 0x03)
        );
        assert_eq!(
            sense_of(&run(&target, &b, 0, &TUR).await),
            (0x06, 0x29, 0x03)
        );
        assert_good(&run(&target, &a, 0, &TUR).await);

        target.reset_all(&b);
        assert_eq!(
            sense_of(&run(&target, &a, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
        assert_eq!(
            sense_of(&run(&target, &b, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );

        target.nexus_lost(&a);
        assert_eq!(
            sense_of(&run(&target, &a, 0, &TUR).await),
            (0x06, 0x29, 0x00)
        );
        assert_good(&run(&target, &b, 0, &TUR).await);
    }

    #[tokio::test]
    async fn d_sense_selects_descriptor_format() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let lu = target.lun(0).unwrap();
        lu.set_descriptor_sense(true);
        let r = run(&target, &n, 0, &rw10(op::READ_10, 0, BLOCKS as u32, 1)).await;
        assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);
        assert_eq!(sense_of(&r), (0x05, 0x21, 0x00));
        let ms = run(&target, &n, 0, &[op::MODE_SENSE_6, 0x08, 0x0A, 0, 255, 0]).await;
        assert_eq!(ms.data_in[6] & 0x04, 0x04);
        // A logical unit reset restores the default (fixed format).
        target.reset_lun(0, &n);
        let r = run(&target, &n, 0, &TUR).await;
        assert_eq!(r.sense.as_ref().unwrap()[0], 0x70);
    }

    #[tokio::test]
    async fn inquiry_vpd_through_the_target() {
        let target = target_with_lun0();
        let n = nexus("a");
        let r = run(&target, &n, 0, &[op::INQUIRY, 1, 0x83, 1, 0, 0]).await;
        assert_good(&r);
        assert_eq!(&r.data_in[..2], &[0, 0x83]);
        let r = run(&target, &n, 0, &[op::INQUIRY, 1, 0x00, 0, 5, 0]).await;
        assert_eq!(&r.data_in[..], &[0, 0, 0, 7, 0]);
        let r = run(&target, &n, 0, &[op::INQUIRY, 1, 0x01, 0, 255, 0]).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
        let r = run(&target, &n, 0, &[op::INQUIRY, 0, 0x80, 0, 255, 0]).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    }

    #[tokio::test]
    async fn start_stop_and_prevent_allow_are_accepted() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        assert_good(&run(&target, &n, 0, &[op::START_STOP_UNIT, 0, 0, 0, 1, 0]).await);
        assert_good(
            &run(
                &target,
                &n,
                0,
                &[op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0],
            )
            .await,
        );
    }

    fn removable_target() -> TargetDevice {
        let target = TargetDevice::new(TARGET);
        let backend = Arc::new(MemoryBackend::new(BLOCKS * u64::from(BLOCK)));
        let lu = LogicalUnit::new(LuIdentity::derived(TARGET, 0), BLOCK, Some(backend), false)
            .with_removable_medium(true);
        target.add_lun(Arc::new(lu));
        target
    }

    const EJECT: [u8; 6] = [op::START_STOP_UNIT, 0, 0, 0, 0x02, 0];
    const LOAD: [u8; 6] = [op::START_STOP_UNIT, 0, 0, 0, 0x03, 0];
    const PREVENT: [u8; 6] = [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 1, 0];
    const ALLOW: [u8; 6] = [op::PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0, 0];

    #[tokio::test]
    async fn removable_unit_reports_rmb_and_a_fixed_one_does_not() {
        let n = nexus("a");
        let r = run(&removable_target(), &n, 0, &INQUIRY).await;
        assert_eq!(r.data_in[1], 0x80);
        let r = run(&target_with_lun0(), &n, 0, &INQUIRY).await;
        assert_eq!(r.data_in[1], 0x00);
        // VPD pages have no RMB bit: byte 1 is the page code.
        let r = run(
            &removable_target(),
            &n,
            0,
            &[op::INQUIRY, 1, 0x80, 0, 255, 0],
        )
        .await;
        assert_eq!(r.data_in[1], 0x80);
        let r = run(
            &removable_target(),
            &n,
            0,
            &[op::INQUIRY, 1, 0x83, 0, 255, 0],
        )
        .await;
        assert_eq!(r.data_in[1], 0x83);
    }

    #[tokio::test]
    async fn ejected_medium_refuses_media_access_only() {
        let target = removable_target();
        let n = settled(&target, "a").await;
        assert_good(&run(&target, &n, 0, &EJECT).await);
        let no_medium = (0x02, 0x3A, 0x00);
        assert_eq!(sense_of(&run(&target, &n, 0, &TUR).await), no_medium);
        let read = rw10(op::READ_10, 0, 0, 1);
        assert_eq!(sense_of(&run(&target, &n, 0, &read).await), no_medium);
        let rc10 = [op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sense_of(&run(&target, &n, 0, &rc10).await), no_medium);
        let sync = [op::SYNCHRONIZE_CACHE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(sense_of(&run(&target, &n, 0, &sync).await), no_medium);
        // What describes the unit, and what moves or guards the medium, still works.
        assert_good(&run(&target, &n, 0, &INQUIRY).await);
        assert_good(&run(&target, &n, 0, &REPORT_LUNS).await);
        assert_good(&run(&target, &n, 0, &PREVENT).await);
        assert_good(&run(&target, &n, 0, &ALLOW).await);
        let r = run(&target, &n, 0, &REQUEST_SENSE).await;
        assert_good(&r);
        assert_eq!(
            (r.data_in[2] & 0x0F, r.data_in[12], r.data_in[13]),
            no_medium
        );
        assert_good(&run(&target, &n, 0, &LOAD).await);
        assert_good(&run(&target, &n, 0, &TUR).await);
        assert_good(&run(&target, &n, 0, &read).await);
    }

    #[tokio::test]
    async fn loading_tells_the_other_nexuses_the_medium_may_have_changed() {
        let target = removable_target();
        let a = settled(&target, "a").await;
        let b = settled(&target, "b").await;
        assert_good(&run(&target, &a, 0, &EJECT).await);
        assert_good(&run(&target, &a, 0, &LOAD).await);
        assert_good(&run(&target, &a, 0, &TUR).await);
        assert_eq!(
            sense_of(&run(&target, &b, 0, &TUR).await),
            (0x06, 0x28, 0x00)
        );
        assert_good(&run(&target, &b, 0, &TUR).await);
    }

    #[tokio::test]
    async fn any_nexus_prevention_blocks_the_medium_until_it_ends() {
        let target = removable_target();
        let a = settled(&target, "a").await;
        let b = settled(&target, "b").await;
        let prevented = (0x05, 0x53, 0x02);
        assert_good(&run(&target, &a, 0, &PREVENT).await);
        assert_eq!(sense_of(&run(&target, &a, 0, &EJECT).await), prevented);
        assert_eq!(sense_of(&run(&target, &b, 0, &EJECT).await), prevented);
        assert_good(&run(&target, &b, 0, &TUR).await);
        // b's ALLOW does not end a's prevention; a's does.
        assert_good(&run(&target, &b, 0, &ALLOW).await);
        assert_eq!(sense_of(&run(&target, &b, 0, &EJECT).await), prevented);
        assert_good(&run(&target, &a, 0, &ALLOW).await);
        assert_good(&run(&target, &b, 0, &EJECT).await);
        // A prevention taken with no medium keeps it out.
        assert_good(&run(&target, &a, 0, &PREVENT).await);
        assert_eq!(sense_of(&run(&target, &a, 0, &LOAD).await), prevented);
        assert_good(&run(&target, &a, 0, &ALLOW).await);
        assert_good(&run(&target, &a, 0, &LOAD).await);
    }

    #[tokio::test]
    async fn nexus_loss_and_resets_end_preventions() {
        let prevented = (0x05, 0x53, 0x02);
        type Ending = fn(&TargetDevice, &Nexus);
        let endings: [(&str, Ending); 3] = [
            ("nexus loss", |t, n| t.nexus_lost(n)),
            ("logical unit reset", |t, n| assert!(t.reset_lun(0, n))),
            ("target reset", |t, n| t.reset_all(n)),
        ];
        for (what, end) in endings {
            let target = removable_target();
            let a = settled(&target, "a").await;
            assert_good(&run(&target, &a, 0, &PREVENT).await);
            assert_eq!(sense_of(&run(&target, &a, 0, &EJECT).await), prevented);
            end(&target, &a);
            let a = settled(&target, "a").await;
            assert_good(&run(&target, &a, 0, &TUR).await);
            assert_good(&run(&target, &a, 0, &EJECT).await);
            assert_eq!(
                sense_of(&run(&target, &a, 0, &TUR).await),
                (0x02, 0x3A, 0x00),
                "{what}"
            );
        }
    }

    #[tokio::test]
    async fn a_reset_leaves_an_ejected_medium_ejected() {
        let target = removable_target();
        let a = settled(&target, "a").await;
        assert_good(&run(&target, &a, 0, &EJECT).await);
        target.reset_all(&a);
        assert_eq!(sense_of(&run(&target, &a, 0, &TUR).await).1, 0x29);
        assert_eq!(
            sense_of(&run(&target, &a, 0, &TUR).await),
            (0x02, 0x3A, 0x00)
        );
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_the_medium_loaded() {
        let target = TargetDevice::new(TARGET);
        let lu = LogicalUnit::new(
            LuIdentity::derived(TARGET, 0),
            BLOCK,
            Some(Arc::new(FailingBackend)),
            false,
        )
        .with_removable_medium(true);
        target.add_lun(Arc::new(lu));
        let n = settled(&target, "a").await;
        assert_eq!(
            sense_of(&run(&target, &n, 0, &EJECT).await),
            (0x03, 0x0C, 0x00)
        );
        assert_good(&run(&target, &n, 0, &TUR).await);
        // NO_FLUSH=1: the initiator accepts losing cached data.
        let eject_no_flush = [op::START_STOP_UNIT, 0, 0, 0, 0x06, 0];
        assert_good(&run(&target, &n, 0, &eject_no_flush).await);
        assert_eq!(
            sense_of(&run(&target, &n, 0, &TUR).await),
            (0x02, 0x3A, 0x00)
        );
    }

    #[tokio::test]
    async fn fixed_unit_ignores_eject_and_prevent() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        assert_good(&run(&target, &n, 0, &PREVENT).await);
        assert_good(&run(&target, &n, 0, &EJECT).await);
        assert_good(&run(&target, &n, 0, &TUR).await);
    }

    fn mode_select6(list: &[u8]) -> [u8; 6] {
        [op::MODE_SELECT_6, 0x10, 0, 0, list.len() as u8, 0]
    }

    /// The control page as MODE SENSE(6) returns it (DBD), and the whole list for MODE
    /// SELECT(6) that sends it back with `swp`/`d_sense`.
    async fn control_select_list(target: &TargetDevice, n: &Arc<Nexus>, swp: bool) -> Vec<u8> {
        let ms = run(target, n, 0, &[op::MODE_SENSE_6, 0x08, 0x0A, 0, 255, 0]).await;
        assert_good(&ms);
        let mut list = vec![0, 0, 0, 0];
        list.extend_from_slice(&ms.data_in[4..]);
        if swp {
            list[8] |= 0x08;
        } else {
            list[8] &= !0x08;
        }
        list
    }

    #[tokio::test]
    async fn mode_select_swp_write_protects_and_tells_the_others() {
        let target = target_with_lun0();
        let a = settled(&target, "a").await;
        let b = settled(&target, "b").await;
        let list = control_select_list(&target, &a, true).await;
        let r = target
            .execute(request(
                &a,
                0,
                &mode_select6(&list),
                Bytes::from(list.clone()),
            ))
            .await;
        assert_good(&r);
        assert_eq!(r.data_out_used, list.len() as u32);
        // The issuer sees no unit attention; the other nexus gets MODE PARAMETERS CHANGED.
        assert_good(&run(&target, &a, 0, &TUR).await);
        assert_eq!(
            sense_of(&run(&target, &b, 0, &TUR).await),
            (0x06, 0x2A, 0x01)
        );
        // Reads work, writes are refused, MODE SENSE shows WP and SWP.
        assert_good(&run(&target, &a, 0, &rw10(op::READ_10, 0, 0, 1)).await);
        let w = target
            .execute(request(
                &a,
                0,
                &rw10(op::WRITE_10, 0, 0, 1),
                Bytes::from(vec![0; 512]),
            ))
            .await;
        assert_eq!(sense_of(&w), (0x07, 0x27, 0x00));
        let ms = run(&target, &a, 0, &[op::MODE_SENSE_6, 0x08, 0x0A, 0, 255, 0]).await;
        assert_eq!((ms.data_in[2] & 0x80, ms.data_in[8] & 0x08), (0x80, 0x08));
        // Sending the same page again changes nothing and raises nothing.
        let same = control_select_list(&target, &a, true).await;
        let r = target
            .execute(request(
                &b,
                0,
                &mode_select6(&same),
                Bytes::from(same.clone()),
            ))
            .await;
        assert_good(&r);
        assert_good(&run(&target, &a, 0, &TUR).await);
        // Clearing SWP restores writes; a LUN reset would too.
        let clear = control_select_list(&target, &a, false).await;
        let r = target
            .execute(request(
                &a,
                0,
                &mode_select6(&clear),
                Bytes::from(clear.clone()),
            ))
            .await;
        assert_good(&r);
        let w = target
            .execute(request(
                &a,
                0,
                &rw10(op::WRITE_10, 0, 0, 1),
                Bytes::from(vec![0; 512]),
            ))
            .await;
        assert_good(&w);
    }

    #[tokio::test]
    async fn mode_select_errors_through_the_target() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let mut list = control_select_list(&target, &n, false).await;
        list[9] = 0; // TAS is not changeable
        let r = target
            .execute(request(
                &n,
                0,
                &mode_select6(&list),
                Bytes::from(list.clone()),
            ))
            .await;
        assert_eq!(sense_of(&r), (0x05, 0x26, 0x00));
        let sense = r.sense.as_ref().unwrap();
        assert_eq!(&sense[15..18], &[0x80 | 0x08 | 6, 0, 9]);
        let mut sp = mode_select6(&list);
        sp[1] |= 0x01;
        let r = target.execute(request(&n, 0, &sp, Bytes::from(list))).await;
        assert_eq!(sense_of(&r), (0x05, 0x24, 0x00));
    }

    #[tokio::test]
    async fn maintenance_in_commands_through_the_target() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let mut rsoc = [0u8; 12];
        rsoc[0] = op::MAINTENANCE_IN;
        rsoc[1] = op::SA_REPORT_SUPPORTED_OPCODES;
        rsoc[8] = 4;
        let r = run(&target, &n, 0, &rsoc).await;
        assert_good(&r);
        let commands = table::supported_commands().len();
        assert_eq!(r.data_in.len(), 4 + 8 * commands);
        rsoc[8] = 0;
        rsoc[9] = 255;
        let mut rtpg = rsoc;
        rtpg[1] = op::SA_REPORT_TARGET_PORT_GROUPS;
        let r = run(&target, &n, 0, &rtpg).await;
        assert_eq!(
            &r.data_in[..],
            &[0, 0, 0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]
        );
        let mut tmf = rsoc;
        tmf[1] = op::SA_REPORT_SUPPORTED_TMFS;
        assert_eq!(
            &run(&target, &n, 0, &tmf).await.data_in[..],
            &[0xDA, 0, 0, 0]
        );
        let mut bad = rsoc;
        bad[1] = 0x05;
        assert_eq!(
            sense_of(&run(&target, &n, 0, &bad).await),
            (0x05, 0x24, 0x00)
        );
        let r = run(&target, &n, 0, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 32, 0]).await;
        assert_eq!(&r.data_in[..], &[0, 0x18, 0, 0]);
        let r = run(&target, &n, 0, &[0x4D, 0, 0, 0, 0, 0, 0, 0, 64, 0]).await;
        assert_eq!(&r.data_in[..], &[0, 0, 0, 1, 0]);
        let r = run(&target, &n, 0, &[op::INQUIRY, 0, 0, 0, 96, 0]).await;
        assert_eq!(r.data_in[5] & 0x30, 0x10, "TPGS = 01b");
    }

    #[tokio::test]
    async fn reset_restores_mode_defaults() {
        let target = target_with_lun0();
        let n = settled(&target, "a").await;
        let lu = target.lun(0).unwrap();
        lu.set_mode_values(crate::scsi::ModeValues {
            wce: false,
            d_sense: true,
            swp: true,
        });
        assert!(lu.is_read_only());
        target.reset_lun(0, &n);
        assert_eq!(lu.mode_values(), crate::scsi::ModeValues::DEFAULT);
        assert!(!lu.is_read_only());
    }

    /// Reports a huge size and reads zeros: capacity tests beyond 2^32 blocks.
    #[derive(Debug)]
    struct ZeroBackend {
        size: u64,
    }

    impl BlockBackend for ZeroBackend {
        fn size_bytes(&self) -> u64 {
            self.size
        }
        fn read_at(&self, _offset: u64, len: usize) -> IoFuture<'_, Bytes> {
            Box::pin(async move { Ok(Bytes::from(vec![0; len])) })
        }
        fn write_at(&self, _offset: u64, _data: Bytes, _fua: bool) -> IoFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            Box::pin(async { Ok(()) })
        }
        fn describe(&self) -> String {
            "zeros".to_string()
        }
    }

    /// Fails every operation.
    #[derive(Debug)]
    struct FailingBackend;

    fn io_error() -> std::io::Error {
        std::io::Error::other("injected failure")
    }

    impl BlockBackend for FailingBackend {
        fn size_bytes(&self) -> u64 {
            1 << 20
        }
        fn read_at(&self, _offset: u64, _len: usize) -> IoFuture<'_, Bytes> {
            Box::pin(async { Err(io_error()) })
        }
        fn write_at(&self, _offset: u64, _data: Bytes, _fua: bool) -> IoFuture<'_, ()> {
            Box::pin(async { Err(io_error()) })
        }
        fn flush(&self) -> IoFuture<'_, ()> {
            Box::pin(async { Err(io_error()) })
        }
        fn describe(&self) -> String {
            "failing".to_string()
        }
    }

    const INTERESTING_OPCODES: [u8; 21] = [
        op::TEST_UNIT_READY,
        op::REQUEST_SENSE,
        op::READ_6,
        op::WRITE_6,
        op::INQUIRY,
        op::MODE_SENSE_6,
        op::START_STOP_UNIT,
        op::PREVENT_ALLOW_MEDIUM_REMOVAL,
        op::READ_CAPACITY_10,
        op::READ_10,
        op::WRITE_10,
        op::SYNCHRONIZE_CACHE_10,
        op::MODE_SENSE_10,
        op::READ_16,
        op::WRITE_16,
        op::SYNCHRONIZE_CACHE_16,
        op::SERVICE_ACTION_IN_16,
        op::REPORT_LUNS,
        op::READ_12,
        op::WRITE_12,
        0x7F,
    ];

    /// Makes a random CDB likely to get past the generic checks: CONTROL byte without
    /// NACA/LINK, no protection bits, small LBAs and transfer lengths.
    fn tame_cdb(cdb: &mut [u8]) {
        let Some(len) = cdb.first().and_then(|&op| cdb::cdb_length(op)) else {
            return;
        };
        if let Some(control) = cdb.get_mut(len - 1) {
            *control &= !0x05;
        }
        if let Some(flags) = cdb.get_mut(1) {
            *flags &= 0x1F;
        }
        let zeroed = match len {
            16 => 2..12,
            10 | 12 => 2..5,
            _ => 2..2,
        };
        for at in zeroed {
            if let Some(b) = cdb.get_mut(at) {
                *b = 0;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_cdbs_never_panic(
            opcode in prop_oneof![
                1 => any::<u8>(),
                3 => proptest::sample::select(INTERESTING_OPCODES.to_vec())
            ],
            rest in proptest::collection::vec(any::<u8>(), 0..32),
            empty in proptest::bool::weighted(0.02),
            lun in proptest::sample::select(vec![0u64, 1, 7, 300]),
            data_len in 0usize..9000,
            tame in any::<bool>(),
            settle in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let target = TargetDevice::new(TARGET);
            // A small medium keeps random reads cheap; LUN 1 is not ready.
            target.add_lun(Arc::new(LogicalUnit::new(
                LuIdentity::derived(TARGET, 0),
                BLOCK,
                Some(Arc::new(MemoryBackend::new(64 * 1024))),
                false,
            )));
            target.add_lun(Arc::new(LogicalUnit::new(LuIdentity::derived(TARGET, 1), 4096, None, false)));
            // LUN 300 has a removable medium: random START STOP UNITs eject and load it.
            target.add_lun(Arc::new(LogicalUnit::new(
                LuIdentity::derived(TARGET, 300),
                BLOCK,
                Some(Arc::new(MemoryBackend::new(64 * 1024))),
                false,
            ).with_removable_medium(true)));
            let mut cdb = Vec::with_capacity(rest.len() + 1);
            if !empty {
                cdb.push(opcode);
                cdb.extend_from_slice(&rest);
            }
            if tame {
                tame_cdb(&mut cdb);
            }
            let n = nexus("fuzz");
            let req = request(&n, lun, &cdb, Bytes::from(vec![0x5A; data_len]));
            if settle {
                let _ = runtime.block_on(run(&target, &n, lun, &TUR));
            }
            for _ in 0..2 {
                let response = runtime.block_on(target.execute(req.clone()));
                match response.status {
                    ScsiStatus::Good => prop_assert!(response.sense.is_none()),
                    ScsiStatus::ReservationConflict => prop_assert!(response.sense.is_none()),
                    ScsiStatus::CheckCondition => {
                        let sense = response.sense.as_ref().expect("sense with CHECK CONDITION");
                        prop_assert!(sense.len() >= 8);
                        prop_assert!(response.data_in.is_empty());
                    }
                    other => prop_assert!(false, "unexpected status {:?}", other),
                }
                prop_assert!(response.data_in.len() <= crate::scsi::MAX_TRANSFER_BYTES as usize);
            }
        }
    }
}
