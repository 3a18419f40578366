//! The built binary's configuration layers: `--print-config` with a file, a
//! kernel command line file and flags; which layer wins; and the message and
//! exit status (2) for a bad value in each layer.

#[cfg(test)]
mod config_layers {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    const AGENT: &str = env!("CARGO_BIN_EXE_sockfwd-agent");

    struct Dir {
        dir: tempfile::TempDir,
    }

    impl Dir {
        fn new() -> Dir {
            Dir {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    /// Runs the agent with `args`, away from this machine's own
    /// `/proc/cmdline` unless a test names a file, and without RUST_LOG.
    fn agent(args: &[&str]) -> Output {
        Command::new(AGENT)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .output()
            .unwrap()
    }

    fn stdout(out: &Output) -> String {
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stderr(out: &Output) -> String {
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The `--print-config` line for `key`, split into its value and source.
    fn setting(printed: &str, key: &str) -> (String, String) {
        let line = printed
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in\n{printed}"));
        let (value, source) = line.split_once(" # ").unwrap();
        let value = value.trim_start_matches(&format!("{key} = ")).trim_end();
        (value.to_owned(), source.to_owned())
    }

    fn s(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    #[test]
    fn print_config_shows_every_layer_at_work() {
        let d = Dir::new();
        let file = d.write(
            "agent.toml",
            "pending_timeout = \"1s\"\nresult_timeout = \"1s\"\nclaim_timeout = \"1s\"\n\
             max_pending = 11\nsocket_mode = 0o640\n\
             [[forward]]\nid = \"web\"\npath = \"/run/web.sock\"\nmode = \"0660\"\n",
        );
        let cmdline = d.write(
            "cmdline",
            "console=ttyS0 sockfwd.result_timeout=2s sockfwd.claim_timeout=2s \
             sockfwd.streams_port=2001 sockfwd.nope=1 quiet\n",
        );
        let out = agent(&[
            "--print-config",
            "--config",
            s(&file),
            "--cmdline-file",
            s(&cmdline),
            "--claim-timeout",
            "3s",
            "--log",
            "debug",
        ]);
        let printed = stdout(&out);
        assert!(out.status.success(), "{}{printed}", stderr(&out));
        let from_file = format!("file {}", file.display());
        let cases = [
            ("control", "\"vsock://-1:1025\"", "default"),
            ("streams", "\"vsock://-1:2001\"", "kernel command line"),
            ("pending_timeout", "\"1s\"", from_file.as_str()),
            ("result_timeout", "\"2s\"", "kernel command line"),
            ("claim_timeout", "\"3s\"", "flag"),
            ("handshake_timeout", "\"5s\"", "default"),
            ("max_pending", "11", from_file.as_str()),
            ("socket_mode", "\"0640\"", from_file.as_str()),
            ("log", "\"debug\"", "flag"),
        ];
        for (key, value, source) in cases {
            assert_eq!(
                setting(&printed, key),
                (value.to_owned(), source.to_owned()),
                "{key}"
            );
        }
        assert!(printed.contains("\n[[forward]]"), "{printed}");
        assert!(printed.contains("path = \"/run/web.sock\"\nmode = \"0660\""));
        assert!(printed.contains(&format!("# kernel command line: {}", cmdline.display())));
        assert!(
            printed.contains("# warning: unknown key sockfwd.nope on the kernel command line"),
            "{printed}"
        );
        // It printed and left: nothing was bound.
        assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    }

    #[test]
    fn each_layer_wins_over_the_layers_before_it() {
        let d = Dir::new();
        let file = d.write("agent.toml", "pending_timeout = \"1s\"\n");
        let empty_file = d.write("empty.toml", "");
        let cmdline = d.write("cmdline", "sockfwd.pending_timeout=2s\n");
        let empty_cmdline = d.write("empty-cmdline", "");
        let from_file = format!("file {}", file.display());
        let cases: [(&Path, &Path, &[&str], &str, &str); 4] = [
            (
                &file,
                &cmdline,
                &["--pending-timeout", "3s"],
                "\"3s\"",
                "flag",
            ),
            (&file, &cmdline, &[], "\"2s\"", "kernel command line"),
            (&file, &empty_cmdline, &[], "\"1s\"", &from_file),
            (&empty_file, &empty_cmdline, &[], "\"30s\"", "default"),
        ];
        for (file, cmdline, flags, value, source) in cases {
            let mut args = vec![
                "--print-config",
                "--config",
                s(file),
                "--cmdline-file",
                s(cmdline),
            ];
            args.extend_from_slice(flags);
            let out = agent(&args);
            assert!(out.status.success(), "{}", stderr(&out));
            assert_eq!(
                setting(&stdout(&out), "pending_timeout"),
                (value.to_owned(), source.to_owned())
            );
        }
    }

    #[test]
    fn the_kernel_command_line_can_name_the_file() {
        let d = Dir::new();
        let file = d.write("named.toml", "max_pending = 5\n");
        let cmdline = d.write("cmdline", &format!("sockfwd.config={}\n", file.display()));
        let out = agent(&["--print-config", "--cmdline-file", s(&cmdline)]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            setting(&stdout(&out), "max_pending"),
            ("5".to_owned(), format!("file {}", file.display()))
        );
    }

    #[test]
    fn a_usage_error_is_worded_like_every_other_error() {
        let out = agent(&["--no-such-flag"]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).starts_with("sockfwd-agent: error: unexpected argument '--no-such-flag'"),
            "{}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty());
    }

    /// Runs with the given layers and expects exit 2 and `message` on stderr.
    fn refused(d: &Dir, file: &str, cmdline: &str, flags: &[&str], message: &str) {
        let file = d.write("agent.toml", file);
        let cmdline = d.write("cmdline", cmdline);
        for print in [true, false] {
            let mut args = vec!["--config", s(&file), "--cmdline-file", s(&cmdline)];
            if print {
                args.push("--print-config");
            }
            // Never reached: the configuration fails first. Unix addresses all
            // the same, so a bug here cannot open a vsock socket.
            let sock = d.dir.path().join("c.sock");
            let control = format!("unix://{}", sock.display());
            let streams = format!("unix://{}", d.dir.path().join("s.sock").display());
            if !flags.iter().any(|f| f.starts_with("--control")) {
                args.extend(["--control", &control]);
            }
            if !flags.iter().any(|f| f.starts_with("--streams")) {
                args.extend(["--streams", &streams]);
            }
            args.extend_from_slice(flags);
            let out = agent(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains(message),
                "{args:?}: want {message:?} in:\n{}",
                stderr(&out)
            );
            assert!(stdout(&out).is_empty());
            assert!(!sock.exists());
        }
    }

    #[test]
    fn a_bad_value_in_any_layer_stops_the_agent_naming_key_layer_and_value() {
        let d = Dir::new();
        let path = d.dir.path().join("agent.toml");
        refused(
            &d,
            "pending_timeout = \"abc\"\n",
            "",
            &[],
            &format!(
                "error: invalid value \"abc\" for pending_timeout in {}: \
                 expected a duration like 500ms or 10s\n",
                path.display()
            ),
        );
        refused(
            &d,
            "",
            "ro sockfwd.pending_timeout=abc quiet\n",
            &[],
            "error: invalid value \"abc\" for sockfwd.pending_timeout on the kernel command line: \
             expected a duration like 500ms or 10s\n",
        );
        refused(
            &d,
            "",
            "",
            &["--pending-timeout", "abc"],
            "error: invalid value \"abc\" for --pending-timeout on the command line: \
             expected a duration like 500ms or 10s\n",
        );
        // A bad value is an error even where a later layer overrides it.
        refused(
            &d,
            "max_pending = 0\n",
            "sockfwd.max_pending=5",
            &["--max-pending", "6"],
            "invalid value 0 for max_pending in",
        );
        refused(
            &d,
            "",
            "sockfwd.socket_mode=0999",
            &[],
            "invalid value \"0999\" for sockfwd.socket_mode on the kernel command line: \
             expected an octal mode like 0660",
        );
        refused(
            &d,
            "",
            "sockfwd.forward=web:relative.sock",
            &[],
            "invalid value \"web:relative.sock\" for sockfwd.forward on the kernel command line",
        );
        refused(
            &d,
            "",
            "",
            &["--streams", "hvsock:///v.sock:1"],
            "invalid value \"hvsock:///v.sock:1\" for --streams on the command line",
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let d = Dir::new();
        let path = d.dir.path().join("agent.toml");
        refused(
            &d,
            "pending_timout = \"1s\"\n",
            "",
            &[],
            &format!("unknown key \"pending_timout\" in {}", path.display()),
        );
        refused(
            &d,
            "pending_timeout = \n",
            "",
            &[],
            &format!(
                "the configuration file {} is not valid TOML",
                path.display()
            ),
        );
        let missing = d.dir.path().join("missing.toml");
        for args in [
            vec!["--config".to_owned(), missing.display().to_string()],
            vec![
                "--cmdline-file".to_owned(),
                d.write("cmdline", &format!("sockfwd.config={}", missing.display()))
                    .display()
                    .to_string(),
            ],
        ] {
            let mut all = args.clone();
            all.push("--print-config".to_owned());
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = agent(&all);
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(
                stderr(&out).contains(&format!(
                    "error: reading the configuration file {}\n  caused by: No such file",
                    missing.display()
                )),
                "{}",
                stderr(&out)
            );
        }
        let out = agent(&["--print-config", "--cmdline-file", "/nonexistent/cmdline"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("reading the kernel command line from /nonexistent/cmdline"));
    }

    /// The first fenced block of `lang` in `text`.
    fn block<'a>(text: &'a str, lang: &str) -> &'a str {
        let open = format!("```{lang}\n");
        let start = text.find(&open).unwrap() + open.len();
        let len = text[start..].find("```").unwrap();
        &text[start..start + len]
    }

    #[test]
    fn the_systemd_readme_examples_are_accepted() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/README.md"))
                .unwrap();
        let d = Dir::new();
        let file = d.write("agent.toml", block(&readme, "toml"));
        let cmdline = d.write("cmdline", block(&readme, "text"));
        let dropin = block(&readme, "ini");
        let exec = dropin
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart=/usr/bin/sockfwd-agent "))
            .unwrap();
        let mut args = vec![
            "--print-config",
            "--config",
            s(&file),
            "--cmdline-file",
            s(&cmdline),
        ];
        args.extend(exec.split_whitespace());
        let out = agent(&args);
        let printed = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!printed.contains("# warning"), "{printed}");
        // The file's two forwards, replaced by the command line's, replaced by
        // the drop-in's one.
        assert_eq!(printed.matches("[[forward]]").count(), 1, "{printed}");
        assert_eq!(setting(&printed, "control_dial").1, "flag");
        assert_eq!(setting(&printed, "log").1, "kernel command line");
        assert_eq!(
            setting(&printed, "allow_dir"),
            (
                "[\"/run\", \"/var/run\"]".to_owned(),
                "kernel command line".to_owned()
            )
        );
        // And the file alone gives the documented defaults.
        let empty = d.write("empty", "");
        let alone = agent(&[
            "--print-config",
            "--config",
            s(&file),
            "--cmdline-file",
            s(&empty),
        ]);
        let defaults = agent(&[
            "--print-config",
            "--config",
            s(&empty),
            "--cmdline-file",
            s(&empty),
        ]);
        let values = |o: &Output| -> Vec<String> {
            stdout(o)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains("[[forward]]"))
                .take_while(|l| !l.is_empty())
                .map(|l| l.split(" # ").next().unwrap().trim_end().to_owned())
                .collect()
        };
        assert_eq!(values(&alone), values(&defaults));
    }
}
