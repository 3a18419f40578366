//! `vmbench relay --listen PATH --to TARGET`: the minimal in-guest relay, the
//! limit of any design that puts a hop in the guest. One thread, one epoll
//! set, edge-triggered: each client of the Unix listener gets a non-blocking
//! connection to the target (AF_VSOCK to the host), and bytes move by
//! read(2)/write(2) through one shared 64 KiB buffer, with a connection's own
//! buffer only for what a socket did not take at once. No thread or pipe per
//! connection, no framing, no control channel, no limits.
//!
//! Why copy and not splice: splice(2) from a vsock socket falls back to a
//! kernel copy into freshly allocated pipe pages, which measured slower in an
//! emulated guest than copying through a buffer (and sockfwd copies on
//! hybrid-vsock streams too, for its EOF frames).
//!
//! The first EOF or error on either socket ends the connection: a half-close
//! does not cross vhost-device-vsock, so waiting for the other direction's
//! EOF could wait forever. The bench's exchanges never rely on one.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use crate::sys::{self, EpollEvent, EPOLLERR, EPOLLET, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};
use crate::wire::Target;

/// The shared copy buffer's size (sockfwd's copy path uses the same).
const BUF: usize = 64 << 10;
/// epoll token of the listener; a connection's tokens are `slot * 2 + side`.
const LISTENER: u64 = u64::MAX;

/// One side of a connection.
#[derive(Default)]
struct Side {
    /// Readiness seen since the last EAGAIN.
    readable: bool,
    writable: bool,
    /// Bytes read from the *other* side that this side has not taken yet.
    pending: Vec<u8>,
}

/// A relayed connection: side 0 is the client, side 1 the target.
struct Conn {
    fds: [OwnedFd; 2],
    sides: [Side; 2],
    /// The non-blocking connect to the target has completed.
    connected: bool,
}

/// Outcome of moving bytes one way.
enum Flow {
    /// Blocked on a socket; wait for epoll.
    Wait,
    /// EOF or an error: the connection is over.
    End,
}

/// Moves bytes from side `from` to side `1 - from` until a socket would block;
/// writes to the target (side 1) are at most `vsock_max` bytes each.
fn flow(conn: &mut Conn, from: usize, scratch: &mut [u8], vsock_max: usize) -> Flow {
    let cap = if from == 0 { vsock_max } else { usize::MAX };
    let to = 1 - from;
    let (src, dst) = (conn.fds[from].as_raw_fd(), conn.fds[to].as_raw_fd());
    loop {
        // First what the destination did not take last time.
        if !conn.sides[to].pending.is_empty() {
            if !conn.sides[to].writable {
                return Flow::Wait;
            }
            let len = conn.sides[to].pending.len().min(cap);
            match sys::write_fd(dst, &conn.sides[to].pending[..len]) {
                Ok(n) => {
                    conn.sides[to].pending.drain(..n);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.sides[to].writable = false;
                    return Flow::Wait;
                }
                Err(_) => return Flow::End,
            }
        }
        if !conn.sides[from].readable {
            return Flow::Wait;
        }
        let n = match sys::read_fd(src, scratch) {
            Ok(0) => return Flow::End,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.sides[from].readable = false;
                return Flow::Wait;
            }
            Err(_) => return Flow::End,
        };
        let written = if conn.sides[to].writable {
            match sys::write_fd(dst, &scratch[..n.min(cap)]) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.sides[to].writable = false;
                    0
                }
                Err(_) => return Flow::End,
            }
        } else {
            0
        };
        if written < n {
            conn.sides[to]
                .pending
                .extend_from_slice(&scratch[written..n]);
        }
    }
}

/// The relay's state: the epoll set, the listener, the connections.
struct Relay {
    epoll: OwnedFd,
    listener: UnixListener,
    to: (u32, u32),
    vsock_max: usize,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
}

impl Relay {
    fn accept_all(&mut self) {
        loop {
            let client = match sys::accept_nonblocking(self.listener.as_raw_fd()) {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("vmbench relay: accept: {e}");
                    return;
                }
            };
            let upstream = match sys::vsock_connect_nonblocking(self.to.0, self.to.1) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!(
                        "vmbench relay: connect vsock {}:{}: {e}",
                        self.to.0, self.to.1
                    );
                    continue;
                }
            };
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            let token = |side: u64| slot as u64 * 2 + side;
            let added =
                sys::epoll_add(self.epoll.as_raw_fd(), client.as_raw_fd(), events, token(0))
                    .and_then(|()| {
                        sys::epoll_add(
                            self.epoll.as_raw_fd(),
                            upstream.as_raw_fd(),
                            events,
                            token(1),
                        )
                    });
            if let Err(e) = added {
                eprintln!("vmbench relay: epoll: {e}");
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                fds: [client, upstream],
                sides: Default::default(),
                connected: false,
            });
        }
    }

    fn event(&mut self, token: u64, events: u32) {
        let slot = usize::try_from(token / 2).unwrap_or(usize::MAX);
        let side = usize::from(token % 2 == 1);
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR) != 0 {
            conn.sides[side].readable = true;
        }
        if events & (EPOLLOUT | EPOLLHUP | EPOLLERR) != 0 {
            conn.sides[side].writable = true;
        }
        if !conn.connected {
            if !conn.sides[1].writable {
                return;
            }
            if sys::socket_error(conn.fds[1].as_raw_fd()).is_err() {
                self.close(slot);
                return;
            }
            conn.connected = true;
        }
        let ended = [0, 1].into_iter().any(|from| {
            matches!(
                flow(conn, from, &mut self.scratch, self.vsock_max),
                Flow::End
            )
        });
        if ended {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        // Closing a descriptor takes it out of the epoll set.
        if self.conns.get_mut(slot).and_then(Option::take).is_some() {
            self.free.push(slot);
        }
    }
}

/// Serves forever; writes to the target are at most `vsock_max` bytes each.
pub fn run(listen: &str, to: &Target, vsock_max: usize) -> Result<(), String> {
    let Target::Vsock(cid, port) = *to else {
        return Err("relay: the target must be vsock:CID:PORT".into());
    };
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let epoll = sys::epoll_create().map_err(|e| format!("epoll: {e}"))?;
    sys::epoll_add(
        epoll.as_raw_fd(),
        listener.as_raw_fd(),
        EPOLLIN | EPOLLET,
        LISTENER,
    )
    .map_err(|e| format!("epoll: {e}"))?;
    let mut relay = Relay {
        epoll,
        listener,
        to: (cid, port),
        vsock_max: vsock_max.max(1),
        conns: Vec::new(),
        free: Vec::new(),
        scratch: vec![0u8; BUF],
    };
    eprintln!("vmbench relay: {listen} -> vsock {cid}:{port}");
    let mut events = vec![EpollEvent::default(); 256];
    loop {
        let n = sys::epoll_wait_all(relay.epoll.as_raw_fd(), &mut events)
            .map_err(|e| format!("epoll_wait: {e}"))?;
        for ev in &events[..n] {
            let (token, flags) = (ev.token(), ev.events());
            if token == LISTENER {
                relay.accept_all();
            } else {
                relay.event(token, flags);
            }
        }
    }
}
