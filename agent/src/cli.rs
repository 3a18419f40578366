//! Command-line flags, the last configuration layer.
//!
//! Every flag is optional here: [`Cli::apply`] overlays only the flags given on a
//! base [`AgentConfig`] (defaults, or defaults with a file and the kernel command
//! line applied), so each layer stays separate from the defaults.

use crate::config::{AgentConfig, ConfigError, ControlMode};
use clap::Parser;
use sockfwd_proto::transport::Address;
use std::path::PathBuf;
use std::time::Duration;

/// Guest agent: creates the forwarded Unix sockets and serves the socketforward
/// ttrpc service and the stream port.
///
/// ADDR: unix://PATH | vsock://CID:PORT.  DUR: 500ms, 10s, 1m.
#[derive(Debug, Parser, Default)]
#[command(name = "sockfwd-agent", version)]
pub struct Cli {
    /// ttrpc listener [default: vsock://-1:1025]
    #[arg(long, value_name = "ADDR")]
    pub control: Option<Address>,

    /// Dial the host and serve ttrpc on that connection, redialing with backoff
    /// [default when given without ADDR: vsock://2:1025]
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "vsock://2:1025",
        conflicts_with = "control"
    )]
    pub control_dial: Option<Address>,

    /// Stream-port listener [default: vsock://-1:1026]
    #[arg(long, value_name = "ADDR")]
    pub streams: Option<Address>,

    /// How long a guest connection waits for its result [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub pending_timeout: Option<Duration>,

    /// How long one Accept stream may take to answer before the request is
    /// offered to another [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub result_timeout: Option<Duration>,

    /// Guest connections waiting at once; beyond it they are closed and logged
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_pending: Option<usize>,

    /// Longest stream ID accepted on the stream port [default: 256]
    #[arg(long, value_name = "N")]
    pub max_stream_id_len: Option<usize>,

    /// Stream-port handshake read deadline [default: 5s]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Option<Duration>,

    /// A registered stream not claimed within this is closed [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub claim_timeout: Option<Duration>,

    /// How long open relays may run after Shutdown or SIGTERM [default: 5s]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,

    /// Mode of a forward listener whose Bind gives none [default: 0666]
    #[arg(long, value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// Only create sockets under DIR (repeatable); below DIR no symlink is
    /// followed [default: anywhere]
    #[arg(long = "allow-dir", value_name = "DIR")]
    pub allow_dirs: Vec<PathBuf>,

    /// Most sockets one Bind call may create [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_sockets_per_bind: Option<usize>,

    /// Accept vsock connections from any CID, not only the host (CID 2)
    #[arg(long)]
    pub allow_any_cid: bool,

    /// A target host-initiated connections may reach (repeatable): HOST:PORT
    /// with * for any host or port and A-B for a range (127.0.0.1:*, *:8080,
    /// [::1]:8000-8999), or unix:GLOB (unix:/run/*) [default: any target]
    #[arg(long = "allow-target", value_name = "SPEC")]
    pub allow_targets: Vec<crate::target::AllowTarget>,
}

/// Parses an octal file mode: `0666`, `666` or `0o666`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|e| format!("{s:?} is not an octal mode like 0666: {e}"))?;
    if mode > 0o7777 {
        return Err(format!("{s:?} is not a file mode (at most 07777)"));
    }
    Ok(mode)
}

impl Cli {
    /// Overlays the flags that were given on `base`, then validates the result.
    pub fn apply(self, mut base: AgentConfig) -> Result<AgentConfig, ConfigError> {
        if let Some(addr) = self.control {
            base.control = ControlMode::Listen(addr);
        }
        if let Some(addr) = self.control_dial {
            base.control = ControlMode::Dial(addr);
        }
        if let Some(v) = self.streams {
            base.streams = v;
        }
        if let Some(v) = self.pending_timeout {
            base.pending_timeout = v;
        }
        if let Some(v) = self.result_timeout {
            base.result_timeout = v;
        }
        if let Some(v) = self.max_pending {
            base.max_pending = v;
        }
        if let Some(v) = self.max_stream_id_len {
            base.max_stream_id_len = v;
        }
        if let Some(v) = self.handshake_timeout {
            base.handshake_timeout = v;
        }
        if let Some(v) = self.claim_timeout {
            base.claim_timeout = v;
        }
        if let Some(v) = self.shutdown_grace {
            base.shutdown_grace = v;
        }
        if let Some(v) = self.socket_mode {
            base.socket_mode = v;
        }
        if !self.allow_dirs.is_empty() {
            base.allow_dirs = self.allow_dirs;
        }
        if let Some(v) = self.max_sockets_per_bind {
            base.max_sockets_per_bind = v;
        }
        if self.allow_any_cid {
            base.allow_any_cid = true;
        }
        if !self.allow_targets.is_empty() {
            base.allow_targets = crate::target::AllowList(self.allow_targets);
        }
        base.validate()?;
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("sockfwd-agent").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.apply(AgentConfig::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_flags_is_the_defaults() {
        assert_eq!(parse(&[]).unwrap(), AgentConfig::default());
    }

    #[test]
    fn every_flag_lands_in_the_config() {
        let c = parse(&[
            "--control",
            "unix:///tmp/c.sock",
            "--streams",
            "unix:///tmp/s.sock",
            "--pending-timeout",
            "1m",
            "--result-timeout",
            "500ms",
            "--max-pending",
            "7",
            "--max-stream-id-len",
            "64",
            "--handshake-timeout",
            "2s",
            "--claim-timeout",
            "3s",
            "--shutdown-grace",
            "4s",
            "--socket-mode",
            "0660",
            "--allow-dir",
            "/run/a",
            "--allow-dir",
            "/run/b",
            "--max-sockets-per-bind",
            "9",
            "--allow-any-cid",
        ])
        .unwrap();
        assert_eq!(
            c.control,
            ControlMode::Listen(Address::Unix("/tmp/c.sock".into()))
        );
        assert_eq!(c.streams, Address::Unix("/tmp/s.sock".into()));
        assert_eq!(c.pending_timeout, Duration::from_secs(60));
        assert_eq!(c.result_timeout, Duration::from_millis(500));
        assert_eq!(c.max_pending, 7);
        assert_eq!(c.max_stream_id_len, 64);
        assert_eq!(c.handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.claim_timeout, Duration::from_secs(3));
        assert_eq!(c.shutdown_grace, Duration::from_secs(4));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(
            c.allow_dirs,
            vec![PathBuf::from("/run/a"), PathBuf::from("/run/b")]
        );
        assert_eq!(c.max_sockets_per_bind, 9);
        assert!(c.allow_any_cid);
    }

    #[test]
    fn control_dial_defaults_to_the_host_and_conflicts_with_control() {
        assert_eq!(
            parse(&["--control-dial"]).unwrap().control,
            ControlMode::Dial(ControlMode::default_dial())
        );
        assert_eq!(
            parse(&["--control-dial", "unix:///tmp/h.sock"])
                .unwrap()
                .control,
            ControlMode::Dial(Address::Unix("/tmp/h.sock".into()))
        );
        parse(&["--control", "unix:///a", "--control-dial"]).unwrap_err();
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, needle) in [
            (&["--control", "tcp://x"][..], "--control"),
            (&["--pending-timeout", "soon"][..], "--pending-timeout"),
            (&["--socket-mode", "0999"][..], "--socket-mode"),
            (&["--socket-mode", "70000"][..], "--socket-mode"),
            (&["--max-pending", "0"][..], "max-pending"),
            (&["--allow-dir", "relative"][..], "allow-dir"),
            (&["--streams", "hvsock:///v:1"][..], "streams"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn modes_parse_in_each_spelling() {
        assert_eq!(parse_mode("0666"), Ok(0o666));
        assert_eq!(parse_mode("666"), Ok(0o666));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        parse_mode("").unwrap_err();
        parse_mode("8").unwrap_err();
    }
}
