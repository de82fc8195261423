//! The control protocol, version 1: one JSON object per line over the control socket.
//!
//! Request: `{"v":1,"id":7,"cmd":"target.add", ...arguments}`; `id` is optional (any
//! integer from 0 to 2^64-1) and echoed in the reply. Reply: `{"v":1,"id":7,"ok":true,
//! "result":{...}}` or `{"v":1,"id":7,"ok":false,"error":{"code":"...","message":"..."}}`.
//!
//! Parsing is strict so that a typo never does something else than asked: `v` is required,
//! unknown commands and unknown argument names are refused, a key given twice in any object
//! (the request, or the target and LUN specs in it) is refused (JSON leaves that undefined;
//! serde_json would keep the last silently), and the target and LUN specs must be expressible
//! in TOML (no `null`), because they become `[[target]]` tables.
//! Nothing here runs a command: the socket hands a [`Call`] to the server's control loop.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use crate::config::parse_size_text;
use crate::iscsi::PortalMatch;
use crate::iscsi::redirects::check_target_address;

/// The protocol version this keel speaks.
pub const VERSION: u64 = 1;

/// Longest request line accepted, newline included.
pub const MAX_LINE: usize = 64 * 1024;

/// Every command name, as written in `cmd`.
pub const COMMANDS: &[&str] = &[
    "status",
    "reload",
    "target.add",
    "target.remove",
    "lun.add",
    "lun.remove",
    "lun.resize",
    "session.list",
    "session.logout",
    "session.close",
    "reservations.reload",
    "health",
];

/// What a request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// `{"cmd":"status"}`: targets, LUNs, sessions, totals.
    Status,
    /// `{"cmd":"reload"}`: re-read the configuration and apply the difference.
    Reload,
    /// `{"cmd":"target.add","target":{...}}`: the keys of a `[[target]]` table, LUNs under
    /// `"lun": [{...}, ...]`.
    TargetAdd { target: Map<String, Value> },
    /// `{"cmd":"target.remove","name":"iqn..."}`.
    TargetRemove {
        name: String,
        /// `"destroy_volumes": true`: also destroy the volumes keel created for its LUNs.
        destroy_volumes: bool,
    },
    /// `{"cmd":"lun.add","target":"iqn...","lun":{...}}`: the keys of a `[[target.lun]]` table.
    LunAdd {
        target: String,
        lun: Map<String, Value>,
    },
    /// `{"cmd":"lun.remove","target":"iqn...","lun":1}`.
    LunRemove {
        target: String,
        lun: u64,
        /// `"destroy_volume": true`: also destroy the volume keel created for it.
        destroy_volume: bool,
    },
    /// `{"cmd":"lun.resize","target":"iqn...","lun":0,"size":"2GiB"}`: size in bytes or text.
    LunResize { target: String, lun: u64, size: u64 },
    /// `{"cmd":"session.list"}`, optionally `"target":"iqn..."`.
    SessionList { target: Option<String> },
    /// `{"cmd":"session.logout", ...filter}`: asks matching sessions to log out; with
    /// `"redirect":"ADDRESS"` (and `"redirect_secs"`, default 60) logins arriving on the
    /// filter's portal address meanwhile are redirected there (a planned move).
    SessionLogout {
        filter: LogoutFilter,
        redirect: Option<LoginRedirect>,
    },
    /// `{"cmd":"session.close", ...filter}`: ends matching sessions at once (their portal's
    /// address has left this node: a CTDB releaseip).
    SessionClose(LogoutFilter),
    /// `{"cmd":"reservations.reload"}`: every LUN whose reservations live in the cluster
    /// adopts the table committed there (a CTDB takeip, before answering on the address).
    ReservationsReload,
    /// `{"cmd":"health"}`: what would make this node unfit to serve (CTDB monitor).
    Health,
}

/// Which sessions `session.logout` reaches: all that match every field given. At least one
/// field is required, so that logging out every session on the host is never an accident.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogoutFilter {
    pub target: Option<String>,
    pub initiator: Option<String>,
    /// The session's TSIH (RFC 7143 §11.12.9: 16 bits).
    pub tsih: Option<u16>,
    /// The portal (keel's local address) the session's connection came in on: an address
    /// and port, or an IP (every port).
    pub portal: Option<PortalMatch>,
}

impl LogoutFilter {
    fn is_empty(&self) -> bool {
        *self == LogoutFilter::default()
    }
}

/// Where logins arriving on a portal address go during a planned move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginRedirect {
    /// A TargetAddress (RFC 7143 §13.8), e.g. "10.9.0.12:3260,1".
    pub target_address: String,
    /// How long the redirection lasts.
    pub seconds: u64,
}

/// How long a redirection lasts unless the request says.
pub const DEFAULT_REDIRECT_SECS: u64 = 60;

/// A parsed request handed to the server's control loop, with where its answer goes.
#[derive(Debug)]
pub struct Call {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Value, CallError>>,
}

/// Why a request failed; `code` is for programs, `message` for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallError {
    pub code: ErrorCode,
    pub message: String,
}

impl CallError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CallError {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        CallError::new(ErrorCode::BadRequest, message)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for CallError {}

/// The error codes of the protocol (README, "Control socket").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or mistyped field, an unknown argument.
    BadRequest,
    /// `v` is not a version this keel speaks.
    UnsupportedVersion,
    /// `cmd` names no command.
    UnknownCommand,
    /// The configuration change does not validate; the message holds the located errors.
    Invalid,
    /// No such target, LUN or session.
    NotFound,
    /// The change collides with the current state (a target that already exists).
    Conflict,
    /// Validated but could not be carried out (a backing file that cannot be created).
    Failed,
    /// The line is longer than [`MAX_LINE`]; the connection is closed.
    TooLong,
    /// More requests than the connection's rate allows; nothing was done.
    RateLimited,
    /// The peer is neither root, keel's own user, nor in `control_group`.
    Forbidden,
    /// Too many control connections at once.
    Busy,
    /// The connection was idle too long; it is closed.
    Timeout,
    /// keel is shutting down and takes no more commands.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: &[ErrorCode] = &[
        ErrorCode::BadRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownCommand,
        ErrorCode::Invalid,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::Failed,
        ErrorCode::TooLong,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::Busy,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::Invalid => "invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Failed => "failed",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == name)
    }
}

/// A JSON object whose keys are each present once, in the order written.
struct UniqueFields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for UniqueFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = UniqueFields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueFields, A::Error> {
                let mut fields: Vec<(String, Value)> = Vec::new();
                // A set, not a scan of `fields`: a 64 KiB line holds thousands of keys, and a
                // quadratic check would let one line cost far more than its size.
                let mut seen: HashSet<String> = HashSet::new();
                while let Some((key, UniqueValue(value))) =
                    map.next_entry::<String, UniqueValue>()?
                {
                    if !seen.insert(key.clone()) {
                        return Err(twice(&key));
                    }
                    fields.push((key, value));
                }
                Ok(UniqueFields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn twice<E: de::Error>(key: &str) -> E {
    E::custom(format!("the key {key:?} is given twice"))
}

/// Any JSON value whose objects, at every depth, have each key once: the target and LUN specs
/// are objects inside the request (`{"target":{"name":"a","name":"b"}}` must not quietly
/// become "b").
struct UniqueValue(Value);

impl<'de> Deserialize<'de> for UniqueValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = UniqueValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<UniqueValue, E> {
                // JSON has no NaN or infinity, so from_f64 never fails on parsed text.
                Ok(UniqueValue(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::String(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<UniqueValue, E> {
                Ok(UniqueValue(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<UniqueValue, D::Error> {
                UniqueValue::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueValue, A::Error> {
                let mut items = Vec::new();
                while let Some(UniqueValue(item)) = seq.next_element()? {
                    items.push(item);
                }
                Ok(UniqueValue(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueValue, A::Error> {
                let mut object = Map::new();
                while let Some((key, UniqueValue(value))) = map.next_entry::<String, _>()? {
                    if object.contains_key(&key) {
                        return Err(twice(&key));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueValue(Value::Object(object)))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// The arguments of one request, consumed as they are read so that leftovers are unknown.
struct Args {
    cmd: &'static str,
    fields: Vec<(String, Value)>,
}

impl Args {
    fn take(&mut self, name: &str) -> Option<Value> {
        let at = self.fields.iter().position(|(k, _)| k == name)?;
        Some(self.fields.remove(at).1)
    }

    fn required(&mut self, name: &str, what: &str) -> Result<Value, CallError> {
        self.take(name)
            .ok_or_else(|| CallError::bad_request(format!("{} needs {name:?}: {what}", self.cmd)))
    }

    fn string(&mut self, name: &str, what: &str) -> Result<String, CallError> {
        let v = self.required(name, what)?;
        self.as_string(name, v, what)
    }

    fn optional_string(&mut self, name: &str, what: &str) -> Result<Option<String>, CallError> {
        self.take(name)
            .map(|v| self.as_string(name, v, what))
            .transpose()
    }

    fn as_string(&self, name: &str, v: Value, what: &str) -> Result<String, CallError> {
        match v {
            Value::String(s) => Ok(s),
            other => Err(self.mistyped(name, &other, what)),
        }
    }

    fn optional_bool(&mut self, name: &str) -> Result<Option<bool>, CallError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.mistyped(name, &other, "true or false")),
        }
    }

    fn integer(&mut self, name: &str, what: &str) -> Result<u64, CallError> {
        let v = self.required(name, what)?;
        v.as_u64().ok_or_else(|| self.mistyped(name, &v, what))
    }

    fn object(&mut self, name: &str, what: &str) -> Result<Map<String, Value>, CallError> {
        match self.required(name, what)? {
            Value::Object(map) => {
                to_toml_table(&map)?;
                Ok(map)
            }
            other => Err(self.mistyped(name, &other, what)),
        }
    }

    fn size(&mut self, name: &str) -> Result<u64, CallError> {
        let what = "bytes, or text such as \"2GiB\"";
        match self.required(name, what)? {
            Value::Number(n) => n.as_u64().ok_or_else(|| {
                CallError::bad_request(format!("{}: {name:?} must be {what}", self.cmd))
            }),
            Value::String(s) => parse_size_text(&s)
                .map_err(|why| CallError::bad_request(format!("{}: {why}", self.cmd))),
            other => Err(self.mistyped(name, &other, what)),
        }
    }

    fn mistyped(&self, name: &str, got: &Value, what: &str) -> CallError {
        CallError::bad_request(format!(
            "{}: {name:?} must be {what}, not {}",
            self.cmd,
            kind(got)
        ))
    }

    /// Refuses any argument no getter took.
    fn finish(self) -> Result<(), CallError> {
        match self.fields.first() {
            None => Ok(()),
            Some((k, _)) => Err(CallError::bad_request(format!(
                "{} takes no argument {k:?}",
                self.cmd
            ))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `id` of a request line, read without building the request: for the reply to a line
/// refused before parsing (the rate limit). One linear pass that skips every other value;
/// `None` when the line is not an object with one integer `id`.
pub fn request_id(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    // serde reads a struct from an array too; a request is an object.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<IdOnly>(line).ok()?.id
}

/// Parses one request line (without or with its `\n`). On error, the request's `id` when it
/// could be read, so that the reply still carries it.
pub fn parse_request(line: &[u8]) -> Result<(Option<u64>, Command), (Option<u64>, CallError)> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err((None, CallError::bad_request("empty request")));
    }
    let UniqueFields(mut fields) = serde_json::from_slice(line).map_err(|e| {
        (
            None,
            CallError::bad_request(format!("not a JSON object: {e}")),
        )
    })?;
    let mut take = |name: &str| {
        let at = fields.iter().position(|(k, _)| k == name)?;
        Some(fields.remove(at).1)
    };
    let id = match take("id") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(id) => Some(id),
            None => {
                return Err((
                    None,
                    CallError::bad_request(format!(
                        "\"id\" must be an integer from 0 to 2^64-1, not {}",
                        kind(&v)
                    )),
                ));
            }
        },
    };
    let fail = |e: CallError| (id, e);
    match take("v") {
        None => {
            return Err(fail(CallError::bad_request(format!(
                "missing \"v\" (the protocol version: {VERSION})"
            ))));
        }
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(fail(CallError::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported (this keel speaks {VERSION})"),
            )));
        }
    }
    let cmd = match take("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(other) => {
            return Err(fail(CallError::bad_request(format!(
                "\"cmd\" must be a string, not {}",
                kind(&other)
            ))));
        }
        None => {
            return Err(fail(CallError::bad_request(
                "missing \"cmd\" (the command's name)",
            )));
        }
    };
    let Some(&name) = COMMANDS.iter().find(|&&c| c == cmd) else {
        let shown: String = cmd.chars().take(64).collect();
        return Err(fail(CallError::new(
            ErrorCode::UnknownCommand,
            format!("unknown command {shown:?} (known: {})", COMMANDS.join(", ")),
        )));
    };
    let args = Args { cmd: name, fields };
    command(args).map(|c| (id, c)).map_err(fail)
}

const TARGET_NAME: &str = "a target name (a string)";
const LUN_NUMBER: &str = "a LUN number (an integer)";

fn command(mut a: Args) -> Result<Command, CallError> {
    let command = match a.cmd {
        "status" => Command::Status,
        "reload" => Command::Reload,
        "target.add" => Command::TargetAdd {
            target: a.object("target", "an object with the keys of a [[target]] table")?,
        },
        "target.remove" => Command::TargetRemove {
            name: a.string("name", TARGET_NAME)?,
            destroy_volumes: a.optional_bool("destroy_volumes")?.unwrap_or(false),
        },
        "lun.add" => Command::LunAdd {
            target: a.string("target", TARGET_NAME)?,
            lun: a.object("lun", "an object with the keys of a [[target.lun]] table")?,
        },
        "lun.remove" => Command::LunRemove {
            target: a.string("target", TARGET_NAME)?,
            lun: a.integer("lun", LUN_NUMBER)?,
            destroy_volume: a.optional_bool("destroy_volume")?.unwrap_or(false),
        },
        "lun.resize" => Command::LunResize {
            target: a.string("target", TARGET_NAME)?,
            lun: a.integer("lun", LUN_NUMBER)?,
            size: a.size("size")?,
        },
        "session.list" => Command::SessionList {
            target: a.optional_string("target", TARGET_NAME)?,
        },
        name @ ("session.logout" | "session.close") => {
            let target = a.optional_string("target", TARGET_NAME)?;
            let initiator = a.optional_string("initiator", "an initiator name (a string)")?;
            let tsih = match a.take("tsih") {
                None => None,
                Some(v) => match v.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(n) => Some(n),
                    None => {
                        return Err(CallError::bad_request(format!(
                            "{name}: \"tsih\" must be an integer from 0 to 65535, not {v}"
                        )));
                    }
                },
            };
            let portal =
                match a.optional_string("portal", "an address such as \"10.0.0.1:3260\"")? {
                    None => None,
                    Some(text) => Some(text.parse::<PortalMatch>().map_err(|why| {
                        CallError::bad_request(format!("{name}: \"portal\" {why}"))
                    })?),
                };
            let filter = LogoutFilter {
                target,
                initiator,
                tsih,
                portal,
            };
            if filter.is_empty() {
                return Err(CallError::bad_request(format!(
                    "{name} needs at least one of \"target\", \"initiator\", \"tsih\", \"portal\""
                )));
            }
            if name == "session.close" {
                Command::SessionClose(filter)
            } else {
                let redirect = match a
                    .optional_string("redirect", "an address such as \"10.0.0.2:3260\"")?
                {
                    None => None,
                    Some(text) => {
                        let Some(PortalMatch::Ip(_) | PortalMatch::Address(_)) = filter.portal
                        else {
                            return Err(CallError::bad_request(
                                "session.logout: \"redirect\" needs \"portal\": the address whose logins go elsewhere",
                            ));
                        };
                        let target_address = check_target_address(&text).map_err(|why| {
                            CallError::bad_request(format!("session.logout: \"redirect\" {why}"))
                        })?;
                        let seconds = match a.take("redirect_secs") {
                            None => DEFAULT_REDIRECT_SECS,
                            Some(v) => match v.as_u64().filter(|s| (1..=86_400).contains(s)) {
                                Some(s) => s,
                                None => {
                                    return Err(CallError::bad_request(format!(
                                        "session.logout: \"redirect_secs\" must be an integer from 1 to 86400, not {v}"
                                    )));
                                }
                            },
                        };
                        Some(LoginRedirect {
                            target_address,
                            seconds,
                        })
                    }
                };
                Command::SessionLogout { filter, redirect }
            }
        }
        "reservations.reload" => Command::ReservationsReload,
        "health" => Command::Health,
        other => {
            return Err(CallError::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {other:?}"),
            ));
        }
    };
    a.finish()?;
    Ok(command)
}

impl Command {
    /// The name written in `cmd`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Reload => "reload",
            Command::TargetAdd { .. } => "target.add",
            Command::TargetRemove { .. } => "target.remove",
            Command::LunAdd { .. } => "lun.add",
            Command::LunRemove { .. } => "lun.remove",
            Command::LunResize { .. } => "lun.resize",
            Command::SessionList { .. } => "session.list",
            Command::SessionLogout { .. } => "session.logout",
            Command::SessionClose(_) => "session.close",
            Command::ReservationsReload => "reservations.reload",
            Command::Health => "health",
        }
    }

    /// The command's arguments as they appear in a request.
    fn arguments(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        match self {
            Command::Status | Command::Reload | Command::ReservationsReload | Command::Health => {}
            Command::TargetAdd { target } => put("target", Value::Object(target.clone())),
            Command::TargetRemove {
                name,
                destroy_volumes,
            } => {
                put("name", name.clone().into());
                if *destroy_volumes {
                    put("destroy_volumes", true.into());
                }
            }
            Command::LunAdd { target, lun } => {
                put("target", target.clone().into());
                put("lun", Value::Object(lun.clone()));
            }
            Command::LunRemove {
                target,
                lun,
                destroy_volume,
            } => {
                put("target", target.clone().into());
                put("lun", (*lun).into());
                if *destroy_volume {
                    put("destroy_volume", true.into());
                }
            }
            Command::LunResize { target, lun, size } => {
                put("target", target.clone().into());
                put("lun", (*lun).into());
                put("size", (*size).into());
            }
            Command::SessionList { target } => {
                if let Some(t) = target {
                    put("target", t.clone().into());
                }
            }
            Command::SessionLogout {
                filter: f,
                redirect: _,
            }
            | Command::SessionClose(f) => {
                if let Some(t) = &f.target {
                    put("target", t.clone().into());
                }
                if let Some(i) = &f.initiator {
                    put("initiator", i.clone().into());
                }
                if let Some(t) = f.tsih {
                    put("tsih", t.into());
                }
                if let Some(p) = f.portal {
                    put("portal", p.to_string().into());
                }
                if let Command::SessionLogout {
                    redirect: Some(r), ..
                } = self
                {
                    put("redirect", r.target_address.clone().into());
                    put("redirect_secs", r.seconds.into());
                }
            }
        }
        m
    }
}

#[derive(Serialize)]
struct RequestLine<'a> {
    v: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    cmd: &'a str,
    #[serde(flatten)]
    args: Map<String, Value>,
}

#[derive(Serialize)]
struct ReplyLine<'a> {
    v: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a CallError>,
}

/// One request line, `\n` included.
pub fn encode_request(id: Option<u64>, command: &Command) -> Vec<u8> {
    finish_line(serde_json::to_vec(&RequestLine {
        v: VERSION,
        id,
        cmd: command.name(),
        args: command.arguments(),
    }))
}

/// One reply line, `\n` included.
pub fn encode_reply(id: Option<u64>, reply: &Result<Value, CallError>) -> Vec<u8> {
    let line = match reply {
        Ok(result) => ReplyLine {
            v: VERSION,
            id,
            ok: true,
            result: Some(result),
            error: None,
        },
        Err(error) => ReplyLine {
            v: VERSION,
            id,
            ok: false,
            result: None,
            error: Some(error),
        },
    };
    finish_line(serde_json::to_vec(&line))
}

fn finish_line(encoded: serde_json::Result<Vec<u8>>) -> Vec<u8> {
    // Serializing these types cannot fail: every map key is a string and no Serialize impl
    // of theirs returns an error. Should that ever change, the peer still gets a valid line.
    let mut line = encoded.unwrap_or_else(|e| {
        format!(
            r#"{{"v":{VERSION},"ok":false,"error":{{"code":"failed","message":"cannot encode the reply: {}"}}}}"#,
            e.to_string().replace(['"', '\\'], "'")
        )
        .into_bytes()
    });
    line.push(b'\n');
    line
}

/// Reads one reply line (for the client): its id and the result or the error. An error code
/// this keel does not know (a newer server) reads as `failed`, its name kept in the message.
pub fn parse_reply(line: &[u8]) -> Result<(Option<u64>, Result<Value, CallError>), String> {
    let UniqueFields(fields) =
        serde_json::from_slice(line).map_err(|e| format!("the reply is not a JSON object: {e}"))?;
    let mut m: Map<String, Value> = fields.into_iter().collect();
    if m.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(format!("the reply is not protocol version {VERSION}"));
    }
    let id = m.get("id").and_then(Value::as_u64);
    match m.get("ok") {
        Some(Value::Bool(true)) => Ok((id, Ok(m.remove("result").unwrap_or(Value::Null)))),
        Some(Value::Bool(false)) => {
            let error = m.remove("error").unwrap_or(Value::Null);
            let code = error.get("code").and_then(Value::as_str).unwrap_or("");
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string();
            let error = match ErrorCode::from_name(code) {
                Some(code) => CallError { code, message },
                None => CallError::new(ErrorCode::Failed, format!("{code}: {message}")),
            };
            Ok((id, Err(error)))
        }
        _ => Err("the reply has no \"ok\" true or false".into()),
    }
}

/// A target or LUN spec as the TOML table the configuration store takes. JSON's `null` has no
/// TOML form, nor has an integer above 2^63-1.
pub fn to_toml_table(map: &Map<String, Value>) -> Result<toml::Table, CallError> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), to_toml(k, v)?)))
        .collect()
}

fn to_toml(key: &str, v: &Value) -> Result<toml::Value, CallError> {
    Ok(match v {
        Value::Null => {
            return Err(CallError::bad_request(format!(
                "{key:?} is null, which a configuration cannot hold (leave the key out)"
            )));
        }
        Value::Bool(b) => toml::Value::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if !n.is_u64() => toml::Value::Float(f),
            _ => {
                return Err(CallError::bad_request(format!(
                    "{key:?}: {n} is larger than a configuration integer (2^63-1)"
                )));
            }
        },
        Value::String(s) => toml::Value::String(s.clone()),
        Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .map(|i| to_toml(key, i))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => toml::Value::Table(to_toml_table(m)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<(Option<u64>, Command), (Option<u64>, CallError)> {
        parse_request(text.as_bytes())
    }

    fn code(text: &str) -> (Option<u64>, ErrorCode, String) {
        let (id, e) = parse(text).expect_err(text);
        (id, e.code, e.message)
    }

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn every_command_parses_and_encodes_back_to_itself() {
        let commands = [
            Command::Status,
            Command::Reload,
            Command::TargetAdd {
                target: object(json!({"name": "iqn.2026-11.io.keel:a",
                    "lun": [{"lun": 0, "file": "a.img", "size": "1GiB"}]})),
            },
            Command::TargetRemove {
                name: "iqn.2026-11.io.keel:a".into(),
                destroy_volumes: false,
            },
            Command::TargetRemove {
                name: "iqn.2026-11.io.keel:a".into(),
                destroy_volumes: true,
            },
            Command::LunAdd {
                target: "iqn.2026-11.io.keel:a".into(),
                lun: object(json!({"lun": 1, "file": "b.img", "size": 1048576, "read_only": true})),
            },
            Command::LunRemove {
                target: "t".into(),
                lun: 3,
                destroy_volume: false,
            },
            Command::LunRemove {
                target: "t".into(),
                lun: 3,
                destroy_volume: true,
            },
            Command::LunResize {
                target: "t".into(),
                lun: 0,
                size: 2 << 30,
            },
            Command::SessionList { target: None },
            Command::SessionList {
                target: Some("t".into()),
            },
            Command::SessionLogout {
                filter: LogoutFilter {
                    target: Some("t".into()),
                    initiator: Some("iqn.1993-08.org.debian:01:x".into()),
                    tsih: Some(7),
                    portal: Some("[::1]:3260".parse().unwrap()),
                },
                redirect: None,
            },
            Command::SessionLogout {
                filter: LogoutFilter {
                    portal: Some("10.9.0.201".parse().unwrap()),
                    ..LogoutFilter::default()
                },
                redirect: Some(LoginRedirect {
                    target_address: "10.9.0.12:3260,1".into(),
                    seconds: 30,
                }),
            },
            Command::SessionClose(LogoutFilter {
                portal: Some("10.9.0.201".parse().unwrap()),
                ..LogoutFilter::default()
            }),
            Command::ReservationsReload,
            Command::Health,
        ];
        // Four commands appear twice (with and without their optional keys).
        assert_eq!(commands.len(), COMMANDS.len() + 4);
        for (i, c) in commands.into_iter().enumerate() {
            let id = (i % 2 == 0).then_some(i as u64);
            let line = encode_request(id, &c);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(parse_request(&line), Ok((id, c)));
        }
    }

    #[test]
    fn the_documented_request_shapes_parse() {
        assert_eq!(
            parse(r#"{"v":1,"id":7,"cmd":"lun.resize","target":"t","lun":0,"size":"2GiB"}"#),
            Ok((
                Some(7),
                Command::LunResize {
                    target: "t".into(),
                    lun: 0,
                    size: 2 << 30
                }
            ))
        );
        assert_eq!(
            parse("{\"cmd\":\"status\",\"v\":1}\r\n"),
            Ok((None, Command::Status))
        );
        assert_eq!(
            parse(r#"{"v":1,"cmd":"session.logout","tsih":65535}"#),
            Ok((
                None,
                Command::SessionLogout {
                    filter: LogoutFilter {
                        tsih: Some(65535),
                        ..LogoutFilter::default()
                    },
                    redirect: None,
                }
            ))
        );
    }

    #[test]
    fn a_portal_is_an_address_or_an_ip_and_closing_needs_a_filter() {
        assert_eq!(
            parse(r#"{"v":1,"cmd":"session.close","portal":"::1"}"#),
            Ok((
                None,
                Command::SessionClose(LogoutFilter {
                    portal: Some(PortalMatch::Ip("::1".parse().unwrap())),
                    ..LogoutFilter::default()
                })
            ))
        );
        let (_, error_code, message) = code(r#"{"v":1,"cmd":"session.close"}"#);
        assert_eq!(error_code, ErrorCode::BadRequest);
        assert!(message.starts_with("session.close needs"), "{message}");
        let (_, _, message) = code(r#"{"v":1,"cmd":"session.logout","portal":"10.0.0.1:x"}"#);
        assert!(message.contains("session.logout: \"portal\""), "{message}");
    }

    #[test]
    fn a_duplicate_among_thousands_of_keys_is_found() {
        let keys: Vec<String> = (0..5000).map(|i| format!("\"k{i}\":0")).collect();
        let line = format!(r#"{{"v":1,"cmd":"status",{},"k4999":1}}"#, keys.join(","));
        let (_, error_code, message) = code(&line);
        assert_eq!(error_code, ErrorCode::BadRequest);
        assert!(message.contains("\"k4999\" is given twice"), "{message}");
        let line = format!(r#"{{"v":1,"cmd":"status",{}}}"#, keys.join(","));
        let (_, _, message) = code(&line);
        assert!(message.contains("takes no argument"), "{message}");
    }

    #[test]
    fn a_key_given_twice_is_refused_at_every_depth() {
        for line in [
            r#"{"v":1,"cmd":"target.add","target":{"name":"a","name":"b"}}"#,
            r#"{"v":1,"cmd":"target.add","target":{"name":"a","lun":[{"lun":0,"lun":1}]}}"#,
            r#"{"v":1,"cmd":"lun.add","target":"a","lun":{"lun":0,"size":"1GiB","size":"2GiB"}}"#,
        ] {
            let (_, error_code, message) = code(line);
            assert_eq!(error_code, ErrorCode::BadRequest, "{line}");
            assert!(message.contains("is given twice"), "{line}: {message}");
        }
        let (_, parsed) = parse(
            r#"{"v":1,"cmd":"target.add","target":{"name":"a","x":[1,-2,0.5,true,"s",{"y":{}}]}}"#,
        )
        .unwrap();
        let Command::TargetAdd { target } = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(
            Value::Object(target),
            json!({"name":"a","x":[1,-2,0.5,true,"s",{"y":{}}]})
        );
    }

    #[test]
    fn the_id_is_read_without_the_request() {
        assert_eq!(request_id(br#"{"v":1,"id":7,"cmd":"status"}"#), Some(7));
        assert_eq!(
            request_id(br#"{"cmd":"nonsense","x":[1,{"y":2}],"id":9}"#),
            Some(9)
        );
        for no_id in [
            &b"{\"v\":1}"[..],
            b"{\"id\":-1}",
            b"{\"id\":1,\"id\":2}",
            b"[1]",
            b"{",
        ] {
            assert_eq!(
                request_id(no_id),
                None,
                "{}",
                String::from_utf8_lossy(no_id)
            );
        }
    }

    #[test]
    fn malformed_requests_get_clear_errors_that_keep_the_id_when_readable() {
        use ErrorCode::*;
        let cases: &[(&str, Option<u64>, ErrorCode, &str)] = &[
            ("", None, BadRequest, "empty request"),
            ("{", None, BadRequest, "not a JSON object"),
            ("[1,2]", None, BadRequest, "not a JSON object"),
            ("\"status\"", None, BadRequest, "not a JSON object"),
            (
                r#"{"v":1,"v":1,"cmd":"status"}"#,
                None,
                BadRequest,
                "given twice",
            ),
            (
                r#"{"v":1,"id":-1,"cmd":"status"}"#,
                None,
                BadRequest,
                "\"id\" must be",
            ),
            (
                r#"{"id":3,"cmd":"status"}"#,
                Some(3),
                BadRequest,
                "missing \"v\"",
            ),
            (
                r#"{"v":2,"id":3,"cmd":"status"}"#,
                Some(3),
                UnsupportedVersion,
                "version 2",
            ),
            (
                r#"{"v":"1","cmd":"status"}"#,
                None,
                UnsupportedVersion,
                "version \"1\"",
            ),
            (r#"{"v":1,"id":4}"#, Some(4), BadRequest, "missing \"cmd\""),
            (
                r#"{"v":1,"cmd":5}"#,
                None,
                BadRequest,
                "\"cmd\" must be a string",
            ),
            (
                r#"{"v":1,"id":5,"cmd":"format.disk"}"#,
                Some(5),
                UnknownCommand,
                "\"format.disk\" (known: status,",
            ),
            (
                r#"{"v":1,"cmd":"status","verbose":true}"#,
                None,
                BadRequest,
                "status takes no argument \"verbose\"",
            ),
            (
                r#"{"v":1,"cmd":"target.add"}"#,
                None,
                BadRequest,
                "target.add needs \"target\"",
            ),
            (
                r#"{"v":1,"cmd":"target.add","target":"x"}"#,
                None,
                BadRequest,
                "must be an object with the keys of a [[target]] table, not a string",
            ),
            (
                r#"{"v":1,"cmd":"target.add","target":{"alias":null}}"#,
                None,
                BadRequest,
                "\"alias\" is null",
            ),
            (
                r#"{"v":1,"cmd":"lun.add","target":"t","lun":{"lun":18446744073709551615}}"#,
                None,
                BadRequest,
                "larger than a configuration integer",
            ),
            (
                r#"{"v":1,"cmd":"target.remove","name":7}"#,
                None,
                BadRequest,
                "\"name\" must be a target name (a string), not a number",
            ),
            (
                r#"{"v":1,"cmd":"lun.remove","target":"t","lun":-1}"#,
                None,
                BadRequest,
                "\"lun\" must be a LUN number",
            ),
            (
                r#"{"v":1,"cmd":"lun.resize","target":"t","lun":0,"size":"2QiB"}"#,
                None,
                BadRequest,
                "unknown unit",
            ),
            (
                r#"{"v":1,"cmd":"lun.resize","target":"t","lun":0,"size":1.5}"#,
                None,
                BadRequest,
                "\"size\" must be bytes",
            ),
            (
                r#"{"v":1,"cmd":"lun.resize","target":"t","lun":0}"#,
                None,
                BadRequest,
                "lun.resize needs \"size\"",
            ),
            (
                r#"{"v":1,"cmd":"session.logout"}"#,
                None,
                BadRequest,
                "at least one of",
            ),
            (
                r#"{"v":1,"cmd":"session.logout","tsih":65536}"#,
                None,
                BadRequest,
                "\"tsih\" must be an integer from 0 to 65535",
            ),
            (
                r#"{"v":1,"cmd":"session.logout","portal":"here"}"#,
                None,
                BadRequest,
                "\"portal\" \"here\"",
            ),
        ];
        for (text, id, want, fragment) in cases {
            let (got_id, got, message) = code(text);
            assert_eq!((got_id, got), (*id, *want), "{text}: {message}");
            assert!(message.contains(fragment), "{text}: {message}");
        }
    }

    #[test]
    fn a_long_decimal_survives_parse_encode_parse() {
        // Found by the control_request fuzz target: without serde_json's float_roundtrip, a
        // decimal with many digits parsed to an f64 one ulp away from the one its shortest
        // form reads back as.
        let line = br#"{"v":1,"cmd":"lun.add","target":"d","lun":{"lun":1,"x":105.57222222222222222222222222222222222222226}}"#;
        let (id, command) = parse_request(line).unwrap();
        assert_eq!(
            parse_request(&encode_request(id, &command)),
            Ok((id, command))
        );
    }

    #[test]
    fn an_unknown_command_name_is_shown_shortened() {
        let long = format!(r#"{{"v":1,"cmd":"{}"}}"#, "x".repeat(10_000));
        let (_, _, message) = code(&long);
        assert!(message.len() < 400, "{}", message.len());
    }

    #[test]
    fn replies_are_one_line_with_the_version_first_and_read_back() {
        let ok = encode_reply(Some(7), &Ok(json!({"targets": []})));
        assert_eq!(
            String::from_utf8(ok.clone()).unwrap(),
            "{\"v\":1,\"id\":7,\"ok\":true,\"result\":{\"targets\":[]}}\n"
        );
        assert_eq!(parse_reply(&ok), Ok((Some(7), Ok(json!({"targets": []})))));
        let err = CallError::new(ErrorCode::Invalid, "a.toml:3: size \"1Q\"\nb.toml:1: x");
        let line = encode_reply(None, &Err(err.clone()));
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"v\":1,\"ok\":false,\"error\":{\"code\":\"invalid\",\"message\":\"a.toml:3: size \\\"1Q\\\"\\nb.toml:1: x\"}}\n"
        );
        assert_eq!(parse_reply(&line), Ok((None, Err(err))));
        let newer = br#"{"v":1,"ok":false,"error":{"code":"quota","message":"m"}}"#;
        assert_eq!(
            parse_reply(newer),
            Ok((None, Err(CallError::new(ErrorCode::Failed, "quota: m"))))
        );
        assert!(parse_reply(b"{\"v\":2,\"ok\":true}").is_err());
    }

    #[test]
    fn every_code_has_a_distinct_wire_name_matching_its_serialization() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for c in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), json!(c.as_str()));
            assert_eq!(ErrorCode::from_name(c.as_str()), Some(*c));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn specs_become_toml_tables() {
        let spec = object(
            json!({"name": "iqn.x:a", "alias": "a", "portal_group_tag": 2,
            "lun": [{"lun": 0, "file": "a.img", "size": "1GiB", "read_only": false}],
            "ratio": 0.5}),
        );
        let table = to_toml_table(&spec).unwrap();
        let text = toml::to_string(&table).unwrap();
        let back: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(back, table);
        assert_eq!(table["lun"][0]["size"].as_str(), Some("1GiB"));
        assert_eq!(table["portal_group_tag"].as_integer(), Some(2));
    }
}
