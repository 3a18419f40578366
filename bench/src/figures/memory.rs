//! The memory figure: fresh daemons per run, as many idle forwarded
//! connections as the descriptor limits allow, and the daemons' RSS, PSS and
//! the kernel's memory per connection.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::{echo_once, fwd_only, progress, tag};
use crate::bench::{Bench, Figure};
use crate::server::{Mode, Server};
use crate::sys::{self, Res};
use crate::topology::{PathKind, Topology};

/// Memory with many idle forwarded connections.
pub struct Memory {
    /// Idle connections established.
    pub conns: usize,
    /// Why fewer than asked were opened (descriptor limits), if so.
    pub limited: Option<String>,
    /// RSS (KiB) of the guest-side and host-side daemons before any connection.
    pub idle_rss_kib: [u64; 2],
    /// RSS (KiB) of the guest-side and host-side daemons with them open.
    pub rss_kib: [u64; 2],
    /// RSS growth per connection (KiB), guest side and host side.
    pub per_conn_kib: [f64; 2],
    /// PSS growth per connection (KiB), guest side and host side.
    pub pss_per_conn_kib: [f64; 2],
    /// Kernel memory growth per connection (KiB): slab + kernel stacks + page
    /// tables, machine-wide; includes the bench's own two end sockets.
    pub kernel_per_conn_kib: f64,
    /// Sockets in use per connection (all of them, ends included).
    pub sockets_per_conn: Option<f64>,
    /// Descriptors per connection held by each daemon side.
    pub fds_per_conn: Option<[f64; 2]>,
    /// Connections that could not be opened.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Opened connections, failures, first failure.
type Opened = (Vec<UnixStream>, u64, Option<String>);

/// Opens `n` connections from 8 threads, each checked with a 1-byte echo.
fn open_idle(entry: &Path, n: usize, deadline: Instant) -> Opened {
    let threads = 8;
    let results: Vec<Opened> = thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let share = n / threads + usize::from(t < n % threads);
                sc.spawn(move || {
                    let mut conns = Vec::with_capacity(share);
                    let (mut errors, mut first) = (0u64, None);
                    for i in 0..share {
                        if Instant::now() > deadline {
                            break;
                        }
                        match echo_once(entry, tag(i), Duration::from_secs(10)) {
                            Ok(c) => conns.push(c),
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (conns, errors, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Vec::new(), 1, Some("client thread panicked".into())))
            })
            .collect()
    });
    let mut out: Opened = (Vec::with_capacity(n), 0, None);
    for (c, e, f) in results {
        out.0.extend(c);
        out.1 += e;
        if out.2.is_none() {
            out.2 = f;
        }
    }
    out
}

/// Opens up to `n` idle connections through `path` (each checked with a
/// 1-byte echo), measures, then closes them. A probe of 64 connections first
/// measures descriptors per connection, and `n` is cut to what fits under
/// the descriptor limits of the bench and of each daemon.
pub fn memory(topo: &Topology, path: PathKind, n: usize) -> Res<Memory> {
    let server = Server::start(&topo.server_path(), Mode::Hold, 16)?;
    topo.settle(path, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(200));
    let (rss0, pss0) = topo.memory_kib(path)?;
    let k0 = sys::KernelMem::read()?;
    let s0 = sys::sockets_used();
    let f0 = topo.fds(path);
    let entry = topo.entry(path);
    let deadline = Instant::now() + Duration::from_secs(600);

    let probe = n.min(64);
    let (mut clients, mut errors, mut first_error) = open_idle(&entry, probe, deadline);
    let wait_held = |want: usize| {
        let wait = Instant::now();
        while server.held() < want && wait.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
    };
    wait_held(clients.len());
    // Which process runs out of descriptors first: (who, limit, open now, per connection).
    let bench_pid = i32::try_from(std::process::id()).unwrap_or(0);
    let mut procs = vec![(
        "the bench",
        sys::nofile_limit(bench_pid),
        sys::fd_count(bench_pid),
        2,
    )];
    if let (Some(pids), Some(before), Some(now)) =
        (topo.single_process_pids(path), f0, topo.fds(path))
    {
        for (i, who) in ["the guest-side daemon", "the host-side daemon"]
            .into_iter()
            .enumerate()
        {
            let per = now[i]
                .saturating_sub(before[i])
                .div_ceil(clients.len().max(1));
            procs.push((who, sys::nofile_limit(pids[i]), Some(now[i]), per));
        }
    }
    let mut target = n;
    let mut limited = None;
    for (who, limit, open, per) in procs {
        let (Some(limit), Some(open)) = (limit.and_then(|l| usize::try_from(l).ok()), open) else {
            continue;
        };
        if per == 0 {
            continue;
        }
        // Keep a margin for listeners, logs and the daemons' own needs.
        let fits = clients.len() + limit.saturating_sub(open).saturating_sub(256) / per;
        if fits < target {
            target = fits;
            limited = Some(format!(
                "{who}'s descriptor limit ({limit}, {per} per connection)"
            ));
        }
    }
    let (more, e, f) = open_idle(&entry, target.saturating_sub(clients.len()), deadline);
    clients.extend(more);
    errors += e;
    if first_error.is_none() {
        first_error = f;
    }
    let conns = clients.len();
    wait_held(conns);
    thread::sleep(Duration::from_millis(300));
    let (rss1, pss1) = topo.memory_kib(path)?;
    let k1 = sys::KernelMem::read()?;
    let s1 = sys::sockets_used();
    let f1 = topo.fds(path);
    drop(clients);
    server.release_held();
    drop(server);
    topo.settle(path, Duration::from_secs(30));
    if conns == 0 {
        return Err(format!(
            "memory: no connection could be opened: {}",
            first_error.unwrap_or_default()
        ));
    }
    let per = |a: u64, b: u64| (b as f64 - a as f64) / conns as f64;
    Ok(Memory {
        conns,
        limited: limited.filter(|_| conns < n),
        idle_rss_kib: rss0,
        rss_kib: rss1,
        per_conn_kib: [per(rss0[0], rss1[0]), per(rss0[1], rss1[1])],
        pss_per_conn_kib: [per(pss0[0], pss1[0]), per(pss0[1], pss1[1])],
        kernel_per_conn_kib: per(k0.total(), k1.total()),
        sockets_per_conn: s0.zip(s1).map(|(a, b)| per(a, b)),
        fds_per_conn: f0
            .zip(f1)
            .map(|(a, b)| [per(a[0] as u64, b[0] as u64), per(a[1] as u64, b[1] as u64)]),
        errors,
        first_error,
    })
}

impl Bench {
    /// Each path with fresh daemons, so the baseline is the untouched idle daemon.
    pub(crate) fn memory(&mut self, last_run: bool) -> Res<()> {
        let mut m = [[None; 3]; 8];
        for p in self.paths.clone() {
            let n = if p == PathKind::Socat {
                self.cfg.socat_idle
            } else {
                self.cfg.idle
            };
            let mut fresh =
                Topology::start(&[p], self.bins.as_ref(), self.socat.as_deref(), self.keep)?;
            let r = memory(&fresh, p, n)?;
            fresh.check_alive()?;
            drop(fresh);
            let i = p.index();
            if p == PathKind::Sockfwd {
                self.res
                    .record("idle_agent", fwd_only(r.idle_rss_kib[0] as f64 / 1024.0));
                self.res
                    .record("idle_relay", fwd_only(r.idle_rss_kib[1] as f64 / 1024.0));
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
            if let Some(l) = &r.limited {
                self.notes.add(format!(
                    "memory, {}: {} idle connections instead of {n}, limited by {l}",
                    p.title(),
                    r.conns
                ));
            } else if r.conns != self.cfg.idle {
                let why = if p == PathKind::Socat {
                    " (each costs two forked processes)"
                } else {
                    ""
                };
                self.notes.add(format!(
                    "memory, {}: measured with {} idle connections{why}",
                    p.title(),
                    r.conns
                ));
            }
            if r.errors > 0 {
                self.notes.add(format!(
                    "memory, {}: {} connections failed to open (first: {})",
                    p.title(),
                    r.errors,
                    r.first_error.unwrap_or_default()
                ));
            }
            if last_run {
                let fds = r
                    .fds_per_conn
                    .filter(|_| p != PathKind::Direct)
                    .map(|f| format!(", descriptors per conn {:.2} / {:.2}", f[0], f[1]))
                    .unwrap_or_default();
                self.notes.add(format!(
                    "memory, {} (last run): sockets in use per conn {}{fds}",
                    p.title(),
                    r.sockets_per_conn.map_or("?".into(), |s| format!("{s:.2}")),
                ));
            }
        }
        progress("guest-side KiB per idle conn", &m[2]);
        progress("host-side KiB per idle conn", &m[3]);
        let keys = [
            "mem_guest",
            "mem_host",
            "mem_guest_per",
            "mem_host_per",
            "mem_kernel_per",
            "pss_guest_per",
            "pss_host_per",
            "mem_conns",
        ];
        for (key, v) in keys.into_iter().zip(m) {
            self.res.record(key, v);
        }
        Ok(())
    }

    /// How the memory figures are taken.
    pub(crate) fn memory_notes(&mut self) {
        if self.selected(Figure::Memory) {
            self.notes.add(
                "memory: each run starts fresh daemons; per connection = (RSS with the idle connections open \
                 - RSS of the idle daemon just started, forward bound) / connections; idle RSS is that second figure. \
                 Each idle connection first carried a 1-byte echo (so it is known to be forwarded end to end, and \
                 any buffers or pipes created on first data are counted)"
                    .into(),
            );
            self.notes.add(
                "kernel memory: change in Slab + KernelStack + PageTables (/proc/meminfo) per connection, \
                 machine-wide, so other activity on the machine adds noise; the direct column is the cost of the \
                 two end sockets alone"
                    .into(),
            );
        }
    }
}
