//! The commented default `/etc/sockfwd/agent.toml` shipped in the agent's
//! package (`dist/agent.toml`): the agent accepts it as shipped and with its
//! default lines uncommented, neither changes any value, and it names every
//! configuration key the agent has.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/agent.toml")
}

/// `--print-config` with `file` as the only layer; panics with the agent's
/// message when it refuses the file.
fn effective(file: &Path) -> String {
    let out = Command::new(bin("sockfwd-agent"))
        .arg("--config")
        .arg(file)
        .args(["--cmdline-file", "/dev/null", "--print-config"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sockfwd-agent refuses {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `key = value` lines of `--print-config`, without their source comments.
fn values(printed: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" #").next().unwrap_or(l).trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn defaults(dir: &Path) -> Vec<String> {
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    values(&effective(&empty))
}

#[test]
fn shipped_file_is_accepted_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let printed = effective(&shipped());
    assert!(
        printed.contains(&format!("# file: {}", shipped().display())),
        "{printed}"
    );
    assert_eq!(values(&printed), defaults(dir.path()));
}

#[test]
fn uncommented_default_lines_are_the_defaults() {
    // `# KEY = VALUE` at the start of a line is a default, by the file's own
    // convention; indented `#   KEY = VALUE` lines are examples.
    let text = std::fs::read_to_string(shipped()).unwrap();
    let mut uncommented = 0;
    let body: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_assignment(rest) => {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(uncommented >= 15, "only {uncommented} default lines found");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, body).unwrap();
    assert_eq!(values(&effective(&file)), defaults(dir.path()));
}

fn is_assignment(text: &str) -> bool {
    text.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    })
}

#[test]
fn every_configuration_key_is_in_the_file() {
    // The keys are the flags (each flag is a key of the file and of the kernel
    // command line), less those that are not configuration.
    let help = Command::new(bin("sockfwd-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let keys: Vec<String> = help
        .lines()
        .filter_map(|l| l.trim_start().split("--").nth(1))
        .filter_map(|l| {
            l.split(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                .next()
        })
        .filter(|k| !["help", "version", "print-config", "config", "cmdline-file"].contains(k))
        .map(|k| k.replace('-', "_"))
        .collect();
    assert!(keys.len() >= 20, "too few flags in --help: {keys:?}");
    let text = std::fs::read_to_string(shipped()).unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let as_table = format!("[[{k}]]");
            let default = format!("\n# {k} = ");
            let example = format!("\n#   {k} = ");
            !(text.contains(&default) || text.contains(&example) || text.contains(&as_table))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dist/agent.toml lacks the keys {missing:?}"
    );
}
