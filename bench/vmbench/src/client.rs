//! The guest client's figures, the same on every path: one connection's
//! throughput each way, sequential connect + 1-byte round trips, and the
//! connection rate with concurrent clients. Each takes a [`Target`] and knows
//! nothing of what forwards it.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::pattern::Pattern;
use crate::wire::{self, Target, DOWNLOAD, ECHO_MIN, UPLOAD, UPLOAD_BAD, UPLOAD_OK};

/// Any single connect, read or write blocked this long fails the figure.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection of the latency and rate figures gives up after this.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;

/// Sends `bytes` pattern bytes to the server; the time from the first byte
/// written to the server's answer that all of them arrived right. Writes to
/// a vsock target are at most `vsock_write_max` bytes each (see guest.rs).
pub fn upload(
    target: &Target,
    bytes: u64,
    pattern: &Pattern,
    vsock_write_max: usize,
) -> Result<Duration, String> {
    let chunk = match target {
        Target::Vsock(..) => CHUNK.min(vsock_write_max),
        Target::Unix(_) => CHUNK,
    };
    let mut c = target
        .connect(IO_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    c.write_all(&wire::header(UPLOAD, bytes))
        .map_err(|e| format!("header: {e}"))?;
    let t0 = Instant::now();
    let mut pos = 0u64;
    while pos < bytes {
        let want = usize::try_from(bytes - pos).unwrap_or(chunk).min(chunk);
        let n = c
            .write(pattern.chunk(pos, want))
            .map_err(|e| format!("write at byte {pos}: {e}"))?;
        if n == 0 {
            return Err(format!("wrote 0 at byte {pos}"));
        }
        pos += n as u64;
    }
    let mut answer = [0u8; 1];
    c.read_exact(&mut answer)
        .map_err(|e| format!("waiting for the server's count: {e}"))?;
    match answer[0] {
        UPLOAD_OK => Ok(t0.elapsed()),
        UPLOAD_BAD => Err("integrity: the server received wrong bytes".into()),
        other => Err(format!("unexpected answer {other:#04x}")),
    }
}

/// Asks the server for `bytes` pattern bytes; the time from the request to
/// the last byte. Every 4 KiB boundary is spot-checked and the count exact.
pub fn download(target: &Target, bytes: u64, pattern: &Pattern) -> Result<Duration, String> {
    let mut c = target
        .connect(IO_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    let t0 = Instant::now();
    c.write_all(&wire::header(DOWNLOAD, bytes))
        .map_err(|e| format!("header: {e}"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos < bytes {
        let want = usize::try_from(bytes - pos).unwrap_or(CHUNK).min(CHUNK);
        let n = c
            .read(&mut buf[..want])
            .map_err(|e| format!("read at byte {pos}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "integrity: stream ended after {pos} of {bytes} bytes"
            ));
        }
        if !pattern.spot_check(pos, &buf[..n]) {
            return Err(format!(
                "integrity: wrong bytes in {pos}..{}",
                pos + n as u64
            ));
        }
        pos += n as u64;
    }
    Ok(t0.elapsed())
}

/// The echo byte of connection `i`: varies, so a crossed connection shows.
fn tag(i: usize) -> u8 {
    ECHO_MIN + u8::try_from(i % 127).unwrap_or(0)
}

/// Connects, writes one byte and reads it back; the connection stays open.
fn echo(target: &Target, byte: u8) -> Result<File, String> {
    let mut c = target
        .connect(ECHO_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    c.write_all(&[byte]).map_err(|e| format!("write: {e}"))?;
    let mut back = [0u8; 1];
    c.read_exact(&mut back)
        .map_err(|e| format!("read echo: {e}"))?;
    if back[0] != byte {
        return Err(format!("echo returned {:#04x} for {byte:#04x}", back[0]));
    }
    Ok(c)
}

/// Sequential connect + 1-byte round trips.
pub struct Latency {
    /// Microseconds per connection that succeeded, sorted.
    pub samples_us: Vec<f64>,
    /// Connections that failed.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// `count` connections one after another (after a few unmeasured ones), each
/// connect, write a byte, read it back; closed before the next.
pub fn latency(target: &Target, count: usize) -> Latency {
    for i in 0..3 {
        let _ = echo(target, tag(i));
    }
    let mut out = Latency {
        samples_us: Vec::with_capacity(count),
        errors: 0,
        first_error: None,
    };
    for i in 0..count {
        let t0 = Instant::now();
        match echo(target, tag(i)) {
            Ok(c) => {
                out.samples_us.push(t0.elapsed().as_secs_f64() * 1e6);
                drop(c);
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out.samples_us.sort_by(f64::total_cmp);
    out
}

/// The connection rate with concurrent clients.
pub struct Rate {
    /// Connections that completed their round trip.
    pub conns: u64,
    /// Connections that failed.
    pub errors: u64,
    /// How long the clients ran.
    pub secs: f64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// `clients` threads, each looping connect / 1-byte round trip / close for `run`.
pub fn rate(target: &Target, clients: usize, run: Duration) -> Rate {
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first = Mutex::new(None::<String>);
    let barrier = Barrier::new(clients + 1);
    let t0 = thread::scope(|sc| {
        for c in 0..clients {
            let (ok, errors, first, barrier) = (&ok, &errors, &first, &barrier);
            sc.spawn(move || {
                barrier.wait();
                let end = Instant::now() + run;
                let mut i = c;
                while Instant::now() < end {
                    match echo(target, tag(i)) {
                        Ok(conn) => {
                            drop(conn);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    i += clients;
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    Rate {
        conns: ok.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        secs: t0.elapsed().as_secs_f64(),
        first_error: first.into_inner().unwrap_or_else(|p| p.into_inner()),
    }
}
