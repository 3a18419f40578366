//! The VM bench's figures: each runs on every path within a rep, the guest
//! client doing the work (a control command) while the host reads the CPU
//! time of QEMU, vhost-device-vsock and the relay around it, and the guest
//! reports its forwarder process's CPU time.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::control::Control;
use super::{VmPath, GUEST_ECHO_PORT};
use crate::bench::{Figure, Notes};
use crate::report::{Results, Row, Target};
use crate::sys::{self, Ctx, Res};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// Sizes and counts of a VM bench.
pub struct VmConfig {
    /// Reps of every figure.
    pub reps: usize,
    /// Bytes per transfer and direction.
    pub bytes: u64,
    /// Sequential connections per latency run.
    pub conns: usize,
    /// Concurrent guest clients of the rate figure.
    pub clients: usize,
    /// How long each rate run lasts.
    pub rate_time: Duration,
}

/// Every row of the VM table, with the figure it belongs to. The targets are
/// issue 12's: round trips and guest CPU per connection within 2× raw
/// vsock's, throughput at least 0.9 of the minimal relay's each way, and
/// host→guest no slower than guest→host.
#[rustfmt::skip]
pub fn rows(cfg: &VmConfig) -> Vec<(Figure, Row)> {
    use Figure::*;
    use Target::*;
    let r = |f, key, label: &str, prec, ratio, target| {
        (f, Row { key, label: label.to_string(), unit: "", prec, ratio, target })
    };
    let c = cfg.clients;
    vec![
        r(Throughput, "tp_up", "throughput guest→host (MiB/s)", 1, true, Some(RefRatioAtLeast(0.9))),
        r(Throughput, "tp_down", "throughput host→guest (MiB/s)", 1, true, Some(RefRatioAtLeast(0.9))),
        r(Throughput, "tp_balance", "throughput host→guest ÷ guest→host, same rep", 2, false, Some(AtLeast(1.0))),
        r(Latency, "lat_p50", "connect + 1-byte round trip, p50 (ms)", 2, true, Some(RatioAtMost(2.0))),
        r(Latency, "lat_p99", "connect + 1-byte round trip, p99 (ms)", 2, true, Some(RatioAtMost(2.0))),
        r(Latency, "host_p50", "host-initiated raw vsock (hybrid CONNECT) + 1-byte round trip, p50 (ms; reference)", 2, false, None),
        r(Latency, "host_p99", "host-initiated raw vsock (hybrid CONNECT) + 1-byte round trip, p99 (ms; reference)", 2, false, None),
        r(Rate, "rate", &format!("connections/s, {c} guest clients"), 0, true, None),
        r(Rate, "rate_err", &format!("errors, {c} guest clients"), 0, false, Some(Exactly(0.0))),
        r(Throughput, "cpu_up", "guest CPU (QEMU) per GiB guest→host (s)", 2, true, None),
        r(Throughput, "cpu_down", "guest CPU (QEMU) per GiB host→guest (s)", 2, true, None),
        r(Rate, "cpu_conn", "guest CPU (QEMU) per connection (ms)", 2, true, Some(RatioAtMost(2.0))),
        r(Throughput, "fwd_gib", "of which the in-guest forwarder (minimal relay / agent) per GiB, both ways (s)", 2, false, None),
        r(Rate, "fwd_conn", "of which the in-guest forwarder (minimal relay / agent) per connection (ms)", 3, false, None),
        r(Throughput, "relay_gib", "host relay CPU per GiB, both ways (s)", 2, false, None),
        r(Rate, "relay_conn", "host relay CPU per connection (ms)", 3, false, None),
        r(Throughput, "vdv_gib", "vhost-device-vsock CPU per GiB, both ways (s)", 2, true, None),
        r(Rate, "vdv_conn", "vhost-device-vsock CPU per connection (ms)", 3, true, None),
    ]
}

/// Host processes whose CPU time the figures read.
pub struct Probes {
    /// QEMU: every guest instruction, the vCPU's and the device emulation's.
    pub qemu: i32,
    /// vhost-device-vsock.
    pub vdv: i32,
    /// sockfwd-relay.
    pub relay: i32,
}

/// CPU seconds so far, host processes and the guest's forwarders.
#[derive(Clone, Copy, Default)]
struct Sample {
    qemu: f64,
    vdv: f64,
    relay: f64,
    /// The guest's sockfwd-agent.
    agent: f64,
    /// The guest's minimal relay.
    minrelay: f64,
}

impl Sample {
    fn since(&self, before: &Sample) -> Sample {
        Sample {
            qemu: self.qemu - before.qemu,
            vdv: self.vdv - before.vdv,
            relay: self.relay - before.relay,
            agent: self.agent - before.agent,
            minrelay: self.minrelay - before.minrelay,
        }
    }

    /// The in-guest forwarder of `path`, if it has one.
    fn forwarder(&self, path: VmPath) -> Option<f64> {
        match path {
            VmPath::Raw => None,
            VmPath::MinRelay => Some(self.minrelay),
            VmPath::Sockfwd => Some(self.agent),
        }
    }
}

/// Runs the figures and keeps what they measured.
pub struct Runner<'a> {
    /// The guest's control channel.
    pub ctl: &'a mut Control,
    /// Host processes to read CPU time from.
    pub probes: Probes,
    /// Sizes and counts.
    pub cfg: &'a VmConfig,
    /// Figures selected (empty: all).
    pub only: &'a [Figure],
    /// The hybrid vsock socket, for host-initiated connections.
    pub uds: PathBuf,
    /// Values measured.
    pub res: Results,
    /// Notes for under the table.
    pub notes: Notes,
}

fn progress(what: &str, vals: &[Option<f64>; 3]) {
    let parts: Vec<String> = VmPath::ALL
        .iter()
        .filter_map(|p| vals[p.index()].map(|v| format!("{} {v:.2}", p.title())))
        .collect();
    eprintln!("  {what}: {}", parts.join(", "));
}

impl Runner<'_> {
    /// Whether `f` is to be measured.
    pub fn selected(&self, f: Figure) -> bool {
        self.only.is_empty() || self.only.contains(&f)
    }

    fn sample(&mut self) -> Res<Sample> {
        let guest = self.ctl.call("cpu", Duration::from_secs(20))?;
        Ok(Sample {
            qemu: sys::cpu_secs(self.probes.qemu, false)?,
            vdv: sys::cpu_secs(self.probes.vdv, false)?,
            relay: sys::cpu_secs(self.probes.relay, false)?,
            agent: guest.num("agent")?,
            minrelay: guest.num("relay")?,
        })
    }

    /// Runs a guest command between two CPU samples.
    fn measured(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Res<(super::control::Reply, Sample)> {
        let before = self.sample()?;
        let reply = self.ctl.call(command, timeout)?;
        let after = self.sample()?;
        Ok((reply, after.since(&before)))
    }

    /// One rep of every selected figure; the paths take turns, starting from
    /// a different one each rep so that none always runs first.
    pub fn rep(&mut self, rep: usize) -> Res<()> {
        let order: Vec<VmPath> = (0..3).map(|i| VmPath::ALL[(rep + i) % 3]).collect();
        if self.selected(Figure::Throughput) {
            self.throughput(&order)?;
        }
        if self.selected(Figure::Latency) {
            self.latency(&order)?;
        }
        if self.selected(Figure::Rate) {
            self.rate(&order)?;
        }
        Ok(())
    }

    fn throughput(&mut self, order: &[VmPath]) -> Res<()> {
        let bytes = self.cfg.bytes;
        let gib = bytes as f64 / GIB;
        // A slow path still moves a few MiB/s; give it that long, and a minute.
        let timeout = Duration::from_secs(60 + bytes / (1 << 20));
        let mut both: [Sample; 3] = Default::default();
        let mut each_way: [[Option<f64>; 3]; 2] = [[None; 3]; 2];
        for (way, (dir, tp_key, cpu_key)) in
            [("up", "tp_up", "cpu_up"), ("down", "tp_down", "cpu_down")]
                .into_iter()
                .enumerate()
        {
            let (mut tp, mut cpu) = ([None; 3], [None; 3]);
            for &p in order {
                let cmd = format!("{dir} {} {bytes}", p.target());
                let (reply, used) = self
                    .measured(&cmd, timeout)
                    .map_err(|e| format!("{}, {dir}: {e}", p.title()))?;
                let secs = reply.num("secs")?;
                let i = p.index();
                tp[i] = Some(bytes as f64 / MIB / secs.max(1e-9));
                cpu[i] = Some(used.qemu / gib);
                let b = &mut both[i];
                *b = Sample {
                    qemu: b.qemu + used.qemu,
                    vdv: b.vdv + used.vdv,
                    relay: b.relay + used.relay,
                    agent: b.agent + used.agent,
                    minrelay: b.minrelay + used.minrelay,
                };
            }
            progress(&format!("{dir} MiB/s"), &tp);
            each_way[way] = tp;
            self.res.record(tp_key, tp);
            self.res.record(cpu_key, cpu);
        }
        let balance: [Option<f64>; 3] =
            std::array::from_fn(|i| Some(each_way[1][i]? / each_way[0][i]?.max(1e-9)));
        self.res.record("tp_balance", balance);
        let (mut fwd, mut relay, mut vdv) = ([None; 3], [None; 3], [None; 3]);
        for &p in order {
            let i = p.index();
            fwd[i] = both[i].forwarder(p).map(|s| s / (2.0 * gib));
            vdv[i] = Some(both[i].vdv / (2.0 * gib));
            if p == VmPath::Sockfwd {
                relay[i] = Some(both[i].relay / (2.0 * gib));
            }
        }
        self.res.record("fwd_gib", fwd);
        self.res.record("relay_gib", relay);
        self.res.record("vdv_gib", vdv);
        Ok(())
    }

    fn latency(&mut self, order: &[VmPath]) -> Res<()> {
        let n = self.cfg.conns;
        let timeout = Duration::from_secs(60 + u64::try_from(n).unwrap_or(u64::MAX) / 10);
        let (mut p50, mut p99) = ([None; 3], [None; 3]);
        for &p in order {
            let cmd = format!("latency {} {n}", p.target());
            let reply = self
                .ctl
                .call(&cmd, timeout)
                .map_err(|e| format!("{}, latency: {e}", p.title()))?;
            let i = p.index();
            p50[i] = Some(reply.num("p50_us")? / 1e3);
            p99[i] = Some(reply.num("p99_us")? / 1e3);
            let errors = reply.num("errors")?;
            if errors > 0.0 {
                self.notes.add(format!(
                    "latency, {}: {errors} of {n} connections failed in a rep (first: {})",
                    p.title(),
                    reply.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        progress("round trip p50 ms", &p50);
        self.res.record("lat_p50", p50);
        self.res.record("lat_p99", p99);
        let (h50, h99) = self.host_connect(n)?;
        self.res.record("host_p50", [Some(h50), None, None]);
        self.res.record("host_p99", [Some(h99), None, None]);
        Ok(())
    }

    fn rate(&mut self, order: &[VmPath]) -> Res<()> {
        let (clients, ms) = (self.cfg.clients, self.cfg.rate_time.as_millis());
        let timeout = self.cfg.rate_time + Duration::from_secs(60);
        let mut v: [[Option<f64>; 3]; 6] = [[None; 3]; 6];
        for &p in order {
            let cmd = format!("rate {} {clients} {ms}", p.target());
            let (reply, used) = self
                .measured(&cmd, timeout)
                .map_err(|e| format!("{}, rate: {e}", p.title()))?;
            let conns = reply.num("conns")?;
            let errors = reply.num("errors")?;
            let i = p.index();
            let per = |s: f64| s * 1e3 / conns.max(1.0);
            v[0][i] = Some(conns / reply.num("secs")?.max(1e-9));
            v[1][i] = Some(errors);
            v[2][i] = Some(per(used.qemu));
            v[3][i] = used.forwarder(p).map(per);
            v[4][i] = (p == VmPath::Sockfwd).then(|| per(used.relay));
            v[5][i] = Some(per(used.vdv));
            if let Some(e) = &reply.first_error {
                self.notes
                    .add(format!("rate, {}: first error: {e}", p.title()));
            }
        }
        progress("connections/s", &v[0]);
        let keys = [
            "rate",
            "rate_err",
            "cpu_conn",
            "fwd_conn",
            "relay_conn",
            "vdv_conn",
        ];
        for (key, vals) in keys.into_iter().zip(v) {
            self.res.record(key, vals);
        }
        Ok(())
    }

    /// Host-initiated raw connections to the guest's echo port: what every
    /// sockfwd stream costs at least, since the relay opens each one from the host.
    fn host_connect(&mut self, n: usize) -> Res<(f64, f64)> {
        let mut samples = Vec::with_capacity(n);
        let (mut errors, mut first) = (0usize, None);
        for i in 0..n + 3 {
            let byte = 0x80 | u8::try_from(i % 127).unwrap_or(0);
            let t0 = Instant::now();
            match hybrid_echo(&self.uds, GUEST_ECHO_PORT, byte) {
                Ok(conn) => {
                    if i >= 3 {
                        samples.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    drop(conn);
                }
                Err(e) => {
                    errors += 1;
                    first.get_or_insert(e);
                }
            }
        }
        if errors > 0 {
            self.notes.add(format!(
                "host-initiated round trips: {errors} of {n} failed in a rep (first: {})",
                first.as_deref().unwrap_or("?")
            ));
        }
        if samples.is_empty() {
            return Err(format!(
                "host-initiated round trips: every one failed: {}",
                first.unwrap_or_default()
            ));
        }
        samples.sort_by(f64::total_cmp);
        let len = samples.len();
        let q = |pct: usize| samples[((len * pct).div_ceil(100)).clamp(1, len) - 1];
        Ok((q(50), q(99)))
    }
}

/// Connects to guest `port` through the hybrid socket (`CONNECT port`, `OK ..`),
/// writes one byte and reads it back.
fn hybrid_echo(uds: &Path, port: u32, byte: u8) -> Res<UnixStream> {
    // A rare CONNECT gets no answer at all: give up rather than hang.
    let timeout = Duration::from_secs(5);
    let mut s = UnixStream::connect(uds).ctx("connect")?;
    s.set_read_timeout(Some(timeout)).ctx("timeout")?;
    s.set_write_timeout(Some(timeout)).ctx("timeout")?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .ctx("CONNECT")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        if s.read(&mut b).ctx("CONNECT answer")? == 0 || line.len() > 64 {
            return Err(format!(
                "CONNECT {port}: no OK (got {:?})",
                String::from_utf8_lossy(&line)
            ));
        }
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "CONNECT {port}: answer {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    s.write_all(&[byte]).ctx("write")?;
    s.read_exact(&mut b).ctx("read echo")?;
    if b[0] != byte {
        return Err(format!("echo returned {:#04x} for {byte:#04x}", b[0]));
    }
    Ok(s)
}
