//! `vmbench guest ...`: the guest's side of the VM bench, run as the
//! initramfs payload. It starts the agent and the minimal relay, serves a
//! vsock echo port for host-initiated connections, then dials the host's
//! control port and runs the figures the host asks for, one command line in,
//! one answer line out:
//!
//! ```text
//! hello                          -> ok kernel=6.1.0-.. cpus=1 agent_pid=N relay_pid=N
//! wait-path PATH SECS            -> ok  (the path exists)
//! up|down TARGET BYTES           -> ok secs=S
//! latency TARGET COUNT           -> ok n=N errors=N p50_us=X p99_us=X [first_error=..]
//! rate TARGET CLIENTS MILLIS     -> ok conns=N errors=N secs=S [first_error=..]
//! cpu                            -> ok agent=S relay=S  (their CPU seconds so far)
//! quit                           -> ok, then the payload ends and the guest powers off
//! ```
//!
//! Any failure is `err MESSAGE`. The host reads qemu's CPU time around each
//! command, so nothing else runs in the guest while one does.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::client;
use crate::pattern::Pattern;
use crate::sys;
use crate::wire::Target;

/// What the guest runs; see `main.rs` for the flags.
pub struct GuestOpts {
    /// Host port (CID 2) of the bench's control listener.
    pub control_port: u32,
    /// Guest vsock port of the echo listener for host-initiated connections.
    pub echo_port: u32,
    /// The minimal relay's Unix listener.
    pub relay_listen: String,
    /// Where the minimal relay connects.
    pub relay_to: String,
    /// Largest write to a vsock socket. Guest kernels that build vsock
    /// packets from non-linear skbs (6.12 from bookworm-backports) split a
    /// packet over 32 KiB across several descriptors, which
    /// vhost-device-vsock 0.3.0 does not take: the connection stalls. The
    /// bench's own writers stay under it there.
    pub vsock_write_max: usize,
    /// The agent's command line.
    pub agent: Vec<String>,
}

/// How long the guest keeps trying the host's control port.
const DIAL_FOR: Duration = Duration::from_secs(120);
/// USER_HZ, the unit of /proc/PID/stat times, on x86_64.
const CLK_TCK: f64 = 100.0;

/// Starts the daemons and serves the host's commands until `quit`.
pub fn run(o: &GuestOpts) -> Result<(), String> {
    if !sys::in_guest() {
        return Err(format!(
            "guest: not the benchmark's guest (no {} on the kernel command line)",
            sys::GUEST_MARK
        ));
    }
    let (prog, args) = o
        .agent
        .split_first()
        .ok_or("guest: no agent command after --")?;
    let mut agent = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {prog}: {e}"))?;
    let mut relay = Command::new("/proc/self/exe")
        .args(["relay", "--listen", &o.relay_listen, "--to", &o.relay_to])
        .args(["--vsock-write-max", &o.vsock_write_max.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("start the minimal relay: {e}"))?;
    let echo = sys::vsock_listen(o.echo_port).map_err(|e| format!("echo port: {e}"))?;
    thread::spawn(move || echo_loop(&echo));
    println!(
        "VMBENCH: guest up, agent pid {}, minimal relay pid {}",
        agent.id(),
        relay.id()
    );
    let result = serve_host(o, &agent, &relay);
    for child in [&mut agent, &mut relay] {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn echo_loop(listener: &OwnedFd) {
    loop {
        match sys::accept(listener) {
            Ok(mut c) => {
                thread::spawn(move || {
                    let mut b = [0u8; 1];
                    if c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {
                        let mut sink = [0u8; 64];
                        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
                    }
                });
            }
            Err(e) => {
                eprintln!("vmbench guest: echo accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn dial_host(port: u32) -> Result<File, String> {
    let start = Instant::now();
    loop {
        match sys::vsock_connect(2, port) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > DIAL_FOR => {
                return Err(format!("control: host port {port}: {e}"))
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn serve_host(o: &GuestOpts, agent: &Child, relay: &Child) -> Result<(), String> {
    let conn = dial_host(o.control_port)?;
    let mut out = conn.try_clone().map_err(|e| format!("control: {e}"))?;
    let pattern = Pattern::new();
    for line in BufReader::new(conn).lines() {
        let line = line.map_err(|e| format!("control: read: {e}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            let _ = writeln!(out, "ok");
            return Ok(());
        }
        let answer = match command(&words, &pattern, agent, relay, o.vsock_write_max) {
            Ok(a) => format!("ok {a}"),
            Err(e) => format!("err {e}"),
        };
        writeln!(out, "{}", answer.replace('\n', " "))
            .map_err(|e| format!("control: write: {e}"))?;
    }
    Err("control: the host closed the connection without quit".into())
}

fn arg<T: std::str::FromStr>(words: &[&str], i: usize, what: &str) -> Result<T, String> {
    words
        .get(i)
        .ok_or_else(|| format!("{}: missing {what}", words.first().unwrap_or(&"")))?
        .parse()
        .map_err(|_| format!("bad {what}"))
}

fn cpu_secs(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (field(11), field(12)) {
        (Some(u), Some(s)) => Ok((u + s) / CLK_TCK),
        _ => Err(format!("/proc/{pid}/stat: no utime/stime")),
    }
}

fn first_error(e: Option<String>) -> String {
    e.map(|e| format!(" first_error={e}")).unwrap_or_default()
}

fn command(
    words: &[&str],
    pattern: &Pattern,
    agent: &Child,
    relay: &Child,
    vsock_write_max: usize,
) -> Result<String, String> {
    let target =
        || -> Result<Target, String> { Target::parse(&arg::<String>(words, 1, "target")?) };
    match words.first().copied().unwrap_or("") {
        "hello" => {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let cpus = thread::available_parallelism().map_or(0, |n| n.get());
            Ok(format!(
                "kernel={} cpus={cpus} agent_pid={} relay_pid={}",
                kernel.trim(),
                agent.id(),
                relay.id()
            ))
        }
        "wait-path" => {
            let path: String = arg(words, 1, "path")?;
            let secs: u64 = arg(words, 2, "seconds")?;
            let start = Instant::now();
            while !Path::new(&path).exists() {
                if start.elapsed() > Duration::from_secs(secs) {
                    return Err(format!("{path} did not appear within {secs} s"));
                }
                thread::sleep(Duration::from_millis(50));
            }
            Ok(String::new())
        }
        "up" | "down" => {
            let bytes: u64 = arg(words, 2, "bytes")?;
            let t = if words[0] == "up" {
                client::upload(&target()?, bytes, pattern, vsock_write_max)?
            } else {
                client::download(&target()?, bytes, pattern)?
            };
            Ok(format!("secs={:.6}", t.as_secs_f64()))
        }
        "latency" => {
            let count: usize = arg(words, 2, "count")?;
            let l = client::latency(&target()?, count);
            let n = l.samples_us.len();
            if n == 0 {
                return Err(format!(
                    "every connection failed:{}",
                    first_error(l.first_error)
                ));
            }
            let p = |q: usize| l.samples_us[((n * q).div_ceil(100)).clamp(1, n) - 1];
            Ok(format!(
                "n={n} errors={} p50_us={:.1} p99_us={:.1}{}",
                l.errors,
                p(50),
                p(99),
                first_error(l.first_error)
            ))
        }
        "rate" => {
            let clients: usize = arg(words, 2, "clients")?;
            let ms: u64 = arg(words, 3, "milliseconds")?;
            let r = client::rate(&target()?, clients.max(1), Duration::from_millis(ms));
            Ok(format!(
                "conns={} errors={} secs={:.6}{}",
                r.conns,
                r.errors,
                r.secs,
                first_error(r.first_error)
            ))
        }
        "cpu" => Ok(format!(
            "agent={:.2} relay={:.2}",
            cpu_secs(agent.id())?,
            cpu_secs(relay.id())?
        )),
        other => Err(format!("unknown command {other:?}")),
    }
}
