//! The `SocketForward` ttrpc service, one instance per control connection.
//!
//! Each method is thin: Bind calls [`listeners::bind`] and maps its error to the
//! contract's status (code Unknown, `binding socket forward listener at <path>:
//! <cause>`); Accept ties the stream to the router; Shutdown starts the
//! agent's shutdown and answers once the listeners are gone.

use crate::dispatch::{AcceptId, ConnId};
use crate::error_chain;
use crate::listeners::{self, BindError};
use crate::state::AgentState;
use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use sockfwd_proto::rpc::{
    BindRequest, ConnectRequest, ConnectResult, ShutdownRequest, SocketForward,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;
use ttrpc::r#async::{ServerStream, TtrpcContext};

/// Longest the Shutdown RPC waits for the listeners before answering anyway.
const LISTENERS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The service as seen by one control connection.
pub struct Service {
    state: Arc<AgentState>,
    conn: ConnId,
    /// Cancelled when the connection ends: its Accept handlers return.
    conn_token: CancellationToken,
}

impl Service {
    /// The service for control connection `conn`.
    pub fn new(state: Arc<AgentState>, conn: ConnId, conn_token: CancellationToken) -> Self {
        Service {
            state,
            conn,
            conn_token,
        }
    }
}

/// The ttrpc status for a failed Bind: code Unknown (2), the whole cause chain.
pub fn bind_status(err: &BindError) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, error_chain(err)))
}

/// Closes the Accept stream in the router when its handler ends, however it ends.
struct AcceptGuard<'a> {
    state: &'a AgentState,
    accept: AcceptId,
}

impl Drop for AcceptGuard<'_> {
    fn drop(&mut self) {
        self.state.dispatcher.lock().close_stream(self.accept);
    }
}

#[async_trait]
impl SocketForward for Service {
    async fn bind(&self, _ctx: &TtrpcContext, req: BindRequest) -> ttrpc::Result<Empty> {
        match listeners::bind(&self.state, Some(self.conn), &req.sockets).await {
            Ok(()) => Ok(Empty::new()),
            Err(err) => {
                tracing::error!(
                    conn = self.conn,
                    path = %err.path,
                    cause = %error_chain(&err.cause),
                    "Bind failed"
                );
                Err(bind_status(&err))
            }
        }
    }

    async fn accept(
        &self,
        _ctx: &TtrpcContext,
        stream: ServerStream<ConnectRequest, ConnectResult>,
    ) -> ttrpc::Result<()> {
        let (sender, mut receiver) = stream.split();
        let (tx, mut requests) = unbounded_channel();
        let accept = self.state.dispatcher.lock().open_stream(self.conn, tx);
        // Declared after `requests`, so dropped before it: the router forgets the
        // stream while its channel is still open.
        let _guard = AcceptGuard {
            state: &self.state,
            accept,
        };
        tracing::info!(conn = self.conn, accept, "Accept stream open");
        let send = async {
            while let Some(req) = requests.recv().await {
                sender.send(&req).await?;
            }
            Ok::<(), ttrpc::Error>(())
        };
        let receive = async {
            loop {
                match receiver.recv().await? {
                    Some(result) => self.state.dispatcher.lock().on_result(accept, result),
                    None => return Ok::<(), ttrpc::Error>(()),
                }
            }
        };
        let ended = tokio::select! {
            r = send => r,
            r = receive => r,
            () = self.conn_token.cancelled() => Ok(()),
        };
        match ended {
            Ok(()) => tracing::info!(conn = self.conn, accept, "Accept stream closed"),
            Err(err) => {
                tracing::warn!(conn = self.conn, accept, cause = %err, "Accept stream failed; closed");
            }
        }
        Ok(())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let grace = match req.grace_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms.into())),
        };
        tracing::info!(conn = self.conn, ?grace, "Shutdown requested");
        self.state.shutdown.request(grace);
        if tokio::time::timeout(LISTENERS_CLOSE_WAIT, self.state.shutdown.listeners_closed())
            .await
            .is_err()
        {
            tracing::warn!("listeners still closing; answering Shutdown anyway");
        }
        Ok(Empty::new())
    }
}
