//! sockfwd-agent binary.
fn main() {}
