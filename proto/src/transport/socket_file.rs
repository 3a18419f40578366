//! A Unix listener's socket file: made in a directory held by descriptor,
//! with its final permission bits from the start, never in place of a socket
//! another process listens on, and removed at the end only while it is still
//! the file this listener made.
//!
//! Linux has no `bindat(2)`, so binding (and probing) relative to a directory
//! descriptor runs on a short-lived thread that unshares its file-system
//! context (`unshare(CLONE_FS)`: a working directory and umask of its own),
//! `fchdir(2)`s into the directory and uses the bare name, with the umask set
//! so the file is created with its final mode: no window in which it is more
//! open than asked, and nothing else in the process sees that directory or
//! umask. This needs no `/proc` (a minimal initramfs may not mount it). Where
//! `unshare` is refused (a seccomp profile such as Docker's default), the name
//! is reached through `/proc/self/fd/N/NAME` instead and the mode is set right
//! after the bind; with neither, binding fails and says so.
//!
//! Steps, in the directory:
//! 1. `lstat` the name: nothing there is fine; a socket is probed with a
//!    nonblocking connect: accepted, or a full backlog, means another process
//!    listens on it and the bind is refused ([`SocketFileError::InUse`]);
//!    refused means it is stale and it is unlinked; any other file is refused;
//! 2. bind and listen, then `lstat` again to record which file it made (device,
//!    inode and change time: a file system may give a new file the inode number
//!    of one just unlinked);
//! 3. mode bits a umask cannot give (setuid, setgid, sticky) and the owner, when
//!    asked for, set without following a symlink (the owner) or after checking
//!    that the name is still this socket (the mode);
//! 4. at the end ([`SocketFile::remove`]), the name is unlinked only if it is
//!    still the recorded file: a socket another process put there since is
//!    left alone (so is ours if someone changed its mode or owner since: a
//!    stale socket that the next bind replaces).
//!
//! A process that may write into the directory can replace the file at any
//! time anyway; what it cannot do is make this code unlink, chmod or chown
//! anything outside that directory, or anything but a socket.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How a socket file is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketFileOptions {
    /// Permission bits (at most 0o7777); `None`: what the process umask gives.
    pub mode: Option<u32>,
    /// Owner to set; `None`: the process's own.
    pub uid: Option<u32>,
    /// Group to set; `None`: the process's own.
    pub gid: Option<u32>,
}

/// Why a socket file could not be made.
#[derive(Debug, Error)]
pub enum SocketFileError {
    /// Another process listens on the socket at that name.
    #[error("another process is listening on it")]
    InUse,
    /// A file that is not a socket is at that name.
    #[error("a file that is not a socket is in the way")]
    NotASocket,
    /// The name cannot name a socket (empty, `.`, `..`, a `/`, a NUL, too long).
    #[error("{0:?} is not a socket file name")]
    BadName(OsString),
    /// Whether something listens there could not be told.
    #[error("probing the socket in the way")]
    Probe(#[source] io::Error),
    /// Unlinking the stale socket failed.
    #[error("removing the stale socket")]
    Unlink(#[source] io::Error),
    /// socket/bind/listen failed.
    #[error("creating the socket")]
    Bind(#[source] io::Error),
    /// The file was replaced between the bind and the checks after it.
    #[error("the socket file was replaced while it was being set up")]
    Replaced,
    /// chmod failed.
    #[error("setting mode {mode:#o}")]
    Mode {
        /// The mode asked for.
        mode: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// chown failed.
    #[error("setting owner uid {uid:?} gid {gid:?}")]
    Owner {
        /// The owner asked for.
        uid: Option<u32>,
        /// The group asked for.
        gid: Option<u32>,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Neither a thread of its own file-system context nor `/proc` was there
    /// to reach the directory by.
    #[error("cannot bind inside a directory descriptor: unshare(CLONE_FS) refused and /proc/self/fd unavailable")]
    NoWayIn(#[source] io::Error),
}

/// The socket file a listener made; see the module docs.
#[derive(Debug)]
pub struct SocketFile {
    dir: OwnedFd,
    name: OsString,
    /// The file as this listener left it once set up.
    made: Identity,
}

/// How code on the binding thread names the file: the bare name (its working
/// directory is the directory) or a `/proc/self/fd` path to it.
fn place(prefix: Option<&Path>, name: &OsStr) -> PathBuf {
    match prefix {
        None => PathBuf::from(name),
        Some(p) => p.join(name),
    }
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Which file a socket file is: device and inode, and the change time, since
/// a file system may give a new file the inode number of one just unlinked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// The identity of `name` in `dir`, if it is a socket; `Ok(None)` if absent.
fn socket_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<Identity>, SocketFileError> {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK => {
            Ok(Some(Identity {
                dev: st.st_dev,
                ino: st.st_ino,
                ctime: (st.st_ctime, st.st_ctime_nsec),
            }))
        }
        Ok(_) => Err(SocketFileError::NotASocket),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(SocketFileError::Probe(io_err(e))),
    }
}

/// Whether a process accepts connections on the socket at `path`: a
/// nonblocking connect that is accepted, or finds the backlog full, says yes;
/// refused (or gone) says no.
pub fn is_listening(path: &Path) -> io::Result<bool> {
    let addr = UnixAddr::new(path).map_err(io_err)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io_err)?;
    match connect(fd.as_raw_fd(), &addr) {
        Ok(()) | Err(Errno::EAGAIN | Errno::EINPROGRESS) => Ok(true),
        Err(Errno::ECONNREFUSED | Errno::ENOENT) => Ok(false),
        Err(e) => Err(io_err(e)),
    }
}

/// Steps 1 and 2 on the binding thread; `path` names the file for connect and bind.
fn probe_and_bind(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<(std::os::unix::net::UnixListener, Identity), SocketFileError> {
    if socket_at(dir, name)?.is_some() {
        if is_listening(path).map_err(SocketFileError::Probe)? {
            return Err(SocketFileError::InUse);
        }
        match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(SocketFileError::Unlink(io_err(e))),
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        // Someone bound it between the unlink and here.
        if e.kind() == io::ErrorKind::AddrInUse {
            SocketFileError::InUse
        } else {
            SocketFileError::Bind(e)
        }
    })?;
    let made = socket_at(dir, name)?.ok_or(SocketFileError::Replaced)?;
    Ok((listener, made))
}

/// Runs `work` where `dir` can be reached by name: on a thread of its own
/// file-system context with `dir` its working directory and `umask` its umask
/// (the closure gets `None`), else here through `/proc/self/fd` (it gets that
/// prefix, and the umask is not applied: the caller sets the mode after).
fn in_dir<T: Send>(
    dir: BorrowedFd<'_>,
    umask: Option<u32>,
    work: impl Fn(Option<&Path>) -> T + Send + Sync,
) -> Result<(T, bool), SocketFileError> {
    let raw = dir.as_raw_fd();
    let work = &work;
    let isolated = std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("sockfwd-bind".into())
            .spawn_scoped(scope, move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(io_err)?;
                nix::unistd::fchdir(raw).map_err(io_err)?;
                if let Some(bits) = umask {
                    nix::sys::stat::umask(Mode::from_bits_truncate(!bits & 0o777));
                }
                Ok::<T, io::Error>(work(None))
            })?;
        thread
            .join()
            .map_err(|_| io::Error::other("the binding thread panicked"))?
    });
    match isolated {
        Ok(done) => Ok((done, true)),
        // fchdir into a directory held open fails only for lack of search
        // permission: that is the answer, not a reason to try /proc.
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(SocketFileError::Bind(e)),
        Err(e) => {
            let prefix = PathBuf::from(format!("/proc/self/fd/{raw}"));
            if std::fs::symlink_metadata(&prefix).is_err() {
                return Err(SocketFileError::NoWayIn(e));
            }
            Ok((work(Some(&prefix)), false))
        }
    }
}

impl SocketFile {
    /// Binds a listening socket at `name` in `dir` (see the module docs) and
    /// returns it, nonblocking, with the file it made.
    pub fn create(
        dir: OwnedFd,
        name: &OsStr,
        options: &SocketFileOptions,
    ) -> Result<(OwnedFd, SocketFile), SocketFileError> {
        let bytes = name.as_encoded_bytes();
        if bytes.is_empty()
            || name == "."
            || name == ".."
            || bytes.contains(&b'/')
            || bytes.contains(&0)
            || bytes.len() > super::SUN_PATH_MAX
        {
            return Err(SocketFileError::BadName(name.to_owned()));
        }
        let umask = options.mode.map(|m| m & 0o777);
        let (bound, isolated) = in_dir(dir.as_fd_ref(), umask, |prefix| {
            probe_and_bind(dir.as_fd_ref(), name, &place(prefix, name))
        })?;
        let (listener, made) = bound?;
        let mut file = SocketFile {
            dir,
            name: name.to_owned(),
            made,
        };
        // From here on, an error drops `file`, which unlinks the socket.
        listener
            .set_nonblocking(true)
            .map_err(SocketFileError::Bind)?;
        if file.finish(options, isolated)? {
            // chmod and chown change the change time: the file as it is now.
            file.made =
                socket_at(file.dir.as_fd_ref(), &file.name)?.ok_or(SocketFileError::Replaced)?;
        }
        Ok((OwnedFd::from(listener), file))
    }

    /// Step 3: the mode bits the umask could not give, and the owner; `true`
    /// if it changed anything.
    fn finish(&self, options: &SocketFileOptions, isolated: bool) -> Result<bool, SocketFileError> {
        let mut changed = false;
        let dir = self.dir.as_raw_fd();
        if let Some(mode) = options.mode {
            if mode > 0o777 || !isolated {
                // fchmodat cannot refuse a symlink on Linux: check the name is
                // still this socket first (a swap in between needs a process
                // that may write here, and gains it a chmod of a socket only).
                if !self.is_ours() {
                    return Err(SocketFileError::Replaced);
                }
                nix::sys::stat::fchmodat(
                    Some(dir),
                    self.name.as_os_str(),
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| SocketFileError::Mode {
                    mode,
                    source: io_err(e),
                })?;
                changed = true;
            }
        }
        let (uid, gid) = (options.uid, options.gid);
        if uid.is_some() || gid.is_some() {
            fchownat(
                Some(dir),
                self.name.as_os_str(),
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| SocketFileError::Owner {
                uid,
                gid,
                source: io_err(e),
            })?;
            changed = true;
        }
        Ok(changed)
    }

    /// Whether the name still holds the file this listener made.
    pub fn is_ours(&self) -> bool {
        matches!(socket_at(self.dir.as_fd_ref(), &self.name), Ok(Some(id)) if id == self.made)
    }

    /// Step 4: unlinks the file if it is still the one made here; `true` if it
    /// was. Dropping a `SocketFile` does this.
    pub fn remove(&self) -> bool {
        self.is_ours()
            && unlinkat(
                Some(self.dir.as_raw_fd()),
                self.name.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            )
            .is_ok()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Only our own file: one another process put there since stays.
        self.remove();
    }
}

/// `OwnedFd::as_fd` without importing the trait at every call.
trait AsFdRef {
    fn as_fd_ref(&self) -> BorrowedFd<'_>;
}

impl AsFdRef for OwnedFd {
    fn as_fd_ref(&self) -> BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

/// Opens `path`'s directory (following symlinks: an operator's path) and
/// splits off the name, for [`SocketFile::create`].
pub fn open_parent(path: &Path) -> Result<(OwnedFd, OsString), SocketFileError> {
    let name = path
        .file_name()
        .ok_or_else(|| SocketFileError::BadName(path.as_os_str().to_owned()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let raw = nix::fcntl::open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SocketFileError::Bind(io_err(e)))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let dir = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((dir, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    fn make(
        path: &Path,
        options: &SocketFileOptions,
    ) -> Result<(OwnedFd, SocketFile), SocketFileError> {
        let (dir, name) = open_parent(path)?;
        SocketFile::create(dir, &name, options)
    }

    #[test]
    fn a_live_socket_is_refused_and_left_alone_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let foreign = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = make(&path, &SocketFileOptions::default()).unwrap_err();
        assert!(matches!(err, SocketFileError::InUse), "{err}");
        // Still the foreign listener's: a client reaches it.
        let _c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        foreign.accept().unwrap();
        drop(foreign); // leaves the file: stale now
        let (_fd, file) = make(&path, &SocketFileOptions::default()).unwrap();
        assert!(file.is_ours());
        assert!(file.remove());
        assert!(!path.exists());
    }

    #[test]
    fn removal_spares_a_file_that_is_no_longer_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (fd, file) = make(&path, &SocketFileOptions::default()).unwrap();
        drop(fd);
        std::fs::remove_file(&path).unwrap();
        let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!file.is_ours());
        assert!(!file.remove());
        assert!(path.exists(), "the other socket stays");
        drop(other);
    }

    #[test]
    fn other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"data").unwrap();
        let err = make(&path, &SocketFileOptions::default()).unwrap_err();
        assert!(matches!(err, SocketFileError::NotASocket), "{err}");
        std::os::unix::fs::symlink("/etc", dir.path().join("l")).unwrap();
        let err = make(&dir.path().join("l"), &SocketFileOptions::default()).unwrap_err();
        assert!(matches!(err, SocketFileError::NotASocket), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn the_mode_is_the_final_one_from_the_start_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        // A permissive process umask: the file must still be born 0600.
        let old = nix::sys::stat::umask(Mode::empty());
        let path = dir.path().join("admin.sock");
        let made = make(
            &path,
            &SocketFileOptions {
                mode: Some(0o600),
                ..Default::default()
            },
        );
        nix::sys::stat::umask(old);
        let (_fd, _file) = made.unwrap();
        let mode = std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        // The process umask is untouched by the binding thread.
        let now = nix::sys::stat::umask(old);
        assert_eq!(now, old);
    }

    #[test]
    fn owner_is_set_when_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sock");
        let options = SocketFileOptions {
            mode: Some(0o640),
            uid: Some(1234),
            gid: Some(4321),
        };
        match make(&path, &options) {
            Ok(_made) => {
                let m = std::fs::symlink_metadata(&path).unwrap();
                assert_eq!((m.uid(), m.gid()), (1234, 4321));
                assert_eq!(m.permissions().mode() & 0o7777, 0o640);
            }
            Err(e) => {
                assert!(!nix::unistd::geteuid().is_root(), "{e}");
                assert!(matches!(e, SocketFileError::Owner { .. }), "{e}");
                assert!(!path.exists(), "rolled back");
            }
        }
    }

    #[test]
    fn the_proc_fd_way_in_binds_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (fd, name) = open_parent(&dir.path().join("p.sock")).unwrap();
        let prefix = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let (listener, _) =
            probe_and_bind(fd.as_fd_ref(), &name, &place(Some(&prefix), &name)).unwrap();
        let _c = std::os::unix::net::UnixStream::connect(dir.path().join("p.sock")).unwrap();
        drop(listener);
    }

    #[test]
    fn bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["", ".", "..", "a/b"] {
            let (fd, _) = open_parent(&dir.path().join("x")).unwrap();
            let err = SocketFile::create(fd, OsStr::new(name), &SocketFileOptions::default())
                .unwrap_err();
            assert!(
                matches!(err, SocketFileError::BadName(_)),
                "{name:?}: {err}"
            );
        }
    }
}
