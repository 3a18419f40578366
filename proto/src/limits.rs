//! Descriptor budgets. Both daemons raise their soft `RLIMIT_NOFILE` to the hard
//! limit at start (as Go's runtime does), then admit only as many forwarded
//! connections as the limit can carry: two sockets each, with a quarter of the
//! limit kept for the pipes of connections that are moving bulk data. Out of descriptors, a new connection is
//! refused at once; without the budget, accepted connections would hold every
//! descriptor while waiting for the stream connections that need one more, and
//! all of them would wait out their deadlines.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors a forwarded connection always holds in a daemon: its two sockets.
/// While bulk data flows it also holds a splice pipe (two ends) per direction;
/// those come out of [`PIPE_SHARE`], and a direction that cannot get one copies
/// through a buffer instead (`relay`), so pipes never cost a connection.
pub const FDS_PER_CONNECTION: u64 = 2;

/// Fraction of the limit (in quarters) kept for the pipes of busy connections.
pub const PIPE_SHARE: u64 = 1;

/// Descriptors kept for everything else: listeners, control connections, the
/// runtime's epoll and wakers, logging, handshakes in progress.
pub const RESERVED_FDS: u64 = 32;

/// Raises the soft open-file limit to the hard limit; returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(soft, hard, cause = %err, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// How many forwarded connections the current open-file limit can carry (at least 1).
pub fn connection_budget() -> usize {
    let soft = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let usable = soft.saturating_sub(RESERVED_FDS);
    let slots = (usable - usable * PIPE_SHARE / 4) / FDS_PER_CONNECTION;
    usize::try_from(slots.max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_follows_the_limit() {
        let soft = getrlimit(Resource::RLIMIT_NOFILE).unwrap().0;
        let usable = soft.saturating_sub(RESERVED_FDS);
        let expected = ((usable - usable / 4) / FDS_PER_CONNECTION).max(1);
        assert_eq!(connection_budget() as u64, expected);
    }
}
