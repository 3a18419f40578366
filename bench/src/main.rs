//! sockfwd-bench: measures sockfwd against the paths it replaces and prints a
//! Markdown table of ratios. Two modes:
//!
//! - over Unix sockets on the host (default, [`unix`]): direct, socat ×2 and
//!   sockfwd side by side (issue 5), plus real clients (redis-benchmark, pgbench);
//! - inside a microVM (`--vm`, [`vm`]): raw vsock, a minimal in-guest relay and
//!   sockfwd from a guest client to a host server, in one boot (issue 12).
//!
//! Run `cargo run --release -p sockfwd-bench -- --help`; see bench/README.md.

mod bench;
mod figures;
mod pattern;
mod procs;
mod report;
mod server;
mod suite;
mod sys;
mod topology;
mod unix;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::bench::Figure;
use crate::topology::PathKind;
use crate::vm::KernelChoice;

/// Benchmark: sockfwd against direct and socat ×2 over Unix sockets, or against
/// raw vsock and a minimal relay inside a microVM (--vm); ratios to the first path.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Cli {
    /// CI smoke mode: small sizes, few runs; no thresholds (Unix: ~20 s; --vm: a couple of minutes).
    #[arg(long)]
    short: bool,
    /// Runs (reps) per figure (default: 5, or 2 with --short).
    #[arg(long, visible_alias = "reps", value_name = "N")]
    runs: Option<usize>,
    /// Pin the bench, both ends and every daemon to one CPU (default: the last one).
    #[arg(long, value_name = "CPU", num_args = 0..=1, conflicts_with = "vm")]
    pin: Option<Option<usize>>,
    /// Only these figures (repeatable or comma-separated); --vm knows throughput, latency, rate.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// Only these paths (direct is needed for the ratios).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL.to_vec(), conflicts_with = "vm")]
    paths: Vec<PathKind>,
    /// MiB per transfer and direction (default: 1024, or 64 with --short; --vm: 256, or 16).
    #[arg(long, visible_alias = "bytes-mib", value_name = "MIB")]
    size_mib: Option<usize>,
    /// Sequential connections per latency run (default: 5000, or 300 with --short; --vm: 500, or 50).
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Idle connections for the memory figure (default: 10000, or 300 with --short).
    #[arg(long, value_name = "N", conflicts_with = "vm")]
    idle: Option<usize>,
    /// Run the relay with its default admission limits (rate, connections at once).
    #[arg(long)]
    default_limits: bool,
    /// An extra flag for every sockfwd relay the bench starts (repeatable; both
    /// modes): e.g. --relay-arg=--stream-pool=0 measures without pre-opened streams.
    #[arg(long = "relay-arg", value_name = "FLAG", allow_hyphen_values = true)]
    relay_args: Vec<String>,
    /// Keep the temp dir with the daemons' logs (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Directory holding release builds of sockfwd-agent and sockfwd-relay. With
    /// --vm: the relay and a static agent, run instead of building the tree's.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Measure inside a microVM (QEMU + vhost-device-vsock): raw vsock, a minimal
    /// in-guest relay and sockfwd, from a guest client to a host server.
    #[arg(long)]
    vm: bool,
    /// Guest kernel (--vm): Debian bookworm's 6.1 cloud kernel, or 6.12 from bookworm-backports.
    #[arg(long, value_enum, default_value_t = KernelChoice::V6_1, requires = "vm")]
    vm_kernel: KernelChoice,
    /// Guest vCPUs (--vm).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "vm")]
    vm_vcpus: u32,
    /// Guest memory in MiB (--vm).
    #[arg(long, value_name = "MIB", default_value_t = 512, requires = "vm")]
    vm_mem: u32,
    /// Concurrent guest clients of the connection-rate figure (--vm).
    #[arg(long, value_name = "N", default_value_t = 8, requires = "vm")]
    vm_clients: usize,
}

/// `git describe --always --dirty` of the workspace, if git is there.
pub fn git_describe() -> Option<String> {
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
    let cli = Cli::parse();
    let result = procs::install_guards().and_then(|()| {
        if cfg!(debug_assertions) {
            eprintln!(
                "warning: this is a debug build of the bench; use cargo run --release -p sockfwd-bench"
            );
        }
        if cli.vm {
            vm::run(&cli)
        } else {
            unix::run(&cli)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sockfwd-bench: {e}");
            procs::kill_all();
            ExitCode::FAILURE
        }
    }
}
