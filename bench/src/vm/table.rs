//! The VM bench's printed result: the header naming the machine, the guest
//! (kernel, accel, vCPUs), the commit and the command, the table, and the
//! notes saying how each figure is taken.

use super::figures::{self, VmConfig};
use super::COLUMNS;
use crate::bench::Notes;
use crate::report::Results;
use crate::sys;
use crate::Cli;

/// The host's 1-minute load average (other work shares its CPUs).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// What the header names.
pub struct Setup {
    /// Release and choice.
    pub guest_kernel: String,
    /// As the guest counts them.
    pub vcpus: String,
    /// kvm or tcg.
    pub accel: String,
    /// QEMU, vhost-device-vsock and kernel package versions.
    pub versions: String,
    /// The load average when the bench started.
    pub load_before: String,
}

/// How the figures are taken, for under the table.
pub fn closing_notes(notes: &mut Notes) {
    notes.add(
        "paths: raw vsock = the guest client's AF_VSOCK connection to the host (CID 2), which vhost-device-vsock \
         turns into a connection to the server's `<hybrid socket>_<port>`; minimal relay = a guest Unix listener \
         copied to such a vsock connection by one epoll thread for all connections (read/write through a 64 KiB \
         buffer, no thread or pipe per connection, the first EOF ends a connection); sockfwd = the static \
         agent in the guest, the release relay on the host over hvsock://, a --forward to the server. Same guest \
         client and host server (bench/vmbench, static) on every path"
            .into(),
    );
    notes.add(
        "CPU: guest CPU = QEMU's utime + stime (/proc/PID/stat, every thread: vCPU, TCG, device emulation) over \
         the figure; per GiB from the transfers, per connection from the rate figure. The in-guest forwarder's \
         share is its own utime + stime read inside the guest (10 ms ticks). Host relay and vhost-device-vsock: \
         their utime + stime over the same figures"
            .into(),
    );
    notes.add(
        "integrity: the host server checks every byte the guest sends; the guest checks 16 bytes at every 4 KiB \
         boundary of what it receives and the exact count (a full check would cost emulated CPU in every column)"
            .into(),
    );
    notes.add(
        "reference (an outside check, QEMU TCG, 1 vCPU, vhost-device-vsock, ratios to raw vsock in the same boot): \
         guest→host 0.50, host→guest 0.41, connect + 1-byte round trip p50 10.7× (8.2 ms vs 0.80), p99 3.7×, \
         guest CPU per connection 8.9×"
            .into(),
    );
}

/// Prints the header, the table and the notes.
pub fn print_table(cli: &Cli, cfg: &VmConfig, setup: &Setup, res: &Results, notes: &Notes) {
    let rows: Vec<_> = figures::rows(cfg)
        .into_iter()
        .filter(|(f, _)| cli.only.is_empty() || cli.only.contains(f))
        .map(|(_, r)| r)
        .collect();
    let (model, cores, kernel) = sys::machine();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = if cli.short {
        "short (smoke test: small sizes, figures are rough)"
    } else {
        "full"
    };
    println!("### sockfwd VM benchmark, {}", sys::utc_now());
    println!();
    println!(
        "- host: {model}, {cores} CPUs, Linux {kernel}; load average (1 min) {} before, {} after",
        setup.load_before,
        load_average()
    );
    println!(
        "- guest: Linux {}, accel {}, {} vCPU, {} MiB; {}",
        setup.guest_kernel, setup.accel, setup.vcpus, cli.vm_mem, setup.versions
    );
    println!(
        "- sockfwd {}; command: `sockfwd-bench {}`",
        crate::git_describe().map_or_else(|| "(commit unknown)".into(), |c| format!("commit {c}")),
        args.join(" ")
    );
    println!(
        "- mode: {mode}; {} reps in one boot; {} MiB per transfer and direction; {} sequential connections per \
         latency run; rate: {} guest clients for {:.0} s",
        cfg.reps,
        cfg.bytes >> 20,
        cfg.conns,
        cfg.clients,
        cfg.rate_time.as_secs_f64()
    );
    println!(
        "- cells: median (min–max) over reps; ratios are taken per rep against raw vsock in the same boot; \
         within a rep the paths take turns, starting from a different one each rep"
    );
    println!();
    print!("{}", res.table(&rows, &COLUMNS));
    println!();
    let (met, missed) = res.tally(&rows, &COLUMNS);
    println!(
        "Targets (issue 12): {met} met, {missed} missed. Round trips and guest CPU per connection are ratios to raw \
         vsock, throughput to the minimal relay (its column), each taken per rep in the same boot."
    );
    println!();
    for n in &notes.0 {
        println!("- {n}");
    }
}
