//! The four configuration layers, later wins: built-in defaults, the TOML
//! file, the kernel command line, flags.
//!
//! [`load`] does the reading (`/proc/cmdline`, the file); [`resolve`] is the
//! pure part that merges the layers, remembering where each setting came from
//! for `--print-config`, and validates the result once into an
//! [`AgentConfig`]. A bad value names its key, its layer and itself; an
//! unknown `sockfwd.` key is only a warning (the kernel command line is
//! shared with everything else in the guest), an unknown key in the file is an
//! error (the file is ours alone).

use crate::cli::Cli;
use crate::cmdline::{self, Param};
use crate::config::{AgentConfig, ConfigError};
use crate::keys::{Draft, Input, Key};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// The configuration file read when none is named.
pub const DEFAULT_FILE: &str = "/etc/sockfwd/agent.toml";
/// Where the kernel command line is read from when `--cmdline-file` is absent.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// The tracing filter when neither a layer nor `RUST_LOG` gives one.
pub const DEFAULT_LOG: &str = "info";

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// `RUST_LOG`, which replaces the default of `log` only.
    Environment,
    /// The TOML file at this path.
    File(PathBuf),
    /// The kernel command line.
    Cmdline,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Environment => f.write_str("environment (RUST_LOG)"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Cmdline => f.write_str("kernel command line"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

impl Source {
    /// How a key is spelled in this layer.
    fn spell(&self, key: Key) -> String {
        match self {
            Source::Cmdline => format!("{}{}", cmdline::PREFIX, key.name()),
            Source::Flag => key.flag(),
            _ => key.name().to_owned(),
        }
    }

    /// "in FILE", "on the kernel command line", ... for messages.
    fn place(&self) -> String {
        match self {
            Source::File(p) => format!("in {}", p.display()),
            Source::Cmdline => "on the kernel command line".to_owned(),
            Source::Flag => "on the command line".to_owned(),
            Source::Default | Source::Environment => "by default".to_owned(),
        }
    }
}

/// Why the configuration could not be loaded; the agent exits 2.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A value that does not parse or is out of range.
    #[error("invalid value {value} for {key} {place}: {expected}")]
    Value {
        /// The key as the layer spells it (`sockfwd.pending_timeout`).
        key: String,
        /// The layer (`on the kernel command line`).
        place: String,
        /// The value as given, quoted.
        value: String,
        /// What was expected instead.
        expected: String,
    },
    /// A key the file may not hold.
    #[error("unknown key {key:?} in {}", path.display())]
    UnknownKey {
        /// The key.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// Two keys of one layer set the same setting.
    #[error("{first} and {second} both set {setting} {place}; give one of them")]
    Conflict {
        /// The first key as spelled.
        first: String,
        /// The second key as spelled.
        second: String,
        /// The setting.
        setting: &'static str,
        /// The layer.
        place: String,
    },
    /// The file could not be read (a missing default file is fine).
    #[error("reading the configuration file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not TOML.
    #[error("the configuration file {} is not valid TOML", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where and why.
        #[source]
        source: toml::de::Error,
    },
    /// `--cmdline-file` could not be read.
    #[error("reading the kernel command line from {}", path.display())]
    ReadCmdline {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The merged configuration failed validation.
    #[error("invalid configuration")]
    Invalid(#[source] ConfigError),
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

/// The effective configuration and where each setting came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration for [`crate::run`].
    pub config: AgentConfig,
    /// The tracing filter for the binary's logging.
    pub log: String,
    /// `allow_target` as given (for `--print-config`).
    pub allow_target_text: Vec<String>,
    /// Source of each setting set by some layer, by [`Key::setting`] name;
    /// a setting not here has its default.
    pub sources: BTreeMap<&'static str, Source>,
    /// Things to log once logging is up (unknown `sockfwd.` keys, an unreadable
    /// `/proc/cmdline`).
    pub warnings: Vec<String>,
    /// The file layer.
    pub file: FileLayer,
    /// Where the kernel command line was read from (`None`: not readable).
    pub cmdline: Option<PathBuf>,
}

impl Loaded {
    /// Where `setting` came from.
    pub fn source(&self, setting: &str) -> &Source {
        self.sources.get(setting).unwrap_or(&Source::Default)
    }
}

/// Reads the kernel command line and the file, then [`resolve`]s them with
/// the flags. `rust_log` is `RUST_LOG`, the default for `log`.
pub fn load(cli: &Cli, rust_log: Option<String>) -> Result<Loaded, LoadError> {
    let mut warnings = Vec::new();
    let (cmdline_path, explicit) = match &cli.cmdline_file {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(PROC_CMDLINE), false),
    };
    let params = match std::fs::read_to_string(&cmdline_path) {
        Ok(text) => Some(cmdline::parse(&text)),
        Err(source) if explicit => {
            return Err(LoadError::ReadCmdline {
                path: cmdline_path,
                source,
            })
        }
        Err(e) => {
            // An initramfs init may not have mounted /proc: run on the rest.
            warnings.push(format!(
                "kernel command line not read from {}: {e}; no sockfwd.* settings apply",
                cmdline_path.display()
            ));
            None
        }
    };
    let (path, named_by) = config_file(cli, params.as_deref().unwrap_or_default());
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound && named_by == Source::Default => None,
        Err(source) => return Err(LoadError::ReadFile { path, source }),
    };
    let file = FileLayer {
        path,
        text,
        named_by,
    };
    let mut loaded = resolve(
        file,
        params.as_deref().unwrap_or_default(),
        &cli.values(),
        rust_log,
    )?;
    loaded.cmdline = params.map(|_| cmdline_path);
    warnings.append(&mut loaded.warnings);
    loaded.warnings = warnings;
    Ok(loaded)
}

/// The file to read: `--config`, else `sockfwd.config=`, else the default.
fn config_file(cli: &Cli, params: &[Param]) -> (PathBuf, Source) {
    if let Some(p) = &cli.config {
        return (p.clone(), Source::Flag);
    }
    match params.iter().rev().find(|p| p.key == Key::Config.name()) {
        // An empty value is refused when the layer is applied.
        Some(Param { value: Some(v), .. }) if !v.is_empty() => (PathBuf::from(v), Source::Cmdline),
        _ => (PathBuf::from(DEFAULT_FILE), Source::Default),
    }
}

/// Merges the layers over the defaults, later wins, and validates the result.
/// `flags` are the given flags as (key, value) in order.
pub fn resolve(
    file: FileLayer,
    params: &[Param],
    flags: &[(Key, String)],
    rust_log: Option<String>,
) -> Result<Loaded, LoadError> {
    let mut draft = Draft {
        config: AgentConfig::default(),
        log: DEFAULT_LOG.to_owned(),
        config_file: None,
        allow_target_text: Vec::new(),
    };
    let mut sources = BTreeMap::new();
    if let Some(filter) = rust_log.filter(|f| !f.trim().is_empty()) {
        draft.log = filter;
        sources.insert(Key::Log.name(), Source::Environment);
    }
    let mut warnings = Vec::new();

    if let Some(text) = &file.text {
        let table: toml::Table = text.parse().map_err(|source| LoadError::Syntax {
            path: file.path.clone(),
            source,
        })?;
        let mut entries = Vec::new();
        for (name, value) in &table {
            let key = Key::from_name(name)
                .filter(|k| k.in_file())
                .ok_or_else(|| LoadError::UnknownKey {
                    key: name.clone(),
                    path: file.path.clone(),
                })?;
            match value {
                // A list key's array gives its elements; `[]` empties it.
                toml::Value::Array(items) if key.is_list() => {
                    key.clear(&mut draft);
                    sources.insert(key.setting(), Source::File(file.path.clone()));
                    entries.extend(items.iter().map(|v| (key, Input::Toml(v))));
                }
                v => entries.push((key, Input::Toml(v))),
            }
        }
        apply_layer(
            &mut draft,
            &mut sources,
            &Source::File(file.path.clone()),
            entries,
        )?;
    }

    let mut entries = Vec::new();
    for p in params {
        match Key::from_name(&p.key) {
            Some(key) => entries.push((key, Input::Text(p.value.as_deref().unwrap_or("")))),
            None => warnings.push(format!(
                "unknown key {}{} on the kernel command line; ignored",
                cmdline::PREFIX,
                p.key
            )),
        }
    }
    apply_layer(&mut draft, &mut sources, &Source::Cmdline, entries)?;

    let entries = flags.iter().map(|(k, v)| (*k, Input::Text(v))).collect();
    apply_layer(&mut draft, &mut sources, &Source::Flag, entries)?;

    draft.config.validate().map_err(LoadError::Invalid)?;
    Ok(Loaded {
        config: draft.config,
        log: draft.log,
        allow_target_text: draft.allow_target_text,
        sources,
        warnings,
        file,
        cmdline: None,
    })
}

/// Applies one layer's entries in order: a repeated key's last value wins, a
/// list key's values add up (replacing earlier layers' list), and two keys for
/// one setting conflict.
fn apply_layer(
    draft: &mut Draft,
    sources: &mut BTreeMap<&'static str, Source>,
    layer: &Source,
    entries: Vec<(Key, Input<'_>)>,
) -> Result<(), LoadError> {
    let mut seen: HashMap<&'static str, Key> = HashMap::new();
    for (key, input) in entries {
        match seen.insert(key.setting(), key) {
            Some(first) if first != key => {
                return Err(LoadError::Conflict {
                    first: layer.spell(first),
                    second: layer.spell(key),
                    setting: key.setting(),
                    place: layer.place(),
                });
            }
            Some(_) => {}
            None if key.is_list() && sources.get(key.setting()) != Some(layer) => key.clear(draft),
            None => {}
        }
        key.apply(draft, input)
            .map_err(|expected| LoadError::Value {
                key: layer.spell(key),
                place: layer.place(),
                value: input.shown(),
                expected,
            })?;
        sources.insert(key.setting(), layer.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FILE: &str = "/etc/sockfwd/test.toml";

    fn file(text: Option<&str>) -> FileLayer {
        FileLayer {
            path: FILE.into(),
            text: text.map(str::to_owned),
            named_by: Source::Default,
        }
    }

    fn flags(list: &[(Key, &str)]) -> Vec<(Key, String)> {
        list.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn resolve_all(
        text: Option<&str>,
        cmdline_text: &str,
        flag_list: &[(Key, &str)],
    ) -> Result<Loaded, String> {
        resolve(
            file(text),
            &cmdline::parse(cmdline_text),
            &flags(flag_list),
            None,
        )
        .map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn each_layer_wins_over_the_ones_before_it() {
        let secs = Duration::from_secs;
        let file_text = "pending_timeout = \"1s\"";
        let cmd = "sockfwd.pending_timeout=2s";
        let flag = [(Key::PendingTimeout, "3s")];
        type Case<'a> = (
            Option<&'a str>,
            &'a str,
            &'a [(Key, &'a str)],
            Duration,
            Source,
        );
        let cases: [Case; 4] = [
            (Some(file_text), cmd, &flag, secs(3), Source::Flag),
            (Some(file_text), cmd, &[], secs(2), Source::Cmdline),
            (Some(file_text), "", &[], secs(1), Source::File(FILE.into())),
            (None, "", &[], secs(30), Source::Default),
        ];
        for (text, cmd, flag, want, source) in cases {
            let l = resolve_all(text, cmd, flag).unwrap();
            assert_eq!(l.config.pending_timeout, want);
            assert_eq!(l.source("pending_timeout"), &source);
        }
    }

    #[test]
    fn a_bad_value_names_key_layer_and_value() {
        let file_err = resolve_all(Some("pending_timeout = \"abc\""), "", &[]).unwrap_err();
        assert_eq!(
            file_err,
            format!(
                "invalid value \"abc\" for pending_timeout in {FILE}: \
                 expected a duration like 500ms or 10s"
            )
        );
        let cmd_err = resolve_all(None, "quiet sockfwd.pending_timeout=abc", &[]).unwrap_err();
        assert_eq!(
            cmd_err,
            "invalid value \"abc\" for sockfwd.pending_timeout on the kernel command line: \
             expected a duration like 500ms or 10s"
        );
        let flag_err = resolve_all(None, "", &[(Key::PendingTimeout, "abc")]).unwrap_err();
        assert_eq!(
            flag_err,
            "invalid value \"abc\" for --pending-timeout on the command line: \
             expected a duration like 500ms or 10s"
        );
        // TOML values show as TOML writes them.
        let err = resolve_all(Some("max_pending = 0"), "", &[]).unwrap_err();
        assert!(
            err.starts_with("invalid value 0 for max_pending in"),
            "{err}"
        );
        let err = resolve_all(Some("[[forward]]\nid = \"a\"\npath = \"r\""), "", &[]).unwrap_err();
        assert!(
            err.contains("{ id = \"a\", path = \"r\" } for forward in"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_warn_on_the_kernel_command_line_and_fail_in_the_file() {
        let l = resolve_all(None, "sockfwd.pending_timout=1s sockfwd.max_pending=3", &[]).unwrap();
        assert_eq!(
            l.warnings,
            ["unknown key sockfwd.pending_timout on the kernel command line; ignored"]
        );
        assert_eq!(l.config.max_pending, 3);
        let err = resolve_all(Some("pending_timout = \"1s\""), "", &[]).unwrap_err();
        assert_eq!(err, format!("unknown key \"pending_timout\" in {FILE}"));
        let err = resolve_all(Some("config = \"/x\""), "", &[]).unwrap_err();
        assert!(err.starts_with("unknown key \"config\""), "{err}");
        let err = resolve_all(Some("pending_timeout = "), "", &[]).unwrap_err();
        assert!(err.contains("is not valid TOML"), "{err}");
    }

    #[test]
    fn shorthands_conflict_within_a_layer_and_override_across_layers() {
        let l = resolve_all(
            Some("control_dial = \"unix:///h.sock\""),
            "sockfwd.control_port=2000 sockfwd.streams_port=2001",
            &[],
        )
        .unwrap();
        assert_eq!(l.config.control.to_string(), "listen vsock://-1:2000");
        assert_eq!(l.config.streams.to_string(), "vsock://-1:2001");
        assert_eq!(l.source("control"), &Source::Cmdline);
        let err = resolve_all(
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
        // A repeated scalar key: the last one wins.
        let l = resolve_all(None, "sockfwd.max_pending=1 sockfwd.max_pending=2", &[]).unwrap();
        assert_eq!(l.config.max_pending, 2);
    }

    #[test]
    fn lists_add_up_within_a_layer_and_replace_across_layers() {
        let file_text = "allow_dir = [\"/a\", \"/b\"]\n\
                         [[forward]]\nid = \"f\"\npath = \"/a/f.sock\"\nmode = 0o600\n\
                         [[forward]]\nid = \"g\"\npath = \"/a/g.sock\"\n";
        let l = resolve_all(Some(file_text), "", &[]).unwrap();
        assert_eq!(
            l.config.allow_dirs,
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(l.config.forwards.len(), 2);
        assert_eq!(l.config.forwards[0].mode, Some(0o600));

        let cmd = "sockfwd.allow_dir=/c sockfwd.forward=h:/c/h.sock sockfwd.allow_dir=/d";
        let l = resolve_all(Some(file_text), cmd, &[]).unwrap();
        assert_eq!(
            l.config.allow_dirs,
            [PathBuf::from("/c"), PathBuf::from("/d")]
        );
        assert_eq!(l.config.forwards.len(), 1);
        assert_eq!(l.source("forward"), &Source::Cmdline);

        let l = resolve_all(Some(file_text), cmd, &[(Key::AllowDir, "/e")]).unwrap();
        assert_eq!(l.config.allow_dirs, [PathBuf::from("/e")]);
        assert_eq!(l.config.forwards.len(), 1);

        // An empty list in the file empties the default.
        let l = resolve_all(Some("allow_dir = []"), "", &[]).unwrap();
        assert!(l.config.allow_dirs.is_empty());
        assert_eq!(l.source("allow_dir"), &Source::File(FILE.into()));
    }

    #[test]
    fn rust_log_replaces_only_the_default_filter() {
        let l = resolve(file(None), &[], &[], Some("debug".into())).unwrap();
        assert_eq!(
            (l.log.as_str(), l.source("log")),
            ("debug", &Source::Environment)
        );
        let params = cmdline::parse("sockfwd.log=warn");
        let l = resolve(file(None), &params, &[], Some("debug".into())).unwrap();
        assert_eq!(
            (l.log.as_str(), l.source("log")),
            ("warn", &Source::Cmdline)
        );
        let l = resolve(file(None), &[], &[], None).unwrap();
        assert_eq!(
            (l.log.as_str(), l.source("log")),
            ("info", &Source::Default)
        );
    }

    #[test]
    fn every_key_is_accepted_by_every_layer_it_belongs_to() {
        let value = |k: Key| match k {
            Key::Config => "/x.toml",
            Key::Control | Key::ControlDial => "unix:///c.sock",
            Key::Streams => "unix:///s.sock",
            Key::ControlPort | Key::StreamsPort => "5000",
            Key::PendingTimeout
            | Key::ResultTimeout
            | Key::HandshakeTimeout
            | Key::ClaimTimeout
            | Key::ShutdownGrace => "7s",
            Key::MaxPending | Key::MaxStreamIdLen | Key::MaxSocketsPerBind => "7",
            Key::SocketMode => "0600",
            Key::SocketUid | Key::SocketGid => "7",
            Key::AllowDir => "/run",
            Key::AllowAnyCid => "true",
            Key::AllowTarget => "*:80",
            Key::Forward => "f:/run/f.sock",
            Key::Log => "debug",
        };
        for key in Key::ALL {
            let cmd = format!("sockfwd.{}={}", key.name(), value(*key));
            let l = resolve_all(None, &cmd, &[]).unwrap();
            assert!(l.warnings.is_empty(), "{cmd}");
            assert_eq!(l.source(key.setting()), &Source::Cmdline, "{cmd}");
            if key.in_file() {
                let text = format!("{} = \"{}\"", key.name(), value(*key));
                let l = resolve_all(Some(&text), "", &[]).unwrap();
                assert_eq!(
                    l.source(key.setting()),
                    &Source::File(FILE.into()),
                    "{text}"
                );
            }
        }
    }

    #[test]
    fn config_file_comes_from_the_flag_then_the_kernel_command_line() {
        let params = cmdline::parse("sockfwd.config=/k.toml");
        let cli = Cli::default();
        assert_eq!(
            config_file(&cli, &params),
            ("/k.toml".into(), Source::Cmdline)
        );
        assert_eq!(
            config_file(&cli, &[]),
            (DEFAULT_FILE.into(), Source::Default)
        );
        let cli = Cli {
            config: Some("/f.toml".into()),
            ..Cli::default()
        };
        assert_eq!(config_file(&cli, &params), ("/f.toml".into(), Source::Flag));
    }
}
