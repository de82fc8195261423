//! The login phase of a connection (RFC 7143 §6): reads Login Requests, feeds them to the
//! sans-IO [`LoginMachine`], sends its responses, and admits the new session in the
//! [`SessionRegistry`](super::SessionRegistry) (reinstating an older one with the same
//! ISID, §6.3.5).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;
use tracing::info;

use super::limits::{OverLimit, REFUSE_DELAY};
use super::login::SessionType;
use super::login::{self, LoginMachine, LoginOutcome, LoginStep, LoginTarget};
use super::session::{AdmitError, SessionGuard, SessionKey};
use super::session_core::{TargetCatalog, opcode_name};
use super::status;
use super::{Service, Target};
use crate::wire::framing::{BufQueue, FrameError, frame_parts};
use crate::wire::{self, LoginRequest, PduCodec, Reply, Request, SeqNums};

pub(super) struct LoggedIn<'a> {
    pub outcome: LoginOutcome,
    pub guard: SessionGuard<'a>,
    /// The StatSN the first full-feature response will carry.
    pub stat_sn: u32,
    /// The target a Normal session logged in to, as it was when the login completed (by
    /// name it may since have been removed, or replaced by another); `None` for discovery.
    pub target: Option<Arc<Target>>,
}

/// How long a login waits for a closed admission gate: long enough for a node coming back
/// to reload its tables (milliseconds), short enough that an initiator whose ARP cache still
/// points here retries soon, and reaches the node that took the address over.
const ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// The login phase, within the configured time and until shutdown: `None` if the
/// connection ends without a session.
pub(super) async fn login<'a>(
    reader: &mut FramedRead<OwnedReadHalf, PduCodec>,
    wr: &mut OwnedWriteHalf,
    ctx: &'a Arc<Service>,
    over: Option<OverLimit>,
    local: SocketAddr,
) -> Result<Option<LoggedIn<'a>>, FrameError> {
    let login_time = Duration::from_secs(ctx.settings.login_timeout_secs);
    tokio::select! {
        r = tokio::time::timeout(login_time, login_phase(reader, wr, ctx, over, local)) => match r {
            Ok(r) => r,
            Err(_) => {
                info!("login did not complete within {login_time:?}; dropping the connection");
                Ok(None)
            }
        },
        _ = ctx.shutdown.cancelled() => Ok(None),
    }
}

async fn login_phase<'a>(
    reader: &mut FramedRead<OwnedReadHalf, PduCodec>,
    wr: &mut OwnedWriteHalf,
    ctx: &'a Arc<Service>,
    over: Option<OverLimit>,
    local: SocketAddr,
) -> Result<Option<LoggedIn<'a>>, FrameError> {
    if let Some(reason) = ctx.admission.closed_because() {
        // Held, not refused: see admission.rs.
        info!(%reason, "login held until this node may serve");
        if !ctx.admission.wait_open(ADMISSION_WAIT).await {
            info!(%reason, "this node still may not serve; dropping the connection unanswered");
            return Ok(None);
        }
    }
    let mut machine = LoginMachine::new(&ctx.settings).with_access(ctx.access.clone());
    let mut stat_sn: u32 = 1;
    let mut first = true;
    // The target the login is checked against; a removal or re-addition during the login's
    // round trips is caught against it once the session is admitted.
    let looked_up: Mutex<Option<Arc<Target>>> = Mutex::new(None);
    let find = |name: &str| {
        let found = ctx.targets.get(name);
        *looked_up.lock().unwrap_or_else(|e| e.into_inner()) = found.clone();
        found.map(|t| LoginTarget {
            name: t.name.clone(),
            alias: t.alias.clone(),
            portal_group_tag: t.portal_group_tag,
            chap: t.chap.clone(),
            allowed: t.allowed.clone(),
        })
    };
    loop {
        let Some(raw) = reader.next().await else {
            return Ok(None);
        };
        let raw = raw?;
        let req = match Request::decode(&raw.bhs, &raw.ahs, raw.data) {
            Ok(Request::Login(req)) => req,
            Ok(other) => {
                info!(
                    "PDU {:?} before login completed; closing",
                    opcode_name(&other)
                );
                return Ok(None);
            }
            Err(e) => {
                info!("undecodable PDU during login: {e}");
                return Ok(None);
            }
        };
        if let Some(over) = over {
            // Held briefly: open-iscsi retries class-3 refusals at once (see limits.rs).
            tokio::time::sleep(REFUSE_DELAY).await;
            info!(status = "0x0302", "login refused: {over}");
            ctx.metrics.count_login("", status::OUT_OF_RESOURCES.0);
            let r = login::failure_response(&req, status::OUT_OF_RESOURCES);
            send_login(wr, r, &mut stat_sn, &req, ctx).await?;
            return Ok(None);
        }
        if first && let Some(to) = ctx.redirects.lookup(local.ip()) {
            // A planned move (RFC 7143 §11.13.5, 0x0101): the initiator logs in at `to`.
            info!(status = "0x0101", target_address = %to, "login redirected");
            ctx.metrics
                .count_login("", status::TARGET_MOVED_TEMPORARILY.0);
            let mut r = login::failure_response(&req, status::TARGET_MOVED_TEMPORARILY);
            r.data = Bytes::from(format!("TargetAddress={to}\0"));
            send_login(wr, r, &mut stat_sn, &req, ctx).await?;
            return Ok(None);
        }
        if first && req.tsih != 0 {
            // Adding a connection to an existing session (MC/S) arrives with a later issue.
            let status = if ctx.sessions.tsih_exists(req.tsih) {
                status::TOO_MANY_CONNECTIONS
            } else {
                status::SESSION_DOES_NOT_EXIST
            };
            ctx.metrics.count_login("", status.0);
            send_login(
                wr,
                login::failure_response(&req, status),
                &mut stat_sn,
                &req,
                ctx,
            )
            .await?;
            info!(tsih = req.tsih, "login to an existing session refused");
            return Ok(None);
        }
        first = false;
        match machine.step(&req, &find) {
            LoginStep::Respond(response) => {
                send_login(wr, response, &mut stat_sn, &req, ctx).await?;
            }
            LoginStep::Fail(response, why) => {
                info!(
                    status = format!(
                        "0x{:02x}{:02x}",
                        response.status_class, response.status_detail
                    ),
                    "login refused: {why}"
                );
                let target = machine.target_name().unwrap_or_default();
                ctx.metrics.count_login(target, response.status_class);
                if (response.status_class, response.status_detail) == status::AUTHENTICATION_FAILED
                {
                    // Slows down online guessing of CHAP secrets; class 2 is not retried by
                    // initiators, so nobody legitimate waits on this twice.
                    tokio::time::sleep(REFUSE_DELAY).await;
                }
                send_login(wr, response, &mut stat_sn, &req, ctx).await?;
                return Ok(None);
            }
            LoginStep::Complete(mut response, outcome) => {
                let key = SessionKey {
                    initiator: outcome.initiator_name.clone(),
                    isid: outcome.isid,
                    target: target_of(&outcome),
                };
                let max = ctx.limits.max_sessions_per_initiator as usize;
                let guard = match ctx.sessions.admit_limited(key, max).await {
                    Ok(guard) => guard,
                    Err(e) => {
                        let status = match e {
                            // Temporary: the initiator retries and finds the old session gone.
                            AdmitError::OldSessionBusy => status::SERVICE_UNAVAILABLE,
                            AdmitError::NoTsih => status::OUT_OF_RESOURCES,
                            AdmitError::TooManySessions => {
                                tokio::time::sleep(REFUSE_DELAY).await;
                                status::OUT_OF_RESOURCES
                            }
                        };
                        info!(
                            initiator = %outcome.initiator_name,
                            status = format!("0x{:02x}{:02x}", status.0, status.1),
                            "login refused: {e}"
                        );
                        let target = machine.target_name().unwrap_or_default();
                        ctx.metrics.count_login(target, status.0);
                        let r = login::failure_response(&req, status);
                        send_login(wr, r, &mut stat_sn, &req, ctx).await?;
                        return Ok(None);
                    }
                };
                // Removing a target takes it out of the registry, then asks the sessions
                // registered by then to log out. A login admitted after that sweep would never
                // be asked: checked here, after admission, it is refused instead (RFC 7143
                // §11.13.5, 02/04 Target removed). A replaced access (same device) is not a
                // removal: the login completes with what it was checked against.
                let target = looked_up.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let target = match (&outcome.target, target) {
                    (None, _) => None,
                    (Some(_), Some(then)) if still_served(ctx, &then) => Some(then),
                    (Some(t), _) => {
                        drop(guard);
                        info!(
                            initiator = %outcome.initiator_name,
                            target = %t.name,
                            status = "0x0204",
                            "login refused: the target was removed during the login"
                        );
                        ctx.metrics.count_login(&t.name, status::TARGET_REMOVED.0);
                        let r = login::failure_response(&req, status::TARGET_REMOVED);
                        send_login(wr, r, &mut stat_sn, &req, ctx).await?;
                        return Ok(None);
                    }
                };
                response.tsih = guard.tsih;
                ctx.metrics.count_login(&target_of(&outcome), 0);
                send_login(wr, response, &mut stat_sn, &req, ctx).await?;
                return Ok(Some(LoggedIn {
                    outcome: *outcome,
                    guard,
                    stat_sn,
                    target,
                }));
            }
        }
    }
}

/// Whether `target` is still the one the registry serves under its name: the same device
/// (an access change replaces the `Target` but keeps its device and units).
fn still_served(ctx: &Service, target: &Arc<Target>) -> bool {
    ctx.targets
        .get(&target.name)
        .is_some_and(|now| Arc::ptr_eq(&now.device, &target.device))
}

async fn send_login(
    wr: &mut OwnedWriteHalf,
    mut response: wire::LoginResponse,
    stat_sn: &mut u32,
    req: &LoginRequest,
    ctx: &Service,
) -> std::io::Result<()> {
    response.sn = SeqNums {
        stat_sn: *stat_sn,
        exp_cmd_sn: req.cmd_sn,
        max_cmd_sn: req.cmd_sn.wrapping_add(ctx.settings.queue_depth.max(1) - 1),
    };
    *stat_sn = stat_sn.wrapping_add(1);
    let data = response.data.clone();
    let pdu = Reply::Login(response).encode();
    let mut parts = Vec::new();
    frame_parts(&pdu.header, &data, false, false, &mut parts);
    let mut queue = BufQueue::default();
    for p in parts {
        queue.push(p);
    }
    wr.write_all_buf(&mut queue).await
}

/// The target a completed login is to (empty for discovery), as the metrics name it.
fn target_of(outcome: &LoginOutcome) -> String {
    outcome
        .target
        .as_ref()
        .map(|t| t.name.clone())
        .unwrap_or_default()
}

/// The targets a session's SendTargets reports (RFC 7143 §6.3.1): in discovery, every target
/// this initiator may use (looked up at each request, so targets come and go); in a normal
/// session only its own.
pub(super) fn session_catalog(
    ctx: &Arc<Service>,
    session_type: SessionType,
    initiator: &str,
    own: Option<(String, u16)>,
) -> Box<dyn TargetCatalog> {
    match session_type {
        SessionType::Discovery => {
            let (ctx, initiator) = (ctx.clone(), initiator.to_owned());
            Box::new(move |which: &str| {
                let targets = match which {
                    "All" => ctx.targets.list(),
                    name => ctx.targets.get(name).into_iter().collect(),
                };
                let visible = targets
                    .into_iter()
                    .filter(|t| t.allowed.permits(&initiator));
                visible
                    .map(|t| (t.name.clone(), t.portal_group_tag))
                    .collect()
            })
        }
        SessionType::Normal => Box::new(move |_: &str| own.iter().cloned().collect()),
    }
}
