//! The figures of the Unix-socket bench, one module per figure: each holds the
//! measurement of one path (a plain function over a [`Topology`](crate::topology::Topology)) and the
//! [`Bench`](crate::bench::Bench) method that runs it on every path and records
//! the values.

pub mod burst;
pub mod client_servers;
pub mod clients;
pub mod latency;
pub mod memory;
pub mod startup;
pub mod throughput;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::sys::{self, Ctx, Res};
use crate::topology::PathKind;

/// The byte a connection echoes: varies, so a crossed connection shows.
pub fn tag(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

/// Connects, sends one byte, reads the echo; returns the open connection.
pub fn echo_once(entry: &Path, byte: u8, timeout: Duration) -> Res<UnixStream> {
    let s = sys::connect(entry, timeout).ctx("connect")?;
    (&s).write_all(&[byte]).ctx("write")?;
    let mut back = [0u8; 1];
    (&s).read_exact(&mut back).ctx("read echo")?;
    if back[0] != byte {
        return Err(format!("echo returned {} for {byte}", back[0]));
    }
    Ok(s)
}

/// Prints one figure's values of this run, per path, to stderr.
pub fn progress(what: &str, vals: &[Option<f64>; 3]) {
    let parts: Vec<String> = PathKind::ALL
        .iter()
        .filter_map(|p| vals[p.index()].map(|v| format!("{} {v:.2}", p.title())))
        .collect();
    eprintln!("  {what}: {}", parts.join(", "));
}

/// A value only the sockfwd column has.
pub fn fwd_only(v: f64) -> [Option<f64>; 3] {
    [None, None, Some(v)]
}
