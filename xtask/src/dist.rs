//! `cargo xtask dist`: the build steps, in order, each announced as it starts.
//!
//! 1. the static agent (`RUSTFLAGS='-C target-feature=+crt-static' cargo build
//!    --release --target x86_64-unknown-linux-gnu -p sockfwd-agent`, the
//!    README's command) and the release relay;
//! 2. man pages and completions beside each binary ([`crate::pages`]);
//! 3. a `.deb` of each with cargo-deb (installed when missing), from the
//!    `[package.metadata.deb]` of `agent/` and `host-relay/`, built from the
//!    binaries of step 1 (`--no-build`);
//! 4. the library crates as `cargo package` makes them for crates.io
//!    (`sockfwd-proto` and `sockfwd-relay`, packaged together and each built
//!    from its packaged sources);
//! 5. the binaries and crates copied beside the packages, and `SHA256SUMS`
//!    over all.

use crate::cmd::{self, CommandError};
use crate::layout::{Layout, AGENT_TRIPLE};
use crate::pages::{self, PagesError, Program};
use crate::sums;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// The library crates published to crates.io, in dependency order.
pub const CRATES: [&str; 2] = ["sockfwd-proto", "sockfwd-relay"];

/// The cargo-deb major version whose metadata keys the manifests use.
const CARGO_DEB_REQ: &str = "^3.8";

/// Why dist stopped.
#[derive(Debug, Error)]
pub enum DistError {
    /// A build tool failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Generating the man pages or completions failed.
    #[error("generating the man pages and completions of {package}")]
    Pages {
        /// The package.
        package: &'static str,
        /// The cause.
        #[source]
        source: PagesError,
    },
    /// A file operation in the dist directory failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// cargo-deb succeeded but left no package.
    #[error("cargo deb left no {package}_*.deb in {}", dir.display())]
    NoPackage {
        /// The package.
        package: &'static str,
        /// Where it should be.
        dir: PathBuf,
    },
}

/// What one dist run produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// The directories it used.
    pub layout: Layout,
    /// The static agent, as copied into the dist directory.
    pub agent: PathBuf,
    /// The relay, as copied into the dist directory.
    pub relay: PathBuf,
    /// The agent's package.
    pub agent_deb: PathBuf,
    /// The relay's package.
    pub relay_deb: PathBuf,
    /// The checksum file.
    pub sums: PathBuf,
}

/// Builds every artefact into `target/dist/` (emptied first).
pub fn dist() -> Result<Built, DistError> {
    let layout = Layout::discover();
    let dist = layout.dist();
    eprintln!("xtask: release artefacts into {}", dist.display());
    reset_dir(&dist)?;

    build_agent(&layout)?;
    cmd::step(
        "release relay",
        cargo(&layout).args([
            "build",
            "--release",
            "-p",
            "sockfwd-relay",
            "--bin",
            "sockfwd-relay",
        ]),
    )?;

    let agent = pages::agent();
    let relay = pages::relay();
    generate(&agent, &layout.agent_products())?;
    generate(&relay, &layout.relay_products())?;

    ensure_cargo_deb(&layout)?;
    let agent_deb = package(&layout, "sockfwd-agent", Some(AGENT_TRIPLE), &dist)?;
    let relay_deb = package(&layout, "sockfwd-relay", None, &dist)?;

    let crates = publishable_crates(&layout)?;

    let agent_bin = copy(&layout.agent_products().join("sockfwd-agent"), &dist)?;
    let relay_bin = copy(&layout.relay_products().join("sockfwd-relay"), &dist)?;
    for krate in &crates {
        copy(krate, &dist)?;
    }
    // The pages and completions beside the packages too, for hosts and images
    // that install the binaries without dpkg.
    for (program, products) in [
        (&agent, layout.agent_products()),
        (&relay, layout.relay_products()),
    ] {
        let generated = Layout::generated(&products, program.name);
        copy_tree(&generated.join("man"), &dist.join("man"))?;
        for shell in pages::SHELLS {
            copy_tree(
                &generated.join(shell),
                &dist.join("completions").join(shell),
            )?;
        }
    }
    let sums = sums::write(&dist).map_err(|source| DistError::Io {
        what: "writing the checksums in",
        path: dist.clone(),
        source,
    })?;
    eprintln!("xtask: artefacts (checked by `sha256sum -c SHA256SUMS` in that directory):");
    for line in std::fs::read_to_string(&sums).unwrap_or_default().lines() {
        eprintln!("    {line}");
    }
    Ok(Built {
        layout,
        agent: agent_bin,
        relay: relay_bin,
        agent_deb,
        relay_deb,
        sums,
    })
}

/// Builds only the agent's `.deb` (the static agent, its pages, the package)
/// into `target/deb/`, and returns its path: what the systemd microVM test
/// installs with `dpkg -i`, without the relay and the crates `dist` adds.
pub fn agent_deb() -> Result<PathBuf, DistError> {
    let layout = Layout::discover();
    let out = layout.target.join("deb");
    reset_dir(&out)?;
    build_agent(&layout)?;
    generate(&pages::agent(), &layout.agent_products())?;
    ensure_cargo_deb(&layout)?;
    package(&layout, "sockfwd-agent", Some(AGENT_TRIPLE), &out)
}

/// The static agent: glibc linked in, so it runs in any guest.
fn build_agent(layout: &Layout) -> Result<(), DistError> {
    cmd::step(
        "static agent (glibc linked in: no runtime dependencies in the guest)",
        cargo(layout)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["build", "--release", "--target", AGENT_TRIPLE])
            .args(["-p", "sockfwd-agent", "--bin", "sockfwd-agent"]),
    )?;
    Ok(())
}

fn cargo(layout: &Layout) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&layout.root);
    cmd
}

fn reset_dir(dir: &Path) -> Result<(), DistError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|source| DistError::Io {
            what: "emptying",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::create_dir_all(dir).map_err(|source| DistError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })
}

fn generate(program: &Program, products: &Path) -> Result<(), DistError> {
    let out = Layout::generated(products, program.name);
    eprintln!(
        "==> man pages and completions of {} into {}",
        program.name,
        out.display()
    );
    reset_dir(&out)?;
    let files = pages::generate(program, &out).map_err(|source| DistError::Pages {
        package: program.name,
        source,
    })?;
    for file in files {
        eprintln!("    {}", file.strip_prefix(&out).unwrap_or(&file).display());
    }
    Ok(())
}

/// Installs cargo-deb when it is missing or of another major version.
fn ensure_cargo_deb(layout: &Layout) -> Result<(), DistError> {
    let found = cmd::output(cargo(layout).args(["deb", "--version"])).ok();
    // "cargo-deb 3.8.0"
    let version = found
        .as_deref()
        .and_then(|v| v.split_whitespace().nth(1))
        .map(str::to_owned);
    let usable = version.as_deref().is_some_and(|v| {
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        parts.next() == Some(3) && parts.next().unwrap_or(0) >= 8
    });
    if usable {
        return Ok(());
    }
    cmd::step(
        &format!(
            "installing cargo-deb {CARGO_DEB_REQ} (found: {}; needs crates.io, takes minutes once)",
            version.as_deref().unwrap_or("none")
        ),
        cargo(layout).args([
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_REQ,
        ]),
    )?;
    Ok(())
}

fn package(
    layout: &Layout,
    package: &'static str,
    triple: Option<&str>,
    dist: &Path,
) -> Result<PathBuf, DistError> {
    let dist = dist.to_path_buf();
    let mut cmd = cargo(layout);
    cmd.args(["deb", "--no-build", "-p", package, "--output"])
        .arg(&dist);
    if let Some(triple) = triple {
        cmd.args(["--target", triple]);
    }
    cmd::step(&format!("{package} .deb"), &mut cmd)?;
    let prefix = format!("{package}_");
    let found = std::fs::read_dir(&dist)
        .map_err(|source| DistError::Io {
            what: "listing",
            path: dist.clone(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        });
    found.ok_or(DistError::NoPackage { package, dir: dist })
}

/// `cargo package` of the library crates: together, so the relay's packaged
/// manifest can depend on the proto crate by version before either is on
/// crates.io. A tree with uncommitted changes is packaged too (cargo marks it
/// `"dirty"` in the crate's `.cargo_vcs_info.json`).
///
/// cargo verifies the relay against the proto crate through a temporary local
/// registry, and takes a registry crate of one name and version for immutable:
/// it neither unpacks it again nor rebuilds it when its contents change. So,
/// after proto changed, the relay was verified against the old proto and
/// failed to build (seen here: 41 unresolved imports of modules proto had
/// gained). The verification therefore builds in a target directory of its own,
/// from which our two crates' artefacts are cleaned first (the dependencies'
/// stay), and cargo's unpacked copies of them are removed.
fn publishable_crates(layout: &Layout) -> Result<Vec<PathBuf>, DistError> {
    let verify = layout.target.join("crates-verify");
    if verify.exists() {
        let mut clean = cargo(layout);
        clean.arg("clean").arg("--target-dir").arg(&verify);
        for name in CRATES {
            clean.args(["-p", name]);
        }
        cmd::output(&mut clean)?;
    }
    forget_unpacked_crates()?;
    let mut cmd = cargo(layout);
    cmd.args(["package", "--allow-dirty", "--target-dir"])
        .arg(&verify);
    for name in CRATES {
        cmd.args(["-p", name]);
    }
    cmd::step(
        "library crates for crates.io (each verified by building its packaged sources)",
        &mut cmd,
    )?;
    let version = env!("CARGO_PKG_VERSION");
    Ok(CRATES
        .iter()
        .map(|name| {
            verify
                .join("package")
                .join(format!("{name}-{version}.crate"))
        })
        .collect())
}

/// Removes cargo's unpacked copies of our crates from earlier `cargo package`
/// runs: the temporary registry's crates are unpacked under
/// `$CARGO_HOME/registry/src/-HASH/` (a local registry's name starts with
/// `-`). Only those directories go; crates.io's (`index.crates.io-...`) are
/// never touched.
fn forget_unpacked_crates() -> Result<(), DistError> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return Ok(());
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(());
    };
    let version = env!("CARGO_PKG_VERSION");
    for registry in registries.filter_map(Result::ok) {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for name in CRATES {
            let stale = registry.path().join(format!("{name}-{version}"));
            if stale.is_dir() {
                std::fs::remove_dir_all(&stale).map_err(|source| DistError::Io {
                    what: "removing cargo's stale unpacked copy",
                    path: stale.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// Copies the files under `from` into `to`, keeping their relative paths.
fn copy_tree(from: &Path, to: &Path) -> Result<(), DistError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| DistError::Io { what, path, source }
    };
    std::fs::create_dir_all(to).map_err(io("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io("listing", from))? {
        let entry = entry.map_err(io("listing", from))?;
        let path = entry.path();
        if entry.file_type().map_err(io("inspecting", &path))?.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            copy(&path, to)?;
        }
    }
    Ok(())
}

fn copy(binary: &Path, dir: &Path) -> Result<PathBuf, DistError> {
    let dest = dir.join(binary.file_name().unwrap_or_default());
    std::fs::copy(binary, &dest).map_err(|source| DistError::Io {
        what: "copying",
        path: binary.to_path_buf(),
        source,
    })?;
    Ok(dest)
}
