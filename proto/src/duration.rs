//! The one bound on every configured duration, in both daemons.
//!
//! A day is far beyond any sensible timeout, interval or grace period, and it
//! keeps deadline arithmetic (`Instant + Duration`) and ttrpc's nanosecond
//! timeouts (`i64`) clear of overflow.

use std::time::Duration;
use thiserror::Error;

/// Longest accepted duration setting: 24 hours.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration setting out of bounds; `name` is the setting as the user wrote it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Zero where the setting needs a positive value.
    #[error("{name} must be greater than zero")]
    Zero {
        /// The setting.
        name: String,
    },
    /// Beyond [`MAX_DURATION`].
    #[error("{name} of {value:?} exceeds the maximum of 24h")]
    TooLong {
        /// The setting.
        name: String,
        /// Its value.
        value: Duration,
    },
}

/// Checks one setting: at most [`MAX_DURATION`], and above zero when `positive`.
pub fn check(name: &str, value: Duration, positive: bool) -> Result<(), DurationError> {
    if positive && value.is_zero() {
        return Err(DurationError::Zero {
            name: name.to_owned(),
        });
    }
    if value > MAX_DURATION {
        return Err(DurationError::TooLong {
            name: name.to_owned(),
            value,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert_eq!(check("--x", Duration::ZERO, false), Ok(()));
        assert_eq!(check("--x", MAX_DURATION, true), Ok(()));
        assert_eq!(
            check("--x", Duration::ZERO, true).unwrap_err().to_string(),
            "--x must be greater than zero"
        );
        assert_eq!(
            check("--x", MAX_DURATION + Duration::from_secs(1), false)
                .unwrap_err()
                .to_string(),
            "--x of 86401s exceeds the maximum of 24h"
        );
    }
}
