//! The composition root: builds targets and logical units from a [`Config`] (in [`build`]),
//! listens on the portals, serves connections, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::iscsi::{Service, connection};

pub mod build;
pub mod logging;
pub mod notify;
mod threads;
use build::StorageEnv;
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
        let ctx = Arc::new(build::service(config));
        let storage = StorageEnv::new(config)?;
        for target in &config.targets {
            ctx.targets
                .insert(Arc::new(build::build_target(target, &storage).await?));
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
        let portals = self.local_addrs();
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
        notify::ready(&portals);
        shutdown.await;
        notify::stopping();
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
