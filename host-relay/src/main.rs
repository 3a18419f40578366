//! sockfwd-relay binary.
fn main() {}
