//! `--print-config`: the effective configuration, one setting a line with the
//! layer it came from.
//!
//! The output is itself a valid configuration file (sources are TOML
//! comments), so it can be saved as `/etc/sockfwd/agent.toml` and edited.

use crate::config::ControlMode;
use crate::keys::Key;
use crate::load::{Loaded, Source};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Column where the `# source` comments start.
const COMMENT_COLUMN: usize = 40;

/// The text `--print-config` prints. `own` is the agent's (uid, gid), shown
/// for the `socket_uid`/`socket_gid` defaults.
pub fn render(loaded: &Loaded, own: (u32, u32)) -> String {
    let c = &loaded.config;
    let mut out = String::new();
    out.push_str("# sockfwd-agent effective configuration: each value with its source\n");
    out.push_str("# (default, file PATH, kernel command line, flag); later layers win.\n");
    let file_state = match (&loaded.file.text, &loaded.file.named_by) {
        (Some(_), Source::Default) => "read".to_owned(),
        (None, _) => "not found; nothing read".to_owned(),
        (Some(_), by) => format!("read; named by {by}"),
    };
    let _ = writeln!(out, "# file: {} ({file_state})", loaded.file.path.display());
    for warning in &loaded.warnings {
        let _ = writeln!(out, "# warning: {warning}");
    }
    match &loaded.cmdline {
        Some(p) => {
            let _ = writeln!(out, "# kernel command line: {}", p.display());
        }
        None => out.push_str("# kernel command line: not read\n"),
    }

    let mut line = |key: Key, value: String, note: &str| {
        let source = loaded.source(key.setting());
        let text = format!("{} = {value}", key.name());
        let _ = writeln!(
            out,
            "{text:<width$} # {source}{note}",
            width = COMMENT_COLUMN - 1
        );
    };
    match &c.control {
        ControlMode::Listen(a) => line(Key::Control, quote(&a.to_string()), ""),
        ControlMode::Dial(a) => line(Key::ControlDial, quote(&a.to_string()), ""),
    }
    line(Key::Streams, quote(&c.streams.to_string()), "");
    line(Key::PendingTimeout, duration(c.pending_timeout), "");
    line(Key::ResultTimeout, duration(c.result_timeout), "");
    line(Key::MaxPending, c.max_pending.to_string(), "");
    line(Key::MaxStreamIdLen, c.max_stream_id_len.to_string(), "");
    line(Key::HandshakeTimeout, duration(c.handshake_timeout), "");
    line(Key::ClaimTimeout, duration(c.claim_timeout), "");
    line(Key::ShutdownGrace, duration(c.shutdown_grace), "");
    line(
        Key::SocketMode,
        quote(&format!("{:04o}", c.socket_mode)),
        "",
    );
    let owner = |v: Option<u32>, own: u32| match v {
        Some(v) => (v.to_string(), ""),
        None => (own.to_string(), " (the agent's own)"),
    };
    let (uid, note) = owner(c.socket_uid, own.0);
    line(Key::SocketUid, uid, note);
    let (gid, note) = owner(c.socket_gid, own.1);
    line(Key::SocketGid, gid, note);
    let dirs: Vec<String> = c.allow_dirs.iter().map(|d| path(d)).collect();
    let note = if dirs.is_empty() { " (anywhere)" } else { "" };
    line(Key::AllowDir, format!("[{}]", dirs.join(", ")), note);
    line(
        Key::MaxSocketsPerBind,
        c.max_sockets_per_bind.to_string(),
        "",
    );
    line(Key::AllowAnyCid, c.allow_any_cid.to_string(), "");
    let targets: Vec<String> = loaded.allow_target_text.iter().map(|t| quote(t)).collect();
    let note = if targets.is_empty() {
        " (any target)"
    } else {
        ""
    };
    line(Key::AllowTarget, format!("[{}]", targets.join(", ")), note);
    line(Key::Log, quote(&loaded.log), "");

    // Tables come after every plain key in TOML.
    let source = loaded.source(Key::Forward.setting());
    if c.forwards.is_empty() {
        let _ = writeln!(out, "# forward: none{:<w$} # {source}", "", w = 23);
    }
    for f in &c.forwards {
        let _ = writeln!(
            out,
            "\n{:<w$} # {source}",
            "[[forward]]",
            w = COMMENT_COLUMN - 1
        );
        let _ = writeln!(out, "id = {}", quote(&f.id));
        let _ = writeln!(out, "path = {}", path(&f.path));
        if let Some(mode) = f.mode {
            let _ = writeln!(out, "mode = {}", quote(&format!("{mode:04o}")));
        }
        if let Some(uid) = f.uid {
            let _ = writeln!(out, "uid = {uid}");
        }
        if let Some(gid) = f.gid {
            let _ = writeln!(out, "gid = {gid}");
        }
    }
    out
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn duration(d: Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline;
    use crate::load::{resolve, FileLayer};

    #[test]
    fn output_is_a_configuration_file_that_gives_the_same_configuration() {
        let file = FileLayer {
            path: "/etc/a.toml".into(),
            text: Some(
                "pending_timeout = \"1s\"\nallow_dir = [\"/run\"]\n\
                 [[forward]]\nid = \"w\"\npath = \"/run/w \\\"q\\\".sock\"\nmode = 0o640\n"
                    .to_owned(),
            ),
            named_by: Source::Default,
        };
        let params = cmdline::parse("sockfwd.control_dial sockfwd.socket_uid=7");
        let flags = [(Key::Log, "debug".to_owned())];
        let loaded = resolve(file, &params, &flags, None).unwrap();
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
        let again = FileLayer {
            path: "/printed.toml".into(),
            text: Some(text),
            named_by: Source::Flag,
        };
        let reread = resolve(again, &[], &[], None).unwrap();
        let mut want = loaded.config.clone();
        want.socket_gid = Some(1001);
        assert_eq!(reread.config, want);
        assert_eq!(reread.log, "debug");
    }
}
