//! The control channel to the guest's `vmbench guest`: it dials the host
//! (CID 2, [`CONTROL_PORT`]), which vhost-device-vsock turns into a
//! connection to `<hybrid socket>_<port>`, where the bench listens. Commands
//! are single lines, answers `ok key=value...` or `err message` (see
//! `bench/vmbench/src/guest.rs`). The channel is idle while a figure runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::{Ctx, Res};

/// Host port the guest dials for commands (high: see `RAW_PORT`'s comment).
pub const CONTROL_PORT: u32 = 2_000_000_100;

/// One answer's `key=value` fields; `first_error=` takes the rest of the line.
#[derive(Debug, Default)]
pub struct Reply {
    fields: HashMap<String, String>,
    /// The first failure the guest saw, if it reported one.
    pub first_error: Option<String>,
}

impl Reply {
    fn parse(text: &str) -> Self {
        let (head, first_error) = match text.split_once("first_error=") {
            Some((h, e)) => (h, Some(e.trim().to_string())),
            None => (text, None),
        };
        let fields = head
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            fields,
            first_error,
        }
    }

    /// A field as text.
    pub fn text(&self, key: &str) -> Res<&str> {
        self.fields
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| format!("guest answer without {key}"))
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Res<f64> {
        let v = self.text(key)?;
        v.parse().with_ctx(|| format!("guest answer {key}={v}"))
    }
}

/// The connected control channel.
pub struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    /// Waits up to `timeout` for the guest to dial in on `listener`, calling
    /// `alive` meanwhile (it fails once QEMU has exited).
    pub fn accept(
        listener: &UnixListener,
        timeout: Duration,
        alive: impl Fn() -> Res<()>,
    ) -> Res<Self> {
        listener.set_nonblocking(true).ctx("control listener")?;
        let start = Instant::now();
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("control: accept: {e}")),
            }
            alive()?;
            if start.elapsed() > timeout {
                return Err(format!(
                    "the guest did not dial the control port within {timeout:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        };
        conn.set_nonblocking(false).ctx("control")?;
        let writer = conn.try_clone().ctx("control")?;
        Ok(Self {
            reader: BufReader::new(conn),
            writer,
        })
    }

    /// Sends one command and waits up to `timeout` for its answer.
    pub fn call(&mut self, command: &str, timeout: Duration) -> Res<Reply> {
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .with_ctx(|| format!("control: send {command:?}"))?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .ctx("control")?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_ctx(|| format!("control: answer to {command:?} (waited up to {timeout:?})"))?;
        if n == 0 {
            return Err(format!(
                "control: the guest closed the channel during {command:?}"
            ));
        }
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("ok") {
            Ok(Reply::parse(rest))
        } else if let Some(e) = line.strip_prefix("err ") {
            Err(format!("guest, {command:?}: {e}"))
        } else {
            Err(format!(
                "control: unexpected answer {line:?} to {command:?}"
            ))
        }
    }
}

/// Binds the control listener where vhost-device-vsock looks for host port
/// [`CONTROL_PORT`].
pub fn listen(uds: &Path) -> Res<UnixListener> {
    let path = super::host_port_path(uds, CONTROL_PORT);
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).with_ctx(|| format!("bind {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_the_error_text_whole() {
        let r = Reply::parse(" n=3 p50_us=812.5 first_error=connect: Connection reset by peer");
        assert_eq!(r.num("n").unwrap(), 3.0);
        assert_eq!(r.num("p50_us").unwrap(), 812.5);
        assert_eq!(
            r.first_error.as_deref(),
            Some("connect: Connection reset by peer")
        );
        r.text("p99_us").unwrap_err();
    }
}
