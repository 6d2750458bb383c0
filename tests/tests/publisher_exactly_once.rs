//! Publishing exactly once (README "Idempotency keys and batches"), against a real Redis:
//! a retry under an `Idempotency-Key` answers the first answer byte for byte and writes
//! nothing; another request under a used key is a 422; concurrent requests with one key
//! run once; a key is forgotten after `idempotency_ttl`; a write whose answer was lost is
//! told apart (`OUTCOME_UNKNOWN`) and a keyed retry settles it; the same in a cluster.
//! Batches: an array create with a bad item writes and publishes nothing; a valid one's
//! events come in array order with consecutive stream ids, as `updateAll`'s do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use proto::{Envelope, Topic};
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use system_tests::{Blackhole, Publisher, RedisCluster, RedisServer, http, poll_until, within};

const REPLAYED: &str = "idempotent-replayed";

/// One answer as a client sees it: status, the replay header, the exact body bytes.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    replayed: Option<String>,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(
    method: Method,
    url: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Answer> {
    let mut req = http().request(method, url);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let res = within("request", req.send()).await??;
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (replayed, content_type) = (header(REPLAYED), header("content-type"));
    let status = res.status();
    let body = within("body", res.text()).await??;
    Ok(Answer {
        status,
        replayed,
        content_type,
        body,
    })
}

async fn xlen(redis: &RedisServer, topic: &str) -> anyhow::Result<usize> {
    let mut conn = redis.connection().await?;
    Ok(within("XLEN", conn.xlen(Topic::new(topic)?.stream_key())).await??)
}

async fn hlen(redis: &RedisServer, topic: &str) -> anyhow::Result<usize> {
    let mut conn = redis.connection().await?;
    Ok(within("HLEN", conn.hlen(Topic::new(topic)?.records_key())).await??)
}

/// The stream's entry ids, oldest first.
async fn stream_ids(redis: &RedisServer, topic: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(topic)?.stream_key())).await??;
    Ok(reply.ids.into_iter().map(|e| e.id).collect())
}

/// `ids` are one after the other: the same milliseconds, sequence numbers + 1.
fn consecutive(ids: &[String]) -> bool {
    let parts: Vec<(u64, u64)> = ids
        .iter()
        .filter_map(|id| {
            let (ms, seq) = id.split_once('-')?;
            Some((ms.parse().ok()?, seq.parse().ok()?))
        })
        .collect();
    parts.len() == ids.len()
        && parts
            .windows(2)
            .all(|w| w[1].0 == w[0].0 && w[1].1 == w[0].1 + 1)
}

#[tokio::test]
async fn every_mutating_route_replays_its_first_answer_byte_for_byte() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let url = |path: &str| publisher.url(path);
    // Records 1..=3 to work on, written without keys.
    for n in 1..=3 {
        let created = send(
            Method::POST,
            &url("/api/Keys"),
            None,
            None,
            Some(&json!({"n": n})),
        )
        .await?;
        assert_eq!(created.status, 200, "{created:?}");
    }
    let requests: Vec<(Method, String, Value)> = vec![
        (Method::POST, url("/api/Keys"), json!({"n": 4})),
        (
            Method::POST,
            url("/api/Keys"),
            json!([{"n": 5}, {"id": 50, "n": 6}]),
        ),
        (Method::PUT, url("/api/Keys/1"), json!({"n": 10})),
        (Method::PATCH, url("/api/Keys/2"), json!({"seen": true})),
        (Method::POST, url("/api/Keys/3/replace"), json!({"n": 30})),
        (Method::PATCH, url("/api/Keys"), json!({"id": 2, "more": 1})),
        (Method::PATCH, url("/api/Keys"), json!({"id": 60, "n": 60})),
        (Method::PUT, url("/api/Keys"), json!({"id": 60, "n": 61})),
        (
            Method::POST,
            url("/api/Keys/replaceOrCreate"),
            json!({"id": 70, "n": 70}),
        ),
        (
            Method::POST,
            url("/api/Keys/upsertWithWhere?where=%7B%22n%22%3A70%7D"),
            json!({"tag": "w"}),
        ),
        (
            Method::POST,
            url("/api/Keys/update?where=%7B%22n%22%3A%7B%22gt%22%3A9%7D%7D"),
            json!({"big": true}),
        ),
        (Method::DELETE, url("/api/Keys/50"), Value::Null),
        (Method::DELETE, url("/api/Keys/999"), Value::Null),
        (
            Method::POST,
            url("/publish"),
            json!({"topic": "Raw", "change": {"target": 1, "data": {"id": 1}, "type": "create"}}),
        ),
        (
            Method::POST,
            url("/publish"),
            json!([
                {"topic": "Raw", "change": {"target": 2, "data": {"id": 2}, "type": "create"}},
                {"topic": "Raw2", "change": {"target": 1, "where": {"id": 1}, "type": "remove"}},
            ]),
        ),
    ];
    for (i, (method, url, body)) in requests.iter().enumerate() {
        let key = format!("key-{i}");
        let body = (!body.is_null()).then_some(body);
        let first = send(method.clone(), url, Some(&key), None, body).await?;
        assert_eq!(first.status, 200, "{method} {url}: {first:?}");
        assert_eq!(first.replayed, None, "{method} {url}: a first answer");
        let written = (
            xlen(&redis, "Keys").await?,
            hlen(&redis, "Keys").await?,
            xlen(&redis, "Raw").await?,
            xlen(&redis, "Raw2").await?,
        );
        for _ in 0..2 {
            let again = send(method.clone(), url, Some(&key), None, body).await?;
            assert_eq!(again.status, first.status, "{method} {url}");
            assert_eq!(again.body, first.body, "{method} {url}: the same bytes");
            assert_eq!(again.content_type, first.content_type, "{method} {url}");
            assert_eq!(again.replayed.as_deref(), Some("true"), "{method} {url}");
        }
        let after = (
            xlen(&redis, "Keys").await?,
            hlen(&redis, "Keys").await?,
            xlen(&redis, "Raw").await?,
            xlen(&redis, "Raw2").await?,
        );
        assert_eq!(after, written, "{method} {url}: a replay writes nothing");
    }

    // It is the first answer that is kept, not the record's state now.
    let patched = send(
        Method::PATCH,
        &url("/api/Keys/1"),
        Some("p"),
        None,
        Some(&json!({"v": 1})),
    )
    .await?;
    let other = send(
        Method::PATCH,
        &url("/api/Keys/1"),
        None,
        None,
        Some(&json!({"v": 2})),
    )
    .await?;
    assert_eq!(other.json()["v"], 2);
    let again = send(
        Method::PATCH,
        &url("/api/Keys/1"),
        Some("p"),
        None,
        Some(&json!({"v": 1})),
    )
    .await?;
    assert_eq!(
        (again.body, again.replayed.as_deref()),
        (patched.body, Some("true"))
    );
    let now = send(Method::GET, &url("/api/Keys/1"), None, None, None).await?;
    assert_eq!(now.json()["v"], 2, "the replay wrote nothing");

    // A refusal is not kept: after its cause is fixed the same key is judged afresh.
    let missing = send(
        Method::PUT,
        &url("/api/Keys/80"),
        Some("r"),
        None,
        Some(&json!({"n": 1})),
    )
    .await?;
    assert_eq!(missing.status, 404);
    let made = send(
        Method::PUT,
        &url("/api/Keys"),
        None,
        None,
        Some(&json!({"id": 80})),
    )
    .await?;
    assert_eq!(made.status, 200);
    let replaced = send(
        Method::PUT,
        &url("/api/Keys/80"),
        Some("r"),
        None,
        Some(&json!({"n": 1})),
    )
    .await?;
    assert_eq!((replaced.status, replaced.replayed), (StatusCode::OK, None));
    publisher.stop().await
}

#[tokio::test]
async fn a_used_key_with_another_request_is_a_422_and_keys_are_scoped() -> anyhow::Result<()> {
    const SECRET: &str = "exactly-once-tests-hs256-secret-of-32-bytes";
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start_env(&redis.url(), &[("PUBLISHER_JWT_SECRET", SECRET)]).await?;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 60;
    let token = |sub: &str| {
        let claims =
            json!({"sub": sub, "exp": exp, "topics": {"subscribe": ["*"], "publish": ["*"]}});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
    };
    let (ann, bob) = (token("ann")?, token("bob")?);
    let orders = publisher.url("/api/Orders");

    let first = send(
        Method::POST,
        &orders,
        Some("k1"),
        Some(&ann),
        Some(&json!({"item": "book"})),
    )
    .await?;
    assert_eq!(first.json(), json!({"item": "book", "id": 1}));
    let stream = xlen(&redis, "Orders").await?;
    for (method, url, body) in [
        (Method::POST, orders.clone(), json!({"item": "pen"})),
        (
            Method::PUT,
            publisher.url("/api/Orders/1"),
            json!({"item": "book"}),
        ),
        (Method::POST, orders.clone(), json!([{"item": "book"}])),
    ] {
        let reused = send(method.clone(), &url, Some("k1"), Some(&ann), Some(&body)).await?;
        assert_eq!(reused.status, 422, "{method} {url}: {reused:?}");
        assert_eq!(reused.json()["error"]["code"], "IDEMPOTENCY_KEY_REUSED");
        assert_eq!(reused.json()["error"]["name"], "UnprocessableEntityError");
        assert_eq!(reused.replayed, None);
    }
    assert_eq!(
        xlen(&redis, "Orders").await?,
        stream,
        "a 422 writes nothing"
    );
    assert_eq!(hlen(&redis, "Orders").await?, 1);

    // Another subject, and another collection, have keys of their own.
    let bobs = send(
        Method::POST,
        &orders,
        Some("k1"),
        Some(&bob),
        Some(&json!({"item": "pen"})),
    )
    .await?;
    assert_eq!(
        (bobs.json(), bobs.replayed),
        (json!({"item": "pen", "id": 2}), None)
    );
    let other = publisher.url("/api/Invoices");
    let elsewhere = send(
        Method::POST,
        &other,
        Some("k1"),
        Some(&ann),
        Some(&json!({"item": "pen"})),
    )
    .await?;
    assert_eq!(
        (elsewhere.json(), elsewhere.replayed),
        (json!({"item": "pen", "id": 1}), None)
    );

    // Malformed keys are a 400 that writes nothing.
    for key in ["", "has space", &"x".repeat(256), "caf\u{e9}"] {
        let mut req = http()
            .post(&orders)
            .bearer_auth(&ann)
            .json(&json!({"a": 1}));
        req = req.header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(key.as_bytes())?,
        );
        let res = within("POST", req.send()).await??;
        assert_eq!(res.status(), 400, "key {key:?}");
        let body: Value = within("body", res.json()).await??;
        assert_eq!(body["error"]["code"], "BAD_IDEMPOTENCY_KEY");
    }
    assert_eq!(hlen(&redis, "Orders").await?, 2);
    publisher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_write_once() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    for round in 0..5 {
        let key = format!("same-{round}");
        let url = publisher.url("/api/Race");
        let answers = futures::future::join_all((0..16).map(|_| {
            let (url, key) = (url.clone(), key.clone());
            async move {
                send(
                    Method::POST,
                    &url,
                    Some(&key),
                    None,
                    Some(&json!({"round": round})),
                )
                .await
            }
        }))
        .await;
        let answers: Vec<Answer> = answers.into_iter().collect::<anyhow::Result<_>>()?;
        let ran = answers.iter().filter(|a| a.replayed.is_none()).count();
        assert_eq!(ran, 1, "round {round}: exactly one ran: {answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| a.status == 200 && a.body == answers[0].body),
            "round {round}: the others answered its answer: {answers:?}"
        );
    }
    assert_eq!(hlen(&redis, "Race").await?, 5);
    assert_eq!(xlen(&redis, "Race").await?, 5);
    publisher.stop().await
}

#[tokio::test]
async fn a_key_is_forgotten_after_idempotency_ttl() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher =
        Publisher::start_env(&redis.url(), &[("PUBLISHER_IDEMPOTENCY_TTL", "1s")]).await?;
    let url = publisher.url("/api/Ttl");
    let body = json!({"a": 1});
    let first = send(Method::POST, &url, Some("t"), None, Some(&body)).await?;
    assert_eq!(first.json(), json!({"a": 1, "id": 1}));
    let key = Topic::new("Ttl")?.idempotency_key("", "t");
    let mut conn = redis.connection().await?;
    let ttl: i64 = within("PTTL", conn.pttl(&key)).await??;
    assert!(
        (1..=1000).contains(&ttl),
        "the key {key} expires with the setting: {ttl} ms"
    );
    let again = send(Method::POST, &url, Some("t"), None, Some(&body)).await?;
    assert_eq!(again.replayed.as_deref(), Some("true"));

    // Redis drops it; then the same key is a new request.
    poll_until("the key to expire", Duration::from_secs(5), || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move { (!conn.exists::<_, bool>(&key).await.ok()?).then_some(()) }
    })
    .await?;
    let later = send(Method::POST, &url, Some("t"), None, Some(&body)).await?;
    assert_eq!(
        (later.json(), later.replayed),
        (json!({"a": 1, "id": 2}), None)
    );
    publisher.stop().await
}

/// The quiet fault: the script ran in Redis and its answer never came back. The client is
/// told the outcome is unknown (not "nothing was written"), and its retry with the key
/// gets the write's answer instead of a second record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_outcome_unknown_and_a_keyed_retry_settles_it() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = Blackhole::start(format!("127.0.0.1:{}", redis.port()).parse()?).await?;
    let publisher = Publisher::start_with(&format!("redis://{}/", proxy.addr), |c| {
        c.redis_timeout = Duration::from_millis(500);
    })
    .await?;
    let url = publisher.url("/api/Lost");
    let warm = send(Method::POST, &url, None, None, Some(&json!({"n": 1}))).await?;
    assert_eq!(warm.status, 200);

    // Hold writes in Redis, send the write, wait until Redis holds it, cut the route, let
    // Redis run it: its answer goes into the partition.
    redis.hold_writes().await?;
    let write = tokio::spawn({
        let url = url.clone();
        async move {
            send(
                Method::POST,
                &url,
                Some("lost-1"),
                None,
                Some(&json!({"n": 2})),
            )
            .await
        }
    });
    redis.wait_for_held_script().await?;
    proxy.partition();
    redis.release_writes().await?;
    let lost = within("the write's answer", write).await???;
    assert_eq!(lost.status, 503, "{lost:?}");
    assert_eq!(lost.json()["error"]["code"], "OUTCOME_UNKNOWN");
    assert!(
        lost.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Idempotency-Key"),
        "{lost:?}"
    );
    assert_eq!(hlen(&redis, "Lost").await?, 2, "the write did happen");

    proxy.heal();
    let retried = poll_until("the retry to be answered", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let a = send(
                Method::POST,
                &url,
                Some("lost-1"),
                None,
                Some(&json!({"n": 2})),
            )
            .await
            .ok()?;
            (a.status == 200).then_some(a)
        }
    })
    .await?;
    assert_eq!(retried.json(), json!({"n": 2, "id": 2}));
    assert_eq!(retried.replayed.as_deref(), Some("true"));
    assert_eq!(
        (hlen(&redis, "Lost").await?, xlen(&redis, "Lost").await?),
        (2, 2)
    );
    publisher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_on_the_topics_slot_in_a_cluster() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let publisher = Publisher::start_cluster(&cluster).await?;
    let mut conn = cluster.connection().await?;
    for topic in ["Orders", "Invoices", "Users"] {
        let url = publisher.url(&format!("/api/{topic}"));
        let first = send(Method::POST, &url, Some("c1"), None, Some(&json!({"a": 1}))).await?;
        assert_eq!(
            (first.status, first.replayed.clone()),
            (StatusCode::OK, None),
            "{first:?}"
        );
        let again = send(Method::POST, &url, Some("c1"), None, Some(&json!({"a": 1}))).await?;
        assert_eq!(
            (again.body, again.replayed.as_deref()),
            (first.body, Some("true"))
        );
        let reused = send(Method::POST, &url, Some("c1"), None, Some(&json!({"a": 2}))).await?;
        assert_eq!(reused.status, 422);
        let t = Topic::new(topic)?;
        let key = t.idempotency_key("", "c1");
        assert_eq!(
            cluster.keyslot(&key).await?,
            cluster.keyslot(&t.records_key()).await?
        );
        let kept: bool = within("EXISTS", conn.exists(&key)).await??;
        assert!(kept, "{key}");
        let records: usize = within("HLEN", conn.hlen(t.records_key())).await??;
        assert_eq!(records, 1, "{topic}: written once");
    }
    publisher.stop().await
}

#[tokio::test]
async fn an_array_create_is_all_or_none_and_its_events_are_consecutive() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let url = publisher.url("/api/Batch");
    let seeded = send(
        Method::POST,
        &url,
        None,
        None,
        Some(&json!({"id": 7, "n": 0})),
    )
    .await?;
    assert_eq!(seeded.status, 200);

    let mut pubsub = within("pubsub", redis.client().get_async_pubsub()).await??;
    within(
        "SUBSCRIBE",
        pubsub.subscribe(Topic::new("Batch")?.redis_channel()),
    )
    .await??;
    let mut messages = pubsub.into_on_message();

    for bad in [
        json!([{"n": 1}, {"id": 7, "n": 2}, {"n": 3}]),
        json!([{"id": 20, "n": 1}, {"id": 20, "n": 2}]),
        json!([{"n": 1}, 5, {"n": 3}]),
        json!([{"n": 1}, {"id": 1.5}]),
    ] {
        let refused = send(Method::POST, &url, Some("bad"), None, Some(&bad)).await?;
        assert!(refused.status.is_client_error(), "{bad}: {refused:?}");
        assert_eq!(
            (hlen(&redis, "Batch").await?, xlen(&redis, "Batch").await?),
            (1, 1),
            "{bad}"
        );
    }

    let items: Vec<Value> = (1..=5).map(|n| json!({"n": n})).collect();
    let created = send(
        Method::POST,
        &url,
        Some("good"),
        None,
        Some(&Value::Array(items)),
    )
    .await?;
    let created = created.json();
    let ids: Vec<Value> = created
        .as_array()
        .map(|a| a.iter().map(|r| r["id"].clone()).collect())
        .unwrap_or_default();
    // Automatic ids follow the largest integer id given so far (7), as LoopBack's do.
    assert_eq!(ids, [8, 9, 10, 11, 12].map(|n| json!(n)), "{created}");

    // The first message on the channel is the batch's first: the refusals published nothing.
    let mut got = Vec::new();
    for _ in 0..5 {
        let msg = within("message", messages.next())
            .await?
            .expect("subscribed");
        got.push(Envelope::decode(&msg.get_payload::<String>()?)?);
    }
    let data: Vec<Value> = got
        .iter()
        .map(|e| serde_json::from_str(&e.change).unwrap_or(Value::Null))
        .collect();
    for (n, change) in (1..=5).zip(&data) {
        let id = n + 7;
        assert_eq!(
            change,
            &json!({"target": id, "data": {"n": n, "id": id}, "type": "create"})
        );
    }
    let ids = stream_ids(&redis, "Batch").await?;
    assert!(
        consecutive(&ids[1..]),
        "the batch's ids are consecutive: {ids:?}"
    );
    for (i, envelope) in got.iter().enumerate() {
        assert_eq!(envelope.id.to_string(), ids[i + 1]);
        assert_eq!(
            envelope.prev.to_string(),
            ids[i],
            "each event's prev is the one before"
        );
    }

    // updateAll: one update per matched record, in id order, consecutive.
    let updated = send(
        Method::POST,
        &publisher.url("/api/Batch/update?where=%7B%22n%22%3A%7B%22gte%22%3A2%7D%7D"),
        None,
        None,
        Some(&json!({"big": true})),
    )
    .await?;
    assert_eq!(updated.json(), json!({"count": 4}));
    let mut targets = Vec::new();
    for _ in 0..4 {
        let msg = within("message", messages.next())
            .await?
            .expect("subscribed");
        let change: Value = serde_json::from_str(
            Envelope::decode(&msg.get_payload::<String>()?)?
                .change
                .as_str(),
        )?;
        assert_eq!(change["type"], "update");
        targets.push(change["target"].clone());
    }
    assert_eq!(targets, [9, 10, 11, 12].map(|n| json!(n)));
    let ids = stream_ids(&redis, "Batch").await?;
    assert!(consecutive(&ids[6..]), "{ids:?}");
    publisher.stop().await
}
