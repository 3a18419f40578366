//! Figures taken once per bench rather than per run: the agent binary's size,
//! and fresh daemons from spawn to ready.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::fwd_only;
use crate::bench::{Bench, MIB};
use crate::procs::{self, Bins, Daemon};
use crate::sys::{self, Ctx, Res};

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

impl Bench {
    /// The agent binary's size (once).
    pub(crate) fn size(&mut self) -> Res<()> {
        let Some(b) = &self.bins else { return Ok(()) };
        let s = agent_size(Some(b))?;
        self.res
            .record("size", fwd_only(s.bytes as f64 / MIB as f64));
        self.notes.add(if s.is_static {
            let stale = if procs::older_than_sources(&s.path, "agent") {
                " (older than the agent's sources: rebuild it)"
            } else {
                ""
            };
            format!("agent binary: static build {}{stale}", s.path.display())
        } else {
            format!(
                "agent binary: {} is dynamically linked (no static build found; build one with \
                 RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
                 --target x86_64-unknown-linux-gnu -p sockfwd-agent)",
                s.path.display()
            )
        });
        Ok(())
    }

    /// Fresh agents from spawn to ready.
    pub(crate) fn startup(&mut self) -> Res<()> {
        let Some(b) = &self.bins else { return Ok(()) };
        eprintln!("startup: {} fresh agents", self.cfg.startup_runs);
        for _ in 0..self.cfg.startup_runs {
            let s = startup(b)?;
            self.res.record("startup", fwd_only(s.ready_ms));
            self.res.record("startup_fwd", fwd_only(s.forward_ms));
            self.res
                .record("fresh_agent", fwd_only(s.fresh_rss_kib as f64 / 1024.0));
        }
        self.notes.add(
            "agent ready: from spawn (fork+exec) until both its control and streams sockets accept a connection \
             (polled every 200 µs)"
                .into(),
        );
        Ok(())
    }
}
