//! The `SocketForward` ttrpc service, one instance per control connection.
//!
//! Each method is thin: Bind and Unbind call [`bind`], Connect calls
//! [`connect`], and a failure becomes a ttrpc status in one place,
//! [`RpcError::status`]; Accept ties the stream to the router; Shutdown starts
//! the agent's shutdown and answers once the listeners are gone; Info lists
//! the extensions of this build ([`sockfwd_proto::info::SUPPORTED`]);
//! StreamPool starts the connection's pool of pre-opened streams
//! ([`crate::stream_pool`]).

use crate::dispatch::{AcceptId, ConnId};
use crate::local::connect::{self, ConnectError};
use crate::local::target::TargetError;
use crate::remote::bind::{self, BindError, UnbindError};
use crate::state::AgentState;
use crate::stream_pool::PoolError;
use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use sockfwd_proto::info::{self, AgentInfo};
use sockfwd_proto::log_text::escape;
use sockfwd_proto::report::{self, Chain};
use sockfwd_proto::rpc::{
    BindRequest, ConnectRequest, ConnectResult, ConnectTargetRequest, ForwardInfo, InfoRequest,
    InfoResponse, ListForwardsRequest, ListForwardsResponse, PortEvent, ShutdownRequest,
    SocketForward, StreamPoolRequest, StreamPoolResponse, UnbindRequest, WatchPortsRequest,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::unbounded_channel;
use tokio_util::sync::CancellationToken;
use ttrpc::r#async::{ServerStream, ServerStreamSender, TtrpcContext};

/// Longest the Shutdown RPC waits for the listeners before answering anyway.
const LISTENERS_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What `Info` names this agent as.
pub const VERSION: &str = concat!("sockfwd-agent ", env!("CARGO_PKG_VERSION"));

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

/// What a method failed with.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Bind: the contract's status is code Unknown (2) with the cause chain,
    /// `binding socket forward listener at <path>: <cause>`.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Unbind of a forward that is not bound.
    #[error(transparent)]
    Unbind(#[from] UnbindError),
    /// Connect (an extension): the code says what kind of failure.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// StreamPool (an extension): a malformed request, or a token in use.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl RpcError {
    /// The ttrpc code (NOT_FOUND is avoided: hosts read it as "method not
    /// supported").
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            RpcError::Bind(_) => Code::UNKNOWN,
            RpcError::Unbind(UnbindError::Unknown(_)) => Code::FAILED_PRECONDITION,
            RpcError::Connect(e) => match e {
                ConnectError::BadStreamId(_)
                | ConnectError::LongStreamId { .. }
                | ConnectError::Framing(_)
                | ConnectError::Target(TargetError::Parse(_)) => Code::INVALID_ARGUMENT,
                ConnectError::Target(TargetError::NotAllowed(_)) => Code::PERMISSION_DENIED,
                ConnectError::NoStream(_) | ConnectError::Target(TargetError::NoSuchPath(_)) => {
                    Code::FAILED_PRECONDITION
                }
                ConnectError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
                ConnectError::Target(_) | ConnectError::ShuttingDown => Code::UNAVAILABLE,
            },
            RpcError::Pool(PoolError::Token(_) | PoolError::Framing(_)) => Code::INVALID_ARGUMENT,
            RpcError::Pool(PoolError::TokenInUse) => Code::FAILED_PRECONDITION,
        }
    }

    /// The status a method answers with: the code, and the whole cause chain.
    pub fn status(&self) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), report::chain(self)))
    }
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
        match bind::bind(&self.state, Some(self.conn), &req.sockets).await {
            Ok(()) => Ok(Empty::new()),
            Err(err) => {
                if let Some(pass) = self.state.log_throttle.allow("Bind failed") {
                    tracing::error!(
                        conn = self.conn,
                        path = %escape(&err.path),
                        cause = %Chain(&err.cause),
                        suppressed = pass.suppressed,
                        "Bind failed"
                    );
                }
                Err(RpcError::from(err).status())
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
                if let Some(pass) = self.state.log_throttle.allow("Accept stream failed") {
                    tracing::warn!(conn = self.conn, accept, cause = %Chain(&err),
                        suppressed = pass.suppressed, "Accept stream failed; closed");
                }
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
        if tokio::time::timeout(
            LISTENERS_CLOSE_WAIT,
            self.state.shutdown.listeners_closed.cancelled(),
        )
        .await
        .is_err()
        {
            tracing::warn!("listeners still closing; answering Shutdown anyway");
        }
        Ok(Empty::new())
    }

    async fn connect(&self, ctx: &TtrpcContext, req: ConnectTargetRequest) -> ttrpc::Result<Empty> {
        let deadline = u64::try_from(ctx.timeout_nano)
            .ok()
            .filter(|&n| n > 0)
            .map(Duration::from_nanos);
        let (stream_id, target) = (req.stream_id.clone(), req.target.clone());
        match connect::connect(&self.state, req, deadline).await {
            Ok(()) => Ok(Empty::new()),
            Err(err) => {
                if let Some(pass) = self.state.log_throttle.allow("Connect refused") {
                    tracing::warn!(conn = self.conn, stream_id = %escape(&stream_id),
                        target = %escape(&target), cause = %Chain(&err),
                        suppressed = pass.suppressed, "Connect refused");
                }
                Err(RpcError::from(err).status())
            }
        }
    }

    async fn watch_ports(
        &self,
        _ctx: &TtrpcContext,
        _req: WatchPortsRequest,
        sender: ServerStreamSender<PortEvent>,
    ) -> ttrpc::Result<()> {
        tracing::info!(conn = self.conn, "WatchPorts stream open");
        let stop = self.conn_token.clone();
        let shutdown = self.state.shutdown.stop.clone();
        let state = self.state.clone();
        let listings = self
            .state
            .ports
            .subscribe(move || state.forwards.tcp_inodes(), shutdown.clone());
        tokio::select! {
            r = crate::ports::watch::follow(listings, &sender) => {
                if let Err(err) = r {
                    tracing::debug!(conn = self.conn, cause = %Chain(&err), "WatchPorts stream ended");
                }
            }
            () = stop.cancelled() => {}
            () = shutdown.cancelled() => {}
        }
        Ok(())
    }

    async fn unbind(&self, _ctx: &TtrpcContext, req: UnbindRequest) -> ttrpc::Result<Empty> {
        match bind::unbind(&self.state, &req.forward_id).await {
            Ok(_) => Ok(Empty::new()),
            Err(err) => Err(RpcError::from(err).status()),
        }
    }

    async fn list_forwards(
        &self,
        _ctx: &TtrpcContext,
        _req: ListForwardsRequest,
    ) -> ttrpc::Result<ListForwardsResponse> {
        let mut resp = ListForwardsResponse::new();
        resp.forwards = self
            .state
            .forwards
            .snapshot()
            .into_iter()
            .map(|(id, at, s)| {
                let mut f = ForwardInfo::new();
                f.forward_id = id;
                f.socket_path = at.socket_path();
                f.tcp_listen = at.tcp_listen();
                f.active = s.active;
                f.total = s.total;
                f.refused = s.refused;
                f.failed = s.failed;
                f.bytes_to_host = s.bytes_to_host;
                f.bytes_to_guest = s.bytes_to_guest;
                f
            })
            .collect();
        Ok(resp)
    }

    async fn info(&self, _ctx: &TtrpcContext, _req: InfoRequest) -> ttrpc::Result<InfoResponse> {
        tracing::debug!(conn = self.conn, "Info asked");
        Ok(AgentInfo::response(VERSION, info::SUPPORTED))
    }

    async fn stream_pool(
        &self,
        _ctx: &TtrpcContext,
        req: StreamPoolRequest,
    ) -> ttrpc::Result<StreamPoolResponse> {
        let mut resp = StreamPoolResponse::new();
        if self.state.shutdown.stop.is_cancelled() || self.conn_token.is_cancelled() {
            return Ok(resp);
        }
        match self
            .state
            .pools
            .open(self.conn, &req.token, req.framing, req.max)
        {
            Ok(max) => {
                // The connection may have ended (and its pools been dropped)
                // while this call ran: drop what it started too.
                if self.conn_token.is_cancelled() {
                    self.state.pools.close_conn(self.conn);
                    return Ok(resp);
                }
                // Each call replaces the pool: a host calling in a loop is
                // bounded by the in-flight caps, its log lines by the throttle.
                if let Some(pass) = self.state.log_throttle.allow("stream pool started") {
                    tracing::info!(
                        conn = self.conn,
                        asked = req.max,
                        max,
                        framing = req.framing,
                        suppressed = pass.suppressed,
                        "stream pool started"
                    );
                }
                resp.max = u32::try_from(max).unwrap_or(u32::MAX);
                Ok(resp)
            }
            Err(err) => {
                if let Some(pass) = self.state.log_throttle.allow("StreamPool refused") {
                    tracing::warn!(conn = self.conn, cause = %Chain(&err),
                        suppressed = pass.suppressed, "StreamPool refused");
                }
                Err(RpcError::from(err).status())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;
    use sockfwd_proto::rpc::Socket;
    use std::collections::HashMap;

    fn ctx() -> TtrpcContext {
        TtrpcContext {
            mh: ttrpc::MessageHeader::new_request(1, 0),
            metadata: HashMap::new(),
            timeout_nano: 0,
        }
    }

    fn service(config: AgentConfig) -> (Service, Arc<AgentState>) {
        let state = Arc::new(AgentState::new(config, &CancellationToken::new()));
        (
            Service::new(state.clone(), 7, CancellationToken::new()),
            state,
        )
    }

    fn bind_req(sockets: &[(&str, &str)]) -> BindRequest {
        BindRequest {
            sockets: sockets
                .iter()
                .map(|(id, path)| Socket {
                    forward_id: (*id).into(),
                    socket_path: (*path).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn status_of(err: ttrpc::Error) -> (ttrpc::Code, String) {
        match err {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn bind_answers_with_the_contract_status() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let (svc, state) = service(AgentConfig {
            allow_dirs: vec![allowed.clone()],
            max_sockets_per_bind: 2,
            ..AgentConfig::default()
        });
        svc.bind(&ctx(), bind_req(&[])).await.unwrap();

        let outside = dir.path().join("x.sock");
        let outside = outside.to_str().unwrap();
        let (code, msg) = status_of(
            svc.bind(&ctx(), bind_req(&[("f", outside)]))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, ttrpc::Code::UNKNOWN);
        assert_eq!(
            msg,
            format!(
                "binding socket forward listener at {outside}: path is outside the allowed directories"
            )
        );

        let a = allowed.join("a.sock");
        let a = a.to_str().unwrap();
        let (_, msg) = status_of(
            svc.bind(&ctx(), bind_req(&[("a", a), ("b", a), ("c", a)]))
                .await
                .unwrap_err(),
        );
        assert!(
            msg.ends_with("3 sockets in one request; the limit is 2"),
            "{msg}"
        );

        svc.bind(&ctx(), bind_req(&[("a", a)])).await.unwrap();
        let forwards = state.forwards.snapshot();
        assert_eq!(forwards.len(), 1);
        assert_eq!(forwards[0].0, "a");
        state.shutdown.stop.cancel();
        state.listeners.close();
        state.listeners.wait().await;
        assert!(!std::path::Path::new(a).exists());
    }

    #[tokio::test]
    async fn mode_and_owner_are_applied_without_following_symlinks() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        let (svc, _state) = service(AgentConfig::default());
        let path = dir.path().join("owned.sock");
        let mut req = bind_req(&[("o", path.to_str().unwrap())]);
        req.sockets[0].mode = Some(0o640);
        req.sockets[0].uid = Some(1234);
        req.sockets[0].gid = Some(4321);
        let result = svc.bind(&ctx(), req).await;
        if nix::unistd::geteuid().is_root() {
            result.unwrap();
            let m = std::fs::symlink_metadata(&path).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o640);
            assert_eq!((m.uid(), m.gid()), (1234, 4321));
        } else {
            let (_, msg) = status_of(result.unwrap_err());
            assert!(msg.contains("setting owner"), "{msg}");
            assert!(!path.exists(), "rolled back");
        }
    }

    #[tokio::test]
    async fn info_names_the_agent_and_every_extension_of_this_build() {
        let (svc, _state) = service(AgentConfig::default());
        let resp = svc.info(&ctx(), InfoRequest::new()).await.unwrap();
        assert_eq!(
            resp.version,
            format!("sockfwd-agent {}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(resp.extensions, info::SUPPORTED);
    }

    #[tokio::test]
    async fn a_second_bind_of_the_same_forward_moves_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let (first, state) = service(AgentConfig::default());
        let second = Service::new(state.clone(), 8, CancellationToken::new());
        let p = dir.path().join("f.sock");
        let req = || bind_req(&[("f", p.to_str().unwrap())]);
        first.bind(&ctx(), req()).await.unwrap();
        second.bind(&ctx(), req()).await.unwrap();
        // A request for f now goes to connection 8's Accept stream only.
        let (tx7, mut rx7) = unbounded_channel();
        let (tx8, mut rx8) = unbounded_channel();
        let (events, _events_rx) = unbounded_channel();
        {
            let mut router = state.dispatcher.lock();
            router.open_stream(7, tx7);
            router.open_stream(8, tx8);
            router
                .submit(
                    ConnectRequest {
                        stream_id: "s".into(),
                        forward_id: "f".into(),
                        ..Default::default()
                    },
                    events,
                )
                .unwrap();
        }
        rx7.try_recv().unwrap_err();
        assert_eq!(rx8.try_recv().unwrap().stream_id, "s");
    }
}
