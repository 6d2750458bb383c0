//! [`TimedListener`]: accepted connections whose writes have a deadline.
//!
//! A client that stops reading fills its socket buffer; hyper then stops polling the
//! response body, so nothing in the request path ever runs again for it. The deadline
//! sits below hyper, on the socket: a write that cannot make progress for `write_timeout`
//! fails, hyper drops the connection, and the client's hub membership goes with it. The
//! browser resumes with `Last-Event-ID` (from the stream) if it ever reads again. Memory
//! for a client that never reads is bounded by the socket and hyper's write buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// Accepts TCP connections and wraps each in a [`WriteDeadline`].
#[derive(Debug)]
pub struct TimedListener {
    inner: TcpListener,
    write_timeout: Duration,
    /// Connections closed because a write stalled past the deadline.
    stalled: IntCounter,
}

impl TimedListener {
    pub fn new(inner: TcpListener, write_timeout: Duration, stalled: IntCounter) -> Self {
        Self {
            inner,
            write_timeout,
            stalled,
        }
    }
}

impl axum::serve::Listener for TimedListener {
    type Io = WriteDeadline<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Small SSE frames should leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        (
            WriteDeadline::new(stream, self.write_timeout, self.stalled.clone()),
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An IO whose writes fail with `TimedOut` after `timeout` without progress.
#[derive(Debug)]
pub struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Armed when a write first returns `Pending`; cleared by any progress.
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: IntCounter,
}

impl<T> WriteDeadline<T> {
    pub fn new(io: T, timeout: Duration, stalled: IntCounter) -> Self {
        Self {
            io,
            timeout,
            deadline: None,
            stalled,
        }
    }

    /// Turns a `Pending` write into an error once the deadline passes.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(deadline.as_mut().poll(cx));
        self.stalled.inc();
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client stopped reading",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(result) => {
                self.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.pending(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_progress_fails_after_the_timeout() {
        // A peer that never reads: a duplex pipe with a tiny buffer.
        let (near, _far) = tokio::io::duplex(8);
        let stalled = IntCounter::new("stalled", "test").unwrap();
        let mut io = WriteDeadline::new(near, Duration::from_secs(30), stalled.clone());
        io.write_all(b"12345678").await.unwrap();
        let started = tokio::time::Instant::now();
        let err = io.write_all(b"more").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(stalled.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_resets_the_deadline() {
        let (near, mut far) = tokio::io::duplex(4);
        let mut io = WriteDeadline::new(
            near,
            Duration::from_secs(30),
            IntCounter::new("s", "t").unwrap(),
        );
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let mut total = 0;
            while total < 12 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut far, &mut buf)
                    .await
                    .unwrap();
            }
        });
        // Each 4-byte chunk waits 20 s for the reader: under the 30 s deadline every time.
        io.write_all(b"aaaabbbbcccc").await.unwrap();
        reader.await.unwrap();
    }
}
