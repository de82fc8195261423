//! The one writer of the configuration: every change to what keel serves — a reload on
//! SIGHUP now, the control socket's calls later — goes through [`Control`], one at a time,
//! on the server's task. It owns the desired configuration, computes the difference a
//! change makes, and applies it to the [`Running`] state. Being the only writer, and
//! serializing the changes, is how no update is lost to another.
//!
//! A reload reads the whole configuration again and validates it before anything changes:
//! a broken file changes nothing and logs every located error. A valid one becomes the
//! desired configuration even when part of applying it fails (ctld's rule): the failures
//! are reported and logged, and the next reload starts from what was asked for.

use std::path::PathBuf;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{error, info};

use super::apply::{ApplyReport, Running};
use super::notify;
use crate::config::diff::diff;
use crate::config::{self, Config, ConfigErrors};

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// [`config::EMBEDDED_DEFAULT`]: a reload finds nothing changed.
    Embedded,
}

impl ConfigSource {
    /// Reads and validates the whole configuration (file I/O: call it off the runtime).
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigSource::File(path) => config::load(path),
            ConfigSource::Embedded => config::parse(config::EMBEDDED_DEFAULT, "embedded default"),
        }
    }
}

/// The configuration's single writer (see the module documentation).
pub struct Control {
    source: ConfigSource,
    /// What the running state was last asked to be.
    desired: Config,
    /// SIGHUP, when this process reloads on it.
    hangups: Option<Signal>,
}

/// Something that asks for a change.
enum Event {
    Hangup,
}

impl Control {
    /// The writer of a server started from `desired`, read from `source`.
    pub fn new(source: ConfigSource, desired: Config) -> Control {
        Control {
            source,
            desired,
            hangups: None,
        }
    }

    /// Reloads on SIGHUP from now on (the signal no longer ends the process).
    pub fn with_hangup(mut self) -> std::io::Result<Control> {
        self.hangups = Some(signal(SignalKind::hangup())?);
        Ok(self)
    }

    /// Waits for the next request for a change; never resolves when nothing can ask.
    async fn next(&mut self) -> Event {
        match &mut self.hangups {
            Some(hangups) => match hangups.recv().await {
                Some(()) => Event::Hangup,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Waits for the next request and carries it out on `running`.
    pub(super) async fn serve_one(&mut self, running: &mut Running) {
        match self.next().await {
            Event::Hangup => {
                info!("SIGHUP: reloading the configuration");
                let _ = self.reload(running).await;
            }
        }
    }

    /// Reads the configuration again; if it is valid, applies the difference from the
    /// desired one and adopts it. A broken configuration changes nothing.
    pub async fn reload(&mut self, running: &mut Running) -> Result<ApplyReport, ConfigErrors> {
        // systemd shows the unit reloading until READY=1, sent whether or not the reload
        // was refused: the service runs either way.
        notify::reloading();
        let result = self.reread_and_apply(running).await;
        notify::ready(&running.local_addrs());
        result
    }

    async fn reread_and_apply(
        &mut self,
        running: &mut Running,
    ) -> Result<ApplyReport, ConfigErrors> {
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || source.load())
            .await
            .unwrap_or_else(|e| {
                Err(ConfigErrors {
                    source_name: "reload".into(),
                    errors: vec![config::ConfigError {
                        line: None,
                        message: format!("the configuration reader failed: {e}"),
                    }],
                })
            });
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(errors) => {
                error!("reload refused, nothing changed:\n{errors}");
                return Err(errors);
            }
        };
        let changes = diff(&self.desired, &loaded);
        self.desired = loaded;
        if changes.is_empty() {
            info!("reload: nothing changed");
            return Ok(ApplyReport::default());
        }
        let report = running.apply(&changes).await;
        info!(
            done = report.done.len(),
            failed = report.failed.len(),
            "reload applied"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "iqn.2026-11.org.example:a";
    const B: &str = "iqn.2026-11.org.example:b";

    fn write(path: &std::path::Path, dir: &std::path::Path, targets: &[&str]) {
        let mut text = format!(
            "[server]\nportals = [\"127.0.0.1:0\"]\ndata_dir = \"{}\"\nio_engine = \"threads\"\n",
            dir.display()
        );
        for t in targets {
            text += &format!(
                "[[target]]\nname = \"{t}\"\n[[target.lun]]\nlun = 0\nfile = \"{}.img\"\nsize = \"1MiB\"\n",
                &t[t.len() - 1..]
            );
        }
        std::fs::write(path, text).unwrap();
    }

    #[tokio::test]
    async fn a_reload_applies_the_difference_and_a_broken_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        write(&path, dir.path(), &[A]);
        let source = ConfigSource::File(path.clone());
        let first = source.load().unwrap();
        let (mut running, _) = Running::start(&first).await.unwrap();
        let mut control = Control::new(source, first);

        // Nothing changed: nothing done.
        let report = control.reload(&mut running).await.unwrap();
        assert_eq!(report, ApplyReport::default());

        write(&path, dir.path(), &[A, B]);
        let report = control.reload(&mut running).await.unwrap();
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(running.service().targets.get(B).is_some());

        // A broken file: the located error, and B stays.
        std::fs::write(&path, "[server]\nportals = [\"nowhere\"]\n").unwrap();
        let errors = control.reload(&mut running).await.unwrap_err();
        let shown = errors.to_string();
        assert!(
            shown.starts_with(&format!("{}:2: ", path.display())),
            "{shown}"
        );
        assert!(running.service().targets.get(B).is_some());

        // Fixed again, without B: B goes (the broken file was never adopted).
        write(&path, dir.path(), &[A]);
        let report = control.reload(&mut running).await.unwrap();
        assert!(
            report.done[0].starts_with(&format!("removed target {B}")),
            "{report:?}"
        );
        assert!(running.service().targets.get(B).is_none());
    }
}
