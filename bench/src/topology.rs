//! The three paths from a client to the server socket, all in one temp dir.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::procs::{self, Bins, Daemon};
use crate::sys::{self, Ctx, Res};

/// One way from the client to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum PathKind {
    /// Client connects to the server socket itself.
    Direct,
    /// Two chained `socat -b 262144 UNIX-LISTEN:..,fork UNIX-CONNECT:..`.
    Socat,
    /// sockfwd-agent + sockfwd-relay.
    Sockfwd,
}

impl PathKind {
    /// All paths, in table order.
    pub const ALL: [PathKind; 3] = [PathKind::Direct, PathKind::Socat, PathKind::Sockfwd];

    /// Column index in the table.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Column title.
    pub fn title(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Socat => "socat ×2",
            PathKind::Sockfwd => "sockfwd",
        }
    }
}

/// A daemon pair: the guest-side hop first (agent / first socat), then the host-side hop.
struct Pair {
    guest: Daemon,
    host: Daemon,
    /// socat forks a process per connection; its children must be counted.
    forks: bool,
    base_fds: [usize; 2],
}

/// The running forwarders. Field order matters: daemons are dropped (killed)
/// before the temp dir is removed.
pub struct Topology {
    socat: Option<Pair>,
    sockfwd: Option<Pair>,
    dir: tempfile::TempDir,
}

const START_TIMEOUT: Duration = Duration::from_secs(10);

impl Topology {
    /// Starts the forwarders for `paths`.
    /// With `keep`, the temp dir (sockets, daemon logs) is left behind.
    pub fn start(
        paths: &[PathKind],
        bins: Option<&Bins>,
        socat: Option<&Path>,
        keep: bool,
    ) -> Res<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sockfwd-bench.")
            .disable_cleanup(keep)
            .tempdir()
            .ctx("temp dir")?;
        let d = dir.path().to_path_buf();
        let mut topo = Self {
            socat: None,
            sockfwd: None,
            dir,
        };
        if paths.contains(&PathKind::Socat) {
            let socat = socat.ok_or(
                "socat is not installed (apt-get install socat), or leave it out with --paths",
            )?;
            let chain = |listen: &str, connect: &Path| -> Vec<OsString> {
                let mut l = OsString::from("UNIX-LISTEN:");
                l.push(d.join(listen));
                l.push(",fork");
                let mut c = OsString::from("UNIX-CONNECT:");
                c.push(connect);
                vec!["-b".into(), "262144".into(), l, c]
            };
            let mut host = Daemon::spawn(
                "socat #2",
                socat,
                &chain("socat-b.sock", &d.join("server.sock")),
                &d.join("socat-b.log"),
            )?;
            procs::wait_bound(&d.join("socat-b.sock"), &mut host, START_TIMEOUT)?;
            let mut guest = Daemon::spawn(
                "socat #1",
                socat,
                &chain("socat-a.sock", &d.join("socat-b.sock")),
                &d.join("socat-a.log"),
            )?;
            procs::wait_bound(&d.join("socat-a.sock"), &mut guest, START_TIMEOUT)?;
            topo.socat = Some(Pair {
                guest,
                host,
                forks: true,
                base_fds: [0, 0],
            });
        }
        if paths.contains(&PathKind::Sockfwd) {
            let bins = bins.ok_or("sockfwd binaries not located")?;
            let mut agent = Daemon::spawn(
                "sockfwd-agent",
                &bins.agent,
                &procs::agent_args(&d),
                &d.join("agent.log"),
            )?;
            procs::wait_connectable(&d.join("control.sock"), &mut agent, START_TIMEOUT)?;
            procs::wait_connectable(&d.join("streams.sock"), &mut agent, START_TIMEOUT)?;
            let mut relay = Daemon::spawn(
                "sockfwd-relay",
                &bins.relay,
                &procs::relay_args(&d, &bins.relay_extra),
                &d.join("relay.log"),
            )?;
            procs::wait_bound(&d.join("guest.sock"), &mut relay, START_TIMEOUT)?;
            agent.check_alive()?;
            // Let the listener finish binding before anyone connects.
            thread::sleep(Duration::from_millis(50));
            let base_fds = [
                sys::fd_count(agent.pid()).unwrap_or(0),
                sys::fd_count(relay.pid()).unwrap_or(0),
            ];
            topo.sockfwd = Some(Pair {
                guest: agent,
                host: relay,
                forks: false,
                base_fds,
            });
        }
        Ok(topo)
    }

    /// The temp dir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server socket every path ends at.
    pub fn server_path(&self) -> PathBuf {
        self.dir.path().join("server.sock")
    }

    /// Where a client of `path` connects.
    pub fn entry(&self, path: PathKind) -> PathBuf {
        self.dir.path().join(match path {
            PathKind::Direct => "server.sock",
            PathKind::Socat => "socat-a.sock",
            PathKind::Sockfwd => "guest.sock",
        })
    }

    fn pair(&self, path: PathKind) -> Option<&Pair> {
        match path {
            PathKind::Direct => None,
            PathKind::Socat => self.socat.as_ref(),
            PathKind::Sockfwd => self.sockfwd.as_ref(),
        }
    }

    /// Pids of the guest-side and host-side daemons when each is a single
    /// process (sockfwd), None for direct and for socat (a process per connection).
    pub fn single_process_pids(&self, path: PathKind) -> Option<[i32; 2]> {
        self.pair(path)
            .filter(|p| !p.forks)
            .map(|p| [p.guest.pid(), p.host.pid()])
    }

    /// Fails if any daemon has died.
    pub fn check_alive(&mut self) -> Res<()> {
        for pair in [self.socat.as_mut(), self.sockfwd.as_mut()]
            .into_iter()
            .flatten()
        {
            pair.guest.check_alive()?;
            pair.host.check_alive()?;
        }
        Ok(())
    }

    /// Waits (bounded) until the forwarders of `path` have finished with closed
    /// connections: socat's children reaped, sockfwd's descriptors back to
    /// their idle count. Returns false if they had not within `timeout`.
    pub fn settle(&self, path: PathKind, timeout: Duration) -> bool {
        let Some(pair) = self.pair(path) else {
            return true;
        };
        let start = Instant::now();
        loop {
            let idle = if pair.forks {
                sys::children(pair.guest.pid()).is_empty()
                    && sys::children(pair.host.pid()).is_empty()
            } else {
                let now = [
                    sys::fd_count(pair.guest.pid()),
                    sys::fd_count(pair.host.pid()),
                ];
                now.iter()
                    .zip(pair.base_fds)
                    .all(|(n, base)| n.is_none_or(|n| n <= base + 4))
            };
            if idle {
                return true;
            }
            if start.elapsed() > timeout {
                eprintln!(
                    "  warning: {} still busy {timeout:?} after its connections closed",
                    path.title()
                );
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the per-connection processes socat forked (after a stalled
    /// transfer they stay blocked writing to each other). No-op for sockfwd.
    pub fn kill_forks(&self, path: PathKind) {
        let Some(pair) = self.pair(path).filter(|p| p.forks) else {
            return;
        };
        for parent in [pair.guest.pid(), pair.host.pid()] {
            for child in sys::children(parent) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// CPU seconds used so far by the guest-side and host-side daemons,
    /// including reaped children (socat's per-connection processes).
    pub fn cpu_secs(&self, path: PathKind) -> Res<[f64; 2]> {
        let Some(pair) = self.pair(path) else {
            return Ok([0.0; 2]);
        };
        Ok([
            sys::cpu_secs(pair.guest.pid(), pair.forks)?,
            sys::cpu_secs(pair.host.pid(), pair.forks)?,
        ])
    }

    /// RSS (KiB) of the guest-side and host-side daemons; for socat, summed
    /// over the listener and its forked children. Second array: PSS, same layout.
    pub fn memory_kib(&self, path: PathKind) -> Res<([u64; 2], [u64; 2])> {
        let Some(pair) = self.pair(path) else {
            return Ok(([0; 2], [0; 2]));
        };
        let mut rss = [0u64; 2];
        let mut pss = [0u64; 2];
        for (i, d) in [&pair.guest, &pair.host].into_iter().enumerate() {
            rss[i] = sys::rss_kib(d.pid())?;
            pss[i] = sys::pss_kib(d.pid()).unwrap_or(0);
            if pair.forks {
                for c in sys::children(d.pid()) {
                    // A child may exit between listing and reading.
                    rss[i] += sys::rss_kib(c).unwrap_or(0);
                    pss[i] += sys::pss_kib(c).unwrap_or(0);
                }
            }
        }
        Ok((rss, pss))
    }

    /// Descriptors open in the guest-side and host-side daemons (listeners only for socat).
    pub fn fds(&self, path: PathKind) -> Option<[usize; 2]> {
        let pair = self.pair(path)?;
        let count = |d: &Daemon| {
            let mut n = sys::fd_count(d.pid()).unwrap_or(0);
            if pair.forks {
                n += sys::children(d.pid())
                    .into_iter()
                    .filter_map(sys::fd_count)
                    .sum::<usize>();
            }
            n
        };
        Some([count(&pair.guest), count(&pair.host)])
    }
}
