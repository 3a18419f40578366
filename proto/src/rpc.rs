//! Generated protobuf messages and ttrpc service (`nerdbox.services.socketforward.v1`),
//! produced by `build.rs` into OUT_DIR.

include!(concat!(env!("OUT_DIR"), "/gen/modules.rs"));

/// `PortEvent.kind`.
pub use socketforward::port_event::Kind as PortEventKind;
pub use socketforward::{
    BindRequest, ConnectRequest, ConnectResult, ConnectTargetRequest, ForwardInfo, InfoRequest,
    InfoResponse, ListForwardsRequest, ListForwardsResponse, PortEvent, ShutdownRequest, Socket,
    StreamPoolRequest, StreamPoolResponse, UnbindRequest, WatchPortsRequest,
};
pub use socketforward_ttrpc::{create_socket_forward, SocketForward, SocketForwardClient};

/// The fully qualified service name on the ttrpc wire.
pub const SERVICE_NAME: &str = "nerdbox.services.socketforward.v1.SocketForward";
