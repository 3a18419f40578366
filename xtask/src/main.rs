//! Release tooling for sockfwd, run through the cargo alias in
//! `.cargo/config.toml`:
//!
//! - `cargo xtask dist` builds the release artefacts into `target/dist/`: the
//!   static agent, the release relay, a `.deb` for each (binary, man pages,
//!   shell completions; the agent's with its systemd unit and a commented
//!   default `/etc/sockfwd/agent.toml`), and `SHA256SUMS` over them;
//! - `cargo xtask dist-check` does that, then checks what it built with the
//!   system's own tools (`sha256sum -c`, `dpkg-deb`, `man -l`, the packaged
//!   binaries themselves), as CI does;
//! - `cargo xtask agent-deb` builds only the agent's `.deb` into `target/deb/`
//!   and prints its path: the systemd microVM test installs it with `dpkg -i`.
//!
//! It is Rust rather than a shell script because the man pages and completions
//! come from the daemons' clap definitions (`sockfwd_agent::cli::Cli`,
//! `sockfwd_relay::cli::Cli`), which only a program linking them can read.

mod check;
mod cmd;
mod dist;
mod layout;
mod pages;
mod sums;
mod tools;

use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;
use thiserror::Error;

/// sockfwd release tooling.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
enum Task {
    /// Build the release artefacts into target/dist/
    Dist,
    /// Build the release artefacts, then check them (what CI runs)
    DistCheck,
    /// Build only the agent's .deb into target/deb/ and print its path (what the systemd microVM test installs)
    AgentDeb,
}

/// Why a task failed.
#[derive(Debug, Error)]
enum TaskError {
    /// A step of the build failed.
    #[error(transparent)]
    Dist(#[from] dist::DistError),
    /// A built artefact is not what it should be.
    #[error(transparent)]
    Check(#[from] check::CheckError),
    /// A system tool is missing.
    #[error(transparent)]
    Tools(#[from] tools::ToolsError),
}

fn run(task: &Task) -> Result<(), TaskError> {
    match task {
        Task::Dist => {
            tools::ensure(tools::DIST)?;
            dist::dist()?;
        }
        Task::DistCheck => {
            // Every tool first: a missing one should not cost a build.
            tools::ensure(tools::DIST)?;
            tools::ensure(tools::CHECK)?;
            check::check(&dist::dist()?)?;
        }
        Task::AgentDeb => {
            tools::ensure(tools::DIST)?;
            println!("{}", dist::agent_deb()?.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let task = Task::parse();
    let start = Instant::now();
    match run(&task) {
        Ok(()) => {
            eprintln!("xtask: done in {:.0?}", start.elapsed());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("xtask: error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
