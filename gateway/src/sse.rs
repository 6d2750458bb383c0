//! The SSE response: LoopBack's headers and first bytes, then the client's chunks, ending
//! when the client goes or the pod shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::replay::ClientStream;

/// `text/event-stream` with LoopBack's headers. The body ends on `shutdown` (an open SSE
/// body would otherwise hold axum's graceful shutdown forever, axum#2673).
pub fn response(client: ClientStream, retry: Duration, shutdown: CancellationToken) -> Response {
    let head = Bytes::from(format!(
        "{}{}",
        proto::sse::PREAMBLE,
        proto::sse::retry(u64::try_from(retry.as_millis()).unwrap_or(u64::MAX))
    ));
    let chunks = futures::stream::unfold(client, |mut client| async move {
        let chunk = client.next_chunk().await?;
        Some((chunk, client))
    });
    let body = futures::stream::once(async { head })
        .chain(chunks)
        .map(Ok::<_, Infallible>)
        .take_until(shutdown.cancelled_owned());
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
