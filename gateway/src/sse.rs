//! The SSE response: LoopBack's headers and first bytes, then the client's chunks, ending
//! when the client goes or the pod drains.

use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use crate::replay::ClientStream;

/// `text/event-stream` with LoopBack's headers. The body ends when `end` resolves (an open
/// SSE body would otherwise hold axum's graceful shutdown forever, axum#2673). `permit`
/// is this stream's place under `max_connections`, released with the body.
pub fn response(
    client: ClientStream,
    permit: OwnedSemaphorePermit,
    retry: Duration,
    end: impl Future<Output = ()> + Send + 'static,
) -> Response {
    let head = Bytes::from(format!(
        "{}{}",
        proto::sse::PREAMBLE,
        proto::sse::retry(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX))
    ));
    let chunks = futures::stream::unfold((client, permit), |(mut client, permit)| async move {
        let chunk = client.next_chunk().await?;
        Some((chunk, (client, permit)))
    });
    let body = futures::stream::once(async { head })
        .chain(chunks)
        .map(Ok::<_, Infallible>)
        .take_until(end);
    let mut response = Response::new(Body::from_stream(body));
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

/// Resolves at a random moment within `window` after `shutdown`: streams end spread
/// out, so their clients' reconnects do not reach the other pods as one burst.
pub async fn drained(shutdown: CancellationToken, window: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(jitter(window)).await;
}

/// Resolves at `at` (a token's `exp` plus leeway), or never for `None`. A stream that ends
/// here ends cleanly; its client reconnects with a fresh token and `Last-Event-ID`.
pub async fn expired(at: Option<SystemTime>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    // The wall clock decides expiry; the timer runs on the monotonic one.
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left).await;
}

/// Resolves when the first of `a` and `b` does.
pub async fn until_either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    tokio::select! {
        () = a => {}
        () = b => {}
    }
}

/// A uniformly random duration below `window` (std's per-process random hash keys are
/// randomness enough for spreading reconnects).
fn jitter(window: Duration) -> Duration {
    let nanos = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(nanos);
    Duration::from_nanos(hasher.finish() % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_the_window_and_varies() {
        let window = Duration::from_secs(5);
        let samples: Vec<Duration> = (0..200).map(|_| jitter(window)).collect();
        assert!(samples.iter().all(|d| *d < window));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 150);
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
