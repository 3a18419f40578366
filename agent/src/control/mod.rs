//! The control channel: ttrpc connections from (or to) the host
//! ([`channel`]), each serving the `SocketForward` service ([`service`]),
//! seen through a [`gate`] and with its streaming calls [`capped`], which
//! keep each connection within its caps ([`crate::control_caps`]).

pub mod capped;
pub mod channel;
pub mod gate;
pub mod service;
