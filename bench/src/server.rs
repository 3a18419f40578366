//! The "host socket" end: a Unix listener in the bench process served by a
//! pool of blocking threads (no per-connection thread spawn, so the direct
//! path's baseline is not inflated by the harness).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::sys::{self, Ctx, Res};

/// How often blocked accepts and reads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Longest a server ever lives or an echo connection stays open.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const CONN_LIFETIME: Duration = Duration::from_secs(15);

/// What the server does with each accepted connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read one byte, write it back, wait for the client's EOF, close.
    Echo,
    /// Read one byte, write it back, keep the connection open (idle).
    Hold,
    /// Hand the connection to the test ([`Server::accept_one`]).
    Accept,
}

/// A listener and its threads; dropping it stops the threads and unlinks the socket.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    held: Arc<Mutex<Vec<UnixStream>>>,
    accepted: Option<mpsc::Receiver<UnixStream>>,
    errors: Arc<AtomicU64>,
}

impl Server {
    /// Binds `path` and starts `threads` accept loops.
    pub fn start(path: &Path, mode: Mode, threads: usize) -> Res<Self> {
        let _ = std::fs::remove_file(path);
        let listener = Arc::new(sys::listen(path, POLL)?);
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let (listener, stop, held, errors, tx) = (
                listener.clone(),
                stop.clone(),
                held.clone(),
                errors.clone(),
                tx.clone(),
            );
            let handle = thread::Builder::new()
                .name(format!("server-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < MAX_LIFETIME {
                        let conn = match listener.accept() {
                            Ok((conn, _)) => conn,
                            Err(e) if sys::is_timeout(&e) => continue,
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        };
                        let ok = match mode {
                            Mode::Echo => echo(&conn, &stop, true).is_ok(),
                            Mode::Hold => match echo(&conn, &stop, false) {
                                Ok(()) => {
                                    held.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
                                    true
                                }
                                Err(_) => false,
                            },
                            Mode::Accept => tx.send(conn).is_ok(),
                        };
                        if !ok {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .ctx("spawn server thread")?;
            handles.push(handle);
        }
        Ok(Self {
            path: path.to_path_buf(),
            stop,
            threads: handles,
            held,
            accepted: (mode == Mode::Accept).then_some(rx),
            errors,
        })
    }

    /// Waits for the next connection ([`Mode::Accept`] only).
    pub fn accept_one(&self, timeout: Duration) -> Res<UnixStream> {
        let rx = self.accepted.as_ref().ok_or("server not in accept mode")?;
        rx.recv_timeout(timeout)
            .map_err(|_| format!("no connection reached the server within {timeout:?}"))
    }

    /// Connections held open so far ([`Mode::Hold`]).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Closes every held connection.
    pub fn release_held(&self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Connections the server failed to serve (accept errors, echo failures).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.release_held();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads into `buf` with the short poll timeout until data, EOF, stop or the deadline.
fn read_polling(
    mut conn: &UnixStream,
    buf: &mut [u8],
    stop: &AtomicBool,
    deadline: Instant,
) -> io::Result<usize> {
    loop {
        match conn.read(buf) {
            Err(e)
                if sys::is_timeout(&e)
                    && Instant::now() < deadline
                    && !stop.load(Ordering::Relaxed) =>
            {
                continue
            }
            other => return other,
        }
    }
}

fn echo(mut conn: &UnixStream, stop: &AtomicBool, wait_eof: bool) -> io::Result<()> {
    conn.set_read_timeout(Some(POLL))?;
    conn.set_write_timeout(Some(CONN_LIFETIME))?;
    let deadline = Instant::now() + CONN_LIFETIME;
    let mut byte = [0u8; 1];
    if read_polling(conn, &mut byte, stop, deadline)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the first byte",
        ));
    }
    conn.write_all(&byte)?;
    if wait_eof {
        let mut sink = [0u8; 64];
        while read_polling(conn, &mut sink, stop, deadline)? != 0 {}
    }
    Ok(())
}
