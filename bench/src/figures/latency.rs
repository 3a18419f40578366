//! Connection figures: connect to first byte over sequential connections
//! (median, p99), and the connection rate with concurrent clients together
//! with the daemons' CPU per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{echo_once, progress, tag};
use crate::bench::Bench;
use crate::server::{Mode, Server};
use crate::sys::Res;
use crate::topology::{PathKind, Topology};

/// Connect-to-first-byte latency over sequential connections.
pub struct Latency {
    /// Median, microseconds.
    pub median_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Connections that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// `count` sequential connections, each: connect, write 1 byte, read the echo.
pub fn connect_latency(topo: &Topology, path: PathKind, count: usize) -> Res<Latency> {
    let server = Server::start(&topo.server_path(), Mode::Echo, 16)?;
    topo.settle(path, Duration::from_secs(5));
    let entry = topo.entry(path);
    for i in 0..20u8 {
        let _ = echo_once(&entry, i, Duration::from_secs(5));
    }
    let mut samples = Vec::with_capacity(count);
    let (mut errors, mut first_error) = (0u64, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let t0 = Instant::now();
        match echo_once(&entry, tag(i), Duration::from_secs(10)) {
            Ok(conn) => {
                samples.push(t0.elapsed().as_secs_f64() * 1e6);
                drop(conn);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    drop(server);
    if samples.is_empty() {
        return Err(format!(
            "latency: every connection failed: {}",
            first_error.unwrap_or_default()
        ));
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    Ok(Latency {
        median_us: crate::report::median_sorted(&samples),
        p99_us: samples[((n * 99).div_ceil(100)).clamp(1, n) - 1],
        errors,
        first_error,
    })
}

/// Connection rate with concurrent clients.
pub struct Rate {
    /// Completed connections per second.
    pub per_sec: f64,
    /// Connections that failed.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Connections the server saw fail (e.g. closed before the first byte).
    pub server_errors: u64,
    /// CPU microseconds per completed connection, guest-side and host-side daemon.
    pub cpu_us_per_conn: [f64; 2],
}

/// `clients` threads, each looping connect / 1-byte echo / close for `duration`.
pub fn connection_rate(
    topo: &Topology,
    path: PathKind,
    clients: usize,
    duration: Duration,
) -> Res<Rate> {
    let server = Server::start(&topo.server_path(), Mode::Echo, clients * 2)?;
    topo.settle(path, Duration::from_secs(5));
    let cpu0 = topo.cpu_secs(path)?;
    let entry = topo.entry(path);
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let first_error = Mutex::new(None::<String>);
    let barrier = Barrier::new(clients + 1);
    let start = thread::scope(|sc| {
        for c in 0..clients {
            let (entry, ok, errors, first_error, barrier) =
                (&entry, &ok, &errors, &first_error, &barrier);
            sc.spawn(move || {
                barrier.wait();
                let end = Instant::now() + duration;
                let mut i = 0usize;
                while Instant::now() < end && i < 10_000_000 {
                    match echo_once(entry, tag(c + i), Duration::from_secs(10)) {
                        Ok(conn) => {
                            drop(conn);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    i += 1;
                }
            });
        }
        barrier.wait();
        Instant::now()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let server_errors = server.errors();
    drop(server);
    // Connections still closing belong to this figure too (socat's forks are reaped then).
    topo.settle(path, Duration::from_secs(10));
    let cpu1 = topo.cpu_secs(path)?;
    let done = ok.load(Ordering::Relaxed).max(1) as f64;
    Ok(Rate {
        server_errors,
        cpu_us_per_conn: [
            (cpu1[0] - cpu0[0]) * 1e6 / done,
            (cpu1[1] - cpu0[1]) * 1e6 / done,
        ],
        per_sec: ok.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

impl Bench {
    /// Connect to first byte, every path.
    pub(crate) fn latency(&mut self, topo: &mut Topology) -> Res<()> {
        let mut med = [None; 3];
        let mut p99 = [None; 3];
        for p in self.paths.clone() {
            let l = connect_latency(topo, p, self.cfg.latency_conns)?;
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

    /// Connection rate and CPU per connection, every path.
    pub(crate) fn rate(&mut self, topo: &mut Topology) -> Res<()> {
        let mut rate = [None; 3];
        let mut errs = [None; 3];
        let mut conn_cpu = [[None; 3]; 2];
        for p in self.paths.clone() {
            let r = connection_rate(topo, p, self.cfg.rate_clients, self.cfg.rate_time)?;
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
}
