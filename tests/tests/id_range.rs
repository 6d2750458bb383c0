//! Integer ids stay within JavaScript's safe range (2^53-1 in size), in the publisher
//! (Redis) and in the embedded gateway: ids outside it are refused with a 400, and a
//! collection whose counter reached the limit refuses only creates without an id.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::{Gateway, Publisher, RedisServer, http, within};

const MAX: i64 = (1 << 53) - 1;

/// A server under test: the publisher on Redis or the embedded gateway.
struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    fn new(addr: std::net::SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            client: http(),
        }
    }

    /// Sends `body` (raw JSON text, so ids beyond i64 can be written) and returns the
    /// status and the JSON answer.
    async fn send(&self, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let res = within(path, req.send())
            .await
            .expect("in time")
            .expect("a response");
        let status = res.status();
        let text = within(path, res.text())
            .await
            .expect("in time")
            .expect("a body");
        let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {text}: {e}"));
        (status, value)
    }

    async fn create(&self, collection: &str, body: &str) -> (StatusCode, Value) {
        self.send(Method::POST, &format!("/api/{collection}"), Some(body))
            .await
    }
}

/// Asserts a LoopBack 400 whose message names the safe range.
fn refused_for_range(what: &str, (status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["error"]["statusCode"], 400, "{what}: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("safe integer range")
            && message.contains("-9007199254740991 and 9007199254740991"),
        "{what}: {message}"
    );
}

async fn ids_outside_the_safe_range_are_refused(api: &Api) {
    let (status, body) = api.create("Ids", &format!(r#"{{"id":{MAX},"a":1}}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"id": MAX, "a": 1}));
    let (status, body) = api.create("Ids", &format!(r#"{{"id":{}}}"#, -MAX)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for id in [
        "9007199254740992",
        "-9007199254740992",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
    ] {
        refused_for_range(id, api.create("Ids", &format!(r#"{{"id":{id}}}"#)).await);
        // As a string it would read as that integer in a URL: refused the same way.
        refused_for_range(id, api.create("Ids", &format!(r#"{{"id":"{id}"}}"#)).await);
        let path = format!("/api/Ids/{id}");
        refused_for_range(&path, api.send(Method::GET, &path, None).await);
        refused_for_range(&path, api.send(Method::PUT, &path, Some("{}")).await);
        refused_for_range(&path, api.send(Method::PATCH, &path, Some("{}")).await);
        refused_for_range(&path, api.send(Method::DELETE, &path, None).await);
        let publish = format!(r#"{{"topic":"Ids","change":{{"target":{id},"type":"remove"}}}}"#);
        refused_for_range(
            &publish,
            api.send(Method::POST, "/publish", Some(&publish)).await,
        );
    }
    // Only the two good creates were written.
    let (_, list) = api.send(Method::GET, "/api/Ids", None).await;
    assert_eq!(list, json!([{"id": -MAX}, {"id": MAX, "a": 1}]));
}

async fn a_counter_at_the_limit_refuses_only_creates_without_an_id(api: &Api) {
    // Counting up to the limit is exact (Lua numbers are doubles: exact up to 2^53).
    let (status, _) = api
        .create("Full", &format!(r#"{{"id":{}}}"#, MAX - 2))
        .await;
    assert_eq!(status, StatusCode::OK);
    for expected in [MAX - 1, MAX] {
        let (status, body) = api.create("Full", r#"{"a":1}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"a": 1, "id": expected}));
    }
    // Past it: a clear 409 for that write, as often as asked, never a 500.
    for _ in 0..2 {
        let (status, body) = api.create("Full", r#"{"a":2}"#).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "ID_COUNTER_EXHAUSTED", "{body}");
        assert_eq!(body["error"]["name"], "ConflictError", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("last automatic id") && message.contains("explicit id"),
            "{message}"
        );
    }
    // The collection is not broken: explicit ids and reads work.
    let (status, body) = api.create("Full", r#"{"id":7,"b":1}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.create("Full", r#"{"id":"x"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, list) = api.send(Method::GET, "/api/Full", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        json!([
            {"id": 7, "b": 1},
            {"id": MAX - 2},
            {"a": 1, "id": MAX - 1},
            {"a": 1, "id": MAX},
            {"id": "x"}
        ])
    );
    let (status, _) = api
        .send(Method::GET, &format!("/api/Full/{MAX}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Other collections have their own counters.
    let (status, body) = api.create("Other", "{}").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"id": 1})));
}

#[tokio::test]
async fn redis_mode_keeps_ids_in_the_safe_range() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let api = Api::new(publisher.addr);
    ids_outside_the_safe_range_are_refused(&api).await;
    a_counter_at_the_limit_refuses_only_creates_without_an_id(&api).await;

    // The refusal wrote nothing: counter, records and stream are as the last good write
    // left them.
    let topic = proto::Topic::new("Full")?;
    let mut conn = redis.connection().await?;
    let seq: String = redis::cmd("GET")
        .arg(topic.seq_key())
        .query_async(&mut conn)
        .await?;
    assert_eq!(seq, MAX.to_string());
    let events: usize = redis::cmd("XLEN")
        .arg(topic.stream_key())
        .query_async(&mut conn)
        .await?;
    assert_eq!(events, 5, "one event per good create");

    // A counter moved past the limit before ids were bounded (the issue's
    // `{"id": 9223372036854775807}`) is refused the same way, not a 500.
    let legacy = proto::Topic::new("Legacy")?;
    let _: () = redis::cmd("SET")
        .arg(legacy.seq_key())
        .arg(i64::MAX)
        .query_async(&mut conn)
        .await?;
    let (status, body) = api.create("Legacy", "{}").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api.create("Legacy", r#"{"id":1}"#).await;
    assert_eq!(status, StatusCode::OK);
    publisher.stop().await
}

#[tokio::test]
async fn embedded_mode_keeps_ids_in_the_safe_range() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    let api = Api::new(gateway.addr);
    ids_outside_the_safe_range_are_refused(&api).await;
    a_counter_at_the_limit_refuses_only_creates_without_an_id(&api).await;
    gateway.stop().await
}
