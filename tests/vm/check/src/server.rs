//! `vm-check serve PATH` and `vm-check serve-tcp IP:PORT`: the host server the
//! relay forwards the guest's connections to, on a Unix socket (`--forward`)
//! or on TCP (`-R` to a host TCP target; port 0 picks one, printed as
//! `serve: listening on IP:PORT`). One thread per connection; every
//! connection logs one line.

use crate::wire::{self, Fnv, Verifier, CHUNK, HALF_REPLY};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Per-read/-write deadline: a stalled connection ends its own thread, never the server.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves the Unix socket `path` until killed.
pub fn serve(path: &str) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    println!("serve: listening on {path}");
    accept_each(listener.incoming(), |s: &UnixStream| {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))
    })
}

/// Serves TCP at `addr` (port 0: any) until killed.
pub fn serve_tcp(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("serve: listening on {}", listener.local_addr()?);
    accept_each(listener.incoming(), |s: &TcpStream| {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))
    })
}

/// One thread per accepted connection, each with its deadlines set by `prepare`.
fn accept_each<S: Read + Write + Send + 'static>(
    incoming: impl Iterator<Item = io::Result<S>>,
    prepare: fn(&S) -> io::Result<()>,
) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    for conn in incoming {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                println!("serve: accept: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        thread::spawn(move || {
            let t0 = Instant::now();
            let outcome = prepare(&conn)
                .and_then(|()| handle(conn))
                .unwrap_or_else(|e| format!("error: {e}"));
            println!(
                "serve: conn {id}: {outcome} ({} ms)",
                t0.elapsed().as_millis()
            );
        });
    }
    Ok(())
}

fn parse(parts: &[&str], i: usize) -> io::Result<u64> {
    parts
        .get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header arguments"))
}

fn handle(mut s: impl Read + Write) -> io::Result<String> {
    let Some(line) = wire::read_line(&mut s)? else {
        return Ok("closed before a header".to_string());
    };
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.first().copied() {
        Some("PING") => {
            s.write_all(b"PONG\n")?;
            Ok("PING -> PONG".to_string())
        }
        Some("UP") => {
            let (n, seed) = (parse(&parts, 1)?, parse(&parts, 2)?);
            let v = wire::recv_verified(&mut s, n, seed)?;
            let reply = format!("UP {} {} {}\n", v.count, v.fnv.hex(), v.verdict());
            s.write_all(reply.as_bytes())?;
            Ok(format!("UP {n}: saw {}", reply.trim_end()))
        }
        Some("DOWN") => {
            let (n, seed) = (parse(&parts, 1)?, parse(&parts, 2)?);
            let fnv = wire::send_generated(&mut s, n, seed)?;
            s.write_all(format!("DOWN {n} {}\n", fnv.hex()).as_bytes())?;
            Ok(format!("DOWN {n}: sent fnv {}", fnv.hex()))
        }
        Some("ECHO") => {
            let n = parse(&parts, 1)?;
            let mut buf = vec![0u8; CHUNK];
            let mut done = 0u64;
            let mut fnv = Fnv::default();
            while done < n {
                let want = usize::try_from((n - done).min(CHUNK as u64)).unwrap_or(CHUNK);
                let got = s.read(&mut buf[..want])?;
                if got == 0 {
                    return Ok(format!("ECHO {n}: EOF after {done} bytes"));
                }
                fnv.update(&buf[..got]);
                s.write_all(&buf[..got])?;
                done += got as u64;
            }
            Ok(format!("ECHO {n}: echoed, fnv {}", fnv.hex()))
        }
        Some("HALF") => {
            let seed = parse(&parts, 1)?;
            // read to EOF: the reply below is sent only once the client's
            // shutdown(SHUT_WR) has arrived here as an EOF
            let mut v = Verifier::new(seed);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let got = s.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                v.feed(&buf[..got]);
            }
            let line = format!("HALF {} {} {}\n", v.count, v.fnv.hex(), v.verdict());
            s.write_all(line.as_bytes())?;
            let fnv = wire::send_generated(&mut s, HALF_REPLY, seed + 1)?;
            Ok(format!(
                "HALF: EOF seen after {} bytes ({}), replied + {HALF_REPLY} bytes fnv {}",
                v.count,
                v.verdict(),
                fnv.hex()
            ))
        }
        _ => Ok(format!("unknown header {line:?}")),
    }
}
