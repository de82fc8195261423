//! The reservation tables of a cluster's LUNs in a CTDB persistent database (issue 14): every
//! PR OUT that changes a table commits there before GOOD, and a node that takes a portal
//! over reloads the tables before it answers on it, so registrations and the reservation
//! move with the portal. A change is refused for now (BUSY, which initiators retry) unless
//! [`ClusterView::allows_changes`]: a partitioned node cannot fork the table.
//!
//! One record per unit, key `keel-pr:<NAA hex>` (the NAA designator derives from the
//! configuration, so it is the same on every node), value a JSON document with a format
//! version. An empty record means "no registrations".

use std::io;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::scsi::{PrNotice, PrState, ReservationStore};
use crate::storage::IoFuture;

use super::ctdb::{CtdbClient, RecoveryMode, SharedClient};
use super::ctdb_tool::{ClusterView, CtdbTool};
use super::settings::ClusterSettings;

/// The record's format, versioned so a later layout can read old records.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    version: u32,
    state: PrState,
    /// The unit attentions the change that wrote this record owes to other nexuses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notices: Vec<PrNotice>,
}

const FORMAT_VERSION: u32 = 1;

/// How long a read waits for the cluster to leave recovery before it gives up.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(30);
/// How often the recovery mode is asked meanwhile (one control, well under a millisecond).
const RECOVERY_POLL: Duration = Duration::from_millis(100);

/// A [`ReservationStore`] in a CTDB persistent database, through the `ctdb` tool.
#[derive(Debug)]
pub struct CtdbReservationStore {
    tool: CtdbTool,
    database: String,
    /// Where the unit of each committed change is reported, so that other nodes serving
    /// the same unit through another address reload it (see [`Self::with_change_feed`]).
    changes: Option<mpsc::UnboundedSender<String>>,
    /// keel's connection to ctdbd (empty while it has none): the gate asks through it (two
    /// controls, a millisecond; `ctdb status` in 4.17 waits for the leader's broadcast,
    /// 0.4-1 s).
    client: SharedClient,
}

impl CtdbReservationStore {
    /// Attaches the persistent database (made on every node if it does not exist yet;
    /// attaching is idempotent), so the store is usable before the first unit loads. ctdbd
    /// may still be starting or recovering (keel starts after it at boot): attaching is
    /// tried again every second for up to `patience`.
    pub fn attach(
        settings: &ClusterSettings,
        client: SharedClient,
        patience: std::time::Duration,
    ) -> io::Result<CtdbReservationStore> {
        let tool = CtdbTool::new(settings)?;
        let database = settings.reservations_database.clone();
        let deadline = std::time::Instant::now() + patience;
        loop {
            match tool.run_blocking(&["attach", &database, "persistent"]) {
                Ok(_) => {
                    return Ok(CtdbReservationStore {
                        tool,
                        database,
                        changes: None,
                        client,
                    });
                }
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("attaching {database}: {e}"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(
                        "attaching {database} (trying again for up to {patience:?}): {e}"
                    );
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// This store, reporting the unit of every change it commits on the returned channel.
    pub fn with_change_feed(mut self) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.changes = Some(tx);
        (self, rx)
    }

    fn key(unit: &str) -> String {
        // Never "0x...": the tool reads such an argument as hex (ctdb.c str_to_data).
        format!("keel-pr:{unit}")
    }

    /// Whether the cluster lets the tables change now; ResourceBusy with the reason if not.
    async fn may_change(&self) -> io::Result<()> {
        let busy = |why: String| io::Error::new(io::ErrorKind::ResourceBusy, why);
        let Some(client) = self.connected() else {
            return Err(busy("keel is not connected to ctdbd".into()));
        };
        let view: ClusterView = client
            .view()
            .await
            .map_err(|e| busy(format!("cluster state unknown: {e}")))?;
        view.allows_changes()
            .map_err(|why| io::Error::new(io::ErrorKind::ResourceBusy, why))
    }

    /// keel's connection to ctdbd, if it has one now.
    fn connected(&self) -> Option<CtdbClient> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits, for up to [`RECOVERY_PATIENCE`], until ctdbd is out of recovery. `ctdb pfetch`
    /// is a read-only persistent transaction: the tool locks the database's record in
    /// g_lock.tdb and asks ctdbd about its holder while holding that lock (samba
    /// ctdb/client/client_db.c), and a recovery must freeze g_lock.tdb. Read during a
    /// recovery, it ran into the tool's runtime limit every time in the failover rig (a
    /// failed reload: the node would serve a stale table) and kept the recovery waiting.
    /// Without a connection to ctdbd there is nothing to ask: the tool's own limit bounds
    /// the read.
    async fn out_of_recovery(&self, patience: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Some(client) = self.connected() else {
                return Ok(());
            };
            match client.recovery_mode().await {
                Ok(RecoveryMode::Normal) => return Ok(()),
                Ok(RecoveryMode::Active) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ResourceBusy,
                        format!("cluster state unknown: {e}"),
                    ));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("the cluster stayed in recovery for {patience:?}"),
                ));
            }
            tokio::time::sleep(RECOVERY_POLL).await;
        }
    }
}

/// The state in a `ctdb pfetch` answer (the record and a newline; nothing for no record),
/// with the unit attentions its change owes.
pub fn decode_record(fetched: &str) -> io::Result<(Option<PrState>, Vec<PrNotice>)> {
    let text = fetched.strip_suffix('\n').unwrap_or(fetched);
    if text.is_empty() {
        return Ok((None, Vec::new()));
    }
    let record: Record = serde_json::from_str(text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reservation record: {e}"),
        )
    })?;
    if record.version != FORMAT_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "reservation record: format version {} is not known",
                record.version
            ),
        ));
    }
    Ok((Some(record.state), record.notices))
}

fn encode(state: Option<PrState>, notices: Vec<PrNotice>) -> io::Result<String> {
    match state {
        None => Ok(String::new()),
        Some(state) => serde_json::to_string(&Record {
            version: FORMAT_VERSION,
            state,
            notices,
        })
        .map_err(io::Error::other),
    }
}

impl ReservationStore for CtdbReservationStore {
    fn load(&self, unit: &str) -> io::Result<Option<PrState>> {
        Ok(self.load_change(unit)?.0)
    }

    fn save(&self, unit: &str, state: Option<PrState>) -> IoFuture<'_, ()> {
        self.save_change(unit, state, Vec::new())
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
        let (key, unit) = (Self::key(unit), unit.to_owned());
        Box::pin(async move {
            self.may_change().await?;
            let value = encode(state, notices)?;
            // pstore is one persistent transaction, committed on every connected node
            // before the tool exits 0.
            self.tool
                .run(&["pstore", &self.database, &key, &value])
                .await?;
            if let Some(changes) = &self.changes {
                let _ = changes.send(unit);
            }
            Ok(())
        })
    }

    fn until_readable(&self) -> IoFuture<'_, ()> {
        Box::pin(self.out_of_recovery(RECOVERY_PATIENCE))
    }

    fn load_change(&self, unit: &str) -> io::Result<(Option<PrState>, Vec<PrNotice>)> {
        let fetched = self
            .tool
            .run_blocking(&["pfetch", &self.database, &Self::key(unit)])?;
        decode_record(&fetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{NexusId, PrType, Registration, Reservation};
    use std::sync::Arc;

    fn sample() -> PrState {
        PrState {
            generation: 3,
            aptpl: false,
            registrations: vec![Registration {
                key: 0xFEDC_BA98_7654_3210,
                initiator: "iqn.2026-01.test:a,i,0x000000000001".into(),
                target_port: "iqn.2026-11.org.example:disk0,t,0x0001".into(),
                relative_port: 1,
                all_target_ports: false,
            }],
            reservation: Some(Reservation {
                pr_type: PrType::WriteExclusiveRegistrantsOnly,
                holder: Some(NexusId {
                    initiator: "iqn.2026-01.test:a,i,0x000000000001".into(),
                    target_port: "iqn.2026-11.org.example:disk0,t,0x0001".into(),
                    relative_port: 1,
                }),
            }),
        }
    }

    #[test]
    fn a_record_round_trips_and_nothing_reads_as_none() {
        let text = encode(Some(sample()), Vec::new()).unwrap();
        assert!(
            text.starts_with('{'),
            "never 0x..., which ctdb reads as hex"
        );
        assert!(!text.contains("notices"), "none kept when there are none");
        let none = (None, Vec::new());
        assert_eq!(
            decode_record(&format!("{text}\n")).unwrap(),
            (Some(sample()), Vec::new())
        );
        assert_eq!(decode_record("\n").unwrap(), none);
        assert_eq!(decode_record("").unwrap(), none);
        assert_eq!(encode(None, Vec::new()).unwrap(), "");
    }

    #[test]
    fn the_unit_attentions_of_a_change_travel_with_it() {
        let notice = PrNotice {
            to: sample().registrations,
            from: sample().reservation.unwrap().holder.unwrap(),
            asc: 0x2A,
            ascq: 0x05,
        };
        let text = encode(Some(sample()), vec![notice.clone()]).unwrap();
        assert_eq!(
            decode_record(&text).unwrap(),
            (Some(sample()), vec![notice])
        );
    }

    #[test]
    fn a_foreign_or_newer_record_is_an_error() {
        assert!(decode_record("not json\n").is_err());
        let newer = encode(Some(sample()), Vec::new())
            .unwrap()
            .replace("\"version\":1", "\"version\":9");
        assert!(decode_record(&newer).is_err());
    }

    /// A store whose client talks to a scripted ctdbd that answers GET_RECMODE with
    /// `modes` in turn (the last one from then on); returns the store and how many times
    /// the mode was asked.
    async fn store_over(
        modes: Vec<i32>,
    ) -> (
        CtdbReservationStore,
        Arc<std::sync::atomic::AtomicUsize>,
        tempfile::TempDir,
    ) {
        use crate::cluster::ctdb::ClientConfig;
        use crate::cluster::ctdb::fake::{read_request, reply};
        use crate::cluster::ctdb::protocol::opcode;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctdbd.socket");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            while let Some((h, op, _)) = read_request(&mut s).await {
                let status = match op {
                    opcode::GET_PNN => 1,
                    opcode::GET_RECMODE => {
                        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        modes[n.min(modes.len() - 1)]
                    }
                    other => panic!("unexpected control {other}"),
                };
                use tokio::io::AsyncWriteExt;
                s.write_all(&reply(h.reqid, status, &[], None))
                    .await
                    .unwrap();
            }
        });
        let (client, _events) = CtdbClient::connect(&ClientConfig::new(&path))
            .await
            .unwrap();
        (store_with(Some(client)), asked, dir)
    }

    /// A store with the default settings and this connection to ctdbd (or none).
    fn store_with(client: Option<CtdbClient>) -> CtdbReservationStore {
        CtdbReservationStore {
            tool: CtdbTool::new(&ClusterSettings::default()).unwrap(),
            database: "keel_reservations.tdb".into(),
            changes: None,
            client: Arc::new(std::sync::RwLock::new(client)),
        }
    }

    #[tokio::test]
    async fn a_read_waits_out_a_recovery() {
        // ACTIVE (1) twice, then NORMAL (0).
        let (store, asked, _dir) = store_over(vec![1, 1, 0]).await;
        store.until_readable().await.unwrap();
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_recovery_that_does_not_end_makes_the_read_busy() {
        let (store, asked, _dir) = store_over(vec![1]).await;
        let e = store
            .out_of_recovery(Duration::from_millis(350))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        assert!(e.to_string().contains("stayed in recovery"), "{e}");
        assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn without_ctdbd_a_read_goes_ahead() {
        store_with(None).until_readable().await.unwrap();
    }

    #[test]
    fn keys_never_read_as_hex() {
        assert_eq!(CtdbReservationStore::key("0x60a4"), "keel-pr:0x60a4");
    }
}
