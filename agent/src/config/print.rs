//! `--print-config`: the effective configuration, one setting a line with the
//! layer it came from; and the commented default file shipped as
//! `/etc/sockfwd/agent.toml` (`dist/agent.toml`).
//!
//! Both are made from the key table ([`KEYS`]), so a new key prints without a
//! line here. `--print-config`'s output is itself a
//! valid configuration file (sources are TOML comments), so it can be saved as
//! `/etc/sockfwd/agent.toml` and edited.

use crate::config::layers::{Effective, Source};
use crate::config::{AgentConfig, ControlMode, KEYS};
use std::fmt::Write as _;
use toml::Value as Toml;

/// Column where the `# source` comments start.
const COMMENT_COLUMN: usize = 40;

/// The text `--print-config` prints. `own` is the agent's (uid, gid), shown
/// for the `socket_uid`/`socket_gid` defaults.
pub fn render(e: &Effective, own: (u32, u32)) -> String {
    let mut config = e.config.clone();
    let mut own_ids = Vec::new();
    for (key, id, value) in [
        ("socket_uid", &mut config.socket_uid, own.0),
        ("socket_gid", &mut config.socket_gid, own.1),
    ] {
        if id.is_none() {
            *id = Some(value);
            own_ids.push(key);
        }
    }

    let mut out = String::new();
    out.push_str("# sockfwd-agent effective configuration: each value with its source\n");
    out.push_str("# (default, file PATH, kernel command line, flag); later layers win.\n");
    let file_state = match (&e.file.text, &e.file.named_by) {
        (Some(_), Source::Default) => "read".to_owned(),
        (None, _) => "not found; nothing read".to_owned(),
        (Some(_), by) => format!("read; named by {by}"),
    };
    let _ = writeln!(out, "# file: {} ({file_state})", e.file.path.display());
    for warning in &e.warnings {
        let _ = writeln!(out, "# warning: {warning}");
    }
    match &e.cmdline {
        Some(p) => {
            let _ = writeln!(out, "# kernel command line: {}", p.display());
        }
        None => out.push_str("# kernel command line: not read\n"),
    }

    // Tables come after every plain key in TOML.
    let mut tables = Vec::new();
    for key in KEYS.iter().filter(|k| !k.alias) {
        let source = e.source(key.field);
        let name = match (key.name, &config.control) {
            ("control", ControlMode::Dial(_)) => "control_dial",
            (name, _) => name,
        };
        match (key.show)(&config) {
            // The forwards' tables; `[]` too, as no tables.
            Some(Toml::Array(a)) if name == "forward" => tables.push((name, a, source)),
            Some(value) => {
                let note = match (name, &value) {
                    (k, _) if own_ids.contains(&k) => " (the agent's own)",
                    ("allow_dir", Toml::Array(a)) if a.is_empty() => " (anywhere)",
                    ("allow_target", Toml::Array(a)) if a.is_empty() => " (any target)",
                    _ => "",
                };
                let text = format!("{name} = {value}");
                let _ = writeln!(out, "{text:<w$} # {source}{note}", w = COMMENT_COLUMN - 1);
            }
            None => {}
        }
    }
    for (key, items, source) in tables {
        if items.is_empty() {
            let _ = writeln!(out, "# {key}: none{:<w$} # {source}", "", w = 23);
        }
        for table in items.iter().filter_map(Toml::as_table) {
            let header = format!("[[{key}]]");
            let _ = writeln!(out, "\n{header:<w$} # {source}", w = COMMENT_COLUMN - 1);
            for (k, v) in table {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
    }
    out
}

/// The top of the shipped file.
const HEADER: &str = "\
# /etc/sockfwd/agent.toml: configuration of sockfwd-agent, the guest half of
# sockfwd. Every line below is commented out and shows the built-in default,
# so this file as shipped changes nothing. Uncomment a line to change it.
#
# Later layers win: built-in defaults, this file, `sockfwd.KEY=VALUE` words on
# the kernel command line (how a VMM usually configures the agent), then flags
# (`--KEY`, with `-` for `_`, in a systemd drop-in). `sockfwd-agent
# --print-config` shows the effective value of every key and where it came from.
# An unknown key here is an error: a typo should not pass silently.
# Documentation: sockfwd-agent(8), /usr/share/doc/sockfwd-agent/.
#
# Lines `# KEY = VALUE` at the start of a line are defaults; indented lines
# (`#   KEY = VALUE`) are alternatives or examples, not defaults.
#
# Generated from the agent's key table (agent/src/config/mod.rs).
";

/// The commented default file: each setting's help, its default, and an
/// example where it has none (or an empty list); then its other keys.
pub fn default_file() -> String {
    let mut out = HEADER.to_owned();
    let example = |name: &str, sample: &str, list: bool| {
        // A number as TOML writes one, unless it could read as octal.
        let value = match sample.parse::<u64>() {
            Ok(n) if !sample.starts_with('0') => n.to_string(),
            _ => format!("{sample:?}"),
        };
        match list {
            true => format!("#   {name} = [{value}]\n"),
            false => format!("#   {name} = {value}\n"),
        }
    };
    let defaults = AgentConfig::default();
    for key in KEYS.iter().filter(|k| !k.alias) {
        out.push('\n');
        comment(&mut out, "", key.help);
        match (key.show)(&defaults) {
            Some(value) => {
                let _ = writeln!(out, "# {} = {value}", key.name);
                if matches!(&value, Toml::Array(a) if a.is_empty()) {
                    out.push_str("#   For example:\n");
                    out.push_str(&example(key.name, key.sample, key.list));
                }
            }
            None => {
                out.push_str("#   Unset by default. For example:\n");
                out.push_str(&example(key.name, key.sample, key.list));
            }
        }
        for alias in KEYS.iter().filter(|a| a.alias && a.field == key.field) {
            out.push_str("#   Or, for the same setting (give at most one key of it):\n");
            out.push_str(&example(alias.name, alias.sample, alias.list));
            comment(&mut out, "    ", alias.help);
        }
    }
    out
}

/// `text` as comment lines of at most 79 columns, each `# ` and `indent`.
fn comment(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && 2 + indent.len() + line.len() + 1 + word.len() > 79 {
            let _ = writeln!(out, "# {indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "# {indent}{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cmdline;
    use crate::config::keys::Flags;
    use crate::config::layers::{FileLayer, Layers};
    use clap::Parser as _;

    fn effective(text: Option<String>, path: &str, cmd: &str, flags: Flags) -> Effective {
        Effective::try_from(Layers {
            file: FileLayer {
                path: path.into(),
                text,
                named_by: Source::Default,
            },
            cmdline: Some(("/proc/cmdline".into(), cmdline::parse(cmd))),
            flags,
            rust_log: None,
            warnings: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn output_is_a_configuration_file_that_gives_the_same_configuration() {
        let file = "pending_timeout = \"1s\"\nallow_dir = [\"/run\"]\n\
                    [[forward]]\nid = \"w\"\npath = \"/run/w \\\"q\\\".sock\"\nmode = 0o640\n";
        let flags = crate::cli::Cli::try_parse_from(["sockfwd-agent", "--log", "debug"])
            .unwrap()
            .flags;
        let loaded = effective(
            Some(file.to_owned()),
            "/etc/a.toml",
            "sockfwd.control_dial sockfwd.socket_uid=7",
            flags,
        );
        let text = render(&loaded, (1000, 1001));
        let line = |text: &str, source: &str| format!("{text:<39} # {source}\n");
        for want in [
            "# file: /etc/a.toml (read)\n".to_owned(),
            line("control_dial = \"vsock://2:1025\"", "kernel command line"),
            line("pending_timeout = \"1s\"", "file /etc/a.toml"),
            line("result_timeout = \"10s\"", "default"),
            line("socket_mode = \"0666\"", "default"),
            line("socket_uid = 7", "kernel command line"),
            line("socket_gid = 1001", "default (the agent's own)"),
            line("allow_dir = [\"/run\"]", "file /etc/a.toml"),
            line("allow_target = []", "default (any target)"),
            line("log = \"debug\"", "flag"),
            line("[[forward]]", "file /etc/a.toml"),
            "mode = \"0640\"\n".to_owned(),
        ] {
            assert!(text.contains(&want), "{want:?} not in\n{text}");
        }
        // Read back as a file, it is the same configuration.
        let reread = effective(Some(text), "/printed.toml", "", Flags::default());
        let mut want = loaded.config.clone();
        want.socket_gid = Some(1001);
        assert_eq!(reread.config, want);
        assert_eq!(reread.config.log, "debug");
    }

    #[test]
    fn shipped_file_is_the_default_file_of_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/agent.toml");
        let want = default_file();
        if std::env::var_os("SOCKFWD_BLESS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap();
        assert!(
            shipped == want,
            "dist/agent.toml is not what the key table makes; write it anew with \
             SOCKFWD_BLESS=1 cargo nextest run -p sockfwd-agent shipped_file"
        );
        // Read back as a file, its defaults are the defaults.
        let uncommented: String = want
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let e = effective(Some(uncommented), "/shipped.toml", "", Flags::default());
        assert_eq!(e.config, AgentConfig::default());
    }
}
