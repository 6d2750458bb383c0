//! The accept loop, and SSE streams written without hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for each connection's whole
//! life: with an idle SSE stream that is most of what a connection costs (a bare axum SSE
//! server measured 19 KiB per idle stream here). So a connection whose first request is a
//! stream (`GET /api/{c}/change-stream`, `GET /events`) is handled here: its request head
//! is read into a small buffer and parsed with httparse, the request goes through the same
//! router as every other (auth, filters, errors), and an event-stream answer is written by
//! this module with chunked framing, several queued events per write. Afterwards the
//! connection holds its socket, its [`crate::client::ClientStream`] and nothing else. The
//! stream's end closes the connection (EventSource reconnects with a new request anyway).
//!
//! Every other connection (REST, health, metrics, `POST` change streams, HTTP/1.0,
//! HTTP/2, anything unusual) is handed to hyper with the bytes already read, unchanged.
//!
//! A first request whose head is malformed, too large, or badly framed
//! ([`service::framing`]: `Transfer-Encoding: chunked, chunked`, a bad `Content-Length`,
//! ...) is answered here, in LoopBack's JSON shape with `connection: close`: hyper would
//! answer it with an empty 400 or 431 of its own. (Later requests on a kept-alive hyper
//! connection are parsed by hyper alone; the request middleware catches what it lets
//! through, [`service::limits::check_request`].)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use service::limits::RequestLimits;
use service::{ApiError, FramingError};
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
/// Most header fields hyper takes in a request (its default `max_headers`); a head with
/// more is refused here with a 431.
const HYPER_MAX_HEADERS: usize = 100;
/// Room in a head beyond the URL and header limits: the request line's method and
/// version, `: ` and CRLF around each of up to [`HYPER_MAX_HEADERS`] fields.
const HEAD_OVERHEAD: usize = 1024;
/// How an HTTP/2 prior-knowledge connection starts (its preface, `PRI * HTTP/2.0`);
/// httparse refuses it as a bad version, and it goes to hyper.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2";
/// After a refusal, the client's unread bytes are read and dropped for at most this long
/// (or [`LINGER_BYTES`]) before the socket closes: closing with unread data sends a
/// reset, which can destroy the answer before the client reads it.
const LINGER_TIME: Duration = Duration::from_secs(1);
/// Most bytes read and dropped after a refusal.
const LINGER_BYTES: usize = 256 * 1024;
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
    limits: RequestLimits,
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
            if let Err(e) = connection(io, app, limits, watcher).await {
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
    limits: RequestLimits,
    graceful: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = io::Result<()>> + Send {
    let start = Box::pin(start(io, app, limits, graceful));
    async move {
        match start.await? {
            Some((io, body)) => stream(io, body).await,
            None => Ok(()),
        }
    }
}

/// Reads the request head and answers it: an event stream's connection and body, which
/// [`stream`] writes from here; `None` when the connection is done (hyper served it, the
/// answer was not a stream, or the head was refused).
async fn start(
    mut io: Io,
    app: Router,
    limits: RequestLimits,
    graceful: hyper_util::server::graceful::Watcher,
) -> io::Result<Option<(Io, Body)>> {
    let mut head = BytesMut::with_capacity(HEAD_START);
    let parsed = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut io, &mut head, limits))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    let request = match parsed {
        Head::Complete(len) => stream_request(&head[..len]),
        Head::Hyper => None,
        Head::Refused(error) => {
            drop(graceful);
            drop(head);
            tracing::debug!(%error, "request head refused");
            write_whole(&mut io, error.into_response()).await?;
            linger(&mut io).await;
            return Ok(None);
        }
    };
    match request {
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

/// What the first bytes of a connection are.
#[derive(Debug)]
enum Head {
    /// A complete HTTP/1 request head of this many bytes, soundly framed.
    Complete(usize),
    /// Not a head this module reads (HTTP/2 prior knowledge; a client gone mid-head):
    /// hyper decides.
    Hyper,
    /// The client's error, answered here.
    Refused(ApiError),
}

/// Reads until the bytes read are a complete head, or something else ([`examine`]).
async fn read_head(io: &mut Io, buf: &mut BytesMut, limits: RequestLimits) -> io::Result<Head> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(HEAD_START));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(Head::Hyper);
        }
        if let Some(head) = examine(buf, limits) {
            return Ok(head);
        }
    }
}

/// What `buf`, the first bytes of a connection, holds; `None` if it needs more bytes.
/// Stricter than hyper's own parser wherever they differ, so that hyper, handed a head
/// that passed, never answers it with a bare error.
fn examine(buf: &[u8], limits: RequestLimits) -> Option<Head> {
    if buf.starts_with(H2_PREFACE) {
        return Some(Head::Hyper);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let verdict = match examine_with(buf, limits, &mut headers) {
        // Rare: more fields than the fast path parses, but perhaps as many as hyper takes.
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = vec![httparse::EMPTY_HEADER; HYPER_MAX_HEADERS];
            examine_with(buf, limits, &mut headers)
        }
        verdict => verdict,
    };
    match verdict {
        Ok(head) => head,
        Err(httparse::Error::TooManyHeaders) => Some(Head::Refused(ApiError::TooManyHeaders {
            max: HYPER_MAX_HEADERS,
        })),
        Err(e) => Some(Head::Refused(FramingError::Head(e.to_string()).into())),
    }
}

fn examine_with<'b>(
    buf: &'b [u8],
    limits: RequestLimits,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Head>, httparse::Error> {
    let max_head = limits
        .max_url_bytes
        .saturating_add(limits.max_header_bytes)
        .saturating_add(HEAD_OVERHEAD);
    let mut request = httparse::Request::new(headers);
    let len = match request.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() < max_head => return Ok(None),
        // Over every limit without an end: the target itself if the request line has
        // not ended either.
        httparse::Status::Partial => {
            return Ok(Some(Head::Refused(if buf.contains(&b'\n') {
                ApiError::HeadersTooLarge {
                    limit: limits.max_header_bytes,
                }
            } else {
                ApiError::UriTooLong {
                    limit: limits.max_url_bytes,
                }
            })));
        }
    };
    // httparse takes some targets the router's Uri does not (hyper: a bare 400).
    if request
        .path
        .is_none_or(|target| target.parse::<Uri>().is_err())
    {
        return Ok(Some(Head::Refused(FramingError::Target.into())));
    }
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = request.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    Ok(Some(match service::framing::check(version, fields) {
        Ok(()) => Head::Complete(len),
        Err(e) => Head::Refused(e.into()),
    }))
}

/// Reads and drops what the client still sends, within [`LINGER_TIME`] and
/// [`LINGER_BYTES`], so the answer already written is not lost to a reset.
async fn linger(io: &mut Io) {
    let mut scratch = [0_u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
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
    if !is_stream {
        write_whole(io, response).await?;
        return Ok(None);
    }
    let (parts, body) = response.into_parts();
    let mut out = BytesMut::with_capacity(512);
    write_head(&mut out, &parts);
    out.put_slice(b"transfer-encoding: chunked\r\n\r\n");
    io.write_all(&out).await?;
    Ok(Some(body))
}

/// Writes a whole answer (not a stream) and closes the connection's write side.
async fn write_whole(io: &mut Io, response: Response) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    let mut out = BytesMut::with_capacity(512);
    write_head(&mut out, &parts);
    let bytes = body.collect().await.map_err(io::Error::other)?.to_bytes();
    put_header(
        &mut out,
        "content-length",
        bytes.len().to_string().as_bytes(),
    );
    out.put_slice(b"connection: close\r\n\r\n");
    out.put_slice(&bytes);
    io.write_all(&out).await?;
    io.shutdown().await
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

    fn refused(head: &str) -> (u16, String) {
        match examine(head.as_bytes(), RequestLimits::default()) {
            Some(Head::Refused(error)) => {
                let text = error.to_string();
                (error.into_response().status().as_u16(), text)
            }
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn sound_heads_go_on_and_h2_goes_to_hyper() {
        let limits = RequestLimits::default();
        let complete = |head: &str| match examine(head.as_bytes(), limits) {
            Some(Head::Complete(len)) => assert_eq!(len, head.find("\r\n\r\n").unwrap() + 4),
            other => panic!("{head:?}: {other:?}"),
        };
        complete("GET /events?topic=A HTTP/1.1\r\nHost: x\r\n\r\n");
        complete("GET /healthz HTTP/1.0\r\n\r\n");
        complete("POST /api/A HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}");
        let many: String = (0..80).map(|i| format!("x-{i}: v\r\n")).collect();
        complete(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        for partial in ["", "GET /events HTTP/1.1\r\nHost", "PRI * HTTP/"] {
            assert!(examine(partial.as_bytes(), limits).is_none(), "{partial:?}");
        }
        assert!(matches!(
            examine(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", limits),
            Some(Head::Hyper)
        ));
    }

    #[test]
    fn bad_heads_are_refused_here() {
        let post = |headers: &str| format!("POST /api/A/change-stream HTTP/1.1\r\n{headers}\r\n");
        for (head, status, text) in [
            (
                post("Transfer-Encoding: chunked, chunked\r\n"),
                400,
                "chunked more than once",
            ),
            (
                post("Transfer-Encoding: gzip\r\n"),
                400,
                "ends with chunked",
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                400,
                "HTTP/1.0",
            ),
            (post("Content-Length: 1x\r\n"), 400, "Content-Length"),
            (
                post("Content-Length: 1\r\nContent-Length: 2\r\n"),
                400,
                "disagree",
            ),
            ("GARBAGE\r\n\r\n".into(), 400, "malformed request head"),
            (
                "GET / HTTP/1.1\r\nbad header\r\n\r\n".into(),
                400,
                "malformed request head",
            ),
            (
                "GET http://[::1/ HTTP/1.1\r\n\r\n".into(),
                400,
                "malformed request target",
            ),
        ] {
            let (got, message) = refused(&head);
            assert_eq!(got, status, "{head:?}");
            assert!(message.contains(text), "{head:?}: {message}");
        }
        let many: String = (0..=HYPER_MAX_HEADERS)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let (status, message) = refused(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        assert_eq!((status, message.contains("more than 100")), (431, true));
        // Past every limit with no end in sight: the headers, or the target itself.
        let limits = RequestLimits::default();
        let max = limits.max_url_bytes + limits.max_header_bytes + HEAD_OVERHEAD;
        let big = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(max));
        assert_eq!(refused(&big).0, 431);
        let long = format!("GET /{}", "a".repeat(max));
        assert_eq!(refused(&long).0, 414);
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
        let task = connection(
            io,
            Router::new(),
            RequestLimits::default(),
            graceful.watcher(),
        );
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
