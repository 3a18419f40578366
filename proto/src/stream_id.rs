//! Stream IDs: the rule every stream ID obeys on both sides ([`check`]: 1 to
//! [`MAX_LEN`] bytes of printable ASCII, 0x21 to 0x7e), and the IDs we make:
//! `{prefix}-{unix time in ns}-{4 random bytes, base64url, no padding}`, the
//! format nerdbox generates, so logs on both sides line up.
//!
//! The rule is what makes a stream ID safe to echo into a handshake answer, a
//! `ConnectResult` and a log line: no spaces, no control characters, bounded.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Longest stream ID, in bytes.
pub const MAX_LEN: usize = 256;

/// Why a stream ID breaks the rule.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum StreamIdError {
    /// Zero bytes.
    #[error("empty stream ID")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("stream ID is {len} bytes; the limit is {MAX_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A byte outside 0x21..=0x7e (a space, a control character, non-ASCII).
    #[error("stream ID has byte {byte:#04x} at offset {at}; only printable ASCII (0x21 to 0x7e) is allowed")]
    NotPrintable {
        /// Offset of the first such byte.
        at: usize,
        /// The byte.
        byte: u8,
    },
}

/// Checks `id` against the stream-ID rule.
pub fn check(id: &str) -> Result<(), StreamIdError> {
    check_bytes(id.as_bytes())
}

/// [`check`] on raw bytes, before they are known to be text (the handshake).
pub fn check_bytes(id: &[u8]) -> Result<(), StreamIdError> {
    if id.is_empty() {
        return Err(StreamIdError::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(StreamIdError::TooLong { len: id.len() });
    }
    match id.iter().position(|b| !b.is_ascii_graphic()) {
        Some(at) => Err(StreamIdError::NotPrintable { at, byte: id[at] }),
        None => Ok(()),
    }
}

/// The prefix the socket forwarder uses (`socketfwd`).
pub const SOCKET_FORWARD_PREFIX: &str = "socketfwd";

/// Generates a fresh stream ID with the given prefix.
pub fn generate(prefix: &str) -> String {
    // A clock before 1970 is a broken guest; 0 still yields a valid, unique-enough ID
    // because the random part differs.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut random = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut random);
    format!("{prefix}-{nanos}-{}", URL_SAFE_NO_PAD.encode(random))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_contract_format() {
        let id = generate(SOCKET_FORWARD_PREFIX);
        // base64url may itself contain '-': split only the first two.
        let parts: Vec<&str> = id.splitn(3, '-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "socketfwd");
        assert!(parts[1].parse::<u128>().is_ok(), "{id}");
        assert_eq!(
            parts[2].len(),
            6,
            "4 bytes of base64url without padding: {id}"
        );
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).map(|b| b.len()).ok(),
            Some(4)
        );
    }

    #[test]
    fn generated_ids_obey_the_rule() {
        assert_eq!(check(&generate(SOCKET_FORWARD_PREFIX)), Ok(()));
    }

    #[test]
    fn the_rule_table() {
        assert_eq!(check("socketfwd-1732406400123456789-q83vEg"), Ok(()));
        assert_eq!(check("!~"), Ok(()));
        assert_eq!(check(&"x".repeat(MAX_LEN)), Ok(()));
        assert_eq!(check(""), Err(StreamIdError::Empty));
        assert_eq!(
            check(&"x".repeat(MAX_LEN + 1)),
            Err(StreamIdError::TooLong { len: MAX_LEN + 1 })
        );
        assert_eq!(
            check("a b"),
            Err(StreamIdError::NotPrintable { at: 1, byte: b' ' })
        );
        assert_eq!(
            check("a\nb"),
            Err(StreamIdError::NotPrintable { at: 1, byte: b'\n' })
        );
        assert_eq!(
            check("\u{7f}"),
            Err(StreamIdError::NotPrintable { at: 0, byte: 0x7f })
        );
        assert_eq!(
            check("é"),
            Err(StreamIdError::NotPrintable { at: 0, byte: 0xc3 })
        );
        assert_eq!(
            check_bytes(b"ok\xff"),
            Err(StreamIdError::NotPrintable { at: 2, byte: 0xff })
        );
    }

    #[test]
    fn ids_differ() {
        let a = generate("x");
        let b = generate("x");
        assert_ne!(a, b);
    }
}
