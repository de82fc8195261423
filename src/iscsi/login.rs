//! The login phase (RFC 7143 §6.3) as a sans-IO state machine: Login Requests in, Login
//! Responses and a final outcome out. The connection task does the I/O and, on completion,
//! admits the session (TSIH allocation, reinstatement).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::access::AllowList;
use super::auth::{AuthKeys, Authenticator};
use super::chap::{self, Algorithm, ChapPolicy, Random};
use super::params::{self, Answer, Negotiated, Rule};
use super::settings::Settings;
use super::status;
use crate::wire::{LoginRequest, LoginResponse, SeqNums, text};

/// Login stages (CSG/NSG values, RFC 7143 §11.12.3).
pub const SECURITY_STAGE: u8 = 0;
pub const OPERATIONAL_STAGE: u8 = 1;
pub const FULL_FEATURE_PHASE: u8 = 3;

/// Most text a login may send across continued PDUs before we give up on it.
const MAX_LOGIN_TEXT: usize = 64 * 1024;

/// What the login machine needs to know about a target an initiator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginTarget {
    pub name: String,
    pub alias: Option<String>,
    pub portal_group_tag: u16,
    /// CHAP demanded by this target; `None`: no authentication.
    pub chap: Option<Arc<ChapPolicy>>,
    /// Initiators admitted to this target.
    pub allowed: Arc<AllowList>,
}

/// The server-wide authentication settings a login needs.
#[derive(Clone, Debug)]
pub struct LoginAccess {
    /// CHAP algorithms keel accepts, in any order (the strongest offered one is chosen).
    pub algorithms: Vec<Algorithm>,
    /// CHAP demanded of discovery sessions; `None`: discovery is open.
    pub discovery_chap: Option<Arc<ChapPolicy>>,
    /// Where challenges come from.
    pub random: Random,
}

impl Default for LoginAccess {
    fn default() -> Self {
        LoginAccess {
            algorithms: chap::ALGORITHMS.iter().map(|d| d.algorithm).collect(),
            discovery_chap: None,
            random: chap::os_random,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Everything the connection needs once login succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginOutcome {
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub isid: [u8; 6],
    pub cid: u16,
    pub session_type: SessionType,
    pub target: Option<LoginTarget>,
    /// The CHAP user the initiator authenticated as, if it did.
    pub chap_user: Option<String>,
    pub params: Negotiated,
    /// CmdSN of the login: the first command of the session carries it (§4.2.2.1).
    pub cmd_sn: u32,
}

/// What to do after one Login Request.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginStep {
    /// Send the response and wait for the next request.
    Respond(LoginResponse),
    /// Login is complete: admit the session, set the response's TSIH, send it, and enter the
    /// full feature phase.
    Complete(LoginResponse, Box<LoginOutcome>),
    /// Send the (failure) response and close the connection; the string says why, for logs.
    Fail(LoginResponse, String),
}

/// State of one connection's login.
#[derive(Debug)]
pub struct LoginMachine {
    settings: Settings,
    stage: Option<u8>,
    pending_text: BytesMut,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    session_type: Option<SessionType>,
    target: Option<LoginTarget>,
    negotiated: Negotiated,
    answered: HashSet<String>,
    declared_our_limits: bool,
    /// The first complete request (its text possibly spread over continued PDUs) has been
    /// processed: names, target lookup, access control.
    introduced: bool,
    access: LoginAccess,
    auth: Authenticator,
}

impl LoginMachine {
    pub fn new(settings: &Settings) -> Self {
        LoginMachine {
            settings: settings.clone(),
            stage: None,
            pending_text: BytesMut::new(),
            initiator_name: None,
            initiator_alias: None,
            session_type: None,
            target: None,
            negotiated: Negotiated::defaults(settings),
            answered: HashSet::new(),
            declared_our_limits: false,
            introduced: false,
            access: LoginAccess::default(),
            auth: Authenticator::default(),
        }
    }

    /// The target the login named and found, once it has (for the metrics' login counts).
    pub fn target_name(&self) -> Option<&str> {
        self.target.as_ref().map(|t| t.name.as_str())
    }

    /// Sets the authentication settings (default: no discovery CHAP, every algorithm).
    pub fn with_access(mut self, access: LoginAccess) -> Self {
        self.access = access;
        self
    }

    /// The CHAP policy this login must satisfy: the discovery one or the target's.
    fn policy(&self) -> Option<&ChapPolicy> {
        match self.session_type {
            Some(SessionType::Discovery) => self.access.discovery_chap.as_deref(),
            _ => self.target.as_ref().and_then(|t| t.chap.as_deref()),
        }
    }

    /// Whether `key=value` changes a declaration of the first request (initiator name,
    /// target name, session type).
    fn redeclares(&self, key: &str, value: &str) -> bool {
        match key {
            "InitiatorName" => self.initiator_name.as_deref() != Some(value),
            "TargetName" => self.target.as_ref().map(|t| t.name.as_str()) != Some(value),
            "SessionType" => {
                let declared = match self.session_type {
                    Some(SessionType::Discovery) => "Discovery",
                    _ => "Normal",
                };
                value != declared
            }
            _ => false,
        }
    }

    /// Processes one Login Request. `find_target` resolves a TargetName to a target this
    /// portal serves (and may refuse it, e.g. for access control, by returning `None`).
    pub fn step(
        &mut self,
        req: &LoginRequest,
        find_target: &dyn Fn(&str) -> Option<LoginTarget>,
    ) -> LoginStep {
        let mut response = LoginResponse {
            csg: req.csg,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
            ..Default::default()
        };
        let fail = |mut response: LoginResponse, status: status::Status, why: String| {
            response.status_class = status.0;
            response.status_detail = status.1;
            response.transit = false;
            LoginStep::Fail(response, why)
        };

        // Version 0x00 is the only one there is (RFC 7143 §11.12.4).
        if req.version_min > 0 {
            return fail(
                response,
                status::UNSUPPORTED_VERSION,
                format!("version_min {}", req.version_min),
            );
        }
        let expected_stage = self.stage;
        match (expected_stage, req.csg) {
            (None, SECURITY_STAGE | OPERATIONAL_STAGE) => {}
            (Some(stage), csg) if stage == csg => {}
            (_, csg) => {
                return fail(
                    response,
                    status::INITIATOR_ERROR,
                    format!("login request in stage {csg}, expected {expected_stage:?}"),
                );
            }
        }
        self.stage = Some(req.csg);

        // Text may span several PDUs (C bit): collect it and ask for more (§6.3).
        if self.pending_text.len() + req.data.len() > MAX_LOGIN_TEXT {
            return fail(
                response,
                status::INITIATOR_ERROR,
                "login text too long".into(),
            );
        }
        self.pending_text.extend_from_slice(&req.data);
        if req.continue_bit {
            return LoginStep::Respond(response);
        }
        let text_bytes = std::mem::take(&mut self.pending_text);
        let pairs = match text::parse(&text_bytes) {
            Ok(pairs) => pairs,
            Err(e) => return fail(response, status::INITIATOR_ERROR, e.to_string()),
        };

        // "First" is the first complete request: a request whose text came in continued PDUs
        // has already set the stage, and must not skip the target lookup, the allow list or
        // the CHAP requirement.
        let first = !self.introduced;
        self.introduced = true;

        let mut replies: Vec<(String, String)> = Vec::new();
        let mut requested_target: Option<String> = None;
        let mut auth_keys = AuthKeys::default();
        for (key, value) in &pairs {
            if auth_keys.take(key, value) {
                continue;
            }
            // Who logs in to what, and the session type, are declared by the first request
            // (RFC 7143 §6.3, §13.10-13.11): the access checks and the CHAP policy were
            // decided by them. A later request may repeat them, not change them.
            if !first && self.redeclares(key, value) {
                return fail(
                    response,
                    status::INITIATOR_ERROR,
                    format!("{key} changed after the first login request"),
                );
            }
            match key.as_str() {
                "InitiatorName" => self.initiator_name = Some(value.clone()),
                "InitiatorAlias" => self.initiator_alias = Some(value.clone()),
                "TargetName" => requested_target = Some(value.clone()),
                "SessionType" => match value.as_str() {
                    "Normal" => self.session_type = Some(SessionType::Normal),
                    "Discovery" => self.session_type = Some(SessionType::Discovery),
                    other => {
                        return fail(
                            response,
                            status::SESSION_TYPE_NOT_SUPPORTED,
                            format!("SessionType={other}"),
                        );
                    }
                },
                _ => {
                    if self.answered.contains(key) {
                        continue;
                    }
                    let discovery = self.session_type == Some(SessionType::Discovery);
                    let answer = match params::lookup(key) {
                        Some(def) if def.rule == Rule::Login => Answer::Silent,
                        Some(def) => params::negotiate(
                            def,
                            value,
                            discovery,
                            &self.settings,
                            &mut self.negotiated,
                        ),
                        None => Answer::Reply("NotUnderstood".into()),
                    };
                    if let Answer::Reply(v) = answer {
                        self.answered.insert(key.clone());
                        replies.push((key.clone(), v));
                    }
                }
            }
        }

        // The first request names the initiator and, for a normal session, the target.
        if first {
            if self.initiator_name.as_deref().is_none_or(str::is_empty) {
                return fail(
                    response,
                    status::MISSING_PARAMETER,
                    "no InitiatorName".into(),
                );
            }
            let session_type = *self.session_type.get_or_insert(SessionType::Normal);
            if session_type == SessionType::Normal {
                let Some(name) = requested_target else {
                    return fail(
                        response,
                        status::MISSING_PARAMETER,
                        "no TargetName in a normal session".into(),
                    );
                };
                let Some(target) = find_target(&name) else {
                    return fail(
                        response,
                        status::NOT_FOUND,
                        format!("no target {name:?} here"),
                    );
                };
                // §13.9: TargetPortalGroupTag goes in the first response of a normal session.
                replies.push((
                    "TargetPortalGroupTag".into(),
                    target.portal_group_tag.to_string(),
                ));
                if let Some(alias) = &target.alias {
                    replies.push(("TargetAlias".into(), alias.clone()));
                }
                // Access control after existence: an unknown name is 0x0203, a known one
                // this initiator may not use is 0x0202 (RFC 7143 §11.13.5).
                let initiator = self.initiator_name.as_deref().unwrap_or_default();
                if !target.allowed.permits(initiator) {
                    return fail(
                        response,
                        status::AUTHORIZATION_FAILED,
                        format!("initiator {initiator:?} is not allowed to log in to {name:?}"),
                    );
                }
                self.target = Some(target);
            }
        }

        // Authentication (RFC 7143 §6.3.1, §12.1.3) happens in the security stage only, and
        // nobody reaches the operational stage without it when the target demands it.
        if req.csg == SECURITY_STAGE {
            let policy = self.policy().cloned();
            let algorithms = self.access.algorithms.clone();
            if let Err(e) = self.auth.step(
                &auth_keys,
                policy.as_ref(),
                &algorithms,
                self.access.random,
                &mut replies,
            ) {
                return fail(response, e.status, e.why);
            }
        } else if !auth_keys.is_empty() {
            return fail(
                response,
                status::INITIATOR_ERROR,
                "authentication keys outside the security stage".into(),
            );
        } else if first && self.policy().is_some() {
            return fail(
                response,
                status::AUTHENTICATION_FAILED,
                "login skipped the security stage; this target requires CHAP".into(),
            );
        }

        if req.csg == OPERATIONAL_STAGE && !self.declared_our_limits {
            self.declared_our_limits = true;
            replies.push((
                "MaxRecvDataSegmentLength".into(),
                self.settings.max_recv_data_segment_length.to_string(),
            ));
        }

        if req.transit {
            let valid = matches!(
                (req.csg, req.nsg),
                (SECURITY_STAGE, OPERATIONAL_STAGE)
                    | (SECURITY_STAGE, FULL_FEATURE_PHASE)
                    | (OPERATIONAL_STAGE, FULL_FEATURE_PHASE)
            );
            if !valid {
                return fail(
                    response,
                    status::INITIATOR_ERROR,
                    format!("invalid transition {} -> {}", req.csg, req.nsg),
                );
            }
            if req.csg == SECURITY_STAGE && !self.auth.may_leave_security(self.policy()) {
                if !self.auth.in_progress() {
                    return fail(
                        response,
                        status::AUTHENTICATION_FAILED,
                        "the initiator left the security stage without authenticating; \
                         this target requires CHAP"
                            .into(),
                    );
                }
                // CHAP under way: stay in the security stage. The target answers T=0 while it
                // needs more exchanges, whatever the initiator asked (RFC 7143 §6.3).
            } else {
                response.transit = true;
                response.nsg = req.nsg;
                self.stage = Some(req.nsg);
            }
        }
        response.data = text::encode(&replies);

        if response.transit && req.nsg == FULL_FEATURE_PHASE {
            params::finish(&mut self.negotiated);
            let outcome = LoginOutcome {
                initiator_name: self.initiator_name.clone().unwrap_or_default(),
                initiator_alias: self.initiator_alias.clone(),
                isid: req.isid,
                cid: req.cid,
                session_type: self.session_type.unwrap_or(SessionType::Normal),
                target: self.target.clone(),
                chap_user: self.auth.user().map(str::to_string),
                params: self.negotiated,
                cmd_sn: req.cmd_sn,
            };
            return LoginStep::Complete(response, Box::new(outcome));
        }
        LoginStep::Respond(response)
    }
}

/// A bare failure response for a request that never reached the machine (e.g. refused
/// before login processing).
pub fn failure_response(req: &LoginRequest, status: status::Status) -> LoginResponse {
    LoginResponse {
        csg: req.csg,
        isid: req.isid,
        tsih: req.tsih,
        itt: req.itt,
        status_class: status.0,
        status_detail: status.1,
        sn: SeqNums::default(),
        data: Bytes::new(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Login Request as a test initiator sends it (also used by the auth tests).
    pub(super) fn req(csg: u8, nsg: u8, transit: bool, pairs: &[(&str, &str)]) -> LoginRequest {
        LoginRequest {
            transit,
            continue_bit: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0, 0, 0, 0, 1],
            tsih: 0,
            itt: 7,
            cid: 0,
            cmd_sn: 10,
            exp_stat_sn: 0,
            data: text::encode(pairs),
        }
    }

    fn targets(name: &str) -> Option<LoginTarget> {
        (name == "iqn.2026-11.org.example:disk0").then(|| LoginTarget {
            name: name.into(),
            alias: Some("disk0".into()),
            portal_group_tag: 1,
            chap: None,
            allowed: Arc::default(),
        })
    }

    fn pairs(r: &LoginResponse) -> Vec<(String, String)> {
        text::parse(&r.data).unwrap()
    }

    fn has(r: &LoginResponse, k: &str, v: &str) -> bool {
        pairs(r).iter().any(|(a, b)| a == k && b == v)
    }

    #[test]
    fn a_normal_login_through_both_stages() {
        let mut m = LoginMachine::new(&Settings::default());
        let step = m.step(
            &req(
                0,
                1,
                true,
                &[
                    ("InitiatorName", "iqn.x:i"),
                    ("TargetName", "iqn.2026-11.org.example:disk0"),
                    ("SessionType", "Normal"),
                    ("AuthMethod", "None"),
                ],
            ),
            &targets,
        );
        let LoginStep::Respond(r) = step else {
            panic!("{step:?}")
        };
        assert!(r.transit && r.nsg == 1 && r.status_class == 0);
        assert!(has(&r, "TargetPortalGroupTag", "1"));
        assert!(has(&r, "AuthMethod", "None"));
        let step = m.step(
            &req(
                1,
                3,
                true,
                &[
                    ("HeaderDigest", "CRC32C,None"),
                    ("DataDigest", "None"),
                    ("MaxRecvDataSegmentLength", "262144"),
                    ("ImmediateData", "Yes"),
                    ("X-com.example.foo", "1"),
                ],
            ),
            &targets,
        );
        let LoginStep::Complete(r, outcome) = step else {
            panic!("{step:?}")
        };
        assert!(has(&r, "HeaderDigest", "CRC32C"));
        assert!(has(&r, "X-com.example.foo", "NotUnderstood"));
        assert!(has(
            &r,
            "MaxRecvDataSegmentLength",
            &Settings::default().max_recv_data_segment_length.to_string()
        ));
        assert!(outcome.params.header_digest && !outcome.params.data_digest);
        assert_eq!(outcome.params.initiator_max_recv, 262144);
        assert_eq!(outcome.session_type, SessionType::Normal);
        assert_eq!(outcome.cmd_sn, 10);
    }

    #[test]
    fn a_discovery_login_straight_to_full_feature() {
        let mut m = LoginMachine::new(&Settings::default());
        let step = m.step(
            &req(
                0,
                3,
                true,
                &[("InitiatorName", "iqn.x:i"), ("SessionType", "Discovery")],
            ),
            &targets,
        );
        let LoginStep::Complete(_, outcome) = step else {
            panic!("{step:?}")
        };
        assert_eq!(outcome.session_type, SessionType::Discovery);
        assert!(outcome.target.is_none());
    }

    #[test]
    fn failures_carry_the_right_status() {
        let cases: Vec<(LoginRequest, status::Status)> = vec![
            (
                req(
                    0,
                    1,
                    true,
                    &[("TargetName", "iqn.2026-11.org.example:disk0")],
                ),
                status::MISSING_PARAMETER,
            ),
            (
                req(0, 1, true, &[("InitiatorName", "iqn.x:i")]),
                status::MISSING_PARAMETER,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    &[
                        ("InitiatorName", "iqn.x:i"),
                        ("TargetName", "iqn.2026-11.org.example:nope"),
                    ],
                ),
                status::NOT_FOUND,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    &[("InitiatorName", "iqn.x:i"), ("SessionType", "Weird")],
                ),
                status::SESSION_TYPE_NOT_SUPPORTED,
            ),
            (
                req(
                    0,
                    1,
                    true,
                    &[
                        ("InitiatorName", "iqn.x:i"),
                        ("SessionType", "Discovery"),
                        ("AuthMethod", "CHAP"),
                    ],
                ),
                status::AUTHENTICATION_FAILED,
            ),
            (
                req(
                    1,
                    0,
                    true,
                    &[("InitiatorName", "iqn.x:i"), ("SessionType", "Discovery")],
                ),
                status::INITIATOR_ERROR,
            ),
            (req(3, 3, true, &[]), status::INITIATOR_ERROR),
        ];
        for (request, expected) in cases {
            let mut m = LoginMachine::new(&Settings::default());
            match m.step(&request, &targets) {
                LoginStep::Fail(r, _) => {
                    assert_eq!((r.status_class, r.status_detail), expected, "{request:?}")
                }
                other => panic!("{request:?} gave {other:?}"),
            }
        }
        let mut m = LoginMachine::new(&Settings::default());
        let mut bad_version = req(0, 1, true, &[("InitiatorName", "iqn.x:i")]);
        bad_version.version_min = 2;
        assert!(
            matches!(m.step(&bad_version, &targets), LoginStep::Fail(r, _) if r.status_detail == 5)
        );
    }

    #[test]
    fn continued_text_is_collected_before_answering() {
        let mut m = LoginMachine::new(&Settings::default());
        let full = text::encode(&[("InitiatorName", "iqn.x:i"), ("SessionType", "Discovery")]);
        let mut first = req(0, 3, false, &[]);
        first.continue_bit = true;
        first.data = full.slice(..10);
        assert!(
            matches!(m.step(&first, &targets), LoginStep::Respond(r) if r.data.is_empty() && !r.transit)
        );
        let mut second = req(0, 3, true, &[]);
        second.data = full.slice(10..);
        assert!(matches!(m.step(&second, &targets), LoginStep::Complete(..)));
    }

    #[test]
    fn staying_in_a_stage_without_transit_is_allowed() {
        let mut m = LoginMachine::new(&Settings::default());
        let step = m.step(
            &req(
                0,
                1,
                false,
                &[("InitiatorName", "iqn.x:i"), ("SessionType", "Discovery")],
            ),
            &targets,
        );
        assert!(
            matches!(step, LoginStep::Respond(ref r) if !r.transit),
            "{step:?}"
        );
        assert!(
            matches!(m.step(&req(0, 1, true, &[]), &targets), LoginStep::Respond(r) if r.transit)
        );
        assert!(matches!(
            m.step(&req(1, 3, true, &[]), &targets),
            LoginStep::Complete(..)
        ));
    }
}

#[cfg(test)]
#[path = "login_auth_tests.rs"]
mod auth_tests;
