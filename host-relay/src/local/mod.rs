//! Local forwards: listeners on the host whose clients reach a target in the
//! guest (`-L` specs parsed in [`crate::local_spec`], `--auto-forward`, the
//! library's [`guest_handle::Guest`]).
//!
//! [`guest_handle`] opens one connection in the guest (a stream, then
//! `Connect`); [`listen`] serves host listeners with it, each one a
//! [`forward::LocalForward`]; [`listener_table`] keeps the relay's;
//! [`auto_forward`] follows the guest's listening ports.

pub mod auto_forward;
pub mod forward;
pub mod guest_handle;
pub mod listen;
pub mod listener_table;
