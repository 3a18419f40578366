//! The copy path's machinery: read buffers shared by every connection of a
//! thread, lent to a connection only while its destination has not taken
//! what was read into one.
//!
//! Each step is synchronous, within one poll of the task: take a buffer from
//! the thread's pool, read into it, write to the destination without waiting,
//! and give the buffer back. Only when the destination did not take it all
//! does the connection keep the buffer (no copy) until the rest is written.
//! Nothing of a buffer lives in an idle connection's future, and a busy one
//! neither allocates nor copies twice per read.
//!
//! A read that returns less than it asked for drained the socket: its
//! readiness is cleared then, so the next step waits for the poller instead of
//! asking the kernel again for an `EAGAIN` (tokio's own sockets do the same).
//! The same goes for a write that the destination did not take whole.

use crate::transport::Stream;
use std::cell::RefCell;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// Buffers a thread keeps for reuse; more are allocated while connections
/// hold theirs, and freed when they come back to a full pool.
const POOL_MAX: usize = 4;

thread_local! {
    /// Read buffers of every copy on this thread (the daemons run one).
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the thread's pool, at least `len` bytes long.
fn take_buffer(len: usize) -> Vec<u8> {
    let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_default();
    if buf.len() < len {
        buf.resize(len, 0);
    }
    buf
}

/// Returns a buffer to the thread's pool (or frees it if the pool is full).
fn give_back(buf: Vec<u8>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Writes without waiting; a full socket is 0 bytes written, not an error.
pub(crate) fn write_now(dst: &Stream, buf: &[u8]) -> io::Result<usize> {
    match dst.try_write(buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// What one step did.
pub(crate) enum Flow {
    /// Read from the source and offered it to the destination.
    Moved {
        /// Bytes to count as moved (payload, not frame headers).
        counted: usize,
        /// The read was short: the source is drained for now.
        drained: bool,
        /// The bytes of the buffer the destination did not take (empty if it
        /// took them all); the destination is full if not empty.
        rest: Range<usize>,
    },
    /// This direction is done once `rest` of the buffer is written.
    End {
        /// Bytes to count as moved.
        counted: usize,
        /// As in [`Flow::Moved`].
        rest: Range<usize>,
    },
}

/// Runs `step` on a buffer of `len` bytes (read `src` into it, write to
/// `dst` without waiting) each time both sockets are ready, until it says
/// [`Flow::End`]; what `dst` did not take is written before the next step.
/// The bytes counted are added to `moved` as each step reads them (an idle
/// watch reads it meanwhile).
pub(crate) async fn pump(
    src: &Stream,
    dst: &Stream,
    len: usize,
    moved: &AtomicU64,
    mut step: impl FnMut(&mut [u8]) -> io::Result<Flow>,
) -> io::Result<()> {
    loop {
        // Reading only once the destination has room keeps the buffer in
        // the pool whenever the readiness is right.
        let mut out = dst.writable().await?;
        let mut inn = src.readable().await?;
        let mut buf = take_buffer(len);
        let flow = inn.try_io(|_| step(&mut buf[..len]));
        let (rest, end) = match flow {
            Ok(Ok(Flow::End { counted, rest })) => {
                moved.fetch_add(counted as u64, Ordering::Relaxed);
                (rest, true)
            }
            Ok(Ok(Flow::Moved {
                counted,
                drained,
                rest,
            })) => {
                moved.fetch_add(counted as u64, Ordering::Relaxed);
                if drained {
                    inn.clear_ready();
                }
                if !rest.is_empty() {
                    out.clear_ready();
                }
                (rest, false)
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => (0..0, false),
        };
        drop((out, inn));
        if rest.len() >= len / 4 {
            // Much is left: the connection keeps the buffer meanwhile.
            dst.write_all(&buf[rest]).await?;
            give_back(buf);
        } else if !rest.is_empty() {
            // A little is left: a copy of it, so that a connection waiting
            // on a slow reader holds a small buffer, not a whole one.
            let small = buf[rest].to_vec();
            give_back(buf);
            dst.write_all(&small).await?;
        } else {
            give_back(buf);
        }
        if end {
            return Ok(());
        }
    }
}

/// Copies `src` to `dst` until EOF (reads of up to `read_size`), then
/// half-closes `dst`. The bytes moved are added to `moved` as they go.
pub(crate) async fn copy_until_eof(
    src: &Stream,
    dst: &Stream,
    read_size: usize,
    moved: &AtomicU64,
) -> io::Result<()> {
    let read_size = read_size.max(1);
    pump(src, dst, read_size, moved, |buf| {
        let n = src.try_read(buf)?;
        if n == 0 {
            return Ok(Flow::End {
                counted: 0,
                rest: 0..0,
            });
        }
        let w = write_now(dst, &buf[..n])?;
        Ok(Flow::Moved {
            counted: n,
            drained: n < buf.len(),
            rest: w..n,
        })
    })
    .await?;
    dst.shutdown_write()
}
