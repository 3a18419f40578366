//! The burst figure: many non-blocking connects at once, counting how many get
//! their echo and how the others failed.

use std::time::Duration;

use super::{progress, tag};
use crate::bench::{Bench, Figure};
use crate::server::{Mode, Server};
use crate::sys::{Ctx, Res};
use crate::topology::{PathKind, Topology};

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

impl Bench {
    /// Bursts of concurrent connects, every path.
    pub(crate) fn burst(&mut self, topo: &mut Topology) -> Res<()> {
        let mut served = [None; 3];
        for p in self.paths.clone() {
            let b = burst(topo, p, self.cfg.burst)?;
            topo.check_alive()?;
            served[p.index()] = Some(b.served as f64);
            let tally = &mut self.burst_misses[p.index()];
            tally.refused.push(b.refused as f64);
            tally.dropped.push(b.dropped as f64);
            tally.timed_out.push(b.timed_out as f64);
            if tally.first_error.is_none() {
                tally.first_error = b.first_error;
            }
        }
        progress("burst served", &served);
        self.res.record("burst", served);
        Ok(())
    }

    /// One note per path whose bursts lost connections, and how bursts are made.
    pub(crate) fn burst_notes(&mut self) {
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            if lo == hi {
                format!("{lo}")
            } else {
                format!("{lo}–{hi}")
            }
        };
        for p in PathKind::ALL {
            let b = &self.burst_misses[p.index()];
            if b.refused
                .iter()
                .chain(&b.dropped)
                .chain(&b.timed_out)
                .any(|&x| x > 0.0)
            {
                self.notes.add(format!(
                    "burst, {}: per run {} refused at connect (listen backlog full), {} closed without the echo, \
                     {} timed out; first error: {}",
                    p.title(),
                    range(&b.refused),
                    range(&b.dropped),
                    range(&b.timed_out),
                    b.first_error.as_deref().unwrap_or("")
                ));
            }
        }
        if self.selected(Figure::Burst) {
            self.notes.add(
                "burst: non-blocking connects (as tokio and Go clients do), so a full listen backlog is a refused \
                 connection; socat listens with its default backlog of 5"
                    .into(),
            );
        }
    }
}
