//! Host-side dialing: AF_VSOCK, hybrid vsock (`CONNECT port\n` / `OK n\n`), or a
//! per-port Unix socket.

use super::{Address, Stream};
use crate::backoff::Backoff;
use crate::log_text::escape;
use crate::report::Chain;
use std::io;
use std::time::Duration;
use thiserror::Error;
use tokio::time::{sleep, timeout, Instant};

/// Bound on the hybrid vsock answer line (`OK 1073741824\n` is 14 bytes; firecracker
/// caps its own CONNECT line at 32).
pub const HYBRID_REPLY_MAX: usize = 64;

/// Why a connection to the guest could not be opened.
#[derive(Debug, Error)]
pub enum DialError {
    /// connect() failed.
    #[error("connecting to {addr}")]
    Connect {
        /// Where we dialed.
        addr: Address,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The attempt did not finish in time.
    #[error("connecting to {addr}: timed out after {after:?}")]
    Timeout {
        /// Where we dialed.
        addr: Address,
        /// The deadline that passed.
        after: Duration,
    },
    /// The VMM answered the hybrid CONNECT with something other than `OK`.
    #[error("connecting to {addr}: the VMM refused CONNECT {port} (answer {reply:?})")]
    HybridRefused {
        /// Where we dialed.
        addr: Address,
        /// The guest port asked for.
        port: u32,
        /// What the VMM said (empty: it closed the connection).
        reply: String,
    },
    /// Kept retrying until the boot deadline passed.
    #[error("gave up after {after:?}: {last}")]
    GaveUp {
        /// The retry deadline.
        after: Duration,
        /// The last attempt's error.
        #[source]
        last: Box<DialError>,
    },
}

impl DialError {
    /// Whether a retry can help: the VM may still be booting or the socket not there yet.
    pub fn is_transient(&self) -> bool {
        match self {
            DialError::Connect { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::NotFound
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::TimedOut
                ) || source.raw_os_error() == Some(libc::ENODEV)
                    || source.raw_os_error() == Some(libc::EHOSTUNREACH)
            }
            DialError::Timeout { .. } | DialError::HybridRefused { .. } => true,
            DialError::GaveUp { .. } => false,
        }
    }
}

/// Opens one connection to `addr`, the whole of it (hybrid answer included) within `limit`.
pub async fn dial(addr: &Address, limit: Duration) -> Result<Stream, DialError> {
    let connect_err = |source| DialError::Connect {
        addr: addr.clone(),
        source,
    };
    let attempt = async {
        match addr {
            Address::Unix(path) => Stream::connect_unix(path).await.map_err(connect_err),
            Address::Vsock { cid, port } => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await
                    .map_err(connect_err)?;
                super::vsock::enlarge(std::os::fd::AsFd::as_fd(&s));
                Stream::from_vsock(s).map_err(connect_err)
            }
            Address::Hybrid { path, port } => {
                let s = Stream::connect_unix(path).await.map_err(connect_err)?;
                s.write_all(format!("CONNECT {port}\n").as_bytes())
                    .await
                    .map_err(connect_err)?;
                let reply = read_reply_line(&s).await.map_err(connect_err)?;
                if reply.starts_with("OK ") || reply == "OK" {
                    Ok(s)
                } else {
                    Err(DialError::HybridRefused {
                        addr: addr.clone(),
                        port: *port,
                        reply,
                    })
                }
            }
        }
    };
    timeout(limit, attempt).await.unwrap_or_else(|_| {
        Err(DialError::Timeout {
            addr: addr.clone(),
            after: limit,
        })
    })
}

/// Reads the VMM's answer line without consuming a byte past its newline (the
/// guest's bytes follow it on the same socket). An empty string means EOF.
async fn read_reply_line(s: &Stream) -> io::Result<String> {
    let mut peek = [0u8; HYBRID_REPLY_MAX];
    loop {
        let mut guard = s.readable().await?;
        let n = match guard.try_io(|_| s.try_peek(&mut peek)) {
            Ok(r) => r?,
            Err(_would_block) => continue,
        };
        if n == 0 {
            return Ok(String::new());
        }
        if let Some(end) = peek[..n].iter().position(|&b| b == b'\n') {
            let mut line = vec![0u8; end + 1];
            let mut got = 0;
            while got < line.len() {
                got += s.read(&mut line[got..]).await?;
            }
            line.pop();
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if n == HYBRID_REPLY_MAX {
            return Ok(String::from_utf8_lossy(&peek).into_owned());
        }
        // A partial line: wait for more. Peeking left the data queued, so clear the
        // readiness explicitly or we would spin.
        guard.clear_ready();
    }
}

/// Dials with exponential backoff (10 ms to 1 s) while errors are transient, until
/// `deadline` has passed since the first attempt.
pub async fn dial_with_retry(
    addr: &Address,
    per_attempt: Duration,
    deadline: Duration,
) -> Result<Stream, DialError> {
    let start = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        match dial(addr, per_attempt).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_transient() && start.elapsed() + backoff.peek() < deadline => {
                tracing::debug!(addr = %escape(&addr.to_string()), cause = %Chain(&e),
                    "guest not reachable yet; retrying");
                sleep(backoff.next_delay()).await;
            }
            Err(e) if e.is_transient() => {
                return Err(DialError::GaveUp {
                    after: deadline,
                    last: Box::new(e),
                })
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    /// A fake hybrid-vsock VMM: answers CONNECT with `answer`, then echoes "hello".
    async fn fake_vmm(path: std::path::PathBuf, answer: &'static str) {
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1026\n");
            // The answer and the first guest bytes arrive together.
            s.get_mut()
                .write_all(format!("{answer}hello").as_bytes())
                .await
                .unwrap();
        });
    }

    #[tokio::test]
    async fn hybrid_connect_keeps_bytes_after_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        fake_vmm(path.clone(), "OK 1073741824\n").await;
        let addr = Address::Hybrid { path, port: 1026 };
        let mut s = dial(&addr, Duration::from_secs(5)).await.unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn hybrid_refusal_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        fake_vmm(path.clone(), "NO\n").await;
        let addr = Address::Hybrid { path, port: 1026 };
        let err = dial(&addr, Duration::from_secs(5)).await.err().unwrap();
        assert!(
            matches!(&err, DialError::HybridRefused { reply, .. } if reply == "NO"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn retry_gives_up_at_the_deadline_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let addr = Address::Unix(dir.path().join("missing.sock"));
        let err = dial_with_retry(
            &addr,
            Duration::from_millis(100),
            Duration::from_millis(200),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, DialError::GaveUp { .. }), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
    }
}
