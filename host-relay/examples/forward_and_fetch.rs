//! A local forward to a guest port, and a fetch through it.
//!
//! ```text
//! cargo run -p sockfwd-relay --example forward_and_fetch -- \
//!     unix:///run/vm/control.sock unix:///run/vm/streams.sock 127.0.0.1:8080
//! ```
//!
//! The agent must listen on the control address (`sockfwd-agent --control`);
//! the guest address is any target the agent may reach (`host:port`,
//! `[v6]:port`, a name resolved in the guest, or `unix:/path`). The program
//! binds a free loopback port, sends one HTTP request through it, prints the
//! answer's first line, then opens one raw connection the same way.

use sockfwd_proto::transport::Address;
use sockfwd_relay::{Guest, GuestOptions, LocalForwards};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn fetch(addr: &str, host: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

async fn run(
    control: Address,
    streams: Address,
    target: String,
) -> Result<(), Box<dyn std::error::Error>> {
    let guest = Guest::dial(
        &control,
        streams,
        GuestOptions::default(),
        Duration::from_secs(10),
    )
    .await?;

    // One mapping: a free port on the host's loopback to the guest target.
    let forwards = LocalForwards::new();
    let forward = forwards.add(guest.forward(&format!("0:{target}")).await?);
    println!(
        "listening {} -> {}",
        forward.local_addr(),
        forward.spec().remote
    );
    let status = fetch(&forward.local_addr().to_string(), &target).await?;
    println!("through the listener: {status}");

    // One raw connection, no listener.
    let mut conn = guest.open(&target).await?;
    conn.write_all(format!("GET / HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    println!(
        "raw connection: {}",
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or("")
    );

    forwards.close_all();
    forwards.wait_all().await;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(control), Some(streams), Some(target)) = (args.next(), args.next(), args.next())
    else {
        eprintln!("usage: forward_and_fetch CONTROL_ADDR STREAMS_ADDR GUEST_TARGET");
        return ExitCode::from(2);
    };
    let (control, streams) = match (control.parse::<Address>(), streams.parse::<Address>()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(control, streams, target)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", sockfwd_relay::report::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
