//! What the relay's fake-agent tests share: the bound on every wait, and the
//! client's side of one forwarded connection.

use sockfwd_proto::transport::Stream;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// The bound on every wait: long, as only a hang should hit it.
pub const WAIT: Duration = Duration::from_secs(10);

/// Sends `payload` through `client`, half-closes, and reads the whole answer.
pub async fn exchange(mut client: Stream, payload: &[u8]) -> Vec<u8> {
    client.write_all(payload).await.unwrap();
    client.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(WAIT, client.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

/// Waits (polling every 10 ms, up to [`WAIT`]) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}
