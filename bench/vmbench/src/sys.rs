//! The few system calls std does not wrap: AF_VSOCK sockets, epoll(7),
//! non-blocking accept and connect, socket timeouts. Declared here against
//! the C library std already links, so the binary has no dependencies.
//!
//! AF_VSOCK is opened only inside the benchmark's guest: [`in_guest`] checks
//! for the kernel command line word the bench boots the guest with, because
//! the host's vsock device is not ours to use.

use std::ffi::{c_int, c_void};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The kernel command line word that marks the benchmark's guest.
pub const GUEST_MARK: &str = "vmbench.guest=1";

const AF_VSOCK: c_int = 40;
const SOCK_STREAM: c_int = 1;
const SOCK_CLOEXEC: c_int = 0o2_000_000;
const SOL_SOCKET: c_int = 1;
const SO_RCVTIMEO: c_int = 20;
const SO_SNDTIMEO: c_int = 21;
const SOCK_NONBLOCK: c_int = 0o4000;
const SO_ERROR: c_int = 4;
const EINPROGRESS: i32 = 115;
const EPOLL_CLOEXEC: c_int = 0o2_000_000;
const EPOLL_CTL_ADD: c_int = 1;
/// epoll events: readable.
pub const EPOLLIN: u32 = 0x1;
/// Writable.
pub const EPOLLOUT: u32 = 0x4;
/// Error on the descriptor.
pub const EPOLLERR: u32 = 0x8;
/// Hung up.
pub const EPOLLHUP: u32 = 0x10;
/// The peer shut down writing.
pub const EPOLLRDHUP: u32 = 0x2000;
/// Edge-triggered.
pub const EPOLLET: u32 = 1 << 31;
/// Any CID (for bind).
pub const VMADDR_CID_ANY: u32 = u32::MAX;

/// `struct sockaddr_vm`.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

/// `struct epoll_event` (packed on x86_64).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub struct EpollEvent {
    events: u32,
    data: u64,
}

impl EpollEvent {
    /// The events that happened.
    pub fn events(&self) -> u32 {
        self.events
    }

    /// The token registered with the descriptor.
    pub fn token(&self) -> u64 {
        self.data
    }
}

/// `struct timeval` on x86_64.
#[repr(C)]
struct TimeVal {
    sec: i64,
    usec: i64,
}

const TIMEVAL_LEN: u32 = 16;
const _: () = assert!(std::mem::size_of::<TimeVal>() == TIMEVAL_LEN as usize);

extern "C" {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    fn bind(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept4(fd: c_int, addr: *mut c_void, len: *mut u32, flags: c_int) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: u32) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut u32) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, len: usize) -> isize;
    fn epoll_create1(flags: c_int) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut EpollEvent) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut EpollEvent, max: c_int, timeout: c_int) -> c_int;
}

fn check(r: c_int) -> io::Result<c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether this is the benchmark's guest (its kernel command line carries [`GUEST_MARK`]).
pub fn in_guest() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == GUEST_MARK))
}

fn vsock_socket(flags: c_int) -> io::Result<OwnedFd> {
    if !in_guest() {
        return Err(io::Error::other(format!(
            "refusing AF_VSOCK: not the benchmark's guest (no {GUEST_MARK} on the kernel command line)"
        )));
    }
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new
    // descriptor that nothing else owns.
    let fd = check(unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | flags, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: 40,
        reserved1: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    }
}

const VSOCK_ADDR_LEN: u32 = 16;
const _: () = assert!(std::mem::size_of::<SockaddrVm>() == VSOCK_ADDR_LEN as usize);

/// A blocking AF_VSOCK connection to `cid:port` (guest only).
pub fn vsock_connect(cid: u32, port: u32) -> io::Result<File> {
    let fd = vsock_socket(0)?;
    let addr = vsock_addr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm that outlives the call, and the
    // length passed is its size.
    check(unsafe {
        connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            VSOCK_ADDR_LEN,
        )
    })?;
    Ok(File::from(fd))
}

/// An AF_VSOCK listener on any CID, `port` (guest only).
pub fn vsock_listen(port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket(0)?;
    let addr = vsock_addr(VMADDR_CID_ANY, port);
    // SAFETY: as in vsock_connect: a valid address of the stated length.
    check(unsafe {
        bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            VSOCK_ADDR_LEN,
        )
    })?;
    // SAFETY: listen(2) on a descriptor we own; no pointers.
    check(unsafe { listen(fd.as_raw_fd(), 128) })?;
    Ok(fd)
}

/// The next connection on a listener (blocking).
pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    // SAFETY: null address and length pointers are allowed by accept4(2) when
    // the peer address is not wanted.
    let fd = check(unsafe {
        accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a new descriptor from accept4(2), owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Sets the read and write timeouts of a socket (SO_RCVTIMEO, SO_SNDTIMEO).
pub fn set_timeouts(fd: RawFd, t: Duration) -> io::Result<()> {
    let tv = TimeVal {
        sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
        usec: i64::from(t.subsec_micros()),
    };
    for opt in [SO_RCVTIMEO, SO_SNDTIMEO] {
        // SAFETY: `tv` is a valid timeval that outlives the call; the length is its size.
        check(unsafe {
            setsockopt(
                fd,
                SOL_SOCKET,
                opt,
                std::ptr::from_ref(&tv).cast(),
                TIMEVAL_LEN,
            )
        })?;
    }
    Ok(())
}

/// A non-blocking AF_VSOCK connection to `cid:port`, maybe still in progress
/// (guest only): it is writable once connected, and [`socket_error`] says how.
pub fn vsock_connect_nonblocking(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let fd = vsock_socket(SOCK_NONBLOCK)?;
    let addr = vsock_addr(cid, port);
    // SAFETY: a valid sockaddr_vm that outlives the call, of the stated length.
    let r = unsafe {
        connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            VSOCK_ADDR_LEN,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(fd)
}

/// The pending error of a socket (SO_ERROR), e.g. of a non-blocking connect.
pub fn socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: c_int = 0;
    let mut len: u32 = 4;
    // SAFETY: `err` and `len` are valid for writes and `len` is `err`'s size.
    check(unsafe {
        getsockopt(
            fd,
            SOL_SOCKET,
            SO_ERROR,
            std::ptr::from_mut(&mut err).cast(),
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// The next connection on a listener, non-blocking (WouldBlock when none waits).
pub fn accept_nonblocking(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed when the peer address is not wanted.
    let fd = check(unsafe {
        accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            SOCK_CLOEXEC | SOCK_NONBLOCK,
        )
    })?;
    // SAFETY: a new descriptor from accept4(2), owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// read(2) into `buf`.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// write(2) from `buf`.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let n = unsafe { write(fd, buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A new epoll set.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1(2) takes no pointers.
    let fd = check(unsafe { epoll_create1(EPOLL_CLOEXEC) })?;
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds `fd` to an epoll set with `events`, reported with `token`.
pub fn epoll_add(epoll: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = EpollEvent {
        events,
        data: token,
    };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call.
    check(unsafe { epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// Waits for events (forever); returns how many of `events` were filled.
pub fn epoll_wait_all(epoll: RawFd, events: &mut [EpollEvent]) -> io::Result<usize> {
    let max = c_int::try_from(events.len()).unwrap_or(c_int::MAX);
    loop {
        // SAFETY: `events` is valid for writes of `max` entries.
        let n = unsafe { epoll_wait(epoll, events.as_mut_ptr(), max, -1) };
        match usize::try_from(n) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}
