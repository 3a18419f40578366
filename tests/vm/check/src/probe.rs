//! `vm-check stream-probe`: host-side bad handshakes on the guest's stream port,
//! through vhost-device-vsock's hybrid Unix socket (`CONNECT P\n` / `OK n\n`).
//! Never opens an AF_VSOCK socket.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

/// What a probe sends after the hybrid `CONNECT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A `u32` length of 0xFFFFFFFF (4 GiB), nothing after it.
    HugeLen,
    /// A length of 0: an empty stream ID.
    EmptyId,
    /// A valid length followed by bytes that are not UTF-8.
    BadUtf8,
    /// An HTTP request line: its first 4 bytes read as a length of ~1.2 GB.
    Garbage,
    /// A length of 64, 10 bytes of it, then the probe closes.
    Truncated,
    /// Nothing at all: the agent must give up at its handshake deadline.
    Silent,
    /// A well-formed stream ID nobody waits for: acknowledged, then closed
    /// when the claim deadline passes.
    Unclaimed,
}

impl Mode {
    /// Parses a mode name as given on the command line.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "huge-len" => Mode::HugeLen,
            "empty-id" => Mode::EmptyId,
            "bad-utf8" => Mode::BadUtf8,
            "garbage" => Mode::Garbage,
            "truncated" => Mode::Truncated,
            "silent" => Mode::Silent,
            "unclaimed" => Mode::Unclaimed,
            _ => return None,
        })
    }
}

/// Where and how to probe.
pub struct ProbeOpts {
    /// vhost-device-vsock's host Unix socket (`$MVM_UDS`).
    pub uds: String,
    /// The guest's stream port.
    pub port: u32,
    /// What to send.
    pub mode: Mode,
    /// How long to keep retrying the hybrid `CONNECT` (the agent may still be starting).
    pub connect_within: Duration,
    /// The agent must have closed the connection within this long after the probe's bytes.
    pub close_within: Duration,
}

const UNCLAIMED_ID: &[u8] = b"socketfwd-1700000000000000000-vmtst0";

/// One hybrid `CONNECT` attempt; `Err` carries why it was refused.
fn hybrid_connect(uds: &str, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    match crate::wire::read_line(&mut s) {
        Ok(Some(l)) if l.starts_with("OK ") => Ok(s),
        Ok(Some(l)) => Err(format!("answer {l:?}")),
        Ok(None) => Err("EOF instead of OK (nothing listening yet?)".to_string()),
        Err(e) => Err(format!("no OK: {e}")),
    }
}

/// Runs one probe; `Ok(detail)` when the agent behaved.
pub fn run(o: &ProbeOpts) -> Result<String, String> {
    let t0 = Instant::now();
    let mut attempts = 0;
    let mut s = loop {
        attempts += 1;
        match hybrid_connect(&o.uds, o.port) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() >= o.connect_within => {
                return Err(format!(
                    "CONNECT {} failed {attempts} times over {:?}, last: {e}",
                    o.port, o.connect_within
                ))
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    };
    let payload: Vec<u8> = match o.mode {
        Mode::HugeLen => u32::MAX.to_be_bytes().to_vec(),
        Mode::EmptyId => vec![0, 0, 0, 0],
        Mode::BadUtf8 => [&8u32.to_be_bytes()[..], &[0xff; 8]].concat(),
        Mode::Garbage => b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        Mode::Truncated => [&64u32.to_be_bytes()[..], b"socketfwd-"].concat(),
        Mode::Silent => Vec::new(),
        Mode::Unclaimed => {
            let len = u32::try_from(UNCLAIMED_ID.len()).unwrap_or(u32::MAX);
            [&len.to_be_bytes()[..], UNCLAIMED_ID].concat()
        }
    };
    s.write_all(&payload)
        .map_err(|e| format!("write probe bytes: {e}"))?;
    if o.mode == Mode::Truncated {
        drop(s);
        return Ok(format!(
            "sent a length of 64 and 10 bytes, then closed (CONNECT attempts: {attempts})"
        ));
    }
    let sent_at = Instant::now();
    let (got, how) = wait_closed(&mut s, o.close_within)?;
    let after = sent_at.elapsed().as_millis();
    let ack: Vec<u8> = match o.mode {
        Mode::Unclaimed => payload.clone(),
        Mode::EmptyId => vec![0, 0, 0, 0],
        _ => Vec::new(),
    };
    match o.mode {
        Mode::Unclaimed if got != ack => Err(format!(
            "expected the ID acknowledged, got {} bytes {:?}, {how} after {after} ms",
            got.len(),
            String::from_utf8_lossy(&got)
        )),
        Mode::Unclaimed => Ok(format!(
            "acknowledged, then {how} by the agent after {after} ms (unclaimed stream dropped)"
        )),
        Mode::EmptyId if got == ack => Err("the agent acknowledged an empty stream ID".to_string()),
        _ => Ok(format!(
            "{how} by the agent after {after} ms{}",
            if got.is_empty() {
                String::new()
            } else {
                format!(", having answered {:?}", String::from_utf8_lossy(&got))
            }
        )),
    }
}

/// Reads until the peer closes; returns what it sent and how it closed.
fn wait_closed(s: &mut UnixStream, within: Duration) -> Result<(Vec<u8>, &'static str), String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "still open {within:?} after the probe (received {} bytes)",
                got.len()
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok((got, "closed")),
            Ok(n) if got.len() < 64 * 1024 => got.extend_from_slice(&buf[..n]),
            Ok(_) => return Err("the agent keeps sending data".to_string()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok((got, "reset")),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}
