//! `--auto-forward`: each TCP port the guest reports listening (WatchPorts)
//! gets a local forward on the same host port, or the next free one, which is
//! reported on stdout and in the log; it is closed when the guest port closes
//! (or the control session ends: the next session reports the ports again).
//!
//! The relay starts `follow` next to the control channel; it follows each
//! session as the channel publishes it. The guest is not trusted: a port
//! outside the filter, port 0, or an address that is not an IP literal is
//! ignored, and the host listener always binds the configured address
//! (loopback unless `--auto-forward-bind` says otherwise), never one the guest
//! names.

use crate::local::guest_handle::Guest;
use crate::local::listener_table::{announce, ListenerTable, Origin};
use crate::local_spec::LocalSpec;
use crate::port_filter::PortFilter;
use crate::rpc::Peer;
use sockfwd_proto::report::Chain;
use sockfwd_proto::rpc::{PortEvent, PortEventKind};
use sockfwd_proto::target::Target;
use sockfwd_proto::transport::ListenAt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How many host ports are tried, from the guest's port upwards.
pub const PORT_TRIES: u16 = 100;
/// Most auto-forwards at once: a guest reporting thousands of ports cannot
/// make the host bind thousands of listeners.
pub const MAX_AUTO: usize = 256;

/// What auto-forward works with.
pub(crate) struct AutoForward {
    /// Opens the port watch and the local forwards' streams.
    pub(crate) guest: Guest,
    /// Where the auto-forwards are kept, next to the `-L` ones.
    pub(crate) listeners: Arc<ListenerTable>,
    /// Which guest ports to forward.
    pub(crate) filter: PortFilter,
    /// The address the host listeners bind.
    pub(crate) bind: IpAddr,
}

/// Follows every ready control session (published on `sessions`) until
/// `stop`: watches the session's guest ports, and closes its auto-forwards
/// when it ends or is replaced.
pub(crate) async fn follow(
    auto: AutoForward,
    mut sessions: watch::Receiver<Option<Peer>>,
    stop: CancellationToken,
) {
    loop {
        let up = tokio::select! {
            () = stop.cancelled() => false,
            r = sessions.wait_for(Option::is_some) => r.is_ok(),
        };
        if !up {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            never = auto.follow_session() => match never {},
            // Withdrawn (the session ended) or replaced by the next one.
            _ = sessions.changed() => {}
        }
        auto.listeners.close_auto();
        if stop.is_cancelled() {
            break;
        }
    }
    auto.listeners.close_auto();
}

impl AutoForward {
    /// Follows the current session's port events; never returns (pending once
    /// the watch ends: the session decides when it is over).
    async fn follow_session(&self) -> std::convert::Infallible {
        let mut events = match self.guest.watch_ports().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(cause = %Chain(&e), "auto-forward off: the agent does not report ports");
                return std::future::pending().await;
            }
        };
        tracing::info!("auto-forward: following the guest's TCP listeners");
        loop {
            match events.next().await {
                Ok(Some(ev)) => self.handle(&ev),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(cause = %Chain(&e), "auto-forward: the port watch ended");
                    break;
                }
            }
        }
        std::future::pending().await
    }

    fn handle(&self, ev: &PortEvent) {
        let (Ok(port), Ok(ip)) = (u16::try_from(ev.port), ev.address.parse::<IpAddr>()) else {
            tracing::debug!(port = ev.port, "ignoring a malformed port event");
            return;
        };
        if port == 0 || !self.filter.allows(port) {
            return;
        }
        let address = ip.to_string();
        if ev.kind == PortEventKind::CLOSED.into() {
            if let Some(local) = self.listeners.remove_auto(&address, port) {
                tracing::info!(port, %address, %local, "guest port closed; auto-forward closed");
                announce(&format!("auto-forward closed {local} -> {address}:{port}"));
            }
            return;
        }
        if self.listeners.has_auto(port) {
            return;
        }
        if self.listeners.auto_count() >= MAX_AUTO {
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
            listen: ListenAt::Tcp(SocketAddr::new(self.bind, port)),
            remote: Target::Ip(SocketAddr::new(target, port)),
            options: sockfwd_proto::spec_options::SpecOptions::default(),
        };
        match self.guest.forward_near(&spec, PORT_TRIES) {
            Ok(forward) => {
                let local = forward.local_addr().clone();
                let remote = forward.spec().remote_text();
                if !matches!(&local, ListenAt::Tcp(a) if a.port() == port) {
                    tracing::info!(port, %local, "guest port: the same host port is taken; using the next free one");
                }
                tracing::info!(port, %address, pid = ev.pid, %local, "guest port opened; auto-forwarding");
                announce(&format!(
                    "auto-forward {local} -> {remote} (pid {})",
                    ev.pid
                ));
                self.listeners.add(Origin::Auto { address, port }, forward);
            }
            Err(e) => tracing::warn!(port, cause = %Chain(&e), "auto-forward: no host port"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::guest_handle::{GuestOptions, Tasks};
    use sockfwd_proto::transport::Address;
    use tokio_util::task::TaskTracker;

    fn auto(filter: &str, sessions: watch::Receiver<Option<Peer>>) -> AutoForward {
        let tasks = Tasks {
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
        };
        AutoForward {
            guest: Guest::linked(
                sessions,
                Address::Unix("/nonexistent/streams.sock".into()),
                GuestOptions::default(),
                tasks,
            ),
            listeners: Arc::default(),
            filter: filter.parse().unwrap(),
            bind: Ipv4Addr::LOCALHOST.into(),
        }
    }

    fn event(kind: PortEventKind, address: &str, port: u32) -> PortEvent {
        let mut ev = PortEvent::new();
        ev.kind = kind.into();
        ev.address = address.into();
        ev.port = port;
        ev
    }

    #[tokio::test]
    async fn events_open_and_close_forwards_within_the_filter_only() {
        let (_tx, rx) = watch::channel(None);
        let a = auto("1-65535", rx);
        // A port the OS picks is free; the guest reports it as its own.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        a.handle(&event(PortEventKind::OPENED, "0.0.0.0", u32::from(port)));
        assert!(a.listeners.has_auto(port));
        let rows = a.listeners.rows();
        assert_eq!(
            rows[0].remote,
            format!("127.0.0.1:{port}"),
            "unspecified means loopback"
        );
        // Ignored: port 0, a port out of range, a name instead of an address.
        a.handle(&event(PortEventKind::OPENED, "127.0.0.1", 0));
        a.handle(&event(PortEventKind::OPENED, "127.0.0.1", 70_000));
        a.handle(&event(PortEventKind::OPENED, "example.com", 80));
        assert_eq!(a.listeners.auto_count(), 1);
        // A close for another address leaves it; the right one closes it.
        a.handle(&event(PortEventKind::CLOSED, "10.0.0.1", u32::from(port)));
        assert!(a.listeners.has_auto(port));
        a.handle(&event(PortEventKind::CLOSED, "0.0.0.0", u32::from(port)));
        assert_eq!(a.listeners.auto_count(), 0);

        let (_tx, rx) = watch::channel(None);
        let narrow = auto("1", rx);
        narrow.handle(&event(PortEventKind::OPENED, "127.0.0.1", u32::from(port)));
        assert_eq!(narrow.listeners.auto_count(), 0, "outside the filter");
    }

    #[tokio::test]
    async fn following_ends_on_stop_and_closes_what_it_opened() {
        let (tx, rx) = watch::channel(None);
        let a = auto("all", rx);
        let listeners = Arc::clone(&a.listeners);
        let stop = CancellationToken::new();
        let following = tokio::spawn(follow(a, tx.subscribe(), stop.clone()));
        stop.cancel();
        following.await.unwrap();
        assert_eq!(listeners.auto_count(), 0);
        drop(tx);
    }
}
