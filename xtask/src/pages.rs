//! Man pages (`clap_mangen`) and shell completions (`clap_complete`) from the
//! daemons' clap definitions, laid out as the packages install them.
//!
//! Each program's generated tree mirrors its install places, so the package
//! metadata maps one directory to one destination:
//! `man/manN/*.N.gz` (subcommands as `PROGRAM-SUB.N.gz`), `bash/PROGRAM`,
//! `zsh/_PROGRAM`, `fish/PROGRAM.fish`.

use crate::cmd::{self, CommandError};
use clap::CommandFactory as _;
use clap_complete::Shell;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// The shells completions are generated for, each in a directory of its name.
pub const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// Why the pages could not be written.
#[derive(Debug, Error)]
pub enum PagesError {
    /// Writing a generated file failed.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// gzip failed on a man page.
    #[error("compressing a man page")]
    Gzip(#[source] CommandError),
}

/// One program whose pages are generated.
pub struct Program {
    /// Binary and package name.
    pub name: &'static str,
    /// Man section: 8 for the guest daemon, 1 for the relay (operators and
    /// VMMs run it, often unprivileged).
    pub section: &'static str,
    /// The top-level clap command.
    pub command: clap::Command,
    /// Hand-written roff sections appended to the top-level page.
    pub extra: &'static str,
}

/// The guest agent.
pub fn agent() -> Program {
    Program {
        name: "sockfwd-agent",
        section: "8",
        command: sockfwd_agent::cli::Cli::command(),
        extra: AGENT_EXTRA,
    }
}

/// The host relay.
pub fn relay() -> Program {
    Program {
        name: "sockfwd-relay",
        section: "1",
        command: sockfwd_relay::cli::Cli::command(),
        extra: RELAY_EXTRA,
    }
}

const AGENT_EXTRA: &str = r#".SH FILES
.TP
.I /etc/sockfwd/agent.toml
The configuration file: every key, commented out with its default and why.
\fB\-\-config\fR or \fBsockfwd.config=\fR on the kernel command line name another.
.TP
.I /proc/cmdline
The kernel command line: its \fBsockfwd.\fIKEY\fB=\fIVALUE\fR words configure the agent
(\fB\-\-cmdline\-file\fR reads another file).
.TP
.I /usr/lib/systemd/system/sockfwd\-agent.service
The systemd unit: Type=notify, READY=1 once the listeners and boot\-time forwards exist, a watchdog.
.SH ENVIRONMENT
.TP
.B RUST_LOG
The log filter when no layer sets \fBlog\fR.
.TP
.BR NOTIFY_SOCKET ", " WATCHDOG_USEC ", " WATCHDOG_PID
Set by systemd: readiness, watchdog and stopping notifications.
.SH EXIT STATUS
0 after SIGTERM, SIGINT or the host's Shutdown;
2 for a configuration error (the message names the key, the layer and the value);
1 for any other failure.
.SH SEE ALSO
.BR sockfwd\-relay (1),
.BR systemd.service (5);
/usr/share/doc/sockfwd\-agent/
"#;

const RELAY_EXTRA: &str = r#".SH ENVIRONMENT
.TP
.B RUST_LOG
The log filter (default: info).
.SH SEE ALSO
.BR sockfwd\-agent (8)
"#;

/// Writes `program`'s man pages and completions below `out`; returns the files.
pub fn generate(program: &Program, out: &Path) -> Result<Vec<PathBuf>, PagesError> {
    let mut written = Vec::new();
    let mut command = program
        .command
        .clone()
        .bin_name(program.name)
        .disable_help_subcommand(true);
    command.build();
    let man_dir = out.join("man").join(format!("man{}", program.section));
    write_pages(program, &command, &man_dir, true, &mut written)?;
    for (shell, file) in [
        (Shell::Bash, format!("bash/{}", program.name)),
        (Shell::Zsh, format!("zsh/_{}", program.name)),
        (Shell::Fish, format!("fish/{}.fish", program.name)),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), program.name, &mut text);
        let path = out.join(file);
        write(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

/// The page of `command` and, recursively, of its visible subcommands.
fn write_pages(
    program: &Program,
    command: &clap::Command,
    dir: &Path,
    top: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), PagesError> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(program, sub, dir, false, written)?;
    }
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .to_owned();
    let man = clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section(program.section)
        .source(format!("sockfwd {}", env!("CARGO_PKG_VERSION")))
        .manual("sockfwd manual");
    let mut text = Vec::new();
    let path = dir.join(format!("{name}.{}", program.section));
    man.render(&mut text).map_err(|source| PagesError::Write {
        path: path.clone(),
        source,
    })?;
    if top {
        text.extend_from_slice(program.extra.as_bytes());
    } else {
        let parent = program.name.replace('-', "\\-");
        text.extend_from_slice(
            format!(".SH SEE ALSO\n.BR {parent} ({})\n", program.section).as_bytes(),
        );
    }
    write(&path, &text)?;
    // Debian policy: man pages are installed gzipped; -n keeps the name and
    // time out of the header, so the same sources give the same bytes.
    cmd::output(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&path))
        .map_err(PagesError::Gzip)?;
    written.push(dir.join(format!("{name}.{}.gz", program.section)));
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), PagesError> {
    let result = match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir),
        None => Ok(()),
    }
    .and_then(|()| std::fs::write(path, bytes));
    result.map_err(|source| PagesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_subcommand_gets_its_own_page_named_after_its_parent() {
        let program = Program {
            name: "prog",
            section: "1",
            command: clap::Command::new("prog")
                .about("a program")
                .subcommand(clap::Command::new("status").about("show it"))
                .subcommand(clap::Command::new("secret").hide(true)),
            extra: ".SH SEE ALSO\nnothing\n",
        };
        let dir = std::env::temp_dir().join(format!("xtask-pages-{}", std::process::id()));
        let mut files: Vec<String> = generate(&program, &dir)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        files.sort();
        let page = cmd::output(
            Command::new("gzip")
                .arg("-dc")
                .arg(dir.join("man/man1/prog-status.1.gz")),
        )
        .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            files,
            [
                "bash/prog",
                "fish/prog.fish",
                "man/man1/prog-status.1.gz",
                "man/man1/prog.1.gz",
                "zsh/_prog",
            ]
        );
        assert!(page.contains(".TH PROG-STATUS 1"), "{page}");
        assert!(page.contains("prog status"), "{page}");
        assert!(page.contains(".BR prog (1)"), "{page}");
    }
}
