//! Validation with located messages: the [`Validator`] that `config.rs` (the server and target
//! keys) and `auth.rs` (the access keys) each extend with their own checks, and the
//! [`ConfigError`] it collects. Its own module so that both import it and neither imports
//! the other for it.

use std::fmt;

use toml::Spanned;

/// One problem in a configuration file, with its line when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => write!(f, "{}", self.message),
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
        self.errors.push(ConfigError {
            line: Some(line_of(self.text, at.span().start)),
            message: message.into(),
        });
    }

    pub(super) fn warn<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            line: Some(line_of(self.text, at.span().start)),
            message: message.into(),
        });
    }
}
