//! Calling the agent: a deadline on every call, seen by the agent
//! (`context`) and enforced here too (`call`), one error type for a failed
//! call ([`CallError`]), and `Results`, the sending half of an Accept stream.

use sockfwd_proto::framing::Framing;
use sockfwd_proto::log_text::escape_clipped;
use sockfwd_proto::rpc::ConnectResult;
use std::future::Future;
use std::time::Duration;
use thiserror::Error;
use tokio::time::timeout;
use ttrpc::r#async::CSSender;

/// How much of an agent's error message a [`CallError`] shows, in characters.
const MESSAGE_SHOWN: usize = 1024;

/// A failed call to the agent.
#[derive(Debug, Error)]
pub enum CallError {
    /// The agent answered with an error status (its message shown escaped
    /// and clipped: it is the peer's).
    #[error("the agent answered {code:?}: {}", escape_clipped(.message, MESSAGE_SHOWN))]
    Status {
        /// The ttrpc status code.
        code: ttrpc::Code,
        /// The agent's message.
        message: String,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection or the ttrpc layer failed.
    #[error("ttrpc call failed")]
    Ttrpc(#[source] ttrpc::Error),
}

impl From<ttrpc::Error> for CallError {
    fn from(e: ttrpc::Error) -> Self {
        match e {
            ttrpc::Error::RpcStatus(s) => CallError::Status {
                code: s.code(),
                message: s.message,
            },
            other => CallError::Ttrpc(other),
        }
    }
}

impl CallError {
    /// Whether the agent does not know the method (nerdbox answers unknown methods so).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            CallError::Status {
                code: ttrpc::Code::NOT_FOUND | ttrpc::Code::UNIMPLEMENTED,
                ..
            }
        )
    }
}

/// A ttrpc context whose deadline the agent sees in `timeout_nano`.
pub(crate) fn context(limit: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(limit.as_nanos()).unwrap_or(i64::MAX))
}

/// Runs `fut` with a local deadline too (ttrpc's own does not cover a stalled send).
pub(crate) async fn call<T>(
    limit: Duration,
    fut: impl Future<Output = ttrpc::Result<T>>,
) -> Result<T, CallError> {
    match timeout(limit, fut).await {
        Ok(r) => r.map_err(CallError::from),
        Err(_) => Err(CallError::Timeout(limit)),
    }
}

/// The sending half of the Accept stream, shared by the session's loop and the
/// connection tasks. Each task drops its clone once its result is sent, so a
/// dead session's connection is not held open by long relays.
#[derive(Clone)]
pub(crate) struct Results {
    sender: CSSender<ConnectResult>,
    limit: Duration,
}

impl Results {
    /// Results sent on `sender`, each within `limit`.
    pub(crate) fn new(sender: CSSender<ConnectResult>, limit: Duration) -> Results {
        Results { sender, limit }
    }

    /// Sends the result for `stream_id`: `error` empty for success.
    pub(crate) async fn send(
        &self,
        stream_id: &str,
        error: &str,
        framing: Framing,
    ) -> Result<(), CallError> {
        let mut r = ConnectResult::new();
        r.stream_id = stream_id.to_owned();
        r.error = error.to_owned();
        r.framing = framing.wire();
        call(self.limit, self.sender.send(&r)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_count_as_unsupported() {
        let e = CallError::from(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "/nerdbox.services.socketforward.v1.SocketForward/Shutdown is not supported",
        )));
        assert!(e.is_unsupported());
        let e = CallError::from(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            "method Shutdown",
        )));
        assert!(e.is_unsupported());
        assert!(!CallError::Timeout(Duration::from_secs(1)).is_unsupported());
    }

    #[test]
    fn the_agent_s_message_is_shown_escaped() {
        let e = CallError::Status {
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: "bad\n\u{1b}[2Jpath".into(),
        };
        assert_eq!(
            e.to_string(),
            "the agent answered INVALID_ARGUMENT: bad\\n\\u{1b}[2Jpath"
        );
    }
}
