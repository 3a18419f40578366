//! Runs the selected figures for every path, run after run, and collects
//! the values, notes and table rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::figures::{self, Dir};
use crate::pattern::Pattern;
use crate::procs::{self, Bins};
use crate::report::{Results, Row, Target};
use crate::sys::Res;
use crate::topology::{PathKind, Topology};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
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
}

impl Config {
    /// Full mode (a few minutes) or short mode (CI smoke test), with overrides.
    pub fn new(
        short: bool,
        runs: Option<usize>,
        size_mib: Option<usize>,
        idle: Option<usize>,
    ) -> Self {
        let full = !short;
        let idle = idle.unwrap_or(if full { 10_000 } else { 300 });
        Self {
            runs: runs.unwrap_or(if full { 5 } else { 2 }).max(1),
            size: size_mib.unwrap_or(if full { 1024 } else { 64 }).max(1) * MIB,
            latency_conns: if full { 5000 } else { 300 },
            rate_clients: 32,
            rate_time: Duration::from_millis(if full { 3000 } else { 500 }),
            burst: if full { 1000 } else { 200 },
            idle,
            socat_idle: idle.min(if full { 1000 } else { 100 }),
            startup_runs: if full { 20 } else { 3 },
            stall: Duration::from_secs(if full { 10 } else { 4 }),
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

/// A path's burst failures, one value per run.
#[derive(Default)]
struct BurstMisses {
    refused: Vec<f64>,
    dropped: Vec<f64>,
    timed_out: Vec<f64>,
    first_error: Option<String>,
}

fn progress(what: &str, vals: &[Option<f64>; 3]) {
    let parts: Vec<String> = PathKind::ALL
        .iter()
        .filter_map(|p| vals[p.index()].map(|v| format!("{} {v:.2}", p.title())))
        .collect();
    eprintln!("  {what}: {}", parts.join(", "));
}

fn fwd_only(v: f64) -> [Option<f64>; 3] {
    [None, None, Some(v)]
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
    pats: [Pattern; 2],
    socat_stalled: Vec<Dir>,
    burst_misses: [BurstMisses; 3],
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
        if !needs_topology && !self.selected(Figure::Memory) {
            return Ok(());
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
        }
        self.closing_notes();
        Ok(())
    }

    fn size(&mut self) -> Res<()> {
        let Some(b) = &self.bins else { return Ok(()) };
        let s = figures::agent_size(Some(b))?;
        self.res
            .record("size", fwd_only(s.bytes as f64 / MIB as f64));
        self.notes.add(if s.is_static {
            let stale = if procs::older_than_sources(&s.path, "agent") {
                " (older than the agent's sources: rebuild it)"
            } else {
                ""
            };
            format!("agent binary: static build {}{stale}", s.path.display())
        } else {
            format!(
                "agent binary: {} is dynamically linked (no static build found; build one with \
                 RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
                 --target x86_64-unknown-linux-gnu -p sockfwd-agent)",
                s.path.display()
            )
        });
        Ok(())
    }

    fn startup(&mut self) -> Res<()> {
        let Some(b) = &self.bins else { return Ok(()) };
        eprintln!("startup: {} fresh agents", self.cfg.startup_runs);
        for _ in 0..self.cfg.startup_runs {
            let s = figures::startup(b)?;
            self.res.record("startup", fwd_only(s.ready_ms));
            self.res.record("startup_fwd", fwd_only(s.forward_ms));
            self.res
                .record("fresh_agent", fwd_only(s.fresh_rss_kib as f64 / 1024.0));
        }
        self.notes.add(
            "agent ready: from spawn (fork+exec) until both its control and streams sockets accept a connection \
             (polled every 200 µs)"
                .into(),
        );
        Ok(())
    }

    fn throughput(&mut self, topo: &mut Topology) -> Res<()> {
        let mut cpu = [[0.0f64; 2]; 3];
        let mut ends = [0.0f64; 3];
        let mut bytes = [0u64; 3];
        for dir in [Dir::Up, Dir::Down, Dir::Both] {
            let mut up = [None; 3];
            let mut down = [None; 3];
            for p in self.paths.clone() {
                if p == PathKind::Socat && self.socat_stalled.contains(&dir) {
                    continue;
                }
                let t = match figures::transfer(
                    topo,
                    p,
                    dir,
                    self.cfg.size,
                    &self.pats,
                    self.cfg.stall,
                ) {
                    Ok(t) => t,
                    // socat is the reference, not the subject: note its failure and go on.
                    Err(e) if p == PathKind::Socat => {
                        self.notes.add(format!(
                            "socat ×2, {}: failed ({e}); not retried in later runs. Each socat is one thread \
                             doing blocking writes: with bulk data both ways, #1 blocks writing to #2 while #2 \
                             blocks writing to #1",
                            dir.label()
                        ));
                        self.socat_stalled.push(dir);
                        topo.kill_forks(p);
                        topo.check_alive()?;
                        continue;
                    }
                    Err(e) => return Err(format!("{} {}: {e}", p.title(), dir.label())),
                };
                topo.check_alive()?;
                let i = p.index();
                up[i] = t.up;
                down[i] = t.down;
                cpu[i][0] += t.cpu[0];
                cpu[i][1] += t.cpu[1];
                ends[i] += t.ends_cpu;
                bytes[i] += t.bytes;
            }
            match dir {
                Dir::Up => self.res.record("tp_up", up),
                Dir::Down => self.res.record("tp_down", down),
                Dir::Both => {
                    self.res.record("tp_both_up", up);
                    self.res.record("tp_both_down", down);
                }
            }
            for (name, v) in [("up", up), ("down", down)] {
                if v.iter().any(Option::is_some) {
                    progress(&format!("{} {name} GiB/s", dir.label()), &v);
                }
            }
        }
        let per_gib = |i: usize, c: f64| (bytes[i] > 0).then(|| c / (bytes[i] as f64 / GIB));
        let mut guest = [None; 3];
        let mut host = [None; 3];
        let mut bench = [None; 3];
        for &p in &self.paths {
            let i = p.index();
            if p != PathKind::Direct {
                guest[i] = per_gib(i, cpu[i][0]);
                host[i] = per_gib(i, cpu[i][1]);
            }
            bench[i] = per_gib(i, ends[i]);
        }
        self.res.record("cpu_guest", guest);
        self.res.record("cpu_host", host);
        self.res.record("cpu_ends", bench);
        Ok(())
    }

    fn latency(&mut self, topo: &mut Topology) -> Res<()> {
        let mut med = [None; 3];
        let mut p99 = [None; 3];
        for p in self.paths.clone() {
            let l = figures::latency(topo, p, self.cfg.latency_conns)?;
            topo.check_alive()?;
            med[p.index()] = Some(l.median_us);
            p99[p.index()] = Some(l.p99_us);
            if l.errors > 0 {
                self.notes.add(format!(
                    "latency, {}: {} of {} connections failed in a run (first: {})",
                    p.title(),
                    l.errors,
                    self.cfg.latency_conns,
                    l.first_error.unwrap_or_default()
                ));
            }
        }
        progress("latency median µs", &med);
        self.res.record("lat_med", med);
        self.res.record("lat_p99", p99);
        Ok(())
    }

    fn rate(&mut self, topo: &mut Topology) -> Res<()> {
        let mut rate = [None; 3];
        let mut errs = [None; 3];
        let mut conn_cpu = [[None; 3]; 2];
        for p in self.paths.clone() {
            let r = figures::rate(topo, p, self.cfg.rate_clients, self.cfg.rate_time)?;
            topo.check_alive()?;
            let i = p.index();
            rate[i] = Some(r.per_sec);
            errs[i] = Some(r.errors as f64);
            if p != PathKind::Direct {
                conn_cpu[0][i] = Some(r.cpu_us_per_conn[0]);
                conn_cpu[1][i] = Some(r.cpu_us_per_conn[1]);
            }
            if let Some(e) = r.first_error {
                self.notes
                    .add(format!("rate, {}: first error: {e}", p.title()));
            }
            if r.server_errors > 0 {
                self.notes.add(format!(
                    "rate, {}: the server saw {} connections fail in a run (closed before the byte, or reset)",
                    p.title(),
                    r.server_errors
                ));
            }
        }
        progress("connections/s", &rate);
        self.res.record("rate", rate);
        self.res.record("rate_err", errs);
        self.res.record("conn_cpu_guest", conn_cpu[0]);
        self.res.record("conn_cpu_host", conn_cpu[1]);
        Ok(())
    }

    fn burst(&mut self, topo: &mut Topology) -> Res<()> {
        let mut served = [None; 3];
        for p in self.paths.clone() {
            let b = figures::burst(topo, p, self.cfg.burst)?;
            topo.check_alive()?;
            served[p.index()] = Some(b.served as f64);
            let tally = &mut self.burst_misses[p.index()];
            tally.refused.push(b.refused as f64);
            tally.dropped.push(b.dropped as f64);
            tally.timed_out.push(b.timed_out as f64);
            if tally.first_error.is_none() {
                tally.first_error = b.first_error;
            }
        }
        progress("burst served", &served);
        self.res.record("burst", served);
        Ok(())
    }

    /// Each path with fresh daemons, so the baseline is the untouched idle daemon.
    fn memory(&mut self, last_run: bool) -> Res<()> {
        let mut m = [[None; 3]; 8];
        for p in self.paths.clone() {
            let n = if p == PathKind::Socat {
                self.cfg.socat_idle
            } else {
                self.cfg.idle
            };
            let mut fresh =
                Topology::start(&[p], self.bins.as_ref(), self.socat.as_deref(), self.keep)?;
            let r = figures::memory(&fresh, p, n)?;
            fresh.check_alive()?;
            drop(fresh);
            let i = p.index();
            if p == PathKind::Sockfwd {
                self.res
                    .record("idle_agent", fwd_only(r.idle_rss_kib[0] as f64 / 1024.0));
                self.res
                    .record("idle_relay", fwd_only(r.idle_rss_kib[1] as f64 / 1024.0));
            }
            if p != PathKind::Direct {
                m[0][i] = Some(r.rss_kib[0] as f64 / 1024.0);
                m[1][i] = Some(r.rss_kib[1] as f64 / 1024.0);
                m[2][i] = Some(r.per_conn_kib[0]);
                m[3][i] = Some(r.per_conn_kib[1]);
                m[5][i] = Some(r.pss_per_conn_kib[0]);
                m[6][i] = Some(r.pss_per_conn_kib[1]);
            }
            m[4][i] = Some(r.kernel_per_conn_kib);
            m[7][i] = Some(r.conns as f64);
            if let Some(l) = &r.limited {
                self.notes.add(format!(
                    "memory, {}: {} idle connections instead of {n}, limited by {l}",
                    p.title(),
                    r.conns
                ));
            } else if r.conns != self.cfg.idle {
                let why = if p == PathKind::Socat {
                    " (each costs two forked processes)"
                } else {
                    ""
                };
                self.notes.add(format!(
                    "memory, {}: measured with {} idle connections{why}",
                    p.title(),
                    r.conns
                ));
            }
            if r.errors > 0 {
                self.notes.add(format!(
                    "memory, {}: {} connections failed to open (first: {})",
                    p.title(),
                    r.errors,
                    r.first_error.unwrap_or_default()
                ));
            }
            if last_run {
                let fds = r
                    .fds_per_conn
                    .filter(|_| p != PathKind::Direct)
                    .map(|f| format!(", descriptors per conn {:.2} / {:.2}", f[0], f[1]))
                    .unwrap_or_default();
                self.notes.add(format!(
                    "memory, {} (last run): sockets in use per conn {}{fds}",
                    p.title(),
                    r.sockets_per_conn.map_or("?".into(), |s| format!("{s:.2}")),
                ));
            }
        }
        progress("guest-side KiB per idle conn", &m[2]);
        progress("host-side KiB per idle conn", &m[3]);
        let keys = [
            "mem_guest",
            "mem_host",
            "mem_guest_per",
            "mem_host_per",
            "mem_kernel_per",
            "pss_guest_per",
            "pss_host_per",
            "mem_conns",
        ];
        for (key, v) in keys.into_iter().zip(m) {
            self.res.record(key, v);
        }
        Ok(())
    }

    fn closing_notes(&mut self) {
        if self.selected(Figure::Memory) {
            self.notes.add(
                "memory: each run starts fresh daemons; per connection = (RSS with the idle connections open \
                 - RSS of the idle daemon just started, forward bound) / connections; idle RSS is that second figure. \
                 Each idle connection first carried a 1-byte echo (so it is known to be forwarded end to end, and \
                 any buffers or pipes created on first data are counted)"
                    .into(),
            );
            self.notes.add(
                "kernel memory: change in Slab + KernelStack + PageTables (/proc/meminfo) per connection, \
                 machine-wide, so other activity on the machine adds noise; the direct column is the cost of the \
                 two end sockets alone"
                    .into(),
            );
        }
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo}–{hi}")
            }
        };
        for p in PathKind::ALL {
            let b = &self.burst_misses[p.index()];
            if b.refused
                .iter()
                .chain(&b.dropped)
                .chain(&b.timed_out)
                .any(|&x| x > 0.0)
            {
                self.notes.add(format!(
                    "burst, {}: per run {} refused at connect (listen backlog full), {} closed without the echo, \
                     {} timed out; first error: {}",
                    p.title(),
                    range(&b.refused),
                    range(&b.dropped),
                    range(&b.timed_out),
                    b.first_error.as_deref().unwrap_or("")
                ));
            }
        }
        if self.selected(Figure::Burst) {
            self.notes.add(
                "burst: non-blocking connects (as tokio and Go clients do), so a full listen backlog is a refused \
                 connection; socat listens with its default backlog of 5"
                    .into(),
            );
        }
    }
}
