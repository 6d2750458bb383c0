//! Writing answers without hyper: a whole answer with `Content-Length` and
//! `connection: close`, or an event stream's head and then its body as HTTP/1.1 chunks,
//! several queued events per write, until the body ends or the client goes.

use std::io;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::{EventStream, Io};

/// Most queued events written in one chunk.
const BATCH: usize = 64;

/// Routes `request` and writes the answer's head; the body of an event stream (a response
/// marked [`EventStream`]), which the caller writes, or `None` when the whole answer (an
/// error, a preflight) has been written.
pub(super) async fn answer(
    io: &mut Io,
    app: Router,
    request: Request<Body>,
) -> io::Result<Option<Body>> {
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.extensions().get::<EventStream>().is_none() {
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
pub(super) async fn write_whole(io: &mut Io, response: Response) -> io::Result<()> {
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
pub(super) async fn stream(mut io: Io, mut body: Body) -> io::Result<()> {
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
        let out = batch(first, &mut body)?;
        io.write_all(&out).await?;
    }
    io.write_all(b"0\r\n\r\n").await?;
    io.shutdown().await
}

/// `first` and whatever else of `body` is ready (at most [`BATCH`] in all) as one chunk:
/// one write. Nothing is kept between writes, so an idle stream holds no batch.
fn batch(first: Bytes, body: &mut Body) -> io::Result<Bytes> {
    let Some(second) = ready_data(body)? else {
        return Ok(chunk(&[first]));
    };
    let mut parts = vec![first, second];
    while parts.len() < BATCH {
        match ready_data(body)? {
            Some(more) => parts.push(more),
            None => break,
        }
    }
    Ok(chunk(&parts))
}

/// The next data frame of `body` if it is ready now; `None` if not (or at its end, which
/// the next [`next_data`] sees).
fn ready_data(body: &mut Body) -> io::Result<Option<Bytes>> {
    next_data(body).now_or_never().unwrap_or(Ok(None))
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
pub(super) fn chunk(parts: &[Bytes]) -> Bytes {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_frame_several_events_as_one() {
        let c = chunk(&[
            Bytes::from_static(b"id: 1\n\n"),
            Bytes::from_static(b":\n\n"),
        ]);
        assert_eq!(&c[..], b"a\r\nid: 1\n\n:\n\n\r\n");
    }
}
