//! Runs the selected figures for every path, run after run, and collects
//! the values, notes and table rows.

use crate::bench::{Bench, Config, Figure};
use crate::figures::client_servers::ClientPeers;
use crate::report::{Row, Target};
use crate::sys::Res;
use crate::topology::Topology;

/// Every row of the table, in order, with the figure it belongs to.
#[rustfmt::skip]
fn rows(cfg: &Config) -> Vec<(Figure, Row)> {
    use Figure::*;
    use Target::*;
    let r = |f, key, label: &str, unit, prec, ratio, target| {
        (f, Row { key, label: label.to_string(), unit, prec, ratio, target })
    };
    vec![
        r(Throughput, "tp_up", "throughput client→server (GiB/s)", "", 2, true, Some(RatioAtLeast(0.5))),
        r(Throughput, "tp_down", "throughput server→client (GiB/s)", "", 2, true, Some(RatioAtLeast(0.5))),
        r(Throughput, "tp_both_up", "both at once: client→server (GiB/s)", "", 2, true, Some(RatioAtLeast(0.35))),
        r(Throughput, "tp_both_down", "both at once: server→client (GiB/s)", "", 2, true, Some(RatioAtLeast(0.35))),
        r(Latency, "lat_med", "connect to first byte, median (µs)", "", 1, true, Some(RatioAtMost(3.0))),
        r(Latency, "lat_p99", "connect to first byte, p99 (µs)", "", 1, true, Some(RatioAtMost(10.0))),
        r(Rate, "rate", &format!("connections/s, {} clients", cfg.rate_clients), "", 0, true, Some(RatioAtLeast(0.3))),
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

impl Bench {
    /// The rows of the selected figures.
    pub fn rows(&self) -> Vec<Row> {
        rows(&self.cfg)
            .into_iter()
            .filter(|(f, _)| self.selected(*f))
            .map(|(_, r)| r)
            .collect()
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
