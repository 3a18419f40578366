//! Checks on a Bind request's socket path, and creating its parent directories.
//!
//! Nothing here follows a symlink below the trusted root: the root is the
//! allowed directory the path lies under (as the operator spelled it), or `/`
//! when no allow-list is configured. Every directory between the root and the
//! socket is inspected with `lstat` and created (0755) when missing; a symlink or
//! a non-directory on the way is refused. The check is by path, so a process in
//! the guest that can rename directories under the root while Bind runs could
//! still race it; the agent never creates anything through a symlink it saw.

use sockfwd_proto::transport::SUN_PATH_MAX;
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
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

/// Creates the directories between `checked.root` and the socket, refusing
/// symlinks and non-directories on the way.
pub fn prepare_parent(checked: &CheckedPath) -> Result<(), PathError> {
    let CheckedPath { path, root } = checked;
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
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let below = parent.strip_prefix(root).unwrap_or(Path::new(""));
    let mut dir = root.clone();
    for component in below.components() {
        dir.push(component);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) => check_dir(&dir, &m)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&dir)?,
            Err(source) => return Err(PathError::Inspect { path: dir, source }),
        }
    }
    Ok(())
}

fn check_dir(dir: &Path, m: &std::fs::Metadata) -> Result<(), PathError> {
    if m.file_type().is_symlink() {
        Err(PathError::Symlink(dir.to_path_buf()))
    } else if !m.is_dir() {
        Err(PathError::NotADirectory(dir.to_path_buf()))
    } else {
        Ok(())
    }
}

fn make_dir(dir: &Path) -> Result<(), PathError> {
    let create_err = |source| PathError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; the directory is ours and new.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(create_err)
        }
        // Created meanwhile by someone else: it must pass the same check.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir).map_err(|source| PathError::Inspect {
                path: dir.to_path_buf(),
                source,
            })?;
            check_dir(dir, &m)
        }
        Err(e) => Err(create_err(e)),
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

    #[test]
    fn parents_are_created_0755_and_symlinks_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let allow = [root.clone()];
        let raw = root.join("a/b/s.sock");
        let checked = check_path(raw.to_str().unwrap(), &allow).unwrap();
        prepare_parent(&checked).unwrap();
        let m = std::fs::metadata(root.join("a/b")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, DIR_MODE);

        std::os::unix::fs::symlink("/tmp", root.join("link")).unwrap();
        let through = check_path(root.join("link/s.sock").to_str().unwrap(), &allow).unwrap();
        let err = prepare_parent(&through).unwrap_err();
        assert!(matches!(err, PathError::Symlink(_)), "{err}");

        std::fs::write(root.join("file"), b"x").unwrap();
        let under_file = check_path(root.join("file/s.sock").to_str().unwrap(), &allow).unwrap();
        let err = prepare_parent(&under_file).unwrap_err();
        assert!(matches!(err, PathError::NotADirectory(_)), "{err}");
    }

    #[test]
    fn the_trusted_root_may_itself_be_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let checked = check_path(link.join("x/s.sock").to_str().unwrap(), &[link]).unwrap();
        prepare_parent(&checked).unwrap();
        assert!(real.join("x").is_dir());
    }
}
