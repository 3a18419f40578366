//! Host-side Unix servers the forwards point at, one thread per connection.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a test server does with each connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Echo every byte back; half-close when the client half-closes.
    Echo,
    /// Read to EOF, then answer `<tag> <len> <sha256 hex>` and close: the answer
    /// only exists after the server saw the client's half-close.
    DigestAfterEof(String),
    /// Write `len` bytes of [`pattern`] data seeded with `seed`, half-close, then
    /// read to EOF and answer nothing (client-side integrity checks).
    Source {
        /// Bytes to send.
        len: u64,
        /// Pattern seed.
        seed: u64,
    },
    /// Send `greeting`, half-close the server's writing side, then read to EOF and
    /// record the digest of what arrived (the other half-close direction).
    GreetThenDrain(String),
}

/// A running server; stops accepting when dropped.
pub struct Server {
    /// Its socket path.
    pub path: PathBuf,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Digests recorded by [`Behaviour::GreetThenDrain`].
    pub received: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Deterministic pseudo-random bytes (xorshift64*), cheap enough for GiB-sized streams.
pub fn pattern(seed: u64, buf: &mut [u8], state: &mut u64) {
    if *state == 0 {
        *state = seed | 1;
    }
    for chunk in buf.chunks_mut(8) {
        let mut x = *state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// SHA-256 (hex) of `len` bytes of [`pattern`] data.
pub fn pattern_digest(seed: u64, len: u64) -> String {
    let mut h = Sha256::new();
    let mut state = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        pattern(seed, &mut buf[..n], &mut state);
        h.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads `s` to EOF, returning the byte count and SHA-256 hex.
pub fn digest_to_eof(s: &mut impl Read) -> std::io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hex(&h.finalize())));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Writes `len` bytes of pattern data seeded `seed` to `s`.
pub fn write_pattern(s: &mut impl Write, seed: u64, len: u64) -> std::io::Result<()> {
    let mut state = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        pattern(seed, &mut buf[..n], &mut state);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn serve(
    mut s: UnixStream,
    behaviour: &Behaviour,
    received: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    match behaviour {
        Behaviour::Echo => {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    return s.shutdown(std::net::Shutdown::Write);
                }
                s.write_all(&buf[..n])?;
            }
        }
        Behaviour::DigestAfterEof(tag) => {
            let (len, digest) = digest_to_eof(&mut s)?;
            s.write_all(format!("{tag} {len} {digest}").as_bytes())
        }
        Behaviour::Source { len, seed } => {
            write_pattern(&mut s, *seed, *len)?;
            s.shutdown(std::net::Shutdown::Write)?;
            digest_to_eof(&mut s).map(|_| ())
        }
        Behaviour::GreetThenDrain(greeting) => {
            s.write_all(greeting.as_bytes())?;
            s.shutdown(std::net::Shutdown::Write)?;
            let (len, digest) = digest_to_eof(&mut s)?;
            received
                .lock()
                .map(|mut r| r.push(format!("{len} {digest}")))
                .ok();
            Ok(())
        }
    }
}

impl Server {
    /// Listens on `path` and serves each connection with `behaviour` on its own thread.
    pub fn start(path: &Path, behaviour: Behaviour) -> Server {
        let listener =
            UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, accepted2, received2) = (stop.clone(), accepted.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let behaviour = behaviour.clone();
                let received = received2.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &behaviour, &received);
                });
            }
        });
        Server {
            path: path.to_owned(),
            accepted,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
