//! `sockfwd-bench --vm`: the forwarding path measured where users run it,
//! inside a microVM (QEMU, vhost-device-vsock), where every guest instruction
//! and vsock packet costs the guest's vCPU.
//!
//! One boot, three paths from the same static guest client to the same host
//! server (`bench/vmbench`), taking turns within each rep:
//!
//! - **raw vsock**: the client connects AF_VSOCK to the host (CID 2,
//!   [`RAW_PORT`]); vhost-device-vsock turns that into a connection to the
//!   server's `<hybrid socket>_<port>`. The floor.
//! - **minimal relay**: a Unix listener in the guest copied to a vsock
//!   connection to the host ([`MINRELAY_PORT`]) by one epoll thread: the
//!   limit of any design with a hop in the guest.
//! - **sockfwd**: the static agent in the guest, the release relay on the host
//!   over `hvsock://`, a `--forward` to the server.
//!
//! Ratios are per rep against raw vsock in the same boot.

mod build;
mod control;
mod figures;
mod table;
mod tooling;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::control::Control;
use self::figures::{Probes, Runner, VmConfig};
use self::table::{closing_notes, load_average, print_table, Setup};
use self::tooling::Tooling;
use crate::bench::{Figure, Notes};
use crate::procs::{self, Bins, Daemon};
use crate::report::{Columns, Results};
use crate::sys::Res;
use crate::Cli;

// The host ports the guest dials are far above anything vhost-device-vsock
// 0.3.0 hands out to host-initiated connections: it numbers those from 0 up,
// and once its counter reaches a port that a guest-initiated connection holds
// open, it refuses every further hybrid CONNECT (its allocate_local_port gives
// up at the first taken number without moving on). With the control channel
// on port 5100, sockfwd's streams all failed after ~5,100 connections.
/// Host port of the raw path's server socket.
pub const RAW_PORT: u32 = 2_000_000_000;
/// Host port the minimal relay connects to.
pub const MINRELAY_PORT: u32 = 2_000_000_001;
/// Guest port of the echo listener for host-initiated connections.
pub const GUEST_ECHO_PORT: u32 = 5200;
/// The sockfwd forward's guest listener.
const FORWARD_PATH: &str = "/run/sockfwd/bench.sock";
/// The minimal relay's guest listener.
const MINRELAY_PATH: &str = "/run/minrelay.sock";
/// Why the bench's own vsock writes are capped on the 6.12 kernel.
const VSOCK_SPLIT_NOTE: &str = "guest kernel 6.12: it builds vsock packets over 32 KiB from non-linear skbs, \
     split over several virtqueue descriptors (Linux 6693731487a8, in 6.12.y), and vhost-device-vsock 0.3.0 \
     takes a packet's data from one descriptor only: the connection stalls. The raw client and the minimal \
     relay therefore write at most 32 KiB at a time here, as the agent does on kernels 6.12 and later (64 KiB \
     before)";
/// The kernel command line word that lets `vmbench` open AF_VSOCK (its `sys::GUEST_MARK`).
const GUEST_MARK: &str = "vmbench.guest=1";

/// The table's columns.
const COLUMNS: Columns = Columns {
    titles: ["raw vsock", "minimal relay", "sockfwd"],
    subject_to_reference: true,
};

/// The guest kernel to boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// Debian bookworm's cloud kernel.
    #[value(name = "6.1")]
    V6_1,
    /// bookworm-backports' cloud kernel.
    #[value(name = "6.12")]
    V6_12,
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelChoice::V6_1 => "6.1",
            KernelChoice::V6_12 => "6.12",
        })
    }
}

/// One way from the guest client to the host server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmPath {
    /// AF_VSOCK straight to the host.
    Raw,
    /// The minimal in-guest Unix-to-vsock relay.
    MinRelay,
    /// sockfwd-agent and sockfwd-relay.
    Sockfwd,
}

impl VmPath {
    /// All paths, in table order.
    pub const ALL: [VmPath; 3] = [VmPath::Raw, VmPath::MinRelay, VmPath::Sockfwd];

    /// Column index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Column title.
    pub fn title(self) -> &'static str {
        COLUMNS.titles[self.index()]
    }

    /// Where the guest client connects (a `vmbench` target).
    pub fn target(self) -> String {
        match self {
            VmPath::Raw => format!("vsock:2:{RAW_PORT}"),
            VmPath::MinRelay => format!("unix:{MINRELAY_PATH}"),
            VmPath::Sockfwd => format!("unix:{FORWARD_PATH}"),
        }
    }
}

/// Where vhost-device-vsock connects when the guest dials host `port`.
pub fn host_port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

fn config(cli: &Cli) -> Res<VmConfig> {
    if let Some(f) = cli
        .only
        .iter()
        .find(|f| !matches!(f, Figure::Throughput | Figure::Latency | Figure::Rate))
    {
        return Err(format!(
            "--vm measures throughput, latency and rate; not {f:?}"
        ));
    }
    let full = !cli.short;
    let mib = cli.size_mib.unwrap_or(if full { 256 } else { 16 }).max(1);
    Ok(VmConfig {
        reps: cli.runs.unwrap_or(if full { 5 } else { 2 }).max(1),
        bytes: u64::try_from(mib)
            .unwrap_or(u64::MAX)
            .saturating_mul(1 << 20),
        conns: cli
            .connections
            .unwrap_or(if full { 500 } else { 50 })
            .max(1),
        clients: cli.vm_clients.max(1),
        rate_time: Duration::from_millis(if full { 3000 } else { 1000 }),
    })
}

/// Boots the VM, measures, prints the table.
pub fn run(cli: &Cli) -> Res<()> {
    let began = Instant::now();
    let cfg = config(cli)?;
    let load_before = load_average();
    // Under /tmp: the hybrid socket's path, plus _PORT, must stay short.
    let dir = tempfile::Builder::new()
        .prefix("sfvb.")
        .disable_cleanup(cli.keep)
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    if cli.keep {
        eprintln!("run dir (kept): {}", dir.path().display());
    }
    match measure(cli, &cfg, dir.path(), began, load_before) {
        Ok(()) => Ok(()),
        Err(e) => {
            // The VM and the daemons are stopped by now; their logs stay.
            let kept = dir.keep();
            Err(format!(
                "{e}\n(console, QEMU, relay and server logs kept in {})",
                kept.display()
            ))
        }
    }
}

/// Everything between the run dir's creation and the table.
fn measure(cli: &Cli, cfg: &VmConfig, d: &Path, began: Instant, load_before: String) -> Res<()> {
    let tooling = Tooling::locate(&d.join("microvm.log"), cli.vm_kernel)?;
    eprintln!(
        "VM tooling: install / check (log {})",
        d.join("microvm.log").display()
    );
    tooling.install()?;
    eprintln!(
        "build: release relay, static agent and vmbench ({:.0} s so far)",
        began.elapsed().as_secs_f64()
    );
    let built = build::build(&d.join("build.log"), cli.bin_dir.as_deref())?;
    let mut notes = Notes::default();
    if let Some(dir) = &cli.bin_dir {
        notes.add(format!(
            "daemons: sockfwd-relay and the static sockfwd-agent from {} (--bin-dir), not built from this tree",
            dir.display()
        ));
    }
    let mut bins = Bins {
        agent: built.agent.clone(),
        relay: built.relay.clone(),
        relay_extra: Vec::new(),
    };
    if !cli.default_limits {
        if let Some(n) = bins.raise_relay_limits()? {
            notes.add(n);
        }
    }
    if let Some(n) = bins.add_relay_args(&cli.relay_args) {
        notes.add(n);
    }
    let initramfs = d.join("initramfs.cpio");
    // See VSOCK_SPLIT_NOTE: on 6.12 the bench's own vsock writers stay at 32 KiB.
    let write_max = if cli.vm_kernel == KernelChoice::V6_12 {
        notes.add(VSOCK_SPLIT_NOTE.into());
        " --vsock-write-max 32768"
    } else {
        ""
    };
    let guest_cmd = format!(
        "NO_COLOR=1 /bin/vmbench guest --control-port {} --echo-port {GUEST_ECHO_PORT} \
         --relay-listen {MINRELAY_PATH} --relay-to vsock:2:{MINRELAY_PORT}{write_max} -- /bin/sockfwd-agent",
        control::CONTROL_PORT
    );
    tooling.initramfs(&initramfs, &[&built.agent, &built.vmbench], &guest_cmd)?;

    eprintln!("boot ({:.0} s so far)", began.elapsed().as_secs_f64());
    let machine = tooling.start(
        &d.join("vm"),
        &initramfs,
        cli.vm_vcpus,
        cli.vm_mem,
        GUEST_MARK,
    )?;
    let env = machine.env()?.clone();
    let listener = control::listen(&env.uds)?;
    let socks = [
        host_port_path(&env.uds, RAW_PORT),
        host_port_path(&env.uds, MINRELAY_PORT),
        d.join("fwd.sock"),
    ];
    let args: Vec<OsString> = std::iter::once("serve".into())
        .chain(socks.iter().map(|p| p.clone().into_os_string()))
        .collect();
    let mut server = Daemon::spawn(
        "vmbench serve",
        &built.vmbench,
        &args,
        &d.join("server.log"),
    )?;
    for s in &socks {
        procs::wait_bound(s, &mut server, Duration::from_secs(10))?;
    }
    let mut ctl = Control::accept(&listener, Duration::from_secs(180), || {
        machine.check_alive()
    })
    .map_err(|e| {
        format!(
            "{e}; end of the guest console:\n{}",
            machine.console_tail(20)
        )
    })?;
    let hello = ctl.call("hello", Duration::from_secs(30))?;
    eprintln!(
        "guest up ({:.0} s so far): Linux {}",
        began.elapsed().as_secs_f64(),
        hello.text("kernel")?
    );

    let mut relay_args: Vec<OsString> = vec![
        "--control".into(),
        format!("hvsock://{}:1025", env.uds.display()).into(),
        "--streams".into(),
        format!("hvsock://{}:1026", env.uds.display()).into(),
        "--forward".into(),
        format!("{FORWARD_PATH}:{}", socks[2].display()).into(),
    ];
    relay_args.extend(bins.relay_extra.iter().cloned());
    let mut relay = Daemon::spawn(
        "sockfwd-relay",
        &bins.relay,
        &relay_args,
        &d.join("relay.log"),
    )?;
    if let Err(e) = ctl.call(
        &format!("wait-path {FORWARD_PATH} 60"),
        Duration::from_secs(90),
    ) {
        relay.check_alive()?;
        return Err(format!(
            "{e}; end of the relay's log:\n{}",
            relay.log_tail(20)
        ));
    }
    for p in VmPath::ALL {
        ctl.call(
            &format!("latency {} 3", p.target()),
            Duration::from_secs(60),
        )
        .map_err(|e| format!("{}: the path does not work: {e}", p.title()))?;
    }

    let mut runner = Runner {
        ctl: &mut ctl,
        probes: Probes {
            qemu: env.qemu_pid,
            vdv: env.vdv_pid,
            relay: relay.pid(),
        },
        cfg,
        only: &cli.only,
        uds: env.uds.clone(),
        res: Results::default(),
        notes,
    };
    for rep in 0..cfg.reps {
        eprintln!(
            "rep {}/{} ({:.0} s so far)",
            rep + 1,
            cfg.reps,
            began.elapsed().as_secs_f64()
        );
        runner.rep(rep).map_err(|e| {
            if cli.vm_kernel == KernelChoice::V6_12 {
                format!("{e} (on this kernel a stalled guest→host transfer is likely the split packets: {VSOCK_SPLIT_NOTE})")
            } else {
                e
            }
        })?;
        relay.check_alive()?;
        server.check_alive()?;
        machine.check_alive()?;
    }
    let (res, mut notes) = (
        std::mem::take(&mut runner.res),
        std::mem::take(&mut runner.notes),
    );
    let _ = ctl.call("quit", Duration::from_secs(10));
    drop(relay);
    drop(machine);
    drop(server);

    let setup = Setup {
        guest_kernel: format!("{} ({} kernel)", env.kernel_release, cli.vm_kernel),
        vcpus: hello.text("cpus")?.to_string(),
        accel: env.accel.clone(),
        versions: tooling.versions(),
        load_before,
    };
    closing_notes(&mut notes);
    print_table(cli, cfg, &setup, &res, &notes);
    eprintln!("done in {:.0} s", began.elapsed().as_secs_f64());
    Ok(())
}
