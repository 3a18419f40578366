//! The shipped systemd unit passes `systemd-analyze verify` with no complaint
//! about any of its lines.

// An integration-test crate: every #[test] here is one, and a failed unwrap is a
// failed test.
#![allow(
    clippy::tests_outside_test_module,
    clippy::unwrap_used,
    clippy::expect_used
)]

use sockfwd_tests::{bin, require_tool};
use std::process::Command;

#[test]
fn unit_file_verifies_cleanly() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let unit =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/sockfwd-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/sockfwd-agent\n"));
    // verify checks that ExecStart exists: point it at the binary we built, and
    // change nothing else.
    let agent = bin("sockfwd-agent");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sockfwd-agent.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/sockfwd-agent", &agent.display().to_string()),
    )
    .unwrap();

    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    // Unknown keys and bad values are only warnings (exit 0), reported as
    // "<file>:<line>: ...": none may mention our file.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{}:", copy.display())))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains about the unit:\n{}",
        complaints.join("\n")
    );
}
