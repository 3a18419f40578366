//! `-L` specs: a local forward, listening on the host, whose clients reach a
//! target inside the guest (the other direction from `--forward`), in the forms
//! users know from `ssh -L` and Slicer's forward package.
//!
//! | spec | listens on | reaches in the guest |
//! |---|---|---|
//! | `PORT:HOST:PORT` | 127.0.0.1:PORT | HOST:PORT |
//! | `BIND:PORT:HOST:PORT` | BIND:PORT | HOST:PORT |
//! | `0:HOST:PORT` | 127.0.0.1, a free port | HOST:PORT |
//! | `PORT:/guest/path.sock` | 127.0.0.1:PORT | the Unix socket |
//! | `BIND:PORT:/guest/path.sock` | BIND:PORT | the Unix socket |
//! | `/host/path.sock:/guest/path.sock` | the Unix socket | the Unix socket |
//! | `./relative.sock:HOST:PORT` | the Unix socket | HOST:PORT |
//! | `HOST:PORT` | 127.0.0.1:PORT | HOST:PORT |
//! | `PORT:PORT` | 127.0.0.1:PORT | 127.0.0.1:PORT |
//!
//! The default bind address is loopback (ssh and Slicer default to every
//! address; a forward into a VM should not be reachable from the network unless
//! asked). BIND is an IP (`[::1]` for IPv6), `localhost`, or `*` (0.0.0.0).
//! The target is the shared grammar ([`sockfwd_proto::target`]): HOST is an
//! IPv4 address, `[IPv6]`, or a name resolved inside the guest; a guest path
//! is absolute. A host socket path starts with `/` or `.`; paths hold no `:`.
//! A spec may end with options ([`sockfwd_proto::spec_options`]: `,idle-timeout=DUR`).
//! Parsing is pure.

use sockfwd_proto::spec_options::{self, OptionError, SpecOptions};
use sockfwd_proto::target::{Target, TargetParseError};
use sockfwd_proto::transport::{ListenAt, SUN_PATH_MAX};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use thiserror::Error;

/// Where the host listens: proto's [`ListenAt`] (the name before it was shared).
#[deprecated(since = "0.2.0", note = "use sockfwd_proto::transport::ListenAt")]
pub type Listen = ListenAt;

/// One `-L` forward: a host listener and its guest target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalSpec {
    /// Where the host listens.
    pub listen: ListenAt,
    /// What each client reaches in the guest.
    pub remote: Target,
    /// The spec's options (its connections' idle timeout).
    pub options: SpecOptions,
}

impl LocalSpec {
    /// The target as `-L` specs and the relay's listener lines write it: a
    /// guest socket path without the wire form's `unix:` prefix.
    pub fn remote_text(&self) -> String {
        match &self.remote {
            Target::Unix(p) => p.display().to_string(),
            other => other.to_string(),
        }
    }
}

/// An `-L` spec as the user wrote it, parsed once: messages and `remove` name
/// it as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalArg {
    /// The text as given.
    pub text: String,
    /// What it says.
    pub spec: LocalSpec,
}

impl FromStr for LocalArg {
    type Err = LocalSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(LocalArg {
            text: s.to_owned(),
            spec: s.parse()?,
        })
    }
}

/// What is wrong with an `-L` spec.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LocalSpecError {
    /// Not one of the accepted forms.
    #[error(
        "expected [BIND:]PORT:HOST:PORT, [BIND:]PORT:/GUEST/PATH, HOST:PORT, \
         /HOST/PATH:/GUEST/PATH or ./HOST/PATH:HOST:PORT"
    )]
    Shape,
    /// A `[` without its `]`, or text around brackets.
    #[error("unbalanced or misplaced brackets")]
    Brackets,
    /// A listen port outside 0 to 65535.
    #[error("listen port {0:?} is not a number from 0 to 65535")]
    Port(String),
    /// A bind address that is not an IP, `localhost` or `*`.
    #[error("bind address {0:?} must be an IP address, localhost or *")]
    Bind(String),
    /// A host socket path that is empty, too long, or has a NUL.
    #[error("host path {0:?} must be 1 to {SUN_PATH_MAX} bytes without NUL")]
    Path(String),
    /// The guest target breaks the target grammar.
    #[error(transparent)]
    Target(#[from] TargetParseError),
    /// An option at the end is malformed.
    #[error(transparent)]
    Options(#[from] OptionError),
}

/// Splits on `:` outside `[...]`.
fn tokens(s: &str) -> Result<Vec<&str>, LocalSpecError> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            ']' if depth == 1 => depth = 0,
            '[' | ']' => return Err(LocalSpecError::Brackets),
            ':' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(LocalSpecError::Brackets);
    }
    out.push(&s[start..]);
    Ok(out)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn listen_port(s: &str) -> Result<u16, LocalSpecError> {
    s.parse::<u16>()
        .ok()
        .filter(|_| is_port(s))
        .ok_or_else(|| LocalSpecError::Port(s.to_owned()))
}

fn bind_addr(s: &str) -> Result<IpAddr, LocalSpecError> {
    let bad = || LocalSpecError::Bind(s.to_owned());
    let (host, bracketed) = match s.strip_prefix('[') {
        Some(rest) => (rest.strip_suffix(']').ok_or_else(bad)?, true),
        None => (s, false),
    };
    match (host, host.parse::<IpAddr>()) {
        ("localhost", _) if !bracketed => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ("*", _) if !bracketed => Ok(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (_, Ok(ip)) if ip.is_ipv6() == bracketed => Ok(ip),
        _ => Err(bad()),
    }
}

fn check_host_path(p: &str) -> Result<(), LocalSpecError> {
    if p.is_empty() || p.len() > SUN_PATH_MAX || p.contains('\0') {
        return Err(LocalSpecError::Path(p.to_owned()));
    }
    Ok(())
}

/// The target part: one guest path, or HOST and PORT.
fn remote(parts: &[&str]) -> Result<Target, LocalSpecError> {
    match parts {
        [path] if path.starts_with('/') => Ok(Target::unix(path)?),
        [host, port] => Ok(Target::tcp(host, port)?),
        _ => Err(LocalSpecError::Shape),
    }
}

fn loopback(port: u16) -> ListenAt {
    ListenAt::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

impl FromStr for LocalSpec {
    type Err = LocalSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (s, options) = spec_options::split(s)?;
        let mut spec = parse(s)?;
        spec.options = options;
        Ok(spec)
    }
}

/// A spec without its options.
fn parse(s: &str) -> Result<LocalSpec, LocalSpecError> {
    let t = tokens(s)?;
    let first = t.first().copied().unwrap_or_default();
    if first.starts_with('/') || first.starts_with('.') {
        check_host_path(first)?;
        return Ok(LocalSpec {
            listen: ListenAt::Unix(PathBuf::from(first)),
            remote: remote(&t[1..])?,
            options: SpecOptions::default(),
        });
    }
    let (listen, rest) = match t.as_slice() {
        // PORT:/path, PORT:HOST:PORT, PORT:PORT
        [p, path] if is_port(p) && path.starts_with('/') => (loopback(listen_port(p)?), &t[1..]),
        [p, q] if is_port(p) && is_port(q) => {
            return Ok(LocalSpec {
                listen: loopback(listen_port(p)?),
                remote: Target::tcp("127.0.0.1", q)?,
                options: SpecOptions::default(),
            });
        }
        [p, _, _] if is_port(p) => (loopback(listen_port(p)?), &t[1..]),
        // HOST:PORT: the same port on loopback.
        [host, port] => {
            let remote = Target::tcp(host, port)?;
            let port = remote.port().ok_or(LocalSpecError::Shape)?;
            return Ok(LocalSpec {
                listen: loopback(port),
                remote,
                options: SpecOptions::default(),
            });
        }
        // BIND:PORT:/path, BIND:PORT:HOST:PORT
        [bind, p, ..] if t.len() <= 4 => {
            let addr = SocketAddr::new(bind_addr(bind)?, listen_port(p)?);
            (ListenAt::Tcp(addr), &t[2..])
        }
        _ => return Err(LocalSpecError::Shape),
    };
    Ok(LocalSpec {
        listen,
        remote: remote(rest)?,
        options: SpecOptions::default(),
    })
}

impl fmt::Display for LocalSpec {
    /// The canonical `BIND:PORT:HOST:PORT` / `PATH:...` form, which parses back
    /// to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.listen {
            ListenAt::Tcp(a) if a.is_ipv6() => write!(f, "[{}]:{}", a.ip(), a.port())?,
            ListenAt::Tcp(a) => write!(f, "{}:{}", a.ip(), a.port())?,
            ListenAt::Unix(p) => write!(f, "{}", p.display())?,
        }
        write!(f, ":{}{}", self.remote_text(), self.options.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tcp(bind: &str, port: u16) -> ListenAt {
        ListenAt::Tcp(SocketAddr::new(bind.parse().unwrap(), port))
    }

    fn rtcp(host: &str, port: u16) -> Target {
        Target::tcp(host, &port.to_string()).unwrap()
    }

    fn runix(path: &str) -> Target {
        Target::unix(path).unwrap()
    }

    #[test]
    fn every_form_of_the_table() {
        let cases = [
            (
                "8080:127.0.0.1:80",
                tcp("127.0.0.1", 8080),
                rtcp("127.0.0.1", 80),
            ),
            (
                "0.0.0.0:8080:127.0.0.1:80",
                tcp("0.0.0.0", 8080),
                rtcp("127.0.0.1", 80),
            ),
            ("*:8080:web:80", tcp("0.0.0.0", 8080), rtcp("web", 80)),
            ("localhost:1:h:2", tcp("127.0.0.1", 1), rtcp("h", 2)),
            (
                "[::1]:9000:[fd00::1]:80",
                tcp("::1", 9000),
                rtcp("[fd00::1]", 80),
            ),
            (
                "0:127.0.0.1:9000",
                tcp("127.0.0.1", 0),
                rtcp("127.0.0.1", 9000),
            ),
            (
                "9000:/var/run/docker.sock",
                tcp("127.0.0.1", 9000),
                runix("/var/run/docker.sock"),
            ),
            (
                "127.0.0.1:9000:/var/run/docker.sock",
                tcp("127.0.0.1", 9000),
                runix("/var/run/docker.sock"),
            ),
            (
                "/tmp/docker.sock:/var/run/docker.sock",
                ListenAt::Unix("/tmp/docker.sock".into()),
                runix("/var/run/docker.sock"),
            ),
            (
                "./docker.sock:/var/run/docker.sock",
                ListenAt::Unix("./docker.sock".into()),
                runix("/var/run/docker.sock"),
            ),
            (
                "./web.sock:localhost:8080",
                ListenAt::Unix("./web.sock".into()),
                rtcp("localhost", 8080),
            ),
            (
                "127.0.0.1:9000",
                tcp("127.0.0.1", 9000),
                rtcp("127.0.0.1", 9000),
            ),
            ("db:5432", tcp("127.0.0.1", 5432), rtcp("db", 5432)),
            ("[::1]:22", tcp("127.0.0.1", 22), rtcp("[::1]", 22)),
            ("3000:3001", tcp("127.0.0.1", 3000), rtcp("127.0.0.1", 3001)),
        ];
        for (spec, listen, remote) in cases {
            let want = LocalSpec {
                listen,
                remote,
                options: SpecOptions::default(),
            };
            assert_eq!(spec.parse::<LocalSpec>(), Ok(want.clone()), "{spec}");
            assert_eq!(want.to_string().parse::<LocalSpec>(), Ok(want), "{spec}");
        }
    }

    #[test]
    fn targets_are_in_the_agent_form() {
        let s: LocalSpec = "1:[::1]:2".parse().unwrap();
        assert_eq!(s.remote.to_string(), "[::1]:2");
        let s: LocalSpec = "1:/run/a.sock".parse().unwrap();
        assert_eq!(s.remote.to_string(), "unix:/run/a.sock");
        assert_eq!(s.remote_text(), "/run/a.sock");
        assert_eq!(s.to_string(), "127.0.0.1:1:/run/a.sock");
        let arg: LocalArg = "1:/run/a.sock".parse().unwrap();
        assert_eq!((arg.text.as_str(), arg.spec), ("1:/run/a.sock", s));
    }

    #[test]
    fn bad_specs_say_why() {
        use TargetParseError as T;
        let cases = [
            ("", LocalSpecError::Shape),
            ("8080", LocalSpecError::Shape),
            ("8080:h:0", LocalSpecError::Target(T::Port("0".into()))),
            ("70000:h:1", LocalSpecError::Port("70000".into())),
            ("8080:h:x", LocalSpecError::Target(T::Port("x".into()))),
            ("x:1:h:2", LocalSpecError::Bind("x".into())),
            ("::1:1:h:2", LocalSpecError::Shape),
            (
                "[127.0.0.1]:1:h:2",
                LocalSpecError::Bind("[127.0.0.1]".into()),
            ),
            ("1:[h:2", LocalSpecError::Brackets),
            ("1:a b:2", LocalSpecError::Target(T::Host("a b".into()))),
            ("1:::1:2", LocalSpecError::Shape),
            (
                "1:relative.sock",
                LocalSpecError::Target(T::Port("relative.sock".into())),
            ),
            ("/h.sock:g.sock", LocalSpecError::Shape),
            ("/h.sock", LocalSpecError::Shape),
            ("1:2:3:4:5", LocalSpecError::Shape),
            (
                "/h.sock:/g\0",
                LocalSpecError::Target(T::Path("/g\0".into())),
            ),
            ("/h\0:/g", LocalSpecError::Path("/h\0".into())),
            (
                "1:/run/../etc/x",
                LocalSpecError::Target(T::Path("/run/../etc/x".into())),
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.parse::<LocalSpec>(), Err(want), "{spec:?}");
        }
        let long = format!("1:/{}", "a".repeat(SUN_PATH_MAX));
        assert!(matches!(
            long.parse::<LocalSpec>(),
            Err(LocalSpecError::Target(T::Path(_)))
        ));
    }

    fn arb_host() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| std::net::Ipv4Addr::from(b).to_string()),
            any::<[u8; 16]>().prop_map(|b| format!("[{}]", std::net::Ipv6Addr::from(b))),
            "[a-z][a-z0-9.-]{0,20}".prop_map(String::from),
        ]
    }

    fn arb_spec() -> impl Strategy<Value = LocalSpec> {
        let listen = prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(b, p)| ListenAt::Tcp(SocketAddr::new(IpAddr::V4(b.into()), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(b, p)| ListenAt::Tcp(SocketAddr::new(IpAddr::V6(b.into()), p))),
            "(/|\\./)[a-z0-9_./-]{1,40}".prop_map(|p| ListenAt::Unix(PathBuf::from(p))),
        ];
        // Guest paths as the grammar keeps them: absolute, normalized, no "..".
        let remote = prop_oneof![
            (arb_host(), 1u16..).prop_map(|(host, port)| rtcp(&host, port)),
            "(/[a-z0-9_-][a-z0-9_.-]{0,8}){1,4}".prop_map(|p| runix(&p)),
        ];
        (listen, remote).prop_map(|(listen, remote)| LocalSpec {
            listen,
            remote,
            options: SpecOptions::default(),
        })
    }

    proptest! {
        #[test]
        fn canonical_form_round_trips(spec in arb_spec()) {
            let text = spec.to_string();
            prop_assert_eq!(text.parse::<LocalSpec>(), Ok(spec), "{}", text);
        }

        #[test]
        fn any_text_parses_or_errs_without_panicking(s in "\\PC{0,60}") {
            let _ = s.parse::<LocalSpec>();
        }

        #[test]
        fn colon_soup_never_panics(s in "[0-9a-z:\\[\\]/.*]{0,30}") {
            if let Ok(spec) = s.parse::<LocalSpec>() {
                // Whatever parsed prints to a form that parses to the same spec.
                prop_assert_eq!(spec.to_string().parse::<LocalSpec>(), Ok(spec));
            }
        }

        #[test]
        fn ports_in_port_host_port_are_kept(l in 0u16.., r in 1u16..) {
            let spec: LocalSpec = format!("{l}:10.0.0.1:{r}").parse().unwrap();
            prop_assert_eq!(spec.listen, loopback(l));
            prop_assert_eq!(spec.remote, rtcp("10.0.0.1", r));
        }
    }

    #[test]
    fn options_at_the_end_parse_and_print_back() {
        let spec: LocalSpec = "8080:db.internal:5432,idle-timeout=30s".parse().unwrap();
        assert_eq!(spec.listen, tcp("127.0.0.1", 8080));
        assert_eq!(spec.remote, rtcp("db.internal", 5432));
        assert_eq!(
            spec.options.idle_timeout(None),
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            spec.to_string(),
            "127.0.0.1:8080:db.internal:5432,idle-timeout=30s"
        );
        assert_eq!(spec.to_string().parse::<LocalSpec>().unwrap(), spec);
        let err = "8080:h:1,idle-timeout=x".parse::<LocalSpec>().unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
