//! Throughput each way and both at once through one connection, every byte
//! checked, with the daemons' CPU time per GiB read around each transfer.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use super::progress;
use crate::bench::{Bench, Dir};
use crate::pattern::Pattern;
use crate::server::{Mode, Server};
use crate::sys::{self, Ctx, Res};
use crate::topology::{PathKind, Topology};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const IO_CHUNK: usize = 256 * 1024;
/// Any single read/write/connect that blocks longer than this fails the run.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

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

impl Bench {
    /// Throughput and CPU per GiB: one transfer per direction and path.
    pub(crate) fn throughput(&mut self, topo: &mut Topology) -> Res<()> {
        let mut cpu = [[0.0f64; 2]; 3];
        let mut ends = [0.0f64; 3];
        let mut bytes = [0u64; 3];
        for dir in [Dir::Up, Dir::Down, Dir::Both] {
            let mut up = [None; 3];
            let mut down = [None; 3];
            for p in self.paths.clone() {
                if p == PathKind::Socat && self.socat_stalled.contains(&dir) {
                    continue;
                }
                let t = match transfer(topo, p, dir, self.cfg.size, &self.pats, self.cfg.stall) {
                    Ok(t) => t,
                    // socat is the reference, not the subject: note its failure and go on.
                    Err(e) if p == PathKind::Socat => {
                        self.notes.add(format!(
                            "socat ×2, {}: failed ({e}); not retried in later runs. Each socat is one thread \
                             doing blocking writes: with bulk data both ways, #1 blocks writing to #2 while #2 \
                             blocks writing to #1",
                            dir.label()
                        ));
                        self.socat_stalled.push(dir);
                        topo.kill_forks(p);
                        topo.check_alive()?;
                        continue;
                    }
                    Err(e) => return Err(format!("{} {}: {e}", p.title(), dir.label())),
                };
                topo.check_alive()?;
                let i = p.index();
                up[i] = t.up;
                down[i] = t.down;
                cpu[i][0] += t.cpu[0];
                cpu[i][1] += t.cpu[1];
                ends[i] += t.ends_cpu;
                bytes[i] += t.bytes;
            }
            match dir {
                Dir::Up => self.res.record("tp_up", up),
                Dir::Down => self.res.record("tp_down", down),
                Dir::Both => {
                    self.res.record("tp_both_up", up);
                    self.res.record("tp_both_down", down);
                }
            }
            for (name, v) in [("up", up), ("down", down)] {
                if v.iter().any(Option::is_some) {
                    progress(&format!("{} {name} GiB/s", dir.label()), &v);
                }
            }
        }
        let per_gib = |i: usize, c: f64| (bytes[i] > 0).then(|| c / (bytes[i] as f64 / GIB));
        let mut guest = [None; 3];
        let mut host = [None; 3];
        let mut bench = [None; 3];
        for &p in &self.paths {
            let i = p.index();
            if p != PathKind::Direct {
                guest[i] = per_gib(i, cpu[i][0]);
                host[i] = per_gib(i, cpu[i][1]);
            }
            bench[i] = per_gib(i, ends[i]);
        }
        self.res.record("cpu_guest", guest);
        self.res.record("cpu_host", host);
        self.res.record("cpu_ends", bench);
        Ok(())
    }
}
