//! Control and stream endpoint addresses: `unix://PATH`, `vsock://CID:PORT`,
//! `hvsock://PATH:PORT`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use thiserror::Error;

/// `VMADDR_CID_ANY`: listen on every CID (written `-1` in addresses, as ttrpc does).
pub const VMADDR_CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_HOST`: the hypervisor's host.
pub const VMADDR_CID_HOST: u32 = 2;

/// An endpoint on one of the transports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A Unix socket path (tests; libkrun's per-port sockets).
    Unix(PathBuf),
    /// An AF_VSOCK address.
    Vsock {
        /// Context ID; [`VMADDR_CID_ANY`] for a guest listener.
        cid: u32,
        /// vsock port.
        port: u32,
    },
    /// Hybrid vsock (Firecracker, Cloud Hypervisor, vhost-device-vsock): the VMM's
    /// Unix socket, then `CONNECT port\n`.
    Hybrid {
        /// The VMM's Unix socket.
        path: PathBuf,
        /// Guest vsock port.
        port: u32,
    },
}

/// Why an address string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddressError {
    /// No known scheme.
    #[error("address {0:?}: expected unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT")]
    Scheme(String),
    /// The part after the scheme is malformed.
    #[error("address {addr:?}: {reason}")]
    Malformed {
        /// The whole address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn parse_port(addr: &str, port: &str) -> Result<u32, AddressError> {
    port.parse::<u32>().map_err(|_| AddressError::Malformed {
        addr: addr.to_owned(),
        reason: "port must be a number from 0 to 4294967295",
    })
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = |reason| AddressError::Malformed {
            addr: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(malformed("empty path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock://") {
            let (cid, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| malformed("expected CID:PORT"))?;
            let cid = match cid {
                "-1" | "any" => VMADDR_CID_ANY,
                "host" => VMADDR_CID_HOST,
                c => c
                    .parse::<u32>()
                    .map_err(|_| malformed("CID must be a number, -1 or host"))?,
            };
            return Ok(Address::Vsock {
                cid,
                port: parse_port(s, port)?,
            });
        }
        if let Some(rest) = s.strip_prefix("hvsock://") {
            let (path, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| malformed("expected PATH:PORT"))?;
            if path.is_empty() {
                return Err(malformed("empty path"));
            }
            return Ok(Address::Hybrid {
                path: PathBuf::from(path),
                port: parse_port(s, port)?,
            });
        }
        Err(AddressError::Scheme(s.to_owned()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Vsock {
                cid: VMADDR_CID_ANY,
                port,
            } => write!(f, "vsock://-1:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::Hybrid { path, port } => write!(f, "hvsock://{}:{port}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form_and_round_trips() {
        for s in [
            "unix:///run/a.sock",
            "vsock://-1:1025",
            "vsock://3:1026",
            "hvsock:///tmp/v.sock:1026",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            "vsock://host:1025".parse::<Address>().unwrap(),
            Address::Vsock {
                cid: VMADDR_CID_HOST,
                port: 1025
            }
        );
    }

    #[test]
    fn refuses_bad_forms() {
        for s in [
            "",
            "tcp://x",
            "unix://",
            "vsock://3",
            "vsock://x:1",
            "vsock://3:99999999999",
            "hvsock://:1",
            "hvsock:///a",
        ] {
            assert!(s.parse::<Address>().is_err(), "{s}");
        }
    }
}
