//! Calling the agent: a deadline on every call, seen by the agent
//! (`context`) and enforced here too (`call`), one error type for a failed
//! call ([`CallError`]), `Results`, the sending half of an Accept stream, the
//! capability call: [`ask_info`] once per control session, its answer kept
//! with the session's client in a [`Peer`], and `list_forwards`.

use sockfwd_proto::framing::Framing;
use sockfwd_proto::info::AgentInfo;
use sockfwd_proto::log_text::{escape, escape_clipped};
use sockfwd_proto::rpc::{
    ConnectResult, ForwardInfo, InfoRequest, ListForwardsRequest, SocketForwardClient,
};
use std::future::Future;
use std::sync::Arc;
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

/// The agent of a ready control session: how to call it, and what it said it
/// supports (its `Info`, asked once per session). Cheap to clone.
#[derive(Clone)]
pub struct Peer {
    /// The session's ttrpc client.
    pub client: SocketForwardClient,
    /// The agent's answer to `Info`; [`AgentInfo::core_only`] for a peer
    /// without the call (nerdbox).
    pub info: Arc<AgentInfo>,
}

impl Peer {
    /// Whether the agent listed extension `name` (see [`sockfwd_proto::info`]).
    pub fn supports(&self, name: &str) -> bool {
        self.info.supports(name)
    }
}

/// Asks the agent's `Info` within `limit`. A peer that does not have the call
/// (UNIMPLEMENTED or NOT_FOUND: a nerdbox guest) is a core-only peer, not an
/// error; any other failure is.
pub async fn ask_info(
    client: &SocketForwardClient,
    limit: Duration,
) -> Result<AgentInfo, CallError> {
    match call(limit, client.info(context(limit), &InfoRequest::new())).await {
        Ok(resp) => {
            let (info, dropped) = AgentInfo::from_response(&resp);
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "ignoring malformed or excess extension names in the agent's Info"
                );
            }
            let extensions: Vec<&str> = info.extensions().collect();
            tracing::info!(
                agent = %escape(info.version().unwrap_or_default()),
                extensions = %extensions.join(","),
                "agent capabilities"
            );
            Ok(info)
        }
        Err(e) if e.is_unsupported() => {
            tracing::info!(cause = %sockfwd_proto::report::Chain(&e),
                "the agent does not answer Info: a core-only peer, extensions after Info are off");
            Ok(AgentInfo::core_only())
        }
        Err(e) => Err(e),
    }
}

/// The agent's bound remote forwards (`ListForwards`), within `limit`.
pub(crate) async fn list_forwards(
    client: &SocketForwardClient,
    limit: Duration,
) -> Result<Vec<ForwardInfo>, CallError> {
    let req = ListForwardsRequest::new();
    let list = call(limit, client.list_forwards(context(limit), &req)).await?;
    Ok(list.forwards)
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
