//! `vmbench serve PATH...`: the host server every path of the VM bench ends
//! at. It listens on each Unix path (vhost-device-vsock's `<socket>_<port>`
//! for guest connections to the host, the relay's forward target for
//! sockfwd) and answers what [`wire`](crate::wire) describes, one thread per
//! connection. Uploads are checked byte by byte here, at native speed.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::pattern::Pattern;
use crate::wire::{DOWNLOAD, ECHO_MIN, UPLOAD, UPLOAD_BAD, UPLOAD_OK};

/// A connection idle this long is given up.
const IDLE: Duration = Duration::from_secs(120);
const CHUNK: usize = 256 * 1024;

/// Binds every path (replacing stale socket files) and serves until killed.
pub fn serve(paths: &[String]) -> Result<(), String> {
    if paths.is_empty() {
        return Err("serve: no socket path given".into());
    }
    let pattern = Arc::new(Pattern::new());
    let mut threads = Vec::new();
    for path in paths {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
        let (pattern, path) = (pattern.clone(), path.clone());
        threads.push(thread::spawn(move || {
            accept_loop(&listener, &path, &pattern)
        }));
    }
    eprintln!("vmbench serve: listening on {}", paths.join(", "));
    for t in threads {
        let _ = t.join();
    }
    Err("serve: every listener stopped".into())
}

fn accept_loop(listener: &UnixListener, path: &str, pattern: &Arc<Pattern>) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                let pattern = pattern.clone();
                let path = path.to_string();
                thread::spawn(move || {
                    if let Err(e) = handle(&conn, &pattern) {
                        eprintln!("vmbench serve: {path}: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("vmbench serve: accept on {path}: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn read_len(mut c: &UnixStream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    c.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Reads until the client closes (its close, not ours, ends a connection, so
/// the figure includes the client's whole exchange).
fn drain(mut c: &UnixStream) {
    let mut sink = [0u8; 512];
    while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
}

fn handle(conn: &UnixStream, pattern: &Pattern) -> Result<(), String> {
    conn.set_read_timeout(Some(IDLE))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(IDLE))
        .map_err(|e| e.to_string())?;
    let mut c = conn;
    let mut first = [0u8; 1];
    match c.read(&mut first) {
        Ok(0) => return Ok(()), // a probe that only checked the path connects
        Ok(_) => {}
        Err(e) => return Err(format!("first byte: {e}")),
    }
    match first[0] {
        b if b >= ECHO_MIN => {
            c.write_all(&[b]).map_err(|e| format!("echo: {e}"))?;
        }
        UPLOAD => {
            let len = read_len(c).map_err(|e| format!("upload length: {e}"))?;
            let ok = receive(c, pattern, len)?;
            c.write_all(&[if ok { UPLOAD_OK } else { UPLOAD_BAD }])
                .map_err(|e| format!("upload answer: {e}"))?;
            if !ok {
                return Err(format!("upload of {len} bytes: wrong bytes"));
            }
        }
        DOWNLOAD => {
            let len = read_len(c).map_err(|e| format!("download length: {e}"))?;
            let mut pos = 0u64;
            while pos < len {
                let want = usize::try_from(len - pos).unwrap_or(CHUNK).min(CHUNK);
                let n = c
                    .write(pattern.chunk(pos, want))
                    .map_err(|e| format!("download at byte {pos}: {e}"))?;
                if n == 0 {
                    return Err(format!("download: wrote 0 at byte {pos}"));
                }
                pos += n as u64;
            }
        }
        other => return Err(format!("unknown request byte {other:#04x}")),
    }
    drain(c);
    Ok(())
}

/// Receives `len` bytes and checks every one; false on a mismatch.
fn receive(mut c: &UnixStream, pattern: &Pattern, len: u64) -> Result<bool, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    let mut ok = true;
    while pos < len {
        let want = usize::try_from(len - pos).unwrap_or(CHUNK).min(CHUNK);
        let n = c
            .read(&mut buf[..want])
            .map_err(|e| format!("upload at byte {pos}: {e}"))?;
        if n == 0 {
            return Err(format!("upload: stream ended after {pos} of {len} bytes"));
        }
        ok &= pattern.matches(pos, &buf[..n]);
        pos += n as u64;
    }
    Ok(ok)
}
