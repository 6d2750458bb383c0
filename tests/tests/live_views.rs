//! Live views that are exact (DESIGN.md, "Live views"), with real Redis, publisher and
//! gateways:
//! - `GET /api/{c}?filter=` honours the filter (JSON and bracket form) and answers
//!   `Last-Event-ID`, the position its records are exactly the state of; a change stream
//!   opened there yields exactly the later changes. Also on a collection larger than a page,
//!   read while writers change it.
//! - A filtered stream moves records out (an update that leaves the filter arrives as the
//!   record's `remove`) and in, live and on replay on another pod.
//! - A token's row scope (`topics.where`) narrows streams and REST reads; a client filter
//!   cannot widen it; a malformed scope is a 401.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use proto::{EventId, Topic};
use publisher::{RedisOptions, RedisStore, Retention, Store};
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::{Gateway, Publisher, RedisServer, SseClient, http, stream_http, within};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "live-views-hs256-secret-of-at-least-32-bytes";

fn object(value: Value) -> proto::Object {
    value.as_object().cloned().expect("object")
}

/// `GET url` as JSON, with its `Last-Event-ID`.
async fn find(url: &str, token: Option<&str>) -> anyhow::Result<(Vec<Value>, String)> {
    let mut req = http().get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = within("find", req.send()).await??;
    anyhow::ensure!(res.status() == 200, "{url}: {}", res.status());
    let position = res
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .expect("a find answers Last-Event-ID")
        .to_owned();
    let records: Vec<Value> = res.json().await?;
    Ok((records, position))
}

fn ids(records: &[Value]) -> Vec<i64> {
    records.iter().filter_map(|r| r["id"].as_i64()).collect()
}

fn encode(filter: &Value) -> String {
    let text = filter.to_string();
    url_escape(&text)
}

fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Both REST servers of the product: the publisher on Redis, and the embedded gateway.
async fn find_filters_on(base: &str) -> anyhow::Result<()> {
    let client = http();
    for (n, status) in [
        (3, "open"),
        (1, "done"),
        (5, "open"),
        (2, "open"),
        (4, "done"),
    ] {
        let res = client
            .post(format!("{base}/api/Orders"))
            .json(&json!({"n": n, "status": status}))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "create: {}", res.status());
    }
    let url = |q: &str| format!("{base}/api/Orders?{q}");
    let (all, _) = find(&url(""), None).await?;
    assert_eq!(ids(&all), [1, 2, 3, 4, 5]);
    let filter = json!({"where": {"status": "open"}, "order": "n DESC", "limit": 2});
    let (open, _) = find(&url(&format!("filter={}", encode(&filter))), None).await?;
    assert_eq!(
        open,
        [
            json!({"n": 5, "status": "open", "id": 3}),
            json!({"n": 3, "status": "open", "id": 1})
        ]
    );
    let bracket = "filter[where][status]=done&filter[fields][n]=true&filter[order]=n";
    let (done, _) = find(&url(bracket), None).await?;
    assert_eq!(done, [json!({"n": 1}), json!({"n": 4})]);
    // A filter that cannot be honoured is a 400, never a silent match-all.
    for bad in [
        "filter=%7B",
        "filter[order]=n%20UP",
        "filter[limit]=-1",
        "filter=%7B%22sort%22%3A1%7D",
    ] {
        let res = client.get(url(bad)).send().await?;
        assert_eq!(res.status(), 400, "{bad}");
        let body: Value = res.json().await?;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("filter"),
            "{body}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn find_honours_filters_on_redis_and_embedded() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    find_filters_on(&publisher.url("")).await?;
    let embedded = Gateway::start_with(None, |_| {}).await?;
    find_filters_on(&embedded.url("")).await?;
    publisher.stop().await
}

/// The answer's position is the state its records are: a stream opened with it gets
/// exactly the changes made after the read, on Redis and embedded.
#[tokio::test]
async fn a_find_position_hands_over_to_the_stream_exactly() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let gateway = Gateway::start(&redis.url()).await?;
    let embedded = Gateway::start_with(None, |_| {}).await?;
    for (api, streams) in [
        (publisher.url(""), gateway.url("")),
        (embedded.url(""), embedded.url("")),
    ] {
        let client = http();
        for n in 0..3 {
            client
                .post(format!("{api}/api/Hand"))
                .json(&json!({"n": n}))
                .send()
                .await?;
        }
        let (records, position) = find(&format!("{api}/api/Hand"), None).await?;
        assert_eq!(records.len(), 3);
        let later = client
            .post(format!("{api}/api/Hand"))
            .json(&json!({"n": 3}))
            .send()
            .await?
            .json::<Value>()
            .await?;
        let mut stream = SseClient::connect(
            &format!("{streams}/api/Hand/change-stream"),
            Some(&position),
        )
        .await?;
        let frame = stream.next_event().await?;
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
        assert_eq!(
            change["data"], later,
            "the first change after the snapshot, nothing before"
        );
    }
    publisher.stop().await
}

/// A collection of several pages, read while writers create, update and delete in it: the
/// records are exactly the state at the answer's position, as the stream itself says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_snapshot_under_writes_is_the_state_at_its_position() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    // All history kept, so the test can rebuild any position's state from the stream.
    let options = RedisOptions {
        retention: Retention {
            max_len: 0,
            max_age: Duration::ZERO,
        },
        ..RedisOptions::default()
    };
    let store = RedisStore::connect_lazy(&redis.url(), options.clone())?;
    let topic = Topic::new("Big")?;
    for n in 0..4000 {
        store
            .create(&topic, object(json!({"n": n, "v": 0})))
            .await?;
    }
    let stop = CancellationToken::new();
    let writer = {
        let (store, topic, stop) = (store.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n: i64 = 0;
            while !stop.is_cancelled() {
                n += 1;
                let id = proto::RecordId::Int(1 + (n * 7919) % 4000);
                let _ = match n % 3 {
                    0 => store
                        .patch(&topic, &id, object(json!({"v": n})))
                        .await
                        .map(|_| ()),
                    1 => store.delete(&topic, &id).await.map(|_| ()),
                    _ => store
                        .create(&topic, object(json!({"n": n, "v": n})))
                        .await
                        .map(|_| ()),
                };
            }
        })
    };
    let mut checked = 0;
    let mut moved = 0;
    for _ in 0..5 {
        let snapshot = store.snapshot(&topic).await?;
        let state = state_at(&redis, &topic, snapshot.position).await?;
        let got: BTreeMap<String, Value> = snapshot
            .records
            .iter()
            .map(|text| {
                let record: Value = serde_json::from_str(text).expect("record");
                (record["id"].to_string(), record)
            })
            .collect();
        assert_eq!(got.len(), snapshot.records.len(), "each record once");
        assert_eq!(
            got, state,
            "the records are the state at {}",
            snapshot.position
        );
        checked += got.len();
        moved += usize::from(snapshot.position != state_top(&redis, &topic).await?);
    }
    stop.cancel();
    writer.await?;
    eprintln!(
        "checked {checked} records over 5 snapshots; the stream moved past {moved} of them while they were read"
    );
    Ok(())
}

/// Every record as the stream's entries up to `position` leave it.
async fn state_at(
    redis: &RedisServer,
    topic: &Topic,
    position: EventId,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply = within(
        "XRANGE",
        conn.xrange(topic.stream_key(), "-", position.to_string()),
    )
    .await??;
    let mut state = BTreeMap::new();
    for entry in reply.ids {
        let change: String = entry.get("change").expect("change");
        let change: Value = serde_json::from_str(&change)?;
        let key = change["target"].to_string();
        match change["type"].as_str() {
            Some("remove") => {
                state.remove(&key);
            }
            _ => {
                state.insert(key, change["data"].clone());
            }
        }
    }
    Ok(state)
}

async fn state_top(redis: &RedisServer, topic: &Topic) -> anyhow::Result<EventId> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply = within(
        "XREVRANGE",
        conn.xrevrange_count(topic.stream_key(), "+", "-", 1),
    )
    .await??;
    Ok(reply
        .ids
        .first()
        .map_or(EventId::ZERO, |e| EventId::parse(&e.id).expect("id")))
}

/// Reads `n` data events as change objects.
async fn changes(client: &mut SseClient, n: usize) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.next_event().await?;
        out.push(serde_json::from_str(frame.data.as_deref().unwrap_or(""))?);
    }
    Ok(out)
}

#[tokio::test]
async fn updates_move_records_out_of_and_into_a_filtered_stream_live_and_on_replay()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let a = Gateway::start(&redis.url()).await?;
    let b = Gateway::start(&redis.url()).await?;
    let filter = url_escape(&json!({"where": {"status": "open"}}).to_string());
    let path = format!("/api/Tasks/change-stream?options={filter}");
    let mut live = SseClient::connect(&a.url(&path), None).await?;
    // `:ok`, `retry:`, then the starting position (an `id:` without an event).
    let start = loop {
        let frame = live.next_frame().await?.expect("the stream goes on");
        if let Some(id) = frame.id {
            break id;
        }
    };
    let client = http();
    let task = |body: Value| client.post(publisher.url("/api/Tasks")).json(&body).send();
    task(json!({"status": "open", "id": 1})).await?;
    task(json!({"status": "done", "id": 2})).await?;
    let patch = |id: i64, status: &str| {
        client
            .patch(publisher.url(&format!("/api/Tasks/{id}")))
            .json(&json!({"status": status}))
            .send()
    };
    patch(1, "done").await?; // out
    patch(2, "open").await?; // in
    patch(2, "open").await?; // stays
    patch(1, "wontfix").await?; // neither: nothing
    client.delete(publisher.url("/api/Tasks/2")).send().await?; // a remove of a member
    let expected = vec![
        json!({"target": 1, "data": {"status": "open", "id": 1}, "type": "create"}),
        json!({"target": 1, "where": {"id": 1}, "type": "remove"}),
        json!({"target": 2, "data": {"status": "open", "id": 2}, "type": "update"}),
        json!({"target": 2, "data": {"status": "open", "id": 2}, "type": "update"}),
        json!({"target": 2, "where": {"id": 2}, "type": "remove"}),
    ];
    assert_eq!(changes(&mut live, 5).await?, expected, "live");
    // The same view, replayed from the start on the other pod.
    let mut replayed = SseClient::connect(&b.url(&path), Some(&start)).await?;
    assert_eq!(changes(&mut replayed, 5).await?, expected, "replay");
    publisher.stop().await
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn scoped(owner: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 300;
    token(&json!({
        "sub": owner,
        "exp": exp,
        "topics": {"subscribe": ["Orders*"], "publish": ["Orders*"], "where": {"Orders*": {"ownerId": owner}}},
    }))
}

#[tokio::test]
async fn a_token_scope_narrows_streams_and_reads_and_an_owner_change_is_exact_for_both()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let auth = [("PUBLISHER_JWT_SECRET", SECRET)];
    let publisher = Publisher::start_env(&redis.url(), &auth).await?;
    let gateway = Gateway::start_env(Some(&redis.url()), &[("GATEWAY_JWT_SECRET", SECRET)]).await?;
    let (alice, bob) = (scoped("alice"), scoped("bob"));
    let stream = |who: &str, options: Option<Value>| {
        let mut url = gateway.url("/api/Orders/change-stream?_format=event-stream");
        if let Some(options) = options {
            url.push_str(&format!("&options={}", url_escape(&options.to_string())));
        }
        stream_http()
            .get(url)
            .header("accept", "text/event-stream")
            .bearer_auth(who)
    };
    let mut alice_all = SseClient::open(stream(&alice, None)).await?;
    // Alice's own `or` cannot widen her scope to Bob's rows.
    let widen = json!({"where": {"or": [{"ownerId": "bob"}, {"n": {"gte": 0}}]}});
    let mut alice_widen = SseClient::open(stream(&alice, Some(widen))).await?;
    let mut bob_all = SseClient::open(stream(&bob, None)).await?;
    let client = http();
    let write = |who: &str, method: reqwest::Method, path: &str, body: Value| {
        client
            .request(method, publisher.url(path))
            .bearer_auth(who)
            .json(&body)
            .send()
    };
    write(
        &alice,
        reqwest::Method::POST,
        "/api/Orders",
        json!({"ownerId": "alice", "n": 1, "id": 1}),
    )
    .await?;
    write(
        &bob,
        reqwest::Method::POST,
        "/api/Orders",
        json!({"ownerId": "bob", "n": 2, "id": 2}),
    )
    .await?;
    // Alice hands order 1 to Bob: she gets its remove, he gets it.
    write(
        &alice,
        reqwest::Method::PATCH,
        "/api/Orders/1",
        json!({"ownerId": "bob"}),
    )
    .await?;
    let alice_sees = vec![
        json!({"target": 1, "data": {"ownerId": "alice", "n": 1, "id": 1}, "type": "create"}),
        json!({"target": 1, "where": {"id": 1}, "type": "remove"}),
    ];
    assert_eq!(changes(&mut alice_all, 2).await?, alice_sees);
    assert_eq!(
        changes(&mut alice_widen, 2).await?,
        alice_sees,
        "a client filter only narrows"
    );
    assert_eq!(
        changes(&mut bob_all, 2).await?,
        [
            json!({"target": 2, "data": {"ownerId": "bob", "n": 2, "id": 2}, "type": "create"}),
            json!({"target": 1, "data": {"ownerId": "bob", "n": 1, "id": 1}, "type": "update"}),
        ]
    );
    // REST reads too.
    let (bobs, _) = find(&publisher.url("/api/Orders"), Some(&bob)).await?;
    assert_eq!(ids(&bobs), [1, 2]);
    let (alices, _) = find(&publisher.url("/api/Orders"), Some(&alice)).await?;
    assert!(alices.is_empty());
    let hidden = client
        .get(publisher.url("/api/Orders/2"))
        .bearer_auth(&alice)
        .send()
        .await?;
    assert_eq!(hidden.status(), 404);
    // A scope that cannot be applied is refused, not ignored.
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 300;
    let bad = token(
        &json!({"exp": exp, "topics": {"subscribe": ["Orders"], "where": {"Orders": {"n": {"nope": 1}}}}}),
    );
    let res = within("bad scope", stream(&bad, None).send()).await??;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("topics.where.Orders"),
        "{body}"
    );
    publisher.stop().await
}

/// A topic fed by a backend's raw publishes has no records here: a find says so (409)
/// rather than answer an empty list that looks real, on Redis and embedded.
#[tokio::test]
async fn a_find_of_a_raw_topic_is_409_not_an_empty_list() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let embedded = Gateway::start_with(None, |_| {}).await?;
    for base in [publisher.url(""), embedded.url("")] {
        let client = http();
        let published = client
            .post(format!("{base}/publish"))
            .json(&json!({"topic": "Raw", "change": {"target": 1, "data": {"id": 1}, "type": "create"}}))
            .send()
            .await?;
        assert_eq!(published.status(), 200);
        let res = client.get(format!("{base}/api/Raw")).send().await?;
        assert_eq!(res.status(), 409, "{base}");
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "RECORDS_NOT_KEPT", "{body}");
    }
    publisher.stop().await
}

/// The state of `Shots` at `position`, rebuilt from its whole stream (read from the start
/// through a change stream; the test keeps all history).
async fn state_via_stream(
    streams: &str,
    position: &str,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let url = format!("{streams}/api/Shots/change-stream");
    let mut replay = SseClient::connect(&url, Some("0-0")).await?;
    let mut state = BTreeMap::new();
    let target = EventId::parse(position)?;
    if target == EventId::ZERO {
        return Ok(state);
    }
    loop {
        let frame = replay.next_event().await?;
        assert_eq!(
            frame.event.as_deref(),
            Some("data"),
            "all history kept: {frame:?}"
        );
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
        apply_change(&mut state, &change);
        let id = EventId::parse(frame.id.as_deref().unwrap_or(""))?;
        if id >= target {
            anyhow::ensure!(id == target, "{position} is a stream id");
            return Ok(state);
        }
    }
}

/// Applies one change object to a view kept by id, as live-set.js does.
fn apply_change(view: &mut BTreeMap<String, Value>, change: &Value) {
    let key = change["target"].to_string();
    match change["type"].as_str() {
        Some("remove") => {
            view.remove(&key);
        }
        _ => {
            view.insert(key, change["data"].clone());
        }
    }
}

/// A `snapshot=true` stream with a filter, opened while writers change a collection of
/// several pages (moving records in and out of the filter): the view it builds from the
/// snapshot pages and the changes that follow equals what `GET ?filter=` answers. On Redis
/// (pages read as the client takes them, settled by the stream) and embedded.
async fn snapshot_view_is_exact(api: &str, streams: &str) -> anyhow::Result<()> {
    let client = http();
    for n in 0..1500 {
        let res = client
            .post(format!("{api}/api/Shots"))
            .json(&json!({"n": n, "odd": n % 2 == 1}))
            .send()
            .await?;
        anyhow::ensure!(res.status() == 200, "create {}", res.status());
    }
    let stop = CancellationToken::new();
    let writer = {
        let (stop, api) = (stop.clone(), api.to_owned());
        tokio::spawn(async move {
            let client = http();
            let mut n: i64 = 0;
            while !stop.is_cancelled() {
                n += 1;
                let id = 1 + (n * 7919) % 1500;
                let url = format!("{api}/api/Shots/{id}");
                let _ = match n % 4 {
                    0 => client.delete(&url).send().await,
                    1 => {
                        client
                            .post(format!("{api}/api/Shots"))
                            .json(&json!({"n": n, "odd": true}))
                            .send()
                            .await
                    }
                    _ => {
                        client
                            .patch(&url)
                            .json(&json!({"odd": n % 3 == 0, "v": n}))
                            .send()
                            .await
                    }
                };
            }
        })
    };
    let filter = json!({"where": {"odd": true}});
    let url = format!(
        "{streams}/api/Shots/change-stream?snapshot=true&options={}",
        url_escape(&filter.to_string())
    );
    let mut stream = SseClient::connect(&url, None).await?;
    let mut view = BTreeMap::new();
    let mut pages = 0;
    let position = loop {
        let frame = stream.next_event().await?;
        assert_eq!(
            frame.event.as_deref(),
            Some("snapshot"),
            "pages first: {frame:?}"
        );
        let page: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
        for record in page["records"].as_array().expect("records") {
            assert_eq!(record["odd"], true, "only what the filter lets through");
            view.insert(record["id"].to_string(), record.clone());
        }
        pages += 1;
        if page["last"] == true {
            break frame.id.expect("the last page names the position");
        }
        assert!(frame.id.is_none(), "no position before the last page");
    };
    stop.cancel();
    writer.await?;
    // At its position the snapshot is exactly the state there, as the stream tells it (not
    // merely right once the later changes are applied).
    let at_position: BTreeMap<String, Value> = state_via_stream(streams, &position)
        .await?
        .into_iter()
        .filter(|(_, record)| record["odd"] == true)
        .collect();
    assert_eq!(view, at_position, "the snapshot is the state at {position}");
    // A last change the filter lets through: once it arrives, the view is current.
    let sentinel: Value = client
        .post(format!("{api}/api/Shots"))
        .json(&json!({"n": -1, "odd": true}))
        .send()
        .await?
        .json()
        .await?;
    loop {
        let frame = stream.next_event().await?;
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
        apply_change(&mut view, &change);
        if change["target"] == sentinel["id"] {
            break;
        }
    }
    let (expected, _) = find(
        &format!("{api}/api/Shots?filter={}", url_escape(&filter.to_string())),
        None,
    )
    .await?;
    let expected: BTreeMap<String, Value> = expected
        .into_iter()
        .map(|r| (r["id"].to_string(), r))
        .collect();
    assert_eq!(
        view, expected,
        "snapshot at {position} and the changes after it"
    );
    eprintln!(
        "{streams}: {pages} snapshot pages, {} records in the view",
        view.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_builds_the_filtered_view_exactly_under_writes() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    // All history kept: the test rebuilds the state at the snapshot's position.
    let keep_all = [
        ("PUBLISHER_STREAM_MAX_LEN", "0"),
        ("PUBLISHER_STREAM_MAX_AGE", "0"),
    ];
    let publisher = Publisher::start_env(&redis.url(), &keep_all).await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| {
        c.snapshot_page = 100.try_into().expect("non-zero");
        c.heartbeat = Duration::from_secs(1);
    })
    .await?;
    snapshot_view_is_exact(&publisher.url(""), &gateway.url("")).await?;
    let embedded = Gateway::start_with(None, |c| {
        c.snapshot_page = 100.try_into().expect("non-zero");
        c.retention = Retention {
            max_len: 0,
            max_age: Duration::ZERO,
        };
    })
    .await?;
    snapshot_view_is_exact(&embedded.url(""), &embedded.url("")).await?;
    publisher.stop().await
}

/// `/events` with `snapshot=true`: each topic's records, the topic in every page, one
/// position for the whole stream (a cursor) on the very last page, then live changes.
#[tokio::test]
async fn events_snapshot_each_topic_then_one_cursor_then_live() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    let client = http();
    for (topic, n) in [("A", 1), ("A", 2), ("B", 3)] {
        client
            .post(gateway.url(&format!("/api/{topic}")))
            .json(&json!({"n": n}))
            .send()
            .await?;
    }
    let mut stream =
        SseClient::connect(&gateway.url("/events?topic=A&topic=B&snapshot=true"), None).await?;
    let mut pages = Vec::new();
    loop {
        let frame = stream.next_event().await?;
        assert_eq!(frame.event.as_deref(), Some("snapshot"));
        let page: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
        let id = frame.id.clone();
        pages.push((page, id));
        if pages.len() == 2 {
            break;
        }
    }
    assert_eq!(
        pages[0].0,
        json!({"topic": "A", "records": [{"n": 1, "id": 1}, {"n": 2, "id": 2}], "last": true})
    );
    assert!(
        pages[0].1.is_none(),
        "no position while B's snapshot is to come"
    );
    assert_eq!(
        pages[1].0,
        json!({"topic": "B", "records": [{"n": 3, "id": 1}], "last": true})
    );
    let cursor = pages[1]
        .1
        .clone()
        .expect("the last page names the stream's position");
    assert!(cursor.starts_with("c1."), "{cursor}");
    client
        .post(gateway.url("/api/B"))
        .json(&json!({"n": 4}))
        .send()
        .await?;
    let frame = stream.next_event().await?;
    let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
    assert_eq!(change["topic"], "B");
    assert_eq!(change["data"], json!({"n": 4, "id": 2}));
    Ok(())
}

/// A `snapshot=true` client whose position was trimmed away gets `reset` (naming no
/// position) and then a fresh snapshot, so it rebuilds without a second request.
#[tokio::test]
async fn a_reset_snapshot_stream_gets_a_fresh_snapshot() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |c| {
        c.retention = Retention {
            max_len: 3,
            max_age: Duration::ZERO,
        };
    })
    .await?;
    let client = http();
    let mut first_id = None;
    for n in 0..6 {
        let res = client
            .post(gateway.url("/api/Trim"))
            .json(&json!({"n": n}))
            .send()
            .await?;
        let _ = res.json::<Value>().await?;
        if first_id.is_none() {
            let (_, position) = find(&gateway.url("/api/Trim"), None).await?;
            first_id = Some(position);
        }
    }
    let url = gateway.url("/api/Trim/change-stream?snapshot=true");
    let mut stream = SseClient::connect(&url, first_id.as_deref()).await?;
    let reset = stream.next_event().await?;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert!(
        reset.id.is_none(),
        "the reset names no position: the snapshot follows"
    );
    let snapshot = stream.next_event().await?;
    assert_eq!(snapshot.event.as_deref(), Some("snapshot"));
    let page: Value = serde_json::from_str(snapshot.data.as_deref().unwrap_or(""))?;
    assert_eq!(page["records"].as_array().map(Vec::len), Some(6));
    assert_eq!(page["last"], true);
    assert!(snapshot.id.is_some());
    Ok(())
}

/// A snapshot read that Redis is slow to answer still shows the stream alive: heartbeats go
/// out while a page read is in flight (a selective filter over a large collection reads
/// many pages before it has a record to send), so a proxy's read timeout does not cut it.
#[tokio::test]
async fn heartbeats_go_out_while_a_snapshot_read_waits_on_redis() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = Topic::new("Slow")?;
    // Past Redis's small-hash encoding, so HSCAN reads it in pages.
    let records = (0..1000).map(|n| object(json!({ "n": n }))).collect();
    publisher::ops::create_many(&store, &topic, records, None, &Default::default()).await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| {
        c.heartbeat = Duration::from_millis(100);
        c.snapshot_page = 10.try_into().expect("non-zero");
    })
    .await?;
    let url = gateway.url("/api/Slow/change-stream?_format=event-stream&snapshot=true");
    let mut client = SseClient::connect(&url, None).await?;
    let first = client.next_event().await?;
    assert_eq!(first.event.as_deref(), Some("snapshot"));
    let page: Value = serde_json::from_str(first.data.as_deref().unwrap_or("{}"))?;
    assert_eq!(
        page["last"],
        false,
        "{}",
        first.raw.chars().take(300).collect::<String>()
    );
    // HSCAN's COUNT is a hint: a page may hold a few more than 10.
    let first_records = page["records"].as_array().map_or(0, Vec::len);
    let mut admin = redis.connection().await?;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin)
        .await?;
    let (mut heartbeats, mut records) = (0, 0);
    let mut frames = Vec::new();
    let read = within("the snapshot's last page", async {
        loop {
            let frame = client.next_frame().await?.expect("the stream stays open");
            if frame.comment.as_deref() == Some("") {
                heartbeats += 1;
                continue;
            }
            frames.push(frame.raw.chars().take(80).collect::<String>());
            if frame.event.as_deref() == Some("snapshot") {
                let page: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("{}"))?;
                records += page["records"].as_array().map_or(0, Vec::len);
                if page["last"] == true {
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await;
    anyhow::ensure!(
        matches!(read, Ok(Ok(()))),
        "{read:?} after {records} records, {heartbeats} heartbeats: {frames:?}"
    );
    assert!(
        first_records + records >= 1000,
        "every record: {first_records} + {records}"
    );
    assert!(heartbeats > 0, "heartbeats while the pages waited on Redis");
    gateway.stop().await
}
