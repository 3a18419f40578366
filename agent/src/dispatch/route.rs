//! How [`Router`] picks an Accept stream for a request: the owner's streams
//! first (any stream for an unowned forward), then (after a refusal or a
//! missed result) any untried stream. Among those, a stream that refused the
//! forward is never chosen, one already answering a probe for it is waited
//! for, those that serve it come first, and of the rest those that missed the
//! fewest results, round-robin.

use super::{AcceptId, AcceptStream, ConnId, Event, Pending, Router, UNKNOWN_FORWARD};
use std::collections::HashMap;

/// What the streams of a list allow for one request.
enum Choice {
    /// Offer it to this stream.
    Offer(AcceptId),
    /// A stream that may serve it is answering a probe of its forward: wait.
    Wait,
    /// No stream of the list may take it; `refused`: some untried one refused
    /// its forward (the others were tried).
    None {
        /// An untried stream refused the forward.
        refused: bool,
    },
}

impl Router {
    /// Ends the request with `event` (success or refusal).
    pub(super) fn finish(&mut self, stream_id: &str, event: Event) {
        if let Some(p) = self.pending.remove(stream_id) {
            if let Some(at) = p.at {
                self.end_probe(at, &p.request.forward_id, stream_id);
            }
            // The guest task may have just given up: nothing to tell then.
            let _ = p.events.send(event);
        }
    }

    /// Sends every waiting request matching `filter`, oldest first.
    pub(super) fn route_waiting(&mut self, filter: impl Fn(&Pending) -> bool) {
        let mut waiting: Vec<(u64, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.at.is_none() && filter(p))
            .map(|(id, p)| (p.seq, id.clone()))
            .collect();
        waiting.sort_unstable();
        for (_, id) in waiting {
            self.route_first(&id);
        }
    }

    /// First choice: the owner's streams (any stream if unowned). None open, or
    /// all tried (a request back from a stream that ended): the request waits;
    /// those not tried refused its forward: the fallback.
    pub(super) fn route_first(&mut self, stream_id: &str) {
        loop {
            let Some(p) = self.pending.get(stream_id) else {
                return;
            };
            let owner = self.owners.get(&p.request.forward_id).copied();
            let list: Vec<AcceptId> = match owner {
                Some(owner) => match self.conns.get(&owner) {
                    Some(c) => c.streams.clone(),
                    None => Vec::new(),
                },
                None => {
                    let mut all: Vec<AcceptId> = self.streams.keys().copied().collect();
                    all.sort_unstable();
                    all
                }
            };
            if list.is_empty() {
                return;
            }
            let next = match owner.and_then(|o| self.conns.get_mut(&o)) {
                Some(c) => &mut c.next,
                None => &mut self.next_any,
            };
            match choose(&self.streams, &list, p, next) {
                Choice::Wait | Choice::None { refused: false } => return,
                Choice::None { refused: true } => return self.route_fallback(stream_id, owner),
                Choice::Offer(s) if self.offer(stream_id, s) => return,
                Choice::Offer(_) => continue,
            }
        }
    }

    /// After a refusal or a missed result: an untried stream of `conn`, then of
    /// any connection; with none left, the request fails with its last error.
    pub(super) fn route_fallback(&mut self, stream_id: &str, conn: Option<ConnId>) {
        loop {
            let Some(p) = self.pending.get(stream_id) else {
                return;
            };
            let same = conn
                .and_then(|c| self.conns.get(&c))
                .map(|c| c.streams.clone())
                .unwrap_or_default();
            let mut all: Vec<AcceptId> = self.streams.keys().copied().collect();
            all.sort_unstable();
            let mut first = 0;
            let choice = match choose(&self.streams, &same, p, &mut first) {
                Choice::Offer(s) => Choice::Offer(s),
                other => match (other, choose(&self.streams, &all, p, &mut first)) {
                    (_, Choice::Offer(s)) => Choice::Offer(s),
                    (Choice::Wait, _) | (_, Choice::Wait) => Choice::Wait,
                    _ => Choice::None { refused: false },
                },
            };
            match choice {
                Choice::Wait => return,
                Choice::None { .. } => {
                    let reason = p.last_error.clone().unwrap_or_else(|| {
                        if p.tried.is_empty() {
                            format!(
                                "{UNKNOWN_FORWARD}: every Accept stream that may serve it answered so"
                            )
                        } else {
                            "no Accept stream answered".to_owned()
                        }
                    });
                    self.finish(stream_id, Event::Refused(reason));
                    return;
                }
                Choice::Offer(s) if self.offer(stream_id, s) => return,
                Choice::Offer(_) => continue,
            }
        }
    }

    /// Sends the request on `stream`. `false` if that stream is already gone
    /// (its handler ended; its close follows): it counts as tried.
    pub(super) fn offer(&mut self, stream_id: &str, stream: AcceptId) -> bool {
        let Some(p) = self.pending.get_mut(stream_id) else {
            return true;
        };
        p.tried.push(stream);
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if s.requests.send(p.request.clone()).is_err() {
            return false;
        }
        let forward = &p.request.forward_id;
        if !s.serves.contains(forward) {
            s.probing.insert(forward.clone(), stream_id.to_owned());
        }
        p.at = Some(stream);
        p.attempt += 1;
        let _ = p.events.send(Event::Offered { attempt: p.attempt });
        true
    }

    /// The request `stream_id` of `forward` left `stream`: if it was the
    /// stream's probe of the forward, that ends (`true`).
    pub(super) fn end_probe(&mut self, stream: AcceptId, forward: &str, stream_id: &str) -> bool {
        let Some(s) = self.streams.get_mut(&stream) else {
            return false;
        };
        if s.probing.get(forward).is_some_and(|id| id == stream_id) {
            s.probing.remove(forward);
            return true;
        }
        false
    }
}

/// Picks from `list` a stream for `p`: untried, not refusing its forward and
/// not answering a probe of it; those serving it first, then the quietest,
/// round-robin by `next`.
fn choose(
    streams: &HashMap<AcceptId, AcceptStream>,
    list: &[AcceptId],
    p: &Pending,
    next: &mut usize,
) -> Choice {
    let forward = p.request.forward_id.as_str();
    let untried: Vec<&AcceptStream> = list
        .iter()
        .filter(|id| !p.tried.contains(id))
        .filter_map(|id| streams.get(id))
        .collect();
    let may: Vec<AcceptId> = list
        .iter()
        .filter(|id| !p.tried.contains(id))
        .filter(|id| streams.get(id).is_some_and(|s| s.may_take(forward)))
        .copied()
        .collect();
    if may.is_empty() {
        // Untried streams that do not refuse it are answering a probe of it.
        let refusing = untried
            .iter()
            .filter(|s| s.refuses.contains(forward))
            .count();
        return if untried.len() > refusing {
            Choice::Wait
        } else {
            Choice::None {
                refused: refusing > 0,
            }
        };
    }
    let serving: Vec<AcceptId> = may
        .iter()
        .filter(|id| streams.get(id).is_some_and(|s| s.serves.contains(forward)))
        .copied()
        .collect();
    let pool = if serving.is_empty() { may } else { serving };
    match round_robin(&quietest(streams, &pool), next) {
        Some(s) => Choice::Offer(s),
        None => Choice::None { refused: false },
    }
}

/// The streams of `list` that missed the fewest results.
fn quietest(streams: &HashMap<AcceptId, AcceptStream>, list: &[AcceptId]) -> Vec<AcceptId> {
    let silent = |id: &AcceptId| streams.get(id).map_or(u32::MAX, |s| s.silent);
    let Some(least) = list.iter().map(silent).min() else {
        return Vec::new();
    };
    list.iter()
        .filter(|s| silent(s) == least)
        .copied()
        .collect()
}

fn round_robin(candidates: &[AcceptId], next: &mut usize) -> Option<AcceptId> {
    if candidates.is_empty() {
        return None;
    }
    let choice = candidates[*next % candidates.len()];
    *next = next.wrapping_add(1);
    Some(choice)
}
