//! `--allow-target`: which targets the host may reach in the guest with
//! `Connect` (a local forward's target). A pattern is `HOST:PORT` with `*` for
//! any host or port and `A-B` for a port range, or `unix:GLOB`; an empty list
//! allows every target. The target grammar itself is the wire's
//! (`sockfwd_proto::target`); the patterns split and read ports with its pieces.

use sockfwd_proto::target::{
    is_host_name, split_host_port, PortRange, PortRangeError, TargetParseError,
};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use thiserror::Error;

/// The `--allow-target` list; empty allows every target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowTarget>);

/// One `--allow-target` entry: `HOST:PORT` with `*` for any host or port and
/// `A-B` for a port range (`127.0.0.1:*`, `*:8080`, `[::1]:8000-8999`,
/// `db.internal:5432`), or `unix:GLOB` (`unix:/run/*`). It prints as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowTarget {
    text: String,
    pattern: Pattern,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Tcp(HostPattern, PortPattern),
    Unix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    Ip(IpAddr),
    /// A name, matched case-insensitively against the name the host wrote.
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    Any,
    Range(PortRange),
}

/// Why an `--allow-target` pattern was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("expected HOST:PORT (* for any, A-B for a range) or unix:GLOB: {0}")]
pub struct AllowTargetError(#[source] PatternError);

/// What is wrong with an `--allow-target` pattern.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PatternError {
    /// `unix:` followed by a relative glob.
    #[error("a unix pattern must be an absolute path glob")]
    UnixRelative,
    /// Not `HOST:PORT` (the target grammar's own complaint).
    #[error(transparent)]
    Target(#[from] TargetParseError),
    /// Not a port or a range of ports.
    #[error(transparent)]
    Ports(#[from] PortRangeError),
    /// The host part is not `*`, an IP literal (IPv6 in brackets) or a name.
    #[error("the host must be *, an IP address or a name")]
    Host,
}

fn parse_pattern(s: &str) -> Result<Pattern, PatternError> {
    if let Some(glob) = s.strip_prefix("unix:") {
        if !glob.starts_with('/') {
            return Err(PatternError::UnixRelative);
        }
        return Ok(Pattern::Unix(glob.to_owned()));
    }
    let (host, port) = split_host_port(s)?;
    let (host, bracketed) = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(inner) => (inner, true),
        None => (host, false),
    };
    let ports = match port {
        "*" => PortPattern::Any,
        p => PortPattern::Range(p.parse()?),
    };
    let host = match (host, host.parse::<IpAddr>()) {
        ("*", _) if !bracketed => HostPattern::Any,
        (_, Ok(ip)) if bracketed == ip.is_ipv6() => HostPattern::Ip(ip),
        (h, Err(_)) if !bracketed && is_host_name(h) => HostPattern::Name(h.to_ascii_lowercase()),
        _ => return Err(PatternError::Host),
    };
    Ok(Pattern::Tcp(host, ports))
}

impl FromStr for AllowTarget {
    type Err = AllowTargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(AllowTarget {
            text: s.to_owned(),
            pattern: parse_pattern(s).map_err(AllowTargetError)?,
        })
    }
}

impl fmt::Display for AllowTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

/// An IPv4-mapped IPv6 address is the IPv4 address for the allow-list.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl AllowList {
    /// Whether a TCP connection to `addr`, named `name` by the host (if it gave
    /// a name), is allowed.
    pub fn allows_tcp(&self, name: Option<&str>, addr: SocketAddr) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|p| match &p.pattern {
                Pattern::Tcp(host, ports) => {
                    let port_ok = match *ports {
                        PortPattern::Any => true,
                        PortPattern::Range(r) => r.contains(addr.port()),
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
            || self.0.iter().any(|p| match &p.pattern {
                Pattern::Unix(g) => glob(g, &text),
                Pattern::Tcp(..) => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (s, why) in [
            ("", "expected HOST:PORT, [IPV6]:PORT or unix:/PATH"),
            ("*", "expected HOST:PORT"),
            ("unix:run/*", "absolute path glob"),
            ("x:9-8", "reversed"),
            ("[*]:1", "the host must be"),
            ("[1.2.3.4]:1", "the host must be"),
            ("h:0", "port \"0\" is not a number"),
            ("h:+1", "port \"+1\" is not a number"),
        ] {
            let err = s.parse::<AllowTarget>().unwrap_err().to_string();
            assert!(
                err.starts_with("expected HOST:PORT (* for any, A-B for a range) or unix:GLOB: "),
                "{s:?}: {err}"
            );
            assert!(err.contains(why), "{s:?}: {err}");
        }
        assert_eq!(
            "DB:1-2".parse::<AllowTarget>().unwrap().to_string(),
            "DB:1-2"
        );
    }

    #[test]
    fn glob_matches() {
        assert!(glob("/run/*", "/run/a"));
        assert!(glob("/run/*.sock", "/run/a/b.sock"));
        assert!(!glob("/run/*.sock", "/run/a/b.sockx"));
        assert!(glob("*", ""));
        assert!(!glob("/a", "/ab"));
    }
}
