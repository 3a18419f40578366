//! sockfwd-agent binary: configuration layers, logging, signals and systemd
//! notification around [`sockfwd_agent::run`].
//!
//! Runs the same under systemd (`Type=notify`), under a minimal init, and as
//! PID 1 of an initramfs: it handles SIGTERM and SIGINT itself, notifies only
//! when `NOTIFY_SOCKET` is set, and as PID 1 reaps the orphans the kernel
//! hands it (it starts no processes of its own, so there is no child whose
//! status it could take from anyone).

use clap::Parser as _;
use sockfwd_agent::cli::Cli;
use sockfwd_agent::load::{self, LoadError};
use sockfwd_agent::notify::{Systemd, SystemdEnv};
use sockfwd_agent::{print_config, AgentError};
use std::process::ExitCode;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the binary failed; each maps to an exit code.
#[derive(Debug, Error)]
enum MainError {
    #[error(transparent)]
    Config(LoadError),
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("agent failed")]
    Agent(#[source] AgentError),
}

impl MainError {
    fn exit_code(&self) -> ExitCode {
        match self {
            MainError::Config(_) => ExitCode::from(2),
            MainError::Runtime(_) | MainError::Signals(_) | MainError::Agent(_) => {
                ExitCode::FAILURE
            }
        }
    }
}

fn main() -> ExitCode {
    // Flag syntax errors exit 2 from clap; bad values exit 2 from `load`.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            if let MainError::Config(inner) = &err {
                source = std::error::Error::source(inner);
            }
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            err.exit_code()
        }
    }
}

fn init_logging(filter: &str) {
    // `load` checked the filter; "info" is only a fallback.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(load::DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> Result<(), MainError> {
    let loaded = load::load(&cli, std::env::var("RUST_LOG").ok()).map_err(MainError::Config)?;
    if cli.print_config {
        let own = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        print!("{}", print_config::render(&loaded, own));
        return Ok(());
    }
    init_logging(&loaded.log);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // Before the agent sizes its connection budget from the limit.
    sockfwd_proto::limits::raise_nofile_limit();
    let pid = std::process::id();
    let systemd = match Systemd::from_env(&SystemdEnv::from_env(), pid) {
        Ok(systemd) => systemd,
        Err(err) => {
            tracing::warn!(cause = %sockfwd_agent::error_chain(&err), "not notifying systemd");
            None
        }
    };
    // One thread: the data path is splice(2), kernel work done on the calling
    // thread, and a thread per core only adds cross-thread wakeups. Measured
    // (bench, 2 cores): connect-to-first-byte 325 -> 245 us unpinned and
    // 115 -> 93 us pinned to one CPU, with the same throughput both ways at once.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MainError::Runtime)?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone()).map_err(MainError::Signals)?;
        if pid == 1 {
            reap_orphans().map_err(MainError::Signals)?;
        }
        sockfwd_agent::run_notifying(loaded.config, shutdown, systemd)
            .await
            .map_err(MainError::Agent)
    })
}

/// SIGTERM and SIGINT cancel `shutdown`; the agent then shuts down in order
/// and the process exits 0. (As PID 1 the kernel drops signals that have no
/// handler, so these handlers are what makes SIGTERM work there too.)
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down on signal");
        shutdown.cancel();
    });
    Ok(())
}

/// As PID 1, every orphan in the guest becomes our child: reap them so they
/// don't stay zombies. Safe only because the agent spawns no processes.
fn reap_orphans() -> std::io::Result<()> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use tokio::signal::unix::{signal, SignalKind};
    let mut child = signal(SignalKind::child())?;
    tokio::spawn(async move {
        loop {
            // Drain first: children may have exited before the handler existed,
            // and one SIGCHLD can stand for several.
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => tracing::debug!(?status, "reaped an orphaned process"),
                }
            }
            if child.recv().await.is_none() {
                return;
            }
        }
    });
    Ok(())
}
