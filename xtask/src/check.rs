//! `cargo xtask dist-check`: checks the artefacts with the system's own tools,
//! not with the code that made them: `sha256sum -c`, `dpkg-deb --info` and
//! `--contents`, `man -l`, `bash -n`, `tar -tzf` for the crates, and the
//! packaged binaries themselves.

use crate::cmd::{self, CommandError};
use crate::dist::Built;
use crate::pages::{self, Program};
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// An artefact that is not what it should be.
#[derive(Debug, Error)]
pub enum CheckError {
    /// A checking tool failed (its message says why).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A file the package must carry is missing.
    #[error("{} lacks {missing}", deb.display())]
    Missing {
        /// The package.
        deb: PathBuf,
        /// The path or control text it lacks.
        missing: String,
    },
    /// A tool's output lacks what it must show.
    #[error("`{command}` does not show {expected:?}; it printed:\n{output}")]
    Output {
        /// The command line.
        command: String,
        /// What was expected in its output.
        expected: String,
        /// What it printed.
        output: String,
    },
    /// The packaged agent needs a dynamic loader (it must run in any guest).
    #[error("{} is not statically linked (it has an ELF interpreter)", path.display())]
    NotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// A file could not be read or a directory made.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs every check on what [`crate::dist::dist`] built.
pub fn check(built: &Built) -> Result<(), CheckError> {
    let dist = built.layout.dist();
    eprintln!("==> checking {}", dist.display());
    let out = cmd::output(
        Command::new("sha256sum")
            .arg("-c")
            .arg(&built.sums)
            .current_dir(&dist),
    )?;
    report("sha256sum -c SHA256SUMS", &out);

    let scratch = built.layout.target.join("dist-check");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(|source| CheckError::Io {
            path: scratch.clone(),
            source,
        })?;
    }
    let agent = pages::agent();
    let relay = pages::relay();
    let agent_root = check_deb(&built.agent_deb, &agent, &scratch, AGENT_FILES)?;
    let relay_root = check_deb(&built.relay_deb, &relay, &scratch, RELAY_FILES)?;

    let conffiles = cmd::output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&built.agent_deb)
            .arg("conffiles"),
    )?;
    expect(
        "dpkg-deb --info sockfwd-agent conffiles",
        &conffiles,
        "/etc/sockfwd/agent.toml",
    )?;
    report("conffiles", &conffiles);
    let postinst = cmd::output(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&built.agent_deb)
            .arg("postinst"),
    )?;
    // The Debian way of enabling a unit: deb-systemd-helper, run by postinst.
    expect(
        "dpkg-deb --info sockfwd-agent postinst",
        &postinst,
        "deb-systemd-helper enable",
    )?;
    eprintln!("    postinst enables sockfwd-agent.service with deb-systemd-helper");

    let agent_bin = agent_root.join("usr/bin/sockfwd-agent");
    check_version(&agent_bin, "sockfwd-agent")?;
    check_static(&agent_bin)?;
    eprintln!("    the packaged agent is static (no ELF interpreter)");
    let config = agent_root.join("etc/sockfwd/agent.toml");
    let shown = cmd::output(Command::new(&agent_bin).arg("--config").arg(&config).args([
        "--cmdline-file",
        "/dev/null",
        "--print-config",
    ]))?;
    expect(
        "sockfwd-agent --config agent.toml --print-config",
        &shown,
        "control = ",
    )?;
    eprintln!("    the packaged agent accepts the packaged /etc/sockfwd/agent.toml");
    check_version(&relay_root.join("usr/bin/sockfwd-relay"), "sockfwd-relay")?;
    check_version(&built.agent, "sockfwd-agent")?;
    check_version(&built.relay, "sockfwd-relay")?;
    check_static(&built.agent)?;
    for name in crate::dist::CRATES {
        check_crate(&dist, name)?;
    }
    check_loose_pages(&dist, &[&agent, &relay])?;
    Ok(())
}

/// The man pages and completions lie beside the packages too, and are summed.
fn check_loose_pages(dist: &Path, programs: &[&Program]) -> Result<(), CheckError> {
    let sums =
        std::fs::read_to_string(dist.join(crate::sums::SUMS)).map_err(|source| CheckError::Io {
            path: dist.join(crate::sums::SUMS),
            source,
        })?;
    let mut count = 0;
    for program in programs {
        let (name, section) = (program.name, program.section);
        let mut wanted: Vec<String> = man_pages(program)
            .iter()
            .map(|p| format!("man/man{section}/{p}.{section}.gz"))
            .collect();
        wanted.push(format!("completions/bash/{name}"));
        wanted.push(format!("completions/zsh/_{name}"));
        wanted.push(format!("completions/fish/{name}.fish"));
        for file in wanted {
            if !dist.join(&file).is_file() || !sums.contains(&format!("  {file}\n")) {
                return Err(CheckError::Missing {
                    deb: dist.to_path_buf(),
                    missing: format!("{file} (a file listed in SHA256SUMS)"),
                });
            }
            count += 1;
        }
    }
    eprintln!("    {count} man pages and completions beside the packages, in SHA256SUMS");
    Ok(())
}

/// A packaged crate carries its manifest, license and readme.
fn check_crate(dist: &Path, name: &str) -> Result<(), CheckError> {
    let file = format!("{name}-{}.crate", env!("CARGO_PKG_VERSION"));
    let listing = cmd::output(Command::new("tar").arg("-tzf").arg(dist.join(&file)))?;
    let top = file.trim_end_matches(".crate");
    for member in ["Cargo.toml", "LICENSE", "README.md", "src/lib.rs"] {
        expect(
            &format!("tar -tzf {file}"),
            &listing,
            &format!("{top}/{member}"),
        )?;
    }
    eprintln!(
        "    {file}: {} files, with Cargo.toml, LICENSE, README.md",
        listing.lines().count()
    );
    Ok(())
}

/// Files (below the package root) beyond the binary, man pages and completions.
const AGENT_FILES: &[&str] = &[
    "etc/sockfwd/agent.toml",
    "usr/lib/systemd/system/sockfwd-agent.service",
    "usr/share/doc/sockfwd-agent/copyright",
    "usr/share/doc/sockfwd-agent/README.md",
    "usr/share/doc/sockfwd-agent/README.systemd.md",
    "usr/share/doc/sockfwd-agent/changelog.gz",
];
const RELAY_FILES: &[&str] = &[
    "usr/share/doc/sockfwd-relay/copyright",
    "usr/share/doc/sockfwd-relay/README.md",
    "usr/share/doc/sockfwd-relay/changelog.gz",
];

/// Checks one package's control data and files, renders its man pages, and
/// returns the directory it was extracted into.
fn check_deb(
    deb: &Path,
    program: &Program,
    scratch: &Path,
    files: &[&str],
) -> Result<PathBuf, CheckError> {
    let name = program.name;
    let info = cmd::output(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for field in [
        format!("Package: {name}"),
        format!("Version: {}-1", env!("CARGO_PKG_VERSION")),
        "Architecture: amd64".to_owned(),
    ] {
        expect(&format!("dpkg-deb --info {name}"), &info, &field)?;
    }
    let contents = cmd::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let listed: Vec<&str> = contents
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| !p.ends_with('/'))
        .collect();
    let man_pages = man_pages(program);
    let section = program.section;
    let mut wanted: Vec<String> = vec![format!("usr/bin/{name}")];
    wanted.extend(
        man_pages
            .iter()
            .map(|p| format!("usr/share/man/man{section}/{p}.{section}.gz")),
    );
    wanted.push(format!("usr/share/bash-completion/completions/{name}"));
    wanted.push(format!("usr/share/zsh/vendor-completions/_{name}"));
    wanted.push(format!("usr/share/fish/vendor_completions.d/{name}.fish"));
    wanted.extend(files.iter().map(|f| (*f).to_owned()));
    for path in &wanted {
        if !listed.contains(&format!("./{path}").as_str()) {
            return Err(CheckError::Missing {
                deb: deb.to_path_buf(),
                missing: path.clone(),
            });
        }
    }
    eprintln!("    {}: {} files:", file_name(deb), listed.len());
    for path in &listed {
        eprintln!("      {path}");
    }

    let root = scratch.join(name);
    std::fs::create_dir_all(&root).map_err(|source| CheckError::Io {
        path: root.clone(),
        source,
    })?;
    cmd::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    for page in &man_pages {
        let path = root.join(format!("usr/share/man/man{section}/{page}.{section}.gz"));
        let text = cmd::output(
            Command::new("man")
                .args(["-P", "cat", "-l"])
                .arg(&path)
                .env("MANWIDTH", "80"),
        )?;
        expect(&format!("man -l {page}"), &text, "NAME")?;
        expect(&format!("man -l {page}"), &text, page)?;
        eprintln!(
            "    man -l {page}.{section}.gz: {} lines",
            text.lines().count()
        );
    }
    let bash = root.join(format!("usr/share/bash-completion/completions/{name}"));
    cmd::output(Command::new("bash").arg("-n").arg(&bash))?;
    eprintln!("    bash -n {name} completion: ok");
    Ok(root)
}

/// The page names of `program` and its visible subcommands.
fn man_pages(program: &Program) -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        out.push(prefix.to_owned());
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() != "help" {
                walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&program.command, program.name, &mut out);
    out
}

fn check_version(binary: &Path, name: &str) -> Result<(), CheckError> {
    let out = cmd::output(Command::new(binary).arg("--version"))?;
    let expected = format!("{name} {}", env!("CARGO_PKG_VERSION"));
    if out.trim() != expected {
        return Err(CheckError::Output {
            command: format!("{} --version", binary.display()),
            expected,
            output: out,
        });
    }
    eprintln!("    {} --version: {}", binary.display(), out.trim());
    Ok(())
}

/// A static(-pie) executable has no PT_INTERP program header.
fn check_static(binary: &Path) -> Result<(), CheckError> {
    let bytes = std::fs::read(binary).map_err(|source| CheckError::Io {
        path: binary.to_path_buf(),
        source,
    })?;
    if has_interpreter(&bytes) {
        return Err(CheckError::NotStatic {
            path: binary.to_path_buf(),
        });
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader; a file
/// too short to hold its program headers counts as dynamic (fail closed).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return true;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return true;
    };
    (0..count).any(|i| {
        let at = phoff + i * size;
        elf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .is_none_or(|b| u32::from_le_bytes(b) == PT_INTERP)
    })
}

fn expect(command: &str, output: &str, expected: &str) -> Result<(), CheckError> {
    if output.contains(expected) {
        return Ok(());
    }
    Err(CheckError::Output {
        command: command.to_owned(),
        expected: expected.to_owned(),
        output: output.to_owned(),
    })
}

fn report(what: &str, output: &str) {
    eprintln!("    {what}:");
    for line in output.lines() {
        eprintln!("      {line}");
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn interpreter_is_found_in_a_dynamic_binary_and_assumed_in_a_non_elf_file() {
        // This test binary itself is dynamically linked (the default).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(has_interpreter(b"not an ELF file"));
    }
}
