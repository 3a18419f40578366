//! Property tests (run in CI) for the configuration parsers, which read what
//! the VMM and the operator write: the kernel command line and the TOML file.
//! Arbitrary text gives a configuration or an error, never a panic.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use proptest::prelude::*;
use sockfwd_agent::config::cmdline::{self, Param};
use sockfwd_agent::config::keys::Flags;
use sockfwd_agent::config::layers::{ConfigError, Effective, FileLayer, Layers, Source};
use std::path::PathBuf;

fn no_file() -> FileLayer {
    FileLayer {
        path: PathBuf::from("/etc/sockfwd/agent.toml"),
        text: None,
        named_by: Source::Default,
    }
}

/// The layers merged: a configuration or an error.
fn resolve(file: FileLayer, params: Vec<Param>) -> Result<Effective, ConfigError> {
    Effective::try_from(Layers {
        file,
        cmdline: Some((PathBuf::from("/proc/cmdline"), params)),
        flags: Flags::default(),
        rust_log: None,
        warnings: Vec::new(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn cmdline_parser_never_panics(text in "\\PC{0,300}") {
        for p in cmdline::parse(&text) {
            prop_assert!(!p.key.contains('-'), "keys are normalised: {:?}", p.key);
        }
    }

    #[test]
    fn cmdline_words_round_trip(
        words in proptest::collection::vec(("[a-z_]{1,12}", "[A-Za-z0-9/:._-]{0,20}"), 0..8),
        noise in "[a-z0-9=. ]{0,40}",
    ) {
        let text: String = words.iter().map(|(k, v)| format!("sockfwd.{k}={v} ")).collect::<String>()
            + &noise.replace("sockfwd.", "");
        let parsed = cmdline::parse(&text);
        let expected: Vec<(String, Option<String>)> =
            words.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        let got: Vec<(String, Option<String>)> = parsed.into_iter().map(|p| (p.key, p.value)).collect();
        prop_assert_eq!(&got[..expected.len().min(got.len())], &expected[..]);
    }

    #[test]
    fn any_cmdline_resolves_or_errs(text in "(sockfwd\\.[a-z_]{1,20}=[ -~]{0,20} ){0,6}") {
        let _ = resolve(no_file(), cmdline::parse(&text));
    }

    #[test]
    fn any_file_resolves_or_errs(text in "\\PC{0,300}") {
        let file = FileLayer { path: PathBuf::from("/x.toml"), text: Some(text), named_by: Source::Flag };
        let _ = resolve(file, Vec::new());
    }

    #[test]
    fn toml_shaped_files_resolve_or_err(
        entries in proptest::collection::vec(("[a-z_]{1,20}", "(\"[ -~]{0,20}\"|[0-9]{1,12}|true|false|\\[\\])"), 0..6),
    ) {
        let text: String = entries.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let file = FileLayer { path: PathBuf::from("/x.toml"), text: Some(text), named_by: Source::Flag };
        let _ = resolve(file, Vec::new());
    }
}
