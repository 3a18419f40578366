//! The control channel: ttrpc connections from (or to) the host
//! ([`channel`]), each serving the `SocketForward` service ([`service`]),
//! seen through a [`gate`] that keeps each connection within its
//! [`limits`].

pub mod channel;
pub mod gate;
pub mod limits;
pub mod service;
