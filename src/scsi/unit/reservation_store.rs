//! Where persistent reservation state survives a restart (SPC-4 §5.13.5 "Persisting
//! reservations and registrations": APTPL).
//!
//! [`ReservationStore`] is the seam: a directory of TOML files here, or a cluster database
//! (`cluster::CtdbReservationStore`, a CTDB persistent database) so a failover node serves
//! the same registrations. The logical unit saves before it answers GOOD and only adopts a
//! state the store accepted.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::storage::IoFuture;

use super::pr_state::{PrNotice, PrState};

/// Keeps the persistent reservation state of logical units, one entry per unit, named by a
/// stable key (the NAA designator in hex, identical on every cluster node).
pub trait ReservationStore: Send + Sync + std::fmt::Debug {
    /// The saved state of `unit`, `None` if nothing is saved. Called once when the unit is
    /// built, before it serves commands, so it may block briefly.
    fn load(&self, unit: &str) -> io::Result<Option<PrState>>;

    /// Saves `state` for `unit` durably; `None` removes what was saved. Resolves only once
    /// the change would survive a crash. An error of kind [`io::ErrorKind::ResourceBusy`]
    /// means "not now" (a cluster store that may not change the state while the cluster
    /// recovers or lacks a majority): the command ends with BUSY, which initiators retry.
    fn save(&self, unit: &str, state: Option<PrState>) -> IoFuture<'_, ()>;

    /// Whether the store is shared with other nodes that may serve the unit next (a cluster
    /// database). Then every change is saved before GOOD, APTPL or not: the registrations
    /// and the reservation must move with the unit's portal to whichever node takes it
    /// over, and that node adopts them with [`super::reservations::Reservations::reload`].
    fn shared(&self) -> bool {
        false
    }

    /// [`Self::save`], with the unit attentions the change owes to other nexuses: a shared
    /// store keeps them for the nodes serving those nexuses (a local store has no use for
    /// them: its node established them already).
    fn save_change(
        &self,
        unit: &str,
        state: Option<PrState>,
        _notices: Vec<PrNotice>,
    ) -> IoFuture<'_, ()> {
        self.save(unit, state)
    }

    /// Resolves when the store may be read now; [`Self::load_change`] is called after it. A
    /// cluster store waits here (bounded) while its cluster recovers: a read then would hold
    /// record locks the recovery must take (see `cluster::CtdbReservationStore`). An error
    /// means the read would not succeed now.
    fn until_readable(&self) -> IoFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// [`Self::load`], with the unit attentions the last change saved with
    /// [`Self::save_change`] owes.
    fn load_change(&self, unit: &str) -> io::Result<(Option<PrState>, Vec<PrNotice>)> {
        Ok((self.load(unit)?, Vec::new()))
    }
}

/// One TOML file per unit under `<data_dir>/reservations/`, replaced atomically: written to a
/// temporary file, synced, renamed over the old one, and the directory synced.
#[derive(Debug, Clone)]
pub struct FileReservationStore {
    dir: PathBuf,
}

/// The file format, versioned so a later layout can read old files.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedFile {
    version: u32,
    state: PrState,
}

const FORMAT_VERSION: u32 = 1;

impl FileReservationStore {
    /// A store under `data_dir/reservations` (created on first save).
    pub fn new(data_dir: &Path) -> Self {
        FileReservationStore {
            dir: data_dir.join("reservations"),
        }
    }

    fn path(&self, unit: &str) -> PathBuf {
        self.dir.join(format!("{unit}.toml"))
    }

    fn write_blocking(dir: &Path, path: &Path, state: &PrState) -> io::Result<()> {
        let text = toml::to_string(&SavedFile {
            version: FORMAT_VERSION,
            state: state.clone(),
        })
        .map_err(io::Error::other)?;
        fs::create_dir_all(dir)?;
        let temp = path.with_extension("toml.tmp");
        {
            let mut file = fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&temp, path)?;
        sync_dir(dir)
    }

    fn remove_blocking(dir: &Path, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl ReservationStore for FileReservationStore {
    fn load(&self, unit: &str) -> io::Result<Option<PrState>> {
        let text = match fs::read_to_string(self.path(unit)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let saved: SavedFile =
            toml::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if saved.version != FORMAT_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown reservation file version {}", saved.version),
            ));
        }
        Ok(Some(saved.state))
    }

    fn save(&self, unit: &str, state: Option<PrState>) -> IoFuture<'_, ()> {
        let dir = self.dir.clone();
        let path = self.path(unit);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || match state {
                Some(state) => Self::write_blocking(&dir, &path, &state),
                None => Self::remove_blocking(&dir, &path),
            })
            .await
            .map_err(io::Error::other)?
        })
    }
}

/// The store keel uses for a data directory.
pub fn file_store(data_dir: &Path) -> Arc<dyn ReservationStore> {
    Arc::new(FileReservationStore::new(data_dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::unit::pr_state::{NexusId, PrType, Registration, Reservation};

    fn sample() -> PrState {
        PrState {
            generation: 7,
            aptpl: true,
            registrations: vec![Registration {
                key: 0xFEDC_BA98_7654_3210,
                initiator: "iqn.2026-01.test:a,i,0x000000000001".into(),
                target_port: "iqn.2026-01.test:t,t,0x0001".into(),
                relative_port: 1,
                all_target_ports: true,
            }],
            reservation: Some(Reservation {
                pr_type: PrType::ExclusiveAccessRegistrantsOnly,
                holder: Some(NexusId {
                    initiator: "iqn.2026-01.test:a,i,0x000000000001".into(),
                    target_port: "iqn.2026-01.test:t,t,0x0001".into(),
                    relative_port: 1,
                }),
            }),
        }
    }

    #[tokio::test]
    async fn save_load_and_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileReservationStore::new(dir.path());
        assert_eq!(store.load("60a4b4").unwrap(), None);
        store.save("60a4b4", Some(sample())).await.unwrap();
        assert_eq!(store.load("60a4b4").unwrap(), Some(sample()));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("reservations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["60a4b4.toml".to_string()]);
        // A second save replaces the first.
        let mut changed = sample();
        changed.generation = 8;
        store.save("60a4b4", Some(changed.clone())).await.unwrap();
        assert_eq!(store.load("60a4b4").unwrap(), Some(changed));
        store.save("60a4b4", None).await.unwrap();
        assert_eq!(store.load("60a4b4").unwrap(), None);
        // Removing what is not there is fine.
        store.save("60a4b4", None).await.unwrap();
    }

    #[tokio::test]
    async fn corrupt_files_are_errors_not_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileReservationStore::new(dir.path());
        fs::create_dir_all(dir.path().join("reservations")).unwrap();
        fs::write(
            dir.path().join("reservations/x.toml"),
            "version = 1\nstate = 3",
        )
        .unwrap();
        assert_eq!(
            store.load("x").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[tokio::test]
    async fn an_unwritable_directory_fails_the_save() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the directory should be.
        fs::write(dir.path().join("reservations"), "").unwrap();
        let store = FileReservationStore::new(dir.path());
        assert!(store.save("x", Some(sample())).await.is_err());
    }
}
