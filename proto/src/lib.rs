//! The wire contract shared by the guest agent and the host relay, and the
//! rules and helpers both daemons apply the same way.
//!
//! Layout: [`rpc`] is the generated ttrpc service, [`control_io`] the socket
//! under it; [`stream_id`] and
//! [`handshake`] are the streams channel; [`transport`] hides how each side
//! reaches the other (AF_VSOCK, hybrid vsock, per-port Unix sockets);
//! [`relay`] moves bytes between two connected sockets once a stream is set up,
//! with [`framing`] and [`features`] the extensions both sides negotiate, and
//! [`info`] the names an agent lists in its capability call, and
//! [`stream_pool`] the pre-opened streams' rules and in-band messages.
//!
//! Wire rules: [`stream_id::check`], [`forward_id::check`], the [`target`]
//! grammar of local forwards' targets, [`transport::SUN_PATH_MAX`], and the
//! [`spec_options`] a forward's spec may end with. [`tcp_dial`] is how either
//! daemon dials a TCP target (names, `localhost`, the order of addresses).
//!
//! Shared daemon parts: [`duration`] (the one cap on configured durations),
//! [`backoff`] and [`accept`] (the one accept loop), [`limits`] (descriptor
//! budgets), [`counters`] (per-forward counters), [`report`] (error chains as
//! text), [`log_throttle`] and [`log_text`] (what a peer sends, logged safely).

pub mod accept;
pub mod backoff;
pub mod control_io;
mod copy;
pub mod counters;
pub mod duration;
pub mod features;
pub mod forward_id;
pub mod framing;
pub mod handshake;
pub mod info;
pub mod limits;
pub mod log_text;
pub mod log_throttle;
pub mod relay;
pub mod report;
pub mod rpc;
pub mod spec_options;
pub mod stream_id;
pub mod stream_pool;
pub mod target;
pub mod tcp_dial;
pub mod transport;
