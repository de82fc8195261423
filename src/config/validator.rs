//! Validation with located messages: the [`Validator`] that `config.rs` (the server and target
//! keys) and `auth.rs` (the access keys) each extend with their own checks, and the
//! [`ConfigError`] it collects. Its own module so that both import it and neither imports
//! the other for it.

use std::fmt;

use toml::Spanned;

/// One problem in a configuration file, with its file and line when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in, as shown to the operator; `None`: the file being read (the
    /// [`ConfigErrors::source_name`](super::ConfigErrors) of the list it is in). Set for every
    /// problem found in an included file, so one list can span several files.
    pub file: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    /// A problem of the file being read.
    pub fn new(line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            line,
            message: message.into(),
        }
    }

    /// `file:line: message` (`file: message` without a line), naming `default_file` when
    /// the problem carries no file of its own: the form `keel check` prints.
    pub fn located(&self, default_file: &str) -> String {
        let file = self.file.as_deref().unwrap_or(default_file);
        match self.line {
            Some(line) => format!("{file}:{line}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            (None, Some(line)) => write!(f, "line {line}: {}", self.message),
            (None, None) => write!(f, "{}", self.message),
        }
    }
}

/// Line number (1-based) of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|&b| b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Collects the errors and warnings of one file while its parts are checked.
pub(super) struct Validator<'a> {
    text: &'a str,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Validator {
            text,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl Validator<'_> {
    /// The text being checked.
    pub(super) fn text(&self) -> &str {
        self.text
    }

    /// The value of `key` when it lies in `allowed`; `default` when it is absent, or, with an
    /// error at it, when it does not. `unit` follows the bounds in the message.
    pub(super) fn in_range<T: Copy + PartialOrd + fmt::Display>(
        &mut self,
        v: &Option<Spanned<T>>,
        default: T,
        allowed: std::ops::RangeInclusive<T>,
        key: &str,
        unit: &str,
    ) -> T {
        match v {
            Some(x) if allowed.contains(x.get_ref()) => *x.get_ref(),
            Some(x) => {
                let (lo, hi) = (allowed.start(), allowed.end());
                self.error(x, format!("{key} must be between {lo} and {hi}{unit}"));
                default
            }
            None => default,
        }
    }

    pub(super) fn error<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let line = line_of(self.text, at.span().start);
        self.errors.push(ConfigError::new(Some(line), message));
    }

    pub(super) fn warn<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let line = line_of(self.text, at.span().start);
        self.warnings.push(ConfigError::new(Some(line), message));
    }
}
