//! Where a setting's value came from ([`Source`]), and how a value its kind
//! refused is worded in every layer ([`BadValue`]): below both the layers and
//! the flags' value parsers, which word a bad flag value as the layers do.

use crate::config::cmdline;
use crate::config::values::ValueError;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// `RUST_LOG`, which replaces the default of `log` only.
    Environment,
    /// The TOML file at this path.
    File(PathBuf),
    /// The kernel command line.
    Cmdline,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Environment => f.write_str("environment (RUST_LOG)"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Cmdline => f.write_str("kernel command line"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

impl Source {
    /// How a key is spelled in this layer.
    pub fn spell(&self, key: &str) -> String {
        match self {
            Source::Cmdline => format!("{}{key}", cmdline::PREFIX),
            Source::Flag => format!("--{}", key.replace('_', "-")),
            _ => key.to_owned(),
        }
    }

    /// "in FILE", "on the kernel command line", ... for messages.
    pub fn place(&self) -> String {
        match self {
            Source::File(p) => format!("in {}", p.display()),
            Source::Cmdline => "on the kernel command line".to_owned(),
            Source::Flag => "on the command line".to_owned(),
            Source::Default | Source::Environment => "by default".to_owned(),
        }
    }

    /// The error for a `value` of `key` in this layer (quoted text, or TOML's
    /// spelling) that its kind refused.
    pub fn bad(&self, key: &str, value: String, error: &ValueError) -> BadValue {
        BadValue(self.spell(key), self.place(), value, error.to_string())
    }
}

/// A value its key's kind refused: the key as its layer spells it, the layer,
/// the value as given and what was expected (a [`ValueError`]'s words).
#[derive(Debug, Clone, Error)]
#[error("invalid value {2} for {0} {1}: {3}")]
pub struct BadValue(String, String, String, String);
