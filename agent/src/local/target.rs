//! Targets of host-initiated connections (the `Connect` extension): what the
//! host may name, what `--allow-target` lets it reach, and connecting to it
//! from inside the guest.
//!
//! A target is `host:port` (an IPv4 literal, `[IPv6]:port`, or a name resolved
//! here in the guest) or `unix:/absolute/path`. The host is not trusted: a
//! target is checked against the allow-list after name resolution, per address
//! actually dialed, so a name cannot smuggle a connection to an address the
//! list does not allow.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// Longest target string accepted from the host.
pub const MAX_TARGET_LEN: usize = 512;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;
/// Longest DNS name.
const MAX_NAME_LEN: usize = 253;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address given as an IP literal.
    Ip(SocketAddr),
    /// A TCP address given as a name, resolved in the guest.
    Name {
        /// The name as written.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// Why a target string was refused before anything was dialed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetParseError {
    /// Empty, too long, or holding a NUL or control character.
    #[error("target must be 1 to {MAX_TARGET_LEN} printable characters")]
    Shape,
    /// No `:PORT`.
    #[error("expected HOST:PORT, [IPV6]:PORT or unix:/PATH")]
    NoPort,
    /// The port is not 1..=65535.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// The host part is not an IP literal or a plausible name.
    #[error("host {0:?} is not an IP address or a host name")]
    Host(String),
    /// The Unix path is relative, has `..`, or is too long.
    #[error("unix path {0:?} must be absolute, without '..', at most {SUN_PATH_MAX} bytes")]
    Path(String),
}

fn parse_port(s: &str) -> Result<u16, TargetParseError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 && !s.starts_with('+') => Ok(p),
        _ => Err(TargetParseError::Port(s.to_owned())),
    }
}

fn valid_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_NAME_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        && !host.starts_with('-')
}

fn check_unix_path(raw: &str) -> Result<PathBuf, TargetParseError> {
    let p = Path::new(raw);
    if !p.is_absolute()
        || raw.len() > SUN_PATH_MAX
        || p.components().any(|c| c == Component::ParentDir)
    {
        return Err(TargetParseError::Path(raw.to_owned()));
    }
    Ok(p.components().collect())
}

/// Splits `HOST:PORT` / `[V6]:PORT` into its host (brackets removed) and port text.
fn split_host_port(s: &str) -> Result<(&str, &str), TargetParseError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| TargetParseError::Host(s.to_owned()))?;
        let port = after.strip_prefix(':').ok_or(TargetParseError::NoPort)?;
        return Ok((host, port));
    }
    s.rsplit_once(':').ok_or(TargetParseError::NoPort)
}

impl FromStr for Target {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_TARGET_LEN || s.chars().any(char::is_control) {
            return Err(TargetParseError::Shape);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return check_unix_path(path).map(Target::Unix);
        }
        let bracketed = s.starts_with('[');
        let (host, port) = split_host_port(s)?;
        let port = parse_port(port)?;
        match host.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V6(_)) if bracketed => Ok(Target::Ip(SocketAddr::new(ip, port))),
            Ok(ip @ IpAddr::V4(_)) if !bracketed => Ok(Target::Ip(SocketAddr::new(ip, port))),
            Ok(_) => Err(TargetParseError::Host(host.to_owned())),
            Err(_) if !bracketed && valid_name(host) => Ok(Target::Name {
                host: host.to_owned(),
                port,
            }),
            Err(_) => Err(TargetParseError::Host(host.to_owned())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(a) => write!(f, "{a}"),
            Target::Name { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `*` matches any run of characters (also none); everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// The port part of an allow pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

/// The host part of an allow pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Ip(IpAddr),
    /// A name, matched case-insensitively against the name the host wrote.
    Name(String),
}

/// One `--allow-target` entry: `HOST:PORT` with `*` for any host or port and
/// `A-B` for a port range (`127.0.0.1:*`, `*:8080`, `[::1]:8000-8999`,
/// `db.internal:5432`), or `unix:GLOB` (`unix:/run/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowTarget(Pattern);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Tcp(HostPattern, PortPattern),
    Unix(String),
}

impl FromStr for AllowTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("--allow-target {s:?}: {why}");
        if let Some(glob) = s.strip_prefix("unix:") {
            if !glob.starts_with('/') {
                return Err(bad("a unix pattern must be an absolute path glob"));
            }
            return Ok(AllowTarget(Pattern::Unix(glob.to_owned())));
        }
        let bracketed = s.starts_with('[');
        let (host, port) = split_host_port(s).map_err(|e| bad(&e.to_string()))?;
        let ports = match port {
            "*" => PortPattern::Any,
            p => {
                let (a, b) = p.split_once('-').unwrap_or((p, p));
                let (a, b) = (
                    parse_port(a).map_err(|e| bad(&e.to_string()))?,
                    parse_port(b).map_err(|e| bad(&e.to_string()))?,
                );
                if a > b {
                    return Err(bad("the port range is reversed"));
                }
                PortPattern::Range(a, b)
            }
        };
        let host = match (host, host.parse::<IpAddr>()) {
            ("*", _) if !bracketed => HostPattern::Any,
            (_, Ok(ip)) if bracketed == ip.is_ipv6() => HostPattern::Ip(ip),
            (h, Err(_)) if !bracketed && valid_name(h) => HostPattern::Name(h.to_ascii_lowercase()),
            _ => return Err(bad("the host must be *, an IP address or a name")),
        };
        Ok(AllowTarget(Pattern::Tcp(host, ports)))
    }
}

/// The `--allow-target` list; empty allows every target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowTarget>);

impl AllowList {
    /// Whether a TCP connection to `addr`, named `name` by the host (if it gave
    /// a name), is allowed.
    pub fn allows_tcp(&self, name: Option<&str>, addr: SocketAddr) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| match &p.0 {
                Pattern::Tcp(host, ports) => {
                    let port_ok = match *ports {
                        PortPattern::Any => true,
                        PortPattern::Range(a, b) => (a..=b).contains(&addr.port()),
                    };
                    let host_ok = match host {
                        HostPattern::Any => true,
                        HostPattern::Ip(ip) => canonical(*ip) == canonical(addr.ip()),
                        HostPattern::Name(n) => name.is_some_and(|w| w.eq_ignore_ascii_case(n)),
                    };
                    port_ok && host_ok
                }
                Pattern::Unix(_) => false,
            })
    }

    /// Whether a connection to the Unix socket `path` is allowed.
    pub fn allows_unix(&self, path: &Path) -> bool {
        let text = path.to_string_lossy();
        self.0.is_empty()
            || self.0.iter().any(|p| match &p.0 {
                Pattern::Unix(g) => glob(g, &text),
                Pattern::Tcp(..) => false,
            })
    }
}

/// An IPv4-mapped IPv6 address is the IPv4 address for the allow-list.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why the connection to a target failed.
#[derive(Debug, Error)]
pub enum TargetError {
    /// The target string is malformed.
    #[error("invalid target")]
    Parse(#[from] TargetParseError),
    /// `--allow-target` does not allow it.
    #[error("target {0} is not allowed by --allow-target")]
    NotAllowed(String),
    /// The name did not resolve (or resolved to nothing).
    #[error("cannot resolve {host:?} in the guest")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Nothing listens there.
    #[error("connection refused by {0}")]
    Refused(String),
    /// The Unix socket path does not exist.
    #[error("no such socket: {0}")]
    NoSuchPath(String),
    /// Any other connect failure.
    #[error("connecting to {target}")]
    Connect {
        /// The target.
        target: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn classify(target: &str, unix: bool, e: io::Error) -> TargetError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => TargetError::Refused(target.to_owned()),
        io::ErrorKind::NotFound if unix => TargetError::NoSuchPath(target.to_owned()),
        _ => TargetError::Connect {
            target: target.to_owned(),
            source: e,
        },
    }
}

/// Connected socket of either kind, as an owned descriptor for `Stream::from_fd`.
pub type Connected = std::os::fd::OwnedFd;

/// Checks `target` against `allow` and connects to it from inside the guest.
pub async fn connect(target: &Target, allow: &AllowList) -> Result<Connected, TargetError> {
    match target {
        Target::Unix(path) => {
            if !allow.allows_unix(path) {
                return Err(TargetError::NotAllowed(target.to_string()));
            }
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| classify(&path.display().to_string(), true, e))?;
            let s = s
                .into_std()
                .map_err(|e| classify(&target.to_string(), true, e))?;
            Ok(s.into())
        }
        Target::Ip(addr) => {
            if !allow.allows_tcp(None, *addr) {
                return Err(TargetError::NotAllowed(target.to_string()));
            }
            tcp(*addr).await
        }
        Target::Name { host, port } => {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|source| TargetError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect();
            if addrs.is_empty() {
                return Err(TargetError::Resolve {
                    host: host.clone(),
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
            let mut last = None;
            for addr in addrs {
                if !allow.allows_tcp(Some(host), addr) {
                    last.get_or_insert(TargetError::NotAllowed(format!("{target} ({addr})")));
                    continue;
                }
                match tcp(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| TargetError::NotAllowed(target.to_string())))
        }
    }
}

async fn tcp(addr: SocketAddr) -> Result<Connected, TargetError> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| classify(&addr.to_string(), false, e))?;
    // Small request/response exchanges should not wait for Nagle.
    let _ = s.set_nodelay(true);
    let s = s
        .into_std()
        .map_err(|e| classify(&addr.to_string(), false, e))?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_in_each_form() {
        let ok = [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("localhost:5432", "localhost:5432"),
            ("db.internal:1", "db.internal:1"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
            ("unix:/run//a/./b.sock", "unix:/run/a/b.sock"),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), want, "{s}");
        }
        let bad = [
            "",
            "80",
            "host:",
            "host:0",
            "host:65536",
            "host:+1",
            "::1:80",
            "[127.0.0.1]:80",
            "[::1]80",
            "-x:80",
            "a b:80",
            "unix:run.sock",
            "unix:/run/../etc/x",
            "host:80\n",
        ];
        for s in bad {
            assert!(s.parse::<Target>().is_err(), "{s:?}");
        }
    }

    fn list(specs: &[&str]) -> AllowList {
        AllowList(specs.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn allow_list_table() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        let empty = AllowList::default();
        assert!(empty.allows_tcp(None, v4("10.0.0.1:1")));
        assert!(empty.allows_unix(Path::new("/etc/x")));

        let l = list(&[
            "127.0.0.1:*",
            "*:8080",
            "[::1]:9000-9001",
            "db:5432",
            "unix:/run/*",
        ]);
        let cases = [
            (None, "127.0.0.1:22", true),
            (None, "[::ffff:127.0.0.1]:22", true),
            (None, "10.0.0.2:8080", true),
            (None, "10.0.0.2:8081", false),
            (None, "[::1]:9001", true),
            (None, "[::1]:9002", false),
            (Some("DB"), "10.1.1.1:5432", true),
            (Some("db"), "10.1.1.1:5433", false),
            (None, "10.1.1.1:5432", false),
        ];
        for (name, addr, want) in cases {
            assert_eq!(l.allows_tcp(name, v4(addr)), want, "{name:?} {addr}");
        }
        assert!(l.allows_unix(Path::new("/run/a.sock")));
        assert!(l.allows_unix(Path::new("/run/x/y.sock")));
        assert!(!l.allows_unix(Path::new("/var/run.sock")));
        assert!(!list(&["127.0.0.1:*"]).allows_unix(Path::new("/run/a")));
    }

    #[test]
    fn bad_allow_patterns_are_refused() {
        for s in [
            "",
            "*",
            "unix:run/*",
            "x:9-8",
            "[*]:1",
            "[1.2.3.4]:1",
            "h:0",
        ] {
            assert!(s.parse::<AllowTarget>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn glob_matches() {
        assert!(glob("/run/*", "/run/a"));
        assert!(glob("/run/*.sock", "/run/a/b.sock"));
        assert!(!glob("/run/*.sock", "/run/a/b.sockx"));
        assert!(glob("*", ""));
        assert!(!glob("/a", "/ab"));
    }

    #[tokio::test]
    async fn connect_reports_refused_missing_and_not_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Target::Unix(dir.path().join("nope.sock"));
        let err = connect(&missing, &AllowList::default()).await.unwrap_err();
        assert!(matches!(err, TargetError::NoSuchPath(_)), "{err}");

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect(&Target::Ip(addr), &AllowList::default())
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Refused(_)), "{err}");

        let err = connect(&Target::Ip(addr), &list(&["*:1"]))
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::NotAllowed(_)), "{err}");
    }
}
