//! Local forwards, the agent's side: the host's `Connect` for a client that
//! reached a relay listener ([`connect`]), dialed to a target in the guest
//! that the allow-list lets it reach ([`target`]).

pub mod connect;
pub mod target;
