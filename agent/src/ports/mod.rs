//! Guest TCP listeners for the `WatchPorts` extension: which ports are in
//! LISTEN state (IPv4 and IPv6), on which address, owned by which process.
//!
//! Detection asks the kernel with netlink `sock_diag` (one `inet_diag_req_v2`
//! dump per family, filtered to TCP_LISTEN); where that is unavailable (an old
//! or restricted kernel) it reads `/proc/net/tcp` and `/proc/net/tcp6`. The
//! owning PID is found by matching the socket inode against the links in
//! `/proc/*/fd`, only for listeners that are new.
//!
//! sock_diag has no notifications for listen state (its multicast groups
//! report destroyed sockets only), and there is no other event source for a
//! socket entering LISTEN short of eBPF, so the watcher ([`watch`]) compares
//! snapshots every
//! [`POLL_INTERVAL`]. A change is followed by a short [`SETTLE`] pause and one
//! more snapshot, so a burst (a server opening several ports, a restart)
//! reaches the host as one diff.
//!
//! The agent's own TCP listeners (remote forwards) are left out, by socket
//! inode: a host that forwards every guest port back (`--auto-forward all`)
//! must not forward the port of its own remote forward in a loop.

pub mod watch;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::time::Duration;

/// How often the listener set is compared.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Pause after a change before the snapshot that is reported.
pub const SETTLE: Duration = Duration::from_millis(100);

/// A listening socket: its bind address and port.
pub type Key = (IpAddr, u16);
/// Listening sockets with their inode.
pub type Snapshot = BTreeMap<Key, u64>;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCP_LISTEN: u32 = 10;
const NLMSG_HDRLEN: usize = 16;
/// `inet_diag_msg`: family, state, timer, retrans, sockid (48), expires, rqueue,
/// wqueue, uid, inode.
const DIAG_MSG_LEN: usize = 72;

/// The current TCP listeners: sock_diag, or `/proc/net` where it fails.
pub fn snapshot() -> io::Result<Snapshot> {
    match sock_diag() {
        Ok(s) => Ok(s),
        Err(err) => {
            tracing::debug!(cause = %err, "sock_diag unavailable; reading /proc/net/tcp");
            proc_net()
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<[u8; 2]> {
    b.get(at..at + 2)?.try_into().ok()
}

fn u32_at(b: &[u8], at: usize) -> Option<[u8; 4]> {
    b.get(at..at + 4)?.try_into().ok()
}

fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + 56);
    m.extend_from_slice(&72u32.to_ne_bytes()); // nlmsg_len: header + inet_diag_req_v2
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, then a zero sockid.
    m.extend_from_slice(&[family, 6 /* IPPROTO_TCP */, 0, 0]);
    m.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    m.resize(NLMSG_HDRLEN + 56, 0);
    m
}

/// Parses one `inet_diag_msg` into its key and inode.
fn parse_diag(msg: &[u8]) -> Option<(Key, u64)> {
    if msg.len() < DIAG_MSG_LEN {
        return None;
    }
    let family = i32::from(*msg.first()?);
    let port = u16::from_be_bytes(u16_at(msg, 4)?);
    let src = msg.get(8..24)?;
    let ip = if family == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::new(src[0], src[1], src[2], src[3]))
    } else {
        let bytes: [u8; 16] = src.try_into().ok()?;
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    let inode = u32::from_ne_bytes(u32_at(msg, 68)?);
    Some(((ip, port), u64::from(inode)))
}

fn sock_diag() -> io::Result<Snapshot> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    // The kernel answers at once; a bound keeps a wedged kernel from hanging us.
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut out = Snapshot::new();
    let mut buf = vec![0u8; 32 << 10];
    for (seq, family) in [(1u32, libc::AF_INET), (2, libc::AF_INET6)] {
        let family = u8::try_from(family).map_err(io::Error::other)?;
        sendto(
            fd.as_raw_fd(),
            &request(family, seq),
            &kernel,
            MsgFlags::empty(),
        )?;
        'dump: loop {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let hdr = &buf[at..n];
                let len = u32::from_ne_bytes(u32_at(hdr, 0).unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes(u16_at(hdr, 4).unwrap_or_default());
                if len < NLMSG_HDRLEN || len > hdr.len() {
                    return Err(io::Error::other("malformed netlink message"));
                }
                match kind {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(u32_at(hdr, 16).unwrap_or_default());
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some((key, inode)) = parse_diag(&hdr[NLMSG_HDRLEN..len]) {
                            out.insert(key, inode);
                        }
                    }
                    _ => {}
                }
                at += (len + 3) & !3;
            }
        }
    }
    Ok(out)
}

/// Parses `/proc/net/tcp{,6}` text: LISTEN rows (state 0A) into keys and inodes.
pub fn parse_proc_net(text: &str, v6: bool) -> Snapshot {
    let mut out = Snapshot::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
        else {
            continue;
        };
        if *state != "0A" {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let (Ok(port), Ok(inode)) = (u16::from_str_radix(port, 16), inode.parse::<u64>()) else {
            continue;
        };
        // The address is the kernel's in-memory words printed as hex: each
        // 32-bit word is in host byte order.
        let words: Option<Vec<[u8; 4]>> = (0..addr.len() / 8)
            .map(|i| {
                let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                Some(w.to_ne_bytes())
            })
            .collect();
        let ip = match (words.as_deref(), v6) {
            (Some([w]), false) => IpAddr::V4(Ipv4Addr::from(*w)),
            (Some([a, b, c, d]), true) => {
                let mut bytes = [0u8; 16];
                for (i, w) in [a, b, c, d].iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w[..]);
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            }
            _ => continue,
        };
        out.insert((ip, port), inode);
    }
    out
}

fn proc_net() -> io::Result<Snapshot> {
    let mut out = parse_proc_net(&std::fs::read_to_string("/proc/net/tcp")?, false);
    // No IPv6 in the guest kernel is not an error.
    if let Ok(text) = std::fs::read_to_string("/proc/net/tcp6") {
        out.extend(parse_proc_net(&text, true));
    }
    Ok(out)
}

/// Finds the process owning each socket inode by its `/proc/*/fd` links.
pub fn owners(inodes: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut found = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // A process that exits meanwhile, or one we may not inspect, is skipped.
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                found.entry(inode).or_insert(pid);
            }
        }
        if found.len() == inodes.len() {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_rows_parse() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 12346 1 0000000000000000 100 0 0 10 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
";
        let s = parse_proc_net(v4, false);
        let keys: Vec<String> = s.keys().map(|(ip, p)| format!("{ip}:{p}")).collect();
        assert_eq!(keys, ["0.0.0.0:22", "127.0.0.1:8080"]);
        assert_eq!(s[&("127.0.0.1".parse().unwrap(), 8080)], 12345);

        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
";
        let s = parse_proc_net(v6, true);
        assert_eq!(s.get(&("::1".parse().unwrap(), 80)), Some(&777));
        assert!(parse_proc_net("header\ngarbage line\n 0: zz:zz 0 0A", false).is_empty());
    }

    #[test]
    fn this_process_listener_is_seen_with_its_pid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let key: Key = ("127.0.0.1".parse().unwrap(), port);
        for s in [sock_diag().unwrap(), proc_net().unwrap()] {
            let inode = s[&key];
            let found = owners(&[inode].into());
            assert_eq!(found.get(&inode), Some(&std::process::id()));
        }
    }
}
