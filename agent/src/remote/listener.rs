//! A remote forward's TCP listener in the guest (the `tcp-listen` extension:
//! `Socket.tcp_listen`); a Unix one is placed by [`crate::remote::paths`], and
//! both accept as proto's [`ClientListener`].
//!
//! A TCP listener is confined: loopback addresses (127.0.0.0/8, ::1) always,
//! anything else only when an `--allow-listen` pattern allows it, so a host
//! cannot open a public port in the guest by accident. Its socket inode goes
//! into the forward table, so the guest's port list (`WatchPorts`) leaves the
//! agent's own listeners out.

use crate::config::AllowList;
use sockfwd_proto::transport::ClientListener;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use thiserror::Error;

/// Why a TCP listener was refused or could not be created.
#[derive(Debug, Error)]
pub enum TcpListenError {
    /// `Socket.tcp_listen` is not an address.
    #[error("expected IP:PORT ([IPV6]:PORT), not a name")]
    Address,
    /// Both a socket path and a TCP address.
    #[error("a socket gives a path or a TCP address, not both")]
    Both,
    /// A mode or owner, which only a socket file has.
    #[error("mode, uid and gid apply to socket files, not to TCP listeners")]
    Owner,
    /// Neither loopback nor allowed by `--allow-listen`.
    #[error("{0} is not allowed: the agent listens on loopback addresses unless --allow-listen allows more")]
    NotAllowed(SocketAddr),
    /// bind/listen failed (the address is in use, or not the guest's).
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Reads `Socket.tcp_listen`: an IP literal and a port (0: any free port).
pub fn parse(text: &str) -> Result<SocketAddr, TcpListenError> {
    text.parse().map_err(|_| TcpListenError::Address)
}

/// Whether the host may have the agent listen on `addr`: loopback always,
/// anything else when an `--allow-listen` pattern matches (port 0 only when
/// the pattern allows any port).
pub fn allowed(addr: SocketAddr, allow: &AllowList) -> bool {
    // An IPv4-mapped loopback address is loopback too.
    addr.ip().to_canonical().is_loopback() || (!allow.0.is_empty() && allow.allows_tcp(None, addr))
}

/// A bound TCP listener (its address has the port the kernel picked for
/// port 0) and its socket inode.
pub struct BoundTcp {
    /// The listener.
    pub listener: ClientListener,
    /// The socket's inode, as `sock_diag` and `/proc/net/tcp` name it.
    pub inode: u64,
}

/// Listens on `addr` (see [`ClientListener::bind_tcp`]). Needs a tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<BoundTcp, TcpListenError> {
    let fail = |source| TcpListenError::Listen { addr, source };
    let listener = ClientListener::bind_tcp(addr).map_err(fail)?;
    let inode = nix::sys::stat::fstat(listener.as_raw_fd())
        .map_err(|e| fail(e.into()))?
        .st_ino;
    Ok(BoundTcp { listener, inode })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockfwd_proto::transport::ListenAt;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_always_the_rest_only_when_allowed() {
        let none = AllowList::default();
        for ok in [
            "127.0.0.1:80",
            "127.9.9.9:0",
            "[::1]:5432",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(allowed(addr(ok), &none), "{ok}");
        }
        for no in ["0.0.0.0:80", "[::]:80", "10.0.2.15:22", "[fe80::1]:1"] {
            assert!(!allowed(addr(no), &none), "{no}");
        }
        let some = AllowList(vec![
            "0.0.0.0:8000-8999".parse().unwrap(),
            "[::]:*".parse().unwrap(),
        ]);
        assert!(allowed(addr("0.0.0.0:8080"), &some));
        assert!(!allowed(addr("0.0.0.0:9000"), &some));
        assert!(!allowed(addr("0.0.0.0:0"), &some), "port 0 needs a * port");
        assert!(allowed(addr("[::]:0"), &some));
        assert!(!allowed(addr("10.0.2.15:8080"), &some));
    }

    #[tokio::test]
    async fn binds_reports_the_port_it_got_and_accepts() {
        let b = bind(addr("127.0.0.1:0")).unwrap();
        let ListenAt::Tcp(bound) = *b.listener.at() else {
            panic!("not TCP: {}", b.listener.at());
        };
        assert_ne!(bound.port(), 0);
        assert!(b.inode > 0);
        let client = tokio::net::TcpStream::connect(bound).await.unwrap();
        let mut conn = b.listener.accept().await.unwrap();
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut conn, &mut buf)
                .await
                .unwrap(),
            0
        );
        let err = bind(bound).err().unwrap();
        assert!(
            err.to_string().starts_with("listening on 127.0.0.1:"),
            "{err}"
        );
        assert!(matches!(
            parse("localhost:80"),
            Err(TcpListenError::Address)
        ));
        assert_eq!(parse("[::1]:0").unwrap(), addr("[::1]:0"));
    }
}
