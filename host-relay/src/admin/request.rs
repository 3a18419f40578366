//! The admin protocol, both ends: one request line ([`AdminRequest`]), one
//! answer, then the server closes. Requests: `status`, `status prometheus`,
//! `add forward SPEC`, `add remote SPEC`, `add local SPEC`, `remove ID|SPEC`. The answer's first
//! line is `ok` or `error: MESSAGE`; the rest is the body. The server reads a
//! request within [`MAX_REQUEST`] bytes and [`REQUEST_TIMEOUT`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

/// Longest request line.
pub const MAX_REQUEST: usize = 4096;
/// Deadline for reading a request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How much of an unknown request an error message quotes.
const QUOTE_MAX: usize = 64;

/// One admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every forward's counters, as a table or as Prometheus text.
    Status {
        /// Prometheus text instead of a table.
        prometheus: bool,
    },
    /// Adds a remote forward (a `--forward` spec).
    AddForward(String),
    /// Adds a remote forward (an `-R` spec).
    AddRemote(String),
    /// Adds a local forward (an `-L` spec).
    AddLocal(String),
    /// Removes a forward by ID or by the spec it was added with.
    Remove(String),
}

/// A request line that is not one of the requests.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// `add` without `forward SPEC`, `remote SPEC` or `local SPEC`.
    #[error("expected: add forward SPEC | add remote SPEC | add local SPEC")]
    Add,
    /// Anything else (quoted, clipped).
    #[error("unknown request {0:?}")]
    Unknown(String),
    /// A spec or ID with a line break, which would end the request early.
    #[error("arguments may not contain a newline")]
    Newline,
}

impl FromStr for AdminRequest {
    type Err = RequestError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (cmd, rest.trim()) {
            ("status", "") => Ok(AdminRequest::Status { prometheus: false }),
            ("status", "prometheus") => Ok(AdminRequest::Status { prometheus: true }),
            ("add", rest) => match rest.split_once(' ') {
                Some(("forward", spec)) => Ok(AdminRequest::AddForward(spec.trim().to_owned())),
                Some(("remote", spec)) => Ok(AdminRequest::AddRemote(spec.trim().to_owned())),
                Some(("local", spec)) => Ok(AdminRequest::AddLocal(spec.trim().to_owned())),
                _ => Err(RequestError::Add),
            },
            ("remove", arg) if !arg.is_empty() => Ok(AdminRequest::Remove(arg.to_owned())),
            _ => Err(RequestError::Unknown(
                line.chars().take(QUOTE_MAX).collect(),
            )),
        }
    }
}

impl fmt::Display for AdminRequest {
    /// The request line (without its newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminRequest::Status { prometheus: false } => f.write_str("status"),
            AdminRequest::Status { prometheus: true } => f.write_str("status prometheus"),
            AdminRequest::AddForward(spec) => write!(f, "add forward {spec}"),
            AdminRequest::AddRemote(spec) => write!(f, "add remote {spec}"),
            AdminRequest::AddLocal(spec) => write!(f, "add local {spec}"),
            AdminRequest::Remove(arg) => write!(f, "remove {arg}"),
        }
    }
}

impl AdminRequest {
    /// The line to send, newline included; refuses an argument with a line break.
    pub fn line(&self) -> Result<String, RequestError> {
        let line = self.to_string();
        if line.contains(['\n', '\r']) {
            return Err(RequestError::Newline);
        }
        Ok(format!("{line}\n"))
    }
}

/// The answer to one request: what the server writes and the client reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Done: the body (a table, Prometheus text, a line); written `ok` and the
    /// body.
    Done(String),
    /// Refused or failed: why, written as one `error: ...` line.
    Refused(String),
}

impl Answer {
    /// The answer to a request's outcome; an error is worded by its chain.
    pub fn of<E: std::error::Error + 'static>(outcome: Result<String, E>) -> Answer {
        match outcome {
            Ok(body) => Answer::Done(body),
            Err(e) => Answer::Refused(sockfwd_proto::report::chain(&e)),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Done(body) => write!(f, "ok\n{body}"),
            Answer::Refused(why) => writeln!(f, "error: {}", why.replace(['\n', '\r'], " ")),
        }
    }
}

impl FromStr for Answer {
    type Err = std::convert::Infallible;

    /// Any text reads: `ok` and a body, else a refusal (an `error: ` prefix
    /// dropped).
    fn from_str(text: &str) -> Result<Answer, Self::Err> {
        Ok(match text.split_once('\n') {
            Some(("ok", body)) => Answer::Done(body.to_owned()),
            _ => {
                let text = text.trim_end();
                Answer::Refused(text.strip_prefix("error: ").unwrap_or(text).to_owned())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_print_back() {
        let cases = [
            ("status", AdminRequest::Status { prometheus: false }),
            (
                "status prometheus",
                AdminRequest::Status { prometheus: true },
            ),
            (
                "add forward /g:/h",
                AdminRequest::AddForward("/g:/h".into()),
            ),
            ("add local 0:h:1", AdminRequest::AddLocal("0:h:1".into())),
            (
                "add remote 0:localhost:5432",
                AdminRequest::AddRemote("0:localhost:5432".into()),
            ),
            ("remove local-1", AdminRequest::Remove("local-1".into())),
        ];
        for (line, req) in cases {
            assert_eq!(line.parse::<AdminRequest>(), Ok(req.clone()), "{line}");
            assert_eq!(req.line().unwrap(), format!("{line}\n"));
        }
        assert_eq!("add x".parse::<AdminRequest>(), Err(RequestError::Add));
        assert_eq!(
            "remove".parse::<AdminRequest>().unwrap_err().to_string(),
            r#"unknown request "remove""#
        );
        let long = "x".repeat(100);
        assert_eq!(
            long.parse::<AdminRequest>(),
            Err(RequestError::Unknown("x".repeat(64)))
        );
        assert_eq!(
            AdminRequest::Remove("a\nb".into()).line(),
            Err(RequestError::Newline)
        );
    }

    #[test]
    fn answers_round_trip() {
        let again = |a: Answer| a.to_string().parse::<Answer>().unwrap();
        assert_eq!(
            again(Answer::Done("body\n".into())),
            Answer::Done("body\n".into())
        );
        assert_eq!(
            again(Answer::Done(String::new())),
            Answer::Done(String::new())
        );
        let err = Answer::Refused("two\nlines".into()).to_string();
        assert_eq!(err, "error: two lines\n");
        assert_eq!(err.parse(), Ok(Answer::Refused("two lines".into())));
    }
}
