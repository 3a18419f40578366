//! The wire contract shared by the guest agent and the host relay.
//!
//! Layout: [`rpc`] is the generated ttrpc service; [`stream_id`] and
//! [`handshake`] are the streams channel; [`transport`] hides how each side
//! reaches the other (AF_VSOCK, hybrid vsock, per-port Unix sockets);
//! [`relay`] moves bytes between two connected sockets once a stream is set up.

pub mod features;
pub mod framing;
pub mod handshake;
pub mod limits;
pub mod relay;
pub mod rpc;
pub mod stream_id;
pub mod transport;
