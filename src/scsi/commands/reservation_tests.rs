//! Reservations through the target's dispatch: conflicts, unit attentions, SPC-2
//! RESERVE/RELEASE, resets, nexus loss and the store.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::persistent_reservations as pr;
use crate::scsi::opcodes::op;
use crate::scsi::unit::lu::{LogicalUnit, LuIdentity};
use crate::scsi::unit::pr_state::{PrNotice, PrState};
use crate::scsi::unit::reservation_store::{FileReservationStore, ReservationStore};
use crate::scsi::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TargetDevice, TaskAttr};
use crate::storage::{IoFuture, MemoryBackend};

const TARGET: &str = "iqn.2026-01.org.example:disk0";

fn nexus(name: &str) -> Arc<Nexus> {
    Arc::new(Nexus {
        initiator_port: Arc::from(format!("iqn.1993-08.org.debian:01:{name},i,0x23d000000001")),
        target_port: Arc::from(format!("{TARGET},t,0x0001")),
        relative_port: 1,
    })
}

fn target_with(store: Option<Arc<dyn ReservationStore>>) -> TargetDevice {
    let lu = LogicalUnit::new(
        LuIdentity::derived(TARGET, 0),
        512,
        Some(Arc::new(MemoryBackend::new(1 << 20))),
        false,
    );
    if let Some(store) = store {
        lu.set_reservation_store(store).unwrap();
    }
    let target = TargetDevice::new(TARGET);
    target.add_lun(Arc::new(lu));
    target
}

async fn run(target: &TargetDevice, n: &Arc<Nexus>, cdb: &[u8], data: &[u8]) -> ScsiResponse {
    target
        .execute(ScsiRequest {
            nexus: Arc::clone(n),
            lun: 0,
            cdb: Bytes::copy_from_slice(cdb),
            data_out: Bytes::copy_from_slice(data),
            expected_in: 1 << 16,
            attr: TaskAttr::Simple,
        })
        .await
}

fn status(r: &ScsiResponse) -> ScsiStatus {
    r.status
}

fn sense_of(r: &ScsiResponse) -> (u8, u8, u8) {
    assert_eq!(r.status, ScsiStatus::CheckCondition, "{r:?}");
    let s = r.sense.as_ref().unwrap();
    (s[2] & 0x0F, s[12], s[13])
}

/// A nexus past its power-on unit attention.
async fn settled(target: &TargetDevice, name: &str) -> Arc<Nexus> {
    let n = nexus(name);
    let _ = run(target, &n, &[0; 6], &[]).await;
    n
}

fn prout_cdb(sa: u8, type_code: u8, len: u32) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = op::PERSISTENT_RESERVE_OUT;
    cdb[1] = sa;
    cdb[2] = type_code;
    cdb[5..9].copy_from_slice(&len.to_be_bytes());
    cdb
}

fn params(key: u64, sark: u64, flags: u8) -> [u8; 24] {
    let mut data = [0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sark.to_be_bytes());
    data[20] = flags;
    data
}

async fn prout(
    t: &TargetDevice,
    n: &Arc<Nexus>,
    sa: u8,
    type_code: u8,
    key: u64,
    sark: u64,
    flags: u8,
) -> ScsiResponse {
    run(
        t,
        n,
        &prout_cdb(sa, type_code, 24),
        &params(key, sark, flags),
    )
    .await
}

async fn read_keys(t: &TargetDevice, n: &Arc<Nexus>) -> (u32, Vec<u64>) {
    let r = run(
        t,
        n,
        &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 4, 0, 0],
        &[],
    )
    .await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    let d = &r.data_in;
    let generation = u32::from_be_bytes(d[..4].try_into().unwrap());
    let keys = d[8..]
        .chunks(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
        .collect();
    (generation, keys)
}

const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0];
const RESERVE6: [u8; 6] = [op::RESERVE_6, 0, 0, 0, 0, 0];
const RELEASE6: [u8; 6] = [op::RELEASE_6, 0, 0, 0, 0, 0];
const TUR: [u8; 6] = [0; 6];

#[tokio::test]
async fn exclusive_access_conflicts_for_others_until_released() {
    let t = target_with(None);
    let (a, b) = (settled(&t, "a").await, settled(&t, "b").await);
    assert_eq!(
        prout(&t, &a, 0, 0, 0, 0xA, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(
        prout(&t, &a, 1, 3, 0xA, 0, 0).await.status,
        ScsiStatus::Good
    );
    let block = vec![0u8; 512];
    assert_eq!(
        status(&run(&t, &a, &WRITE10, &block).await),
        ScsiStatus::Good
    );
    assert_eq!(
        status(&run(&t, &b, &READ10, &[]).await),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&run(&t, &b, &WRITE10, &block).await),
        ScsiStatus::ReservationConflict
    );
    // TEST UNIT READY, INQUIRY and PERSISTENT RESERVE IN still work for b.
    assert_eq!(status(&run(&t, &b, &TUR, &[]).await), ScsiStatus::Good);
    assert_eq!(read_keys(&t, &b).await.1, vec![0xA]);
    // A PROUT needing a registration conflicts, REGISTER itself works.
    assert_eq!(
        prout(&t, &b, 1, 3, 0xB, 0, 0).await.status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        prout(&t, &b, 0, 0, 0, 0xB, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(
        prout(&t, &a, 2, 3, 0xA, 0, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(status(&run(&t, &b, &READ10, &[]).await), ScsiStatus::Good);
    // PROUT's parameter list counts as used write data.
    let r = prout(&t, &a, 0, 0, 0xA, 0xA, 0).await;
    assert_eq!(r.data_out_used, 24);
}

#[tokio::test]
async fn preempt_raises_unit_attentions_for_the_preempted() {
    let t = target_with(None);
    let (a, b) = (settled(&t, "a").await, settled(&t, "b").await);
    prout(&t, &a, 0, 0, 0, 0xA, 0).await;
    prout(&t, &b, 0, 0, 0, 0xB, 0).await;
    prout(&t, &a, 1, 1, 0xA, 0, 0).await;
    let (generation, _) = read_keys(&t, &a).await;
    let r = prout(&t, &b, pr::prout_sa::PREEMPT_AND_ABORT, 3, 0xB, 0xA, 0).await;
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(sense_of(&run(&t, &a, &TUR, &[]).await), (6, 0x2A, 0x05));
    // TAS = 1: a's aborted tasks end with TASK ABORTED (see tests/reservations.rs), so no
    // COMMANDS CLEARED BY ANOTHER INITIATOR unit attention follows (SAM-5 §5.6).
    assert_eq!(status(&run(&t, &a, &TUR, &[]).await), ScsiStatus::Good);
    // The preempting nexus hears nothing.
    assert_eq!(status(&run(&t, &b, &TUR, &[]).await), ScsiStatus::Good);
    assert_eq!(read_keys(&t, &b).await, (generation + 1, vec![0xB]));
    assert_eq!(
        status(&run(&t, &a, &READ10, &[]).await),
        ScsiStatus::ReservationConflict
    );
}

#[tokio::test]
async fn clear_tells_the_others_reservations_preempted() {
    let t = target_with(None);
    let (a, b) = (settled(&t, "a").await, settled(&t, "b").await);
    prout(&t, &a, 0, 0, 0, 0xA, 0).await;
    prout(&t, &b, 0, 0, 0, 0xB, 0).await;
    assert_eq!(
        prout(&t, &a, 3, 0, 0xA, 0, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(sense_of(&run(&t, &b, &TUR, &[]).await), (6, 0x2A, 0x03));
    assert_eq!(status(&run(&t, &a, &TUR, &[]).await), ScsiStatus::Good);
    assert!(read_keys(&t, &a).await.1.is_empty());
}

#[tokio::test]
async fn prin_service_actions_and_truncation() {
    let t = target_with(None);
    let a = settled(&t, "a").await;
    prout(&t, &a, 0, 0, 0, 0xA, 0).await;
    for sa in 0..4u8 {
        let r = run(
            &t,
            &a,
            &[op::PERSISTENT_RESERVE_IN, sa, 0, 0, 0, 0, 0, 0x40, 0, 0],
            &[],
        )
        .await;
        assert_eq!(r.status, ScsiStatus::Good);
    }
    for sa in 4..0x20u8 {
        let r = run(
            &t,
            &a,
            &[op::PERSISTENT_RESERVE_IN, sa, 0, 0, 0, 0, 0, 0x40, 0, 0],
            &[],
        )
        .await;
        assert_eq!(sense_of(&r), (5, 0x24, 0));
    }
    // Allocation length 8: the header only, ADDITIONAL LENGTH still counts the key.
    let r = run(
        &t,
        &a,
        &[op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 8, 0],
        &[],
    )
    .await;
    assert_eq!(&r.data_in[..], &[0, 0, 0, 1, 0, 0, 0, 8]);
    // Without a store, PTPL_C is clear and APTPL is refused.
    let r = run(
        &t,
        &a,
        &[op::PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0, 8, 0],
        &[],
    )
    .await;
    assert_eq!(r.data_in[2] & 0x01, 0);
    assert_eq!(
        sense_of(&prout(&t, &a, 0, 0, 0xA, 0xA, 0x01).await),
        (5, 0x26, 0)
    );
}

#[tokio::test]
async fn spc2_reserve_release_between_two_initiators() {
    let t = target_with(None);
    let (a, b) = (settled(&t, "a").await, settled(&t, "b").await);
    assert_eq!(status(&run(&t, &a, &RESERVE6, &[]).await), ScsiStatus::Good);
    assert_eq!(status(&run(&t, &a, &RESERVE6, &[]).await), ScsiStatus::Good);
    assert_eq!(
        status(&run(&t, &b, &RESERVE6, &[]).await),
        ScsiStatus::ReservationConflict
    );
    // Another initiator's RELEASE is a no-op.
    assert_eq!(status(&run(&t, &b, &RELEASE6, &[]).await), ScsiStatus::Good);
    let mode_sense = [0x1A, 0, 0x3F, 0, 255, 0];
    assert_eq!(
        status(&run(&t, &a, &mode_sense, &[]).await),
        ScsiStatus::Good
    );
    assert_eq!(
        status(&run(&t, &b, &mode_sense, &[]).await),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&run(&t, &b, &[0x12, 0, 0, 0, 36, 0], &[]).await),
        ScsiStatus::Good
    );
    // PERSISTENT RESERVE IN/OUT conflict for everyone, the holder too.
    let prin = [op::PERSISTENT_RESERVE_IN, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    assert_eq!(
        status(&run(&t, &a, &prin, &[]).await),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        prout(&t, &a, 0, 0, 0, 1, 0).await.status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(status(&run(&t, &a, &RELEASE6, &[]).await), ScsiStatus::Good);
    assert_eq!(status(&run(&t, &b, &RESERVE6, &[]).await), ScsiStatus::Good);
    // RESERVE(10) with 3RDPTY is not supported.
    let third_party = [op::RESERVE_10, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        sense_of(&run(&t, &b, &third_party, &[]).await),
        (5, 0x24, 0)
    );
    let release10 = [op::RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        status(&run(&t, &b, &release10, &[]).await),
        ScsiStatus::Good
    );
    assert_eq!(status(&run(&t, &a, &READ10, &[]).await), ScsiStatus::Good);
}

#[tokio::test]
async fn spc2_reservation_ends_with_resets_and_nexus_loss_not_with_pr_events() {
    let t = target_with(None);
    let (a, b) = (settled(&t, "a").await, settled(&t, "b").await);
    // LOGICAL UNIT RESET.
    run(&t, &a, &RESERVE6, &[]).await;
    t.reset_lun(0, &b);
    let _ = run(&t, &b, &TUR, &[]).await; // the reset UA
    assert_eq!(status(&run(&t, &b, &RESERVE6, &[]).await), ScsiStatus::Good);
    // Target reset.
    t.reset_all(&a);
    let _ = run(&t, &a, &TUR, &[]).await;
    assert_eq!(status(&run(&t, &a, &RESERVE6, &[]).await), ScsiStatus::Good);
    // Nexus loss of someone else does nothing; of the holder releases.
    t.nexus_lost(&b);
    let b = settled(&t, "b").await;
    assert_eq!(
        status(&run(&t, &b, &RESERVE6, &[]).await),
        ScsiStatus::ReservationConflict
    );
    t.nexus_lost(&a);
    assert_eq!(status(&run(&t, &b, &RESERVE6, &[]).await), ScsiStatus::Good);
    // While registrations exist, RESERVE and RELEASE conflict for everyone.
    run(&t, &b, &RELEASE6, &[]).await;
    prout(&t, &b, 0, 0, 0, 0xB, 0).await;
    assert_eq!(
        status(&run(&t, &b, &RESERVE6, &[]).await),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&run(&t, &b, &RELEASE6, &[]).await),
        ScsiStatus::ReservationConflict
    );
    // A persistent reservation survives a LUN reset.
    prout(&t, &b, 1, 3, 0xB, 0, 0).await;
    t.reset_lun(0, &b);
    let a = settled(&t, "a").await;
    assert_eq!(
        status(&run(&t, &a, &READ10, &[]).await),
        ScsiStatus::ReservationConflict
    );
}

fn unit_key() -> String {
    LuIdentity::derived(TARGET, 0)
        .naa
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn aptpl_survives_recreating_the_unit_and_plain_registrations_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = || -> Arc<dyn ReservationStore> { Arc::new(FileReservationStore::new(dir.path())) };
    let file = dir
        .path()
        .join("reservations")
        .join(format!("{}.toml", unit_key()));
    {
        let t = target_with(Some(store()));
        let a = settled(&t, "a").await;
        assert_eq!(
            prout(&t, &a, 0, 0, 0, 0xA, 0x01).await.status,
            ScsiStatus::Good
        );
        assert_eq!(
            prout(&t, &a, 1, 1, 0xA, 0, 0).await.status,
            ScsiStatus::Good
        );
        assert!(file.exists());
        let r = run(
            &t,
            &a,
            &[op::PERSISTENT_RESERVE_IN, 2, 0, 0, 0, 0, 0, 0, 8, 0],
            &[],
        )
        .await;
        assert_eq!((r.data_in[2] & 0x01, r.data_in[3] & 0x01), (1, 1));
    }
    {
        let t = target_with(Some(store()));
        let a = settled(&t, "a").await;
        assert_eq!(read_keys(&t, &a).await, (1, vec![0xA]));
        let b = settled(&t, "b").await;
        assert_eq!(
            status(&run(&t, &b, &WRITE10, &[0; 512]).await),
            ScsiStatus::ReservationConflict
        );
        // Clearing APTPL removes the file: the next incarnation starts empty.
        assert_eq!(
            prout(&t, &a, 0, 0, 0xA, 0xA, 0).await.status,
            ScsiStatus::Good
        );
        assert!(!file.exists());
        assert_eq!(
            prout(&t, &a, 0, 0, 0xA, 0xC, 0).await.status,
            ScsiStatus::Good
        );
    }
    let t = target_with(Some(store()));
    let a = settled(&t, "a").await;
    assert_eq!(read_keys(&t, &a).await, (0, vec![]));
}

/// A store whose saves always fail.
#[derive(Debug)]
struct BrokenStore;

impl ReservationStore for BrokenStore {
    fn load(&self, _unit: &str) -> std::io::Result<Option<PrState>> {
        Ok(None)
    }
    fn save(&self, _unit: &str, _state: Option<PrState>) -> IoFuture<'_, ()> {
        Box::pin(async { Err(std::io::Error::other("disk on fire")) })
    }
}

#[tokio::test]
async fn a_failed_save_answers_check_condition_and_changes_nothing() {
    let t = target_with(Some(Arc::new(BrokenStore)));
    let a = settled(&t, "a").await;
    // Without APTPL nothing is saved, so the broken store does not matter.
    assert_eq!(
        prout(&t, &a, 0, 0, 0, 0xA, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(
        sense_of(&prout(&t, &a, 0, 0, 0xA, 0xB, 0x01).await),
        (4, 0x44, 0)
    );
    assert_eq!(read_keys(&t, &a).await, (1, vec![0xA]));
}

#[test]
fn a_corrupt_file_fails_attaching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path: &Path = dir.path();
    std::fs::create_dir_all(path.join("reservations")).unwrap();
    std::fs::write(
        path.join("reservations")
            .join(format!("{}.toml", unit_key())),
        "nonsense",
    )
    .unwrap();
    let lu = LogicalUnit::new(LuIdentity::derived(TARGET, 0), 512, None, false);
    assert!(
        lu.set_reservation_store(Arc::new(FileReservationStore::new(path)))
            .is_err()
    );
}

/// A store shared by several nodes (what a cluster database is to each of them), which
/// refuses changes while `refusing` is set (a cluster in recovery or without a majority).
#[derive(Debug, Default)]
struct SharedStore {
    saved: std::sync::Mutex<std::collections::HashMap<String, PrState>>,
    notices: std::sync::Mutex<Vec<PrNotice>>,
    refusing: std::sync::atomic::AtomicBool,
}

impl ReservationStore for SharedStore {
    fn load(&self, unit: &str) -> std::io::Result<Option<PrState>> {
        Ok(self.saved.lock().unwrap().get(unit).cloned())
    }
    fn save(&self, unit: &str, state: Option<PrState>) -> IoFuture<'_, ()> {
        let unit = unit.to_owned();
        Box::pin(async move {
            if self.refusing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    "cluster recovering",
                ));
            }
            let mut saved = self.saved.lock().unwrap();
            match state {
                Some(state) => saved.insert(unit, state),
                None => saved.remove(&unit),
            };
            Ok(())
        })
    }
    fn shared(&self) -> bool {
        true
    }
    fn save_change(
        &self,
        unit: &str,
        state: Option<PrState>,
        notices: Vec<PrNotice>,
    ) -> IoFuture<'_, ()> {
        let unit = unit.to_owned();
        Box::pin(async move {
            self.save(&unit, state).await?;
            *self.notices.lock().unwrap() = notices;
            Ok(())
        })
    }
    fn load_change(&self, unit: &str) -> std::io::Result<(Option<PrState>, Vec<PrNotice>)> {
        Ok((self.load(unit)?, self.notices.lock().unwrap().clone()))
    }
}

#[tokio::test]
async fn a_preemption_on_one_node_reaches_the_preempted_nexus_on_another() {
    let store = Arc::new(SharedStore::default());
    let (first, second) = (
        target_with(Some(store.clone())),
        target_with(Some(store.clone())),
    );
    let a = settled(&first, "a").await;
    let b = settled(&second, "b").await;
    assert_eq!(
        prout(&first, &a, 0, 0, 0, 0xA, 0).await.status,
        ScsiStatus::Good
    );
    second
        .lun(0)
        .unwrap()
        .reload_reservations(true)
        .await
        .unwrap();
    assert_eq!(
        prout(&second, &b, 0, 0, 0, 0xB, 0).await.status,
        ScsiStatus::Good
    );
    first
        .lun(0)
        .unwrap()
        .reload_reservations(true)
        .await
        .unwrap();
    // A preempts B's registration on the first node (PREEMPT, SPC-4 §5.13.11.2.2).
    assert_eq!(
        prout(&first, &a, 4, 5, 0xA, 0xB, 0).await.status,
        ScsiStatus::Good
    );
    // The second node learns of it: B's next command reports REGISTRATIONS PREEMPTED.
    second
        .lun(0)
        .unwrap()
        .reload_reservations(true)
        .await
        .unwrap();
    assert_eq!(
        sense_of(&run(&second, &b, &TUR, &[]).await),
        (6, 0x2A, 0x05)
    );
    assert_eq!(read_keys(&second, &b).await.1, vec![0xA]);
    // A takeover reload does not deliver it again.
    second
        .lun(0)
        .unwrap()
        .reload_reservations(false)
        .await
        .unwrap();
    assert_eq!(status(&run(&second, &b, &TUR, &[]).await), ScsiStatus::Good);
}

#[tokio::test]
async fn a_shared_store_carries_every_change_to_the_node_that_reloads() {
    let store = Arc::new(SharedStore::default());
    let first = target_with(Some(store.clone()));
    let second = target_with(Some(store.clone()));
    let a = settled(&first, "a").await;
    // No APTPL: a shared store still gets the registration and the reservation (type 5,
    // WRITE EXCLUSIVE - REGISTRANTS ONLY).
    assert_eq!(
        prout(&first, &a, 0, 0, 0, 0xA, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(
        prout(&first, &a, 1, 5, 0xA, 0, 0).await.status,
        ScsiStatus::Good
    );
    assert_eq!(store.saved.lock().unwrap().len(), 1);
    // The second node built its unit before the change: it knows nothing until it reloads.
    let a_there = settled(&second, "a").await;
    assert_eq!(read_keys(&second, &a_there).await, (0, vec![]));
    let lu = second.lun(0).unwrap();
    assert!(lu.reservations().reload().await.unwrap());
    // PRgeneration counts the registration, not the reservation (SPC-4 §6.16.2).
    assert_eq!(read_keys(&second, &a_there).await, (1, vec![0xA]));
    let stranger = settled(&second, "c").await;
    assert_eq!(
        status(&run(&second, &stranger, &WRITE10, &[0; 512]).await),
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        status(&run(&second, &a_there, &WRITE10, &[0; 512]).await),
        ScsiStatus::Good
    );
}

#[tokio::test]
async fn a_store_that_refuses_for_now_answers_busy_and_changes_nothing() {
    let store = Arc::new(SharedStore::default());
    let t = target_with(Some(store.clone()));
    let a = settled(&t, "a").await;
    assert_eq!(
        prout(&t, &a, 0, 0, 0, 0xA, 0).await.status,
        ScsiStatus::Good
    );
    store
        .refusing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        prout(&t, &a, 1, 5, 0xA, 0, 0).await.status,
        ScsiStatus::Busy
    );
    let b = settled(&t, "b").await;
    assert_eq!(
        status(&run(&t, &b, &WRITE10, &[0; 512]).await),
        ScsiStatus::Good,
        "the refused reservation was not adopted"
    );
    assert_eq!(read_keys(&t, &a).await, (1, vec![0xA]));
    store
        .refusing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        prout(&t, &a, 1, 5, 0xA, 0, 0).await.status,
        ScsiStatus::Good
    );
}

#[tokio::test]
async fn a_local_store_is_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let t = target_with(Some(Arc::new(FileReservationStore::new(dir.path()))));
    let lu = t.lun(0).unwrap();
    assert!(!lu.reservations().reload().await.unwrap());
}
