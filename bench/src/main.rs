//! sockfwd-bench: measures direct, socat ×2 and sockfwd side by side over
//! Unix sockets (issue 5) and prints a Markdown table with ratios to direct.
//!
//! Run `cargo run --release -p sockfwd-bench -- --help`; see bench/README.md.

mod figures;
mod pattern;
mod procs;
mod report;
mod server;
mod suite;
mod sys;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::procs::Bins;
use crate::suite::{Bench, Config, Figure, MIB};
use crate::sys::Res;
use crate::topology::PathKind;

/// Descriptors the bench asks for (each daemon inherits the limit).
const WANT_NOFILE: u64 = 262_144;

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

fn run() -> Res<()> {
    let cli = Cli::parse();
    procs::install_guards()?;
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build of the bench; use cargo run --release -p sockfwd-bench"
        );
    }
    let mut paths = cli.paths.clone();
    paths.sort();
    paths.dedup();
    let cfg = Config::new(cli.short, cli.runs, cli.size_mib, cli.idle);
    let bins = if paths.contains(&PathKind::Sockfwd) {
        Some(Bins::find(cli.bin_dir.as_deref())?)
    } else {
        None
    };
    let socat = procs::which("socat");
    if paths.contains(&PathKind::Socat) && socat.is_none() {
        return Err("socat is not installed (apt-get install socat); or leave it out: --paths direct,sockfwd".into());
    }
    let mut bench = Bench::new(cfg, paths, cli.only.clone(), bins, socat);
    bench.keep = cli.keep;

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
    if nofile < WANT_NOFILE {
        bench.notes.add(format!(
            "RLIMIT_NOFILE could only be raised to {nofile} here (no CAP_SYS_RESOURCE for a higher hard limit)"
        ));
    }
    if let Some(b) = &bench.bins {
        let stale = b.stale();
        if !stale.is_empty() {
            let msg = format!(
                "{} older than the sources in the tree; cargo build --release -p sockfwd-agent -p sockfwd-relay",
                stale.join(" and ")
            );
            eprintln!("warning: {msg}");
            bench.notes.add(msg);
        }
    }
    if let Some(b) = bench.bins.as_mut().filter(|_| !cli.default_limits) {
        let set = b.raise_relay_limits()?;
        if !set.is_empty() {
            bench.notes.add(format!(
                "relay started with its admission limits raised ({}): its defaults are policy (new connections \
                 per second and connections at once, per forward and in all) and can cap the rate and \
                 idle-connection figures; --default-limits measures the shipped defaults",
                set.join(", ")
            ));
        }
    }
    if !bench.paths.contains(&PathKind::Direct) {
        bench
            .notes
            .add("direct path not measured: no ratios".into());
    }

    bench.run_all()?;

    let rows = bench.rows();
    let (met, missed) = bench.res.tally(&rows);
    let mode = if cli.short {
        "short (smoke test: small sizes, figures are rough)"
    } else {
        "full"
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("### sockfwd benchmark, {}", sys::utc_now());
    println!();
    println!("- machine: {model}, {cores} CPUs, Linux {kernel}");
    println!(
        "- sockfwd {}; command: `sockfwd-bench {}`",
        git_describe().map_or_else(|| "(commit unknown)".into(), |c| format!("commit {c}")),
        args.join(" ")
    );
    println!(
        "- mode: {mode}; {} runs; {} MiB per transfer and direction; {}",
        bench.cfg.runs,
        bench.cfg.size / MIB,
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
    print!("{}", bench.res.table(&rows));
    println!();
    println!(
        "Targets (issue 5): {met} met, {missed} missed. Reference (nerdbox over Unix sockets on this machine): \
         throughput 0.28 up / 0.17 down of direct, connect-to-first-byte ≈ 12× direct, two thirds of a \
         200-connection burst dropped."
    );
    if !bench.notes.0.is_empty() {
        println!();
        for n in &bench.notes.0 {
            println!("- {n}");
        }
    }
    eprintln!("done in {:.0} s", bench.elapsed());
    Ok(())
}
