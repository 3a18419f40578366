//! How [`Router`] picks an Accept stream for a request: the owner's streams
//! round-robin first, then (after a refusal or a missed result) any untried
//! stream, preferring those that have not missed results.

use super::{AcceptId, AcceptStream, ConnId, Event, Pending, Router};
use std::collections::HashMap;

impl Router {
    /// Ends the request with `event` (success or refusal).
    pub(super) fn finish(&mut self, stream_id: &str, event: Event) {
        if let Some(p) = self.pending.remove(stream_id) {
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

    /// First choice: the owner's streams (any stream if unowned), round-robin,
    /// skipping those already tried. None suitable: the request waits.
    pub(super) fn route_first(&mut self, stream_id: &str) {
        loop {
            let Some(p) = self.pending.get(stream_id) else {
                return;
            };
            let streams = &self.streams;
            let candidates = |list: &[AcceptId]| quietest(streams, list, &p.tried);
            let choice = match self.owners.get(&p.request.forward_id) {
                Some(owner) => match self.conns.get_mut(owner) {
                    Some(c) => round_robin(&candidates(&c.streams), &mut c.next),
                    None => None,
                },
                None => {
                    let mut all: Vec<AcceptId> = streams.keys().copied().collect();
                    all.sort_unstable();
                    round_robin(&candidates(&all), &mut self.next_any)
                }
            };
            match choice {
                None => return,
                Some(s) if self.offer(stream_id, s) => return,
                Some(_) => continue,
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
            let same = conn.and_then(|c| self.conns.get(&c)).and_then(|c| {
                quietest(&self.streams, &c.streams, &p.tried)
                    .first()
                    .copied()
            });
            let choice = same.or_else(|| {
                let mut all: Vec<AcceptId> = self.streams.keys().copied().collect();
                all.sort_unstable();
                quietest(&self.streams, &all, &p.tried).first().copied()
            });
            match choice {
                None => {
                    let reason = p
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "no Accept stream answered".to_owned());
                    self.finish(stream_id, Event::Refused(reason));
                    return;
                }
                Some(s) if self.offer(stream_id, s) => return,
                Some(_) => continue,
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
        let sent = self
            .streams
            .get(&stream)
            .is_some_and(|s| s.requests.send(p.request.clone()).is_ok());
        if sent {
            p.at = Some(stream);
            p.attempt += 1;
            let _ = p.events.send(Event::Offered { attempt: p.attempt });
        }
        sent
    }
}

/// The streams of `list` not yet `tried` that missed the fewest results.
fn quietest(
    streams: &HashMap<AcceptId, AcceptStream>,
    list: &[AcceptId],
    tried: &[AcceptId],
) -> Vec<AcceptId> {
    let silent = |id: &AcceptId| streams.get(id).map_or(u32::MAX, |s| s.silent);
    let open = list.iter().filter(|s| !tried.contains(s));
    let Some(least) = open.clone().map(silent).min() else {
        return Vec::new();
    };
    open.filter(|s| silent(s) == least).copied().collect()
}

fn round_robin(candidates: &[AcceptId], next: &mut usize) -> Option<AcceptId> {
    if candidates.is_empty() {
        return None;
    }
    let choice = candidates[*next % candidates.len()];
    *next = next.wrapping_add(1);
    Some(choice)
}
