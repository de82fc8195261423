//! The composition root: builds targets and logical units from a [`Config`] (in [`build`]),
//! listens on the portals, serves connections, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::iscsi::Service;

pub mod apply;
pub mod build;
pub mod cluster;
pub mod control;
pub mod health;
pub mod logging;
pub mod metrics_http;
pub mod notify;
pub mod status;
mod threads;
pub mod volumes;
use apply::{Acceptor, Running};
use control::Control;
use threads::ConnectionThreads;

/// Blocking-pool threads of each connection thread's runtime. Storage syscalls run on the
/// main runtime's bounded pool (`FileBackend::with_blocking_pool`); these serve only the
/// rare reservation and atomic-write journal files.
const CONNECTION_BLOCKING_THREADS: usize = 4;

/// A server with its targets built and its listeners bound, ready to run.
pub struct Server {
    running: Running,
}

impl Server {
    /// Applies `config` to an empty server: opens every LUN's backend and binds every
    /// portal. Fails with every located message if a LUN cannot be opened or a portal bound:
    /// an operator starting keel wants to know at once, not find a target short of a LUN
    /// later (a reload, by contrast, keeps serving what it can and reports the rest).
    pub async fn bind(config: &Config) -> Result<Server> {
        for w in &config.warnings {
            warn!("configuration: {w}");
        }
        let (running, report) = Running::start(config).await?;
        if !report.failed.is_empty() {
            bail!("{}", report.failed.join("\n"));
        }
        if let Some(listen) = config.metrics_listen {
            metrics_http::serve(
                listen,
                running.service().clone(),
                running.volumes().provisioner().cloned(),
            )
            .await?;
        }
        Ok(Server { running })
    }

    /// The addresses actually bound (useful when a portal asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.running.local_addrs()
    }

    /// The shared context (targets, sessions), for tests and the admin interface.
    pub fn service(&self) -> Arc<Service> {
        self.running.service().clone()
    }

    /// Serves until `shutdown` resolves: then stops accepting, lets every session finish its
    /// in-flight commands, and flushes every backend.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        self.run_controlled(None, shutdown).await
    }

    /// [`Server::run`], carrying out `control`'s changes (reloads) one at a time meanwhile.
    pub async fn run_controlled(
        self,
        mut control: Option<Control>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut running = self.running;
        let count = ConnectionThreads::default_count();
        let threads = Arc::new(
            ConnectionThreads::start(count, CONNECTION_BLOCKING_THREADS)
                .context("cannot start the connection threads")?,
        );
        let tracker = TaskTracker::new();
        running.start_accepting(Acceptor {
            threads: threads.clone(),
            connections: tracker.clone(),
        });
        notify::ready(&running.local_addrs());
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = async { control.as_mut()?.serve_one(&mut running).await; Some(()) },
                    if control.is_some() => {}
            }
        }
        notify::stopping();
        info!("shutting down: no new connections; finishing in-flight commands");
        let service = running.service().clone();
        service.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(40), tracker.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish in time");
        }
        running.stop().await;
        // A zfs call in flight finishes (bounded) rather than being killed halfway; what it
        // did not do, the next start reconciles (owner tags, the destroy intents file).
        if tokio::time::timeout(Duration::from_secs(30), running.volumes().shutdown())
            .await
            .is_err()
        {
            warn!("a provisioning call did not finish in time; the next start reconciles it");
        }
        if let Ok(threads) = Arc::try_unwrap(threads) {
            threads.stop().await;
        }
        for target in service.targets.list() {
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
