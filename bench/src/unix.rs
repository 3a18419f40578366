//! The Unix-socket bench (the default mode): direct, socat ×2 and sockfwd
//! side by side in one temp dir, printed as one table with ratios to direct.

use crate::bench::{Bench, Config, MIB};
use crate::procs::{self, Bins};
use crate::report::Columns;
use crate::sys::{self, Res};
use crate::topology::PathKind;
use crate::Cli;

/// Descriptors the bench asks for (each daemon inherits the limit).
const WANT_NOFILE: u64 = 262_144;

/// The table's columns.
const COLUMNS: Columns = Columns {
    titles: ["direct", "socat ×2", "sockfwd"],
    subject_to_reference: false,
};

/// Runs the selected figures on the selected paths and prints the table.
pub fn run(cli: &Cli) -> Res<()> {
    let mut paths = cli.paths.clone();
    paths.sort();
    paths.dedup();
    let cfg = Config::new(cli.short, cli.runs, cli.size_mib, cli.idle, cli.connections);
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
        if let Some(note) = b.raise_relay_limits()? {
            bench.notes.add(note);
        }
    }
    if let Some(note) = bench
        .bins
        .as_mut()
        .and_then(|b| b.add_relay_args(&cli.relay_args))
    {
        bench.notes.add(note);
    }
    if !bench.paths.contains(&PathKind::Direct) {
        bench
            .notes
            .add("direct path not measured: no ratios".into());
    }

    bench.run_all()?;

    let rows = bench.rows();
    let (met, missed) = bench.res.tally(&rows, &COLUMNS);
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
        crate::git_describe().map_or_else(|| "(commit unknown)".into(), |c| format!("commit {c}")),
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
    print!("{}", bench.res.table(&rows, &COLUMNS));
    println!();
    println!(
        "Targets (issue 12: throughput each way, connect to first byte median, rate, real clients; the others: issue 5): {met} met, {missed} missed. Reference (nerdbox over Unix sockets on this machine): \
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
