//! Command-line flags, the last configuration layer.
//!
//! Every value flag is optional text here: [`Cli::values`] lists only the flags
//! given, and [`crate::load`] parses them with the same [`crate::keys`] table
//! as the file and the kernel command line, so a flag, a `sockfwd.` key and a
//! file key of one name accept the same values and fail with the same message.

use crate::keys::Key;
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

    /// ttrpc listener [default: vsock://-1:1025]
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["control_dial", "control_port"])]
    pub control: Option<String>,

    /// Dial the host and serve ttrpc on that connection, redialing with backoff
    /// [default when given without ADDR: vsock://2:1025]
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = "vsock://2:1025",
        conflicts_with = "control_port"
    )]
    pub control_dial: Option<String>,

    /// Listen for ttrpc on vsock://-1:PORT
    #[arg(long, value_name = "PORT")]
    pub control_port: Option<String>,

    /// Stream-port listener [default: vsock://-1:1026]
    #[arg(long, value_name = "ADDR", conflicts_with = "streams_port")]
    pub streams: Option<String>,

    /// Stream port on vsock://-1:PORT
    #[arg(long, value_name = "PORT")]
    pub streams_port: Option<String>,

    /// How long a guest connection waits for its result [default: 30s]
    #[arg(long, value_name = "DUR")]
    pub pending_timeout: Option<String>,

    /// How long one Accept stream may take to answer before the request is
    /// offered to another [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub result_timeout: Option<String>,

    /// Guest connections waiting at once; beyond it they are closed and logged
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_pending: Option<String>,

    /// Longest stream ID accepted on the stream port [default: 256]
    #[arg(long, value_name = "N")]
    pub max_stream_id_len: Option<String>,

    /// Stream-port handshake read deadline [default: 5s]
    #[arg(long, value_name = "DUR")]
    pub handshake_timeout: Option<String>,

    /// A registered stream not claimed within this is closed [default: 10s]
    #[arg(long, value_name = "DUR")]
    pub claim_timeout: Option<String>,

    /// How long open relays may run after Shutdown or SIGTERM [default: 5s]
    #[arg(long, value_name = "DUR")]
    pub shutdown_grace: Option<String>,

    /// Mode of a forward socket whose Bind gives none [default: 0666: the
    /// socket's directory decides who reaches it]
    #[arg(long, value_name = "OCTAL")]
    pub socket_mode: Option<String>,

    /// Owner of a forward socket whose Bind gives none [default: the agent's]
    #[arg(long, value_name = "UID")]
    pub socket_uid: Option<String>,

    /// Group of a forward socket whose Bind gives none [default: the agent's]
    #[arg(long, value_name = "GID")]
    pub socket_gid: Option<String>,

    /// Only create sockets under DIR (repeatable); below DIR no symlink is
    /// followed [default: anywhere]
    #[arg(long, value_name = "DIR")]
    pub allow_dir: Vec<String>,

    /// Most sockets one Bind call may create [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_sockets_per_bind: Option<String>,

    /// Accept vsock connections from any CID, not only the host (CID 2)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub allow_any_cid: Option<String>,

    /// A target host-initiated connections may reach (repeatable): HOST:PORT
    /// with * for any host or port and A-B for a range (127.0.0.1:*, *:8080,
    /// db.internal:5432-5433; an IPv6 host in square brackets), or unix:GLOB
    /// (unix:/run/*) [default: any target]
    #[arg(long, value_name = "SPEC")]
    pub allow_target: Vec<String>,

    /// Bind this socket at start, before any host attaches (repeatable);
    /// MODE is octal, an empty field keeps the default
    #[arg(long, value_name = "ID:PATH[:MODE[:UID:GID]]")]
    pub forward: Vec<String>,

    /// Log filter [default: RUST_LOG, else info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl Cli {
    /// The value flags that were given, as (key, text), for [`crate::load`].
    pub fn values(&self) -> Vec<(Key, String)> {
        let mut v: Vec<(Key, String)> = Vec::new();
        let mut one = |key, value: &Option<String>| {
            if let Some(value) = value {
                v.push((key, value.clone()));
            }
        };
        one(
            Key::Config,
            &self.config.as_ref().map(|p| p.display().to_string()),
        );
        one(Key::Control, &self.control);
        one(Key::ControlDial, &self.control_dial);
        one(Key::ControlPort, &self.control_port);
        one(Key::Streams, &self.streams);
        one(Key::StreamsPort, &self.streams_port);
        one(Key::PendingTimeout, &self.pending_timeout);
        one(Key::ResultTimeout, &self.result_timeout);
        one(Key::MaxPending, &self.max_pending);
        one(Key::MaxStreamIdLen, &self.max_stream_id_len);
        one(Key::HandshakeTimeout, &self.handshake_timeout);
        one(Key::ClaimTimeout, &self.claim_timeout);
        one(Key::ShutdownGrace, &self.shutdown_grace);
        one(Key::SocketMode, &self.socket_mode);
        one(Key::SocketUid, &self.socket_uid);
        one(Key::SocketGid, &self.socket_gid);
        one(Key::MaxSocketsPerBind, &self.max_sockets_per_bind);
        one(Key::AllowAnyCid, &self.allow_any_cid);
        one(Key::Log, &self.log);
        v.extend(self.allow_dir.iter().map(|d| (Key::AllowDir, d.clone())));
        v.extend(
            self.allow_target
                .iter()
                .map(|t| (Key::AllowTarget, t.clone())),
        );
        v.extend(self.forward.iter().map(|f| (Key::Forward, f.clone())));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ControlMode;
    use crate::load::{resolve, FileLayer, Source};
    use crate::AgentConfig;
    use clap::CommandFactory as _;
    use sockfwd_proto::transport::Address;
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("sockfwd-agent").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let file = FileLayer {
            path: "/nonexistent.toml".into(),
            text: None,
            named_by: Source::Default,
        };
        resolve(file, &[], &cli.values(), None)
            .map(|l| l.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_key_has_a_flag() {
        let cmd = Cli::command();
        for key in Key::ALL {
            let flag = key.flag();
            let long = flag.trim_start_matches("--");
            assert!(
                cmd.get_arguments().any(|a| a.get_long() == Some(long)),
                "no {flag}"
            );
        }
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
                "\"tcp://x\" for --control on the command line",
            ),
            (&["--pending-timeout", "soon"][..], "--pending-timeout"),
            (&["--socket-mode", "0999"][..], "--socket-mode"),
            (&["--socket-mode", "70000"][..], "--socket-mode"),
            (&["--max-pending", "0"][..], "--max-pending"),
            (&["--allow-dir", "relative"][..], "--allow-dir"),
            (&["--streams", "hvsock:///v:1"][..], "--streams"),
            (&["--forward", "x"][..], "--forward"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
