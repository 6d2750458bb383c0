//! Reading a connection's first request head: parsed once with httparse, refused here in
//! LoopBack's JSON shape when it is malformed, too large or badly framed
//! ([`service::framing`]: `Transfer-Encoding: chunked, chunked`, a bad `Content-Length`,
//! ...; hyper would answer those with an empty 400 or 431 of its own), and turned into a
//! request when it is a stream the connection serves itself.

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use bytes::BytesMut;
use service::limits::RequestLimits;
use service::{ApiError, FramingError};
use tokio::io::AsyncReadExt;

use super::{Io, StreamPaths};

/// First read of a request head; most stream requests fit.
pub(super) const HEAD_START: usize = 1024;
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
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the first bytes of a connection are.
#[derive(Debug)]
pub(super) enum Head {
    /// A plain HTTP/1.1 `GET` of a stream route with no body, soundly framed: served here.
    Stream(Request<Body>),
    /// Anything else hyper serves: another request, HTTP/1.0, HTTP/2 prior knowledge, a
    /// client gone mid-head.
    Hyper,
    /// The client's error, answered here.
    Refused(ApiError),
}

/// Reads until the bytes read are a complete head, or something else ([`examine`]).
pub(super) async fn read_head(
    io: &mut Io,
    buf: &mut BytesMut,
    limits: RequestLimits,
    streams: &StreamPaths,
) -> io::Result<Head> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(HEAD_START));
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(Head::Hyper);
        }
        if let Some(head) = examine(buf, limits, streams) {
            return Ok(head);
        }
    }
}

/// What `buf`, the first bytes of a connection, holds; `None` if it needs more bytes. The
/// head is parsed once, here. Stricter than hyper's own parser wherever they differ, so
/// that hyper, handed a head that passed, never answers it with a bare error.
fn examine(buf: &[u8], limits: RequestLimits, streams: &StreamPaths) -> Option<Head> {
    if buf.starts_with(H2_PREFACE) {
        return Some(Head::Hyper);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let verdict = match examine_with(buf, limits, streams, &mut headers) {
        // Rare: more fields than the fast path parses, but perhaps as many as hyper takes.
        Err(httparse::Error::TooManyHeaders) => {
            let mut headers = vec![httparse::EMPTY_HEADER; HYPER_MAX_HEADERS];
            examine_with(buf, limits, streams, &mut headers)
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
    streams: &StreamPaths,
    headers: &mut [httparse::Header<'b>],
) -> Result<Option<Head>, httparse::Error> {
    let max_head = limits
        .max_url_bytes
        .saturating_add(limits.max_header_bytes)
        .saturating_add(HEAD_OVERHEAD);
    let mut request = httparse::Request::new(headers);
    match request.parse(buf)? {
        httparse::Status::Complete(_) => {}
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
    if let Err(e) = service::framing::check(version, fields) {
        return Ok(Some(Head::Refused(e.into())));
    }
    Ok(Some(
        stream_request(&request, streams).map_or(Head::Hyper, Head::Stream),
    ))
}

/// The request, if `parsed` is a plain HTTP/1.1 `GET` of a stream route with no body.
fn stream_request(
    parsed: &httparse::Request<'_, '_>,
    streams: &StreamPaths,
) -> Option<Request<Body>> {
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    if !streams.matches(target.split('?').next().unwrap_or("")) {
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

/// Reads and drops what the client still sends, within [`LINGER_TIME`] and
/// [`LINGER_BYTES`], so the answer already written is not lost to a reset.
pub(super) async fn linger(io: &mut Io) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;

    fn paths() -> StreamPaths {
        StreamPaths::new(["/api/{collection}/change-stream", "/events"]).unwrap()
    }

    fn is_stream(head: &str) -> bool {
        match examine(head.as_bytes(), RequestLimits::default(), &paths()) {
            Some(Head::Stream(request)) => {
                assert_eq!(request.uri(), head.split(' ').nth(1).unwrap());
                true
            }
            Some(Head::Hyper) => false,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    #[test]
    fn only_plain_get_stream_requests_take_the_fast_path() {
        let get = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        };
        assert!(is_stream(&get(
            "/api/MyModels/change-stream?_format=event-stream"
        )));
        assert!(is_stream(&get("/events?topic=A&topic=B")));
        assert!(!is_stream(&get("/api/MyModels")));
        assert!(!is_stream(&get("/api/MyModels/change-stream/x")));
        assert!(!is_stream(&get("/healthz")));
        let post = "POST /api/A/change-stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
        assert!(!is_stream(post));
        let old = "GET /events?topic=A HTTP/1.0\r\n\r\n";
        assert!(!is_stream(old));
        let body = "GET /events?topic=A HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        assert!(!is_stream(body));
    }

    fn refused(head: &str) -> (u16, String) {
        match examine(head.as_bytes(), RequestLimits::default(), &paths()) {
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
        let paths = paths();
        let complete = |head: &str| match examine(head.as_bytes(), limits, &paths) {
            Some(Head::Hyper | Head::Stream(_)) => {}
            other => panic!("{head:?}: {other:?}"),
        };
        complete("GET /events?topic=A HTTP/1.1\r\nHost: x\r\n\r\n");
        complete("GET /healthz HTTP/1.0\r\n\r\n");
        complete("POST /api/A HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}");
        let many: String = (0..80).map(|i| format!("x-{i}: v\r\n")).collect();
        complete(&format!("GET / HTTP/1.1\r\n{many}\r\n"));
        for partial in ["", "GET /events HTTP/1.1\r\nHost", "PRI * HTTP/"] {
            assert!(
                examine(partial.as_bytes(), limits, &paths).is_none(),
                "{partial:?}"
            );
        }
        assert!(matches!(
            examine(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", limits, &paths),
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
}
