//! One function per measured figure, each for one path at a time.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::pattern::Pattern;
use crate::procs::{self, Bins, Daemon};
use crate::server::{Mode, Server};
use crate::sys::{self, Ctx, Res};
use crate::topology::{PathKind, Topology};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const IO_CHUNK: usize = 256 * 1024;
/// Any single read/write/connect that blocks longer than this fails the run.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which way bytes flow in a transfer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
    /// Both at once, the same size each way.
    Both,
}

impl Dir {
    /// For messages.
    pub fn label(self) -> &'static str {
        match self {
            Dir::Up => "client→server",
            Dir::Down => "server→client",
            Dir::Both => "both at once",
        }
    }
}

/// Result of one transfer.
pub struct Transfer {
    /// GiB/s client to server, if that direction ran.
    pub up: Option<f64>,
    /// GiB/s server to client, if that direction ran.
    pub down: Option<f64>,
    /// Bytes that crossed the forwarders.
    pub bytes: u64,
    /// CPU seconds used by the guest-side and host-side daemons.
    pub cpu: [f64; 2],
    /// CPU seconds used by the bench process (both ends).
    pub ends_cpu: f64,
}

fn send(mut s: &UnixStream, pat: &Pattern, total: usize, deadline: Instant) -> Res<()> {
    let mut pos = 0;
    while pos < total {
        if Instant::now() > deadline {
            return Err(format!("send: gave up after {pos} of {total} bytes"));
        }
        let n = s
            .write(pat.chunk(pos, (total - pos).min(IO_CHUNK)))
            .with_ctx(|| format!("send stalled at byte {pos}"))?;
        if n == 0 {
            return Err(format!("send: wrote 0 at byte {pos}"));
        }
        pos += n;
    }
    Ok(())
}

/// Receives exactly `total` bytes and checks them; returns when the last arrived.
fn recv(mut s: &UnixStream, pat: &Pattern, total: usize, deadline: Instant) -> Res<Instant> {
    let mut buf = vec![0u8; IO_CHUNK];
    let mut pos = 0;
    while pos < total {
        if Instant::now() > deadline {
            return Err(format!("receive: gave up after {pos} of {total} bytes"));
        }
        let want = (total - pos).min(IO_CHUNK);
        let n = s
            .read(&mut buf[..want])
            .with_ctx(|| format!("receive stalled at byte {pos}"))?;
        if n == 0 {
            return Err(format!(
                "integrity: stream ended after {pos} of {total} bytes"
            ));
        }
        if !pat.matches(pos, &buf[..n]) {
            return Err(format!("integrity: wrong bytes in {pos}..{}", pos + n));
        }
        pos += n;
    }
    Ok(Instant::now())
}

/// After the expected bytes, the peer's EOF must come with nothing before it.
fn expect_eof(mut s: &UnixStream) -> Res<()> {
    let mut b = [0u8; 4096];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!(
            "integrity: {n} unexpected bytes after the transfer"
        )),
        Err(e) => Err(format!("waiting for EOF after the transfer: {e}")),
    }
}

fn join<T>(h: thread::ScopedJoinHandle<'_, Res<T>>) -> Res<T> {
    h.join()
        .map_err(|_| "transfer thread panicked".to_string())?
}

/// Moves `size` bytes (each way for [`Dir::Both`]) through `path`, checks
/// every byte and the EOF after it, and reads the daemons' CPU time around it.
/// A read or write blocked for `stall` counts as a stalled transfer.
pub fn transfer(
    topo: &Topology,
    path: PathKind,
    dir: Dir,
    size: usize,
    pats: &[Pattern; 2],
    stall: Duration,
) -> Res<Transfer> {
    let server = Server::start(&topo.server_path(), Mode::Accept, 1)?;
    topo.settle(path, Duration::from_secs(5));
    let cpu0 = topo.cpu_secs(path)?;
    let ends0 = sys::self_cpu_secs();
    let client = sys::connect(&topo.entry(path), stall).ctx("connect")?;
    let srv = server.accept_one(IO_TIMEOUT)?;
    srv.set_read_timeout(Some(stall)).ctx("timeout")?;
    srv.set_write_timeout(Some(stall)).ctx("timeout")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let barrier = Barrier::new(if dir == Dir::Both { 4 } else { 2 });
    let (up, down) = thread::scope(|sc| -> Res<(Option<f64>, Option<f64>)> {
        let (client, srv, barrier, pats) = (&client, &srv, &barrier, pats);
        // One writer and one reader per direction; the writer's start time is the start.
        let mut up = None;
        let mut down = None;
        let half_close = dir != Dir::Both;
        // The first failure unblocks every other thread at once.
        let fail = move |r: Res<Instant>| {
            if r.is_err() {
                let _ = client.shutdown(Shutdown::Both);
                let _ = srv.shutdown(Shutdown::Both);
            }
            r
        };
        let up_threads = (dir != Dir::Down).then(|| {
            let w = sc.spawn(move || -> Res<Instant> {
                barrier.wait();
                let t0 = Instant::now();
                fail(send(client, &pats[0], size, deadline).and_then(|()| {
                    if half_close {
                        client.shutdown(Shutdown::Write).ctx("shutdown")?;
                    }
                    Ok(t0)
                }))
            });
            let r = sc.spawn(move || -> Res<Instant> {
                barrier.wait();
                fail(recv(srv, &pats[0], size, deadline))
            });
            (w, r)
        });
        let down_threads = (dir != Dir::Up).then(|| {
            let w = sc.spawn(move || -> Res<Instant> {
                barrier.wait();
                let t0 = Instant::now();
                fail(send(srv, &pats[1], size, deadline).and_then(|()| {
                    if half_close {
                        srv.shutdown(Shutdown::Write).ctx("shutdown")?;
                    }
                    Ok(t0)
                }))
            });
            let r = sc.spawn(move || -> Res<Instant> {
                barrier.wait();
                fail(recv(client, &pats[1], size, deadline))
            });
            (w, r)
        });
        let rate = |t0: Instant, t1: Instant| {
            size as f64 / GIB / t1.duration_since(t0).as_secs_f64().max(1e-9)
        };
        if let Some((w, r)) = up_threads {
            let (t0, t1) = (join(w), join(r));
            up = Some(rate(t0?, t1?));
        }
        if let Some((w, r)) = down_threads {
            let (t0, t1) = (join(w), join(r));
            down = Some(rate(t0?, t1?));
        }
        Ok((up, down))
    })?;
    // Half-close only once both directions are done, so a forwarder that
    // closes the other way soon after one EOF (socat -t) is not punished.
    if dir == Dir::Both {
        client.shutdown(Shutdown::Write).ctx("shutdown")?;
        srv.shutdown(Shutdown::Write).ctx("shutdown")?;
    }
    if dir != Dir::Down {
        expect_eof(&srv)?;
    }
    if dir != Dir::Up {
        expect_eof(&client)?;
    }
    drop(client);
    drop(srv);
    let ends = sys::self_cpu_secs() - ends0;
    topo.settle(path, Duration::from_secs(5));
    let cpu1 = topo.cpu_secs(path)?;
    let bytes = if dir == Dir::Both { 2 * size } else { size };
    Ok(Transfer {
        up,
        down,
        bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
        cpu: [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]],
        ends_cpu: ends,
    })
}

/// The byte a connection echoes: varies, so a crossed connection shows.
fn tag(i: usize) -> u8 {
    u8::try_from(i % 251).unwrap_or(0)
}

/// Connects, sends one byte, reads the echo; returns the open connection.
fn echo_once(entry: &Path, byte: u8, timeout: Duration) -> Res<UnixStream> {
    let s = sys::connect(entry, timeout).ctx("connect")?;
    (&s).write_all(&[byte]).ctx("write")?;
    let mut back = [0u8; 1];
    (&s).read_exact(&mut back).ctx("read echo")?;
    if back[0] != byte {
        return Err(format!("echo returned {} for {byte}", back[0]));
    }
    Ok(s)
}

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
pub fn latency(topo: &Topology, path: PathKind, count: usize) -> Res<Latency> {
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
pub fn rate(topo: &Topology, path: PathKind, clients: usize, duration: Duration) -> Res<Rate> {
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

/// Outcome of a burst of concurrent connects.
#[derive(Default)]
pub struct Burst {
    /// Got the echo back.
    pub served: u64,
    /// connect() failed (a full listen backlog: EAGAIN; or refused).
    pub refused: u64,
    /// Accepted, then closed or reset without the echo.
    pub dropped: u64,
    /// No answer within the time limit.
    pub timed_out: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

enum Outcome {
    Served,
    Refused(String),
    Dropped(String),
}

async fn burst_one(entry: std::path::PathBuf, byte: u8) -> Outcome {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = match tokio::net::UnixStream::connect(&entry).await {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(format!("connect: {e}")),
    };
    if let Err(e) = s.write_all(&[byte]).await {
        return Outcome::Dropped(format!("write: {e}"));
    }
    let mut back = [0u8; 1];
    match s.read_exact(&mut back).await {
        Ok(_) if back[0] == byte => Outcome::Served,
        Ok(_) => Outcome::Dropped("wrong echo".into()),
        Err(e) => Outcome::Dropped(format!("read: {e}")),
    }
}

/// `n` clients connect at once (non-blocking connects, as tokio or Go
/// clients do), each sends one byte and waits for the echo.
pub fn burst(topo: &Topology, path: PathKind, n: usize) -> Res<Burst> {
    let server = Server::start(&topo.server_path(), Mode::Echo, 64)?;
    topo.settle(path, Duration::from_secs(10));
    let entry = topo.entry(path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ctx("tokio runtime")?;
    let out = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let e = entry.clone();
            set.spawn(tokio::time::timeout(
                Duration::from_secs(20),
                burst_one(e, tag(i)),
            ));
        }
        let mut b = Burst::default();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Outcome::Served)) => b.served += 1,
                Ok(Ok(Outcome::Refused(e))) => {
                    b.refused += 1;
                    b.first_error.get_or_insert(e);
                }
                Ok(Ok(Outcome::Dropped(e))) => {
                    b.dropped += 1;
                    b.first_error.get_or_insert(e);
                }
                Ok(Err(_)) => b.timed_out += 1,
                Err(e) => {
                    b.dropped += 1;
                    b.first_error.get_or_insert(format!("task: {e}"));
                }
            }
        }
        b
    });
    drop(rt);
    drop(server);
    Ok(out)
}

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

/// Agent start-up.
pub struct Startup {
    /// Exec to both the control and the streams listeners accepting, ms.
    pub ready_ms: f64,
    /// RSS of the freshly started agent, KiB.
    pub fresh_rss_kib: u64,
    /// Relay exec to the forwarded guest listener bound (agent already up), ms.
    pub forward_ms: f64,
}

/// Starts a fresh agent (and then a relay) in their own temp dir.
pub fn startup(bins: &Bins) -> Res<Startup> {
    let dir = tempfile::Builder::new()
        .prefix("sockfwd-bench-start.")
        .tempdir()
        .ctx("temp dir")?;
    let d = dir.path();
    let t0 = Instant::now();
    let mut agent = Daemon::spawn(
        "sockfwd-agent",
        &bins.agent,
        &procs::agent_args(d),
        &d.join("agent.log"),
    )?;
    procs::wait_connectable(&d.join("control.sock"), &mut agent, Duration::from_secs(10))?;
    procs::wait_connectable(&d.join("streams.sock"), &mut agent, Duration::from_secs(10))?;
    let ready = t0.elapsed();
    thread::sleep(Duration::from_millis(50));
    let fresh_rss_kib = sys::rss_kib(agent.pid())?;
    let t1 = Instant::now();
    let mut relay = Daemon::spawn(
        "sockfwd-relay",
        &bins.relay,
        &procs::relay_args(d, &bins.relay_extra),
        &d.join("relay.log"),
    )?;
    procs::wait_bound(&d.join("guest.sock"), &mut relay, Duration::from_secs(10))?;
    let forward = t1.elapsed();
    agent.check_alive()?;
    drop(relay);
    drop(agent);
    Ok(Startup {
        ready_ms: ready.as_secs_f64() * 1e3,
        fresh_rss_kib,
        forward_ms: forward.as_secs_f64() * 1e3,
    })
}

/// Size of the agent binary.
pub struct BinSize {
    /// Bytes.
    pub bytes: u64,
    /// Whether it has no ELF interpreter (statically linked).
    pub is_static: bool,
    /// Which file.
    pub path: std::path::PathBuf,
}

/// Whether an ELF file lacks a PT_INTERP program header (static), if readable.
fn elf_is_static(path: &Path) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    if data.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let phoff = usize::try_from(u64::from_le_bytes(data.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?) == 3 {
            return Some(false);
        }
    }
    Some(true)
}

/// The static build if present (target/x86_64-unknown-linux-gnu/release), else the release binary.
pub fn agent_size(bins: Option<&Bins>) -> Res<BinSize> {
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(
            std::path::PathBuf::from(t).join("x86_64-unknown-linux-gnu/release/sockfwd-agent"),
        );
    }
    candidates
        .push(procs::workspace_dir().join("target/x86_64-unknown-linux-gnu/release/sockfwd-agent"));
    if let Some(b) = bins {
        candidates.push(b.agent.clone());
    }
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or("no sockfwd-agent binary; cargo build --release -p sockfwd-agent")?;
    let bytes = std::fs::metadata(&path)
        .with_ctx(|| format!("stat {}", path.display()))?
        .len();
    Ok(BinSize {
        bytes,
        is_static: elf_is_static(&path).unwrap_or(false),
        path,
    })
}
