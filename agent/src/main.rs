//! sockfwd-agent binary: flags, logging and signals around [`sockfwd_agent::run`].

use clap::Parser as _;
use sockfwd_agent::cli::Cli;
use sockfwd_agent::{AgentConfig, AgentError, ConfigError};
use std::process::ExitCode;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the binary failed; each maps to an exit code.
#[derive(Debug, Error)]
enum MainError {
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
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
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            err.exit_code()
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> Result<(), MainError> {
    let config = cli
        .apply(AgentConfig::default())
        .map_err(MainError::Config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(MainError::Runtime)?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        watch_signals(shutdown.clone()).map_err(MainError::Signals)?;
        sockfwd_agent::run(config, shutdown)
            .await
            .map_err(MainError::Agent)
    })
}

/// SIGTERM and SIGINT cancel `shutdown`; the agent then shuts down in order
/// and the process exits 0.
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
