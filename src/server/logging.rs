//! Where keel's log goes and how it looks: `tracing` events on stderr, filtered by `$KEEL_LOG`
//! (default `info`).
//!
//! Under systemd, stderr is a stream into journald, which stamps every line itself: there the
//! lines carry no timestamp and no colour, and start with a `<N>` syslog priority prefix that
//! journald turns into the entry's priority (sd-daemon(3), so `journalctl -p warning` works).
//! systemd's documented test for that case (systemd.exec(5), `$JOURNAL_STREAM`) is that the
//! variable holds the device and inode numbers of stderr: a stderr redirected elsewhere by the
//! service (or a child that inherited the variable) then gets the ordinary format.
//! Every line of an event carries the prefix, since journald makes each line an entry.
//! (A fatal error main prints with `eprintln!` before exiting has no prefix: journald logs it
//! at the unit's default level, and the failed exit status marks the unit failed anyway.)

use std::ffi::OsStr;
use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the process-wide subscriber. Call once, first thing in `main`.
pub fn init() {
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format().without_time();
        builder
            .with_ansi(false)
            .event_format(SyslogPriority(format))
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(stat) => names_stream(&stream, stat.st_dev, stat.st_ino),
        Err(_) => false,
    }
}

/// Whether a `$JOURNAL_STREAM` value (`DEVICE:INODE`, both decimal) names the file whose
/// `fstat` gave `device` and `inode`.
fn names_stream(value: &OsStr, device: u64, inode: u64) -> bool {
    let Some((d, i)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(device) && i.parse() == Ok(inode)
}

/// The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3): SD_ERR 3,
/// SD_WARNING 4, SD_INFO 6, SD_DEBUG 7).
fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Formats each event as `F` does and prefixes every line of it with the event's syslog
/// priority: journald reads each line as an entry of its own, so the lines of a multi-line
/// message (a reload's located errors, one per line) would otherwise be logged as info.
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let priority = syslog_priority(event.metadata().level());
        for line in text.lines() {
            writeln!(writer, "<{priority}>{line}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(names_stream(OsStr::new("8:1234"), 8, 1234));
        assert!(!names_stream(OsStr::new("8:1235"), 8, 1234));
        assert!(!names_stream(OsStr::new("9:1234"), 8, 1234));
        for malformed in ["", "8", "8:", ":1234", "8:1234:5", "x:y", "-8:1234"] {
            assert!(!names_stream(OsStr::new(malformed), 8, 1234), "{malformed}");
        }
    }

    #[test]
    fn a_file_matches_its_own_stat() {
        let file = tempfile::tempfile().unwrap();
        let stat = rustix::fs::fstat(&file).unwrap();
        let value = format!("{}:{}", stat.st_dev, stat.st_ino);
        assert!(names_stream(OsStr::new(&value), stat.st_dev, stat.st_ino));
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("disk gone");
            tracing::warn!("slow");
            tracing::info!(lun = 3, "listening");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (line, prefix) in lines.iter().zip(["<3>", "<4>", "<6>", "<7>"]) {
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line}"));
            // Without a timestamp the level comes first.
            assert!(
                rest.trim_start().starts_with(['E', 'W', 'I', 'D']),
                "{line}"
            );
            assert!(!rest.contains('\x1b'), "{line}");
        }
        assert!(lines[2].ends_with("listening lun=3"), "{}", lines[2]);
    }

    #[test]
    fn every_line_of_a_multi_line_event_carries_the_priority() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(SyslogPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("reload refused:\na.toml:3: bad\nb.toml:7: worse");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines.iter().all(|l| l.starts_with("<3>")), "{text}");
        assert_eq!(lines[1], "<3>a.toml:3: bad");
        assert_eq!(lines[2], "<3>b.toml:7: worse");
        assert!(text.ends_with('\n'));
    }
}
