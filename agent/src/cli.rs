//! Command-line flags: the last configuration layer, and the flags that say
//! where the other layers are.
//!
//! The keys are [`Flags`], typed: clap parses each value with the kind the
//! file and the kernel command line use, and [`flag_error`] gives a bad value
//! the words of the other layers.

use crate::config::keys::Flags;
use crate::config::layers::{self, BadValue, ConfigError, Effective};
use clap::Parser;
use std::path::PathBuf;

/// Guest agent: creates the forwarded Unix sockets and serves the socketforward
/// ttrpc service and the stream port.
///
/// Configuration layers, later wins: defaults, the file (--config), the kernel
/// command line (sockfwd.KEY=VALUE, KEY as the flag with `_`), flags.
/// ADDR: unix://PATH | vsock://CID:PORT.  DUR: 500ms, 10s, 1m.
#[derive(Debug, Parser, Default)]
#[command(name = "sockfwd-agent", version)]
pub struct Cli {
    /// Print the effective configuration and where each value came from, then
    /// exit
    #[arg(long)]
    pub print_config: bool,

    /// Configuration file (TOML); a missing file named here is an error
    /// [default: sockfwd.config= on the kernel command line, else
    /// /etc/sockfwd/agent.toml if it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Read the kernel command line from PATH instead of /proc/cmdline
    #[arg(long, value_name = "PATH")]
    pub cmdline_file: Option<PathBuf>,

    /// The configuration keys given as flags.
    #[command(flatten)]
    pub flags: Flags,
}

impl Cli {
    /// The effective configuration: these flags over the kernel command line,
    /// the file and the defaults. `rust_log` is `RUST_LOG`.
    pub fn configuration(self, rust_log: Option<String>) -> Result<Effective, ConfigError> {
        let (file, cmdline) = (self.config.as_deref(), self.cmdline_file.as_deref());
        layers::load(file, cmdline, self.flags, rust_log)
    }
}

/// A flag value clap refused, as the other layers word it (`invalid value
/// "abc" for --pending-timeout on the command line: expected ...`: the key's
/// value parser made those words); `None` for any other clap error, which
/// clap prints itself.
pub fn flag_error(err: &clap::Error) -> Option<ConfigError> {
    let bad = std::error::Error::source(err)?.downcast_ref::<BadValue>()?;
    Some(ConfigError::Value(bad.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers::{FileLayer, Layers, Source};
    use crate::config::{AgentConfig, ControlMode};
    use clap::CommandFactory as _;
    use sockfwd_proto::transport::Address;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let argv = std::iter::once("sockfwd-agent").chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| match flag_error(&e) {
            Some(err) => err.to_string(),
            None => e.to_string(),
        })?;
        let layers = Layers {
            file: FileLayer {
                path: "/nonexistent.toml".into(),
                text: None,
                named_by: Source::Default,
            },
            cmdline: None,
            flags: cli.flags,
            rust_log: None,
            warnings: Vec::new(),
        };
        Effective::try_from(layers)
            .map(|e| e.config)
            .map_err(|e| e.to_string())
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
            "--socket-uid",
            "10",
            "--socket-gid",
            "20",
            "--allow-dir",
            "/run/a",
            "--allow-dir",
            "/run/b",
            "--max-sockets-per-bind",
            "9",
            "--allow-any-cid",
            "--allow-target",
            "*:80",
            "--forward",
            "a:/run/a/x.sock",
            "--forward",
            "b:/run/b/y.sock:0600:1:2",
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
        assert_eq!((c.socket_uid, c.socket_gid), (Some(10), Some(20)));
        assert_eq!(
            c.allow_dirs,
            vec![PathBuf::from("/run/a"), PathBuf::from("/run/b")]
        );
        assert_eq!(c.max_sockets_per_bind, 9);
        assert!(c.allow_any_cid);
        assert_eq!(c.allow_targets.0.len(), 1);
        let forwards: Vec<String> = c.forwards.iter().map(|f| f.to_string()).collect();
        assert_eq!(forwards, ["a:/run/a/x.sock", "b:/run/b/y.sock:0600:1:2"]);
    }

    #[test]
    fn shorthands_and_switch_values() {
        let c = parse(&["--control-port", "2000", "--streams-port", "2001"]).unwrap();
        assert_eq!(c.control.to_string(), "listen vsock://-1:2000");
        assert_eq!(c.streams.to_string(), "vsock://-1:2001");
        assert!(!parse(&["--allow-any-cid=false"]).unwrap().allow_any_cid);
        parse(&["--streams", "unix:///s", "--streams-port", "1"]).unwrap_err();
        parse(&["--control-port", "1", "--control-dial"]).unwrap_err();
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
            (
                &["--control", "tcp://x"][..],
                "invalid value \"tcp://x\" for --control on the command line: \
                 expected unix://PATH or vsock://CID:PORT",
            ),
            (
                &["--control", "vsock://1"][..],
                "invalid value \"vsock://1\" for --control on the command line: \
                 expected CID:PORT",
            ),
            (
                &["--pending-timeout", "soon"][..],
                "invalid value \"soon\" for --pending-timeout on the command line: \
                 expected a duration like 500ms or 10s",
            ),
            (&["--socket-mode", "0999"][..], "--socket-mode"),
            (&["--socket-mode", "70000"][..], "--socket-mode"),
            (&["--max-pending", "0"][..], "--max-pending"),
            (&["--allow-dir", "relative"][..], "--allow-dir"),
            (&["--allow-any-cid=maybe"][..], "--allow-any-cid"),
            (&["--streams", "hvsock:///v:1"][..], "--streams"),
            (&["--forward", "x"][..], "--forward"),
            (&["--allow-target", "*:x"][..], "--allow-target"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
