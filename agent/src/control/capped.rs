//! Every streaming method of a control connection's service, wrapped so that
//! its calls are counted in the connection's [`Books`] and refused with
//! `RESOURCE_EXHAUSTED` beyond a cap (see [`crate::control_caps`]).

use crate::control_caps::{frame, Books};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use ttrpc::r#async::{Service, StreamHandler, StreamInner, TtrpcContext};

/// The streaming methods that read data frames from the host after the
/// request (Accept's results); the others (WatchPorts) read none.
const READS_DATA: &[&str] = &["Accept"];

/// Wraps every streaming method of `services` so that its calls are counted in
/// `books`, and refused with `RESOURCE_EXHAUSTED` beyond a cap.
pub fn cap_streams(services: &mut HashMap<String, Service>, books: &Arc<Books>) {
    for service in services.values_mut() {
        for (name, handler) in service.streams.iter_mut() {
            let capped = Capped {
                inner: Arc::clone(handler),
                books: Arc::clone(books),
                method: name.clone(),
                reads_data: READS_DATA.contains(&name.as_str()),
            };
            *handler = Arc::new(capped);
        }
    }
}

struct Capped {
    inner: Arc<dyn StreamHandler + Send + Sync>,
    books: Arc<Books>,
    method: String,
    reads_data: bool,
}

#[async_trait::async_trait]
impl StreamHandler for Capped {
    async fn handler(
        &self,
        ctx: TtrpcContext,
        mut stream: StreamInner,
    ) -> ttrpc::Result<Option<ttrpc::Response>> {
        match self.books.open_streaming(ctx.mh.stream_id, self.reads_data) {
            Ok(open) => {
                let r = self.inner.handler(ctx, stream).await;
                drop(open);
                r
            }
            Err(refused) => {
                if ctx.mh.flags & frame::NO_DATA == 0 {
                    // ttrpc hands the request's payload over as a first data
                    // message; it must find the stream open to deliver it.
                    let _ = stream.recv().await;
                }
                let refused_calls = &self.books.totals().refused_calls;
                let total = refused_calls.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(pass) = self.books.throttle().allow("streaming call refused") {
                    tracing::warn!(conn = self.books.conn(), method = %self.method, cause = %refused,
                        refused_total = total, suppressed = pass.suppressed,
                        "streaming call refused: RESOURCE_EXHAUSTED");
                }
                let mut resp = ttrpc::Response::new();
                resp.set_status(ttrpc::get_status(
                    ttrpc::Code::RESOURCE_EXHAUSTED,
                    refused.to_string(),
                ));
                Ok(Some(resp))
            }
        }
    }
}
