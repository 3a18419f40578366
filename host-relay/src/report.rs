//! Error chains as text: one line per cause for `main`, joined by `: ` for a log
//! line or a `ConnectResult.error`.

use std::error::Error;

/// Every message of `err`'s chain, outermost first. A cause whose text the
/// message before it already ends with is skipped (some errors print their
/// source themselves as well as returning it).
pub fn causes(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = vec![err.to_string()];
    let mut next = err.source();
    while let Some(e) = next {
        let text = e.to_string();
        let repeated = out.last().is_some_and(|prev| prev.ends_with(&text));
        if !repeated && !text.is_empty() {
            out.push(text);
        }
        next = e.source();
    }
    out
}

/// The chain on one line, joined by `: `.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    causes(err).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockfwd_proto::transport::{Address, DialError};
    use std::time::Duration;

    #[test]
    fn joins_causes_and_skips_repeats() {
        let inner = DialError::Connect {
            addr: Address::Unix("/x.sock".into()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let outer = DialError::GaveUp {
            after: Duration::from_secs(1),
            last: Box::new(inner),
        };
        assert_eq!(
            causes(&outer),
            [
                "gave up after 1s: connecting to unix:///x.sock",
                "entity not found"
            ]
        );
        assert_eq!(
            chain(&outer),
            "gave up after 1s: connecting to unix:///x.sock: entity not found"
        );
    }
}
