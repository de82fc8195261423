//! What the drill tells: one line per event as it happens, and a summary at the end (text
//! for people, JSON for scripts).

use std::time::{Duration, Instant};

use serde::Serialize;

/// How many LBAs and messages the summary lists (the counts cover all).
pub const LISTED: usize = 20;

/// The drill's result. Passed when nothing acknowledged was lost or corrupted, no error got
/// past the retries, and the reservation state never changed under the drill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub portal: String,
    pub target: String,
    pub lun: u64,
    pub initiator: String,
    pub isid: String,
    pub run_id: String,
    pub block_size: u32,
    pub first_lba: u64,
    pub blocks: u64,
    pub duration_secs: f64,
    pub writes_acknowledged: u64,
    /// Writes sent again because their connection died before their status came.
    pub writes_retried: u64,
    pub reads_verified: u64,
    pub full_read_backs: u64,
    pub reconnects: u64,
    pub unit_attentions: u64,
    pub busy: u64,
    /// The longest interval with no command completing, reconnects included.
    pub longest_stall_ms: u64,
    /// LBAs whose acknowledged write was not found on read-back.
    pub lost: u64,
    pub lost_lbas: Vec<u64>,
    pub corrupted: u64,
    pub corrupted_lbas: Vec<u64>,
    /// Failures no retry recovered.
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub reservation_changes: u64,
    pub reservation_change_messages: Vec<String>,
    pub passed: bool,
}

impl Summary {
    pub fn judge(&mut self) {
        self.passed = self.lost == 0
            && self.corrupted == 0
            && self.errors == 0
            && self.reservation_changes == 0;
    }

    pub fn render(&self) -> String {
        let list = |lbas: &[u64], total: u64| {
            if lbas.is_empty() {
                return String::new();
            }
            let shown: Vec<String> = lbas.iter().map(u64::to_string).collect();
            let more = total.saturating_sub(lbas.len() as u64);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(" (LBAs {}{tail})", shown.join(", "))
        };
        let mut out = String::new();
        out.push_str("keel drill summary\n");
        out.push_str(&format!(
            "  target              {} LUN {} at {} (ISID {}, run {})\n",
            self.target, self.lun, self.portal, self.isid, self.run_id
        ));
        out.push_str(&format!(
            "  region              LBAs {}..{} of {} bytes\n",
            self.first_lba,
            self.first_lba + self.blocks.saturating_sub(1),
            self.block_size
        ));
        out.push_str(&format!(
            "  duration            {:.1} s\n",
            self.duration_secs
        ));
        out.push_str(&format!(
            "  writes acknowledged {} ({} retried after a reconnect)\n",
            self.writes_acknowledged, self.writes_retried
        ));
        out.push_str(&format!(
            "  reads verified      {} ({} full read-backs)\n",
            self.reads_verified, self.full_read_backs
        ));
        out.push_str(&format!(
            "  reconnects          {} (unit attentions {}, busy {})\n",
            self.reconnects, self.unit_attentions, self.busy
        ));
        out.push_str(&format!(
            "  longest I/O stall   {} ms\n",
            self.longest_stall_ms
        ));
        out.push_str(&format!(
            "  lost                {}{}\n",
            self.lost,
            list(&self.lost_lbas, self.lost)
        ));
        out.push_str(&format!(
            "  corrupted           {}{}\n",
            self.corrupted,
            list(&self.corrupted_lbas, self.corrupted)
        ));
        out.push_str(&format!("  errors              {}\n", self.errors));
        for m in &self.error_messages {
            out.push_str(&format!("    {m}\n"));
        }
        out.push_str(&format!(
            "  reservation changes {}\n",
            self.reservation_changes
        ));
        for m in &self.reservation_change_messages {
            out.push_str(&format!("    {m}\n"));
        }
        out.push_str(&format!(
            "  result              {}\n",
            if self.passed { "PASS" } else { "FAIL" }
        ));
        out
    }
}

/// Prints events as they happen (each stamped with the time since the drill began) and
/// counts what the summary needs.
pub struct Reporter {
    start: Instant,
    print: bool,
    /// Every event line, kept for tests and callers that do not print (bounded).
    pub lines: Vec<String>,
    pub summary: Summary,
}

const KEPT_LINES: usize = 10_000;

impl Reporter {
    pub fn new(print: bool, summary: Summary) -> Reporter {
        Reporter {
            start: Instant::now(),
            print,
            lines: Vec::new(),
            summary,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn event(&mut self, what: &str) {
        let line = format!("[{:9.3}s] {what}", self.start.elapsed().as_secs_f64());
        if self.print {
            println!("{line}");
        }
        if self.lines.len() < KEPT_LINES {
            self.lines.push(line);
        }
    }

    /// A failure no retry recovers. The first [`LISTED`] are printed and kept; after that,
    /// every hundredth (a target refusing everything would flood the output otherwise).
    pub fn error(&mut self, what: String) {
        self.summary.errors += 1;
        let n = self.summary.errors;
        if n <= LISTED as u64 {
            self.summary.error_messages.push(what.clone());
        }
        if n <= LISTED as u64 || n.is_multiple_of(100) {
            self.event(&format!("error #{n}: {what}"));
        }
    }

    pub fn lost(&mut self, lba: u64, what: String) {
        self.summary.lost += 1;
        if self.summary.lost_lbas.len() < LISTED {
            self.summary.lost_lbas.push(lba);
        }
        if self.summary.lost <= 1000 {
            self.event(&format!("LOST: LBA {lba}: {what}"));
        }
    }

    pub fn corrupted(&mut self, lba: u64, what: String) {
        self.summary.corrupted += 1;
        if self.summary.corrupted_lbas.len() < LISTED {
            self.summary.corrupted_lbas.push(lba);
        }
        if self.summary.corrupted <= 1000 {
            self.event(&format!("CORRUPTED: LBA {lba}: {what}"));
        }
    }

    pub fn reservation_changed(&mut self, what: String) {
        self.summary.reservation_changes += 1;
        if self.summary.reservation_change_messages.len() < LISTED {
            self.summary.reservation_change_messages.push(what.clone());
        }
        self.event(&format!("reservation state changed: {what}"));
    }

    /// Ends the drill: the duration and the verdict.
    pub fn finish(mut self) -> (Summary, Vec<String>) {
        self.summary.duration_secs = self.start.elapsed().as_secs_f64();
        self.summary.judge();
        (self.summary, self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_only_when_nothing_went_wrong() {
        let mut s = Summary::default();
        s.judge();
        assert!(s.passed);
        for spoil in [
            |s: &mut Summary| s.lost = 1,
            |s: &mut Summary| s.corrupted = 1,
            |s: &mut Summary| s.errors = 1,
            |s: &mut Summary| s.reservation_changes = 1,
        ] {
            let mut s = Summary::default();
            spoil(&mut s);
            s.judge();
            assert!(!s.passed);
        }
        let mut s = Summary {
            reconnects: 3,
            unit_attentions: 3,
            busy: 2,
            ..Summary::default()
        };
        s.judge();
        assert!(s.passed, "recovered trouble is not failure");
    }

    #[test]
    fn lists_the_first_lost_lbas_and_counts_all() {
        let mut r = Reporter::new(false, Summary::default());
        for lba in 0..30 {
            r.lost(lba, "gone".into());
        }
        let (s, lines) = r.finish();
        assert_eq!(s.lost, 30);
        assert_eq!(s.lost_lbas, (0..20).collect::<Vec<_>>());
        assert_eq!(lines.len(), 30);
        let text = s.render();
        assert!(
            text.contains("lost                30 (LBAs 0, 1,"),
            "{text}"
        );
        assert!(text.contains("and 10 more"), "{text}");
        assert!(text.contains("FAIL"), "{text}");
    }

    #[test]
    fn errors_beyond_the_listed_are_counted_and_thinned() {
        let mut r = Reporter::new(false, Summary::default());
        for n in 0..250 {
            r.error(format!("e{n}"));
        }
        let (s, lines) = r.finish();
        assert_eq!(s.errors, 250);
        assert_eq!(s.error_messages.len(), LISTED);
        assert_eq!(lines.len(), LISTED + 2, "20 listed, then #100 and #200");
    }

    #[test]
    fn the_summary_is_json() {
        let mut s = Summary {
            lost: 2,
            lost_lbas: vec![4, 9],
            ..Summary::default()
        };
        s.judge();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["lost"], 2);
        assert_eq!(v["lost_lbas"], serde_json::json!([4, 9]));
        assert_eq!(v["passed"], false);
    }
}
