//! The one writer of the configuration: every change to what keel serves — a control
//! socket call (`keel target add`, `keel reload`, ...) or SIGHUP — goes through [`Control`],
//! one at a time, on the server's task. It owns the configuration [`Store`] (the desired
//! state and its files), asks it for the difference a change makes, and applies that to the
//! [`Running`] state. Being the only writer, and serializing the changes, is how no update
//! is lost to another.
//!
//! A reload reads the whole configuration again and validates it before anything changes:
//! a broken file changes nothing and logs every located error. A valid one becomes the
//! desired configuration even when part of applying it fails (ctld's rule): the failures
//! are reported and logged, and the next reload starts from what was asked for. A single
//! change (one target or LUN) reads and writes only the file that declares it.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::apply::{ApplyOptions, ApplyReport, Running};
use super::{cluster, health, notify, status};
use crate::admin::protocol::to_toml_table;
use crate::admin::socket::ControlListener;
use crate::admin::{Call, CallError, Command, ErrorCode, LogoutFilter};
use crate::config::{ConfigDiff, ConfigErrors, ErrorKind, Store};
use crate::iscsi::PortalMatch;
use crate::iscsi::session::SessionFilter;

/// Calls the control socket may have waiting for the writer before it answers `busy`.
const QUEUED_CALLS: usize = 64;

/// The configuration's single writer (see the module documentation).
pub struct Control {
    /// The desired configuration and its files. Behind a mutex only so that its file I/O can
    /// run on the blocking pool; this task is its only user.
    store: Arc<Mutex<Store>>,
    /// SIGHUP, when this process reloads on it.
    hangups: Option<Signal>,
    /// The control socket, until [`Control::serve_one`] first runs and starts serving it.
    listener: Option<ControlListener>,
    /// Calls from the control socket.
    calls: Option<mpsc::Receiver<Call>>,
}

/// Something that asks for a change.
enum Event {
    Hangup,
    Call(Call),
}

impl Control {
    /// The writer of a server started from `store`'s configuration.
    pub fn new(store: Store) -> Control {
        Control {
            store: Arc::new(Mutex::new(store)),
            hangups: None,
            listener: None,
            calls: None,
        }
    }

    /// Reloads on SIGHUP from now on (the signal no longer ends the process).
    pub fn with_hangup(mut self) -> std::io::Result<Control> {
        self.hangups = Some(signal(SignalKind::hangup())?);
        Ok(self)
    }

    /// Serves the control socket bound by `listener` (none: the socket is turned off).
    pub fn with_socket(mut self, listener: Option<ControlListener>) -> Control {
        self.listener = listener;
        self
    }

    /// Waits for the next request for a change; never resolves when nothing can ask.
    async fn next(&mut self) -> Event {
        let hangup = async {
            match &mut self.hangups {
                Some(hangups) => match hangups.recv().await {
                    Some(()) => Event::Hangup,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let call = async {
            match &mut self.calls {
                Some(calls) => match calls.recv().await {
                    Some(call) => Event::Call(call),
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = hangup => event,
            event = call => event,
        }
    }

    /// Waits for the next request and carries it out on `running`. The first call starts
    /// serving the control socket, whose calls then arrive here.
    pub(super) async fn serve_one(&mut self, running: &mut Running) {
        if let Some(listener) = self.listener.take() {
            let (tx, rx) = mpsc::channel(QUEUED_CALLS);
            self.calls = Some(rx);
            info!(socket = %listener.path().display(), "control socket serving");
            tokio::spawn(listener.serve(tx, running.service().shutdown.clone()));
        }
        match self.next().await {
            Event::Hangup => {
                info!("SIGHUP: reloading the configuration");
                let _ = self.reload(running).await;
            }
            Event::Call(call) => {
                let name = call.command.name();
                let result = self.carry_out(call.command, running).await;
                if let Err(e) = &result {
                    info!(
                        command = name,
                        code = e.code.as_str(),
                        "control call refused: {}",
                        e.message
                    );
                }
                // The caller may have gone; the change stands either way.
                let _ = call.reply.send(result);
            }
        }
    }

    /// One control socket command.
    async fn carry_out(
        &mut self,
        command: Command,
        running: &mut Running,
    ) -> Result<Value, CallError> {
        match command {
            Command::Status => to_json(&status::report(running)),
            Command::Reload => match self.reload(running).await {
                Ok(report) if report.failed.is_empty() => to_json(&report),
                // As for a single change: the caller (and `systemctl reload`) must see that
                // part of it did not take effect.
                Ok(report) => Err(CallError::new(
                    ErrorCode::Failed,
                    format!(
                        "the configuration is adopted, but not all of it could be applied (fix \
                         it and run keel reload again):\n{}",
                        report.failed.join("\n")
                    ),
                )),
                Err(errors) => Err(refusal(&errors)),
            },
            Command::TargetAdd { target } => {
                let spec = to_toml_table(&target)?;
                self.change(running, move |store| store.add_target(&spec))
                    .await
            }
            Command::TargetRemove {
                name,
                destroy_volumes,
            } => {
                let options = ApplyOptions { destroy_volumes };
                self.change_with(running, options, move |store| store.remove_target(&name))
                    .await
            }
            Command::LunAdd { target, lun } => {
                let spec = to_toml_table(&lun)?;
                self.change(running, move |store| store.add_lun(&target, &spec))
                    .await
            }
            Command::LunRemove {
                target,
                lun,
                destroy_volume,
            } => {
                let options = ApplyOptions {
                    destroy_volumes: destroy_volume,
                };
                self.change_with(running, options, move |store| {
                    store.remove_lun(&target, lun)
                })
                .await
            }
            Command::LunResize { target, lun, size } => {
                self.change(running, move |store| store.resize_lun(&target, lun, size))
                    .await
            }
            Command::SessionList { target } => {
                let report = status::report(running);
                let mut sessions = Vec::new();
                for t in report.targets {
                    if target.as_ref().is_some_and(|name| *name != t.name) {
                        continue;
                    }
                    for session in t.sessions {
                        let mut entry = to_json(&session)?;
                        if let Value::Object(map) = &mut entry {
                            map.insert("target".into(), Value::String(t.name.clone()));
                        }
                        sessions.push(entry);
                    }
                }
                Ok(json!({ "sessions": sessions }))
            }
            Command::SessionLogout { filter, redirect } => {
                let filter = session_filter(filter);
                // Logins arriving on the address from now on go to the new one (planned
                // move); the sessions asked to log out will log in there.
                if let (Some(redirect), Some(portal)) = (&redirect, &filter.portal) {
                    let ip = match portal {
                        PortalMatch::Address(a) => a.ip(),
                        PortalMatch::Ip(ip) => *ip,
                    };
                    let lasting = std::time::Duration::from_secs(redirect.seconds);
                    running
                        .service()
                        .redirects
                        .set(ip, redirect.target_address.clone(), lasting);
                    info!(%ip, to = %redirect.target_address, ?lasting, "control: logins redirected");
                }
                let asked = running
                    .service()
                    .sessions
                    .request_logout(&filter, running.logout_grace());
                info!(
                    sessions = asked,
                    ?filter,
                    "control: sessions asked to log out"
                );
                Ok(json!({ "sessions": asked }))
            }
            Command::SessionClose(filter) => {
                let filter = session_filter(filter);
                let closed = running.service().sessions.close(&filter);
                info!(sessions = closed, ?filter, "control: sessions closed");
                Ok(json!({ "sessions": closed }))
            }
            Command::ReservationsReload => {
                let targets = running.service().targets.list();
                let (units, failed) = cluster::reload_tables(targets, cluster::Tables::All).await;
                info!(
                    units,
                    failed = failed.len(),
                    "control: reservations reloaded"
                );
                if failed.is_empty() {
                    Ok(json!({ "units": units }))
                } else {
                    Err(CallError::new(
                        ErrorCode::Failed,
                        format!(
                            "reloaded {units} reservation tables; could not reload:\n{}",
                            failed.join("\n")
                        ),
                    ))
                }
            }
            Command::Health => {
                let config = {
                    let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
                    store.config().clone()
                };
                to_json(&health::check(running, &config).await)
            }
        }
    }

    /// Runs one Store change on the blocking pool (it reads and writes a file) and applies
    /// the difference it returns. A change whose application partly failed stays in the
    /// configuration (as a reload's would) and is reported as `failed`, with what failed.
    async fn change(
        &mut self,
        running: &mut Running,
        edit: impl FnOnce(&mut Store) -> Result<ConfigDiff, ConfigErrors> + Send + 'static,
    ) -> Result<Value, CallError> {
        self.change_with(running, ApplyOptions::default(), edit)
            .await
    }

    /// [`Control::change`], applied with `options`.
    async fn change_with(
        &mut self,
        running: &mut Running,
        options: ApplyOptions,
        edit: impl FnOnce(&mut Store) -> Result<ConfigDiff, ConfigErrors> + Send + 'static,
    ) -> Result<Value, CallError> {
        let diff = self.with_store(edit).await.map_err(|e| refusal(&e))?;
        // The applier logs what it did and what failed.
        let report = running.apply_with(&diff, options).await;
        if report.failed.is_empty() {
            to_json(&report)
        } else {
            Err(CallError::new(
                ErrorCode::Failed,
                format!(
                    "saved in the configuration, but not all of it could be applied (fix it \
                     and run keel reload, or undo the change):\n{}",
                    report.failed.join("\n")
                ),
            ))
        }
    }

    /// Runs `work` on the store, off the runtime's worker threads.
    async fn with_store<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Store) -> Result<T, ConfigErrors> + Send + 'static,
    ) -> Result<T, ConfigErrors> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // Only this task uses the store, so a poisoned lock means a panic in a previous
            // change, which never leaves a half-written file (writes are atomic renames).
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            work(&mut store)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigErrors::one(
                ErrorKind::Io,
                "configuration",
                format!("the configuration task failed: {e}"),
            ))
        })
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
        let mut changes = match self.with_store(Store::reload).await {
            Ok(changes) => changes,
            Err(errors) => {
                error!("reload refused, nothing changed:\n{errors}");
                return Err(errors);
            }
        };
        {
            // No file I/O under this lock: the store's configuration is only read.
            let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            running.retry(store.config(), &mut changes);
        }
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

/// The control protocol's error for a refused change: the kind picks the code, the message
/// holds every located error.
fn refusal(errors: &ConfigErrors) -> CallError {
    let code = match errors.kind {
        ErrorKind::Invalid => ErrorCode::Invalid,
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::Conflict => ErrorCode::Conflict,
        ErrorKind::Io => ErrorCode::Failed,
    };
    CallError::new(code, errors.to_string())
}

fn to_json(value: &impl serde::Serialize) -> Result<Value, CallError> {
    serde_json::to_value(value)
        .map_err(|e| CallError::new(ErrorCode::Failed, format!("cannot encode the result: {e}")))
}

/// The sessions a control request's filter names.
fn session_filter(filter: LogoutFilter) -> SessionFilter {
    let LogoutFilter {
        target,
        initiator,
        tsih,
        portal,
    } = filter;
    SessionFilter {
        target,
        initiator,
        tsih,
        portal,
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

    fn start_store(path: &std::path::Path) -> Store {
        Store::load(path).unwrap()
    }

    /// keel serving target A from `path`, with its writer.
    async fn serving_a(path: &std::path::Path, dir: &std::path::Path) -> (Running, Control) {
        write(path, dir, &[A]);
        let store = start_store(path);
        let (running, _) = Running::start(store.config()).await.unwrap();
        (running, Control::new(store))
    }

    #[tokio::test]
    async fn a_reload_applies_the_difference_and_a_broken_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        let (mut running, mut control) = serving_a(&path, dir.path()).await;

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

    /// Target B's LUN cannot open: its file's directory is a regular file.
    fn write_with_blocked_b(path: &std::path::Path, dir: &std::path::Path) {
        write(path, dir, &[A, B]);
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, text.replace("\"b.img\"", "\"blocker/b.img\"")).unwrap();
    }

    #[tokio::test]
    async fn a_reload_that_partly_fails_is_a_failed_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        let (mut running, mut control) = serving_a(&path, dir.path()).await;

        std::fs::write(dir.path().join("blocker"), "").unwrap();
        write_with_blocked_b(&path, dir.path());
        let failed = control
            .carry_out(Command::Reload, &mut running)
            .await
            .unwrap_err();
        assert_eq!(failed.code, ErrorCode::Failed, "{}", failed.message);
        assert!(
            failed.message.contains(&format!("target {B} LUN 0")),
            "{}",
            failed.message
        );
        // What could be applied was: B is served, without its LUN.
        assert!(running.service().targets.get(B).is_some());

        // The cause fixed, the same configuration reloaded retries the LUN.
        std::fs::remove_file(dir.path().join("blocker")).unwrap();
        let retried = control
            .carry_out(Command::Reload, &mut running)
            .await
            .unwrap();
        assert_eq!(
            retried["done"][0].as_str(),
            Some(format!("added target {B} LUN 0").as_str()),
            "{retried}"
        );
        let b = running.service().targets.get(B).unwrap();
        assert!(b.device.lun(0).is_some());
        assert_eq!(running.lun_failures().count(), 0);
        // And once it is served, there is nothing left to retry.
        let again = control.reload(&mut running).await.unwrap();
        assert_eq!(again, ApplyReport::default());
    }

    #[tokio::test]
    async fn socket_commands_change_the_file_and_the_running_state_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        write(&path, dir.path(), &[A]);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replacen("[server]\n", "[server]\ninclude = \"targets.d\"\n", 1);
        std::fs::write(&path, text).unwrap();
        let store = start_store(&path);
        let (mut running, _) = Running::start(store.config()).await.unwrap();
        let mut control = Control::new(store);
        let spec = |v: Value| match v {
            Value::Object(map) => map,
            _ => unreachable!(),
        };

        // target.add: saved in targets.d and served.
        let added = control
            .carry_out(
                Command::TargetAdd {
                    target: spec(
                        json!({"name": B, "lun": [{"lun": 0, "file": "b.img", "size": "1MiB"}]}),
                    ),
                },
                &mut running,
            )
            .await
            .unwrap();
        assert!(added["done"][0].as_str().unwrap().contains(B), "{added}");
        assert!(running.service().targets.get(B).is_some());
        assert!(
            dir.path()
                .join("targets.d")
                .join(format!("{B}.toml"))
                .exists()
        );

        // The same again: a conflict, nothing changes.
        let again = control
            .carry_out(
                Command::TargetAdd {
                    target: spec(json!({"name": B, "lun": [{"lun": 0, "file": "b.img"}]})),
                },
                &mut running,
            )
            .await
            .unwrap_err();
        assert_eq!(again.code, ErrorCode::Conflict, "{}", again.message);

        // An invalid LUN: refused with the reason, the target keeps one LUN.
        let bad = control
            .carry_out(
                Command::LunAdd {
                    target: B.into(),
                    lun: spec(json!({"lun": 1, "file": "b1.img", "block_size": 1000})),
                },
                &mut running,
            )
            .await
            .unwrap_err();
        assert_eq!(bad.code, ErrorCode::Invalid, "{}", bad.message);
        assert!(bad.message.contains("block_size"), "{}", bad.message);
        let device = running.service().targets.get(B).unwrap().device.clone();
        assert_eq!(device.luns().len(), 1);

        // lun.resize grows the medium.
        control
            .carry_out(
                Command::LunResize {
                    target: B.into(),
                    lun: 0,
                    size: 2 << 20,
                },
                &mut running,
            )
            .await
            .unwrap();
        assert_eq!(device.lun(0).unwrap().capacity_blocks(), (2 << 20) / 512);

        // status and session.list answer from the running state.
        let status = control
            .carry_out(Command::Status, &mut running)
            .await
            .unwrap();
        assert_eq!(status["targets"].as_array().unwrap().len(), 2, "{status}");
        let sessions = control
            .carry_out(Command::SessionList { target: None }, &mut running)
            .await
            .unwrap();
        assert_eq!(sessions, json!({"sessions": []}));

        // target.remove: gone from the registry and the directory; its file is kept.
        control
            .carry_out(
                Command::TargetRemove {
                    name: B.into(),
                    destroy_volumes: false,
                },
                &mut running,
            )
            .await
            .unwrap();
        assert!(running.service().targets.get(B).is_none());
        assert!(
            !dir.path()
                .join("targets.d")
                .join(format!("{B}.toml"))
                .exists()
        );
        assert!(dir.path().join("b.img").exists());
        let missing = control
            .carry_out(
                Command::TargetRemove {
                    name: B.into(),
                    destroy_volumes: false,
                },
                &mut running,
            )
            .await
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound, "{}", missing.message);
    }
}
