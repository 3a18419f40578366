//! What one control connection, and all of them together, may hold: streaming
//! calls open (`--max-streaming-calls`, `--max-streaming-calls-total`) and
//! requests read whose answers are not written yet (`--max-requests-in-flight`,
//! `--max-requests-in-flight-total`). ttrpc itself bounds neither: it spawns a
//! task for every request and stream it reads, and an answer the host does not
//! read waits in memory.
//!
//! [`Books`] are one connection's accounts (data and rules, no I/O), kept by
//! the [`gate`](crate::control::gate) that sits between the socket and ttrpc
//! (it sees every frame read and written) and by
//! [`cap_streams`](crate::control::capped::cap_streams), which wraps each
//! streaming method:
//! - a request frame read is in flight until its final frame (a response, or
//!   a data frame that closes the stream) is written; at either cap the gate
//!   reads no more from the connection until an answer leaves, so a host that
//!   never reads its answers holds at most the cap (a refusal would be one more
//!   answer it does not read);
//! - a streaming call, once its handler runs, is no longer in flight but open:
//!   beyond either cap it is answered at once with `RESOURCE_EXHAUSTED`;
//! - data frames pass only to an open call that reads them (Accept): any other
//!   (for a call that takes none, one that ended, one never opened) would cost
//!   a task and an error answer each, and is dropped.
//!
//! Refusals, pauses and dropped frames are counted in [`Totals`] and logged
//! through the agent's throttle.

use sockfwd_proto::log_throttle::LogThrottle;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// ttrpc frame types and flags (the wire contract's framing).
pub mod frame {
    /// Bytes of a frame header: length, stream ID (both u32 big-endian), type, flags.
    pub const HEADER_LEN: usize = 10;
    /// A request: opens a call.
    pub const REQUEST: u8 = 1;
    /// A response: ends a call.
    pub const RESPONSE: u8 = 2;
    /// Data of a streaming call.
    pub const DATA: u8 = 3;
    /// The sender's side of the stream is closed.
    pub const REMOTE_CLOSED: u8 = 0x1;
    /// The frame carries no payload.
    pub const NO_DATA: u8 = 0x4;
    /// Largest payload ttrpc accepts.
    pub const MAX_PAYLOAD: usize = 4 << 20;
}

/// The caps, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Streaming calls open on one connection.
    pub streaming: usize,
    /// Streaming calls open on all connections.
    pub streaming_total: usize,
    /// Requests in flight on one connection.
    pub in_flight: usize,
    /// Requests in flight on all connections.
    pub in_flight_total: usize,
}

/// The agent-wide side of the accounts, and what was refused.
#[derive(Debug, Default)]
pub struct Totals {
    shared: Mutex<Shared>,
    /// Streaming calls refused at a cap.
    pub refused_calls: AtomicU64,
    /// Times a connection's reading paused at an in-flight cap.
    pub pauses: AtomicU64,
    /// Data frames dropped (for no call that reads them).
    pub dropped_frames: AtomicU64,
    /// Accepted connections closed without a first request in time.
    pub silent_closed: AtomicU64,
    /// Connections closed at once at `--max-control-conns`.
    pub refused_conns: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    in_flight: usize,
    streaming: usize,
    /// Readers paused at the total in-flight cap.
    waiting: Vec<Waker>,
}

impl Totals {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Counts updated whole under the lock: still consistent after a panic.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests in flight and streaming calls open, on all connections.
    pub fn held(&self) -> (usize, usize) {
        let s = self.lock();
        (s.in_flight, s.streaming)
    }
}

/// Why a streaming call was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The connection's cap.
    #[error("{0} streaming calls are open on this control connection (--max-streaming-calls)")]
    Connection(usize),
    /// The agent-wide cap.
    #[error(
        "{0} streaming calls are open on all control connections (--max-streaming-calls-total)"
    )]
    Total(usize),
}

/// What the gate does with a frame it has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to ttrpc.
    Pass,
    /// Read past it.
    Drop,
    /// Read nothing more until an answer leaves (the waker is kept).
    Pause,
}

/// One connection's accounts; see the module docs.
#[derive(Debug)]
pub struct Books {
    caps: Caps,
    totals: Arc<Totals>,
    throttle: LogThrottle,
    /// The connection's ID, for the log.
    id: u64,
    conn: Mutex<Conn>,
    /// Cancelled by the first request frame.
    first_request: CancellationToken,
}

#[derive(Debug, Default)]
struct Conn {
    /// Stream IDs of requests read whose final frame is not written yet.
    in_flight: HashSet<u32>,
    /// Open streaming calls, and whether each reads data frames.
    streaming: HashMap<u32, bool>,
    /// The gate's reader, paused at a cap.
    reader: Option<Waker>,
    /// Reading is paused (counted once per pause).
    paused: bool,
    closed: bool,
}

impl Books {
    /// Fresh accounts for connection `id` under `caps`, sharing `totals`,
    /// logging through `throttle`.
    pub fn new(caps: Caps, totals: Arc<Totals>, throttle: LogThrottle, id: u64) -> Arc<Books> {
        Arc::new(Books {
            caps,
            totals,
            throttle,
            id,
            conn: Mutex::new(Conn::default()),
            first_request: CancellationToken::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancelled once the connection has sent a request frame.
    pub fn first_request(&self) -> &CancellationToken {
        &self.first_request
    }

    /// The connection's ID.
    pub fn conn(&self) -> u64 {
        self.id
    }

    /// The agent-wide accounts.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The throttle its log lines go through.
    pub fn throttle(&self) -> &LogThrottle {
        &self.throttle
    }

    /// The gate read the header of a frame: `kind`, `flags`, stream `id`,
    /// payload `len`. Pausing keeps `waker` to be woken when an answer leaves.
    pub fn on_read(&self, kind: u8, id: u32, len: usize, waker: &Waker) -> Verdict {
        let mut conn = self.lock();
        if conn.closed {
            return Verdict::Drop;
        }
        match kind {
            // An ID still in use: ttrpc would run the call again and answer
            // twice, uncounted. Dropped, like any stray frame.
            frame::REQUEST
                if !conn.in_flight.contains(&id) && !conn.streaming.contains_key(&id) =>
            {
                let mut shared = self.totals.lock();
                let full_here = conn.in_flight.len() >= self.caps.in_flight;
                let full_all = shared.in_flight >= self.caps.in_flight_total;
                if full_here || full_all {
                    conn.reader = Some(waker.clone());
                    if full_all && !shared.waiting.iter().any(|w| w.will_wake(waker)) {
                        shared.waiting.push(waker.clone());
                    }
                    if !conn.paused {
                        conn.paused = true;
                        let total = self.totals.pauses.fetch_add(1, Ordering::Relaxed) + 1;
                        if let Some(pass) = self.throttle.allow("control reading paused") {
                            let (here, all) = (conn.in_flight.len(), shared.in_flight);
                            tracing::warn!(
                                conn = self.id,
                                in_flight = here,
                                in_flight_total = all,
                                pauses_total = total,
                                suppressed = pass.suppressed,
                                "requests in flight at the cap (--max-requests-in-flight{}); \
                                 not reading the control connection until answers leave",
                                if full_here { "" } else { "-total" }
                            );
                        }
                    }
                    return Verdict::Pause;
                }
                conn.paused = false;
                conn.in_flight.insert(id);
                shared.in_flight += 1;
                self.first_request.cancel();
                Verdict::Pass
            }
            frame::DATA if len <= frame::MAX_PAYLOAD && conn.streaming.get(&id) == Some(&true) => {
                Verdict::Pass
            }
            _ => {
                let total = self.totals.dropped_frames.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(pass) = self.throttle.allow("control frame dropped") {
                    tracing::warn!(
                        conn = self.id,
                        kind,
                        stream = id,
                        len,
                        dropped_total = total,
                        suppressed = pass.suppressed,
                        "frame for no call that takes it (or a request on an ID in use); dropped"
                    );
                }
                Verdict::Drop
            }
        }
    }

    /// The gate wrote the last byte of the final frame of call `id`.
    pub fn on_answered(&self, id: u32) {
        let mut conn = self.lock();
        if conn.in_flight.remove(&id) {
            let mut shared = self.totals.lock();
            shared.in_flight -= 1;
            wake(&mut conn, &mut shared);
        }
    }

    /// A streaming call's handler starts: it is open, no longer in flight;
    /// refused beyond a cap. `reads_data`: data frames are passed to it.
    pub fn open_streaming(
        self: &Arc<Self>,
        id: u32,
        reads_data: bool,
    ) -> Result<Streaming, Exhausted> {
        let mut conn = self.lock();
        let mut shared = self.totals.lock();
        if conn.streaming.len() >= self.caps.streaming {
            return Err(Exhausted::Connection(self.caps.streaming));
        }
        if shared.streaming >= self.caps.streaming_total {
            return Err(Exhausted::Total(self.caps.streaming_total));
        }
        if !conn.closed {
            conn.streaming.insert(id, reads_data);
            shared.streaming += 1;
            if conn.in_flight.remove(&id) {
                shared.in_flight -= 1;
                wake(&mut conn, &mut shared);
            }
        }
        Ok(Streaming {
            books: Arc::clone(self),
            id,
        })
    }

    /// The connection ended: what it held is given back to the totals.
    pub fn close(&self) {
        let mut conn = self.lock();
        if conn.closed {
            return;
        }
        conn.closed = true;
        let mut shared = self.totals.lock();
        shared.in_flight -= conn.in_flight.len();
        shared.streaming -= conn.streaming.len();
        conn.in_flight = HashSet::new();
        conn.streaming = HashMap::new();
        wake(&mut conn, &mut shared);
    }
}

impl Drop for Books {
    fn drop(&mut self) {
        self.close();
    }
}

/// Wakes the connection's paused reader and every reader paused at the total.
fn wake(conn: &mut Conn, shared: &mut Shared) {
    if let Some(w) = conn.reader.take() {
        w.wake();
    }
    for w in shared.waiting.drain(..) {
        w.wake();
    }
}

/// An open streaming call; dropped when its handler returns, and its final
/// frame is in flight from then on.
#[derive(Debug)]
pub struct Streaming {
    books: Arc<Books>,
    id: u32,
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let mut conn = self.books.lock();
        if conn.closed || conn.streaming.remove(&self.id).is_none() {
            return;
        }
        let mut shared = self.books.totals.lock();
        shared.streaming -= 1;
        if conn.in_flight.insert(self.id) {
            shared.in_flight += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn waker() -> (Waker, Arc<Flag>) {
        let flag = Arc::new(Flag(false.into()));
        (Waker::from(flag.clone()), flag)
    }

    const CAPS: Caps = Caps {
        streaming: 2,
        streaming_total: 3,
        in_flight: 2,
        in_flight_total: 3,
    };

    #[test]
    fn requests_in_flight_pause_reading_until_an_answer_leaves() {
        let totals = Arc::new(Totals::default());
        let books = || Books::new(CAPS, totals.clone(), LogThrottle::per_second(), 1);
        let (a, b) = (books(), books());
        let (w, woken) = waker();
        assert!(!a.first_request().is_cancelled());
        assert_eq!(a.on_read(frame::REQUEST, 1, 0, &w), Verdict::Pass);
        assert!(a.first_request().is_cancelled());
        assert_eq!(a.on_read(frame::REQUEST, 3, 0, &w), Verdict::Pass);
        assert_eq!(
            a.on_read(frame::REQUEST, 5, 0, &w),
            Verdict::Pause,
            "per connection"
        );
        assert_eq!(b.on_read(frame::REQUEST, 1, 0, &w), Verdict::Pass);
        assert_eq!(
            b.on_read(frame::REQUEST, 3, 0, &w),
            Verdict::Pause,
            "in total"
        );
        assert_eq!(totals.held(), (3, 0));
        // A request on an ID in flight is not run twice.
        assert_eq!(a.on_read(frame::REQUEST, 3, 0, &w), Verdict::Drop);
        a.on_answered(1);
        assert!(woken.0.load(Ordering::SeqCst));
        assert_eq!(b.on_read(frame::REQUEST, 3, 0, &w), Verdict::Pass);
        assert_eq!(totals.held(), (3, 0));
        // An answer for a call not in flight changes nothing.
        a.on_answered(99);
        b.close();
        assert_eq!(totals.held(), (1, 0), "a closed connection gives all back");
        assert_eq!(b.on_read(frame::REQUEST, 9, 0, &w), Verdict::Drop);
        assert!(totals.pauses.load(Ordering::Relaxed) >= 2);
    }

    #[test]
    fn streaming_calls_are_capped_and_only_readers_get_data() {
        let totals = Arc::new(Totals::default());
        let books = || Books::new(CAPS, totals.clone(), LogThrottle::per_second(), 1);
        let (a, b) = (books(), books());
        let (w, _) = waker();
        for id in [1, 3, 5] {
            assert_eq!(a.on_read(frame::REQUEST, id, 0, &w), Verdict::Pass);
            a.on_answered(id); // keep the in-flight cap out of the way
        }
        let accept = a.open_streaming(1, true).unwrap();
        let watch = a.open_streaming(3, false).unwrap();
        assert_eq!(
            a.open_streaming(5, true).unwrap_err(),
            Exhausted::Connection(2)
        );
        let other = b.open_streaming(1, true).unwrap();
        assert_eq!(b.open_streaming(3, true).unwrap_err(), Exhausted::Total(3));
        assert_eq!(totals.held().1, 3);
        assert_eq!(a.on_read(frame::DATA, 1, 10, &w), Verdict::Pass);
        assert_eq!(
            a.on_read(frame::DATA, 3, 10, &w),
            Verdict::Drop,
            "WatchPorts reads none"
        );
        assert_eq!(
            a.on_read(frame::DATA, 7, 10, &w),
            Verdict::Drop,
            "no such call"
        );
        assert_eq!(
            a.on_read(frame::DATA, 1, 5 << 20, &w),
            Verdict::Drop,
            "oversize"
        );
        assert_eq!(a.on_read(frame::RESPONSE, 1, 0, &w), Verdict::Drop);
        assert_eq!(totals.dropped_frames.load(Ordering::Relaxed), 4);
        // An ended call's final frame is in flight until written.
        drop(accept);
        assert_eq!(totals.held(), (1, 2));
        assert_eq!(a.on_read(frame::DATA, 1, 10, &w), Verdict::Drop);
        a.on_answered(1);
        assert_eq!(totals.held(), (0, 2));
        a.close();
        assert_eq!(totals.held(), (0, 1), "a closed connection gives all back");
        drop(watch);
        assert_eq!(totals.held(), (0, 1));
        drop(other);
        assert_eq!(totals.held(), (1, 0));
    }
}
