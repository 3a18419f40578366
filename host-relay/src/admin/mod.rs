//! Runtime control of a running relay: the admin socket ([`server`]), its
//! protocol ([`request`]), the client subcommands ([`client`]) and the
//! `status` formats ([`status`]).

pub mod client;
pub mod request;
pub mod server;
pub mod status;
