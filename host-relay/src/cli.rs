//! Command-line flags (clap derive): the daemon's flags, turned into a
//! [`Config`] once, or one of the admin subcommands.

use crate::admin::client::AdminCommand;
use crate::config::{Config, ConfigError, Control, DEFAULT_STREAM_POOL};
use crate::framing::FramingPolicy;
use crate::limits::Limits;
use crate::port_filter::PortFilter;
use crate::remote_spec::{check_guest_dir, Forward, DEFAULT_GUEST_DIR};
use clap::{ArgGroup, Parser};
use sockfwd_proto::relay::RelayConfig;
use sockfwd_proto::transport::{Address, AddressError};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// Forwards sockets between a microVM guest and the host: a remote forward
/// (-R, --forward, --uds-mount) listens in the guest and dials on the host; a
/// local forward (-L, --auto-forward) listens on the host and dials in the guest.
///
/// ADDR: unix://PATH | vsock://CID:PORT | hvsock://PATH:PORT.
/// DUR: 500ms, 10s, 1m (humantime). A cap of 0 means no cap.
#[derive(Debug, Parser)]
#[command(
    name = "sockfwd-relay",
    version,
    after_help = "Exit status: 0 after SIGTERM/SIGINT (open connections get --shutdown-grace); \
2 invalid flags; 3 the agent was not reachable within --boot-timeout or refused the Bind; \
1 any other failure.

Runtime control (with --admin PATH on the running relay):
  sockfwd-relay status --admin PATH [--prometheus]
  sockfwd-relay add --admin PATH (--forward [ID=]GUEST_PATH:HOST_PATH | -R SPEC | -L SPEC)
  sockfwd-relay remove --admin PATH ID|SPEC"
)]
#[command(
    // The subcommands talk to a running relay: the daemon's flags and their
    // requirements do not apply to them.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
#[command(group(ArgGroup::new("control_mode").required(true).args(["control", "control_listen"])))]
pub struct Cli {
    /// Control a running relay through its admin socket instead of running one.
    #[command(subcommand)]
    pub command: Option<AdminCommand>,

    /// Dial the agent's ttrpc port (unix://, vsock://, hvsock://).
    #[arg(long, value_name = "ADDR", value_parser = address)]
    pub control: Option<Address>,

    /// Listen here; the agent dials in (nerdbox topology).
    #[arg(long, value_name = "ADDR", conflicts_with = "control", value_parser = address)]
    pub control_listen: Option<Address>,

    /// The guest's stream port (unix://, vsock://, hvsock://).
    #[arg(long, value_name = "ADDR", required = true, value_parser = address)]
    pub streams: Option<Address>,

    /// A remote forward (repeatable): listens at GUEST_PATH in the guest, dials
    /// HOST_PATH on the host. ID defaults to the first 16 hex digits of
    /// sha256(GUEST_PATH); GUEST_PATH is absolute and holds no ':'.
    #[arg(long = "forward", value_name = "[ID=]GUEST_PATH:HOST_PATH")]
    pub forwards: Vec<String>,

    /// A remote forward (repeatable), as ssh -R seen from the guest:
    /// GUEST_PORT:HOST:HOSTPORT or GUEST_BIND:GUEST_PORT:HOST:HOSTPORT,
    /// GUEST_PORT:/HOST/PATH or GUEST_BIND:GUEST_PORT:/HOST/PATH,
    /// /GUEST/PATH:HOST:HOSTPORT, /GUEST/PATH:/HOST/PATH; each may start with
    /// ID=. GUEST_BIND defaults to 127.0.0.1; GUEST_PORT 0: the agent picks one
    /// (printed: remote GUEST -> TARGET). HOST is resolved on the host
    /// (localhost: ::1, then 127.0.0.1). A guest TCP listener needs an agent
    /// that lists tcp-listen in Info.
    #[arg(short = 'R', long = "remote", value_name = "SPEC")]
    pub remotes: Vec<String>,

    /// A remote forward in nerdbox's form (repeatable): ID = hex
    /// sha256("CONTAINER_ID:DEST"), guest path GUEST_DIR/ID.sock.
    #[arg(long = "uds-mount", value_name = "CONTAINER_ID:HOST_PATH:DEST")]
    pub uds_mounts: Vec<String>,

    /// Guest directory of --uds-mount listeners.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_GUEST_DIR)]
    pub guest_dir: String,

    /// Keep retrying the first connection (and its Bind) while the VM boots.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub boot_timeout: Duration,

    /// Host socket dial deadline.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dial_timeout: Duration,

    /// Stream open + handshake deadline.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stream_timeout: Duration,

    /// Liveness call (an empty Bind) interval on the control channel, also its deadline.
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// Deadline of the Bind of the forwards and of the Shutdown call.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
    pub bind_timeout: Duration,

    /// How long open relays may run on after SIGTERM/SIGINT.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Stream framing: auto = EOF frames on hvsock:// streams when the agent offers them.
    #[arg(long, value_enum, default_value_t = FramingPolicy::Auto)]
    pub framing: FramingPolicy,

    /// Forwarded connections at once, all forwards together.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_concurrent)]
    pub max_concurrent: usize,

    /// Forwarded connections at once, per forward.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_concurrent_per_forward)]
    pub max_concurrent_per_forward: usize,

    /// New connections per second, all forwards together.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_rate)]
    pub max_rate: u32,

    /// New connections per second, per forward.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_rate_per_forward)]
    pub max_rate_per_forward: u32,

    /// Close a forwarded connection once no byte has moved either way for
    /// this long, so idle clients free their forward's slots; a --forward, -R
    /// or -L spec ending in ,idle-timeout=DUR overrides it for that forward
    /// (0: never) [default: never]
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Streams kept open ahead of demand in an agent that supports it (a
    /// guest connection then needs no host round trip before its first
    /// byte; in EOF framing a stream carries one connection after another,
    /// and counts while it does); 0: none.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_STREAM_POOL)]
    pub stream_pool: usize,

    /// A pre-opened stream unused this long is closed; it is replaced when
    /// connections come again.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stream_pool_idle: Duration,

    /// Call the agent's Shutdown on exit (closes its listeners).
    #[arg(long)]
    pub shutdown_agent: bool,

    /// Local forward (repeatable), as ssh -L: PORT:HOST:PORT or
    /// BIND:PORT:HOST:PORT, 0:HOST:PORT (a free port, printed), PORT:/GUEST/PATH
    /// or BIND:PORT:/GUEST/PATH,
    /// /HOST/PATH:/GUEST/PATH, ./HOST/PATH:HOST:PORT, HOST:PORT. BIND defaults
    /// to 127.0.0.1; HOST is resolved in the guest.
    #[arg(short = 'L', long = "local", value_name = "SPEC")]
    pub locals: Vec<String>,

    /// A local forward for each TCP port the guest listens on, on the same
    /// host port (or the next free one, printed): all ports, or a list like
    /// 3000,8000-8999.
    #[arg(long, value_name = "all|PORTS", num_args = 0..=1, default_missing_value = "all")]
    pub auto_forward: Option<PortFilter>,

    /// Address the --auto-forward listeners bind.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub auto_forward_bind: IpAddr,

    /// Admin socket (mode 0600) for the status, add and remove subcommands;
    /// only root and the relay's own user may use it.
    #[arg(long, value_name = "PATH")]
    pub admin: Option<PathBuf>,

    /// Members of GROUP (a name or a GID) may use the admin socket too; the
    /// socket is then mode 0660, owned by that group.
    #[arg(long, value_name = "GROUP", requires = "admin", value_parser = group_id)]
    pub admin_group: Option<u32>,
}

/// A group that does not exist, said without the name: clap's message quotes it.
#[derive(Debug, Error)]
#[error("no such group")]
pub struct GroupValueError;

/// The value parser of `--admin-group`: a numeric GID, or a group name.
fn group_id(s: &str) -> Result<u32, GroupValueError> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(GroupValueError),
    }
}

/// A malformed ADDR, said without the address: clap's message quotes it already.
#[derive(Debug, Error)]
#[error("{}", reason(.0))]
pub struct AddressValueError(pub AddressError);

fn reason(e: &AddressError) -> &str {
    match e {
        AddressError::Scheme(_) => "expected unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT",
        AddressError::Malformed { reason, .. } => reason,
    }
}

/// The value parser of the ADDR flags.
fn address(s: &str) -> Result<Address, AddressValueError> {
    s.parse().map_err(AddressValueError)
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Config, ConfigError> {
        let control = match (cli.control, cli.control_listen) {
            (_, Some(listen)) => Control::Listen(listen),
            (Some(dial), None) => Control::Dial(dial),
            // clap's group makes one of them required; default to the docs' form.
            (None, None) => Control::Dial(Address::Vsock { cid: 3, port: 1025 }),
        };
        let streams = cli.streams.ok_or(ConfigError::Missing("--streams"))?;
        check_guest_dir(&cli.guest_dir).map_err(|source| ConfigError::GuestDir {
            dir: cli.guest_dir.clone(),
            source,
        })?;
        let mut forwards =
            Vec::with_capacity(cli.forwards.len() + cli.remotes.len() + cli.uds_mounts.len());
        for spec in cli.forwards {
            match Forward::from_spec(&spec) {
                Ok(f) => forwards.push(f),
                Err(source) => return Err(ConfigError::Forward { spec, source }),
            }
        }
        for spec in cli.remotes {
            match Forward::from_remote_spec(&spec) {
                Ok(f) => forwards.push(f),
                Err(source) => return Err(ConfigError::Remote { spec, source }),
            }
        }
        for spec in cli.uds_mounts {
            match Forward::from_uds_mount(&spec, &cli.guest_dir) {
                Ok(f) => forwards.push(f),
                Err(source) => return Err(ConfigError::UdsMount { spec, source }),
            }
        }
        let locals = cli
            .locals
            .into_iter()
            .map(|spec| match spec.parse() {
                Ok(arg) => Ok(arg),
                Err(source) => Err(ConfigError::Local { spec, source }),
            })
            .collect::<Result<_, _>>()?;
        let config = Config {
            control,
            streams,
            forwards,
            boot_timeout: cli.boot_timeout,
            dial_timeout: cli.dial_timeout,
            stream_timeout: cli.stream_timeout,
            ping_interval: cli.ping_interval,
            bind_timeout: cli.bind_timeout,
            shutdown_grace: cli.shutdown_grace,
            framing: cli.framing,
            limits: Limits {
                max_concurrent: cli.max_concurrent,
                max_concurrent_per_forward: cli.max_concurrent_per_forward,
                max_rate: cli.max_rate,
                max_rate_per_forward: cli.max_rate_per_forward,
            },
            stream_pool: cli.stream_pool,
            stream_pool_idle: cli.stream_pool_idle,
            shutdown_agent: cli.shutdown_agent,
            relay: RelayConfig {
                idle_timeout: cli.idle_timeout,
                ..RelayConfig::default()
            },
            locals,
            auto_forward: cli.auto_forward,
            auto_forward_bind: cli.auto_forward_bind,
            admin: cli.admin,
            admin_group: cli.admin_group,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let cli = Cli::try_parse_from(std::iter::once("sockfwd-relay").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Config::try_from(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn documented_example_parses() {
        let c = parse(&[
            "--control",
            "unix:///tmp/A",
            "--streams",
            "unix:///tmp/B",
            "--forward",
            "/guest/x.sock:/host/y.sock",
        ])
        .unwrap();
        assert_eq!(c.control, Control::Dial("unix:///tmp/A".parse().unwrap()));
        assert_eq!(c.forwards.len(), 1);
        assert_eq!(c.forwards[0].id, "d0276c36d5d9aa1e");
        assert_eq!(c.boot_timeout, Duration::from_secs(60));
        assert_eq!(c.framing, FramingPolicy::Auto);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.stream_pool, 32);
        assert_eq!(c.stream_pool_idle, crate::config::DEFAULT_STREAM_POOL_IDLE);
    }

    #[test]
    fn every_flag_parses() {
        let c = parse(&[
            "--control-listen",
            "unix:///tmp/A",
            "--streams",
            "hvsock:///tmp/v.sock:1026",
            "--uds-mount",
            "ctr1:/host/app.sock:/var/run/app.sock",
            "--guest-dir",
            "/g",
            "--boot-timeout",
            "1m",
            "--dial-timeout",
            "500ms",
            "--stream-timeout",
            "2s",
            "--ping-interval",
            "1s",
            "--bind-timeout",
            "3s",
            "--shutdown-grace",
            "0s",
            "--framing",
            "eof",
            "--max-concurrent",
            "10",
            "--max-concurrent-per-forward",
            "5",
            "--max-rate",
            "0",
            "--max-rate-per-forward",
            "7",
            "--stream-pool",
            "0",
            "--stream-pool-idle",
            "5m",
            "--shutdown-agent",
        ])
        .unwrap();
        assert!(matches!(c.control, Control::Listen(_)));
        assert_eq!(
            c.forwards[0].listen.to_string(),
            "/g/76b5bc05b57910cdbf23567b806fde2ae3b3ec144f960a4185026e6c9a5f553b.sock"
        );
        assert_eq!(c.dial_timeout, Duration::from_millis(500));
        assert_eq!(c.shutdown_grace, Duration::ZERO);
        assert_eq!(c.framing, FramingPolicy::Eof);
        assert_eq!(c.limits.max_rate_per_forward, 7);
        assert_eq!(c.stream_pool, 0);
        assert_eq!(c.stream_pool_idle, Duration::from_secs(300));
        assert!(c.shutdown_agent);
    }

    #[test]
    fn errors_name_the_spec_and_the_problem() {
        let err = parse(&[
            "--control",
            "unix:///a",
            "--streams",
            "unix:///b",
            "--forward",
            "x.sock:/h",
        ])
        .unwrap_err();
        assert_eq!(err, r#"invalid --forward "x.sock:/h""#);
        let err = parse(&["--streams", "unix:///b"]).unwrap_err();
        assert!(err.contains("--control"), "{err}");
        let err = parse(&[
            "--control",
            "unix:///a",
            "--control-listen",
            "unix:///a",
            "--streams",
            "unix:///b",
        ])
        .unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
        let err = parse(&["--control", "tcp://x", "--streams", "unix:///b"]).unwrap_err();
        assert!(err.contains("expected unix://PATH"), "{err}");
        let err = parse(&[
            "--control",
            "unix:///a",
            "--streams",
            "unix:///b",
            "--forward",
            "/g/a:/h",
            "--forward",
            "/g/a:/h2",
        ])
        .unwrap_err();
        assert!(err.contains("is given twice"), "{err}");
        let err = parse(&[
            "--control",
            "unix:///a",
            "--streams",
            "unix:///b",
            "-L",
            "1:h:0",
        ])
        .unwrap_err();
        assert_eq!(err, r#"invalid -L "1:h:0""#);
        let err = parse(&[
            "--control",
            "unix:///a",
            "--streams",
            "unix:///b",
            "-R",
            "x:1:h:2",
        ])
        .unwrap_err();
        assert_eq!(err, r#"invalid -R "x:1:h:2""#);
    }

    #[test]
    fn remote_specs_join_the_forwards() {
        let c = parse(&[
            "--control",
            "unix:///a",
            "--streams",
            "unix:///b",
            "--forward",
            "/g/a.sock:/h/a.sock",
            "-R",
            "0:localhost:5432",
            "--remote",
            "db=[::1]:5433:/run/pg.sock",
        ])
        .unwrap();
        let specs: Vec<String> = c.forwards.iter().map(|f| f.spec_text()).collect();
        assert_eq!(
            specs,
            [
                "/g/a.sock:/h/a.sock",
                "127.0.0.1:0:localhost:5432",
                "[::1]:5433:/run/pg.sock"
            ]
        );
        assert_eq!(c.forwards[2].id, "db");
        let cli = Cli::try_parse_from([
            "sockfwd-relay",
            "add",
            "--admin",
            "/a.sock",
            "-R",
            "0:localhost:5432",
        ])
        .unwrap();
        assert_eq!(
            cli.command.unwrap().request().to_string(),
            "add remote 0:localhost:5432"
        );
    }

    #[test]
    fn admin_subcommands_need_no_daemon_flags() {
        let cli = Cli::try_parse_from(["sockfwd-relay", "status", "--admin", "/a.sock"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(AdminCommand::Status {
                prometheus: false,
                ..
            })
        ));
        let cli = Cli::try_parse_from([
            "sockfwd-relay",
            "add",
            "--admin",
            "/a.sock",
            "-L",
            "9000:127.0.0.1:9000",
        ])
        .unwrap();
        assert_eq!(
            cli.command.unwrap().request().to_string(),
            "add local 9000:127.0.0.1:9000"
        );
        let cli = Cli::try_parse_from(["sockfwd-relay", "remove", "--admin", "/a.sock", "local-1"])
            .unwrap();
        assert_eq!(
            cli.command.unwrap().socket(),
            std::path::Path::new("/a.sock")
        );
        // The daemon's flags do not mix with a subcommand.
        let err = Cli::try_parse_from([
            "sockfwd-relay",
            "--streams",
            "unix:///b",
            "status",
            "--admin",
            "/a.sock",
        ])
        .unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{err}"
        );
        // Without one, the daemon's flags are required as before.
        let err = Cli::try_parse_from(["sockfwd-relay", "--control", "unix:///a"]).unwrap_err();
        assert!(err.to_string().contains("--streams"), "{err}");
    }
}
