//! The system tools dist and its check run, and the Debian packages that hold
//! them: missing ones are installed with apt-get when running as root (as
//! `tests/run.sh` does for the tests' peers), or named otherwise.

use crate::cmd::{self, CommandError};
use std::process::Command;
use thiserror::Error;

/// A tool and the Debian package it comes from.
pub type Tool = (&'static str, &'static str);

/// What building the artefacts runs besides cargo.
pub const DIST: &[Tool] = &[
    // cargo-deb computes the relay's Depends: (libc6) with it; without it the
    // package would silently depend on nothing.
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("gzip", "gzip"),
];

/// What checking them runs.
pub const CHECK: &[Tool] = &[
    ("sha256sum", "coreutils"),
    ("dpkg-deb", "dpkg"),
    ("man", "man-db"),
    ("tar", "tar"),
    ("bash", "bash"),
];

/// Tools missing and not installable here.
#[derive(Debug, Error)]
pub enum ToolsError {
    /// Not root: the packages are named, not installed.
    #[error("missing {}: install the Debian packages {} (or run as root, which installs them)", tools.join(", "), packages.join(" "))]
    Missing {
        /// The missing tools.
        tools: Vec<&'static str>,
        /// Their packages.
        packages: Vec<&'static str>,
    },
    /// apt-get failed.
    #[error("installing the Debian packages the dist step needs")]
    Install(#[source] CommandError),
}

/// Makes sure every tool in `tools` is on PATH.
pub fn ensure(tools: &[Tool]) -> Result<(), ToolsError> {
    let missing: Vec<&Tool> = tools.iter().filter(|(tool, _)| !on_path(tool)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&'static str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    if !is_root() {
        return Err(ToolsError::Missing {
            tools: missing.iter().map(|(t, _)| *t).collect(),
            packages,
        });
    }
    cmd::step(
        "apt-get update (for the packages below)",
        Command::new("apt-get").args(["update", "-qq"]),
    )
    .map_err(ToolsError::Install)?;
    cmd::step(
        &format!("installing {}", packages.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(ToolsError::Install)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

fn is_root() -> bool {
    // `id -u` rather than a libc dependency for one call.
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}
