//! The composition root: builds targets and logical units from a [`Config`], listens on the
//! portals, serves connections, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Backing, Config};
use crate::iscsi::access::AllowList;
use crate::iscsi::login::LoginAccess;
use crate::iscsi::{Service, Target, connection};
use crate::scsi::{AtomicJournal, LogicalUnit, LuIdentity, TargetDevice, file_store};
use crate::storage::{BlockBackend, FileBackend, UringEngine, select_engine};

mod threads;
use threads::ConnectionThreads;

/// Blocking-pool threads of each connection thread's runtime. Storage syscalls run on the
/// main runtime's bounded pool (`FileBackend::with_blocking_pool`); these serve only the
/// rare reservation and atomic-write journal files.
const CONNECTION_BLOCKING_THREADS: usize = 4;

/// A server with its listeners bound, ready to run.
pub struct Server {
    ctx: Arc<Service>,
    listeners: Vec<TcpListener>,
}

impl Server {
    /// Opens every LUN's backend and binds every portal. Fails with a clear message if a
    /// backend cannot be opened or a portal cannot be bound.
    pub async fn bind(config: &Config) -> Result<Server> {
        for w in &config.warnings {
            warn!("configuration: {w}");
        }
        let mut ctx = Service::new(config.iscsi.clone());
        ctx.access = LoginAccess {
            algorithms: config.access.chap_algorithms.clone(),
            discovery_chap: config.access.discovery_chap.clone().map(Arc::new),
            ..LoginAccess::default()
        };
        ctx.limits = config.access.limits;
        let ctx = Arc::new(ctx);
        // One ring (and its thread) for every LUN, chosen once.
        let uses_files = config.targets.iter().any(|t| !t.luns.is_empty());
        // Large-read buffers, reused across every LUN of the server; storage syscalls of the
        // thread-pool engine on this (the main) runtime's bounded blocking pool.
        let read_buffers = crate::storage::pool::BufferPool::new();
        let blocking_pool = tokio::runtime::Handle::current();
        let engine = if uses_files {
            select_engine(config.io_engine, UringEngine::new)?
        } else {
            None
        };
        info!(
            configured = config.io_engine.name(),
            engine = if engine.is_some() {
                "io_uring"
            } else {
                "threads"
            },
            "storage engine"
        );
        for t in &config.targets {
            let device = Arc::new(TargetDevice::new(&t.name));
            for l in &t.luns {
                let (opened, path) = match &l.backing {
                    Backing::File { path, create_size } => (
                        FileBackend::open_file(path, *create_size, l.read_only),
                        path,
                    ),
                    Backing::Block { path } => {
                        (FileBackend::open_block_device(path, l.read_only), path)
                    }
                };
                let opened = opened.with_context(|| {
                    format!(
                        "target {} LUN {}: cannot open {}",
                        t.name,
                        l.lun,
                        path.display()
                    )
                })?;
                let backend: Arc<dyn BlockBackend> = Arc::new(
                    opened
                        .with_engine(engine.clone())
                        .with_buffer_pool(read_buffers.clone())
                        .with_blocking_pool(blocking_pool.clone()),
                );
                if !backend.size_bytes().is_multiple_of(l.block_size as u64) {
                    warn!(target = %t.name, lun = l.lun, "size {} is not a multiple of the block size {}; the tail is not used", backend.size_bytes(), l.block_size);
                }
                let identity = LuIdentity::derived(&t.name, l.lun);
                // An atomic write interrupted by a crash is completed (or, if its record is
                // torn, known not to have started) before the unit serves anything.
                let journal = Arc::new(AtomicJournal::new(&config.data_dir, identity.naa));
                journal.recover(backend.as_ref()).await.with_context(|| {
                    format!(
                        "target {} LUN {}: cannot recover the atomic write journal {}",
                        t.name,
                        l.lun,
                        journal.path().display()
                    )
                })?;
                info!(target = %t.name, lun = l.lun, backend = %backend.describe(), bytes = backend.size_bytes(), "LUN ready");
                let lu = LogicalUnit::new(identity, l.block_size, Some(backend), l.read_only)
                    .with_physical_block_size(l.physical_block_size)
                    .with_atomic_journal(journal)
                    .with_removable_medium(l.removable);
                lu.set_reservation_store(file_store(&config.data_dir))
                    .with_context(|| {
                        format!(
                            "target {} LUN {}: cannot load persistent reservations from {}",
                            t.name,
                            l.lun,
                            config.data_dir.join("reservations").display()
                        )
                    })?;
                device.add_lun(Arc::new(lu));
            }
            ctx.targets.insert(Arc::new(Target {
                name: t.name.clone(),
                alias: t.alias.clone(),
                portal_group_tag: t.portal_group_tag,
                device,
                chap: t.chap.clone().map(Arc::new),
                allowed: Arc::new(AllowList::new(t.allowed_initiators.iter().cloned())),
            }));
        }
        let mut listeners = Vec::new();
        for portal in &config.portals {
            let listener = TcpListener::bind(portal)
                .await
                .with_context(|| format!("cannot listen on {portal}"))?;
            info!(portal = %listener.local_addr()?, "listening");
            listeners.push(listener);
        }
        Ok(Server { ctx, listeners })
    }

    /// The addresses actually bound (useful when a portal asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The shared context (targets, sessions), for tests and the admin interface.
    pub fn service(&self) -> Arc<Service> {
        self.ctx.clone()
    }

    /// Serves until `shutdown` resolves: then stops accepting, lets every session finish its
    /// in-flight commands, and flushes every backend.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let count = ConnectionThreads::default_count();
        let threads = Arc::new(
            ConnectionThreads::start(count, CONNECTION_BLOCKING_THREADS)
                .context("cannot start the connection threads")?,
        );
        let tracker = TaskTracker::new();
        for listener in self.listeners {
            let ctx = self.ctx.clone();
            let connections = tracker.clone();
            let threads = threads.clone();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                            Ok(stream) => {
                                let ctx = ctx.clone();
                                // The socket moves to its thread's reactor there.
                                threads.spawn(connections.track_future(async move {
                                    match tokio::net::TcpStream::from_std(stream) {
                                        Ok(stream) => connection::serve(stream, ctx).await,
                                        Err(e) => warn!("cannot adopt a connection: {e}"),
                                    }
                                }));
                            }
                            Err(e) => {
                                // Out of descriptors and the like: back off instead of spinning.
                                warn!("accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        },
                        _ = ctx.shutdown.cancelled() => break,
                    }
                }
            });
        }
        shutdown.await;
        info!("shutting down: no new connections; finishing in-flight commands");
        self.ctx.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(40), tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish in time");
        }
        if let Ok(threads) = Arc::try_unwrap(threads) {
            threads.stop().await;
        }
        for target in self.ctx.targets.list() {
            for lu in target.device.luns() {
                if let Err(e) = lu.flush().await {
                    warn!(target = %target.name, lun = lu.identity().lun, "flush at shutdown failed: {e}");
                }
            }
        }
        info!("stopped");
        Ok(())
    }
}
