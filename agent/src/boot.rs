//! Boot-time forwards: the sockets the configuration lists (`[[forward]]`,
//! `sockfwd.forward=`, `--forward`), bound when the agent starts, before any
//! host attaches and before READY=1, so guest services find them at once.
//!
//! They are bound like a host's Bind with no owner: their connections go to
//! any host's Accept streams, and wait (up to `--pending-timeout`) while no
//! host is attached. A host that later binds the same ID at the same path
//! takes the forward over; any other reuse of the ID or path is refused.

use crate::remote::bind::{self, BindError};
use crate::state::AgentState;
use sockfwd_proto::rpc::Socket;
use std::sync::Arc;

/// Binds every boot-time forward of the configuration, owner-less.
pub async fn bind_forwards(state: &Arc<AgentState>) -> Result<(), BindError> {
    let sockets: Vec<Socket> = state
        .config
        .forwards
        .iter()
        .map(|f| f.to_socket())
        .collect();
    // One Bind may create at most --max-sockets-per-bind sockets.
    for chunk in sockets.chunks(state.config.max_sockets_per_bind.max(1)) {
        bind::bind(state, None, chunk).await?;
    }
    Ok(())
}
