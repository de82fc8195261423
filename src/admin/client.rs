//! The client side of the control socket, for the CLI (`keel status`, `keel target add`, ...)
//! and tests: connect, send one request, read its reply. Blocking std I/O: a CLI command makes
//! one call and needs no runtime.
//!
//! Also here, so the CLI stays declarations: the one-line LUN spec (`0:file=a.img,size=1GiB`)
//! and the human rendering of results.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::protocol::{CallError, Command, encode_request, parse_reply};
use super::status::{StatusReport, render_human};

/// Longest reply read (a status of thousands of targets fits many times over).
const MAX_REPLY: u64 = 256 * 1024 * 1024;

/// How long a call may take: a reload or a LUN add that creates a file is seconds at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a call did not return a result.
#[derive(Debug)]
pub enum ClientError {
    /// The socket could not be reached.
    Connect { path: PathBuf, source: io::Error },
    /// The connection failed mid-call.
    Io(io::Error),
    /// The reply was not a protocol reply.
    Protocol(String),
    /// keel answered with an error.
    Call(CallError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { path, source } => write!(
                f,
                "cannot reach keel's control socket {}: {source} (is keel running? \
                 --socket or KEEL_SOCKET name another socket)",
                path.display()
            ),
            ClientError::Io(e) => write!(f, "control socket: {e}"),
            ClientError::Protocol(why) => write!(f, "control socket: {why}"),
            ClientError::Call(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A connection to the control socket; calls on it are answered in order.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        })
    }

    /// Sends `command` and waits for its reply.
    pub fn call(&mut self, command: &Command) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let sent = self.writer.write_all(&encode_request(Some(id), command));
        // A peer keel refuses (forbidden, busy) gets one error line and is closed, maybe
        // before the request is written: read that line before reporting the failed write.
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_REPLY)
            .read_until(b'\n', &mut line);
        match (sent, read) {
            (Err(e), _) if line.is_empty() => return Err(e.into()),
            (_, Err(e)) if line.is_empty() => return Err(e.into()),
            _ => {}
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol(if line.is_empty() {
                "keel closed the connection without a reply".into()
            } else {
                "the reply was cut short".into()
            }));
        }
        let (got, reply) = parse_reply(&line).map_err(ClientError::Protocol)?;
        match (got, reply) {
            // A connection-level refusal (forbidden, busy) carries no id.
            (None, Err(e)) => Err(ClientError::Call(e)),
            (Some(got), reply) if got == id => reply.map_err(ClientError::Call),
            (got, _) => Err(ClientError::Protocol(format!(
                "the reply is for request {got:?}, not {id}"
            ))),
        }
    }
}

/// One call on a connection of its own.
pub fn call(socket: &Path, command: &Command) -> Result<Value, ClientError> {
    Client::connect(socket)?.call(command)
}

/// Keys of `[[target.lun]]` whose values are integers and booleans; every other value of a
/// one-line spec is a string (`size` and `sanitize_rate` take "1GiB" as well as bytes).
const INTEGER_KEYS: &[&str] = &["lun", "block_size", "physical_block_size"];
const BOOLEAN_KEYS: &[&str] = &["read_only", "removable"];

/// Parses a one-line LUN spec: `[N:]key=value,key=value,flag`, such as
/// `0:file=disk.img,size=10GiB,read_only`; `N:` is short for `lun=N`, a bare flag is `true`.
pub fn lun_spec(text: &str) -> Result<Map<String, Value>, String> {
    let mut spec = Map::new();
    let mut rest = text.trim();
    if let Some((number, tail)) = rest.split_once(':')
        && !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit())
    {
        let lun: u64 = number
            .parse()
            .map_err(|_| format!("LUN number {number:?} is too large"))?;
        spec.insert("lun".into(), lun.into());
        rest = tail;
    }
    for item in rest.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (item, None),
        };
        let value = match (value, key) {
            (None, k) if BOOLEAN_KEYS.contains(&k) => Value::Bool(true),
            (None, k) => return Err(format!("{k:?} needs a value ({k}=...)")),
            (Some(v), k) if BOOLEAN_KEYS.contains(&k) => match v {
                "true" | "yes" | "1" => Value::Bool(true),
                "false" | "no" | "0" => Value::Bool(false),
                _ => return Err(format!("{k}={v}: use true or false")),
            },
            (Some(v), k) if INTEGER_KEYS.contains(&k) => v
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("{k}={v}: not a whole number"))?,
            (Some(v), _) => Value::String(v.to_string()),
        };
        if spec.insert(key.to_string(), value).is_some() {
            return Err(format!("{key:?} is given twice in {text:?}"));
        }
    }
    if !spec.contains_key("lun") {
        return Err(format!(
            "{text:?} names no LUN number (write it first, as in 0:file=disk.img,size=1GiB)"
        ));
    }
    Ok(spec)
}

/// A JSON object given on the command line (`--json '{...}'`).
pub fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("--json takes a JSON object ({...})".into()),
        Err(e) => Err(format!("--json: {e}")),
    }
}

/// The human form of a command's result.
pub fn render(command: &Command, result: &Value) -> String {
    match command {
        Command::Status => render_status(result),
        _ => {
            let mut out = String::new();
            render_value(&mut out, 0, result);
            if out.is_empty() {
                out.push_str("ok\n");
            }
            out
        }
    }
}

/// `keel status` in human form: the report read back into [`StatusReport`] and rendered; a
/// result that is not one (another keel version) is shown as indented JSON instead.
fn render_status(result: &Value) -> String {
    match serde_json::from_value::<StatusReport>(result.clone()) {
        Ok(report) => render_human(&report),
        Err(_) => {
            let mut text =
                serde_json::to_string_pretty(result).unwrap_or_else(|_| result.to_string());
            text.push('\n');
            text
        }
    }
}

/// Objects as `key: value` lines, lists as `- item` lines, nested by indentation.
fn render_value(out: &mut String, indent: usize, value: &Value) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_value(out, indent + 1, v);
                    }
                    Value::Array(items) if !items.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_value(out, indent + 1, v);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}-\n"));
                        render_value(out, indent + 1, item);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(item))),
                }
            }
        }
        Value::Null => {}
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(_) => "(none)".into(),
        Value::Object(_) => "(none)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_lun_spec_is_one_line() {
        assert_eq!(
            Value::Object(lun_spec("0:file=a.img,size=1GiB,read_only").unwrap()),
            json!({"lun": 0, "file": "a.img", "size": "1GiB", "read_only": true})
        );
        assert_eq!(
            Value::Object(
                lun_spec("lun=3, block=/dev/sdb, block_size=4096, removable=false").unwrap()
            ),
            json!({"lun": 3, "block": "/dev/sdb", "block_size": 4096, "removable": false})
        );
        for (bad, why) in [
            ("file=a.img", "names no LUN number"),
            ("0:file", "needs a value"),
            ("0:block_size=4k", "not a whole number"),
            ("0:read_only=maybe", "true or false"),
            ("0:file=a,file=b", "given twice"),
            ("99999999999999999999999:file=a", "too large"),
        ] {
            let e = lun_spec(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn results_render_as_indented_lines() {
        let r = json!({"done": ["target t added", "LUN 0 ready"], "failed": [],
                       "sessions": [{"tsih": 1, "initiator": "i"}], "note": null});
        assert_eq!(
            render(&Command::Reload, &r),
            "done:\n  - target t added\n  - LUN 0 ready\nfailed: (none)\nnote: -\n\
             sessions:\n  -\n    initiator: i\n    tsih: 1\n"
        );
        assert_eq!(render(&Command::Reload, &Value::Null), "ok\n");
    }

    #[test]
    fn json_specs_must_be_objects() {
        assert!(json_object(r#"{"name":"x"}"#).is_ok());
        assert!(json_object("[1]").unwrap_err().contains("JSON object"));
        assert!(json_object("{").unwrap_err().starts_with("--json:"));
    }
}
