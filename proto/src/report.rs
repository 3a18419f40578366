//! Error chains as text, the one style both daemons print: [`chain`] puts a
//! chain on one line joined by `: `, for `ConnectResult.error` and ttrpc
//! statuses; [`Chain`] is the same for a log field, each cause escaped and
//! clipped by [`log_text`](crate::log_text) (an error's text often carries a
//! path or a name a peer or a user sent); [`for_main`] is what a binary prints
//! when it stops on an error:
//!
//! ```text
//! PROGRAM: error: the outermost message
//!   caused by: its source
//!   caused by: that one's source
//! ```

use crate::log_text::escape_clipped;
use std::error::Error;
use std::fmt;

/// How many characters of each cause a log line keeps: a cause that names a
/// nerdbox socket path (`binding socket forward listener at
/// /run/socketfwd/<64 hex digits>.sock`) fits whole.
pub const CAUSE_TEXT_MAX: usize = 256;

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

/// [`chain`] as a `Display` value for a log field (`cause = %Chain(&err)`):
/// each cause escaped and clipped to [`CAUSE_TEXT_MAX`] characters, so the
/// field stays on one line, without control characters, and bounded.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cause) in causes(self.0).iter().enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{}", escape_clipped(cause, CAUSE_TEXT_MAX))?;
        }
        Ok(())
    }
}

/// How many characters of each cause a fatal message keeps.
const MAIN_CAUSE_MAX: usize = 1024;

/// What `program` prints on stderr when it stops on `err`: a
/// `PROGRAM: error: ...` line, then one `  caused by: ...` line per cause,
/// each line ending in a newline. Each cause is escaped (a path from the
/// configuration may hold a newline) and clipped to 1,024 characters.
pub fn for_main(program: &str, err: &(dyn Error + 'static)) -> String {
    let shown = |cause: &str| escape_clipped(cause, MAIN_CAUSE_MAX).to_string();
    let mut lines = causes(err).into_iter();
    let first = lines.next().unwrap_or_default();
    let mut out = format!("{program}: error: {}\n", shown(&first));
    for cause in lines {
        out.push_str("  caused by: ");
        out.push_str(&shown(&cause));
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
    fn a_chain_in_a_log_field_is_escaped_and_clipped_per_cause() {
        let forged = format!(
            "/run/x\n2026-01-01 INFO forged\u{1b}[31m\0{}",
            "a".repeat(4000)
        );
        let err = DialError::GaveUp {
            after: Duration::from_secs(1),
            last: Box::new(DialError::Connect {
                addr: Address::Unix(forged.into()),
                source: std::io::Error::other("refused\nagain"),
            }),
        };
        let shown = Chain(&err).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("\\n2026-01-01 INFO forged\\u{1b}[31m\\0aaa"),
            "{shown}"
        );
        assert!(
            shown.ends_with(": refused\\nagain"),
            "the last cause is kept: {shown}"
        );
        assert!(shown.len() < 3 * CAUSE_TEXT_MAX, "{} bytes", shown.len());
    }

    #[test]
    fn main_lines_have_one_prefix_style() {
        assert_eq!(
            for_main("sockfwd-relay", &gave_up()),
            "sockfwd-relay: error: gave up after 1s: connecting to unix:///x.sock\n  caused by: entity not found\n"
        );
        let single = std::io::Error::other("alone");
        assert_eq!(for_main("p", &single), "p: error: alone\n");
        let forged = std::io::Error::other("a\nb: error: forged");
        assert_eq!(for_main("p", &forged), "p: error: a\\nb: error: forged\n");
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
