//! Every kind of bad input gets a 4xx with LoopBack's JSON error shape and writes nothing.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::{Publisher, RedisServer, http, within};

/// One request and the answer it must get.
struct Case {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// A piece of the error message.
    message: &'static str,
}

fn case(
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: &str,
    status: u16,
    message: &'static str,
) -> Case {
    Case {
        method,
        path: path.to_owned(),
        content_type,
        body: body.as_bytes().to_vec(),
        status,
        message,
    }
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn bad_input_is_refused_with_a_json_error_and_nothing_written() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start_with(&redis.url(), |c| c.body_limit = 256).await?;
    let client = http();
    let long_id = "x".repeat(300);
    let cases = [
        // Not JSON, or not an object.
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "{not json",
            400,
            "request body is not valid JSON",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "",
            400,
            "request body is not valid JSON",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "[1,2]",
            400,
            "request body[0] must be a JSON object",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "\"text\"",
            400,
            "request body must be a JSON object",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "null",
            400,
            "request body must be a JSON object",
        ),
        case(
            Method::PUT,
            "/api/MyModels/1",
            JSON,
            "[]",
            400,
            "request body must be a JSON object",
        ),
        case(
            Method::PATCH,
            "/api/MyModels/1",
            JSON,
            "{",
            400,
            "request body is not valid JSON",
        ),
        // Wrong or missing content type.
        case(
            Method::POST,
            "/api/MyModels",
            Some("text/plain"),
            "{\"a\":1}",
            415,
            "Content-Type must be application/json",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            Some("application/x-www-form-urlencoded"),
            "a=1",
            415,
            "Content-Type must be application/json",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            None,
            "{\"a\":1}",
            415,
            "Content-Type must be application/json",
        ),
        case(
            Method::PATCH,
            "/api/MyModels/1",
            Some("text/json"),
            "{}",
            415,
            "Content-Type must be application/json",
        ),
        // Bad topics.
        case(
            Method::POST,
            "/api/My%20Models",
            JSON,
            "{}",
            400,
            "topic \"My Models\" contains ' '",
        ),
        case(Method::POST, "/api/a:b", JSON, "{}", 400, "contains ':'"),
        case(
            Method::POST,
            "/api/%7Bx%7D",
            JSON,
            "{}",
            400,
            "contains '{'",
        ),
        case(Method::GET, "/api/Orders*", None, "", 400, "contains '*'"),
        case(Method::DELETE, "/api/.x/1", None, "", 400, "contains '.'"),
        // Bad ids, in the URL and in the body.
        case(
            Method::GET,
            "/api/MyModels/a%00b",
            None,
            "",
            400,
            "id must not be empty",
        ),
        case(
            Method::DELETE,
            &format!("/api/MyModels/{long_id}"),
            None,
            "",
            400,
            "id must not be empty, longer than 256 bytes",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "{\"id\":true}",
            400,
            "id must be an integer or a string, got a boolean",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "{\"id\":1.5}",
            400,
            "got a non-integer number",
        ),
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            "{\"id\":\"7\"}",
            400,
            "reads as an integer",
        ),
        case(
            Method::PUT,
            "/api/MyModels/1",
            JSON,
            "{\"id\":2}",
            400,
            "id 2 in the body differs from id 1 in the URL",
        ),
        case(
            Method::PATCH,
            "/api/MyModels/1",
            JSON,
            "{\"id\":\"one\"}",
            400,
            "differs from id 1",
        ),
        // Over the size limit (256 bytes here).
        case(
            Method::POST,
            "/api/MyModels",
            JSON,
            &format!("{{\"a\":\"{}\"}}", "x".repeat(300)),
            413,
            "larger than the limit of 256 bytes",
        ),
        // Over the URL limit (8 KiB by default).
        case(
            Method::POST,
            &format!("/api/MyModels?pad={}", "x".repeat(8200)),
            JSON,
            "{}",
            414,
            "request URL is longer than the limit of 8192 bytes",
        ),
        // Raw publish.
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"change\":{\"target\":1,\"type\":\"create\"}}",
            400,
            "missing field `topic`",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"A\"}",
            400,
            "missing field `change`",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"A\",\"change\":{\"target\":1,\"type\":\"delete\"}}",
            400,
            "got \"delete\"",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"A\",\"change\":{\"type\":\"create\"}}",
            400,
            "missing field `target`",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"A\",\"change\":{\"target\":1,\"type\":\"create\",\"data\":5}}",
            400,
            "change:",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"A\",\"change\":{\"target\":1,\"type\":\"create\"},\"x\":1}",
            400,
            "unknown field `x`",
        ),
        case(
            Method::POST,
            "/publish",
            JSON,
            "{\"topic\":\"a b\",\"change\":{\"target\":1,\"type\":\"create\"}}",
            400,
            "topic \"a b\"",
        ),
        // Unknown routes and methods.
        case(
            Method::GET,
            "/nope",
            None,
            "",
            404,
            "no route for GET /nope",
        ),
        case(
            Method::POST,
            "/api/MyModels/1/2",
            JSON,
            "{}",
            404,
            "no route",
        ),
        case(
            Method::DELETE,
            "/api/MyModels",
            None,
            "",
            405,
            "DELETE is not allowed on /api/MyModels",
        ),
    ];
    for c in cases {
        let mut req = client
            .request(c.method.clone(), publisher.url(&c.path))
            .body(c.body.clone());
        if let Some(ct) = c.content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let res = within(&c.path, req.send()).await??;
        let what = format!("{} {}", c.method, c.path);
        assert_eq!(res.status().as_u16(), c.status, "{what}");
        assert!(
            res.headers()[CONTENT_TYPE]
                .to_str()?
                .starts_with("application/json"),
            "{what}: JSON error"
        );
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["statusCode"], c.status, "{what}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(c.message),
            "{what}: {message:?} should contain {:?}",
            c.message
        );
        assert!(
            body["error"]["name"].is_string() && body["error"]["code"].is_string(),
            "{what}: {body}"
        );
    }

    // A chunked body (no Content-Length) over the limit is cut off too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(b"{\"a\":\"".to_vec()),
        Ok(vec![b'x'; 400]),
        Ok(b"\"}".to_vec()),
    ];
    let res = client
        .post(publisher.url("/api/MyModels"))
        .header(CONTENT_TYPE, "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let mut conn = redis.connection().await?;
    let keys: usize = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    assert_eq!(keys, 0, "bad input wrote nothing");

    // And the same server still takes good input.
    let ok: Value = client
        .post(publisher.url("/api/MyModels"))
        .json(&json!({"a": 1}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ok, json!({"a": 1, "id": 1}));
    publisher.stop().await
}

#[tokio::test]
async fn unreachable_redis_is_a_503_and_ready_says_so() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let url = redis.url();
    redis.kill().await?;
    let publisher = Publisher::start_with(&url, |c| {
        c.redis_timeout = std::time::Duration::from_millis(500)
    })
    .await?;
    let client = http();
    let res = client
        .post(publisher.url("/api/MyModels"))
        .json(&json!({"a": 1}))
        .send()
        .await?;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["code"], "REDIS_UNAVAILABLE");
    assert_eq!(
        body["error"]["message"],
        "Redis is unavailable; nothing was written"
    );
    assert_eq!(
        client.get(publisher.url("/readyz")).send().await?.status(),
        503
    );
    assert_eq!(
        client.get(publisher.url("/healthz")).send().await?.status(),
        200
    );

    redis.restart().await?;
    system_tests::poll_until(
        "publisher ready again",
        std::time::Duration::from_secs(10),
        || async {
            let res = client.get(publisher.url("/readyz")).send().await.ok()?;
            (res.status() == 200).then_some(())
        },
    )
    .await?;
    let created: Value = client
        .post(publisher.url("/api/MyModels"))
        .json(&json!({"a": 1}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(created, json!({"a": 1, "id": 1}));
    publisher.stop().await
}
