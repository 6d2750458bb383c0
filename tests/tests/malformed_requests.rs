//! Errors a client causes below the routes, answered in LoopBack's JSON shape with the
//! configured limits: an oversized or unreadable `POST` change-stream body (both gateway
//! modes), and badly framed or oversized request heads, which hyper would answer with a
//! bare 400 or 431 of its own. HTTP/1.0 and HTTP/2 prior-knowledge connections still
//! work.

use std::collections::HashMap;
use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::Value;
use system_tests::{Gateway, Publisher, RedisServer, http, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1 response read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts LoopBack's error shape with `status`, a message containing `text`, and a
    /// closed connection.
    fn assert_error(&self, status: u16, text: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert!(
            self.headers["content-type"].starts_with("application/json"),
            "{self:?}"
        );
        assert_eq!(self.headers["connection"], "close", "{self:?}");
        let body = self.json();
        assert_eq!(body["error"]["statusCode"], status, "{body}");
        assert!(
            body["error"]["name"].is_string() && body["error"]["code"].is_string(),
            "{body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{message:?} lacks {text:?}");
    }
}

/// Writes `request` as is, reads until the server closes, and parses the responses.
async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Vec<Answer>> {
    let mut socket = within("connect", TcpStream::connect(addr)).await??;
    within("write", socket.write_all(request)).await??;
    let mut bytes = Vec::new();
    within("read to the close", socket.read_to_end(&mut bytes)).await??;
    let mut answers = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no head in {:?}", String::from_utf8_lossy(rest)))?;
        let head = std::str::from_utf8(&rest[..end])?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("status line of {head:?}"))?;
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers.get("content-length").map_or(Ok(0), |v| v.parse())?;
        let body = rest[end + 4..end + 4 + len].to_vec();
        rest = &rest[end + 4 + len..];
        answers.push(Answer {
            status,
            headers,
            body,
        });
    }
    Ok(answers)
}

async fn one(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Answer> {
    let mut answers = exchange(addr, request).await?;
    assert_eq!(answers.len(), 1, "{answers:?}");
    Ok(answers.remove(0))
}

const STREAM: &str = "/api/Framing/change-stream?_format=event-stream";

fn post_stream(headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {STREAM} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n{body}"
    )
    .into_bytes()
}

/// A body over `body_limit` is LoopBack's 413 naming the limit, declared or chunked.
async fn oversized_stream_bodies_are_413(gateway: &Gateway, limit: usize) -> anyhow::Result<()> {
    let client = http();
    let over = format!(r#"{{"options":{{}},"pad":"{}"}}"#, "x".repeat(limit));
    let declared = client
        .post(gateway.url(STREAM))
        .header("content-type", "application/json")
        .body(over.clone())
        .send()
        .await?;
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(over[..10].into()), Ok(over[10..].into())];
    let chunked = client
        .post(gateway.url(STREAM))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    for res in [declared, chunked] {
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            res.headers()["content-type"]
                .to_str()?
                .starts_with("application/json")
        );
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("limit of {limit} bytes")),
            "{message}"
        );
    }
    // Within the limit, the same route streams.
    let res = client
        .post(gateway.url(STREAM))
        .header("content-type", "application/json")
        .body(r#"{"options":{"where":{"a":1}}}"#)
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    Ok(())
}

/// `chunked, chunked` on the stream route: a JSON 400, as the first request of a
/// connection and as a later one.
async fn chunked_twice_is_a_json_400(addr: SocketAddr) -> anyhow::Result<()> {
    let twice = post_stream(
        "Transfer-Encoding: chunked, chunked\r\n",
        "2\r\n{}\r\n0\r\n\r\n",
    );
    one(addr, &twice)
        .await?
        .assert_error(400, "chunked more than once");
    let mut kept_alive = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    kept_alive.extend_from_slice(&twice);
    let answers = exchange(addr, &kept_alive).await?;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0].status, 200);
    answers[1].assert_error(400, "chunked more than once");
    Ok(())
}

#[tokio::test]
async fn embedded_stream_bodies_honour_body_limit_and_framing_errors_are_json() -> anyhow::Result<()>
{
    let gateway = Gateway::start_with(None, |c| c.body_limit = 1024).await?;
    oversized_stream_bodies_are_413(&gateway, 1024).await?;
    chunked_twice_is_a_json_400(gateway.addr).await?;
    gateway.stop().await?;

    // The default limit (LoopBack's 100kb), not axum's 2 MiB.
    let gateway = Gateway::start_with(None, |_| {}).await?;
    oversized_stream_bodies_are_413(&gateway, service::http::DEFAULT_BODY_LIMIT).await?;
    gateway.stop().await
}

#[tokio::test]
async fn redis_mode_stream_bodies_honour_body_limit_and_framing_errors_are_json()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| c.body_limit = 1024).await?;
    oversized_stream_bodies_are_413(&gateway, 1024).await?;
    chunked_twice_is_a_json_400(gateway.addr).await?;
    gateway.stop().await
}

#[tokio::test]
async fn bad_heads_and_bodies_get_loopback_json_not_bare_errors() -> anyhow::Result<()> {
    let gateway = Gateway::start_env(
        None,
        &[
            ("GATEWAY_MAX_URL_BYTES", "1024"),
            ("GATEWAY_MAX_HEADER_BYTES", "2048"),
        ],
    )
    .await?;
    let addr = gateway.addr;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            post_stream(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "",
            ),
            400,
            "chunked more than once",
        ),
        (
            post_stream("Transfer-Encoding: gzip\r\n", ""),
            400,
            "ends with chunked",
        ),
        (
            post_stream("Transfer-Encoding: chunked, gzip\r\n", ""),
            400,
            "ends with chunked",
        ),
        (
            post_stream("Content-Length: abc\r\n", ""),
            400,
            "Content-Length must be a single decimal number",
        ),
        (
            post_stream("Content-Length: 2\r\nContent-Length: 3\r\n", "{}"),
            400,
            "Content-Length headers disagree",
        ),
        (
            format!("POST {STREAM} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .into_bytes(),
            400,
            "HTTP/1.0",
        ),
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed request head"),
        (
            b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            400,
            "malformed request head",
        ),
        (
            b"GET /healthz HTTP/9.9\r\n\r\n".to_vec(),
            400,
            "malformed request head",
        ),
        // A chunk size that is not hex: the body cannot be read.
        (
            post_stream("Transfer-Encoding: chunked\r\n", "zz\r\n{}\r\n0\r\n\r\n"),
            400,
            "request body is malformed",
        ),
        // A head past the limits, and more header fields than hyper takes.
        (
            format!(
                "GET {STREAM} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "y".repeat(20_000)
            )
            .into_bytes(),
            431,
            "larger than the limit of 2048 bytes",
        ),
        (
            format!(
                "GET /healthz HTTP/1.1\r\n{}\r\n",
                (0..120)
                    .map(|i| format!("x-{i}: v\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
            431,
            "more than 100 header fields",
        ),
    ];
    for (request, status, text) in cases {
        let answer = one(addr, &request).await?;
        let what = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        answer.assert_error(status, text);
    }

    // What is sound still works: HTTP/1.0, and HTTP/2 with prior knowledge (the server's
    // first frame is its SETTINGS).
    let old = one(addr, b"GET /healthz HTTP/1.0\r\n\r\n").await?;
    assert_eq!(
        (old.status, old.json()["status"].clone()),
        (200, "ok".into())
    );
    let mut h2 = within("connect", TcpStream::connect(addr)).await??;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // an empty SETTINGS frame
    within("h2 preface", h2.write_all(&hello)).await??;
    let mut frame = [0_u8; 9];
    within("h2 SETTINGS", h2.read_exact(&mut frame)).await??;
    assert_eq!(frame[3], 4, "an HTTP/2 SETTINGS frame: {frame:?}");
    // An open hyper connection holds the graceful shutdown up.
    drop(h2);
    gateway.stop().await
}

#[tokio::test]
async fn the_publisher_refuses_chunked_twice_with_json() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let request = b"POST /api/Framing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    one(publisher.addr, request)
        .await?
        .assert_error(400, "chunked more than once");
    // A body that cannot be read is a 400 too, not "larger than the limit".
    let broken = b"POST /api/Framing HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n";
    one(publisher.addr, broken)
        .await?
        .assert_error(400, "request body is malformed");
    let list: Value = http()
        .get(publisher.url("/api/Framing"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list, serde_json::json!([]), "nothing was written");
    publisher.stop().await
}
