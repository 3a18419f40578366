//! How our AF_VSOCK sockets are tuned: a receive buffer that keeps the host
//! sending, and writes no larger than the guest kernel turns into one packet
//! that every VMM takes.
//!
//! **Buffer.** A vsock connection's sender may have at most the receiver's
//! buffer size in flight (the virtio transport's credit); Linux's default is
//! 256 KiB, and the guest sends a credit update only once less than 64 KiB of
//! it is free. A 1 MiB buffer lets the host keep sending while the agent is
//! busy instead of stopping for a credit request. The kernel allocates packets
//! as they arrive: the size bounds what a stalled reader can hold, it is not
//! memory set aside. Measured with `sockfwd-bench --vm` (bench/README.md).
//!
//! **Write size.** One write becomes packets of up to 64 KiB. Since Linux
//! commit 6693731487a8 (6.17, and in 6.12.y stable: Debian's 6.12.95 has it),
//! the guest builds a packet over 32 KiB from a non-linear skb whose data
//! spans several virtqueue descriptors, and vhost-device-vsock 0.3.0 (like
//! libkrun and cloud-hypervisor before their fixes) takes a packet's data from
//! one descriptor only: it drops the packet and the connection stalls. A
//! 32 KiB write is one 32 KiB page block, one descriptor. On older kernels a
//! 64 KiB write is one packet, which measured 14 % less guest CPU per GiB than
//! 32 KiB ones (6.1, guest to host).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::OnceLock;

/// The receive buffer asked for on every vsock socket of ours.
pub const VSOCK_BUFFER: u64 = 1 << 20;

/// Largest write into vsock on kernels that build each packet linear.
const WRITE_LINEAR: usize = 64 << 10;
/// Largest write into vsock on kernels that split packets over 32 KiB.
const WRITE_SPLIT: usize = 32 << 10;

/// `<linux/vm_sockets.h>` (not in the libc crate): the buffer size, and its
/// upper bound, which the size may not exceed (256 KiB by default).
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;
/// Their value is a u64.
const U64_LEN: libc::socklen_t = 8;

/// Asks for a [`VSOCK_BUFFER`] receive buffer on a vsock socket, listening or
/// connected (an accepted socket inherits its listener's). Best effort: a
/// kernel that refuses keeps its default, which works, only slower.
pub(crate) fn enlarge(fd: BorrowedFd<'_>) {
    for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
        let val: u64 = VSOCK_BUFFER;
        // SAFETY: a valid descriptor, and a pointer to a u64 of the length
        // given, which is what the kernel reads for these options.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::AF_VSOCK,
                opt,
                std::ptr::from_ref(&val).cast(),
                U64_LEN,
            )
        };
        if r != 0 {
            tracing::debug!(option = opt, cause = %std::io::Error::last_os_error(),
                "the kernel refused a larger vsock buffer; keeping its default");
            return;
        }
    }
}

/// The largest write into a vsock socket on this kernel (see the module docs).
pub fn write_max() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        if splits_large_packets(release.trim()) {
            WRITE_SPLIT
        } else {
            WRITE_LINEAR
        }
    })
}

/// Whether a kernel of this release may build vsock packets over 32 KiB from
/// non-linear skbs: 6.12 and later. An unreadable release counts as new.
fn splits_large_packets(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 12),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_from_6_12_on_split_large_packets() {
        assert!(!splits_large_packets("6.1.0-57-cloud-amd64"));
        assert!(!splits_large_packets("5.10.0-30-amd64"));
        assert!(!splits_large_packets("6.11.9"));
        assert!(splits_large_packets("6.12.95+deb12-cloud-amd64"));
        assert!(splits_large_packets("6.17.0"));
        assert!(splits_large_packets("7.0.1"));
        assert!(splits_large_packets(""), "unknown: the safe size");
        assert!(splits_large_packets("garbage"), "unknown: the safe size");
    }
}
