//! Where things are: the workspace, cargo's target directory, the build
//! products of each package, and `target/dist/`.

use std::path::{Path, PathBuf};

/// The target triple of the static agent (the README's build command).
pub const AGENT_TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The directories one dist run reads and writes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The workspace root.
    pub root: PathBuf,
    /// Cargo's target directory.
    pub target: PathBuf,
}

impl Layout {
    /// The layout of the workspace this xtask was built from.
    pub fn discover() -> Layout {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        // `cargo xtask` runs target/<profile>/xtask, so the target directory is
        // two levels up wherever CARGO_TARGET_DIR or a config put it.
        let target = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
            .unwrap_or_else(|| root.join("target"));
        Layout { root, target }
    }

    /// Where the artefacts go.
    pub fn dist(&self) -> PathBuf {
        self.target.join("dist")
    }

    /// The release build products of the static agent.
    pub fn agent_products(&self) -> PathBuf {
        self.target.join(AGENT_TRIPLE).join("release")
    }

    /// The release build products of the relay.
    pub fn relay_products(&self) -> PathBuf {
        self.target.join("release")
    }

    /// Generated man pages and completions of `package`, beside its binary:
    /// cargo-deb resolves an asset path `target/release/gen/...` to the build
    /// products of the package it packages, for the host or `--target`.
    pub fn generated(products: &Path, package: &str) -> PathBuf {
        products.join("gen").join(package)
    }
}
