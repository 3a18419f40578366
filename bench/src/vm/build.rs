//! The binaries the VM bench runs, built from the tree before each run (a
//! no-op when up to date): the release relay for the host, and static
//! (crt-static) builds of the agent and of `vmbench` for the busybox guest,
//! the same way tests/vm/run.sh builds its guest binaries.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::tooling::tail;
use crate::procs;
use crate::sys::{Ctx, Res};

/// The target triple of the static guest builds.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Built binaries.
pub struct VmBins {
    /// Static sockfwd-agent for the guest.
    pub agent: PathBuf,
    /// Static vmbench: guest client, minimal relay, host server.
    pub vmbench: PathBuf,
    /// sockfwd-relay (release) for the host.
    pub relay: PathBuf,
}

fn cargo(log: &Path, args: &[&str], static_crt: bool) -> Res<()> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_ctx(|| format!("open {}", log.display()))?;
    let err = out.try_clone().ctx("dup log")?;
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(procs::workspace_dir().join("Cargo.toml"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    if static_crt {
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    procs::unblock_signals_in_child(&mut cmd, true);
    let status = cmd.status().ctx("run cargo")?;
    if !status.success() {
        return Err(format!(
            "cargo build {} failed; end of {}:\n{}",
            args.join(" "),
            log.display(),
            tail(log, 20)
        ));
    }
    Ok(())
}

/// Builds (or finds up to date) every binary the VM bench needs. With
/// `daemons` (`--bin-dir`), the relay and the static agent are taken from
/// there instead: another build's daemons measured with this tree's bench.
pub fn build(log: &Path, daemons: Option<&Path>) -> Res<VmBins> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| procs::workspace_dir().join("target"));
    let mut packages = vec!["--release", "--target", TRIPLE, "-p", "sockfwd-vmbench"];
    if daemons.is_none() {
        cargo(log, &["--release", "-p", "sockfwd-relay"], false)?;
        packages.extend(["-p", "sockfwd-agent"]);
    }
    cargo(log, &packages, true)?;
    let bins = match daemons {
        Some(dir) => VmBins {
            agent: dir.join("sockfwd-agent"),
            vmbench: target.join(TRIPLE).join("release/vmbench"),
            relay: dir.join("sockfwd-relay"),
        },
        None => VmBins {
            agent: target.join(TRIPLE).join("release/sockfwd-agent"),
            vmbench: target.join(TRIPLE).join("release/vmbench"),
            relay: target.join("release/sockfwd-relay"),
        },
    };
    for b in [&bins.agent, &bins.vmbench, &bins.relay] {
        if !b.is_file() {
            return Err(format!("{} missing after cargo build", b.display()));
        }
    }
    Ok(bins)
}
