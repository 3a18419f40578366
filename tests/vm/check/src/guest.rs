//! `vm-check guest --socket PATH`: runs inside the microVM against the forwarded
//! socket the agent bound for the host relay. Prints one `VMCHECK: PASS|FAIL name`
//! line per case (the host's run.sh collects them from the console).

use crate::wire::{self, HALF_REPLY};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Read/write deadline for the data cases.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the half-close case waits for the reply after its shutdown.
const HALF_TIMEOUT: Duration = Duration::from_secs(10);

/// What the guest checks; see `main.rs` for the flags.
pub struct GuestOpts {
    /// The forwarded socket (the relay's `--forward GUEST_PATH`).
    pub socket: String,
    /// How long to wait for the socket to appear.
    pub wait: Duration,
    /// Bytes per direction in the bulk cases.
    pub bytes: u64,
    /// Connections at once in the concurrency case.
    pub parallel: u32,
}

type CaseResult = Result<String, String>;

fn report(name: &str, r: &CaseResult) -> bool {
    match r {
        Ok(detail) => {
            println!("VMCHECK: PASS {name} ({detail})");
            true
        }
        Err(reason) => {
            println!("VMCHECK: FAIL {name}: {reason}");
            false
        }
    }
}

fn connect(path: &str, timeout: Duration) -> io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

fn err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn mbps(bytes: u64, t: Duration) -> String {
    format!("{:.1} MB/s", bytes as f64 / t.as_secs_f64().max(1e-6) / 1e6)
}

/// Runs every case; returns whether all passed.
pub fn run(o: &GuestOpts) -> bool {
    let t0 = Instant::now();
    while !Path::new(&o.socket).exists() {
        if t0.elapsed() > o.wait {
            let r = Err(format!("{} did not appear within {:?}", o.socket, o.wait));
            return report("forward-bound", &r);
        }
        thread::sleep(Duration::from_millis(100));
    }
    report(
        "forward-bound",
        &Ok(format!(
            "{} after {} ms",
            o.socket,
            t0.elapsed().as_millis()
        )),
    );
    let p = o.socket.as_str();
    let mut ok = true;
    ok &= report("first-connection", &ping(p));
    ok &= report("upload-integrity", &upload(p, o.bytes, 11));
    ok &= report("download-integrity", &download(p, o.bytes, 22));
    ok &= report("duplex-echo-integrity", &echo(p, o.bytes, 33));
    ok &= report(
        "parallel-connections",
        &parallel(p, o.parallel, o.bytes / 8),
    );
    ok &= report("half-close", &half_close(p, 256 * 1024, 55));
    ok &= report("still-serving", &ping(p));
    ok
}

fn ping(p: &str) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(b"PING\n").map_err(err("write"))?;
    match wire::read_line(&mut s).map_err(err("read reply"))? {
        Some(l) if l == "PONG" => Ok(format!("PONG in {} ms", t0.elapsed().as_millis())),
        Some(l) => Err(format!("unexpected reply {l:?}")),
        None => Err("connection closed without a reply".to_string()),
    }
}

fn upload(p: &str, n: u64, seed: u64) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(format!("UP {n} {seed}\n").as_bytes())
        .map_err(err("write header"))?;
    let sent = wire::send_generated(&mut s, n, seed).map_err(err("send"))?;
    let reply = wire::read_line(&mut s)
        .map_err(err("read result"))?
        .ok_or("closed before the server's result")?;
    let want = format!("UP {n} {} ok", sent.hex());
    if reply != want {
        return Err(format!("server saw {reply:?}, sent {want:?}"));
    }
    Ok(format!(
        "{n} bytes guest->host, fnv {} matches, {}",
        sent.hex(),
        mbps(n, t0.elapsed())
    ))
}

fn download(p: &str, n: u64, seed: u64) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(format!("DOWN {n} {seed}\n").as_bytes())
        .map_err(err("write header"))?;
    let v = wire::recv_verified(&mut s, n, seed).map_err(err("receive"))?;
    let trailer = wire::read_line(&mut s)
        .map_err(err("read trailer"))?
        .ok_or("closed before the server's trailer")?;
    let want = format!("DOWN {n} {}", v.fnv.hex());
    if trailer != want || v.first_bad.is_some() {
        return Err(format!(
            "received {} (fnv {}), server says {trailer:?}",
            v.verdict(),
            v.fnv.hex()
        ));
    }
    Ok(format!(
        "{n} bytes host->guest, fnv {} matches, {}",
        v.fnv.hex(),
        mbps(n, t0.elapsed())
    ))
}

/// Writes in a second thread while reading the echo, so both directions are busy at once.
fn echo(p: &str, n: u64, seed: u64) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(format!("ECHO {n}\n").as_bytes())
        .map_err(err("write header"))?;
    let mut w = s.try_clone().map_err(err("clone"))?;
    let writer = thread::spawn(move || wire::send_generated(&mut w, n, seed));
    let v = wire::recv_verified(&mut s, n, seed).map_err(err("receive echo"));
    let sent = match writer.join() {
        Ok(r) => r.map_err(err("send"))?,
        Err(_) => return Err("writer thread panicked".to_string()),
    };
    let v = v?;
    if v.first_bad.is_some() || v.fnv.hex() != sent.hex() {
        return Err(format!(
            "echo {} (fnv {} vs sent {})",
            v.verdict(),
            v.fnv.hex(),
            sent.hex()
        ));
    }
    Ok(format!(
        "{n} bytes each way at once, fnv {} matches, {}",
        sent.hex(),
        mbps(2 * n, t0.elapsed())
    ))
}

fn parallel(p: &str, count: u32, n: u64) -> CaseResult {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let p = p.to_string();
            thread::spawn(move || echo(&p, n, 1000 + u64::from(i)))
        })
        .collect();
    let mut failures = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(format!("#{i}: {e}")),
            Err(_) => failures.push(format!("#{i}: panicked")),
        }
    }
    if failures.is_empty() {
        Ok(format!(
            "{count} connections x {n} bytes echoed in {} ms",
            t0.elapsed().as_millis()
        ))
    } else {
        Err(failures.join("; "))
    }
}

/// Sends, shuts down its writing side, and expects the reply the server sends
/// only after it saw that EOF. A failure whose reason starts with "reply lost"
/// is the signature of a transport that dropped the half-close (run.sh decides
/// whether that is a known failure).
fn half_close(p: &str, n: u64, seed: u64) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(format!("HALF {seed}\n").as_bytes())
        .map_err(err("write header"))?;
    let sent = wire::send_generated(&mut s, n, seed).map_err(err("send"))?;
    s.shutdown(Shutdown::Write)
        .map_err(err("shutdown(SHUT_WR)"))?;
    s.set_read_timeout(Some(HALF_TIMEOUT))
        .map_err(err("set timeout"))?;
    let line = match wire::read_line(&mut s) {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err(format!(
                "reply lost after shutdown(SHUT_WR): EOF after {} ms, no reply",
                t0.elapsed().as_millis()
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Err(format!(
                "reply lost after shutdown(SHUT_WR): {e} after {} ms",
                t0.elapsed().as_millis()
            ))
        }
        Err(e) => return Err(format!("read reply: {e}")),
    };
    let want = format!("HALF {n} {} ok", sent.hex());
    if line != want {
        return Err(format!("server saw {line:?}, sent {want:?}"));
    }
    let v = wire::recv_verified(&mut s, HALF_REPLY, seed + 1).map_err(err("read reply data"))?;
    if v.first_bad.is_some() {
        return Err(format!("reply data {}", v.verdict()));
    }
    let mut rest = [0u8; 1];
    match s.read(&mut rest) {
        Ok(0) => {}
        Ok(_) => return Err("data after the reply".to_string()),
        Err(e) => return Err(format!("no EOF after the reply: {e}")),
    }
    Ok(format!(
        "sent {n} bytes + EOF, server replied after EOF with {HALF_REPLY} bytes, then EOF, {} ms",
        t0.elapsed().as_millis()
    ))
}
