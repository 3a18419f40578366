//! The forward-ID rule both sides apply: 1 to [`MAX_LEN`] bytes of
//! `[A-Za-z0-9._-]`. nerdbox's IDs (64 lowercase hex digits) and the relay's
//! derived ones (16) obey it; so does anything a user writes in `--forward ID=`.
//!
//! A forward ID names a listener in `Bind`, comes back in every
//! `ConnectRequest`, and appears in logs and `status`: the rule keeps it short
//! and free of separators, spaces and control characters.

use thiserror::Error;

/// Longest forward ID, in bytes.
pub const MAX_LEN: usize = 128;

/// Why a forward ID breaks the rule.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ForwardIdError {
    /// Zero bytes.
    #[error("empty forward ID")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("forward ID is {len} bytes; the limit is {MAX_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `[A-Za-z0-9._-]`.
    #[error("forward ID has {:?} at byte {at}; allowed are A-Z a-z 0-9 . _ -", .ch)]
    BadChar {
        /// Byte offset of the first such character.
        at: usize,
        /// The character.
        ch: char,
    },
}

/// Whether `b` may appear in a forward ID.
fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks `id` against the forward-ID rule.
pub fn check(id: &str) -> Result<(), ForwardIdError> {
    if id.is_empty() {
        return Err(ForwardIdError::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(ForwardIdError::TooLong { len: id.len() });
    }
    match id
        .char_indices()
        .find(|&(_, c)| !u8::try_from(c).is_ok_and(allowed))
    {
        Some((at, ch)) => Err(ForwardIdError::BadChar { at, ch }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_table() {
        let nerdbox = "76b5bc05b57910cdbf23567b806fde2ae3b3ec144f960a4185026e6c9a5f553b";
        for ok in [
            nerdbox,
            "d0276c36d5d9aa1e",
            "a.b_c-1",
            "X",
            &"i".repeat(MAX_LEN),
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        assert_eq!(check(""), Err(ForwardIdError::Empty));
        assert_eq!(
            check(&"i".repeat(MAX_LEN + 1)),
            Err(ForwardIdError::TooLong { len: MAX_LEN + 1 })
        );
        assert_eq!(
            check("a b"),
            Err(ForwardIdError::BadChar { at: 1, ch: ' ' })
        );
        assert_eq!(
            check("/h.sock"),
            Err(ForwardIdError::BadChar { at: 0, ch: '/' })
        );
        assert_eq!(
            check("idé"),
            Err(ForwardIdError::BadChar { at: 2, ch: 'é' })
        );
        assert_eq!(
            check("a\u{1b}[31m").unwrap_err().to_string(),
            "forward ID has '\\u{1b}' at byte 1; allowed are A-Z a-z 0-9 . _ -"
        );
    }
}
