//! `vmbench`: the ends of `sockfwd-bench --vm`, one static binary (std only)
//! used on both sides of the microVM, so every path is measured with the same
//! client and the same server.
//!
//! ```text
//! vmbench serve PATH...
//!     (host) the server every path ends at, on each Unix socket PATH (wire.rs)
//! vmbench guest --control-port P --echo-port P --relay-listen PATH --relay-to TARGET
//!               [--vsock-write-max BYTES] -- AGENT ARGS...
//!     (guest, the initramfs payload) starts the agent and the minimal relay, then
//!     runs the host's commands (guest.rs)
//! vmbench relay --listen PATH --to TARGET [--vsock-write-max BYTES]
//!     (guest) the minimal Unix-to-vsock relay (relay.rs); `guest` starts it
//! ```
//!
//! TARGET is `unix:PATH` or `vsock:CID:PORT`. AF_VSOCK is only ever opened in
//! the benchmark's guest (sys.rs).

mod client;
mod guest;
mod pattern;
mod relay;
mod serve;
mod sys;
mod wire;

use std::collections::HashMap;
use std::process::ExitCode;

/// `--key value` flags up to a `--`, and what follows it.
struct Args {
    flags: HashMap<String, String>,
    positional: Vec<String>,
    rest: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut a = Args {
            flags: HashMap::new(),
            positional: Vec::new(),
            rest: Vec::new(),
        };
        let mut it = raw.iter();
        while let Some(w) = it.next() {
            if w == "--" {
                a.rest = it.cloned().collect();
                break;
            }
            if let Some(key) = w.strip_prefix("--") {
                let v = it.next().ok_or(format!("--{key} needs a value"))?;
                a.flags.insert(key.to_string(), v.clone());
            } else {
                a.positional.push(w.clone());
            }
        }
        Ok(a)
    }

    fn str(&self, key: &str) -> Result<String, String> {
        self.flags
            .get(key)
            .cloned()
            .ok_or(format!("--{key} is required"))
    }

    /// A byte count; no flag: no limit.
    fn size(&self, key: &str) -> Result<usize, String> {
        match self.flags.get(key) {
            None => Ok(usize::MAX),
            Some(v) => v.parse().map_err(|_| format!("--{key}: bad size {v:?}")),
        }
    }

    fn port(&self, key: &str) -> Result<u32, String> {
        let v = self.str(key)?;
        v.parse().map_err(|_| format!("--{key}: bad port {v:?}"))
    }
}

fn run(argv: &[String]) -> Result<(), String> {
    let (cmd, rest) = argv
        .split_first()
        .ok_or("usage: vmbench serve|guest|relay ... (see the source's main.rs)")?;
    let args = Args::parse(rest)?;
    match cmd.as_str() {
        "serve" => serve::serve(&args.positional),
        "relay" => relay::run(
            &args.str("listen")?,
            &wire::Target::parse(&args.str("to")?)?,
            args.size("vsock-write-max")?,
        ),
        "guest" => guest::run(&guest::GuestOpts {
            control_port: args.port("control-port")?,
            echo_port: args.port("echo-port")?,
            relay_listen: args.str("relay-listen")?,
            relay_to: args.str("relay-to")?,
            vsock_write_max: args.size("vsock-write-max")?,
            agent: args.rest,
        }),
        other => Err(format!("unknown subcommand {other:?}")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmbench: {e}");
            ExitCode::FAILURE
        }
    }
}
