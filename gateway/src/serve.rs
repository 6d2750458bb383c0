//! The accept loop, and SSE streams written without hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for each connection's whole
//! life: with an idle SSE stream that is most of what a connection costs (a bare axum SSE
//! server measured 19 KiB per idle stream here). So a connection whose first request is a
//! stream (`GET /api/{c}/change-stream`, `GET /events`) is handled here: its request head
//! is read into a small buffer and parsed with httparse, the request goes through the same
//! router as every other (auth, filters, errors), and an event-stream answer is written by
//! this module with chunked framing, several queued events per write. Afterwards the
//! connection holds its socket, its [`crate::replay::ClientStream`] and nothing else. The
//! stream's end closes the connection (EventSource reconnects with a new request anyway).
//!
//! Every other connection (REST, health, metrics, `POST` change streams, HTTP/1.0,
//! HTTP/2, anything unusual) is handed to hyper with the bytes already read, unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Version, header};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::listener::{TimedListener, WriteDeadline};

/// First read of a request head; most stream requests fit.
const HEAD_START: usize = 1024;
/// Most headers parsed on the fast path; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Longest wait for a request head to arrive (slow-loris).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Most queued events written in one chunk.
const BATCH: usize = 64;

type Io = WriteDeadline<TcpStream>;

/// Serves `app` on `listener` until `shutdown`: stops accepting, lets hyper's connections
/// finish their requests; stream connections end with their body (which ends on shutdown,
/// spread over the drain window). Connection tasks run on `tracker`.
pub async fn serve(
    mut listener: TimedListener,
    app: Router,
    max_head: usize,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let io = tokio::select! {
            () = shutdown.cancelled() => break,
            (io, _peer) = axum::serve::Listener::accept(&mut listener) => io,
        };
        let app = app.clone();
        let watcher = graceful.watcher();
        tracker.spawn(async move {
            if let Err(e) = connection(io, app, max_head, watcher).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Closed at once: new connections are refused (and retried elsewhere), not queued.
    drop(listener);
    graceful.shutdown().await;
}

/// One connection. A stream connection lives for hours in the state after its answer
/// has started, so everything before that (reading the head, routing) and the whole of a
/// hyper connection run in a boxed future of their own: the task keeps only the space the
/// long-lived state needs, not the largest of all of them.
fn connection(
    io: Io,
    app: Router,
    max_head: usize,
    graceful: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = io::Result<()>> + Send {
    let start = Box::pin(start(io, app, max_head, graceful));
    async move {
        match start.await? {
            Some((io, body)) => stream(io, body).await,
            None => Ok(()),
        }
    }
}

/// Reads the request head and answers it: an event stream's connection and body, which
/// [`stream`] writes from here; `None` when the connection is done (hyper served it, or
/// the answer was not a stream).
async fn start(
    mut io: Io,
    app: Router,
    max_head: usize,
    graceful: hyper_util::server::graceful::Watcher,
) -> io::Result<Option<(Io, Body)>> {
    let mut head = BytesMut::with_capacity(HEAD_START);
    let parsed = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut io, &mut head, max_head))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    match parsed.and_then(|len| stream_request(&head[..len])) {
        Some(request) => {
            // Streams end with their body (spread over the drain window); only hyper's
            // connections are waited for by the graceful shutdown.
            drop(graceful);
            drop(head);
            Ok(answer(&mut io, app, request).await?.map(|body| (io, body)))
        }
        None => {
            hyper(io, head.freeze(), app, graceful).await?;
            Ok(None)
        }
    }
}

/// The connection served by hyper, `prefix` being the bytes already read from it (boxed:
/// hyper's connection state is large, and stream connections never need it).
fn hyper(
    io: Io,
    prefix: Bytes,
    app: Router,
    graceful: hyper_util::server::graceful::Watcher,
) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send>> {
    let io = TokioIo::new(Prefixed { prefix, io });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app));
    let served = graceful.watch(conn.into_owned());
    Box::pin(async move { served.await.map_err(io::Error::other) })
}

/// Reads until the request head is complete; its length, or `None` when the bytes read
/// are not one (yet) within `max_head` (hyper then decides).
async fn read_head(io: &mut Io, buf: &mut BytesMut, max_head: usize) -> io::Result<Option<usize>> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(HEAD_START));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(buf) {
            Ok(httparse::Status::Complete(len)) => return Ok(Some(len)),
            Ok(httparse::Status::Partial) if buf.len() < max_head => {}
            // Too long, too many headers or malformed: hyper answers.
            _ => return Ok(None),
        }
    }
}

/// The request, if `head` is a plain HTTP/1.1 `GET` of a stream with no body.
fn stream_request(head: &[u8]) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(head).ok()?;
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    let path = target.split('?').next().unwrap_or("");
    let is_stream =
        path == "/events" || (path.starts_with("/api/") && path.ends_with("/change-stream"));
    if !is_stream {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A GET stream request has no body; one that says otherwise goes to hyper.
        if name == header::CONTENT_LENGTH && h.value != b"0" || name == header::TRANSFER_ENCODING {
            return None;
        }
        request = request.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

/// Routes `request` and writes the answer's head; the body of an event stream, which the
/// caller writes, or `None` when the whole answer (an error, a preflight) has been written.
async fn answer(io: &mut Io, app: Router, request: Request<Body>) -> io::Result<Option<Body>> {
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let is_stream = response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (parts, body) = response.into_parts();
    let mut out = BytesMut::with_capacity(512);
    write_head(&mut out, &parts);
    if !is_stream {
        let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
        put_header(
            &mut out,
            "content-length",
            bytes.len().to_string().as_bytes(),
        );
        out.put_slice(b"connection: close\r\n\r\n");
        out.put_slice(&bytes);
        io.write_all(&out).await?;
        io.shutdown().await?;
        return Ok(None);
    }
    out.put_slice(b"transfer-encoding: chunked\r\n\r\n");
    io.write_all(&out).await?;
    Ok(Some(body))
}

/// Writes an event stream's `body` as chunks until it ends or the client goes.
async fn stream(mut io: Io, mut body: Body) -> io::Result<()> {
    let mut batch = Vec::new();
    // The read side is watched too: a client that closes is gone at once, not at the next
    // heartbeat (what hyper does). Bytes it sends after its request are ignored.
    let mut probe = [0_u8; 16];
    loop {
        let first = tokio::select! {
            data = next_data(&mut body) => match data? {
                Some(data) => data,
                None => break,
            },
            read = io.read(&mut probe) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        batch.push(first);
        // Whatever else is ready goes in the same write.
        while batch.len() < BATCH {
            match next_data(&mut body).now_or_never() {
                Some(Ok(Some(more))) => batch.push(more),
                Some(Err(e)) => return Err(e),
                _ => break,
            }
        }
        io.write_all(&chunk(&batch)).await?;
        batch.clear();
    }
    io.write_all(b"0\r\n\r\n").await?;
    io.shutdown().await
}

/// The next data frame of `body`; `None` at its end.
async fn next_data(body: &mut Body) -> io::Result<Option<Bytes>> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// One HTTP/1.1 chunk holding `parts` back to back.
fn chunk(parts: &[Bytes]) -> Bytes {
    let len: usize = parts.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(len + 20);
    out.put_slice(format!("{len:x}\r\n").as_bytes());
    for part in parts {
        out.put_slice(part);
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Status line and headers of `parts`, without the final blank line.
fn write_head(out: &mut BytesMut, parts: &axum::http::response::Parts) {
    let status = parts.status;
    out.put_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        put_header(out, name.as_str(), value.as_bytes());
    }
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    put_header(out, "date", date.as_bytes());
}

fn put_header(out: &mut BytesMut, name: &str, value: &[u8]) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// An IO that yields `prefix` before reading from `io`: hands a connection to hyper with
/// the bytes this module already read.
struct Prefixed {
    prefix: Bytes,
    io: Io,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let taken = self.prefix.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_get_stream_requests_take_the_fast_path() {
        let get = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        };
        assert!(
            stream_request(get("/api/MyModels/change-stream?_format=event-stream").as_bytes())
                .is_some()
        );
        assert!(stream_request(get("/events?topic=A&topic=B").as_bytes()).is_some());
        assert!(stream_request(get("/api/MyModels").as_bytes()).is_none());
        assert!(stream_request(get("/healthz").as_bytes()).is_none());
        let post = "POST /api/A/change-stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        assert!(stream_request(post.as_bytes()).is_none());
        let old = "GET /events?topic=A HTTP/1.0\r\n\r\n";
        assert!(stream_request(old.as_bytes()).is_none());
        let body = "GET /events?topic=A HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert!(stream_request(body.as_bytes()).is_none());
    }

    /// A stream connection's task lives for hours in its streaming state; the future it
    /// runs must not reserve room for routing or hyper (it was 2,424 bytes when it did).
    #[tokio::test]
    async fn a_connection_task_reserves_only_the_streaming_state() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let stalled = prometheus::IntCounter::new("stalled", "test").unwrap();
        let io = WriteDeadline::new(accepted.unwrap().0, Duration::from_secs(30), stalled);
        let graceful = GracefulShutdown::new();
        let task = connection(io, Router::new(), 8192, graceful.watcher());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 768, "the connection future is {size} bytes");
    }

    #[test]
    fn chunks_frame_several_events_as_one() {
        let c = chunk(&[
            Bytes::from_static(b"id: 1\n\n"),
            Bytes::from_static(b":\n\n"),
        ]);
        assert_eq!(&c[..], b"a\r\nid: 1\n\n:\n\n\r\n");
    }
}
