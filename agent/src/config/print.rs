//! `--print-config`: the effective configuration, one setting a line with the
//! layer it came from.
//!
//! The output is itself a valid configuration file (sources are TOML
//! comments), so it can be saved as `/etc/sockfwd/agent.toml` and edited. It is
//! [`AgentConfig`](crate::config::AgentConfig) as serde writes it, so a new
//! key prints without a line here.

use crate::config::keys::catalog;
use crate::config::layers::{Effective, Source};
use std::fmt::Write as _;

/// Column where the `# source` comments start.
const COMMENT_COLUMN: usize = 40;

/// The text `--print-config` prints. `own` is the agent's (uid, gid), shown
/// for the `socket_uid`/`socket_gid` defaults.
pub fn render(e: &Effective, own: (u32, u32)) -> Result<String, toml::ser::Error> {
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
    let mut table = toml::Table::try_from(&config)?;
    table.insert("log".to_owned(), toml::Value::String(e.log.clone()));
    let forwards = table.remove("forward");

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

    let keys = catalog();
    let source = |key: &str| {
        let setting = keys
            .iter()
            .find(|k| k.name == key)
            .map_or(key, |k| &k.setting);
        e.source(setting)
    };
    for (key, value) in &table {
        let note = match (key.as_str(), value) {
            (k, _) if own_ids.contains(&k) => " (the agent's own)",
            ("allow_dir", toml::Value::Array(a)) if a.is_empty() => " (anywhere)",
            ("allow_target", toml::Value::Array(a)) if a.is_empty() => " (any target)",
            _ => "",
        };
        let text = format!("{key} = {value}");
        let _ = writeln!(
            out,
            "{text:<width$} # {}{note}",
            source(key),
            width = COMMENT_COLUMN - 1
        );
    }

    // Tables come after every plain key in TOML.
    let source = source("forward");
    match forwards {
        Some(toml::Value::Array(forwards)) if !forwards.is_empty() => {
            for forward in forwards.iter().filter_map(toml::Value::as_table) {
                let header = "[[forward]]";
                let _ = writeln!(out, "\n{header:<w$} # {source}", w = COMMENT_COLUMN - 1);
                for (k, v) in forward {
                    let _ = writeln!(out, "{k} = {v}");
                }
            }
        }
        _ => {
            let _ = writeln!(out, "# forward: none{:<w$} # {source}", "", w = 23);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cmdline;
    use crate::config::keys::Keys;
    use crate::config::layers::{FileLayer, Layers};
    use crate::config::values::Val;

    fn effective(text: Option<String>, path: &str, cmd: &str, flags: Keys) -> Effective {
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
        let flags = Keys {
            log: Some("debug".parse::<Val<_>>().unwrap()),
            ..Keys::default()
        };
        let loaded = effective(
            Some(file.to_owned()),
            "/etc/a.toml",
            "sockfwd.control_dial sockfwd.socket_uid=7",
            flags,
        );
        let text = render(&loaded, (1000, 1001)).unwrap();
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
        let reread = effective(Some(text), "/printed.toml", "", Keys::default());
        let mut want = loaded.config.clone();
        want.socket_gid = Some(1001);
        assert_eq!(reread.config, want);
        assert_eq!(reread.log, "debug");
    }
}
