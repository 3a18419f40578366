//! Per-stream choice of the end-of-stream framing extension (see
//! `sockfwd_proto::framing`): the relay picks, the agent follows.

use sockfwd_proto::framing::Framing;
use sockfwd_proto::transport::Address;

/// `--framing`: how the relay picks a stream's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FramingPolicy {
    /// EOF frames on `hvsock://` streams (hybrid vsock devices drop a half-close)
    /// when the agent offers them; raw everywhere else.
    #[default]
    Auto,
    /// Always the contract's raw stream.
    Raw,
    /// EOF frames whenever the agent offers them, on any transport.
    Eof,
}

/// The framing for one stream: `advertised` is the request's `framings` bit set.
/// Never a framing the agent did not advertise (a nerdbox agent sends 0: raw).
pub fn choose(policy: FramingPolicy, streams: &Address, advertised: u32) -> Framing {
    let offered = advertised & Framing::EofFrames.bit() != 0;
    let wanted = match policy {
        FramingPolicy::Raw => false,
        FramingPolicy::Eof => true,
        // AF_VSOCK and per-port Unix sockets carry a shutdown; hybrid vsock
        // devices (Firecracker, vhost-device-vsock) close the whole connection.
        FramingPolicy::Auto => matches!(streams, Address::Hybrid { .. }),
    };
    if wanted && offered {
        Framing::EofFrames
    } else {
        Framing::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn choice_table() {
        let unix = Address::Unix(PathBuf::from("/s"));
        let hv = Address::Hybrid {
            path: PathBuf::from("/v"),
            port: 1026,
        };
        let vsock = Address::Vsock { cid: 3, port: 1026 };
        let eof = Framing::EofFrames.bit();
        let cases = [
            (FramingPolicy::Auto, &hv, eof, Framing::EofFrames),
            (FramingPolicy::Auto, &hv, 0, Framing::Raw),
            (FramingPolicy::Auto, &unix, eof, Framing::Raw),
            (FramingPolicy::Auto, &vsock, eof, Framing::Raw),
            (FramingPolicy::Raw, &hv, eof, Framing::Raw),
            (FramingPolicy::Eof, &unix, eof, Framing::EofFrames),
            (FramingPolicy::Eof, &unix, 0, Framing::Raw),
            // Unknown bits alone are not an offer.
            (FramingPolicy::Eof, &hv, 0b110, Framing::Raw),
        ];
        for (policy, addr, bits, want) in cases {
            assert_eq!(choose(policy, addr, bits), want, "{policy:?} {addr} {bits}");
        }
    }
}
