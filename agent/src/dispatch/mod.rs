//! Routing of connection requests to Accept streams (fixes the reference's
//! misrouting, where whichever Accept stream read first took the request).
//!
//! [`Router`] is a state machine with no I/O of its own: each open Accept stream
//! is an unbounded channel of `ConnectRequest`s (drained by its ttrpc handler),
//! and each waiting client connection receives [`Event`]s on its own channel.
//! Timers live in the client's task, which reports a missed result with
//! [`Router::result_timeout`]. [`Dispatcher`] is the shared, locked handle.
//!
//! Rules:
//! - a forward's requests go to the Accept streams of the control connection that
//!   owns it (the last that bound it), round-robin; a forward without an owner
//!   (bound from boot configuration) may use any Accept stream;
//! - with no such stream open, the request waits and is sent as soon as one
//!   opens or ownership moves to a connection that has one;
//! - routing is learned per stream and forward, while the stream is open (a
//!   nerdbox host opens one Accept stream per container on one connection, each
//!   knowing only its container's forwards): a stream that answered
//!   `unknown forward ID` for a forward is not offered that forward again; one
//!   that answered anything else serves it, and streams that serve a forward
//!   are preferred for it. A stream not known either way gets one request of
//!   the forward at a time (a probe); others of that forward wait for the
//!   answer rather than being misrouted too. So each stream costs a forward at
//!   most one misroute. A Bind of the forward forgets the refusals (the host
//!   may know it now), an Unbind all it learned of it;
//! - an `unknown forward ID` answer or a missed result moves the request to an
//!   untried stream of the same connection, then of any other; with none left
//!   (none that has not refused the forward, or is not answering a probe for
//!   it) the client connection is closed;
//! - when a stream or its connection ends, its requests in flight go back to
//!   waiting (a restarted relay answers them);
//! - a success from any stream the request was offered to completes it; results
//!   for unknown stream IDs, or stale errors, are ignored.
//!
//! The count of waiting requests is bounded (`--max-pending`); the wait itself is
//! bounded by the client's task (`--pending-timeout`).

use sockfwd_proto::log_text::escape;
use sockfwd_proto::rpc::{ConnectRequest, ConnectResult};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;

mod route;

/// Identifies one control connection for the agent's lifetime.
pub type ConnId = u64;
/// Identifies one Accept stream for the agent's lifetime.
pub type AcceptId = u64;

/// The prefix of the host's answer for a forward it does not know.
pub const UNKNOWN_FORWARD: &str = "unknown forward ID";

/// What a waiting client connection hears about its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Sent on an Accept stream: the result timer (re)starts for `attempt`.
    Offered {
        /// Which sending this is; echo it to [`Router::result_timeout`].
        attempt: u32,
    },
    /// The host opened the stream: claim it and relay with this framing.
    Ready {
        /// `ConnectResult.framing` as sent.
        framing: u32,
    },
    /// The request failed: the host's error text, or why it was given up.
    Refused(String),
}

/// Why a request was not taken.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SubmitError {
    /// `--max-pending` requests already wait.
    #[error("{0} connections already wait for the host (--max-pending)")]
    Full(usize),
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    Closed,
    /// The stream ID is already pending (a generator collision).
    #[error("stream ID is already pending")]
    Duplicate,
}

struct Pending {
    seq: u64,
    request: ConnectRequest,
    events: UnboundedSender<Event>,
    /// Streams offered this request, in order.
    tried: Vec<AcceptId>,
    /// The stream it is in flight on; `None` while waiting.
    at: Option<AcceptId>,
    attempt: u32,
    last_error: Option<String>,
}

struct AcceptStream {
    conn: ConnId,
    requests: UnboundedSender<ConnectRequest>,
    /// Results it missed since it last answered: a stream left open by a host
    /// that no longer serves it is chosen last.
    silent: u32,
    /// Forwards it answered for other than `unknown forward ID`.
    serves: HashSet<String>,
    /// Forwards it answered `unknown forward ID` for: not offered again.
    refuses: HashSet<String>,
    /// Forwards it is neither known to serve nor refuse, with the stream ID of
    /// the one request of each it is answering (the probe).
    probing: HashMap<String, String>,
}

impl AcceptStream {
    fn new(conn: ConnId, requests: UnboundedSender<ConnectRequest>) -> AcceptStream {
        AcceptStream {
            conn,
            requests,
            silent: 0,
            serves: HashSet::new(),
            refuses: HashSet::new(),
            probing: HashMap::new(),
        }
    }

    /// Whether a request of `forward` may be offered to it now.
    fn may_take(&self, forward: &str) -> bool {
        !self.refuses.contains(forward)
            && (self.serves.contains(forward) || !self.probing.contains_key(forward))
    }

    /// Learns from an answer for `forward`: `true` for `unknown forward ID`.
    fn learn(&mut self, forward: &str, unknown: bool) {
        let (add, remove) = if unknown {
            (&mut self.refuses, &mut self.serves)
        } else {
            (&mut self.serves, &mut self.refuses)
        };
        remove.remove(forward);
        if !add.contains(forward) {
            add.insert(forward.to_owned());
        }
    }
}

#[derive(Default)]
struct Conn {
    /// Its open Accept streams, oldest first.
    streams: Vec<AcceptId>,
    next: usize,
}

/// The routing state; see the module docs.
pub struct Router {
    conns: HashMap<ConnId, Conn>,
    streams: HashMap<AcceptId, AcceptStream>,
    owners: HashMap<String, ConnId>,
    pending: HashMap<String, Pending>,
    next_any: usize,
    next_accept: AcceptId,
    next_seq: u64,
    max_pending: usize,
    closed: bool,
}

impl Router {
    /// An empty router admitting at most `max_pending` waiting requests.
    pub fn new(max_pending: usize) -> Self {
        Router {
            conns: HashMap::new(),
            streams: HashMap::new(),
            owners: HashMap::new(),
            pending: HashMap::new(),
            next_any: 0,
            next_accept: 0,
            next_seq: 0,
            max_pending,
            closed: false,
        }
    }

    /// A control connection opened.
    pub fn open_conn(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_default();
    }

    /// A control connection ended: its Accept streams end with it. The forwards
    /// it owns keep their owner, so their requests wait for it to bind again.
    pub fn close_conn(&mut self, conn: ConnId) {
        let streams = self.conns.remove(&conn).map(|c| c.streams);
        self.drop_streams(&streams.unwrap_or_default());
    }

    /// An Accept stream opened on `conn`; waiting requests it may serve are sent.
    pub fn open_stream(
        &mut self,
        conn: ConnId,
        requests: UnboundedSender<ConnectRequest>,
    ) -> AcceptId {
        self.next_accept += 1;
        let id = self.next_accept;
        self.conns.entry(conn).or_default().streams.push(id);
        self.streams.insert(id, AcceptStream::new(conn, requests));
        self.route_waiting(|_| true);
        id
    }

    /// An Accept stream ended; its requests in flight go back to waiting.
    pub fn close_stream(&mut self, stream: AcceptId) {
        self.drop_streams(&[stream]);
    }

    /// Forgets `gone` (all at once, so none of them is chosen again) and
    /// reroutes the requests that were in flight on them.
    fn drop_streams(&mut self, gone: &[AcceptId]) {
        for id in gone {
            if let Some(s) = self.streams.remove(id) {
                if let Some(c) = self.conns.get_mut(&s.conn) {
                    c.streams.retain(|x| x != id);
                }
            }
        }
        for p in self.pending.values_mut() {
            if p.at.is_some_and(|at| gone.contains(&at)) {
                p.at = None;
            }
        }
        self.route_waiting(|_| true);
    }

    /// `forward_id` was bound by `owner` (`None`: boot configuration). The
    /// refusals learned for it are forgotten: the host may know it now.
    pub fn set_owner(&mut self, forward_id: &str, owner: Option<ConnId>) {
        match owner {
            Some(c) => self.owners.insert(forward_id.to_owned(), c),
            None => self.owners.remove(forward_id),
        };
        for s in self.streams.values_mut() {
            s.refuses.remove(forward_id);
        }
        self.route_waiting(|p| p.request.forward_id == forward_id);
    }

    /// `forward_id` was unbound: its owner and all that was learned of it go.
    pub fn forget_forward(&mut self, forward_id: &str) {
        self.owners.remove(forward_id);
        for s in self.streams.values_mut() {
            s.refuses.remove(forward_id);
            s.serves.remove(forward_id);
        }
    }

    /// The control connection that owns `forward_id` (`None`: unbound, or
    /// bound from the boot configuration and by no host since): the one whose
    /// pre-opened streams its clients may take (`remote::pooled`), as its
    /// requests go to that connection's Accept streams only.
    pub fn owner(&self, forward_id: &str) -> Option<ConnId> {
        self.owners.get(forward_id).copied()
    }

    /// Takes a new request; it is sent at once if a suitable stream is open.
    pub fn submit(
        &mut self,
        request: ConnectRequest,
        events: UnboundedSender<Event>,
    ) -> Result<(), SubmitError> {
        if self.closed {
            return Err(SubmitError::Closed);
        }
        if self.pending.len() >= self.max_pending {
            return Err(SubmitError::Full(self.max_pending));
        }
        if self.pending.contains_key(&request.stream_id) {
            return Err(SubmitError::Duplicate);
        }
        self.next_seq += 1;
        let id = request.stream_id.clone();
        self.pending.insert(
            id.clone(),
            Pending {
                seq: self.next_seq,
                request,
                events,
                tried: Vec::new(),
                at: None,
                attempt: 0,
                last_error: None,
            },
        );
        self.route_first(&id);
        Ok(())
    }

    /// The client connection gave up (deadline, shutdown): forget the request.
    pub fn cancel(&mut self, stream_id: &str) {
        if let Some(p) = self.pending.remove(stream_id) {
            if let Some(at) = p.at {
                self.end_probe(at, &p.request.forward_id, stream_id);
            }
        }
    }

    /// A `ConnectResult` arrived on `stream`.
    pub fn on_result(&mut self, stream: AcceptId, result: ConnectResult) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.silent = 0;
        }
        let id = result.stream_id.as_str();
        let Some(p) = self.pending.get_mut(id) else {
            tracing::debug!(stream_id = %escape(id), "result for a stream nobody waits for; ignored");
            return;
        };
        if !p.tried.contains(&stream) {
            tracing::debug!(stream_id = %escape(id), "result from an Accept stream never asked; ignored");
            return;
        }
        let forward = p.request.forward_id.clone();
        let unknown = result.error.starts_with(UNKNOWN_FORWARD);
        // Late or not, the answer says whether the stream knows the forward.
        if let Some(s) = self.streams.get_mut(&stream) {
            s.learn(&forward, unknown);
        }
        let probed = self.end_probe(stream, &forward, id);
        let Some(p) = self.pending.get_mut(id) else {
            return;
        };
        if result.error.is_empty() {
            self.finish(
                id,
                Event::Ready {
                    framing: result.framing,
                },
            );
        } else if p.at != Some(stream) {
            tracing::debug!(stream_id = %escape(id), cause = %escape(&result.error), "stale error result; ignored");
        } else if unknown {
            p.last_error = Some(result.error);
            p.at = None;
            let conn = self.streams.get(&stream).map(|s| s.conn);
            self.route_fallback(&result.stream_id, conn);
        } else {
            self.finish(id, Event::Refused(result.error));
        }
        if probed {
            // Requests of the forward that waited for this answer go on.
            self.route_waiting(|p| p.request.forward_id == forward);
        }
    }

    /// The client connection's result timer for `attempt` ran out.
    pub fn result_timeout(&mut self, stream_id: &str, attempt: u32) {
        let Some(p) = self.pending.get_mut(stream_id) else {
            return;
        };
        let Some(at) = p.at.filter(|_| p.attempt == attempt) else {
            return;
        };
        p.last_error = Some("no result from the host in time".to_owned());
        p.at = None;
        let forward = p.request.forward_id.clone();
        let conn = self.streams.get_mut(&at).map(|s| {
            s.silent = s.silent.saturating_add(1);
            s.conn
        });
        let probed = self.end_probe(at, &forward, stream_id);
        self.route_fallback(stream_id, conn);
        if probed {
            self.route_waiting(|p| p.request.forward_id == forward);
        }
    }

    /// Refuses every waiting request and any new one (shutdown).
    pub fn close(&mut self, reason: &str) {
        self.closed = true;
        for (_, p) in self.pending.drain() {
            let _ = p.events.send(Event::Refused(reason.to_owned()));
        }
    }

    /// Requests currently pending (waiting or in flight).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// The shared router.
pub struct Dispatcher {
    router: Mutex<Router>,
}

impl Dispatcher {
    /// A dispatcher admitting at most `max_pending` waiting requests.
    pub fn new(max_pending: usize) -> Self {
        Dispatcher {
            router: Mutex::new(Router::new(max_pending)),
        }
    }

    /// Locks the router; every method on it is short and does no I/O but
    /// channel sends.
    pub fn lock(&self) -> MutexGuard<'_, Router> {
        // Each router method leaves the maps consistent between statements that
        // can panic, so a poisoned lock is still usable.
        self.router.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    struct Guest {
        events: UnboundedReceiver<Event>,
    }

    impl Guest {
        fn next(&mut self) -> Option<Event> {
            self.events.try_recv().ok()
        }
    }

    fn request(r: &mut Router, id: &str, forward: &str) -> Guest {
        let (tx, rx) = unbounded_channel();
        r.submit(
            ConnectRequest {
                stream_id: id.into(),
                forward_id: forward.into(),
                ..Default::default()
            },
            tx,
        )
        .unwrap();
        Guest { events: rx }
    }

    fn stream(r: &mut Router, conn: ConnId) -> (AcceptId, UnboundedReceiver<ConnectRequest>) {
        r.open_conn(conn);
        let (tx, rx) = unbounded_channel();
        (r.open_stream(conn, tx), rx)
    }

    fn sent(rx: &mut UnboundedReceiver<ConnectRequest>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.stream_id)
            .collect()
    }

    fn result(id: &str, error: &str) -> ConnectResult {
        ConnectResult {
            stream_id: id.into(),
            error: error.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_request_waits_for_a_stream_then_is_sent() {
        let mut r = Router::new(10);
        let mut g = request(&mut r, "s1", "f");
        assert_eq!(g.next(), None);
        let (a, mut rx) = stream(&mut r, 1);
        assert_eq!(sent(&mut rx), ["s1"]);
        assert_eq!(g.next(), Some(Event::Offered { attempt: 1 }));
        r.on_result(
            a,
            ConnectResult {
                framing: 1,
                ..result("s1", "")
            },
        );
        assert_eq!(g.next(), Some(Event::Ready { framing: 1 }));
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn owned_forwards_go_only_to_their_connection_round_robin() {
        let mut r = Router::new(20);
        let (a1, mut rx_a1) = stream(&mut r, 1);
        let (a2, mut rx_a2) = stream(&mut r, 1);
        let (b, mut rx_b) = stream(&mut r, 2);
        r.set_owner("fa", Some(1));
        r.set_owner("fb", Some(2));
        // One probe of each forward per stream; the rest wait for the answers.
        for i in 0..4 {
            request(&mut r, &format!("a{i}"), "fa");
            request(&mut r, &format!("b{i}"), "fb");
        }
        assert_eq!(sent(&mut rx_a1), ["a0"]);
        assert_eq!(sent(&mut rx_a2), ["a1"]);
        assert_eq!(sent(&mut rx_b), ["b0"]);
        r.on_result(a1, result("a0", ""));
        r.on_result(a2, result("a1", ""));
        r.on_result(b, result("b0", ""));
        assert_eq!(sent(&mut rx_b), ["b1", "b2", "b3"]);
        // Both of connection 1's streams serve fa now: round-robin.
        let (x, y) = (sent(&mut rx_a1), sent(&mut rx_a2));
        assert_eq!(x.len() + y.len(), 2, "{x:?} {y:?}");
        for i in 4..8 {
            request(&mut r, &format!("a{i}"), "fa");
        }
        let (x, y) = (sent(&mut rx_a1), sent(&mut rx_a2));
        assert_eq!((x.len(), y.len()), (2, 2), "round-robin: {x:?} {y:?}");
        assert!(x.iter().chain(&y).all(|id| id.starts_with('a')));
    }

    /// A host with streams that each know only some forwards, as nerdbox's
    /// (one Accept stream per container): answers what each stream was sent,
    /// until nothing is left, counting `unknown forward ID` answers.
    fn serve_all(
        r: &mut Router,
        streams: &mut [(AcceptId, UnboundedReceiver<ConnectRequest>, &str)],
        misroutes: &mut HashMap<(AcceptId, String), u32>,
    ) {
        loop {
            let mut answered = false;
            for (id, rx, knows) in streams.iter_mut() {
                while let Ok(req) = rx.try_recv() {
                    answered = true;
                    if req.forward_id == *knows {
                        r.on_result(*id, result(&req.stream_id, ""));
                    } else {
                        *misroutes.entry((*id, req.forward_id.clone())).or_default() += 1;
                        let text = format!("{UNKNOWN_FORWARD}: {}", req.forward_id);
                        r.on_result(*id, result(&req.stream_id, &text));
                    }
                }
            }
            if !answered {
                return;
            }
        }
    }

    #[test]
    fn nerdbox_streams_on_one_connection_misroute_each_forward_at_most_once() {
        let mut r = Router::new(1000);
        let (a, rx_a) = stream(&mut r, 1);
        let (b, rx_b) = stream(&mut r, 1);
        let (c, rx_c) = stream(&mut r, 1);
        for f in ["f1", "f2", "f3"] {
            r.set_owner(f, Some(1));
        }
        let mut host = [(a, rx_a, "f1"), (b, rx_b, "f2"), (c, rx_c, "f3")];
        let mut misroutes = HashMap::new();
        let mut guests = Vec::new();
        // Bursts: many requests of each forward before any answer, then more.
        for round in 0..3 {
            for i in 0..50 {
                for f in ["f1", "f2", "f3"] {
                    guests.push(request(&mut r, &format!("{f}-{round}-{i}"), f));
                }
            }
            serve_all(&mut r, &mut host, &mut misroutes);
        }
        for g in &mut guests {
            let last = std::iter::from_fn(|| g.next()).last();
            assert_eq!(last, Some(Event::Ready { framing: 0 }));
        }
        assert_eq!(r.pending_len(), 0);
        assert!(
            misroutes.values().all(|&n| n == 1),
            "at most one misroute per forward and stream: {misroutes:?}"
        );
        // Each forward was offered to each stream that does not know it at most once.
        assert!(misroutes.len() <= 6, "{misroutes:?}");
    }

    #[test]
    fn a_probe_holds_back_the_forward_and_a_bind_forgets_refusals() {
        let mut r = Router::new(10);
        let (a, mut rx_a) = stream(&mut r, 1);
        r.set_owner("f", Some(1));
        let mut g1 = request(&mut r, "1", "f");
        let mut g2 = request(&mut r, "2", "f");
        assert_eq!(sent(&mut rx_a), ["1"], "one probe at a time");
        r.on_result(a, result("1", "unknown forward ID: f"));
        // The only stream refused f: both end at once, without another offer.
        assert!(sent(&mut rx_a).is_empty());
        let last = |g: &mut Guest| std::iter::from_fn(|| g.next()).last();
        assert!(matches!(last(&mut g1), Some(Event::Refused(_))));
        assert_eq!(
            last(&mut g2),
            Some(Event::Refused(
                "unknown forward ID: every Accept stream that may serve it answered so".into()
            ))
        );
        // Still refused while the stream stays open...
        let mut g3 = request(&mut r, "3", "f");
        assert!(matches!(g3.next(), Some(Event::Refused(_))));
        assert!(sent(&mut rx_a).is_empty());
        // ...until the host binds f again: it may know it now.
        r.set_owner("f", Some(1));
        let _g4 = request(&mut r, "4", "f");
        assert_eq!(sent(&mut rx_a), ["4"]);
        // A new stream knows nothing yet of f.
        r.forget_forward("f");
        let (_b, mut rx_b) = stream(&mut r, 2);
        let _g5 = request(&mut r, "5", "f");
        assert_eq!(sent(&mut rx_b), ["5"], "unowned after Unbind: any stream");
    }

    #[test]
    fn an_owner_without_streams_makes_requests_wait_until_ownership_moves() {
        let mut r = Router::new(10);
        r.open_conn(1);
        r.set_owner("f", Some(1));
        let (_b, mut rx_b) = stream(&mut r, 2);
        let mut g = request(&mut r, "s", "f");
        assert!(sent(&mut rx_b).is_empty(), "not the owner's stream");
        assert_eq!(g.next(), None);
        r.set_owner("f", Some(2));
        assert_eq!(sent(&mut rx_b), ["s"]);
    }

    #[test]
    fn unknown_forward_tries_same_connection_then_others_then_fails() {
        let mut r = Router::new(10);
        let (a1, mut rx_a1) = stream(&mut r, 1);
        let (a2, mut rx_a2) = stream(&mut r, 1);
        let (b, mut rx_b) = stream(&mut r, 2);
        r.set_owner("f", Some(1));
        let mut g = request(&mut r, "s", "f");
        let (first, second) = if sent(&mut rx_a1).is_empty() {
            (a2, a1)
        } else {
            (a1, a2)
        };
        r.on_result(first, result("s", "unknown forward ID: f"));
        let again = if second == a1 {
            sent(&mut rx_a1)
        } else {
            sent(&mut rx_a2)
        };
        assert_eq!(again, ["s"], "same connection first");
        r.on_result(second, result("s", "unknown forward ID: f"));
        assert_eq!(sent(&mut rx_b), ["s"], "then the other connection");
        r.on_result(b, result("s", "unknown forward ID: f"));
        let events: Vec<Event> = std::iter::from_fn(|| g.next()).collect();
        assert_eq!(
            events.last(),
            Some(&Event::Refused("unknown forward ID: f".into()))
        );
        assert_eq!(r.pending_len(), 0);
    }

    #[test]
    fn other_errors_fail_at_once() {
        let mut r = Router::new(10);
        let (a, _rx) = stream(&mut r, 1);
        let (b, mut rx_b) = stream(&mut r, 2);
        let mut g = request(&mut r, "s", "f");
        let _ = g.next();
        // Unowned: round-robin picked a (the first stream) or b.
        let at = if sent(&mut rx_b).is_empty() { a } else { b };
        r.on_result(at, result("s", "failed to dial host socket"));
        assert_eq!(
            g.next(),
            Some(Event::Refused("failed to dial host socket".into()))
        );
    }

    #[test]
    fn a_missed_result_moves_the_request_once_then_fails() {
        let mut r = Router::new(10);
        let (_a, mut rx_a) = stream(&mut r, 1);
        let (_b, mut rx_b) = stream(&mut r, 2);
        r.set_owner("f", Some(1));
        let mut g = request(&mut r, "s", "f");
        assert_eq!(sent(&mut rx_a), ["s"]);
        assert_eq!(g.next(), Some(Event::Offered { attempt: 1 }));
        // A stale timer for another attempt does nothing.
        r.result_timeout("s", 7);
        assert!(sent(&mut rx_b).is_empty());
        r.result_timeout("s", 1);
        assert_eq!(sent(&mut rx_b), ["s"]);
        assert_eq!(g.next(), Some(Event::Offered { attempt: 2 }));
        r.result_timeout("s", 2);
        assert!(matches!(g.next(), Some(Event::Refused(_))));
    }

    #[test]
    fn a_late_success_from_an_earlier_stream_still_completes() {
        let mut r = Router::new(10);
        let (a, _rx_a) = stream(&mut r, 1);
        let (_b, _rx_b) = stream(&mut r, 1);
        r.set_owner("f", Some(1));
        let mut g = request(&mut r, "s", "f");
        r.result_timeout("s", 1);
        let _ = std::iter::from_fn(|| g.next()).count();
        // a may have been first or second; whichever it was, it was offered.
        r.on_result(a, result("s", ""));
        assert_eq!(g.next(), Some(Event::Ready { framing: 0 }));
    }

    #[test]
    fn in_flight_requests_return_to_waiting_when_their_stream_ends() {
        let mut r = Router::new(10);
        let (a, mut rx_a) = stream(&mut r, 1);
        r.set_owner("f", Some(1));
        let mut g = request(&mut r, "s", "f");
        assert_eq!(sent(&mut rx_a), ["s"]);
        r.close_conn(1);
        // The relay restarts: a new connection binds again and opens Accept.
        let (b, mut rx_b) = stream(&mut r, 2);
        assert!(
            sent(&mut rx_b).is_empty(),
            "still owned by the old connection"
        );
        r.set_owner("f", Some(2));
        assert_eq!(sent(&mut rx_b), ["s"]);
        r.on_result(a, result("s", "")); // the dead stream: never mind
        r.on_result(b, result("s", ""));
        let events: Vec<Event> = std::iter::from_fn(|| g.next()).collect();
        assert_eq!(events.last(), Some(&Event::Ready { framing: 0 }));
    }

    #[test]
    fn results_nobody_waits_for_are_ignored() {
        let mut r = Router::new(10);
        let (a, _rx) = stream(&mut r, 1);
        r.on_result(a, result("nobody", ""));
        let (b, _rx_b) = stream(&mut r, 2);
        r.set_owner("f", Some(1));
        let mut g = request(&mut r, "s", "f");
        let _ = g.next();
        // b was never offered "s": its answer does not count.
        r.on_result(b, result("s", ""));
        assert_eq!(g.next(), None);
        assert_eq!(r.pending_len(), 1);
    }

    #[test]
    fn the_pending_bound_and_close_refuse() {
        let mut r = Router::new(2);
        let mut g1 = request(&mut r, "1", "f");
        let _g2 = request(&mut r, "2", "f");
        let (tx, _rx) = unbounded_channel();
        let req = ConnectRequest {
            stream_id: "3".into(),
            ..Default::default()
        };
        assert_eq!(r.submit(req.clone(), tx.clone()), Err(SubmitError::Full(2)));
        r.cancel("2");
        r.close("shutting down");
        assert_eq!(g1.next(), Some(Event::Refused("shutting down".into())));
        assert_eq!(r.submit(req, tx), Err(SubmitError::Closed));
    }

    #[test]
    fn a_stream_that_stopped_answering_is_chosen_last() {
        let mut r = Router::new(100);
        let (dead, mut rx_dead) = stream(&mut r, 1);
        let (live, mut rx_live) = stream(&mut r, 1);
        r.set_owner("f", Some(1));
        // Both serve f (each answered once)...
        request(&mut r, "p1", "f");
        request(&mut r, "p2", "f");
        r.on_result(dead, result(&sent(&mut rx_dead)[0], ""));
        r.on_result(live, result(&sent(&mut rx_live)[0], ""));
        // ...then whichever request lands on the dead stream times out there once.
        let _g = request(&mut r, "first", "f");
        if sent(&mut rx_dead) == ["first"] {
            r.result_timeout("first", 1);
        } else {
            let _g2 = request(&mut r, "second", "f");
            assert_eq!(sent(&mut rx_dead), ["second"]);
            r.result_timeout("second", 1);
        }
        sent(&mut rx_live);
        for i in 0..6 {
            request(&mut r, &format!("n{i}"), "f");
        }
        assert!(
            sent(&mut rx_dead).is_empty(),
            "the silent stream is avoided"
        );
        assert_eq!(sent(&mut rx_live).len(), 6);
        // Once it answers anything it is back in the rotation.
        r.on_result(dead, result("nobody", ""));
        for i in 0..4 {
            request(&mut r, &format!("m{i}"), "f");
        }
        assert_eq!(sent(&mut rx_dead).len(), 2);
    }

    #[test]
    fn a_stream_whose_handler_is_gone_is_skipped() {
        let mut r = Router::new(10);
        let (_a, rx_a) = stream(&mut r, 1);
        drop(rx_a);
        let (b, mut rx_b) = stream(&mut r, 1);
        r.set_owner("f", Some(1));
        for i in 0..3 {
            request(&mut r, &i.to_string(), "f");
        }
        assert_eq!(sent(&mut rx_b), ["0"], "b's probe");
        r.on_result(b, result("0", ""));
        assert_eq!(sent(&mut rx_b), ["1", "2"]);
    }
}
