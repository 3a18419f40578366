//! The layers, later wins: built-in defaults, the TOML file, the kernel
//! command line, flags. [`load`] reads them; [`Effective::try_from`] reads each
//! on its own, so a bad value is an error even where a later layer overrides
//! it, and lays them over the defaults, keeping the source of each setting.
//!
//! An unknown `sockfwd.` key is only a warning (the kernel command line is
//! shared with everything else in the guest), an unknown key in the file an
//! error (the file is ours alone). Two keys of one setting in one layer are an
//! error; one key given twice in one layer adds up for a list, and the last
//! one wins otherwise; a later layer replaces a whole list.

use crate::config::cmdline::{self, Param};
use crate::config::keys::{Flags, Key};
pub use crate::config::source::{BadValue, Source};
use crate::config::values::ValueError;
use crate::config::{AgentConfig, KEYS};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;
use toml::Value as Toml;

/// The configuration file read when none is named.
pub const DEFAULT_FILE: &str = "/etc/sockfwd/agent.toml";
/// Where the kernel command line is read from when `--cmdline-file` is absent.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// The kernel command line key that names the file (not itself a file key).
pub const CONFIG_KEY: &str = "config";

/// Why the configuration could not be loaded; the agent exits 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error(transparent)]
    Value(#[from] BadValue),
    /// A key the file may not hold, and the file.
    #[error("unknown key {0:?} in {path}", path = .1.display())]
    UnknownKey(String, PathBuf),
    /// Two keys of one layer (as spelled there) set one setting; the layer.
    #[error("{0} and {1} both set {2} {3}; give one of them")]
    Conflict(String, String, &'static str, String),
    /// The file could not be read (a missing default file is fine).
    #[error("reading the configuration file {}", .0.display())]
    ReadFile(PathBuf, #[source] io::Error),
    /// The file is not TOML.
    #[error("the configuration file {} is not valid TOML", .0.display())]
    Syntax(PathBuf, #[source] toml::de::Error),
    /// `--cmdline-file` could not be read.
    #[error("reading the kernel command line from {}", .0.display())]
    ReadCmdline(PathBuf, #[source] io::Error),
}

/// Something to log once logging is up.
#[derive(Debug, Error)]
pub enum Warning {
    /// A `sockfwd.` key this agent does not know.
    #[error("unknown key sockfwd.{0} on the kernel command line; ignored")]
    UnknownKey(String),
    /// `/proc/cmdline` could not be read (an initramfs init may not have
    /// mounted `/proc`): the agent runs on the other layers.
    #[error("kernel command line not read from {path}: {1}; no sockfwd.* settings apply",
        path = .0.display())]
    CmdlineUnread(PathBuf, io::Error),
}

/// The configuration file as [`load`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayer {
    /// Its path.
    pub path: PathBuf,
    /// Its text; `None` when the default file does not exist.
    pub text: Option<String>,
    /// Who named it: [`Source::Default`], [`Source::Cmdline`] or [`Source::Flag`].
    pub named_by: Source,
}

/// Every layer as read, for [`Effective::try_from`].
#[derive(Debug)]
pub struct Layers {
    /// The file.
    pub file: FileLayer,
    /// The kernel command line's `sockfwd.` words and where they were read
    /// (`None`: not readable).
    pub cmdline: Option<(PathBuf, Vec<Param>)>,
    /// The flags.
    pub flags: Flags,
    /// `RUST_LOG`, the default for `log`.
    pub rust_log: Option<String>,
    /// What reading them warned about.
    pub warnings: Vec<Warning>,
}

/// The effective configuration and where each setting came from.
#[derive(Debug)]
pub struct Effective {
    /// The configuration for [`crate::run`] (and the binary's log filter).
    pub config: AgentConfig,
    /// The source of each setting some layer set, by field.
    pub sources: BTreeMap<&'static str, Source>,
    /// Things to log once logging is up.
    pub warnings: Vec<Warning>,
    /// The file layer.
    pub file: FileLayer,
    /// Where the kernel command line was read from (`None`: not readable).
    pub cmdline: Option<PathBuf>,
}

/// The key the file or the kernel command line names `name`.
fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Effective {
    /// Where the setting of `key` (a key or a field) came from.
    pub fn source(&self, key: &str) -> &Source {
        let field = self::key(key).map_or(key, |k| k.field);
        self.sources.get(field).unwrap_or(&Source::Default)
    }

    /// Reads one layer's values in their order (the kernel command line's as
    /// TOML strings; a bare word is `""`) and lays them over the configuration.
    fn lay(
        &mut self,
        source: Source,
        entries: Vec<(&'static Key, Toml)>,
    ) -> Result<(), ConfigError> {
        let mut seen: Vec<&Key> = Vec::new();
        for (key, value) in entries {
            let other = seen
                .iter()
                .find(|k| k.field == key.field && k.name != key.name);
            if let Some(other) = other {
                let (first, second) = (source.spell(other.name), source.spell(key.name));
                let place = source.place();
                return Err(ConfigError::Conflict(first, second, key.field, place));
            }
            let add = seen.iter().any(|k| k.name == key.name);
            (key.read)(&mut self.config, value, add).map_err(|(value, e)| {
                let value = match (&source, value) {
                    (Source::Cmdline, Toml::String(s)) => format!("{s:?}"),
                    (_, v) => v.to_string(),
                };
                source.bad(key.name, value, &e)
            })?;
            seen.push(key);
            self.sources.insert(key.field, source.clone());
        }
        Ok(())
    }
}

impl TryFrom<Layers> for Effective {
    type Error = ConfigError;

    /// Reads each layer, then lays them over the defaults; see the module docs.
    fn try_from(layers: Layers) -> Result<Effective, ConfigError> {
        let mut e = Effective {
            config: AgentConfig::default(),
            sources: BTreeMap::new(),
            warnings: layers.warnings,
            file: layers.file,
            cmdline: None,
        };
        if let Some(text) = &e.file.text {
            let path = e.file.path.clone();
            let table = text.parse::<toml::Table>();
            let table = table.map_err(|err| ConfigError::Syntax(path.clone(), err))?;
            let mut entries = Vec::new();
            for (name, value) in table {
                let key = key(&name).ok_or_else(|| ConfigError::UnknownKey(name, path.clone()))?;
                entries.push((key, value));
            }
            e.lay(Source::File(path), entries)?;
        }
        if let Some((path, params)) = layers.cmdline {
            let mut entries = Vec::new();
            // `config` named the file, which `load` has read.
            for p in params.into_iter().filter(|p| p.key != CONFIG_KEY) {
                match key(&p.key) {
                    Some(key) => entries.push((key, Toml::String(p.value.unwrap_or_default()))),
                    None => e.warnings.push(Warning::UnknownKey(p.key)),
                }
            }
            e.lay(Source::Cmdline, entries)?;
            e.cmdline = Some(path);
        }
        for key in KEYS
            .iter()
            .filter(|key| (key.flag)(&mut e.config, &layers.flags.0))
        {
            e.sources.insert(key.field, Source::Flag);
        }
        let env = layers.rust_log.filter(|env| !env.trim().is_empty());
        if let Some(env) = env.filter(|_| !e.sources.contains_key("log")) {
            e.config.log = env;
            e.sources.insert("log", Source::Environment);
        }
        Ok(e)
    }
}

/// The effective configuration: the kernel command line (`cmdline_file`, else
/// [`PROC_CMDLINE`]) and the file (`config_file`, else the kernel command
/// line's last `sockfwd.config=`, else [`DEFAULT_FILE`] if it exists) read,
/// then merged with `flags`; `rust_log` is `RUST_LOG`.
pub fn load(
    config_file: Option<&Path>,
    cmdline_file: Option<&Path>,
    flags: Flags,
    rust_log: Option<String>,
) -> Result<Effective, ConfigError> {
    let mut warnings = Vec::new();
    let cmdline_path = cmdline_file
        .unwrap_or(Path::new(PROC_CMDLINE))
        .to_path_buf();
    let cmdline = match std::fs::read_to_string(&cmdline_path) {
        Ok(text) => Some((cmdline_path, cmdline::parse(&text))),
        Err(err) if cmdline_file.is_some() => {
            return Err(ConfigError::ReadCmdline(cmdline_path, err))
        }
        Err(err) => {
            warnings.push(Warning::CmdlineUnread(cmdline_path, err));
            None
        }
    };
    let params = cmdline.as_ref().map_or(&[][..], |(_, p)| p.as_slice());
    let (path, named_by) = file_to_read(config_file, params)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound && named_by == Source::Default => None,
        Err(err) => return Err(ConfigError::ReadFile(path, err)),
    };
    let file = FileLayer {
        path,
        text,
        named_by,
    };
    Effective::try_from(Layers {
        file,
        cmdline,
        flags,
        rust_log,
        warnings,
    })
}

/// The file to read: the flag's, else the kernel command line's last
/// `sockfwd.config=`, else the default.
fn file_to_read(flag: Option<&Path>, params: &[Param]) -> Result<(PathBuf, Source), ConfigError> {
    let named = params.iter().filter(|p| p.key == CONFIG_KEY);
    let mut named = named.map(|p| p.value.as_deref().unwrap_or(""));
    if named.clone().any(str::is_empty) {
        let expected = ValueError::Expected("a file path");
        return Err(Source::Cmdline
            .bad(CONFIG_KEY, "\"\"".into(), &expected)
            .into());
    }
    Ok(match (flag, named.next_back()) {
        (Some(path), _) => (path.into(), Source::Flag),
        (None, Some(path)) => (path.into(), Source::Cmdline),
        (None, None) => (DEFAULT_FILE.into(), Source::Default),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::config::ControlMode;
    use clap::Parser as _;
    use sockfwd_proto::transport::Address;
    use std::time::Duration;

    const FILE: &str = "/etc/sockfwd/test.toml";

    fn flags(args: &[&str]) -> Flags {
        Cli::try_parse_from(std::iter::once("sockfwd-agent").chain(args.iter().copied()))
            .unwrap()
            .flags
    }

    fn layers(file: Option<&str>, cmd: &str, flags: Flags, rust_log: Option<&str>) -> Layers {
        Layers {
            file: FileLayer {
                path: FILE.into(),
                text: file.map(str::to_owned),
                named_by: Source::Default,
            },
            cmdline: Some(("/proc/cmdline".into(), cmdline::parse(cmd))),
            flags,
            rust_log: rust_log.map(str::to_owned),
            warnings: Vec::new(),
        }
    }

    fn resolve(file: Option<&str>, cmd: &str, args: &[&str]) -> Result<Effective, String> {
        Effective::try_from(layers(file, cmd, flags(args), None))
            .map_err(|e| sockfwd_proto::report::chain(&e))
    }

    #[test]
    fn each_layer_wins_over_the_ones_before_it() {
        let secs = Duration::from_secs;
        let file = Some("pending_timeout = \"1s\"");
        let cmd = "sockfwd.pending_timeout=2s";
        let flag: &[&str] = &["--pending-timeout", "3s"];
        let cases = [
            (file, cmd, flag, secs(3), Source::Flag),
            (file, cmd, &[][..], secs(2), Source::Cmdline),
            (file, "", &[][..], secs(1), Source::File(FILE.into())),
            (None, "", &[][..], secs(30), Source::Default),
        ];
        for (file, cmd, flag, want, source) in cases {
            let e = resolve(file, cmd, flag).unwrap();
            assert_eq!(e.config.pending_timeout, want);
            assert_eq!(e.source("pending_timeout"), &source);
        }
    }

    #[test]
    fn a_bad_value_names_key_layer_and_value() {
        let file_err = resolve(Some("pending_timeout = \"abc\""), "", &[]).unwrap_err();
        assert_eq!(
            file_err,
            format!(
                "invalid value \"abc\" for pending_timeout in {FILE}: \
                 expected a duration like 500ms or 10s"
            )
        );
        let cmd_err = resolve(None, "quiet sockfwd.pending_timeout=abc", &[]).unwrap_err();
        assert_eq!(
            cmd_err,
            "invalid value \"abc\" for sockfwd.pending_timeout on the kernel command line: \
             expected a duration like 500ms or 10s"
        );
        // TOML values show as TOML writes them; a list's bad element alone.
        let err = resolve(Some("max_pending = 0"), "", &[]).unwrap_err();
        assert!(
            err.starts_with("invalid value 0 for max_pending in"),
            "{err}"
        );
        let err = resolve(Some("allow_dir = [\"/a\", \"b\"]"), "", &[]).unwrap_err();
        assert!(
            err.starts_with("invalid value \"b\" for allow_dir in"),
            "{err}"
        );
        let err = resolve(Some("[[forward]]\nid = \"a\"\npath = \"r\""), "", &[]).unwrap_err();
        assert!(
            err.contains("{ id = \"a\", path = \"r\" } for forward in"),
            "{err}"
        );
        // Even where a later layer overrides it, and for every occurrence.
        let err = resolve(None, "sockfwd.max_pending=x sockfwd.max_pending=2", &[]).unwrap_err();
        assert!(err.contains("\"x\" for sockfwd.max_pending"), "{err}");
        let err = resolve(Some("max_pending = 0"), "sockfwd.max_pending=5", &[]).unwrap_err();
        assert!(err.contains("for max_pending in"), "{err}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let cases: &[(&str, &str, &str)] = &[
            ("pending_timeout", "0s", "greater than zero"),
            ("shutdown_grace", "soon", "expected a duration"),
            ("shutdown_grace", "25h", "at most 24h"),
            (
                "pending_timeout",
                "99999999999999years",
                "expected a duration",
            ),
            ("max_pending", "-3", "from 1 to"),
            ("max_stream_id_len", "257", "from 1 to 256"),
            ("control_port", "x", "port number"),
            (
                "control",
                "tcp://x",
                "expected unix://PATH or vsock://CID:PORT",
            ),
            ("control", "vsock://1", ": expected CID:PORT"),
            ("streams", "hvsock:///v:1", "dialing from the host"),
            ("control_dial", "tcp://x", "expected unix://PATH"),
            ("socket_mode", "0999", "octal mode"),
            ("socket_mode", "70000", "at most 07777"),
            ("socket_uid", "root", "numeric user ID"),
            ("socket_gid", "-1", "numeric group ID"),
            ("allow_dir", "run", "absolute path"),
            ("allow_dir", "/run/../etc", "without '..'"),
            ("allow_any_cid", "maybe", "true or false"),
            ("allow_target", "*:x", "expected HOST:PORT"),
            ("allow_target", "unix:run", "absolute path glob"),
            ("forward", "a", "expected ID:PATH"),
            ("forward", ":/r/a.sock", "empty forward ID"),
            ("forward", "a b:/r/a.sock", "forward ID has ' '"),
            ("forward", "a:r/a.sock", "absolute"),
            ("forward", "a:/r/a.sock:999", "octal mode"),
            ("forward", "a:/r/a.sock:0600:x:1", "numeric user ID"),
            ("log", "", "tracing filter"),
            ("log", "[[[", "tracing filter"),
        ];
        for (key, value, needle) in cases {
            let err = resolve(None, &format!("sockfwd.{key}=\"{value}\""), &[]).unwrap_err();
            assert!(err.contains(needle), "{key}={value:?}: {err}");
            assert!(!err.contains("expected CID:PORT (expected"), "{err}");
        }
        for (text, needle) in [
            ("pending_timeout = 10", "expected a duration"),
            ("max_pending = [1]", "not a list or a table"),
            ("socket_mode = -1", "octal mode"),
            ("socket_mode = 0o10000", "octal mode"),
            ("[[forward]]\nid = \"a\"", "missing field `path`"),
            (
                "[[forward]]\nid = \"a\"\npath = \"/a\"\ntcp = \"127.0.0.1:1\"",
                "`path` or `tcp`, not both",
            ),
            (
                "[[forward]]\nid = \"a\"\ntcp = \"127.0.0.1:1\"\nmode = 0o600",
                "mode, uid and gid apply to a path",
            ),
            (
                "[[forward]]\nid = \"a\"\npath = \"/a\"\nuser = 1",
                "unknown field `user`",
            ),
            ("[[forward]]\nid = 1\npath = \"/a\"", "expected a string"),
            (
                "[[forward]]\nid = \"a\"\npath = \"/a\"\nuid = \"x\"",
                "numeric user ID",
            ),
        ] {
            let err = resolve(Some(text), "", &[]).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn values_land_in_the_config_from_text_and_from_toml() {
        let cmd = "sockfwd.control_port=7 sockfwd.streams_port=9 sockfwd.pending_timeout=1m \
                   sockfwd.shutdown_grace=0s sockfwd.socket_mode=0o600 sockfwd.socket_uid=1000 \
                   sockfwd.allow_any_cid sockfwd.allow_target=127.0.0.1:* \
                   sockfwd.log=warn,sockfwd_agent=debug";
        let e = resolve(None, cmd, &[]).unwrap();
        let c = &e.config;
        assert_eq!(c.control.to_string(), "listen vsock://-1:7");
        assert_eq!(c.streams.to_string(), "vsock://-1:9");
        assert_eq!(c.pending_timeout, Duration::from_secs(60));
        assert_eq!(c.shutdown_grace, Duration::ZERO);
        assert_eq!((c.socket_mode, c.socket_uid), (0o600, Some(1000)));
        assert!(c.allow_any_cid);
        assert_eq!(c.allow_targets.0.len(), 1);
        assert_eq!(e.config.log, "warn,sockfwd_agent=debug");
        let dial = |cmd| resolve(None, cmd, &[]).unwrap().config.control;
        let host = ControlMode::Dial(ControlMode::default_dial());
        assert_eq!(dial("sockfwd.control_dial"), host);
        assert_eq!(
            dial("sockfwd.control_dial=unix:///h"),
            ControlMode::Dial(Address::Unix("/h".into()))
        );
        assert!(
            !resolve(None, "sockfwd.allow_any_cid=off", &[])
                .unwrap()
                .config
                .allow_any_cid
        );

        // From the file, TOML's own values read as their text, except a mode.
        let file = |text| resolve(Some(text), "", &[]).unwrap().config;
        assert_eq!(file("max_pending = 7").max_pending, 7);
        assert_eq!(file("max_pending = \"7\"").max_pending, 7);
        assert!(file("allow_any_cid = true").allow_any_cid);
        assert_eq!(file("control_dial = true").control, host);
        assert_eq!(file("socket_mode = 0o660").socket_mode, 0o660);
        assert_eq!(file("socket_mode = \"0660\"").socket_mode, 0o660);
        assert_eq!(file("socket_mode = 432").socket_mode, 0o660);
        let f = file(
            r#"forward = { id = "web", path = "/run/a:b.sock", mode = 0o600, uid = 0, gid = 5 }"#,
        );
        assert_eq!(f.forwards[0].to_string(), "web:/run/a:b.sock:0600:0:5");
        let f = file(r#"forward = "web:/run/w.sock""#);
        assert_eq!(
            f.forwards[0].listen,
            sockfwd_proto::transport::ListenAt::Unix(PathBuf::from("/run/w.sock"))
        );
        let f = file(r#"forward = { id = "db", tcp = "[::1]:5432" }"#);
        assert_eq!(f.forwards[0].to_string(), "db:tcp:[::1]:5432");
    }

    #[test]
    fn unknown_keys_warn_on_the_kernel_command_line_and_fail_in_the_file() {
        let e = resolve(None, "sockfwd.pending_timout=1s sockfwd.max_pending=3", &[]).unwrap();
        let warnings: Vec<String> = e.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            ["unknown key sockfwd.pending_timout on the kernel command line; ignored"]
        );
        assert_eq!(e.config.max_pending, 3);
        let err = resolve(Some("pending_timout = \"1s\""), "", &[]).unwrap_err();
        assert_eq!(err, format!("unknown key \"pending_timout\" in {FILE}"));
        let err = resolve(Some("config = \"/x\""), "", &[]).unwrap_err();
        assert!(err.starts_with("unknown key \"config\""), "{err}");
        let err = resolve(Some("pending_timeout = "), "", &[]).unwrap_err();
        assert!(err.contains("is not valid TOML"), "{err}");
    }

    #[test]
    fn shorthands_conflict_within_a_layer_and_override_across_layers() {
        let e = resolve(
            Some("control_dial = \"unix:///h.sock\""),
            "sockfwd.control_port=2000 sockfwd.streams_port=2001",
            &[],
        )
        .unwrap();
        assert_eq!(e.config.control.to_string(), "listen vsock://-1:2000");
        assert_eq!(e.config.streams.to_string(), "vsock://-1:2001");
        assert_eq!(e.source("control"), &Source::Cmdline);
        let e = resolve(None, "sockfwd.control_port=2000", &["--control-dial"]).unwrap();
        assert_eq!(
            e.config.control,
            ControlMode::Dial(ControlMode::default_dial())
        );
        let err = resolve(
            None,
            "sockfwd.control=unix:///c sockfwd.control_port=1",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err,
            "sockfwd.control and sockfwd.control_port both set control \
             on the kernel command line; give one of them"
        );
        let err = resolve(Some("streams = \"unix:///s\"\nstreams_port = 1"), "", &[]).unwrap_err();
        assert!(
            err.starts_with("streams and streams_port both set streams in"),
            "{err}"
        );
        // A repeated plain key: the last one wins.
        let e = resolve(None, "sockfwd.max_pending=1 sockfwd.max_pending=2", &[]).unwrap();
        assert_eq!(e.config.max_pending, 2);
    }

    #[test]
    fn lists_add_up_within_a_layer_and_replace_across_layers() {
        let file = "allow_dir = [\"/a\", \"/b\"]\n\
                    [[forward]]\nid = \"f\"\npath = \"/a/f.sock\"\nmode = 0o600\n\
                    [[forward]]\nid = \"g\"\npath = \"/a/g.sock\"\n";
        let e = resolve(Some(file), "", &[]).unwrap();
        assert_eq!(
            e.config.allow_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(e.config.forwards.len(), 2);
        assert_eq!(e.config.forwards[0].mode, Some(0o600));

        let cmd = "sockfwd.allow_dir=/c sockfwd.forward=h:/c/h.sock sockfwd.allow_dir=/d";
        let e = resolve(Some(file), cmd, &[]).unwrap();
        assert_eq!(
            e.config.allow_dirs,
            [PathBuf::from("/c"), PathBuf::from("/d")]
        );
        assert_eq!(e.config.forwards.len(), 1);
        assert_eq!(e.source("forward"), &Source::Cmdline);

        let e = resolve(Some(file), cmd, &["--allow-dir", "/e"]).unwrap();
        assert_eq!(e.config.allow_dirs, [PathBuf::from("/e")]);
        assert_eq!(e.config.forwards.len(), 1);

        // An empty list in the file empties an earlier one, here the default.
        let e = resolve(Some("allow_dir = []"), "", &[]).unwrap();
        assert!(e.config.allow_dirs.is_empty());
        assert_eq!(e.source("allow_dir"), &Source::File(FILE.into()));
    }

    #[test]
    fn rust_log_replaces_only_the_default_filter() {
        let log = |cmd: &str, env: Option<&str>| {
            let e = Effective::try_from(layers(None, cmd, Flags::default(), env)).unwrap();
            let source = e.source("log").clone();
            (e.config.log, source)
        };
        assert_eq!(
            log("", Some("debug")),
            ("debug".into(), Source::Environment)
        );
        assert_eq!(
            log("sockfwd.log=warn", Some("debug")),
            ("warn".into(), Source::Cmdline)
        );
        assert_eq!(log("", None), ("info".into(), Source::Default));
        assert_eq!(log("", Some(" ")), ("info".into(), Source::Default));
    }

    #[test]
    fn every_key_is_accepted_by_every_layer() {
        for key in KEYS {
            let (name, v) = (key.name, key.sample);
            let flag = format!("--{}={v}", name.replace('_', "-"));
            for (file, cmd, args, source) in [
                (
                    Some(format!("{name} = \"{v}\"")),
                    String::new(),
                    vec![],
                    Source::File(FILE.into()),
                ),
                (None, format!("sockfwd.{name}={v}"), vec![], Source::Cmdline),
                (None, String::new(), vec![flag.as_str()], Source::Flag),
            ] {
                let e = resolve(file.as_deref(), &cmd, &args).unwrap();
                assert!(e.warnings.is_empty(), "{name}");
                assert_eq!(e.source(key.field), &source, "{name}");
                assert_ne!(e.config, AgentConfig::default(), "{name} {source:?}");
            }
        }
    }

    #[test]
    fn the_file_comes_from_the_flag_then_the_kernel_command_line() {
        let params = cmdline::parse("sockfwd.config=/k.toml");
        assert_eq!(
            file_to_read(None, &params).unwrap(),
            ("/k.toml".into(), Source::Cmdline)
        );
        assert_eq!(
            file_to_read(None, &[]).unwrap(),
            (DEFAULT_FILE.into(), Source::Default)
        );
        assert_eq!(
            file_to_read(Some(Path::new("/f.toml")), &params).unwrap(),
            ("/f.toml".into(), Source::Flag)
        );
        let bare = cmdline::parse("sockfwd.config");
        let err = file_to_read(None, &bare).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid value \"\" for sockfwd.config on the kernel command line: expected a file path"
        );
    }
}
