//! Runs the selected figures for every path, run after run, and collects
//! the values, notes and table rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::figures::burst::BurstMisses;
use crate::figures::client_servers::ClientPeers;
use crate::figures::clients::ClientsConfig;
use crate::figures::throughput::Dir;
use crate::pattern::Pattern;
use crate::procs::Bins;
use crate::report::{Results, Row, Target};
use crate::sys::Res;
use crate::topology::{PathKind, Topology};

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

/// Every row of the table, in order, with the figure it belongs to.
#[rustfmt::skip]
fn rows(cfg: &Config) -> Vec<(Figure, Row)> {
    use Figure::*;
    use Target::*;
    let r = |f, key, label: &str, unit, prec, ratio, target| {
        (f, Row { key, label: label.to_string(), unit, prec, ratio, target })
    };
    vec![
        r(Throughput, "tp_up", "throughput client→server (GiB/s)", "", 2, true, Some(RatioAtLeast(0.45))),
        r(Throughput, "tp_down", "throughput server→client (GiB/s)", "", 2, true, Some(RatioAtLeast(0.45))),
        r(Throughput, "tp_both_up", "both at once: client→server (GiB/s)", "", 2, true, Some(RatioAtLeast(0.35))),
        r(Throughput, "tp_both_down", "both at once: server→client (GiB/s)", "", 2, true, Some(RatioAtLeast(0.35))),
        r(Latency, "lat_med", "connect to first byte, median (µs)", "", 1, true, Some(RatioAtMost(5.0))),
        r(Latency, "lat_p99", "connect to first byte, p99 (µs)", "", 1, true, Some(RatioAtMost(10.0))),
        r(Rate, "rate", &format!("connections/s, {} clients", cfg.rate_clients), "", 0, true, Some(RatioAtLeast(0.20))),
        r(Rate, "rate_err", &format!("errors, {} clients", cfg.rate_clients), "", 0, false, Some(Exactly(0.0))),
        r(Rate, "conn_cpu_guest", "guest-side CPU per connection (agent / socat #1) (µs)", "", 1, false, None),
        r(Rate, "conn_cpu_host", "host-side CPU per connection (relay / socat #2) (µs)", "", 1, false, None),
        r(Burst, "burst", &format!("burst of {} concurrent connects: served", cfg.burst), "", 0, false, Some(Exactly(cfg.burst as f64))),
        r(Memory, "idle_agent", "idle agent RSS, no connections (MiB)", "MiB", 2, false, Some(Below(8.0))),
        r(Memory, "idle_relay", "idle relay RSS, no connections (MiB)", "MiB", 2, false, None),
        r(Memory, "mem_conns", &format!("idle forwarded connections held (asked: {})", cfg.idle), "", 0, false, None),
        r(Memory, "mem_guest", "guest-side RSS (agent / socat #1) with them open (MiB)", "MiB", 1, false, None),
        r(Memory, "mem_host", "host-side RSS (relay / socat #2) with them open (MiB)", "MiB", 1, false, None),
        r(Memory, "mem_guest_per", "guest-side RSS per idle conn (KiB)", "KiB", 1, false, Some(AtMost(16.0))),
        r(Memory, "mem_host_per", "host-side RSS per idle conn (KiB)", "KiB", 1, false, Some(AtMost(16.0))),
        r(Memory, "pss_guest_per", "guest-side PSS per idle conn (KiB; socat's forks share pages)", "KiB", 1, false, None),
        r(Memory, "pss_host_per", "host-side PSS per idle conn (KiB)", "KiB", 1, false, None),
        r(Memory, "mem_kernel_per", "kernel memory per idle conn, ends included (KiB)", "KiB", 1, true, None),
        r(Cpu, "cpu_guest", "guest-side CPU (agent / socat #1) (s/GiB)", "", 3, false, None),
        r(Cpu, "cpu_host", "host-side CPU (relay / socat #2) (s/GiB)", "", 3, false, None),
        r(Cpu, "cpu_ends", "bench ends' CPU, for reference (s/GiB)", "", 3, true, None),
        r(Startup, "startup", "agent exec to ready (ms)", "ms", 2, false, Some(Below(20.0))),
        r(Startup, "startup_fwd", "relay exec to forward bound (ms)", "ms", 2, false, None),
        r(Startup, "fresh_agent", "fresh agent RSS (MiB)", "MiB", 2, false, None),
        r(Size, "size", "agent binary size (MiB)", "MiB", 2, false, Some(Below(6.0))),
        r(Clients, "redis_set", &format!("redis-benchmark -c {} SET (requests/s)", cfg.clients.redis_clients), "", 0, true, Some(RatioAtLeast(0.7))),
        r(Clients, "redis_get", &format!("redis-benchmark -c {} GET (requests/s)", cfg.clients.redis_clients), "", 0, true, Some(RatioAtLeast(0.7))),
        r(Clients, "pgbench", &format!("pgbench -S -c {} (transactions/s)", cfg.clients.pg_clients), "", 0, true, Some(RatioAtLeast(0.7))),
    ]
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

    /// The rows of the selected figures.
    pub fn rows(&self) -> Vec<Row> {
        rows(&self.cfg)
            .into_iter()
            .filter(|(f, _)| self.selected(*f))
            .map(|(_, r)| r)
            .collect()
    }

    /// Seconds since the bench started.
    pub fn elapsed(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    /// Every selected figure, `cfg.runs` times (start-up and size once).
    pub fn run_all(&mut self) -> Res<()> {
        if self.selected(Figure::Size) {
            self.size()?;
        }
        if self.selected(Figure::Startup) {
            self.startup()?;
        }
        let shared = [
            Figure::Throughput,
            Figure::Cpu,
            Figure::Latency,
            Figure::Rate,
            Figure::Burst,
        ];
        let needs_topology = shared.into_iter().any(|f| self.selected(f));
        if !needs_topology && !self.selected(Figure::Memory) && !self.selected(Figure::Clients) {
            return Ok(());
        }
        let mut peers = None;
        if self.selected(Figure::Clients) {
            let p = ClientPeers::start(
                &self.paths,
                self.bins.as_ref(),
                self.socat.as_deref(),
                self.keep,
            )?;
            eprintln!("redis and postgres up in {}", p.dir().display());
            peers = Some(p);
        }
        let mut topo = None;
        if needs_topology {
            let t = Topology::start(
                &self.paths,
                self.bins.as_ref(),
                self.socat.as_deref(),
                self.keep,
            )?;
            eprintln!("daemons up in {}", t.dir().display());
            topo = Some(t);
        }
        for run in 0..self.cfg.runs {
            eprintln!(
                "run {}/{} ({:.0} s so far)",
                run + 1,
                self.cfg.runs,
                self.elapsed()
            );
            if let Some(topo) = topo.as_mut() {
                if self.selected(Figure::Throughput) || self.selected(Figure::Cpu) {
                    self.throughput(topo)?;
                }
                if self.selected(Figure::Latency) {
                    self.latency(topo)?;
                }
                if self.selected(Figure::Rate) {
                    self.rate(topo)?;
                }
                if self.selected(Figure::Burst) {
                    self.burst(topo)?;
                }
                topo.check_alive()?;
            }
            if self.selected(Figure::Memory) {
                self.memory(run + 1 == self.cfg.runs)?;
            }
            if let Some(p) = &peers {
                self.clients(p)?;
            }
        }
        self.closing_notes();
        Ok(())
    }

    fn closing_notes(&mut self) {
        self.memory_notes();
        self.burst_notes();
    }
}
