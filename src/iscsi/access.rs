//! Access control: which initiators may see and log in to a target.
//!
//! A target's allow list holds exact initiator names and `*` glob patterns
//! (`iqn.1993-08.org.debian:*`). An empty list admits everyone. iSCSI names compare
//! case-insensitively (RFC 7143 §4.2.7.1 normalizes them to lower case).

/// The initiators a target admits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<String>,
}

impl AllowList {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> AllowList {
        AllowList {
            patterns: patterns
                .into_iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Everyone is admitted.
    pub fn is_open(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn permits(&self, initiator: &str) -> bool {
        let name = initiator.to_ascii_lowercase();
        self.is_open()
            || self
                .patterns
                .iter()
                .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

/// Matches `text` against `pattern`, where `*` stands for any run of bytes (empty included)
/// and everything else for itself. Linear backtracking over the last `*`: no exponential
/// blow-up on hostile names.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_globs() {
        let list = AllowList::new([
            "iqn.2026-11.org.example:host1".to_string(),
            "iqn.1993-08.org.debian:*".to_string(),
        ]);
        assert!(list.permits("iqn.2026-11.org.example:host1"));
        assert!(list.permits("IQN.2026-11.org.example:HOST1"));
        assert!(!list.permits("iqn.2026-11.org.example:host10"));
        assert!(list.permits("iqn.1993-08.org.debian:01:abcdef"));
        assert!(list.permits("iqn.1993-08.org.debian:"));
        assert!(!list.permits("iqn.1993-08.org.debiam:01"));
        assert!(AllowList::default().permits("anything"));
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"aXXbYYc"));
        assert!(!glob(b"a*b*c", b"aXXbYY"));
        assert!(glob(b"*:host*", b"iqn.x:host-7"));
        assert!(!glob(b"abc", b"abcd"));
        assert!(glob(b"a**", b"a"));
        let long = vec![b'a'; 200];
        assert!(!glob(b"*a*a*a*a*a*a*b", &long));
    }
}
