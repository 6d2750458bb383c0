//! The connection layer: the accept loop, and the hand-written HTTP/1.1 that serves event
//! streams without hyper. It owns everything below the router: reading and checking a
//! request head ([`head`]), writing answers and chunked streams ([`chunked`]), and the
//! write deadline on every socket ([`deadline`]).
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for each connection's whole
//! life: with an idle SSE stream that is most of what a connection costs (a bare axum SSE
//! server measured 19 KiB per idle stream here). So a connection whose first request is a
//! `GET` of a stream route ([`App::stream_paths`], built from the same list as the
//! router's stream routes, `crate::http::STREAM_ROUTES`) is served here: its head is read
//! into a small buffer and parsed once, the request goes through the same router as every
//! other (auth, filters, errors), and an answer marked [`EventStream`] is written with
//! chunked framing, several queued events per write. Afterwards the connection holds its
//! socket, its [`crate::client::ClientStream`] and nothing else. The stream's end closes
//! the connection (EventSource reconnects with a new request anyway).
//!
//! Every other connection (REST, health, metrics, `POST` change streams, HTTP/1.0,
//! HTTP/2, anything unusual) is handed to hyper with the bytes already read, unchanged. A
//! first request whose head is malformed, too large or badly framed is refused in
//! LoopBack's JSON shape ([`head`]). (Later requests on a kept-alive hyper connection are
//! parsed by hyper alone; the request middleware catches what it lets through,
//! [`service::limits::check_request`].)

pub mod chunked;
pub mod deadline;
pub mod head;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use service::limits::RequestLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use deadline::{TimedListener, WriteDeadline};
use head::Head;

type Io = WriteDeadline<TcpStream>;

/// What a connection is served with: the router, and which of its paths are event streams
/// that take the fast path. Build both from one list of stream routes
/// (`crate::http::app`), so a new stream route cannot miss the fast path.
#[derive(Clone, Debug)]
pub struct App {
    pub router: Router,
    pub stream_paths: StreamPaths,
}

/// The route patterns (axum's syntax, `/api/{collection}/change-stream`) whose `GET`s are
/// served here rather than by hyper.
#[derive(Clone)]
pub struct StreamPaths(std::sync::Arc<matchit::Router<()>>);

impl std::fmt::Debug for StreamPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamPaths")
    }
}

impl StreamPaths {
    /// # Errors
    /// If a pattern is not valid route syntax or two conflict (a programming error: the
    /// router would refuse them too).
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, matchit::InsertError> {
        let mut paths = matchit::Router::new();
        for pattern in patterns {
            paths.insert(pattern, ())?;
        }
        Ok(Self(std::sync::Arc::new(paths)))
    }

    /// Whether `path` (without its query) is one of the stream routes.
    pub fn matches(&self, path: &str) -> bool {
        self.0.at(path).is_ok()
    }
}

/// Marks a response whose body is an event stream: written here as chunks for as long as
/// it lasts, on a connection that then closes. Set by [`crate::sse`] on every event-stream
/// answer.
#[derive(Clone, Copy, Debug)]
pub struct EventStream;

/// Serves `app` on `listener` until `shutdown`: stops accepting, lets hyper's connections
/// finish their requests; stream connections end with their body (which ends on shutdown,
/// spread over the drain window). Connection tasks run on `tracker`.
pub async fn serve(
    mut listener: TimedListener,
    app: App,
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
        tracker.spawn(connection(io, app, limits, watcher));
    }
    // Closed at once: new connections are refused (and retried elsewhere), not queued.
    drop(listener);
    graceful.shutdown().await;
}

/// One connection. A stream connection lives for hours in the state after its answer
/// has started, so everything before that (reading the head, routing) and the whole of a
/// hyper connection run in a boxed future of their own, and the task keeps only the space
/// the long-lived state needs, not the largest of all of them. Combinators rather than an
/// `async` block: a block keeps room for its captured values and moved-from bindings next
/// to the stream's future. Every open stream's task holds this: with the blocks it was a
/// 768-byte task (heaptrack, release), now 384.
fn connection(
    io: Io,
    app: App,
    limits: RequestLimits,
    graceful: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = ()> + Send {
    Box::pin(start(io, app, limits, graceful))
        .then(|started| match started {
            Ok(Some((io, body))) => Either::Left(chunked::stream(io, body)),
            Ok(None) => Either::Right(std::future::ready(Ok(()))),
            Err(e) => Either::Right(std::future::ready(Err(e))),
        })
        .map(|ended| {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        })
}

/// Reads the request head and answers it: an event stream's connection and body, which
/// [`chunked::stream`] writes from here; `None` when the connection is done (hyper served
/// it, the answer was not a stream, or the head was refused).
async fn start(
    mut io: Io,
    app: App,
    limits: RequestLimits,
    graceful: hyper_util::server::graceful::Watcher,
) -> io::Result<Option<(Io, Body)>> {
    let mut buf = BytesMut::with_capacity(head::HEAD_START);
    let read = head::read_head(&mut io, &mut buf, limits, &app.stream_paths);
    let parsed = tokio::time::timeout(head::HEAD_TIMEOUT, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
    match parsed {
        Head::Stream(request) => {
            // Streams end with their body (spread over the drain window); only hyper's
            // connections are waited for by the graceful shutdown.
            drop(graceful);
            drop(buf);
            let body = chunked::answer(&mut io, app.router, request).await?;
            Ok(body.map(|body| (io, body)))
        }
        Head::Hyper => {
            hyper(io, buf.freeze(), app.router, graceful).await?;
            Ok(None)
        }
        Head::Refused(error) => {
            drop(graceful);
            drop(buf);
            tracing::debug!(%error, "request head refused");
            chunked::write_whole(&mut io, error.into_response()).await?;
            head::linger(&mut io).await;
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
    use std::time::Duration;

    /// A stream connection's task lives for hours in its streaming state; the future it
    /// runs must not reserve room for routing or hyper (it was 2,424 bytes when it did),
    /// nor for `async` blocks' captures beside the stream's own state (496 when it did;
    /// 288 now).
    #[tokio::test]
    async fn a_connection_task_reserves_only_the_streaming_state() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let stalled = prometheus::IntCounter::new("stalled", "test").unwrap();
        let io = WriteDeadline::new(accepted.unwrap().0, Duration::from_secs(30), stalled);
        let graceful = GracefulShutdown::new();
        let app = App {
            router: Router::new(),
            stream_paths: StreamPaths::new([]).unwrap(),
        };
        let task = connection(io, app, RequestLimits::default(), graceful.watcher());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 320, "the connection future is {size} bytes");
    }
}
