//! sockfwd-bench: measures direct, socat ×2 and sockfwd side by side over
//! Unix sockets (issue 5) and prints a Markdown table with ratios to direct.
//!
//! Run `cargo run --release -p sockfwd-bench -- --help`; see bench/README.md.

mod figures;
mod pattern;
mod procs;
mod report;
mod server;
mod sys;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::figures::Dir;
use crate::pattern::Pattern;
use crate::procs::Bins;
use crate::report::{Results, Row, Target};
use crate::sys::Res;
use crate::topology::{PathKind, Topology};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: usize = 1024 * 1024;
/// Descriptors the bench asks for (each daemon inherits the limit).
const WANT_NOFILE: u64 = 262_144;

/// Figures that `--only` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Figure {
    /// Throughput each way and both at once.
    Throughput,
    /// CPU seconds per GiB (measured during the throughput transfers).
    Cpu,
    /// Connect-to-first-byte latency.
    Latency,
    /// Connection rate with 32 clients.
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

/// Benchmark: direct vs socat ×2 vs sockfwd over Unix sockets, as ratios to direct.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// CI smoke mode: small sizes, few runs, well under a minute; no thresholds.
    #[arg(long)]
    short: bool,
    /// Runs per figure (default: 5, or 2 with --short).
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Pin the bench, both ends and every daemon to one CPU (default: the last one).
    #[arg(long, value_name = "CPU", num_args = 0..=1)]
    pin: Option<Option<usize>>,
    /// Only these figures (repeatable or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Only these paths (direct is needed for the ratios).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL.to_vec())]
    paths: Vec<PathKind>,
    /// MiB per transfer and direction (default: 1024, or 64 with --short).
    #[arg(long, value_name = "MIB")]
    size_mib: Option<usize>,
    /// Idle connections for the memory figure (default: 10000, or 300 with --short).
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// Run the relay with its default admission limits (rate, connections at once).
    #[arg(long)]
    default_limits: bool,
    /// Keep the temp dir with the daemons' logs (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Directory holding release builds of sockfwd-agent and sockfwd-relay.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

struct Config {
    runs: usize,
    size: usize,
    latency_conns: usize,
    rate_clients: usize,
    rate_time: Duration,
    burst: usize,
    idle: usize,
    socat_idle: usize,
    startup_runs: usize,
    stall: Duration,
}

impl Config {
    fn new(cli: &Cli) -> Self {
        let full = !cli.short;
        let idle = cli.idle.unwrap_or(if full { 10_000 } else { 300 });
        Self {
            runs: cli.runs.unwrap_or(if full { 5 } else { 2 }).max(1),
            size: cli.size_mib.unwrap_or(if full { 1024 } else { 64 }).max(1) * MIB,
            latency_conns: if full { 5000 } else { 300 },
            rate_clients: 32,
            rate_time: Duration::from_millis(if full { 3000 } else { 500 }),
            burst: if full { 1000 } else { 200 },
            idle,
            // Every socat connection costs two forked processes.
            socat_idle: idle.min(if full { 1000 } else { 100 }),
            startup_runs: if full { 20 } else { 3 },
            stall: Duration::from_secs(if full { 10 } else { 4 }),
        }
    }
}

/// `git describe --always --dirty` of the workspace, if git is there.
fn git_describe() -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(procs::workspace_dir())
        .args(["describe", "--always", "--dirty"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockfwd-bench: {e}");
            procs::kill_all();
            ExitCode::FAILURE
        }
    }
}

fn rows(cfg: &Config) -> Vec<(Figure, Row)> {
    let row = |key, label: String, unit, prec, ratio, target| Row {
        key,
        label,
        unit,
        prec,
        ratio,
        target,
    };
    let idle = cfg.idle;
    vec![
        (
            Figure::Throughput,
            row(
                "tp_up",
                "throughput client→server (GiB/s)".into(),
                "",
                2,
                true,
                Some(Target::RatioAtLeast(0.45)),
            ),
        ),
        (
            Figure::Throughput,
            row(
                "tp_down",
                "throughput server→client (GiB/s)".into(),
                "",
                2,
                true,
                Some(Target::RatioAtLeast(0.45)),
            ),
        ),
        (
            Figure::Throughput,
            row(
                "tp_both_up",
                "both at once: client→server (GiB/s)".into(),
                "",
                2,
                true,
                Some(Target::RatioAtLeast(0.35)),
            ),
        ),
        (
            Figure::Throughput,
            row(
                "tp_both_down",
                "both at once: server→client (GiB/s)".into(),
                "",
                2,
                true,
                Some(Target::RatioAtLeast(0.35)),
            ),
        ),
        (
            Figure::Latency,
            row(
                "lat_med",
                "connect to first byte, median (µs)".into(),
                "",
                1,
                true,
                Some(Target::RatioAtMost(5.0)),
            ),
        ),
        (
            Figure::Latency,
            row(
                "lat_p99",
                "connect to first byte, p99 (µs)".into(),
                "",
                1,
                true,
                Some(Target::RatioAtMost(10.0)),
            ),
        ),
        (
            Figure::Rate,
            row(
                "rate",
                format!("connections/s, {} clients", cfg.rate_clients),
                "",
                0,
                true,
                Some(Target::RatioAtLeast(0.20)),
            ),
        ),
        (
            Figure::Rate,
            row(
                "rate_err",
                format!("errors, {} clients", cfg.rate_clients),
                "",
                0,
                false,
                Some(Target::Exactly(0.0)),
            ),
        ),
        (
            Figure::Rate,
            row(
                "conn_cpu_guest",
                "guest-side CPU per connection (agent / socat #1) (µs)".into(),
                "",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Rate,
            row(
                "conn_cpu_host",
                "host-side CPU per connection (relay / socat #2) (µs)".into(),
                "",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Burst,
            row(
                "burst",
                format!("burst of {} concurrent connects: served", cfg.burst),
                "",
                0,
                false,
                Some(Target::Exactly(cfg.burst as f64)),
            ),
        ),
        (
            Figure::Memory,
            row(
                "idle_agent",
                "idle agent RSS, no connections (MiB)".into(),
                "MiB",
                2,
                false,
                Some(Target::Below(8.0)),
            ),
        ),
        (
            Figure::Memory,
            row(
                "idle_relay",
                "idle relay RSS, no connections (MiB)".into(),
                "MiB",
                2,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_conns",
                format!("idle forwarded connections held (asked: {idle})"),
                "",
                0,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_guest",
                "guest-side RSS (agent / socat #1) with them open (MiB)".into(),
                "MiB",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_host",
                "host-side RSS (relay / socat #2) with them open (MiB)".into(),
                "MiB",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_guest_per",
                "guest-side RSS per idle conn (KiB)".into(),
                "KiB",
                1,
                false,
                Some(Target::AtMost(16.0)),
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_host_per",
                "host-side RSS per idle conn (KiB)".into(),
                "KiB",
                1,
                false,
                Some(Target::AtMost(16.0)),
            ),
        ),
        (
            Figure::Memory,
            row(
                "pss_guest_per",
                "guest-side PSS per idle conn (KiB; socat's forks share pages)".into(),
                "KiB",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "pss_host_per",
                "host-side PSS per idle conn (KiB)".into(),
                "KiB",
                1,
                false,
                None,
            ),
        ),
        (
            Figure::Memory,
            row(
                "mem_kernel_per",
                "kernel memory per idle conn, ends included (KiB)".into(),
                "KiB",
                1,
                true,
                None,
            ),
        ),
        (
            Figure::Cpu,
            row(
                "cpu_guest",
                "guest-side CPU (agent / socat #1) (s/GiB)".into(),
                "",
                3,
                false,
                None,
            ),
        ),
        (
            Figure::Cpu,
            row(
                "cpu_host",
                "host-side CPU (relay / socat #2) (s/GiB)".into(),
                "",
                3,
                false,
                None,
            ),
        ),
        (
            Figure::Cpu,
            row(
                "cpu_ends",
                "bench ends' CPU, for reference (s/GiB)".into(),
                "",
                3,
                true,
                None,
            ),
        ),
        (
            Figure::Startup,
            row(
                "startup",
                "agent exec to ready (ms)".into(),
                "ms",
                2,
                false,
                Some(Target::Below(20.0)),
            ),
        ),
        (
            Figure::Startup,
            row(
                "startup_fwd",
                "relay exec to forward bound (ms)".into(),
                "ms",
                2,
                false,
                None,
            ),
        ),
        (
            Figure::Startup,
            row(
                "fresh_agent",
                "fresh agent RSS (MiB)".into(),
                "MiB",
                2,
                false,
                None,
            ),
        ),
        (
            Figure::Size,
            row(
                "size",
                "agent binary size (MiB)".into(),
                "MiB",
                2,
                false,
                Some(Target::Below(6.0)),
            ),
        ),
    ]
}

/// A path's burst failures, one value per run.
#[derive(Default)]
struct BurstMisses {
    refused: Vec<f64>,
    dropped: Vec<f64>,
    timed_out: Vec<f64>,
    first_error: Option<String>,
}

/// Collects the notes printed under the table, once each.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn add(&mut self, n: String) {
        if !self.0.contains(&n) {
            self.0.push(n);
        }
    }
}

fn per_path(
    paths: &[PathKind],
    mut f: impl FnMut(PathKind) -> Res<Option<f64>>,
) -> Res<[Option<f64>; 3]> {
    let mut out = [None; 3];
    for &p in paths {
        out[p.index()] = f(p)?;
    }
    Ok(out)
}

fn progress(what: &str, vals: &[Option<f64>; 3]) {
    let parts: Vec<String> = PathKind::ALL
        .iter()
        .filter_map(|p| vals[p.index()].map(|v| format!("{} {v:.2}", p.title())))
        .collect();
    eprintln!("  {what}: {}", parts.join(", "));
}

#[allow(clippy::too_many_lines)] // one linear script of figures reads better than many pieces
fn run() -> Res<()> {
    let cli = Cli::parse();
    procs::install_guards()?;
    let began = Instant::now();
    let cfg = Config::new(&cli);
    let selected = |f: Figure| cli.only.is_empty() || cli.only.contains(&f);
    let mut paths = cli.paths.clone();
    paths.sort();
    paths.dedup();
    let sockfwd = paths.contains(&PathKind::Sockfwd);
    let mut notes = Notes::default();
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the bench; use cargo run --release -p sockfwd-bench"
        );
    }

    let (model, cores, kernel) = sys::machine();
    let pinned = match cli.pin {
        None => None,
        Some(cpu) => {
            let cpu = cpu.unwrap_or(cores.saturating_sub(1));
            sys::pin_to_cpu(cpu)?;
            Some(cpu)
        }
    };
    let nofile = sys::raise_nofile(WANT_NOFILE)?;
    let idle = cfg.idle;
    if nofile < WANT_NOFILE {
        notes.add(format!(
            "RLIMIT_NOFILE could only be raised to {nofile} here (no CAP_SYS_RESOURCE for a higher hard limit)"
        ));
    }

    let mut bins = if sockfwd {
        Some(Bins::find(cli.bin_dir.as_deref())?)
    } else {
        None
    };
    if let Some(b) = &bins {
        let stale = b.stale();
        if !stale.is_empty() {
            let msg = format!(
                "{} older than the sources in the tree; cargo build --release -p sockfwd-agent -p sockfwd-relay",
                stale.join(" and ")
            );
            eprintln!("warning: {msg}");
            notes.add(msg);
        }
    }
    if let Some(b) = bins.as_mut().filter(|_| !cli.default_limits) {
        let set = b.raise_relay_limits()?;
        if !set.is_empty() {
            notes.add(format!(
                "relay started with its admission limits raised ({}): its defaults are policy (new connections \
                 per second and connections at once per forward) and would refuse the rate and idle-connection \
                 workloads; --default-limits measures the shipped defaults",
                set.join(", ")
            ));
        }
    }
    let socat = procs::which("socat");
    if paths.contains(&PathKind::Socat) && socat.is_none() {
        return Err("socat is not installed (apt-get install socat); or leave it out: --paths direct,sockfwd".into());
    }
    if !paths.contains(&PathKind::Direct) {
        notes.add("direct path not measured: no ratios".into());
    }

    let mut res = Results::default();
    let fwd_only = |v: f64| [None, None, Some(v)];

    if selected(Figure::Size) {
        if let Some(b) = &bins {
            let s = figures::agent_size(Some(b))?;
            res.record("size", fwd_only(s.bytes as f64 / MIB as f64));
            notes.add(if s.is_static {
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
        }
    }

    if selected(Figure::Startup) {
        if let Some(b) = &bins {
            eprintln!("startup: {} fresh agents", cfg.startup_runs);
            for _ in 0..cfg.startup_runs {
                let s = figures::startup(b)?;
                res.record("startup", fwd_only(s.ready_ms));
                res.record("startup_fwd", fwd_only(s.forward_ms));
                res.record("fresh_agent", fwd_only(s.fresh_rss_kib as f64 / 1024.0));
            }
            notes.add(
                "agent ready: from spawn (fork+exec) until both its control and streams sockets accept a connection \
                 (polled every 200 µs)"
                    .into(),
            );
        }
    }

    let needs_topology = [
        Figure::Throughput,
        Figure::Cpu,
        Figure::Latency,
        Figure::Rate,
        Figure::Burst,
    ]
    .into_iter()
    .any(selected);
    if needs_topology || selected(Figure::Memory) {
        let mut main_topo = None;
        if needs_topology {
            let t = Topology::start(&paths, bins.as_ref(), socat.as_deref(), cli.keep)?;
            eprintln!("daemons up in {}", t.dir().display());
            main_topo = Some(t);
        }
        let pats = [Pattern::new(0x5eed_0001), Pattern::new(0x5eed_0002)];
        let mut socat_stalled: Vec<Dir> = Vec::new();
        // Per path: refused, dropped, timed out (one value per run), first error.
        let mut burst_misses: [BurstMisses; 3] = Default::default();
        for run in 0..cfg.runs {
            eprintln!(
                "run {}/{} ({:.0} s so far)",
                run + 1,
                cfg.runs,
                began.elapsed().as_secs_f64()
            );
            if let Some(topo) = main_topo.as_mut() {
                if selected(Figure::Throughput) || selected(Figure::Cpu) {
                    let mut cpu = [[0.0f64; 2]; 3];
                    let mut ends = [0.0f64; 3];
                    let mut bytes = [0u64; 3];
                    for dir in [Dir::Up, Dir::Down, Dir::Both] {
                        let mut up = [None; 3];
                        let mut down = [None; 3];
                        for &p in &paths {
                            if p == PathKind::Socat && socat_stalled.contains(&dir) {
                                continue;
                            }
                            let t = match figures::transfer(
                                topo, p, dir, cfg.size, &pats, cfg.stall,
                            ) {
                                Ok(t) => t,
                                // socat is the reference, not the subject: note its failure and go on.
                                Err(e) if p == PathKind::Socat => {
                                    notes.add(format!(
                                    "socat ×2, {}: failed ({e}); not retried in later runs. Each socat is one \
                                     thread doing blocking writes: with bulk data both ways, #1 blocks writing to #2 \
                                     while #2 blocks writing to #1",
                                    dir.label()
                                ));
                                    socat_stalled.push(dir);
                                    topo.kill_forks(p);
                                    topo.check_alive()?;
                                    continue;
                                }
                                Err(e) => {
                                    return Err(format!("{} {}: {e}", p.title(), dir.label()))
                                }
                            };
                            topo.check_alive()?;
                            up[p.index()] = t.up;
                            down[p.index()] = t.down;
                            cpu[p.index()][0] += t.cpu[0];
                            cpu[p.index()][1] += t.cpu[1];
                            ends[p.index()] += t.ends_cpu;
                            bytes[p.index()] += t.bytes;
                        }
                        match dir {
                            Dir::Up => res.record("tp_up", up),
                            Dir::Down => res.record("tp_down", down),
                            Dir::Both => {
                                res.record("tp_both_up", up);
                                res.record("tp_both_down", down);
                            }
                        }
                        for (name, v) in [("up", up), ("down", down)] {
                            if v.iter().any(Option::is_some) {
                                progress(&format!("{} {name} GiB/s", dir.label()), &v);
                            }
                        }
                    }
                    let per_gib =
                        |i: usize, c: f64| (bytes[i] > 0).then(|| c / (bytes[i] as f64 / GIB));
                    let forwarder = |side: usize| {
                        let mut v = [None; 3];
                        for &p in &paths {
                            if p != PathKind::Direct {
                                v[p.index()] = per_gib(p.index(), cpu[p.index()][side]);
                            }
                        }
                        v
                    };
                    res.record("cpu_guest", forwarder(0));
                    res.record("cpu_host", forwarder(1));
                    let mut e = [None; 3];
                    for &p in &paths {
                        e[p.index()] = per_gib(p.index(), ends[p.index()]);
                    }
                    res.record("cpu_ends", e);
                }
                if selected(Figure::Latency) {
                    let mut med = [None; 3];
                    let mut p99 = [None; 3];
                    for &p in &paths {
                        let l = figures::latency(topo, p, cfg.latency_conns)?;
                        topo.check_alive()?;
                        med[p.index()] = Some(l.median_us);
                        p99[p.index()] = Some(l.p99_us);
                        if l.errors > 0 {
                            notes.add(format!(
                                "latency, {}: {} of {} connections failed in a run (first: {})",
                                p.title(),
                                l.errors,
                                cfg.latency_conns,
                                l.first_error.unwrap_or_default()
                            ));
                        }
                    }
                    progress("latency median µs", &med);
                    res.record("lat_med", med);
                    res.record("lat_p99", p99);
                }
                if selected(Figure::Rate) {
                    let mut errs = [None; 3];
                    let mut conn_cpu = [[None; 3]; 2];
                    let rate = per_path(&paths, |p| {
                        let r = figures::rate(topo, p, cfg.rate_clients, cfg.rate_time)?;
                        topo.check_alive()?;
                        errs[p.index()] = Some(r.errors as f64);
                        if p != PathKind::Direct {
                            conn_cpu[0][p.index()] = Some(r.cpu_us_per_conn[0]);
                            conn_cpu[1][p.index()] = Some(r.cpu_us_per_conn[1]);
                        }
                        if let Some(e) = r.first_error {
                            notes.add(format!("rate, {}: first error: {e}", p.title()));
                        }
                        if r.server_errors > 0 {
                            notes.add(format!(
                            "rate, {}: the server saw {} connections fail in a run (closed before the byte, or reset)",
                            p.title(),
                            r.server_errors
                        ));
                        }
                        Ok(Some(r.per_sec))
                    })?;
                    progress("connections/s", &rate);
                    res.record("rate", rate);
                    res.record("rate_err", errs);
                    res.record("conn_cpu_guest", conn_cpu[0]);
                    res.record("conn_cpu_host", conn_cpu[1]);
                }
                if selected(Figure::Burst) {
                    let served = per_path(&paths, |p| {
                        let b = figures::burst(topo, p, cfg.burst)?;
                        topo.check_alive()?;
                        let tally = &mut burst_misses[p.index()];
                        tally.refused.push(b.refused as f64);
                        tally.dropped.push(b.dropped as f64);
                        tally.timed_out.push(b.timed_out as f64);
                        if tally.first_error.is_none() {
                            tally.first_error = b.first_error;
                        }
                        Ok(Some(b.served as f64))
                    })?;
                    progress("burst served", &served);
                    res.record("burst", served);
                }
                topo.check_alive()?;
            }
            if selected(Figure::Memory) {
                let mut m = [[None; 3]; 8];
                for &p in &paths {
                    let n = if p == PathKind::Socat {
                        cfg.socat_idle.min(idle)
                    } else {
                        idle
                    };
                    // Fresh daemons: the baseline is the untouched idle daemon.
                    let mut fresh =
                        Topology::start(&[p], bins.as_ref(), socat.as_deref(), cli.keep)?;
                    let r = figures::memory(&fresh, p, n)?;
                    fresh.check_alive()?;
                    drop(fresh);
                    let i = p.index();
                    if p == PathKind::Sockfwd {
                        res.record("idle_agent", fwd_only(r.idle_rss_kib[0] as f64 / 1024.0));
                        res.record("idle_relay", fwd_only(r.idle_rss_kib[1] as f64 / 1024.0));
                    }
                    if let Some(l) = &r.limited {
                        notes.add(format!(
                            "memory, {}: {} idle connections instead of {n}, limited by {l}",
                            p.title(),
                            r.conns
                        ));
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
                    if r.conns != idle && r.limited.is_none() {
                        notes.add(format!(
                            "memory, {}: measured with {} idle connections{}",
                            p.title(),
                            r.conns,
                            if p == PathKind::Socat {
                                " (each costs two forked processes)"
                            } else {
                                ""
                            }
                        ));
                    }
                    if r.errors > 0 {
                        notes.add(format!(
                            "memory, {}: {} connections failed to open (first: {})",
                            p.title(),
                            r.errors,
                            r.first_error.unwrap_or_default()
                        ));
                    }
                    if run + 1 == cfg.runs {
                        let fds = r
                            .fds_per_conn
                            .filter(|_| p != PathKind::Direct)
                            .map(|f| format!(", descriptors per conn {:.2} / {:.2}", f[0], f[1]))
                            .unwrap_or_default();
                        notes.add(format!(
                            "memory, {} (last run): sockets in use per conn {}{fds}",
                            p.title(),
                            r.sockets_per_conn.map_or("?".into(), |s| format!("{s:.2}")),
                        ));
                    }
                }
                progress("guest-side KiB per idle conn", &m[2]);
                progress("host-side KiB per idle conn", &m[3]);
                for (key, v) in [
                    "mem_guest",
                    "mem_host",
                    "mem_guest_per",
                    "mem_host_per",
                    "mem_kernel_per",
                    "pss_guest_per",
                    "pss_host_per",
                    "mem_conns",
                ]
                .into_iter()
                .zip(m)
                {
                    res.record(key, v);
                }
            }
        }
        if selected(Figure::Memory) {
            notes.add(
                "memory: each run starts fresh daemons; per connection = (RSS with the idle connections open \
                 - RSS of the idle daemon just started, forward bound) / connections; idle RSS is that second figure"
                    .into(),
            );
            notes.add(
                "kernel memory: change in Slab + KernelStack + PageTables (/proc/meminfo) per connection, machine-wide, \
                 so other activity on the machine adds noise; the direct column is the cost of the two end sockets alone"
                    .into(),
            );
        }
        for p in PathKind::ALL {
            let BurstMisses {
                refused,
                dropped,
                timed_out,
                first_error: first,
            } = &burst_misses[p.index()];
            if refused
                .iter()
                .chain(dropped)
                .chain(timed_out)
                .any(|&x| x > 0.0)
            {
                let range = |v: &[f64]| {
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(0.0, f64::max);
                    if lo == hi {
                        format!("{lo}")
                    } else {
                        format!("{lo}–{hi}")
                    }
                };
                notes.add(format!(
                    "burst, {}: per run {} refused at connect (listen backlog full), {} closed without the echo, \
                     {} timed out; first error: {}",
                    p.title(),
                    range(refused),
                    range(dropped),
                    range(timed_out),
                    first.as_deref().unwrap_or("")
                ));
            }
        }
        if selected(Figure::Burst) {
            notes.add(
                "burst: non-blocking connects (as tokio and Go clients do), so a full listen backlog is a refused \
                 connection; socat listens with its default backlog of 5"
                    .into(),
            );
        }
    }

    let all_rows = rows(&Config { idle, ..cfg });
    let shown: Vec<Row> = all_rows
        .into_iter()
        .filter(|(f, _)| selected(*f))
        .map(|(_, r)| r)
        .collect();
    let (met, missed) = res.tally(&shown);
    let mode = if cli.short {
        "short (smoke test: small sizes, figures are rough)"
    } else {
        "full"
    };
    println!("### sockfwd benchmark, {}", sys::utc_now());
    println!();
    println!("- machine: {model}, {cores} CPUs, Linux {kernel}");
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!(
        "- sockfwd {}; command: `sockfwd-bench {}`",
        git_describe().map_or_else(|| "(commit unknown)".into(), |c| format!("commit {c}")),
        args.join(" ")
    );
    println!(
        "- mode: {mode}; {} runs; {} MiB per transfer and direction; {}",
        cfg.runs,
        cfg.size / MIB,
        match pinned {
            Some(c) => format!("bench, both ends and all daemons pinned to CPU {c}"),
            None => "not pinned".into(),
        }
    );
    println!(
        "- cells: median (min–max) over runs; ratios are taken per run against direct in the same run; \
         the socat path is two chained `socat -b 262144 UNIX-LISTEN:..,fork UNIX-CONNECT:..`"
    );
    println!();
    print!("{}", res.table(&shown));
    println!();
    println!("Targets (issue 5): {met} met, {missed} missed. Reference (nerdbox over Unix sockets on this machine): throughput 0.28 up / 0.17 down of direct, connect-to-first-byte ≈ 12× direct, two thirds of a 200-connection burst dropped.");
    if !notes.0.is_empty() {
        println!();
        for n in &notes.0 {
            println!("- {n}");
        }
    }
    eprintln!("done in {:.0} s", began.elapsed().as_secs_f64());
    Ok(())
}
