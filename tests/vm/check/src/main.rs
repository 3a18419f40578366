//! `vm-check`: the test tool of `tests/vm/run.sh`, one static binary used on both
//! sides of the microVM.
//!
//! ```text
//! vm-check guest --socket PATH [--tcp IP:PORT] [--wait-secs 120] [--bytes 4194304] [--parallel 8]
//!     (in the guest) the cases against the forwarded socket, then (with --tcp)
//!     the same cases, named tcp-*, against a guest TCP listener of the relay's -R
//! vm-check serve PATH | vm-check serve-tcp IP:PORT
//!     (host) the Unix or TCP server the relay forwards to; see wire.rs for what
//!     it answers
//! vm-check stream-probe --uds PATH --port 1026 --mode MODE [--name NAME]
//!                       [--connect-within SECS] [--close-within SECS]
//!     (host) a bad handshake on the guest's stream port through the hybrid socket;
//!     MODE: huge-len empty-id bad-utf8 garbage truncated silent unclaimed
//! ```
//!
//! Results are lines `VMCHECK: PASS name (detail)` / `VMCHECK: FAIL name: reason`;
//! the exit status is 0 when every case passed.

mod guest;
mod probe;
mod server;
mod wire;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

/// `--key value` pairs after the subcommand, plus positional arguments.
struct Args {
    flags: HashMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut flags = HashMap::new();
        let mut positional = Vec::new();
        let mut it = raw.iter();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                let v = it.next().ok_or(format!("--{key} needs a value"))?;
                flags.insert(key.to_string(), v.clone());
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Args { flags, positional })
    }

    fn str(&self, key: &str) -> Result<String, String> {
        self.flags
            .get(key)
            .cloned()
            .ok_or(format!("--{key} is required"))
    }

    fn num(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.flags.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{key}: bad number {v:?}")),
        }
    }
}

fn run(argv: &[String]) -> Result<bool, String> {
    let (cmd, rest) = argv
        .split_first()
        .ok_or("usage: vm-check guest|serve|serve-tcp|stream-probe ...")?;
    let args = Args::parse(rest)?;
    match cmd.as_str() {
        "guest" => Ok(guest::run(&guest::GuestOpts {
            socket: args.str("socket")?,
            tcp: args.flags.get("tcp").cloned(),
            wait: Duration::from_secs(args.num("wait-secs", 120)?),
            bytes: args.num("bytes", 4 << 20)?,
            parallel: u32::try_from(args.num("parallel", 8)?).map_err(|e| e.to_string())?,
        })),
        "serve" => {
            let path = args.positional.first().ok_or("serve PATH")?;
            server::serve(path).map_err(|e| format!("serve {path}: {e}"))?;
            Ok(true)
        }
        "serve-tcp" => {
            let addr = args.positional.first().ok_or("serve-tcp IP:PORT")?;
            server::serve_tcp(addr).map_err(|e| format!("serve-tcp {addr}: {e}"))?;
            Ok(true)
        }
        "stream-probe" => {
            let mode_name = args.str("mode")?;
            let mode = probe::Mode::parse(&mode_name).ok_or(format!("unknown mode {mode_name}"))?;
            let name = args
                .flags
                .get("name")
                .cloned()
                .unwrap_or_else(|| format!("stream-{mode_name}"));
            let opts = probe::ProbeOpts {
                uds: args.str("uds")?,
                port: u32::try_from(args.num("port", 1026)?).map_err(|e| e.to_string())?,
                mode,
                connect_within: Duration::from_secs(args.num("connect-within", 30)?),
                close_within: Duration::from_secs(args.num("close-within", 4)?),
            };
            match probe::run(&opts) {
                Ok(detail) => {
                    println!("VMCHECK: PASS {name} ({detail})");
                    Ok(true)
                }
                Err(reason) => {
                    println!("VMCHECK: FAIL {name}: {reason}");
                    Ok(false)
                }
            }
        }
        other => Err(format!("unknown subcommand {other}")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vm-check: {e}");
            ExitCode::from(2)
        }
    }
}
