//! Options a forward's spec may end with, one grammar for every spec form (the
//! relay's `--forward`, `-R` and `-L` alike): `SPEC,idle-timeout=DUR` closes
//! that forward's connections once no byte has moved either way for DUR (`0`:
//! never, whatever `--idle-timeout` says; [`crate::relay`] does the closing),
//! so idle clients give back the forward's concurrency slots.
//!
//! An option is recognised only as a known `,KEY=` at the end of the spec, so
//! a host path with a comma in it still parses as before.

use crate::duration::{self, DurationError};
use std::time::Duration;
use thiserror::Error;

/// The options of one spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SpecOptions {
    /// `idle-timeout`: `Some(ZERO)` is off for this forward; `None` leaves the
    /// relay's `--idle-timeout`.
    pub idle_timeout: Option<Duration>,
}

/// What is wrong with a spec's options.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OptionError {
    /// Not a duration.
    #[error("idle-timeout={0:?} is not a duration (500ms, 30s, 5m)")]
    NotDuration(String),
    /// Beyond the longest duration a setting may have.
    #[error(transparent)]
    Duration(#[from] DurationError),
}

/// The key of the idle timeout, with its separators.
const IDLE_TIMEOUT: &str = ",idle-timeout=";

/// Splits `spec` into the spec proper and its options.
pub fn split(spec: &str) -> Result<(&str, SpecOptions), OptionError> {
    let Some((body, value)) = spec.rsplit_once(IDLE_TIMEOUT) else {
        return Ok((spec, SpecOptions::default()));
    };
    let d = match value {
        "0" => Duration::ZERO,
        v => humantime::parse_duration(v).map_err(|_| OptionError::NotDuration(v.to_owned()))?,
    };
    duration::check("idle-timeout", d, false)?;
    Ok((
        body,
        SpecOptions {
            idle_timeout: Some(d),
        },
    ))
}

impl SpecOptions {
    /// The idle timeout a connection of this forward gets, the relay's being
    /// `relay`.
    pub fn idle_timeout(&self, relay: Option<Duration>) -> Option<Duration> {
        match self.idle_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => relay,
        }
    }

    /// The options as a spec's suffix (empty when there are none).
    pub fn suffix(&self) -> String {
        match self.idle_timeout {
            Some(d) if d.is_zero() => format!("{IDLE_TIMEOUT}0"),
            Some(d) => format!("{IDLE_TIMEOUT}{}", humantime::format_duration(d)),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_off_the_end_and_override_the_relay() {
        let secs = Duration::from_secs;
        let (body, o) = split("/g/a.sock:/h/b,c.sock,idle-timeout=30s").unwrap();
        assert_eq!(body, "/g/a.sock:/h/b,c.sock");
        assert_eq!(o.idle_timeout(None), Some(secs(30)));
        assert_eq!(o.idle_timeout(Some(secs(5))), Some(secs(30)));
        assert_eq!(o.suffix(), ",idle-timeout=30s");
        let (body, o) = split("/g/a.sock:/h/b,c.sock").unwrap();
        assert_eq!((body, o), ("/g/a.sock:/h/b,c.sock", SpecOptions::default()));
        assert_eq!(o.idle_timeout(Some(secs(5))), Some(secs(5)));
        assert_eq!(o.suffix(), "");
        let (_, off) = split("8080:127.0.0.1:80,idle-timeout=0").unwrap();
        assert_eq!(off.idle_timeout(Some(secs(5))), None);
        assert_eq!(off.suffix(), ",idle-timeout=0");
        assert_eq!(
            split("x,idle-timeout=soon").unwrap_err().to_string(),
            "idle-timeout=\"soon\" is not a duration (500ms, 30s, 5m)"
        );
        assert!(split("x,idle-timeout=25h")
            .unwrap_err()
            .to_string()
            .contains("24h"));
    }
}
