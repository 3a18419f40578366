//! What one bench invocation runs and what it has measured so far: the
//! figures, sizes and counts, and the [`Bench`] that the suite and every
//! figure record into. Pure data, below the suite and the figures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::pattern::Pattern;
use crate::procs::Bins;
use crate::report::Results;
use crate::topology::PathKind;

/// One MiB.
pub const MIB: usize = 1024 * 1024;

/// Figures that `--only` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Figure {
    /// Throughput each way and both at once.
    Throughput,
    /// CPU seconds per GiB (measured during the throughput transfers).
    Cpu,
    /// Connect-to-first-byte latency.
    Latency,
    /// Connection rate with 32 clients (and daemon CPU per connection).
    Rate,
    /// Burst of concurrent connects.
    Burst,
    /// Memory with idle connections; idle agent RSS.
    Memory,
    /// Agent start to ready.
    Startup,
    /// Agent binary size.
    Size,
    /// Real clients: redis-benchmark and pgbench -S.
    Clients,
}

/// Sizes and counts of one bench invocation.
pub struct Config {
    /// Runs of every figure.
    pub runs: usize,
    /// Bytes per transfer and direction.
    pub size: usize,
    /// Sequential connections per latency run.
    pub latency_conns: usize,
    /// Concurrent clients of the rate figure.
    pub rate_clients: usize,
    /// How long each rate run lasts.
    pub rate_time: Duration,
    /// Concurrent connects in a burst.
    pub burst: usize,
    /// Idle connections asked for (direct and sockfwd).
    pub idle: usize,
    /// Idle connections for socat (two processes each).
    pub socat_idle: usize,
    /// Fresh agents started for the start-up figure.
    pub startup_runs: usize,
    /// A transfer read or write blocked this long has stalled.
    pub stall: Duration,
    /// The real clients' parameters.
    pub clients: ClientsConfig,
}

impl Config {
    /// Full mode (a few minutes) or short mode (CI smoke test), with overrides.
    pub fn new(
        short: bool,
        runs: Option<usize>,
        size_mib: Option<usize>,
        idle: Option<usize>,
        connections: Option<usize>,
    ) -> Self {
        let full = !short;
        let idle = idle.unwrap_or(if full { 10_000 } else { 300 });
        Self {
            runs: runs.unwrap_or(if full { 5 } else { 2 }).max(1),
            size: size_mib.unwrap_or(if full { 1024 } else { 64 }).max(1) * MIB,
            latency_conns: connections.unwrap_or(if full { 5000 } else { 300 }).max(1),
            rate_clients: 32,
            rate_time: Duration::from_millis(if full { 3000 } else { 500 }),
            burst: if full { 1000 } else { 200 },
            idle,
            socat_idle: idle.min(if full { 1000 } else { 100 }),
            startup_runs: if full { 20 } else { 3 },
            stall: Duration::from_secs(if full { 10 } else { 4 }),
            clients: ClientsConfig {
                redis_clients: 50,
                redis_requests: if full { 200_000 } else { 20_000 },
                pg_clients: 16,
                pg_secs: if full { 5 } else { 2 },
            },
        }
    }
}

/// What the clients figure runs.
#[derive(Clone, Copy)]
pub struct ClientsConfig {
    /// redis-benchmark connections (`-c`).
    pub redis_clients: usize,
    /// redis-benchmark requests per test (`-n`).
    pub redis_requests: usize,
    /// pgbench clients (`-c`).
    pub pg_clients: usize,
    /// pgbench run time (`-T`), seconds.
    pub pg_secs: u64,
}

/// Notes printed under the table, once each, in order.
#[derive(Default)]
pub struct Notes(pub Vec<String>);

impl Notes {
    /// Adds a note unless it is already there.
    pub fn add(&mut self, n: String) {
        if !self.0.contains(&n) {
            self.0.push(n);
        }
    }
}

/// One bench invocation: what to run, and what was measured so far.
pub struct Bench {
    /// Sizes and counts.
    pub cfg: Config,
    /// Paths measured, in table order.
    pub paths: Vec<PathKind>,
    /// Figures selected (empty: all).
    pub only: Vec<Figure>,
    /// The daemons, when sockfwd is measured.
    pub bins: Option<Bins>,
    /// socat, when measured.
    pub socat: Option<PathBuf>,
    /// Keep temp dirs and logs.
    pub keep: bool,
    /// Values measured.
    pub res: Results,
    /// Notes for under the table.
    pub notes: Notes,
    /// The byte streams of the transfers, one per direction.
    pub(crate) pats: [Pattern; 2],
    /// Directions in which socat stalled (not retried).
    pub(crate) socat_stalled: Vec<Dir>,
    /// Burst failures per path.
    pub(crate) burst_misses: [BurstMisses; 3],
    began: Instant,
}

impl Bench {
    /// A bench with nothing measured yet.
    pub fn new(
        cfg: Config,
        paths: Vec<PathKind>,
        only: Vec<Figure>,
        bins: Option<Bins>,
        socat: Option<PathBuf>,
    ) -> Self {
        Self {
            cfg,
            paths,
            only,
            bins,
            socat,
            keep: false,
            res: Results::default(),
            notes: Notes::default(),
            pats: [Pattern::new(0x5eed_0001), Pattern::new(0x5eed_0002)],
            socat_stalled: Vec::new(),
            burst_misses: Default::default(),
            began: Instant::now(),
        }
    }

    /// Whether `f` is to be measured.
    pub fn selected(&self, f: Figure) -> bool {
        self.only.is_empty() || self.only.contains(&f)
    }

    /// Seconds since the bench started.
    pub fn elapsed(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }
}

/// Which way bytes flow in a transfer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
    /// Both at once, the same size each way.
    Both,
}

impl Dir {
    /// For messages.
    pub fn label(self) -> &'static str {
        match self {
            Dir::Up => "client→server",
            Dir::Down => "server→client",
            Dir::Both => "both at once",
        }
    }
}

/// A path's burst failures, one value per run.
#[derive(Default)]
pub struct BurstMisses {
    pub(crate) refused: Vec<f64>,
    pub(crate) dropped: Vec<f64>,
    pub(crate) timed_out: Vec<f64>,
    pub(crate) first_error: Option<String>,
}
