//! Checks on a Bind request's socket path, and the directory it is bound in.
//!
//! Nothing here follows a symlink below the trusted root: the root is the
//! allowed directory the path lies under (as the operator spelled it, symlinks
//! and all), or `/` when no allow-list is configured. [`open_parent`] walks
//! from the root to the socket's directory one component at a time, each
//! opened relative to the descriptor of the one before with `openat2(2)`
//! (`RESOLVE_NO_SYMLINKS`, and `RESOLVE_BENEATH` under an allowed directory),
//! or, where the kernel has no `openat2` (ENOSYS, before Linux 5.6 or under a
//! seccomp filter), `openat(2)` with `O_NOFOLLOW | O_DIRECTORY`. A missing
//! directory is made (0755) with `mkdirat(2)` in the one held, then opened the
//! same way; a symlink or a non-directory on the way is refused. The socket is
//! then bound by name in the final directory's descriptor
//! ([`Listener::bind_in`](sockfwd_proto::transport::Listener::bind_in)), so
//! what was checked is what is bound: a process in the guest that renames or
//! replaces a directory on the path meanwhile makes the Bind fail, or bind in
//! the directory that was checked, never elsewhere.

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use sockfwd_proto::transport::SUN_PATH_MAX;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use thiserror::Error;

/// Mode of the parent directories Bind creates.
pub const DIR_MODE: u32 = 0o755;

/// Why a socket path was refused.
#[derive(Debug, Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("path is not absolute")]
    NotAbsolute,
    /// A `..` component.
    #[error("path has a '..' component")]
    ParentDir,
    /// A NUL byte cannot be in a socket address.
    #[error("path contains a NUL byte")]
    Nul,
    /// `/` alone names no socket.
    #[error("path names no file")]
    NoFileName,
    /// Longer than a Unix socket address allows.
    #[error("path is {len} bytes long; a Unix socket address holds at most {SUN_PATH_MAX}")]
    TooLong {
        /// The path's length in bytes.
        len: usize,
    },
    /// Outside every `--allow-dir`.
    #[error("path is outside the allowed directories")]
    NotAllowed,
    /// A symlink where a directory should be.
    #[error("{0} is a symbolic link")]
    Symlink(PathBuf),
    /// A file that is not a directory where a directory should be.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// A directory on the path was replaced while Bind walked it.
    #[error("{0} changed while it was walked")]
    Changed(PathBuf),
    /// Something that is not a socket is where the socket goes.
    #[error("a file that is not a socket is in the way")]
    NotASocket,
    /// A socket someone listens on is where the socket goes.
    #[error("a socket that is in use is in the way")]
    LiveSocket,
    /// lstat failed.
    #[error("inspecting {path}")]
    Inspect {
        /// What was inspected.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// mkdir failed.
    #[error("creating directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A socket path that passed the checks that need no file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPath {
    /// The path, normalized (no `.`, no doubled or trailing `/`).
    pub path: PathBuf,
    /// The trusted directory it lies under.
    pub root: PathBuf,
}

/// Checks `raw` without touching the file system.
pub fn check_path(raw: &str, allow_dirs: &[PathBuf]) -> Result<CheckedPath, PathError> {
    if raw.contains('\0') {
        return Err(PathError::Nul);
    }
    let raw = Path::new(raw);
    if !raw.is_absolute() {
        return Err(PathError::NotAbsolute);
    }
    if raw.components().any(|c| c == Component::ParentDir) {
        return Err(PathError::ParentDir);
    }
    let path: PathBuf = raw.components().collect();
    if path.file_name().is_none() {
        return Err(PathError::NoFileName);
    }
    let len = path.as_os_str().len();
    if len > SUN_PATH_MAX {
        return Err(PathError::TooLong { len });
    }
    let root = if allow_dirs.is_empty() {
        PathBuf::from("/")
    } else {
        // The deepest allowed directory containing the path: the most is trusted
        // as spelled, which is what the operator wrote.
        allow_dirs
            .iter()
            .map(|d| d.components().collect::<PathBuf>())
            .filter(|d| path.starts_with(d) && path != *d)
            .max_by_key(|d| d.components().count())
            .ok_or(PathError::NotAllowed)?
    };
    Ok(CheckedPath { path, root })
}

/// Opens the directory `checked.path` goes in, walking from `checked.root`
/// and creating what is missing (see the module docs); returns it with the
/// socket's name.
pub fn open_parent(checked: &CheckedPath) -> Result<(OwnedFd, OsString), PathError> {
    walk(checked, !NO_OPENAT2.load(Ordering::Relaxed))
}

/// How one walk opens each directory.
#[derive(Debug, Clone, Copy)]
struct Walk {
    /// `openat2` (else `openat`, `O_NOFOLLOW`).
    openat2: bool,
    /// Under an allowed directory: `RESOLVE_BENEATH` too.
    beneath: bool,
}

/// [`open_parent`], with `openat2` or without.
fn walk(checked: &CheckedPath, openat2: bool) -> Result<(OwnedFd, OsString), PathError> {
    let CheckedPath { path, root } = checked;
    let name = path
        .file_name()
        .ok_or(PathError::NoFileName)?
        .to_os_string();
    if !root.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)
            .map_err(|source| PathError::CreateDir {
                path: root.clone(),
                source,
            })?;
    }
    // The root as spelled: symlinks in it are the operator's.
    let raw = nix::fcntl::open(
        root.as_path(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| inspect(root, e))?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    let mut dir = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut how = Walk {
        openat2,
        beneath: root != Path::new("/"),
    };
    let below = path
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .unwrap_or(Path::new(""));
    let mut at = root.clone();
    for component in below.components() {
        at.push(component);
        dir = step(&dir, component.as_os_str(), &at, &mut how)?;
    }
    Ok((dir, name))
}

fn inspect(path: &Path, e: Errno) -> PathError {
    PathError::Inspect {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Set once `openat2` answered ENOSYS: the kernel (or a seccomp filter) has
/// none, and every later walk uses the `openat` form.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens directory `name` in `dir` without following a symlink. `flags` add
/// to `O_DIRECTORY | O_NOFOLLOW`.
fn open_dir(dir: &OwnedFd, name: &OsStr, flags: OFlag, how: &mut Walk) -> nix::Result<OwnedFd> {
    let flags = flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fallback = || openat(Some(dir.as_raw_fd()), name, flags, Mode::empty());
    let raw = if how.openat2 {
        let mut resolve = ResolveFlag::RESOLVE_NO_SYMLINKS;
        if how.beneath {
            resolve |= ResolveFlag::RESOLVE_BENEATH;
        }
        let open_how = OpenHow::new().flags(flags).resolve(resolve);
        match openat2(dir.as_raw_fd(), name, open_how) {
            Err(Errno::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                how.openat2 = false;
                fallback()?
            }
            other => other?,
        }
    } else {
        fallback()?
    };
    // SAFETY: the open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One step of the walk: `name` in `dir`, made if missing; `at` is its whole
/// path, for messages.
fn step(dir: &OwnedFd, name: &OsStr, at: &Path, how: &mut Walk) -> Result<OwnedFd, PathError> {
    match open_dir(dir, name, OFlag::O_PATH, how) {
        Ok(next) => return Ok(next),
        Err(Errno::ENOENT) => {}
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(refusal(dir, name, at)),
        Err(e) => return Err(inspect(at, e)),
    }
    let create_err = |e: Errno| PathError::CreateDir {
        path: at.to_path_buf(),
        source: e.into(),
    };
    match mkdirat(
        Some(dir.as_raw_fd()),
        name,
        Mode::from_bits_truncate(DIR_MODE),
    ) {
        Ok(()) => {
            // Ours and new: open it readable to give it its mode whatever the
            // umask took (fchmod needs more than an O_PATH descriptor).
            let made = open_dir(dir, name, OFlag::O_RDONLY, how).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => refusal(dir, name, at),
                e => inspect(at, e),
            })?;
            nix::sys::stat::fchmod(made.as_raw_fd(), Mode::from_bits_truncate(DIR_MODE))
                .map_err(create_err)?;
            Ok(made)
        }
        // Made meanwhile by someone else: it must pass the same check.
        Err(Errno::EEXIST) => open_dir(dir, name, OFlag::O_PATH, how).map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => refusal(dir, name, at),
            e => inspect(at, e),
        }),
        Err(e) => Err(create_err(e)),
    }
}

/// Why `name` in `dir` is not a directory to walk through.
fn refusal(dir: &OwnedFd, name: &OsStr, at: &Path) -> PathError {
    match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFLNK => PathError::Symlink(at.to_path_buf()),
            // It was not one when opened: replaced since.
            SFlag::S_IFDIR => PathError::Changed(at.to_path_buf()),
            _ => PathError::NotADirectory(at.to_path_buf()),
        },
        Err(_) => PathError::Changed(at.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_checks_table() {
        let long = format!("/run/{}", "x".repeat(103));
        let fits = format!("/run/{}", "x".repeat(102));
        type Case<'a> = (&'a str, &'a [&'a str], Result<(&'a str, &'a str), &'a str>);
        let cases: Vec<Case> = vec![
            ("/run/a.sock", &[], Ok(("/run/a.sock", "/"))),
            ("/run//x/./a.sock/", &[], Ok(("/run/x/a.sock", "/"))),
            ("run/a.sock", &[], Err("not absolute")),
            ("", &[], Err("not absolute")),
            ("/run/../etc/a.sock", &[], Err("'..'")),
            ("/run/a\0.sock", &[], Err("NUL")),
            ("/", &[], Err("names no file")),
            (&long, &[], Err("108 bytes long")),
            (&fits, &[], Ok((&fits, "/"))),
            (
                "/run/sf/a.sock",
                &["/run/sf"],
                Ok(("/run/sf/a.sock", "/run/sf")),
            ),
            (
                "/run/sf/deep/a.sock",
                &["/run", "/run/sf/"],
                Ok(("/run/sf/deep/a.sock", "/run/sf")),
            ),
            ("/run/sf", &["/run/sf"], Err("outside")),
            ("/run/sfx/a.sock", &["/run/sf"], Err("outside")),
            ("/etc/a.sock", &["/run/sf"], Err("outside")),
        ];
        for (raw, allow, want) in cases {
            let allow: Vec<PathBuf> = allow.iter().map(PathBuf::from).collect();
            match (check_path(raw, &allow), want) {
                (Ok(got), Ok((path, root))) => {
                    assert_eq!(got.path, PathBuf::from(path), "{raw:?}");
                    assert_eq!(got.root, PathBuf::from(root), "{raw:?}");
                }
                (Err(e), Err(needle)) => {
                    assert!(e.to_string().contains(needle), "{raw:?}: {e}")
                }
                (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    use std::os::unix::fs::PermissionsExt as _;
    use std::os::unix::net::UnixListener;

    /// Both ways of walking: `openat2`, and `openat` where it is missing.
    const WALKS: [bool; 2] = [true, false];

    #[test]
    fn parents_are_created_0755_and_symlinks_refused() {
        for openat2 in WALKS {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_path_buf();
            let allow = [root.clone()];
            let raw = root.join("a/b/s.sock");
            let checked = check_path(raw.to_str().unwrap(), &allow).unwrap();
            let (fd, name) = walk(&checked, openat2).unwrap();
            assert_eq!(name, "s.sock");
            let m = std::fs::metadata(root.join("a/b")).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o7777, DIR_MODE);
            // The descriptor is that directory.
            let st = nix::sys::stat::fstat(fd.as_raw_fd()).unwrap();
            assert_eq!(st.st_ino, std::os::unix::fs::MetadataExt::ino(&m));

            std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
            let through = check_path(root.join("link/s.sock").to_str().unwrap(), &allow).unwrap();
            let err = walk(&through, openat2).unwrap_err();
            assert!(matches!(err, PathError::Symlink(_)), "{err}");

            std::fs::write(root.join("file"), b"x").unwrap();
            let under_file =
                check_path(root.join("file/s.sock").to_str().unwrap(), &allow).unwrap();
            let err = walk(&under_file, openat2).unwrap_err();
            assert!(matches!(err, PathError::NotADirectory(_)), "{err}");
        }
    }

    #[test]
    fn the_trusted_root_may_itself_be_a_symlink() {
        for openat2 in WALKS {
            let dir = tempfile::tempdir().unwrap();
            let real = dir.path().join("real");
            std::fs::create_dir(&real).unwrap();
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&real, &link).unwrap();
            let checked = check_path(link.join("x/s.sock").to_str().unwrap(), &[link]).unwrap();
            walk(&checked, openat2).unwrap();
            assert!(real.join("x").is_dir());
        }
    }

    /// Binds `name` in `dir` the way Bind does (by name in the descriptor).
    fn bind_at(dir: &OwnedFd, name: &OsStr) -> Option<UnixListener> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        UnixListener::bind(path).ok()
    }

    #[test]
    fn a_symlink_swapped_in_during_the_walk_never_redirects_the_socket() {
        for openat2 in WALKS {
            let dir = tempfile::tempdir().unwrap();
            let (root, outside) = (dir.path().join("allowed"), dir.path().join("outside"));
            std::fs::create_dir_all(root.join("sub")).unwrap();
            std::fs::create_dir(&outside).unwrap();
            std::os::unix::fs::symlink(&outside, root.join("alt")).unwrap();
            let checked = check_path(
                root.join("sub/x.sock").to_str().unwrap(),
                std::slice::from_ref(&root),
            )
            .unwrap();
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let flipper = {
                let (root, stop) = (root.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut flips = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        nix::fcntl::renameat2(
                            None,
                            &root.join("sub"),
                            None,
                            &root.join("alt"),
                            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                        )
                        .unwrap();
                        flips += 1;
                    }
                    flips
                })
            };
            let (mut bound, mut refused) = (0, 0);
            for _ in 0..2000 {
                match walk(&checked, openat2) {
                    Ok((fd, name)) => {
                        if let Some(l) = bind_at(&fd, &name) {
                            bound += 1;
                            assert!(
                                std::fs::read_dir(&outside).unwrap().next().is_none(),
                                "bound outside the allowed directory"
                            );
                            drop(l);
                            nix::unistd::unlinkat(
                                Some(fd.as_raw_fd()),
                                name.as_os_str(),
                                nix::unistd::UnlinkatFlags::NoRemoveDir,
                            )
                            .unwrap();
                        }
                    }
                    Err(PathError::Symlink(_) | PathError::Changed(_)) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
                assert!(
                    std::fs::read_dir(&outside).unwrap().next().is_none(),
                    "a socket outside the allowed directory"
                );
            }
            stop.store(true, Ordering::Relaxed);
            let flips = flipper.join().unwrap();
            assert!(
                bound > 0 && refused > 0,
                "{bound} bound, {refused} refused, {flips} flips"
            );
        }
    }
}
