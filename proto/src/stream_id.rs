//! Stream IDs: `{prefix}-{unix time in ns}-{4 random bytes, base64url, no padding}`,
//! the format nerdbox generates, so logs on both sides line up.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use std::time::{SystemTime, UNIX_EPOCH};

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
    fn ids_differ() {
        let a = generate("x");
        let b = generate("x");
        assert_ne!(a, b);
    }
}
