//! The SSE response: LoopBack's headers and first bytes, then the client's chunks, ending
//! when the client goes or the pod drains.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::client::ClientStream;

/// `text/event-stream` with LoopBack's headers. The body ends at `end` (an open SSE body
/// would otherwise hold axum's graceful shutdown forever, axum#2673). `permit` is this
/// stream's place under `max_connections`, released with the body.
pub fn response(
    client: ClientStream,
    permit: OwnedSemaphorePermit,
    retry: Duration,
    end: End,
) -> Response {
    let head = Bytes::from(format!(
        "{}{}",
        proto::sse::PREAMBLE,
        proto::sse::retry(millis(retry))
    ));
    let body = SseBody {
        head: Some(head),
        client,
        _permit: permit,
        end,
        ended: false,
    };
    with_stream_headers(Response::new(Body::from_stream(body)))
}

/// A stream that cannot be served right now, answered so that EventSource tries again
/// (it closes for good on any non-200 answer): `200`, LoopBack's headers and `:ok`, then
/// `retry:` (the browser's wait before it reconnects) and the end of the response.
/// `position`, for a client that had none, is an `id:` it resumes from; a client that
/// came with `Last-Event-ID` gets none and keeps its own.
pub fn come_back(retry: Duration, position: Option<&str>) -> Response {
    let mut body = String::from(proto::sse::PREAMBLE);
    if let Some(id) = position {
        body.push_str(&proto::sse::position_frame(id));
    }
    body.push_str(&proto::sse::retry(millis(retry)));
    with_stream_headers(Response::new(Body::from(body)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// LoopBack's stream headers, and the mark that makes the connection layer write the body
/// itself, as chunks ([`crate::conn::EventStream`]).
fn with_stream_headers(mut response: Response) -> Response {
    response.extensions_mut().insert(crate::conn::EventStream);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The body of an SSE response: the head bytes, then the client's chunks, until `end`.
///
/// A plain struct rather than a combinator chain over an `async` block: the response body
/// is boxed and lives as long as the stream, so its size is what every idle client costs.
struct SseBody {
    head: Option<Bytes>,
    client: ClientStream,
    /// This stream's place under `max_connections`, released with the body.
    _permit: OwnedSemaphorePermit,
    end: End,
    ended: bool,
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.end.poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(head)));
        }
        self.client.poll_chunk(cx).map(|chunk| chunk.map(Ok))
    }
}

/// When a stream ends on its own: at a random moment within the drain window after the
/// pod starts shutting down (or ends its streams because it is cut off from Redis alone,
/// [`crate::partition`]) (so its clients' reconnects do not reach the other pods as one
/// burst), or when the client's token expires (its `exp` plus leeway; the client
/// reconnects with a fresh token and `Last-Event-ID`).
///
/// A hand-written future rather than an `async` block: every stream holds one for its
/// whole life, and timers exist only once they are needed (the drain timer after the
/// shutdown, the expiry timer for clients with a token).
#[derive(Debug)]
pub struct End {
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    window: Duration,
    /// Armed once the shutdown has begun.
    drain: Option<Pin<Box<Sleep>>>,
    expiry: Option<Pin<Box<Sleep>>>,
}

impl End {
    pub fn new(
        shutdown: CancellationToken,
        window: Duration,
        access_ends: Option<SystemTime>,
    ) -> Self {
        // The wall clock decides expiry; the timer runs on the monotonic one.
        let expiry = access_ends.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Box::pin(tokio::time::sleep(left))
        });
        Self {
            cancelled: Box::pin(shutdown.cancelled_owned()),
            window,
            drain: None,
            expiry,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            tracing::info!("access token expired; ending the stream");
            return Poll::Ready(());
        }
        if self.drain.is_none() {
            if self.cancelled.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.drain = Some(Box::pin(tokio::time::sleep(service::jitter::below(
                self.window,
            ))));
        }
        match &mut self.drain {
            Some(drain) => drain.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open stream holds one body for its whole life: its size is most of what an
    /// idle client costs (docs/BENCHMARKS.md, "Memory per idle SSE connection"). The
    /// combinator chain this replaced was 1,832 bytes plus a 712-byte end future; with a
    /// copy of every metric series and of the history reader in each client it was 480
    /// (280 with shared handles).
    #[test]
    fn an_idle_stream_body_stays_small() {
        let body = std::mem::size_of::<SseBody>();
        assert!(body <= 320, "SseBody is {body} bytes");
        let end = std::mem::size_of::<End>();
        assert!(end <= 64, "End is {end} bytes");
    }
}
