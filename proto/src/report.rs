//! Error chains as text, the one style both daemons print: [`chain`] (or
//! [`Chain`] in a log field) puts a chain on one line joined by `: `, for logs
//! and `ConnectResult.error`; [`for_main`] is what a binary prints when it
//! stops on an error:
//!
//! ```text
//! PROGRAM: error: the outermost message
//!   caused by: its source
//!   caused by: that one's source
//! ```

use std::error::Error;
use std::fmt;

/// Every message of `err`'s chain, outermost first. A cause whose text the
/// message before it already ends with is skipped (some errors print their
/// source themselves as well as returning it), and so is an empty one.
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

/// [`chain`] as a `Display` value, for a log field: `cause = %Chain(&err)`.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// What `program` prints on stderr when it stops on `err`: a
/// `PROGRAM: error: ...` line, then one `  caused by: ...` line per cause,
/// each line ending in a newline.
pub fn for_main(program: &str, err: &(dyn Error + 'static)) -> String {
    let mut lines = causes(err).into_iter();
    let mut out = format!("{program}: error: {}\n", lines.next().unwrap_or_default());
    for cause in lines {
        out.push_str("  caused by: ");
        out.push_str(&cause);
        out.push('\n');
    }
    out
}

/// What `program` prints for a usage error that a flag parser rendered as
/// `error: ...` (clap's style): the same `PROGRAM: error: ...` prefix as
/// [`for_main`], so both binaries word every error alike.
pub fn for_usage(program: &str, rendered: &str) -> String {
    let text = rendered.strip_prefix("error: ").unwrap_or(rendered);
    let mut out = format!("{program}: error: {text}");
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Address, DialError};
    use std::time::Duration;

    fn gave_up() -> DialError {
        let inner = DialError::Connect {
            addr: Address::Unix("/x.sock".into()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        DialError::GaveUp {
            after: Duration::from_secs(1),
            last: Box::new(inner),
        }
    }

    #[test]
    fn joins_causes_and_skips_repeats() {
        let outer = gave_up();
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
        assert_eq!(Chain(&outer).to_string(), chain(&outer));
    }

    #[test]
    fn main_lines_have_one_prefix_style() {
        assert_eq!(
            for_main("sockfwd-relay", &gave_up()),
            "sockfwd-relay: error: gave up after 1s: connecting to unix:///x.sock\n  caused by: entity not found\n"
        );
        let single = std::io::Error::other("alone");
        assert_eq!(for_main("p", &single), "p: error: alone\n");
    }

    #[test]
    fn usage_errors_take_the_same_prefix() {
        assert_eq!(
            for_usage(
                "sockfwd-agent",
                "error: unexpected argument '--bogus' found\n\nUsage: x\n"
            ),
            "sockfwd-agent: error: unexpected argument '--bogus' found\n\nUsage: x\n"
        );
        assert_eq!(for_usage("p", "plain"), "p: error: plain\n");
    }
}
