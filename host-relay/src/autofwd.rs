//! `--auto-forward`: each TCP port the guest reports listening (WatchPorts)
//! gets a host listener on the same port, or the next free one, which is
//! reported on stdout and in the log; it is closed when the guest port closes
//! (or the control session ends: the next session reports the ports again).
//!
//! The guest is not trusted: a port outside the filter, port 0, or an address
//! that is not an IP literal is ignored, and the host listener always binds
//! the configured address (loopback unless `--auto-forward-bind` says
//! otherwise), never one the guest names.

use crate::local::{Listen, LocalSpec, Remote};
use crate::report::chain;
use crate::runtime::Origin;
use crate::Shared;
use sockfwd_proto::rpc::{PortEvent, PortEventKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// How many host ports are tried, from the guest's port upwards.
pub const PORT_TRIES: u16 = 100;
/// Most auto-forwards at once: a guest reporting thousands of ports cannot
/// make the host bind thousands of listeners.
pub const MAX_AUTO: usize = 256;

/// Which guest ports are auto-forwarded: `all`, or ports and ranges
/// (`3000,8000-8999`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortFilter(Vec<(u16, u16)>);

impl PortFilter {
    /// Every port.
    pub fn all() -> PortFilter {
        PortFilter(Vec::new())
    }

    /// Whether `port` is forwarded.
    pub fn allows(&self, port: u16) -> bool {
        self.0.is_empty() || self.0.iter().any(|(a, b)| (*a..=*b).contains(&port))
    }
}

impl FromStr for PortFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "all" {
            return Ok(PortFilter::all());
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port from 1 to 65535"))
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {part:?} is reversed"));
            }
            ranges.push((a, b));
        }
        Ok(PortFilter(ranges))
    }
}

/// Follows the guest's port events for the session's lifetime; never returns
/// (pending once the stream ends, so the session's select ignores it).
pub(crate) async fn run(shared: &Arc<Shared>) {
    let Some(filter) = &shared.config.auto_forward else {
        return std::future::pending().await;
    };
    let mut events = match shared.guest.watch_ports().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(cause = %chain(&e), "auto-forward off: the agent does not report ports");
            return std::future::pending().await;
        }
    };
    tracing::info!("auto-forward: following the guest's TCP listeners");
    loop {
        match events.next().await {
            Ok(Some(ev)) => handle(shared, filter, &ev),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(cause = %chain(&e), "auto-forward: the port watch ended");
                break;
            }
        }
    }
    std::future::pending().await
}

fn handle(shared: &Shared, filter: &PortFilter, ev: &PortEvent) {
    let (Ok(port), Ok(ip)) = (u16::try_from(ev.port), ev.address.parse::<IpAddr>()) else {
        tracing::debug!(port = ev.port, "ignoring a malformed port event");
        return;
    };
    if port == 0 || !filter.allows(port) {
        return;
    }
    let address = ip.to_string();
    if ev.kind == PortEventKind::CLOSED.into() {
        if let Some(local) = shared.locals.remove_auto(&address, port) {
            tracing::info!(port, %address, %local, "guest port closed; auto-forward closed");
            crate::print_line(&format!("auto-forward closed {local} -> {address}:{port}"));
        }
        return;
    }
    if shared.locals.has_auto(port) {
        return;
    }
    if shared.locals.auto_count() >= MAX_AUTO {
        tracing::warn!(
            port,
            max = MAX_AUTO,
            "auto-forward: too many guest ports; ignored"
        );
        return;
    }
    let target = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    };
    let spec = LocalSpec {
        listen: Listen::Tcp(SocketAddr::new(shared.config.auto_forward_bind, port)),
        remote: Remote::Tcp {
            host: target.to_string(),
            port,
        },
    };
    match shared.guest.forward_near(&spec, PORT_TRIES) {
        Ok(session) => {
            let local = session.local_addr().clone();
            let remote = session.spec().remote.clone();
            if !matches!(&local, crate::proxy::LocalAddr::Tcp(a) if a.port() == port) {
                tracing::info!(port, %local, "guest port: the same host port is taken; using the next free one");
            }
            tracing::info!(port, %address, pid = ev.pid, %local, "guest port opened; auto-forwarding");
            crate::print_line(&format!(
                "auto-forward {local} -> {remote} (pid {})",
                ev.pid
            ));
            shared.locals.add(Origin::Auto { address, port }, session);
        }
        Err(e) => tracing::warn!(port, cause = %chain(&e), "auto-forward: no host port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_match() {
        let f: PortFilter = "3000,8000-8999".parse().unwrap();
        assert!(f.allows(3000) && f.allows(8500) && !f.allows(3001) && !f.allows(9000));
        assert!("all".parse::<PortFilter>().unwrap().allows(1));
        for bad in ["", "0", "x", "9-8", "1,,2", "70000"] {
            assert!(bad.parse::<PortFilter>().is_err(), "{bad:?}");
        }
    }
}
