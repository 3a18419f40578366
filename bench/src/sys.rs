//! Thin wrappers over the OS: limits, CPU pinning, /proc readers, Unix sockets.

use std::fmt::Display;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::time::{TimeVal, TimeValLike};

/// Every fallible step of the bench reports a plain message with its context.
pub type Res<T> = Result<T, String>;

/// Adds context to an error as it travels up.
pub trait Ctx<T> {
    /// Prefixes the error with `what`.
    fn ctx(self, what: &str) -> Res<T>;
    /// Prefixes the error with a message built only on failure.
    fn with_ctx(self, what: impl FnOnce() -> String) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
    fn with_ctx(self, what: impl FnOnce() -> String) -> Res<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// Raises RLIMIT_NOFILE (soft and, when allowed, hard) to at least `want`;
/// children inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> Res<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ctx("getrlimit(NOFILE)")?;
    if soft >= want {
        return Ok(soft);
    }
    if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(want);
    }
    let new_soft = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard).ctx("setrlimit(NOFILE)")?;
    Ok(new_soft)
}

/// Pins the calling thread (and so every thread and child created after it) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> Res<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).with_ctx(|| format!("CPU {cpu}"))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_ctx(|| format!("sched_setaffinity(CPU {cpu})"))
}

fn clk_tck() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// CPU seconds (user + system) of a process from /proc/PID/stat; with
/// `children`, also those of its waited-for children (cutime + cstime).
pub fn cpu_secs(pid: i32, children: bool) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_ctx(|| format!("read /proc/{pid}/stat"))?;
    // Fields after "(comm) ": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| -> Res<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: field {} missing", i + 3))
    };
    let mut ticks = get(11)? + get(12)?;
    if children {
        ticks += get(13)? + get(14)?;
    }
    Ok(ticks / clk_tck())
}

fn status_kib(pid: i32, file: &str, key: &str) -> Res<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
        .with_ctx(|| format!("read /proc/{pid}/{file}"))?;
    parse_kib(&text, key).ok_or_else(|| format!("/proc/{pid}/{file}: no {key}"))
}

fn parse_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> Res<u64> {
    status_kib(pid, "status", "VmRSS")
}

/// Proportional set size in KiB (shared pages split between sharers), if readable.
pub fn pss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "smaps_rollup", "Pss").ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Soft RLIMIT_NOFILE of a process, from /proc/PID/limits.
pub fn nofile_limit(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Direct children of a process (all of its threads).
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

/// Kernel memory that grows with open sockets and processes, machine-wide (KiB).
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMem {
    /// Slab (socket objects, files, dentries, epoll items, pipes' inodes...).
    pub slab: u64,
    /// Kernel stacks (one per thread: counts for forked forwarders).
    pub kernel_stack: u64,
    /// Page tables (per process).
    pub page_tables: u64,
}

impl KernelMem {
    /// Reads /proc/meminfo.
    pub fn read() -> Res<Self> {
        let text = fs::read_to_string("/proc/meminfo").ctx("read /proc/meminfo")?;
        let get = |k: &str| parse_kib(&text, k).ok_or_else(|| format!("/proc/meminfo: no {k}"));
        Ok(Self {
            slab: get("Slab")?,
            kernel_stack: get("KernelStack")?,
            page_tables: get("PageTables")?,
        })
    }
    /// Sum of the three, KiB.
    pub fn total(&self) -> u64 {
        self.slab + self.kernel_stack + self.page_tables
    }
}

/// "sockets: used N" from /proc/net/sockstat.
pub fn sockets_used() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("sockets:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "used" {
            return it.next()?.parse().ok();
        }
    }
    None
}

/// CPU seconds (user + system) used so far by this process, all threads.
pub fn self_cpu_secs() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => 0.0,
    }
}

fn timeval(d: Duration) -> TimeVal {
    TimeVal::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1))
}

/// Blocking connect whose wait for a full listen backlog is bounded by
/// `timeout` (SO_SNDTIMEO); reads and writes get the same timeout.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::SendTimeout, &timeval(timeout))?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = UnixStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    Ok(stream)
}

/// Binds a Unix listener with the largest backlog the kernel allows
/// (somaxconn) and an accept timeout (SO_RCVTIMEO), so accept loops can
/// notice a stop flag.
pub fn listen(path: &Path, accept_timeout: Duration) -> Res<UnixListener> {
    let listener = UnixListener::bind(path).with_ctx(|| format!("bind {}", path.display()))?;
    socket::listen(&listener, Backlog::MAXALLOWABLE).ctx("listen")?;
    socket::setsockopt(&listener, sockopt::ReceiveTimeout, &timeval(accept_timeout))
        .ctx("SO_RCVTIMEO")?;
    Ok(listener)
}

/// True for the errors a timed-out blocking call returns.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// CPU model, number of CPUs, kernel release.
pub fn machine() -> (String, usize, String) {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (model, cores, kernel)
}

/// Current UTC date and time, "YYYY-MM-DD HH:MM UTC".
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = i64::try_from(secs).unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kib_lines() {
        let text = "Name:\tx\nVmRSS:\t    1234 kB\nSlab:  99 kB\n";
        assert_eq!(parse_kib(text, "VmRSS"), Some(1234));
        assert_eq!(parse_kib(text, "Slab"), Some(99));
        assert_eq!(parse_kib(text, "Nope"), None);
    }

    #[test]
    fn date_is_plausible() {
        let d = utc_now();
        assert!(d.starts_with("20"), "{d}");
        assert_eq!(d.len(), "2026-01-01 00:00 UTC".len());
    }
}
