//! The bidirectional relay both daemons run once a stream is set up.
//!
//! Both directions run at once. When one side reaches EOF, the relay shuts down
//! writing on the other side and keeps copying the other direction until it ends
//! too (half-close, which the reference loses). An error or reset on either side
//! ends both directions, and dropping the streams closes both sockets.
//!
//! Bulk data moves with `splice(2)` through a pipe (socket to pipe to socket, no
//! copy into user space), except into vsock, where copying costs the guest
//! less (see [`one_way`]). The pipe is created on the first byte, so an idle
//! connection holds none. [`CopyMode::Copy`] is the plain read/write path
//! through read buffers the thread's connections share (`copy.rs`); a
//! direction also falls back to it when the kernel refuses to splice a socket.
//! EOF-framed streams always take the copy path.
//!
//! With [`RelayConfig::idle_timeout`], a relay in which no byte has moved
//! either way for that long ends (a [`RelayError`] of kind `TimedOut`), which
//! closes both sockets: an idle client gives back what it holds (a forward's
//! concurrency slot). Each direction counts its bytes in an atomic the idle
//! watch reads every quarter of the timeout, so it fires between the timeout
//! and a quarter more after the last byte, and costs nothing when unset.

use crate::copy::copy_until_eof;
use crate::framing::{frame_in, frame_out, Framing, DEFAULT_FRAME};
use crate::transport::{vsock_write_max, Stream};
use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use thiserror::Error;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// splice(2) through a pipe, except into vsock (see [`one_way`]); copying
    /// where the kernel refuses to splice a socket.
    Splice,
    /// read(2)/write(2) through a user-space buffer.
    Copy,
}

/// Relay tuning.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Splice or copy.
    pub mode: CopyMode,
    /// Pipe capacity asked for with F_SETPIPE_SZ (the kernel may give less).
    pub pipe_size: usize,
    /// Read size of the copy path (a write into vsock is at most
    /// [`vsock_write_max`]).
    pub buffer_size: usize,
    /// Ends the relay once no byte has moved either way for this long;
    /// `None` (the default): never.
    pub idle_timeout: Option<Duration>,
    /// Largest EOF frame sent, header included ([`DEFAULT_FRAME`]; at most
    /// [`vsock_write_max`] on vsock). Frames coming in are read one at a time,
    /// with the next one's header.
    pub frame_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        // 1 MiB pipes measured about twice the throughput of 64 KiB read/write
        // buffers on this class of machine (issue 5); 64 KiB is the copy path's sweet spot.
        RelayConfig {
            mode: CopyMode::Splice,
            pipe_size: 1 << 20,
            buffer_size: 64 << 10,
            idle_timeout: None,
            frame_size: DEFAULT_FRAME,
        }
    }
}

/// Largest read of incoming EOF frames, in frames we send: a read never goes
/// past the header after the current frame (a pooled stream's next
/// connection may follow the end frame, see [`crate::framing`]), so this only
/// bounds a larger frame (up to [`crate::framing::MAX_FRAME`]) a peer sends.
const READ_FRAMES: usize = 4;

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// A relay that ended on an error (the other direction was cut short too).
#[derive(Debug, Error)]
#[error("relay {direction} failed")]
pub struct RelayError {
    /// `a->b` or `b->a`.
    pub direction: &'static str,
    /// The socket error.
    #[source]
    pub source: io::Error,
}

/// Bytes moved by each direction of one relay, read by its idle watch.
#[derive(Debug, Default)]
struct Moved {
    a_to_b: AtomicU64,
    b_to_a: AtomicU64,
}

impl Moved {
    fn total(&self) -> u64 {
        self.a_to_b
            .load(Ordering::Relaxed)
            .wrapping_add(self.b_to_a.load(Ordering::Relaxed))
    }

    fn stats(&self) -> RelayStats {
        RelayStats {
            a_to_b: self.a_to_b.load(Ordering::Relaxed),
            b_to_a: self.b_to_a.load(Ordering::Relaxed),
        }
    }
}

/// Both directions of one relay, ended early by `idle_timeout` when set.
///
/// `both` is pinned by the caller and borrowed: taken by value, it would be
/// stored in this future as well as in the caller's, and every connection's
/// task would hold it two or three times (5.4 KiB per relay future against
/// 1.4 KiB, measured with `size_of_val`).
async fn until_idle(
    mut both: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), RelayError>>>,
    moved: &Moved,
    idle_timeout: Option<Duration>,
) -> Result<RelayStats, RelayError> {
    let Some(timeout) = idle_timeout else {
        both.as_mut().await?;
        return Ok(moved.stats());
    };
    let watch = async {
        let tick = (timeout / 4).max(Duration::from_millis(1));
        let (mut last, mut quiet) = (moved.total(), Duration::ZERO);
        loop {
            tokio::time::sleep(tick).await;
            let now = moved.total();
            if now == last {
                quiet += tick;
                if quiet >= timeout {
                    return;
                }
            } else {
                (last, quiet) = (now, Duration::ZERO);
            }
        }
    };
    tokio::select! {
        r = both.as_mut() => r.map(|()| moved.stats()),
        () = watch => Err(RelayError {
            direction: "both ways",
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("idle: no byte either way for {timeout:?}"),
            ),
        }),
    }
}

/// The two directions of one relay, joined: the first error ends both (and
/// names its direction). Built from combinators, not `async` blocks: every
/// idle connection's task holds this future, and a direction moved into an
/// `async` block (or an `async fn`'s argument) and then into a join is
/// stored twice (relay: 3.9 KiB that way, 1.5 KiB so).
fn both_ways<'a>(
    a_to_b: impl std::future::Future<Output = io::Result<()>> + 'a,
    b_to_a: impl std::future::Future<Output = io::Result<()>> + 'a,
) -> impl std::future::Future<Output = Result<(), RelayError>> + 'a {
    use futures::TryFutureExt as _;
    let named = |direction| move |source| RelayError { direction, source };
    futures::future::try_join(a_to_b.map_err(named("a->b")), b_to_a.map_err(named("b->a")))
        .map_ok(|_| ())
}

/// Relays between `a` and `b` until both directions end (or the idle timeout
/// passes); see the module docs.
pub async fn relay(a: &Stream, b: &Stream, config: &RelayConfig) -> Result<RelayStats, RelayError> {
    let moved = Moved::default();
    let both = std::pin::pin!(both_ways(
        one_way_counted(a, b, config, &moved.a_to_b),
        one_way_counted(b, a, config, &moved.b_to_a),
    ));
    until_idle(both, &moved, config.idle_timeout).await
}

/// Relays between a local socket and a stream-port connection carried with
/// `framing`: [`relay`] for raw streams, frames on `stream`'s side otherwise.
pub async fn relay_stream(
    local: &Stream,
    stream: &Stream,
    framing: Framing,
    config: &RelayConfig,
) -> Result<RelayStats, RelayError> {
    match framing {
        Framing::Raw => relay(local, stream, config).await,
        Framing::EofFrames => {
            let moved = Moved::default();
            let frame = if stream.is_vsock() {
                config.frame_size.min(vsock_write_max())
            } else {
                config.frame_size
            };
            let both = std::pin::pin!(both_ways(
                frame_out(local, stream, frame, &moved.a_to_b),
                frame_in(stream, local, READ_FRAMES * frame, &moved.b_to_a),
            ));
            until_idle(both, &moved, config.idle_timeout).await
        }
    }
}

/// Copies `src` to `dst` until EOF, then half-closes `dst`. Returns the bytes moved.
pub async fn one_way(src: &Stream, dst: &Stream, config: &RelayConfig) -> io::Result<u64> {
    let moved = AtomicU64::new(0);
    one_way_counted(src, dst, config, &moved).await?;
    Ok(moved.into_inner())
}

/// [`one_way`], adding the bytes to `moved` as they go.
async fn one_way_counted(
    src: &Stream,
    dst: &Stream,
    config: &RelayConfig,
    moved: &AtomicU64,
) -> io::Result<()> {
    // Into vsock, copying costs the guest less than splicing: without
    // sendpage for vsock (6.1), splice sends one packet per pipe buffer (a
    // page or 32 KiB), where a 64 KiB write is one packet. Measured in the VM
    // bench, raw streams (bench/README.md): guest CPU per GiB into vsock 1.15x
    // the minimal relay's when splicing, 1.03x when copying; out of vsock,
    // splice stays (0.86x against copying's 0.92x).
    if config.mode == CopyMode::Splice && !dst.is_vsock() {
        let mut spliced = false;
        match splice_until_eof(src, dst, config.pipe_size, moved, &mut spliced).await {
            // Checked on the first splice, before it moved a byte: nothing is lost
            // by carrying on with the copy path.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !spliced => {
                tracing::debug!("splice refused for this socket pair; copying instead");
            }
            other => return other,
        }
    }
    let read = if dst.is_vsock() {
        config.buffer_size.min(vsock_write_max())
    } else {
        config.buffer_size
    };
    copy_until_eof(src, dst, read, moved).await
}

fn new_pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    // Best effort: beyond pipe-max-size or the user's pipe quota the default
    // (64 KiB) stays, which still works.
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    let _ = fcntl(w.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size));
    Ok((r, w))
}

fn nix_io(r: nix::Result<usize>) -> io::Result<usize> {
    r.map_err(|e: Errno| io::Error::from(e))
}

/// Reads of at most this size go through a stack buffer instead of a pipe: a
/// request/response exchange costs two syscalls per message and no pipe; a read
/// that fills it means bulk data, and the direction switches to splice.
const SMALL_READ: usize = 16 << 10;

/// A pipe idle this long is closed, so an idle connection holds two sockets and
/// nothing else (descriptors and the kernel's pipe ring).
const PIPE_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one small read did.
enum Small {
    /// EOF from the source.
    Eof,
    /// Read `n` bytes; `rest` is what the destination did not take at once.
    Read { n: usize, rest: Vec<u8> },
}

/// One nonblocking read into a stack buffer and one nonblocking write of it.
/// Synchronous on purpose: the buffer lives on the poller's stack, not in the
/// connection's future, so it costs an idle connection nothing. Only the
/// source's WouldBlock may come back as WouldBlock (the caller clears the
/// source's readiness on it); a full destination is reported as `rest`.
fn small_step(src: &Stream, dst: &Stream) -> io::Result<Small> {
    let mut buf = [0u8; SMALL_READ];
    let n = src.try_read(&mut buf)?;
    if n == 0 {
        return Ok(Small::Eof);
    }
    let written = match dst.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    Ok(Small::Read {
        n,
        rest: buf[written..n].to_vec(),
    })
}

async fn splice_until_eof(
    src: &Stream,
    dst: &Stream,
    pipe_size: usize,
    moved: &AtomicU64,
    spliced: &mut bool,
) -> io::Result<()> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    // Created when a read fills SMALL_READ, closed after PIPE_IDLE without data.
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    loop {
        let mut guard = if pipe.is_some() {
            match tokio::time::timeout(PIPE_IDLE, src.readable()).await {
                Ok(guard) => guard?,
                Err(_idle) => {
                    pipe = None;
                    continue;
                }
            }
        } else {
            src.readable().await?
        };
        let Some((r, w)) = &pipe else {
            let (n, rest) = match guard.try_io(|_| small_step(src, dst)) {
                Ok(Ok(Small::Eof)) => return dst.shutdown_write(),
                Ok(Ok(Small::Read { n, rest })) => (n, rest),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            };
            drop(guard);
            if !rest.is_empty() {
                dst.write_all(&rest).await?;
            }
            moved.fetch_add(n as u64, Ordering::Relaxed);
            if n == SMALL_READ {
                // Out of descriptors (EMFILE/ENFILE) this direction keeps copying
                // through the stack buffer: slower, but the connection lives.
                pipe = match new_pipe(pipe_size) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::debug!(cause = %e, "no pipe for splice; copying");
                        None
                    }
                };
            }
            continue;
        };
        // The pipe is always empty here, so EAGAIN can only mean the socket has
        // nothing: clearing its readiness is correct.
        let n = match guard.try_io(|_| nix_io(splice(src, None, w, None, pipe_size, flags))) {
            Ok(r) => r?,
            Err(_would_block) => continue,
        };
        drop(guard);
        *spliced = true;
        if n == 0 {
            return dst.shutdown_write();
        }
        let mut left = n;
        while left > 0 {
            let mut guard = dst.writable().await?;
            match guard.try_io(|_| nix_io(splice(r, None, dst, None, left, flags))) {
                Ok(m) => left -= m?,
                Err(_would_block) => continue,
            }
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (Stream, Stream) {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        (Stream::from_unix(a).unwrap(), Stream::from_unix(b).unwrap())
    }

    /// client <-> [a relay b] <-> server, then a half-close from `client`.
    async fn half_close_through(mode: CopyMode) {
        let (mut client, a) = pair();
        let (b, mut server) = pair();
        let config = RelayConfig {
            mode,
            ..RelayConfig::default()
        };
        let relay = tokio::spawn(async move { relay(&a, &b, &config).await });

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "request intact");
        // The reply is written after the server saw EOF: the reference loses it.
        server.write_all(b"reply after eof").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after eof");
        let stats = relay.await.unwrap().unwrap();
        assert_eq!(
            stats,
            RelayStats {
                a_to_b: 3_000_000,
                b_to_a: 15
            }
        );
    }

    #[tokio::test]
    async fn splice_keeps_half_close() {
        half_close_through(CopyMode::Splice).await;
    }

    #[tokio::test]
    async fn copy_keeps_half_close() {
        half_close_through(CopyMode::Copy).await;
    }

    /// Two relays back to back over a framed middle link whose own half-close
    /// is never used: the half-close still crosses.
    #[tokio::test]
    async fn framed_link_carries_half_close() {
        let (mut client, guest_local) = pair();
        let (guest_stream, host_stream) = pair();
        let (host_local, mut server) = pair();
        let config = RelayConfig::default();
        let c2 = config.clone();
        let agent = tokio::spawn(async move {
            relay_stream(&guest_local, &guest_stream, Framing::EofFrames, &c2).await
        });
        let host = tokio::spawn(async move {
            relay_stream(&host_local, &host_stream, Framing::EofFrames, &config).await
        });
        let payload: Vec<u8> = (0..2_500_000u32).map(|i| (i % 253) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        server.write_all(b"late reply").await.unwrap();
        drop(server);
        assert_eq!(writer.await.unwrap(), b"late reply");
        assert_eq!(agent.await.unwrap().unwrap().a_to_b, 2_500_000);
        assert_eq!(host.await.unwrap().unwrap().b_to_a, 2_500_000);
    }

    /// A byte each way every `every`, `times` times, through client and server.
    async fn keep_busy(client: &mut Stream, server: &mut Stream, every: Duration, times: u32) {
        let mut one = [0u8; 1];
        for _ in 0..times {
            tokio::time::sleep(every).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut one).await.unwrap();
            server.write_all(b"y").await.unwrap();
            client.read_exact(&mut one).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_ends_at_its_idle_timeout_and_a_busy_one_does_not() {
        use tokio::time::Instant;
        for framing in [Framing::Raw, Framing::EofFrames] {
            let (mut client, a) = pair();
            let (b, far) = pair();
            // Framed: a second relay turns the frames back into bytes.
            let (c, mut server) = pair();
            let config = RelayConfig {
                idle_timeout: Some(Duration::from_secs(10)),
                ..RelayConfig::default()
            };
            let c2 = config.clone();
            let tested = tokio::spawn(async move { relay_stream(&a, &b, framing, &c2).await });
            let unframe = tokio::spawn(async move {
                match framing {
                    Framing::Raw => relay(&far, &c, &RelayConfig::default()).await.map(|_| ()),
                    Framing::EofFrames => relay_stream(&c, &far, framing, &RelayConfig::default())
                        .await
                        .map(|_| ()),
                }
            });
            // A byte every 5 s for a minute: never idle for 10 s.
            keep_busy(&mut client, &mut server, Duration::from_secs(5), 12).await;
            assert!(!tested.is_finished(), "{framing:?}: busy relay closed");
            let quiet_from = Instant::now();
            let err = tested.await.unwrap().unwrap_err();
            let idle = quiet_from.elapsed();
            assert_eq!(err.source.kind(), io::ErrorKind::TimedOut, "{framing:?}");
            assert!(
                idle >= Duration::from_secs(10) && idle <= Duration::from_millis(12_600),
                "{framing:?}: closed after {idle:?} idle"
            );
            // Both sockets closed with it: the client sees the end.
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
            assert!(rest.is_empty());
            drop(server);
            let _ = unframe.await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_an_idle_relay_stays() {
        let (mut client, a) = pair();
        let (b, mut server) = pair();
        let relay = tokio::spawn(async move { relay(&a, &b, &RelayConfig::default()).await });
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(!relay.is_finished());
        keep_busy(&mut client, &mut server, Duration::from_secs(1), 1).await;
        drop(client);
        drop(server);
        relay.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn reset_on_one_side_closes_both() {
        let (client, a) = pair();
        let (b, mut server) = pair();
        let relay = tokio::spawn(async move { relay(&a, &b, &RelayConfig::default()).await });
        // Server sends, client vanishes without reading: the write side errors,
        // and the server must see its connection closed rather than hang.
        drop(client);
        server.write_all(&[7u8; 1 << 20]).await.ok();
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        let _ = relay.await.unwrap();
    }

    /// Every idle forwarded connection holds its relay future in its task:
    /// each direction must be stored in it once. (Moved into a joined future,
    /// or into the idle watch by value, each was stored two or three times:
    /// 5.4 KiB per relay instead of 1.7, and per idle connection 13.3 KiB of
    /// agent RSS instead of 5.9 in `sockfwd-bench --only memory`.)
    #[tokio::test]
    async fn a_relay_future_holds_each_direction_once() {
        let (a, b) = pair();
        let config = RelayConfig::default();
        let moved = AtomicU64::new(0);
        let direction = std::mem::size_of_val(&one_way(&a, &b, &config))
            .max(std::mem::size_of_val(&frame_in(&a, &b, 1 << 16, &moved)))
            .max(std::mem::size_of_val(&frame_out(&a, &b, 1 << 16, &moved)));
        for framing in [Framing::Raw, Framing::EofFrames] {
            let whole = std::mem::size_of_val(&relay_stream(&a, &b, framing, &config));
            assert!(
                whole < 2 * direction + 1024,
                "{framing:?}: a relay future of {whole} bytes for directions of {direction}"
            );
        }
    }
}
