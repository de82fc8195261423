//! Runs the configured `zfs` command as a child process (tokio::process): never blocks the
//! runtime, captures stdout and stderr, bounds the run time and the output kept, and kills
//! the child if the caller gives up (`kill_on_drop`).

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::provision::backend::BackendError;

use super::command::Exit;

/// stdout kept from one call: a listing of 10,000 volumes with 255-byte names and tags is
/// about 5 MiB.
const STDOUT_LIMIT: usize = 64 << 20;
/// stderr kept from one call (only its gist ends up in an error message).
const STDERR_LIMIT: usize = 64 << 10;

/// How one call ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Runner {
    /// Program and leading arguments, e.g. ["sudo", "-n", "zfs"]. Never empty.
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl Runner {
    /// "zfs create" for messages: the program's name and the subcommand.
    pub fn describe(&self, args: &[String]) -> String {
        let program = self
            .command
            .last()
            .map(|p| p.rsplit('/').next().unwrap_or(p))
            .unwrap_or("zfs");
        match args.first() {
            Some(subcommand) => format!("{program} {subcommand}"),
            None => program.to_string(),
        }
    }

    /// Runs the command with `args` appended. An error only when it could not be started;
    /// every way it can end (status, signal, time limit) is in [`Finished::exit`].
    pub async fn run(&self, args: &[String]) -> Result<Finished, BackendError> {
        let Some((program, leading)) = self.command.split_first() else {
            return Err(BackendError::Failed("the zfs command is empty".into()));
        };
        let mut command = Command::new(program);
        command
            .args(leading)
            .args(args)
            // zfs translates its messages; keel reads them ("dataset is busy").
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            BackendError::Failed(format!("cannot run {:?}: {e}", self.command.join(" ")))
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finish = async {
            let (stdout, stderr, status) = tokio::join!(
                read_bounded(stdout, STDOUT_LIMIT),
                read_bounded(stderr, STDERR_LIMIT),
                child.wait()
            );
            (stdout, stderr, status)
        };
        let outcome = tokio::time::timeout(self.timeout, finish).await;
        let Ok((stdout, stderr, status)) = outcome else {
            // Reap it so no zombie is left; it was started by us and may be stuck in a
            // lock queue on the server. (With sudo this ends sudo, not the root zfs under
            // it, which finishes on its own: the outcome is unknown either way.)
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return Ok(Finished {
                exit: Exit::TimedOut(self.timeout),
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        };
        let status = status.map_err(|e| {
            BackendError::Unknown(format!("waiting for {:?}: {e}", self.command.join(" ")))
        })?;
        let (stdout, stdout_complete) = stdout;
        let (stderr, _) = stderr;
        let exit = if !stdout_complete {
            Exit::OutputTooLarge
        } else if let Some(code) = status.code() {
            Exit::Code(code)
        } else {
            Exit::Signal(status.signal().unwrap_or(0))
        };
        Ok(Finished {
            exit,
            stdout,
            stderr,
        })
    }
}

/// Reads a pipe to its end, keeping at most `limit` bytes (the rest is drained so the child
/// never blocks on a full pipe). Returns the bytes and whether they are all there was (false
/// also when reading failed).
async fn read_bounded<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), true);
    };
    let mut kept = Vec::new();
    let mut complete = true;
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) => break,
            Err(_) => {
                complete = false;
                break;
            }
            Ok(n) => {
                let room = limit - kept.len();
                if n > room {
                    complete = false;
                }
                kept.extend_from_slice(&buffer[..n.min(room)]);
            }
        }
    }
    (kept, complete)
}
