//! Who is on the other end of a Unix socket, as the kernel recorded it when
//! the peer connected (`SO_PEERCRED`), with its supplementary groups
//! (`SO_PEERGROUPS`): what the relay's admin socket checks before it reads a
//! request. Neither can be forged by the peer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The credentials of a Unix socket's peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its process ID at connect time.
    pub pid: i32,
    /// Its effective user ID.
    pub uid: u32,
    /// Its effective group ID.
    pub gid: u32,
    /// Its supplementary groups (empty where the kernel cannot tell: before 4.13).
    pub groups: Vec<u32>,
}

impl PeerCredentials {
    /// Whether the peer is in group `gid`, as its primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The peer of the connected Unix socket `fd`.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let cred = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(PeerCredentials {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        groups: peer_groups(fd).unwrap_or_default(),
    })
}

/// `SO_PEERGROUPS`, which nix does not wrap.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // A process has at most NGROUPS_MAX (65536) supplementary groups; start
    // small and grow to what the kernel says it needs.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * std::mem::size_of::<libc::gid_t>())
            .map_err(io::Error::other)?;
        // SAFETY: `groups` is a writable buffer of `len` bytes that lives across
        // the call, and `len` is a valid socklen_t the kernel updates.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let bytes = usize::try_from(len).map_err(io::Error::other)?;
        let count = bytes / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() || count > 65_536 {
            return Err(err);
        }
        groups.resize(count, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn a_socket_pair_sees_this_process() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let c = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(c.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
        assert!(c.in_group(nix::unistd::getegid().as_raw()));
        let mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        for g in &mine {
            assert!(c.in_group(*g), "group {g} of {mine:?} in {c:?}");
        }
    }
}
