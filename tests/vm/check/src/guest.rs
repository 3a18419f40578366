//! `vm-check guest --socket PATH [--tcp IP:PORT]`: runs inside the microVM
//! against the forwarded socket the agent bound for the host relay, and with
//! `--tcp` against a guest TCP listener of the relay's `-R` (the same cases,
//! named `tcp-*`). Prints one `VMCHECK: PASS|FAIL name` line per case (the
//! host's run.sh collects them from the console).

use crate::wire::{self, HALF_REPLY};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
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
    /// A guest TCP listener of the relay's `-R` (`IP:PORT`), checked after the socket.
    pub tcp: Option<String>,
    /// How long to wait for the socket to appear.
    pub wait: Duration,
    /// Bytes per direction in the bulk cases.
    pub bytes: u64,
    /// Connections at once in the concurrency case.
    pub parallel: u32,
}

type CaseResult = Result<String, String>;

/// Where the cases connect: a socket file or a TCP address.
#[derive(Clone)]
enum Endpoint {
    Unix(String),
    Tcp(String),
}

/// A connection to an [`Endpoint`].
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Conn> {
        match self {
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        }
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(t),
            Conn::Tcp(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(t),
            Conn::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

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

fn connect(p: &Endpoint, timeout: Duration) -> io::Result<Conn> {
    let s = match p {
        Endpoint::Unix(path) => Conn::Unix(UnixStream::connect(path)?),
        Endpoint::Tcp(addr) => Conn::Tcp(TcpStream::connect(addr)?),
    };
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
    let mut ok = cases("", &Endpoint::Unix(o.socket.clone()), o);
    if let Some(addr) = &o.tcp {
        ok &= tcp_bound(addr, o.wait.saturating_sub(t0.elapsed()));
        ok &= cases("tcp-", &Endpoint::Tcp(addr.clone()), o);
    }
    ok
}

/// Waits for the guest TCP listener (the relay binds it in the same Bind as
/// the socket, so it is there by now unless something is wrong).
fn tcp_bound(addr: &str, wait: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => {
                let detail = format!("{addr} after {} ms", t0.elapsed().as_millis());
                return report("tcp-forward-bound", &Ok(detail));
            }
            Err(e) if t0.elapsed() > wait => {
                let r = Err(format!("{addr}: {e} after {:?}", t0.elapsed()));
                return report("tcp-forward-bound", &r);
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The data cases against `p`, each name prefixed with `prefix`.
fn cases(prefix: &str, p: &Endpoint, o: &GuestOpts) -> bool {
    let name = |n: &str| format!("{prefix}{n}");
    let mut ok = true;
    ok &= report(&name("first-connection"), &ping(p));
    ok &= report(&name("upload-integrity"), &upload(p, o.bytes, 11));
    ok &= report(&name("download-integrity"), &download(p, o.bytes, 22));
    ok &= report(&name("duplex-echo-integrity"), &echo(p, o.bytes, 33));
    ok &= report(
        &name("parallel-connections"),
        &parallel(p, o.parallel, o.bytes / 8),
    );
    ok &= report(&name("half-close"), &half_close(p, 256 * 1024, 55));
    ok &= report(&name("still-serving"), &ping(p));
    ok
}

fn ping(p: &Endpoint) -> CaseResult {
    let t0 = Instant::now();
    let mut s = connect(p, IO_TIMEOUT).map_err(err("connect"))?;
    s.write_all(b"PING\n").map_err(err("write"))?;
    match wire::read_line(&mut s).map_err(err("read reply"))? {
        Some(l) if l == "PONG" => Ok(format!("PONG in {} ms", t0.elapsed().as_millis())),
        Some(l) => Err(format!("unexpected reply {l:?}")),
        None => Err("connection closed without a reply".to_string()),
    }
}

fn upload(p: &Endpoint, n: u64, seed: u64) -> CaseResult {
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

fn download(p: &Endpoint, n: u64, seed: u64) -> CaseResult {
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
fn echo(p: &Endpoint, n: u64, seed: u64) -> CaseResult {
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

fn parallel(p: &Endpoint, count: u32, n: u64) -> CaseResult {
    let t0 = Instant::now();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let p = p.clone();
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
fn half_close(p: &Endpoint, n: u64, seed: u64) -> CaseResult {
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
