//! Remote forwards, the agent's side: a listener in the guest for each forward
//! the host binds ([`bind`]: a socket file, with [`paths`] for where sockets
//! may go, or a TCP address, [`listener`]), and each client that connects to
//! one ([`client`]; over a pre-opened stream: [`pooled`]), relayed to the
//! host's target.

pub mod bind;
pub mod client;
pub mod listener;
pub mod paths;
pub mod pooled;
