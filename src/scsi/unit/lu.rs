//! A logical unit: identity, geometry, medium state, per-nexus unit attentions.
//!
//! The medium (backend) can appear, the unit can go offline, and a removable unit's medium can be
//! unloaded and loaded again, while commands run: the state sits behind a std `RwLock` held only
//! to copy an `Arc` out or to make one transition, never across an await.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::storage::BlockBackend;

use super::atomic_journal::AtomicJournal;
use super::limits::AtomicLimits;
use super::mode_values::ModeValues;
use super::reservation_store::ReservationStore;
use super::reservations::Reservations;
use super::sanitize::SanitizeState;
use super::ua::UnitAttentions;
use crate::scsi::Nexus;
use crate::scsi::sense::{Sense, SenseKey};

/// INQUIRY PRODUCT REVISION LEVEL reported by every logical unit.
pub const PRODUCT_REVISION: &str = "0001";
/// INQUIRY T10 VENDOR IDENTIFICATION.
pub const VENDOR: &str = "KEEL";
/// INQUIRY PRODUCT IDENTIFICATION.
pub const PRODUCT: &str = "VIRTUAL-DISK";
/// IEEE company identifier placed in NAA designators (locally administered value).
pub const NAA_COMPANY_ID: u32 = 0x0A_4B45;

/// What the logical unit tells initiators about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuIdentity {
    pub lun: u64,
    /// iSCSI target IQN, used for identity derivation and VPD 0x83.
    pub target_name: String,
    /// INQUIRY vendor, at most 8 ASCII characters.
    pub vendor: String,
    /// At most 16 characters.
    pub product: String,
    /// At most 4 characters.
    pub revision: String,
    /// VPD 0x80 unit serial number (ASCII).
    pub serial: String,
    /// VPD 0x83 NAA designator (NAA 6, IEEE Registered Extended).
    pub naa: [u8; 16],
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bit. Identities derive from it and must never change between versions, so it
/// is spelled out here rather than borrowed from a hasher whose output may change.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The hash input for `(target_name, lun)` under a domain label, so the serial and the NAA
/// draw independent bits: `label NUL target_name NUL lun(8 bytes big endian)`.
fn identity_hash(label: &str, target_name: &str, lun: u64) -> u64 {
    let mut input = Vec::with_capacity(label.len() + target_name.len() + 10);
    input.extend_from_slice(label.as_bytes());
    input.push(0);
    input.extend_from_slice(target_name.as_bytes());
    input.push(0);
    input.extend_from_slice(&lun.to_be_bytes());
    fnv1a64(&input)
}

/// NAA 6 (IEEE Registered Extended, SPC-4 §7.8.6.6.6): NAA nibble, 24-bit company id, 36-bit
/// vendor specific identifier, 64-bit vendor specific identifier extension.
fn naa_registered_extended(company_id: u32, vendor_specific: u64, extension: u64) -> [u8; 16] {
    // The first 64 bits: 4 NAA + 24 company + 36 vendor specific.
    let head = (0x6u64 << 60)
        | (u64::from(company_id & 0x00FF_FFFF) << 36)
        | (vendor_specific & 0x0000_000F_FFFF_FFFF);
    let mut naa = [0u8; 16];
    naa[..8].copy_from_slice(&head.to_be_bytes());
    naa[8..].copy_from_slice(&extension.to_be_bytes());
    naa
}

impl LuIdentity {
    /// Stable identity derived only from `(target_name, lun)`, so every cluster node presents
    /// the same one. Serial: 16 uppercase hex digits of FNV-1a 64; NAA: company id
    /// [`NAA_COMPANY_ID`], then 36 bits of a second hash and the 64 serial bits.
    pub fn derived(target_name: &str, lun: u64) -> Self {
        let serial_hash = identity_hash("serial", target_name, lun);
        let naa_hash = identity_hash("naa", target_name, lun);
        LuIdentity {
            lun,
            target_name: target_name.to_string(),
            vendor: VENDOR.to_string(),
            product: PRODUCT.to_string(),
            revision: PRODUCT_REVISION.to_string(),
            serial: format!("{serial_hash:016X}"),
            naa: naa_registered_extended(NAA_COMPANY_ID, naa_hash, serial_hash),
        }
    }
}

/// Whether the medium can be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The volume is still being provisioned; initiators should retry.
    BecomingReady,
    /// Taken offline; initiators should give up.
    Offline,
    /// A removable unit whose medium an initiator unloaded (START STOP UNIT with LOEJ=1,
    /// START=0); loading it (LOEJ=1, START=1) makes the unit ready again. The backend stays
    /// attached meanwhile, so a shutdown flush still reaches it.
    NoMedium,
}

impl Readiness {
    /// What a media-access command gets in this state; `None` when ready.
    fn not_ready_sense(self) -> Option<Sense> {
        match self {
            Readiness::Ready => None,
            Readiness::BecomingReady => Some(Sense::not_ready_becoming_ready()),
            Readiness::Offline => Some(Sense::not_ready_manual_intervention()),
            // SPC-4 §4.5.6 / Annex F: 3A/00 is the generic "no medium" condition.
            Readiness::NoMedium => Some(Sense::medium_not_present()),
        }
    }
}

/// Which way START STOP UNIT with LOEJ=1 moves a removable medium (SBC-4 §5.25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediumMove {
    /// START=1: load the medium.
    Load,
    /// START=0: unload (eject) it.
    Unload,
}

#[derive(Debug)]
struct MediumState {
    readiness: Readiness,
    backend: Option<Arc<dyn BlockBackend>>,
    /// The I_T nexuses holding a prevention of medium removal (PREVENT ALLOW MEDIUM REMOVAL,
    /// SBC-4 §5.15). Kept with the readiness so that checking for a prevention and moving the
    /// medium are one transition. Always empty for a non-removable unit.
    preventing: HashSet<Nexus>,
}

/// One logical unit of a [`crate::scsi::TargetDevice`].
#[derive(Debug)]
pub struct LogicalUnit {
    identity: LuIdentity,
    block_size: u32,
    /// Logical blocks per physical block, as a power-of-two exponent (SBC-4 §5.20.2 LOGICAL
    /// BLOCKS PER PHYSICAL BLOCK EXPONENT); the lowest aligned LBA is always 0.
    lbppb_exponent: u8,
    read_only: bool,
    /// INQUIRY RMB: the medium can be unloaded and loaded by START STOP UNIT (virtual media).
    removable: bool,
    medium: RwLock<MediumState>,
    /// D_SENSE of the control mode page: descriptor-format sense for CHECK CONDITION.
    descriptor_sense: AtomicBool,
    unit_attentions: UnitAttentions,
    /// Every task for this unit from every nexus (resets and PREEMPT AND ABORT reach them).
    task_set: Arc<super::task_set::TaskSet>,
    /// Control mode page SWP: software write protect (MODE SELECT).
    software_write_protect: AtomicBool,
    /// Caching mode page WCE: writes may complete from the volatile cache (MODE SELECT).
    write_cache: AtomicBool,
    /// Serializes MODE SELECT's read-modify-write of the mode values.
    mode_lock: Mutex<()>,
    reservations: Reservations,
    /// Write ordering: reads and writes hold it shared, read-modify-write commands (COMPARE AND
    /// WRITE, ORWRITE) and WRITE ATOMIC exclusive, so nothing reads or writes between their
    /// read and their write (SBC-4 §5.3). Tokio's lock is fair: a waiting exclusive holder is
    /// not starved by writers. Commands take it, and `sent_read_order`, only through
    /// `scsi/ordering.rs`, by the class their row in the command table names.
    write_order: tokio::sync::RwLock<()>,
    /// Reads whose data the transport sends from the medium's file after the command has
    /// returned hold this shared until it is sent; WRITE ATOMIC holds it exclusive while it
    /// writes in place (besides `write_order`). A separate lock, so that such a read, which
    /// lasts as long as the network takes, never holds up COMPARE AND WRITE or ORWRITE.
    sent_read_order: Arc<tokio::sync::RwLock<()>>,
    /// Set by the first WRITE ATOMIC: reads are copied from then on, never sent from the
    /// file (pages handed to TCP are still the file's pages until the peer has them; an
    /// atomic write in place could change part of a read on its way).
    atomic_writes_seen: std::sync::atomic::AtomicBool,
    /// The intent journal WRITE ATOMIC needs; without one the unit does not offer it.
    atomic_journal: Option<Arc<AtomicJournal>>,
    /// Idle, sanitizing (SANITIZE, SBC-4 §5.30) or in sanitize failure mode.
    sanitize: SanitizeState,
    /// Told when a command first finds the unit becoming ready: an initiator is waiting for
    /// its medium (a provisioner then moves the volume to the front of its queue).
    demand: DemandHook,
}

/// The hook [`LogicalUnit::on_demand`] installs, fired at most once.
#[derive(Default)]
struct DemandHook {
    hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    fired: AtomicBool,
}

impl std::fmt::Debug for DemandHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemandHook")
            .field("set", &self.hook.get().is_some())
            .field("fired", &self.fired.load(Ordering::Relaxed))
            .finish()
    }
}

impl LogicalUnit {
    /// A unit with `backend`, or becoming ready without one (a volume still being
    /// provisioned).
    ///
    /// # Panics
    /// If `block_size` is not a power of two between 512 and 65536: that is a configuration
    /// error the caller must reject first, and every LBA computation relies on it.
    pub fn new(
        identity: LuIdentity,
        block_size: u32,
        backend: Option<Arc<dyn BlockBackend>>,
        read_only: bool,
    ) -> Self {
        assert!(
            block_size.is_power_of_two() && (512..=65536).contains(&block_size),
            "unsupported logical block size {block_size}"
        );
        let readiness = if backend.is_some() {
            Readiness::Ready
        } else {
            Readiness::BecomingReady
        };
        LogicalUnit {
            identity,
            block_size,
            lbppb_exponent: 0,
            read_only,
            removable: false,
            medium: RwLock::new(MediumState {
                readiness,
                backend,
                preventing: HashSet::new(),
            }),
            descriptor_sense: AtomicBool::new(ModeValues::DEFAULT.d_sense),
            unit_attentions: UnitAttentions::new(),
            task_set: Arc::default(),
            software_write_protect: AtomicBool::new(ModeValues::DEFAULT.swp),
            write_cache: AtomicBool::new(ModeValues::DEFAULT.wce),
            mode_lock: Mutex::new(()),
            reservations: Reservations::new(),
            write_order: tokio::sync::RwLock::new(()),
            sent_read_order: Arc::new(tokio::sync::RwLock::new(())),
            atomic_writes_seen: std::sync::atomic::AtomicBool::new(false),
            atomic_journal: None,
            sanitize: SanitizeState::default(),
            demand: DemandHook::default(),
        }
    }

    /// Paces SANITIZE OVERWRITE to `bytes_per_second` (`None`: as fast as the medium goes), so
    /// a long sanitize leaves the storage it shares with other units some room.
    pub fn with_sanitize_rate(mut self, bytes_per_second: Option<u64>) -> Self {
        self.sanitize = SanitizeState::with_rate(bytes_per_second);
        self
    }

    /// Whether a sanitize operation runs, failed, or neither.
    pub fn sanitize_state(&self) -> &SanitizeState {
        &self.sanitize
    }

    /// Offers WRITE ATOMIC, made crash-atomic by `journal` (which the caller has recovered
    /// before the unit serves anything: [`AtomicJournal::recover`]).
    pub fn with_atomic_journal(mut self, journal: Arc<AtomicJournal>) -> Self {
        self.atomic_journal = Some(journal);
        self
    }

    /// The intent journal, if the unit offers WRITE ATOMIC.
    pub fn atomic_journal(&self) -> Option<&AtomicJournal> {
        self.atomic_journal.as_deref()
    }

    /// Reports `physical_block_size` bytes per physical block.
    ///
    /// # Panics
    /// Unless it is `block_size` times a power of two (at most 2^15): configuration validation
    /// rejects anything else first.
    pub fn with_physical_block_size(mut self, physical_block_size: u32) -> Self {
        let ratio = physical_block_size / self.block_size;
        assert!(
            physical_block_size.is_multiple_of(self.block_size)
                && ratio.is_power_of_two()
                && ratio <= 1 << 15,
            "unsupported physical block size {physical_block_size}"
        );
        self.lbppb_exponent = ratio.trailing_zeros() as u8;
        self
    }

    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT.
    pub fn lbppb_exponent(&self) -> u8 {
        self.lbppb_exponent
    }

    /// Logical blocks per physical block (1 unless configured).
    pub fn logical_blocks_per_physical_block(&self) -> u32 {
        1 << self.lbppb_exponent
    }

    /// Makes the unit's medium removable (or not): INQUIRY reports RMB, START STOP UNIT
    /// unloads and loads it, PREVENT ALLOW MEDIUM REMOVAL guards it. Set before the unit is
    /// shared.
    pub fn with_removable_medium(mut self, removable: bool) -> Self {
        self.removable = removable;
        self
    }

    /// INQUIRY RMB.
    pub fn is_removable(&self) -> bool {
        self.removable
    }

    pub fn identity(&self) -> &LuIdentity {
        &self.identity
    }

    pub fn lun(&self) -> u64 {
        self.identity.lun
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, MediumState> {
        // Writers only assign fields, so a poisoned lock still holds a consistent state.
        self.medium.read().unwrap_or_else(|e| e.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, MediumState> {
        self.medium.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn readiness(&self) -> Readiness {
        self.state().readiness
    }

    /// Attaches the medium and becomes ready. If that changes the capacity (a unit that was
    /// becoming ready had none, or a new backend has another size), every nexus the unit knows
    /// gets CAPACITY DATA HAS CHANGED (06/2A/09, SBC-3 §4.7): initiators then read the
    /// capacity again.
    pub fn set_ready(&self, backend: Arc<dyn BlockBackend>) {
        let block_size = u64::from(self.block_size);
        let new_blocks = backend.size_bytes() / block_size;
        let old_blocks = {
            let mut state = self.state_mut();
            let old = state
                .backend
                .as_ref()
                .map_or(0, |b| b.size_bytes() / block_size);
            state.backend = Some(backend);
            state.readiness = Readiness::Ready;
            old
        };
        self.announce_capacity(old_blocks, new_blocks);
    }

    /// Grows the medium to `bytes` while the unit serves (a resize), and tells every nexus
    /// with CAPACITY DATA HAS CHANGED (06/2A/09, SBC-4 §4.9) when the capacity in blocks
    /// changed. Returns the new capacity in blocks. The backend refuses a shrink.
    pub async fn grow_medium(&self, bytes: u64) -> std::io::Result<u64> {
        let backend = self.state().backend.clone().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the unit has no medium")
        })?;
        let block_size = u64::from(self.block_size);
        let old_blocks = backend.size_bytes() / block_size;
        let new_blocks = backend.grow_to(bytes).await? / block_size;
        self.announce_capacity(old_blocks, new_blocks);
        Ok(new_blocks)
    }

    fn announce_capacity(&self, old_blocks: u64, new_blocks: u64) {
        if old_blocks != new_blocks {
            self.unit_attentions
                .establish_all(&Sense::capacity_changed(), None);
        }
    }

    /// Refuses media access from now on (commands already running finish). The backend is
    /// kept so that [`LogicalUnit::flush`] still reaches it at shutdown.
    pub fn set_offline(&self) {
        self.state_mut().readiness = Readiness::Offline;
    }

    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Capacity in logical blocks (a partial trailing block is not addressable); 0 without a
    /// backend.
    pub fn capacity_blocks(&self) -> u64 {
        self.state()
            .backend
            .as_ref()
            .map_or(0, |b| b.size_bytes() / u64::from(self.block_size))
    }

    /// The medium's description (its path, for a file or device), if a backend is attached:
    /// for status reports.
    pub fn describe_medium(&self) -> Option<String> {
        self.state().backend.as_ref().map(|b| b.describe())
    }

    /// Whether writes are refused: configured read-only, the backend is, or software write
    /// protect (control mode page SWP) is set.
    pub fn is_read_only(&self) -> bool {
        self.read_only
            || self.software_write_protect.load(Ordering::Relaxed)
            || self.state().backend.as_ref().is_some_and(|b| b.read_only())
    }

    /// Caching mode page WCE. When clear, every write must reach the medium before it
    /// completes (as if FUA were set).
    pub fn write_cache_enabled(&self) -> bool {
        self.write_cache.load(Ordering::Relaxed)
    }

    /// The sense a media-access command gets now, `None` when ready. A unit becoming ready
    /// tells its demand hook (once): someone is waiting for it.
    pub fn not_ready_sense(&self) -> Option<Sense> {
        let readiness = self.readiness();
        if readiness == Readiness::BecomingReady
            && let Some(hook) = self.demand.hook.get()
            && !self.demand.fired.swap(true, Ordering::Relaxed)
        {
            hook();
        }
        readiness.not_ready_sense()
    }

    /// Calls `hook` the first time a command finds this unit becoming ready (an initiator
    /// polls TEST UNIT READY or reads it while its volume is still being made). Set once;
    /// a second hook is ignored.
    pub fn on_demand(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.demand.hook.set(Box::new(hook));
    }

    /// The backend for a media-access command, or the not-ready sense. Readiness and backend
    /// are read together so a concurrent state change cannot split them.
    pub fn medium(&self) -> Result<Arc<dyn BlockBackend>, Sense> {
        let state = self.state();
        match (state.readiness, &state.backend) {
            (Readiness::Ready, Some(backend)) => Ok(Arc::clone(backend)),
            (readiness, _) => Err(readiness
                .not_ready_sense()
                .unwrap_or(Sense::not_ready_becoming_ready())),
        }
    }

    /// Loads or unloads a removable medium for `by` (START STOP UNIT with LOEJ=1, SBC-4
    /// §5.25). Asking for the state the medium is already in changes nothing and succeeds.
    ///
    /// While any I_T nexus prevents medium removal the medium does not move, either way:
    /// 05/53/02 MEDIUM REMOVAL PREVENTED. SBC-4 §5.15 has the logical unit "inhibit
    /// mechanisms that normally allow removal of the medium"; keel reads a prevention as
    /// locking the medium as it is, so an application that holds one also never sees a
    /// medium appear under it (libiscsi's PreventAllow.Eject expects exactly that).
    ///
    /// Loading establishes NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED (06/28/00), the
    /// unit attention for a medium that may have been replaced, for every other nexus the
    /// unit knows: they must read the capacity again. The nexus that loaded it knows already.
    /// A unit that is offline refuses (02/04/03); one still becoming ready cannot unload.
    /// A non-removable unit ignores the request (nothing to move).
    pub fn move_medium(&self, to: MediumMove, by: &Nexus) -> Result<(), Sense> {
        if !self.removable {
            return Ok(());
        }
        {
            let mut state = self.state_mut();
            let next = match (state.readiness, to) {
                (Readiness::Offline, _) => return Err(Sense::not_ready_manual_intervention()),
                (Readiness::BecomingReady, MediumMove::Unload) => {
                    return Err(Sense::not_ready_becoming_ready());
                }
                (Readiness::BecomingReady, MediumMove::Load)
                | (Readiness::Ready, MediumMove::Load)
                | (Readiness::NoMedium, MediumMove::Unload) => return Ok(()),
                (Readiness::Ready, MediumMove::Unload) => Readiness::NoMedium,
                (Readiness::NoMedium, MediumMove::Load) => Readiness::Ready,
            };
            if !state.preventing.is_empty() {
                return Err(Sense::medium_removal_prevented());
            }
            state.readiness = next;
            if next != Readiness::Ready {
                return Ok(());
            }
        }
        self.unit_attentions
            .establish_all(&Sense::medium_may_have_changed(), Some(by));
        Ok(())
    }

    /// PREVENT ALLOW MEDIUM REMOVAL from `nexus` (SBC-4 §5.15): starts (`prevent`) or ends its
    /// prevention of medium removal. Removal stays prevented while any nexus holds one. Also
    /// how an I_T nexus loss ends the nexus's prevention. A non-removable unit keeps no
    /// state: it has nothing to prevent.
    pub fn prevent_medium_removal(&self, nexus: &Nexus, prevent: bool) {
        if !self.removable {
            return;
        }
        let mut state = self.state_mut();
        if prevent {
            state.preventing.insert(nexus.clone());
        } else {
            state.preventing.remove(nexus);
        }
    }

    /// Whether any I_T nexus prevents medium removal now.
    pub fn medium_removal_prevented(&self) -> bool {
        !self.state().preventing.is_empty()
    }

    /// Ends every prevention of medium removal: a logical unit reset or a hard reset does
    /// (SBC-4 §5.15).
    pub fn clear_medium_removal_preventions(&self) {
        self.state_mut().preventing.clear();
    }

    /// Flushes the backend, if any (used at shutdown).
    pub async fn flush(&self) -> std::io::Result<()> {
        let backend = self.state().backend.clone();
        match backend {
            Some(backend) => backend.flush().await,
            None => Ok(()),
        }
    }

    /// D_SENSE: whether CHECK CONDITION carries descriptor-format sense.
    pub fn descriptor_sense(&self) -> bool {
        self.descriptor_sense.load(Ordering::Relaxed)
    }

    /// Sets D_SENSE (for a future MODE SELECT of the control mode page).
    pub fn set_descriptor_sense(&self, descriptor: bool) {
        self.descriptor_sense.store(descriptor, Ordering::Relaxed);
    }

    pub fn unit_attentions(&self) -> &UnitAttentions {
        &self.unit_attentions
    }

    /// The unit's task set, across nexuses.
    pub fn task_set(&self) -> &Arc<super::task_set::TaskSet> {
        &self.task_set
    }

    /// The changeable mode parameters now.
    pub fn mode_values(&self) -> ModeValues {
        ModeValues {
            wce: self.write_cache.load(Ordering::Relaxed),
            d_sense: self.descriptor_sense(),
            swp: self.software_write_protect.load(Ordering::Relaxed),
        }
    }

    /// Sets the changeable mode parameters (MODE SELECT holds [`LogicalUnit::lock_mode`]).
    pub fn set_mode_values(&self, values: ModeValues) {
        self.write_cache.store(values.wce, Ordering::Relaxed);
        self.set_descriptor_sense(values.d_sense);
        self.software_write_protect
            .store(values.swp, Ordering::Relaxed);
    }

    /// Serializes read-modify-write of the mode parameters. Never held across an await.
    pub fn lock_mode(&self) -> std::sync::MutexGuard<'_, ()> {
        self.mode_lock.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// SPC-2 and persistent reservations of this unit.
    pub fn reservations(&self) -> &Reservations {
        &self.reservations
    }

    /// Persists APTPL reservation state in `store`, under the unit's NAA designator in hex
    /// (the same on every cluster node), and adopts what was saved there.
    pub fn set_reservation_store(&self, store: Arc<dyn ReservationStore>) -> std::io::Result<()> {
        self.reservations
            .attach_store(&self.reservation_key(), store)
    }

    /// Adopts the reservation table a shared store holds: another node changed it, or this
    /// node takes an address over. With `notify` (a change another node made and announced)
    /// the unit attentions that change owes are established for this node's nexuses it
    /// covers; not at a takeover, where those nexuses got them on the node they were on.
    /// Returns whether there was a shared store to reload from.
    pub async fn reload_reservations(&self, notify: bool) -> std::io::Result<bool> {
        let Some(notices) = self.reservations.reload_change().await? else {
            return Ok(false);
        };
        if notify {
            let unit_attentions = self.unit_attentions();
            for nexus in unit_attentions.known_nexuses() {
                for notice in &notices {
                    if !notice.from.is(&nexus) && notice.to.iter().any(|r| r.covers(&nexus)) {
                        let sense = Sense::new(SenseKey::UnitAttention, notice.asc, notice.ascq);
                        unit_attentions.establish(&nexus, sense);
                    }
                }
            }
        }
        Ok(true)
    }

    /// The unit's name in a reservation store: its NAA designator in hex, derived from the
    /// configuration and so the same on every cluster node.
    pub fn reservation_key(&self) -> String {
        self.identity
            .naa
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
    /// The WRITE ATOMIC limits of this unit, `None` when it does not offer the command (no
    /// journal).
    pub fn atomic_limits(&self) -> Option<AtomicLimits> {
        self.atomic_journal()?;
        Some(AtomicLimits::new(
            self.block_size(),
            self.logical_blocks_per_physical_block(),
        ))
    }

    /// `write_order` shared: held while a plain read or write reaches the medium. Reads and
    /// writes run alongside each other (SAM-5 §8.6); a read-modify-write command or a WRITE
    /// ATOMIC holds the lock exclusive ([`Self::write_exclusive`]), so no read or write lands
    /// between its read and its write (SBC-4 §5.3) or sees part of it (SBC-4 §4.29.2). Never
    /// held together with another guard of the same lock (the lock is fair: a queued
    /// exclusive waiter would deadlock a second shared acquisition).
    pub(in crate::scsi) async fn medium_access_shared(
        &self,
    ) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.write_order.read().await
    }

    /// For a read whose data the transport will send from the medium's file: the guard that
    /// goes with the data until it is sent, or `None` once WRITE ATOMIC is in use on this
    /// unit (the read is then copied).
    pub(in crate::scsi) async fn sent_read_guard(
        &self,
    ) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.atomic_writes_seen.load(SeqCst) {
            return None;
        }
        let guard = self.sent_read_order.clone().read_owned().await;
        // An atomic write that came meanwhile marked the unit before waiting for this lock.
        (!self.atomic_writes_seen.load(SeqCst)).then_some(guard)
    }

    /// Taken by WRITE ATOMIC before [`LogicalUnit::write_exclusive`]: marks the unit (reads
    /// are copied from now on) and waits until the data of reads being sent from the file
    /// has been handed to the network.
    pub(in crate::scsi) async fn atomic_write_exclusive(
        &self,
    ) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        if !self.atomic_writes_seen.swap(true, SeqCst)
            && self
                .medium()
                .is_ok_and(|backend| backend.sendable_file().is_some())
        {
            tracing::info!(
                "WRITE ATOMIC in use: reads of this unit are copied from now on, not sent from its file"
            );
        }
        self.sent_read_order.write().await
    }

    /// Held across the read and the write of a read-modify-write command, and across the
    /// in-place write of WRITE ATOMIC: no other write (nor read) runs meanwhile.
    pub(in crate::scsi) async fn write_exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.write_order.write().await
    }

    /// Returns the mode parameters to their defaults, as a logical unit reset requires
    /// (SAM-5 §6.3.3 d).
    pub fn reset_mode_parameters(&self) {
        let _guard = self.lock_mode();
        self.set_mode_values(ModeValues::DEFAULT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryBackend;

    #[test]
    fn the_demand_hook_fires_once_while_becoming_ready_and_never_when_ready() {
        let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let unit = LogicalUnit::new(LuIdentity::derived("iqn.x:t", 0), 512, None, false);
        // No hook yet: nothing to tell, and setting one later still works.
        assert_eq!(
            unit.not_ready_sense(),
            Some(Sense::not_ready_becoming_ready())
        );
        let counter = fired.clone();
        unit.on_demand(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        for _ in 0..3 {
            assert_eq!(
                unit.not_ready_sense(),
                Some(Sense::not_ready_becoming_ready())
            );
        }
        assert_eq!(fired.load(Ordering::Relaxed), 1);
        let ready = LogicalUnit::new(
            LuIdentity::derived("iqn.x:t", 1),
            512,
            Some(Arc::new(MemoryBackend::new(1 << 20))),
            false,
        );
        let counter = fired.clone();
        ready.on_demand(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ready.not_ready_sense(), None);
        assert_eq!(fired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn derived_identity_is_stable_and_distinct() {
        let a = LuIdentity::derived("iqn.2026-01.org.example:disk0", 0);
        let again = LuIdentity::derived("iqn.2026-01.org.example:disk0", 0);
        let b = LuIdentity::derived("iqn.2026-01.org.example:disk0", 1);
        let c = LuIdentity::derived("iqn.2026-01.org.example:disk1", 0);
        assert_eq!(a, again);
        assert_ne!(a.serial, b.serial);
        assert_ne!(a.serial, c.serial);
        assert_ne!(a.naa, b.naa);
        assert_eq!(a.serial.len(), 16);
        assert!(
            a.serial
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_eq!(
            (a.vendor.as_str(), a.product.as_str()),
            ("KEEL", "VIRTUAL-DISK")
        );
        assert_eq!(a.revision, PRODUCT_REVISION);
        // NAA 6, company id 0x0A4B45 in the next 24 bits, serial hash as the extension.
        assert_eq!(a.naa[0], 0x60);
        assert_eq!(&a.naa[1..3], &[0xA4, 0xB4]);
        assert_eq!(a.naa[3] >> 4, 0x5);
        assert_eq!(
            format!(
                "{:016X}",
                u64::from_be_bytes(a.naa[8..].try_into().unwrap())
            ),
            a.serial
        );
    }

    #[test]
    fn derived_identity_never_changes() {
        // Pinned values: initiators (multipath, /dev/disk/by-id, filesystems) key on these. If
        // this test fails, the derivation changed and every deployed volume would change
        // identity.
        let id = LuIdentity::derived("iqn.2026-01.org.example:disk0", 3);
        assert_eq!(id.serial, "2E97C6918615E47D");
        assert_eq!(
            id.naa,
            [
                0x60, 0xA4, 0xB4, 0x56, 0x2F, 0x45, 0x7E, 0x03, 0x2E, 0x97, 0xC6, 0x91, 0x86, 0x15,
                0xE4, 0x7D
            ]
        );
        // And they come from the documented input layout.
        let serial_input = b"serial\0iqn.2026-01.org.example:disk0\0\0\0\0\0\0\0\0\x03";
        assert_eq!(id.serial, format!("{:016X}", fnv1a64(serial_input)));
        let naa_input = b"naa\0iqn.2026-01.org.example:disk0\0\0\0\0\0\0\0\0\x03";
        let vsi = fnv1a64(naa_input) & 0xF_FFFF_FFFF;
        assert_eq!(u64::from(id.naa[3] & 0x0F) << 32, vsi & 0xF_0000_0000);
        assert_eq!(
            u32::from_be_bytes(id.naa[4..8].try_into().unwrap()),
            vsi as u32
        );
    }

    #[tokio::test]
    async fn a_grown_medium_raises_capacity_data_has_changed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = crate::storage::FileBackend::open_file(
            &dir.path().join("disk.img"),
            Some(8 * 512),
            false,
        )
        .unwrap();
        let lu = LogicalUnit::new(
            LuIdentity::derived("iqn.t", 0),
            512,
            Some(Arc::new(backend)),
            false,
        );
        let seen = nexus("seen");
        assert_eq!(
            lu.unit_attentions().take(&seen),
            Some(Sense::power_on_reset())
        );
        assert_eq!(lu.grow_medium(16 * 512).await.unwrap(), 16);
        assert_eq!(lu.capacity_blocks(), 16);
        assert_eq!(
            lu.unit_attentions().take(&seen),
            Some(Sense::capacity_changed())
        );
        // Less than a block more: no capacity change to report. Shrinking is refused.
        assert_eq!(lu.grow_medium(16 * 512 + 100).await.unwrap(), 16);
        assert_eq!(lu.unit_attentions().take(&seen), None);
        assert!(lu.grow_medium(4 * 512).await.is_err());
        assert_eq!(lu.capacity_blocks(), 16);
        // A unit without a medium has nothing to grow.
        let empty = LogicalUnit::new(LuIdentity::derived("iqn.t", 1), 512, None, false);
        assert!(empty.grow_medium(4096).await.is_err());
    }

    #[test]
    fn readiness_transitions() {
        let id = LuIdentity::derived("iqn.t", 0);
        let lu = LogicalUnit::new(id, 512, None, false);
        assert_eq!(lu.readiness(), Readiness::BecomingReady);
        assert_eq!(lu.capacity_blocks(), 0);
        assert_eq!(lu.medium().unwrap_err(), Sense::not_ready_becoming_ready());
        lu.set_ready(Arc::new(MemoryBackend::new(4096 + 100)));
        assert_eq!(lu.readiness(), Readiness::Ready);
        assert_eq!(lu.capacity_blocks(), 8);
        assert!(lu.medium().is_ok());
        lu.set_offline();
        assert_eq!(
            lu.not_ready_sense(),
            Some(Sense::not_ready_manual_intervention())
        );
        assert_eq!(
            lu.medium().unwrap_err(),
            Sense::not_ready_manual_intervention()
        );
    }

    fn nexus(name: &str) -> Nexus {
        Nexus::for_test(name)
    }

    fn removable_lu() -> LogicalUnit {
        let backend = Arc::new(MemoryBackend::new(4096));
        LogicalUnit::new(LuIdentity::derived("iqn.t", 0), 512, Some(backend), false)
            .with_removable_medium(true)
    }

    #[test]
    fn removable_medium_unloads_and_loads() {
        let lu = removable_lu();
        let a = nexus("a");
        assert!(lu.is_removable());
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        assert_eq!(lu.readiness(), Readiness::NoMedium);
        assert_eq!(lu.not_ready_sense(), Some(Sense::medium_not_present()));
        assert_eq!(lu.medium().unwrap_err(), Sense::medium_not_present());
        // The backend stays attached: capacity is still known, a shutdown flush reaches it.
        assert_eq!(lu.capacity_blocks(), 8);
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        lu.move_medium(MediumMove::Load, &a).unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
        assert!(lu.medium().is_ok());
        lu.move_medium(MediumMove::Load, &a).unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
    }

    #[test]
    fn loading_establishes_medium_changed_for_the_others_only() {
        let lu = removable_lu();
        let (a, b) = (nexus("a"), nexus("b"));
        // Both nexuses known, their power-on condition reported.
        lu.unit_attentions().take(&a);
        lu.unit_attentions().take(&b);
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        assert!(!lu.unit_attentions().pending(&b), "unloading needs no UA");
        lu.move_medium(MediumMove::Load, &a).unwrap();
        assert!(!lu.unit_attentions().pending(&a));
        assert_eq!(
            lu.unit_attentions().take(&b),
            Some(Sense::medium_may_have_changed())
        );
        // Loading a loaded medium changes nothing and says nothing.
        lu.move_medium(MediumMove::Load, &a).unwrap();
        assert!(!lu.unit_attentions().pending(&b));
    }

    #[test]
    fn prevention_locks_the_medium_as_it_is() {
        let lu = removable_lu();
        let (a, b) = (nexus("a"), nexus("b"));
        lu.prevent_medium_removal(&a, true);
        lu.prevent_medium_removal(&b, true);
        assert_eq!(
            lu.move_medium(MediumMove::Unload, &a),
            Err(Sense::medium_removal_prevented())
        );
        // Asking for the state it is in is no movement.
        lu.move_medium(MediumMove::Load, &a).unwrap();
        lu.prevent_medium_removal(&a, false);
        assert!(lu.medium_removal_prevented(), "b still prevents");
        assert_eq!(
            lu.move_medium(MediumMove::Unload, &a),
            Err(Sense::medium_removal_prevented())
        );
        lu.prevent_medium_removal(&b, false);
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        lu.prevent_medium_removal(&a, true);
        assert_eq!(
            lu.move_medium(MediumMove::Load, &b),
            Err(Sense::medium_removal_prevented())
        );
        lu.move_medium(MediumMove::Unload, &b).unwrap();
        lu.clear_medium_removal_preventions();
        assert!(!lu.medium_removal_prevented());
        lu.move_medium(MediumMove::Load, &b).unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
    }

    #[test]
    fn offline_and_provisioning_units_keep_their_state() {
        let a = nexus("a");
        let lu = removable_lu();
        lu.set_offline();
        for to in [MediumMove::Load, MediumMove::Unload] {
            assert_eq!(
                lu.move_medium(to, &a),
                Err(Sense::not_ready_manual_intervention())
            );
            assert_eq!(lu.readiness(), Readiness::Offline);
        }
        let lu = LogicalUnit::new(LuIdentity::derived("iqn.t", 0), 512, None, false)
            .with_removable_medium(true);
        assert_eq!(
            lu.move_medium(MediumMove::Unload, &a),
            Err(Sense::not_ready_becoming_ready())
        );
        lu.move_medium(MediumMove::Load, &a).unwrap();
        assert_eq!(lu.readiness(), Readiness::BecomingReady);
        // An ejected unit taken offline stays offline when loaded.
        let lu = removable_lu();
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        lu.set_offline();
        assert!(lu.move_medium(MediumMove::Load, &a).is_err());
        assert_eq!(lu.readiness(), Readiness::Offline);
    }

    #[test]
    fn a_fixed_unit_has_no_medium_to_move_or_prevent() {
        let a = nexus("a");
        let backend = Arc::new(MemoryBackend::new(4096));
        let lu = LogicalUnit::new(LuIdentity::derived("iqn.t", 0), 512, Some(backend), false);
        assert!(!lu.is_removable());
        lu.prevent_medium_removal(&a, true);
        assert!(!lu.medium_removal_prevented());
        lu.move_medium(MediumMove::Unload, &a).unwrap();
        assert_eq!(lu.readiness(), Readiness::Ready);
    }

    #[test]
    #[should_panic(expected = "unsupported logical block size")]
    fn odd_block_sizes_are_refused() {
        LogicalUnit::new(LuIdentity::derived("iqn.t", 0), 520, None, false);
    }
}
