//! Optional behaviours an agent advertises in `ConnectRequest.features` (an
//! extension: a nerdbox guest leaves it 0, and a host that does not know a bit
//! ignores it, so each bit only ever enables something both sides agreed to).

/// Early result: the agent's claim of a stream waits for a stream connection
/// that has not arrived yet, so the host may send its success result as soon as
/// it has *written* the stream handshake, and read the guest's acknowledgement
/// afterwards. It saves one host-guest round trip per connection; the contract's
/// order (acknowledged before the result) stays the default for every peer that
/// does not set the bit.
pub const EARLY_RESULT: u32 = 1 << 0;

/// Every feature this build supports.
pub const SUPPORTED: u32 = EARLY_RESULT;
