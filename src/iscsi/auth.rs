//! The security stage's authentication exchange (RFC 7143 §6.3.1, §12.1.3) as a sans-IO
//! state machine, driven by the login machine one Login Request at a time:
//!
//! ```text
//! I->T  AuthMethod=CHAP,None            T->I  AuthMethod=CHAP
//! I->T  CHAP_A=<A1,A2,...>              T->I  CHAP_A=<A> CHAP_I=<I> CHAP_C=<C>
//! I->T  CHAP_N=<N> CHAP_R=<R>           T->I  (one-way: nothing; the target may transit)
//!       [CHAP_I=<I2> CHAP_C=<C2>]             [mutual: CHAP_N=<N2> CHAP_R=<R2>]
//! ```
//!
//! Credential failures carry status 0x0201 (authentication failure, §11.13.5) and a reason
//! for the log that never contains a secret.

use super::chap::{self, Algorithm, ChapPolicy, Random};
use super::status::{self, Status};

/// The authentication keys of one request (other keys go to negotiation).
#[derive(Debug, Default)]
pub struct AuthKeys {
    pub auth_method: Option<String>,
    pub chap_a: Option<String>,
    pub chap_i: Option<String>,
    pub chap_c: Option<String>,
    pub chap_n: Option<String>,
    pub chap_r: Option<String>,
}

impl AuthKeys {
    /// Takes `key` if it is an authentication key; returns whether it did.
    pub fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "AuthMethod" => &mut self.auth_method,
            "CHAP_A" => &mut self.chap_a,
            "CHAP_I" => &mut self.chap_i,
            "CHAP_C" => &mut self.chap_c,
            "CHAP_N" => &mut self.chap_n,
            "CHAP_R" => &mut self.chap_r,
            _ => return false,
        };
        *slot = Some(value.to_string());
        true
    }

    pub fn is_empty(&self) -> bool {
        self.auth_method.is_none() && !self.has_chap()
    }

    fn has_chap(&self) -> bool {
        self.chap_a.is_some()
            || self.chap_i.is_some()
            || self.chap_c.is_some()
            || self.chap_n.is_some()
            || self.chap_r.is_some()
    }
}

/// Why authentication failed: the login status and a reason for the log.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub status: Status,
    pub why: String,
}

fn auth_failed(why: impl Into<String>) -> AuthFailure {
    AuthFailure {
        status: status::AUTHENTICATION_FAILED,
        why: why.into(),
    }
}

fn protocol_error(why: impl Into<String>) -> AuthFailure {
    AuthFailure {
        status: status::INITIATOR_ERROR,
        why: why.into(),
    }
}

#[derive(Debug)]
enum State {
    /// Nothing agreed yet.
    Start,
    /// AuthMethod=None agreed.
    NoAuth,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    AwaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    AwaitResponse {
        algorithm: Algorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    /// The initiator proved its identity as this CHAP user.
    Authenticated { user: String },
}

/// One login's authentication.
#[derive(Debug)]
pub struct Authenticator {
    state: State,
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator {
            state: State::Start,
        }
    }
}

impl Authenticator {
    /// Whether the login may leave the security stage: CHAP succeeded, or the target demands
    /// no authentication and none is under way.
    pub fn may_leave_security(&self, policy: Option<&ChapPolicy>) -> bool {
        match &self.state {
            State::Authenticated { .. } => true,
            State::Start | State::NoAuth => policy.is_none(),
            State::AwaitAlgorithm | State::AwaitResponse { .. } => false,
        }
    }

    /// Whether a CHAP exchange has started and not finished: the target must stay in the
    /// security stage (answer T=0) even if the initiator asked to move on.
    pub fn in_progress(&self) -> bool {
        matches!(
            self.state,
            State::AwaitAlgorithm | State::AwaitResponse { .. }
        )
    }

    /// The authenticated CHAP user, if any.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::Authenticated { user } => Some(user),
            _ => None,
        }
    }

    /// Processes the authentication keys of one request in the security stage, appending
    /// the answers to `replies`.
    pub fn step(
        &mut self,
        keys: &AuthKeys,
        policy: Option<&ChapPolicy>,
        allowed: &[Algorithm],
        random: Random,
        replies: &mut Vec<(String, String)>,
    ) -> Result<(), AuthFailure> {
        if let Some(methods) = &keys.auth_method {
            self.negotiate_method(methods, policy, replies)?;
        }
        if !keys.has_chap() {
            return Ok(());
        }
        let Some(policy) = policy else {
            return Err(protocol_error(
                "CHAP keys but AuthMethod=CHAP was not agreed",
            ));
        };
        match std::mem::replace(&mut self.state, State::NoAuth) {
            State::AwaitAlgorithm => {
                let Some(offered) = &keys.chap_a else {
                    return Err(protocol_error("expected CHAP_A"));
                };
                let Some(algorithm) = chap::choose(offered, allowed) else {
                    return Err(auth_failed(format!(
                        "CHAP_A={offered}: no algorithm allowed here (allowed: {})",
                        names(allowed)
                    )));
                };
                let mut id = [0u8; 1];
                let mut challenge = vec![0u8; algorithm.challenge_len()];
                if !random(&mut id) || !random(&mut challenge) {
                    return Err(AuthFailure {
                        status: status::TARGET_ERROR,
                        why: "no random bytes for a CHAP challenge".into(),
                    });
                }
                replies.push(("CHAP_A".into(), algorithm.code().to_string()));
                replies.push(("CHAP_I".into(), id[0].to_string()));
                replies.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
                self.state = State::AwaitResponse {
                    algorithm,
                    id: id[0],
                    challenge,
                };
                Ok(())
            }
            State::AwaitResponse {
                algorithm,
                id,
                challenge,
            } => {
                let user = self.check_response(keys, policy, algorithm, id, &challenge)?;
                if keys.chap_i.is_some() || keys.chap_c.is_some() {
                    answer_mutual(keys, policy, algorithm, &challenge, replies)?;
                }
                self.state = State::Authenticated { user };
                Ok(())
            }
            _ => Err(protocol_error("CHAP keys out of sequence")),
        }
    }

    fn negotiate_method(
        &mut self,
        methods: &str,
        policy: Option<&ChapPolicy>,
        replies: &mut Vec<(String, String)>,
    ) -> Result<(), AuthFailure> {
        if !matches!(self.state, State::Start) {
            return Err(protocol_error("AuthMethod offered twice"));
        }
        let offers = |m: &str| methods.split(',').any(|x| x.trim() == m);
        match policy {
            Some(_) if offers("CHAP") => {
                replies.push(("AuthMethod".into(), "CHAP".into()));
                self.state = State::AwaitAlgorithm;
                Ok(())
            }
            Some(_) => Err(auth_failed(format!(
                "the target requires CHAP; the initiator offers AuthMethod={methods}"
            ))),
            None if offers("None") => {
                replies.push(("AuthMethod".into(), "None".into()));
                self.state = State::NoAuth;
                Ok(())
            }
            None => Err(auth_failed(format!(
                "the initiator requires AuthMethod={methods}; this target has no CHAP \
                 credentials and offers None"
            ))),
        }
    }

    fn check_response(
        &self,
        keys: &AuthKeys,
        policy: &ChapPolicy,
        algorithm: Algorithm,
        id: u8,
        challenge: &[u8],
    ) -> Result<String, AuthFailure> {
        let (Some(name), Some(r)) = (&keys.chap_n, &keys.chap_r) else {
            return Err(auth_failed("CHAP_N or CHAP_R missing"));
        };
        let Some(credential) = policy.user(name) else {
            return Err(auth_failed(format!("CHAP user {name:?} unknown")));
        };
        let answer =
            chap::decode_binary(r).map_err(|e| auth_failed(format!("CHAP_R malformed: {e}")))?;
        if !chap::verify(algorithm, id, &credential.secret, challenge, &answer) {
            return Err(auth_failed(format!(
                "CHAP user {name:?}: wrong response ({algorithm})"
            )));
        }
        Ok(name.clone())
    }
}

/// Mutual CHAP: the initiator challenges the target, which answers with its own credential.
/// Only reached after the initiator's response was verified, so keel never computes a
/// response for an unauthenticated peer.
fn answer_mutual(
    keys: &AuthKeys,
    policy: &ChapPolicy,
    algorithm: Algorithm,
    our_challenge: &[u8],
    replies: &mut Vec<(String, String)>,
) -> Result<(), AuthFailure> {
    let (Some(i), Some(c)) = (&keys.chap_i, &keys.chap_c) else {
        return Err(auth_failed("mutual CHAP needs both CHAP_I and CHAP_C"));
    };
    let Some(ours) = &policy.mutual else {
        return Err(auth_failed(
            "the initiator asks for mutual CHAP; no target credential is configured",
        ));
    };
    let id = chap::parse_identifier(i).ok_or_else(|| auth_failed("CHAP_I malformed"))?;
    let challenge =
        chap::decode_binary(c).map_err(|e| auth_failed(format!("CHAP_C malformed: {e}")))?;
    if challenge.len() > chap::MAX_CHALLENGE {
        return Err(auth_failed("CHAP_C longer than 1024 bytes"));
    }
    // RFC 7143 §12.1.3: a target receiving its own challenge back is being used as an oracle
    // for its own question (a reflection attack) and must not answer.
    if challenge == our_challenge {
        return Err(auth_failed(
            "CHAP_C repeats the target's own challenge (reflection)",
        ));
    }
    let r = chap::response(algorithm, id, &ours.secret, &challenge);
    replies.push(("CHAP_N".into(), ours.user.clone()));
    replies.push(("CHAP_R".into(), chap::encode_hex(&r)));
    Ok(())
}

fn names(allowed: &[Algorithm]) -> String {
    allowed
        .iter()
        .map(|a| format!("{} ({})", a.code(), a.name()))
        .collect::<Vec<_>>()
        .join(", ")
}
