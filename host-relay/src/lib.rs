//! sockfwd host relay.
