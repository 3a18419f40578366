//! The target grammar of local forwards: what the host names in a
//! `Connect` request and what the relay's `-L` specs reach in the guest.
//!
//! A target is `HOST:PORT` with HOST an IPv4 literal or a host name (resolved
//! in the guest), `[IPV6]:PORT`, or `unix:/ABSOLUTE/PATH`. Ports are 1 to 65535
//! in decimal digits; names are at most 253 bytes of `[A-Za-z0-9._-]`, not
//! starting with `-`; paths are absolute, without `..`, without control
//! characters, and fit a Unix socket address. [`Target`]'s `Display` writes
//! the canonical form, which parses back to the same value.
//!
//! Only the grammar lives here: what a guest allows (`--allow-target`) is the
//! agent's, and how a TCP target is dialed is [`crate::tcp_dial`]. Port ranges
//! (`A-B`, [`PortRange`]) are read the same way by the agent's allow patterns
//! and the relay's `--auto-forward`.

use crate::transport::SUN_PATH_MAX;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use thiserror::Error;

/// Longest target string accepted from a peer.
pub const MAX_TARGET_LEN: usize = 512;
/// Longest host name (DNS).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// A parsed target; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP address given as an IP literal.
    Ip(SocketAddr),
    /// A TCP address given as a host name, resolved in the guest.
    Name {
        /// The name as written.
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// A Unix socket path in the guest, normalized (no `.`, no doubled `/`).
    Unix(PathBuf),
}

/// Why a target was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TargetParseError {
    /// Empty, longer than [`MAX_TARGET_LEN`], or holding a control character.
    #[error("target must be 1 to {MAX_TARGET_LEN} bytes without control characters")]
    Shape,
    /// No `:PORT`.
    #[error("expected HOST:PORT, [IPV6]:PORT or unix:/PATH")]
    NoPort,
    /// The port is not 1 to 65535 in decimal digits.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// The host is not an IP literal (IPv6 in brackets) or a host name.
    #[error("host {0:?} is not an IP address or a host name")]
    Host(String),
    /// The path is relative, has `..` or a control character, or is too long.
    #[error("unix path {0:?} must be absolute, without '..' or control characters, at most {SUN_PATH_MAX} bytes")]
    Path(String),
}

/// A target port: 1 to 65535 in at most five decimal digits (no sign).
pub fn parse_port(s: &str) -> Result<u16, TargetParseError> {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<u16>() {
        Ok(p) if digits && p != 0 => Ok(p),
        _ => Err(TargetParseError::Port(s.to_owned())),
    }
}

/// A port or an inclusive range of ports, `A` or `A-B`, each as [`parse_port`]
/// reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port of the range.
    pub first: u16,
    /// The last port of the range (`first` for a single port).
    pub last: u16,
}

/// Why a port range does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PortRangeError {
    /// A port is not 1 to 65535 in decimal digits.
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    /// `B-A` with B above A.
    #[error("the port range {0:?} is reversed")]
    Reversed(String),
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(s: &str) -> Result<PortRange, PortRangeError> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |p: &str| parse_port(p).map_err(|_| PortRangeError::Port(p.to_owned()));
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            return Err(PortRangeError::Reversed(s.to_owned()));
        }
        Ok(PortRange { first, last })
    }
}

/// Whether `host` is a plausible host name (not checked against DNS).
pub fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_NAME_LEN
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Splits `HOST:PORT` / `[V6]:PORT` into the host as written (brackets kept)
/// and the port text, without checking either (patterns such as an
/// allow-list's `*:8000-8999` use the same split).
pub fn split_host_port(s: &str) -> Result<(&str, &str), TargetParseError> {
    if s.starts_with('[') {
        let (host, after) = s
            .split_once(']')
            .ok_or_else(|| TargetParseError::Host(s.to_owned()))?;
        let port = after.strip_prefix(':').ok_or(TargetParseError::NoPort)?;
        return Ok((&s[..=host.len()], port));
    }
    s.rsplit_once(':').ok_or(TargetParseError::NoPort)
}

impl Target {
    /// A TCP target from its two parts: `host` is an IPv4 literal, a host name
    /// or `[IPV6]`; `port` is decimal.
    pub fn tcp(host: &str, port: &str) -> Result<Target, TargetParseError> {
        let port = parse_port(port)?;
        let bad = || TargetParseError::Host(host.to_owned());
        let (bare, bracketed) = match host.strip_prefix('[') {
            Some(rest) => (rest.strip_suffix(']').ok_or_else(bad)?, true),
            None => (host, false),
        };
        match bare.parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv6() == bracketed => Ok(Target::Ip(SocketAddr::new(ip, port))),
            Ok(_) => Err(bad()),
            Err(_) if !bracketed && is_host_name(bare) => Ok(Target::Name {
                host: bare.to_owned(),
                port,
            }),
            Err(_) => Err(bad()),
        }
    }

    /// A Unix socket target from its path (without the `unix:` prefix).
    pub fn unix(path: &str) -> Result<Target, TargetParseError> {
        let p = Path::new(path);
        if !p.is_absolute()
            || path.len() > SUN_PATH_MAX
            || path.chars().any(char::is_control)
            || p.components().any(|c| c == Component::ParentDir)
        {
            return Err(TargetParseError::Path(path.to_owned()));
        }
        Ok(Target::Unix(p.components().collect()))
    }

    /// The TCP port; `None` for a Unix socket.
    pub fn port(&self) -> Option<u16> {
        match self {
            Target::Ip(a) => Some(a.port()),
            Target::Name { port, .. } => Some(*port),
            Target::Unix(_) => None,
        }
    }
}

impl FromStr for Target {
    type Err = TargetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_TARGET_LEN || s.chars().any(char::is_control) {
            return Err(TargetParseError::Shape);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            return Target::unix(path);
        }
        let (host, port) = split_host_port(s)?;
        Target::tcp(host, port)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        let r: PortRange = "8000-8999".parse().unwrap();
        assert!(r.contains(8000) && r.contains(8999) && !r.contains(9000));
        assert_eq!(
            "22".parse(),
            Ok(PortRange {
                first: 22,
                last: 22
            })
        );
        for (bad, want) in [
            ("", PortRangeError::Port(String::new())),
            ("0", PortRangeError::Port("0".into())),
            ("+1", PortRangeError::Port("+1".into())),
            ("1-", PortRangeError::Port(String::new())),
            ("1-2-3", PortRangeError::Port("2-3".into())),
            ("9-8", PortRangeError::Reversed("9-8".into())),
        ] {
            assert_eq!(bad.parse::<PortRange>(), Err(want), "{bad:?}");
        }
        assert_eq!(
            PortRangeError::Reversed("9-8".into()).to_string(),
            "the port range \"9-8\" is reversed"
        );
    }

    #[test]
    fn each_form_parses_to_its_canonical_text() {
        let ok = [
            ("127.0.0.1:80", "127.0.0.1:80"),
            ("[::1]:8080", "[::1]:8080"),
            ("[fd00::1]:1", "[fd00::1]:1"),
            ("localhost:5432", "localhost:5432"),
            ("db.internal:1", "db.internal:1"),
            ("a_b:65535", "a_b:65535"),
            ("h:080", "h:80"),
            ("unix:/run/app.sock", "unix:/run/app.sock"),
            ("unix:/run//a/./b.sock", "unix:/run/a/b.sock"),
        ];
        for (s, want) in ok {
            let t = s.parse::<Target>().unwrap();
            assert_eq!(t.to_string(), want, "{s}");
            assert_eq!(want.parse::<Target>().unwrap(), t, "{s}");
        }
        assert_eq!(
            "10.0.0.1:9".parse::<Target>().unwrap(),
            Target::Ip("10.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            "db:5".parse::<Target>().unwrap(),
            Target::Name {
                host: "db".into(),
                port: 5
            }
        );
    }

    #[test]
    fn bad_targets_say_why() {
        use TargetParseError as E;
        let long_path = format!("unix:/{}", "a".repeat(SUN_PATH_MAX));
        let long_name = format!("{}:1", "a".repeat(MAX_HOST_NAME_LEN + 1));
        let cases = [
            ("", E::Shape),
            ("host:80\n", E::Shape),
            (&"a".repeat(MAX_TARGET_LEN + 1), E::Shape),
            ("80", E::NoPort),
            ("[::1]80", E::NoPort),
            ("host:", E::Port(String::new())),
            ("host:0", E::Port("0".into())),
            ("host:65536", E::Port("65536".into())),
            ("host:+1", E::Port("+1".into())),
            ("host:000080", E::Port("000080".into())),
            ("::1:80", E::Host("::1".into())),
            ("[127.0.0.1]:80", E::Host("[127.0.0.1]".into())),
            ("[::1:80", E::Host("[::1:80".into())),
            ("[h]:80", E::Host("[h]".into())),
            ("-x:80", E::Host("-x".into())),
            ("a b:80", E::Host("a b".into())),
            (&long_name, E::Host("a".repeat(MAX_HOST_NAME_LEN + 1))),
            ("unix:run.sock", E::Path("run.sock".into())),
            ("unix:/run/../etc/x", E::Path("/run/../etc/x".into())),
            (&long_path, E::Path(long_path[5..].to_owned())),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Target>(), Err(want), "{s:?}");
        }
        assert_eq!(
            Target::unix("/g\0"),
            Err(E::Path("/g\0".into())),
            "the parts are checked on their own too"
        );
    }

    #[test]
    fn the_parts_for_patterns() {
        assert_eq!(split_host_port("*:8000-8999"), Ok(("*", "8000-8999")));
        assert_eq!(split_host_port("[::1]:*"), Ok(("[::1]", "*")));
        assert_eq!(split_host_port("x"), Err(TargetParseError::NoPort));
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("0"), Err(TargetParseError::Port("0".into())));
    }

    #[test]
    fn ports() {
        assert_eq!("h:7".parse::<Target>().unwrap().port(), Some(7));
        assert_eq!("[::1]:8".parse::<Target>().unwrap().port(), Some(8));
        assert_eq!("unix:/a".parse::<Target>().unwrap().port(), None);
    }
}
