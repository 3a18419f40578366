//! How the two sides reach each other, behind one [`Stream`] type.
//!
//! The guest listens ([`Listener`]: AF_VSOCK or a Unix socket); the host dials
//! ([`dial`]: AF_VSOCK, hybrid vsock `CONNECT`/`OK`, or a per-port Unix socket).
//! Every form yields the same nonblocking [`Stream`], so the production code that
//! runs over vsock in a VM is the code the tests run over Unix sockets. A
//! forward's clients connect to a [`ClientListener`] (Unix or TCP, [`ListenAt`]).

mod address;
mod client_listener;
mod dial;
mod listener;
mod peer_cred;
pub mod socket_file;
mod stream;
mod tcp_accept;
mod vsock;

pub use address::{Address, AddressError, VMADDR_CID_ANY, VMADDR_CID_HOST};
pub use client_listener::{ClientListenError, ClientListener, ListenAt};
pub use dial::{dial, dial_with_retry, DialError, HYBRID_REPLY_MAX};
pub use listener::{Listener, ListenerError, Peer};
pub use peer_cred::{peer_credentials, PeerCredentials};
pub use socket_file::{SocketFileError, SocketFileOptions};
pub use stream::Stream;
pub use vsock::{write_max as vsock_write_max, VSOCK_BUFFER};

/// Longest Unix socket path in bytes: `sockaddr_un.sun_path` holds 108 with the NUL.
pub const SUN_PATH_MAX: usize = 107;
