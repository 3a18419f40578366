//! The control channel: ttrpc connections from (or to) the host
//! ([`channel`]), each serving the `SocketForward` service ([`service`]).

pub mod channel;
pub mod service;
