//! The relay's one validated configuration, whatever built it (flags or a caller
//! of the library).

use crate::framing::FramingPolicy;
use crate::limits::Limits;
use crate::local_spec::{LocalArg, LocalSpecError};
use crate::port_filter::PortFilter;
use crate::remote_spec::{Forward, SpecError};
pub use sockfwd_proto::duration::MAX_DURATION;
use sockfwd_proto::duration::{self, DurationError};
use sockfwd_proto::relay::RelayConfig;
use sockfwd_proto::transport::{Address, ListenAt};
use std::collections::HashMap;
use std::time::Duration;
use thiserror::Error;

/// Pre-opened streams per session by default (`--stream-pool`).
pub const DEFAULT_STREAM_POOL: usize = 32;
/// Idle time after which a pre-opened stream is closed, by default.
pub const DEFAULT_STREAM_POOL_IDLE: Duration = Duration::from_secs(60);
/// Most pre-opened streams a relay keeps per session.
pub const MAX_STREAM_POOL: usize = 1024;

/// How the control connection comes about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The relay dials the agent's ttrpc port (`--control`).
    Dial(Address),
    /// The relay listens and the agent dials in (`--control-listen`, nerdbox topology).
    Listen(Address),
}

impl Control {
    /// The address dialed or listened on.
    pub fn address(&self) -> &Address {
        match self {
            Control::Dial(a) | Control::Listen(a) => a,
        }
    }
}

/// The relay's settings; [`Config::validate`] checks them.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control connection.
    pub control: Control,
    /// The guest's stream port.
    pub streams: Address,
    /// The remote forwards bound in the guest (`--forward`, `--uds-mount`,
    /// `-R`); IDs and guest listeners are unique.
    pub forwards: Vec<Forward>,
    /// How long the first control connection (and its Bind) may take while the VM boots.
    pub boot_timeout: Duration,
    /// Deadline for dialing a host socket (and one control-dial attempt).
    pub dial_timeout: Duration,
    /// Deadline for opening a stream connection and its handshake.
    pub stream_timeout: Duration,
    /// Interval of the liveness call (an empty Bind), also its deadline.
    pub ping_interval: Duration,
    /// Deadline of the Bind of the forwards (and of the Shutdown call).
    pub bind_timeout: Duration,
    /// How long open relays may run on after shutdown begins.
    pub shutdown_grace: Duration,
    /// How each stream's framing is chosen.
    pub framing: FramingPolicy,
    /// Concurrency and rate caps.
    pub limits: Limits,
    /// Pre-opened streams kept parked in an agent that supports them; 0: none.
    pub stream_pool: usize,
    /// A pre-opened stream unused this long is closed (and not replaced until
    /// connections come again).
    pub stream_pool_idle: Duration,
    /// Call the agent's Shutdown on exit.
    pub shutdown_agent: bool,
    /// Relay tuning (splice pipes, buffers).
    pub relay: RelayConfig,
    /// `-L` specs: local forwards, host listeners reaching targets in the guest
    /// (see [`crate::local_spec`]).
    pub locals: Vec<LocalArg>,
    /// `--auto-forward`: which guest ports get a local forward; `None`: off.
    pub auto_forward: Option<PortFilter>,
    /// Address auto-forward listeners bind (loopback by default).
    pub auto_forward_bind: std::net::IpAddr,
    /// `--admin`: the admin socket (mode 0600).
    pub admin: Option<std::path::PathBuf>,
    /// `--admin-group`: a group whose members may use the admin socket too
    /// (root and the relay's own user always may).
    pub admin_group: Option<u32>,
}

/// A configuration that cannot work.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A `--forward` spec is malformed.
    #[error("invalid --forward {spec:?}")]
    Forward {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// A `--uds-mount` spec is malformed.
    #[error("invalid --uds-mount {spec:?}")]
    UdsMount {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// `--guest-dir` is unusable.
    #[error("invalid --guest-dir {dir:?}")]
    GuestDir {
        /// The directory as given.
        dir: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// An `-R` spec is malformed.
    #[error("invalid -R {spec:?}")]
    Remote {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// A forward built by a library caller is malformed.
    #[error("invalid forward {id:?}")]
    BadForward {
        /// Its ID.
        id: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// Two forwards share an ID.
    #[error("forward ID {id:?} is given twice (guest listeners {first} and {second})")]
    DuplicateId {
        /// The shared ID.
        id: String,
        /// Where the first forward listens.
        first: ListenAt,
        /// Where the second forward listens.
        second: ListenAt,
    },
    /// Two forwards listen at the same place in the guest (a socket file, or a
    /// TCP address other than port 0).
    #[error("guest listener {at} is given twice (forward IDs {first:?} and {second:?})")]
    DuplicateListener {
        /// The shared place.
        at: ListenAt,
        /// The first forward's ID.
        first: String,
        /// The second forward's ID.
        second: String,
    },
    /// `--control-listen` on hybrid vsock, which only the host dials.
    #[error("--control-listen {0}: hvsock:// can only be dialed; listen on unix:// or vsock://")]
    ListenOnHybrid(Address),
    /// An `-L` spec is malformed.
    #[error("invalid -L {spec:?}")]
    Local {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        #[source]
        source: LocalSpecError,
    },
    /// A required flag is missing (clap checks it first; this is the library's check).
    #[error("{0} is required")]
    Missing(&'static str),
    /// `--stream-pool` above [`MAX_STREAM_POOL`].
    #[error("--stream-pool {0}: at most {MAX_STREAM_POOL} streams")]
    StreamPool(usize),
    /// A duration is zero where it must be positive, or beyond [`MAX_DURATION`].
    #[error(transparent)]
    Duration(#[from] DurationError),
}

impl Config {
    /// A configuration with every other setting at its default.
    pub fn new(control: Control, streams: Address, forwards: Vec<Forward>) -> Config {
        Config {
            control,
            streams,
            forwards,
            boot_timeout: Duration::from_secs(60),
            dial_timeout: Duration::from_secs(5),
            stream_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            bind_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            framing: FramingPolicy::Auto,
            limits: Limits::default(),
            stream_pool: DEFAULT_STREAM_POOL,
            stream_pool_idle: DEFAULT_STREAM_POOL_IDLE,
            shutdown_agent: false,
            relay: RelayConfig::default(),
            locals: Vec::new(),
            auto_forward: None,
            auto_forward_bind: std::net::Ipv4Addr::LOCALHOST.into(),
            admin: None,
            admin_group: None,
        }
    }

    /// Checks everything a run relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Control::Listen(addr @ Address::Hybrid { .. }) = &self.control {
            return Err(ConfigError::ListenOnHybrid(addr.clone()));
        }
        let durations = [
            ("--boot-timeout", self.boot_timeout, false),
            ("--dial-timeout", self.dial_timeout, true),
            ("--stream-timeout", self.stream_timeout, true),
            ("--ping-interval", self.ping_interval, true),
            ("--bind-timeout", self.bind_timeout, true),
            ("--shutdown-grace", self.shutdown_grace, false),
            ("--stream-pool-idle", self.stream_pool_idle, true),
        ];
        for (name, value, positive) in durations {
            duration::check(name, value, positive)?;
        }
        if let Some(idle) = self.relay.idle_timeout {
            duration::check("--idle-timeout", idle, true)?;
        }
        if self.stream_pool > MAX_STREAM_POOL {
            return Err(ConfigError::StreamPool(self.stream_pool));
        }
        let mut ids: HashMap<&str, &Forward> = HashMap::new();
        let mut places: HashMap<&ListenAt, &Forward> = HashMap::new();
        for f in &self.forwards {
            f.check().map_err(|source| ConfigError::BadForward {
                id: f.id.clone(),
                source,
            })?;
            if let Some(prev) = ids.insert(&f.id, f) {
                return Err(ConfigError::DuplicateId {
                    id: f.id.clone(),
                    first: prev.listen.clone(),
                    second: f.listen.clone(),
                });
            }
            if let Some(prev) = f.listen.place().and_then(|at| places.insert(at, f)) {
                return Err(ConfigError::DuplicateListener {
                    at: f.listen.clone(),
                    first: prev.id.clone(),
                    second: f.id.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn base(forwards: Vec<Forward>) -> Config {
        Config::new(
            Control::Dial(Address::Unix(PathBuf::from("/c"))),
            Address::Unix(PathBuf::from("/s")),
            forwards,
        )
    }

    #[test]
    fn duplicates_are_refused() {
        let a = Forward::from_spec("x=/g/a.sock:/h/a").unwrap();
        let b = Forward::from_spec("x=/g/b.sock:/h/b").unwrap();
        let err = base(vec![a.clone(), b]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"forward ID "x" is given twice (guest listeners /g/a.sock and /g/b.sock)"#
        );
        let c = Forward::from_spec("y=/g/a.sock:/h/c").unwrap();
        let err = base(vec![a.clone(), c]).validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::DuplicateListener { .. }),
            "{err}"
        );
        base(vec![a]).validate().unwrap();
        // One TCP address twice is refused; port 0 twice is two listeners.
        let t = Forward::from_remote_spec("t=5432:localhost:5432").unwrap();
        let u = Forward::from_remote_spec("u=127.0.0.1:5432:/h").unwrap();
        let err = base(vec![t, u]).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"guest listener 127.0.0.1:5432 is given twice (forward IDs "t" and "u")"#
        );
        let v = Forward::from_remote_spec("0:localhost:1").unwrap();
        let w = Forward::from_remote_spec("0:localhost:2").unwrap();
        base(vec![v, w]).validate().unwrap();
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = base(vec![]);
        c.ping_interval = Duration::ZERO;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "--ping-interval must be greater than zero"
        );
        let mut c = base(vec![]);
        c.boot_timeout = MAX_DURATION * 2;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Duration(DurationError::TooLong { .. }))
        ));
        let mut c = base(vec![]);
        c.control = Control::Listen("hvsock:///v:1025".parse().unwrap());
        assert!(matches!(c.validate(), Err(ConfigError::ListenOnHybrid(_))));
        let mut f = Forward::from_spec("/g/a.sock:/h").unwrap();
        f.listen = ListenAt::Unix("rel".into());
        assert!(matches!(
            base(vec![f]).validate(),
            Err(ConfigError::BadForward { .. })
        ));
    }
}
