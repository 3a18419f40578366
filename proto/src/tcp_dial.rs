//! Dialing a TCP target by name or address, the one rule both daemons use:
//! the agent for a local forward's target in the guest, the relay for a
//! remote forward's target on the host.
//!
//! - An IP literal is dialed as it is; a name is resolved where the dialer
//!   runs, and its addresses are tried in the resolver's order until one
//!   answers (a refusal or an error moves on to the next; the last failure is
//!   reported).
//! - `localhost` is not asked of the resolver: it is `::1`, then
//!   `127.0.0.1` (RFC 6761 reserves the name for loopback, and a guest's or a
//!   container's `/etc/hosts` often lists only one of them), so a service
//!   bound to either loopback address is reached.
//! - `allow` is asked per address before it is dialed, after resolution, so a
//!   name cannot smuggle a connection to an address the caller's policy refuses.
//! - Connected sockets get `TCP_NODELAY`: forwarded request/response
//!   exchanges should not wait for Nagle.
//!
//! No deadline here: each caller bounds the whole dial with its own.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use thiserror::Error;
use tokio::net::TcpStream;

/// Why a TCP target could not be reached.
#[derive(Debug, Error)]
pub enum TcpDialError {
    /// The name did not resolve, or resolved to no address.
    #[error("cannot resolve {host:?}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// The caller's policy refused every address the name resolved to
    /// (the first one refused is named).
    #[error("{0} is not allowed")]
    NotAllowed(SocketAddr),
    /// Nothing listens there.
    #[error("connection refused by {0}")]
    Refused(SocketAddr),
    /// Any other connect failure.
    #[error("connecting to {addr}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether `host` names the loopback interface, `localhost` (any case, with
/// or without the root's trailing dot).
pub fn is_localhost(host: &str) -> bool {
    host.strip_suffix('.')
        .unwrap_or(host)
        .eq_ignore_ascii_case("localhost")
}

/// The addresses to try for `host:port`, in order: the IP itself (`host`
/// without brackets), `::1` and `127.0.0.1` for `localhost`, or what the
/// resolver answers.
pub async fn addresses(host: &str, port: u16) -> Result<Vec<SocketAddr>, TcpDialError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if is_localhost(host) {
        return Ok(vec![
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        ]);
    }
    let resolve = |source| TcpDialError::Resolve {
        host: host.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(resolve)?
        .collect();
    if addrs.is_empty() {
        return Err(resolve(io::Error::from(io::ErrorKind::NotFound)));
    }
    Ok(addrs)
}

/// Connects to `host:port` (see the module docs); `allow` decides per
/// address whether it may be dialed.
pub async fn dial(
    host: &str,
    port: u16,
    mut allow: impl FnMut(SocketAddr) -> bool,
) -> Result<TcpStream, TcpDialError> {
    let mut last = None;
    for addr in addresses(host, port).await? {
        if !allow(addr) {
            last.get_or_insert(TcpDialError::NotAllowed(addr));
            continue;
        }
        match connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                tracing::trace!(%addr, cause = %e, "TCP target address did not answer");
                last = Some(e);
            }
        }
    }
    // `addresses` never answers an empty list.
    Err(last.unwrap_or_else(|| TcpDialError::Resolve {
        host: host.to_owned(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, TcpDialError> {
    let s = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => TcpDialError::Refused(addr),
        _ => TcpDialError::Connect { addr, source: e },
    })?;
    // A socket that refuses the option still works.
    let _ = s.set_nodelay(true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A listener on `ip` (a free port) that answers each connection with
    /// `tag` and closes it; returns the port.
    async fn tagged(ip: IpAddr, tag: &'static [u8]) -> u16 {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(tag).await;
            }
        });
        port
    }

    async fn read_all(mut s: TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn localhost_reaches_a_service_on_either_loopback_address() {
        // Only on ::1: the resolver of this machine may not list it for
        // localhost, and the dial finds it anyway.
        let port = tagged(Ipv6Addr::LOCALHOST.into(), b"v6").await;
        let s = dial("localhost", port, |_| true).await.unwrap();
        assert!(s.nodelay().unwrap());
        assert_eq!(read_all(s).await, b"v6");

        // Only on 127.0.0.1: ::1 refuses, the next address answers.
        let port = tagged(Ipv4Addr::LOCALHOST.into(), b"v4").await;
        let s = dial("LOCALHOST.", port, |_| true).await.unwrap();
        assert_eq!(read_all(s).await, b"v4");
    }

    #[tokio::test]
    async fn failures_name_the_address_and_the_policy_is_asked_per_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = dial("127.0.0.1", addr.port(), |_| true).await.unwrap_err();
        assert!(
            matches!(err, TcpDialError::Refused(a) if a == addr),
            "{err}"
        );
        assert_eq!(err.to_string(), format!("connection refused by {addr}"));

        let mut asked = Vec::new();
        let err = dial("localhost", addr.port(), |a| {
            asked.push(a);
            false
        })
        .await
        .unwrap_err();
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(
            matches!(err, TcpDialError::NotAllowed(a) if a.ip() == Ipv6Addr::LOCALHOST),
            "{err}"
        );

        let err = dial("no-such-host.invalid", 1, |_| true).await.unwrap_err();
        assert!(matches!(err, TcpDialError::Resolve { .. }), "{err}");
    }

    #[tokio::test]
    async fn literals_skip_the_resolver() {
        assert_eq!(
            addresses("::1", 5).await.unwrap(),
            ["[::1]:5".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            addresses("10.0.0.1", 6).await.unwrap(),
            ["10.0.0.1:6".parse::<SocketAddr>().unwrap()]
        );
        assert!(is_localhost("localhost") && is_localhost("Localhost."));
        assert!(!is_localhost("localhost.example") && !is_localhost("local"));
    }
}
