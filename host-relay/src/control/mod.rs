//! The control channel: the ttrpc connection to the agent and the sessions on it.
//!
//! [`connector`] gets connections (dial or listen); [`session`] runs one
//! session (Bind, Accept, liveness) and hands its `ConnectRequest`s on;
//! [`channel`] keeps sessions going, bounded by the boot deadline until the
//! first is ready.

pub mod channel;
pub mod connector;
pub mod session;
