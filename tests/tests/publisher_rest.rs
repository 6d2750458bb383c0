//! The publisher's REST API against a real Redis: each mutation leaves the record, one
//! stream entry and one pub/sub message carrying the same change and stream id.

use futures::StreamExt;
use proto::{Envelope, EventId, StreamFields, Topic};
use redis::AsyncCommands;
use redis::streams::StreamRangeReply;
use serde_json::{Value, json};
use system_tests::{Publisher, RedisServer, http, within};

/// The stream's entries as (id, change JSON, last state).
async fn stream_entries(
    redis: &RedisServer,
    topic: &Topic,
) -> anyhow::Result<Vec<(EventId, StreamFields)>> {
    let mut conn = redis.connection().await?;
    let reply: StreamRangeReply = within("XRANGE", conn.xrange_all(topic.stream_key())).await??;
    reply
        .ids
        .iter()
        .map(|entry| {
            let pairs: Vec<(String, String)> = entry
                .map
                .iter()
                .map(|(k, v)| Ok((k.clone(), redis::from_redis_value_ref::<String>(v)?)))
                .collect::<anyhow::Result<_>>()?;
            let fields =
                StreamFields::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
            Ok((EventId::parse(&entry.id)?, fields))
        })
        .collect()
}

#[tokio::test]
async fn seed_scenario_record_stream_and_pubsub_agree() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let topic = Topic::new("MyModels")?;
    let client = http();

    let mut pubsub = within("pubsub connect", redis.client().get_async_pubsub()).await??;
    within("subscribe", pubsub.subscribe(topic.redis_channel())).await??;
    let mut messages = pubsub.into_on_message();
    let mut next_envelope = async || -> anyhow::Result<Envelope> {
        let msg = within("pub/sub message", messages.next())
            .await?
            .expect("subscription open");
        Ok(Envelope::decode(&msg.get_payload::<String>()?)?)
    };

    // create
    let created: Value = within(
        "POST",
        client
            .post(publisher.url("/api/MyModels"))
            .json(&json!({"foo": "bar"}))
            .send(),
    )
    .await??
    .error_for_status()?
    .json()
    .await?;
    assert_eq!(created, json!({"foo": "bar", "id": 1}));
    let create = next_envelope().await?;
    assert_eq!(
        create.change,
        r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#
    );
    assert_eq!(create.prev, EventId::ZERO);
    assert_eq!(create.last, None);

    let mut conn = redis.connection().await?;
    let record: String = conn.hget(topic.records_key(), "1").await?;
    assert_eq!(record, r#"{"foo":"bar","id":1}"#);
    let entries = stream_entries(&redis, &topic).await?;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, create.id, "pub/sub carries the stream id");
    assert_eq!(entries[0].1.change, create.change);

    // PATCH merges and sends the whole record as an update.
    let patched: Value = client
        .patch(publisher.url("/api/MyModels/1"))
        .json(&json!({"n": 2}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(patched, json!({"foo": "bar", "id": 1, "n": 2}));
    let patch = next_envelope().await?;
    assert_eq!(
        patch.change,
        r#"{"target":1,"data":{"foo":"bar","id":1,"n":2},"type":"update"}"#
    );
    assert_eq!(
        patch.prev, create.id,
        "the id chain links each event to the previous one"
    );

    // PUT replaces.
    client
        .put(publisher.url("/api/MyModels/1"))
        .json(&json!({"foo": "qux"}))
        .send()
        .await?
        .error_for_status()?;
    let put = next_envelope().await?;
    assert_eq!(
        put.change,
        r#"{"target":1,"data":{"foo":"qux","id":1},"type":"update"}"#
    );
    assert_eq!(put.prev, patch.id);

    // DELETE removes, keeping the last state for filters (not in the browser's bytes).
    let deleted: Value = client
        .delete(publisher.url("/api/MyModels/1"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(deleted, json!({"count": 1}));
    let remove = next_envelope().await?;
    assert_eq!(
        remove.change,
        r#"{"target":1,"where":{"id":1},"type":"remove"}"#
    );
    assert_eq!(remove.last.as_deref(), Some(r#"{"foo":"qux","id":1}"#));
    assert_eq!(remove.prev, put.id);

    // Deleting again changes nothing and publishes nothing.
    let again: Value = client
        .delete(publisher.url("/api/MyModels/1"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(again, json!({"count": 0}));
    let exists: bool = conn.hexists(topic.records_key(), "1").await?;
    assert!(!exists);

    let entries = stream_entries(&redis, &topic).await?;
    let ids: Vec<EventId> = entries.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [create.id, patch.id, put.id, remove.id]);
    assert_eq!(
        entries[3].1.last.as_deref(),
        Some(r#"{"foo":"qux","id":1}"#)
    );

    // The next create gets the next integer id, even after a delete.
    let second: Value = client
        .post(publisher.url("/api/MyModels"))
        .json(&json!({"foo": "again"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(second, json!({"foo": "again", "id": 2}));
    assert_eq!(next_envelope().await?.prev, remove.id);
    publisher.stop().await
}

#[tokio::test]
async fn ids_reads_and_raw_publish() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let client = http();
    let post = |body: Value| client.post(publisher.url("/api/Orders")).json(&body).send();

    // An explicit integer id moves the counter past it; string ids are kept as strings.
    let given: Value = post(json!({"id": 10, "x": 1})).await?.json().await?;
    assert_eq!(given, json!({"id": 10, "x": 1}));
    let next: Value = post(json!({"x": 2})).await?.json().await?;
    assert_eq!(next, json!({"x": 2, "id": 11}));
    let named: Value = post(json!({"x": 3, "id": "abc"})).await?.json().await?;
    assert_eq!(named, json!({"x": 3, "id": "abc"}));

    // A duplicate id is a conflict and writes nothing.
    let dup = post(json!({"id": 10, "x": 9})).await?;
    assert_eq!(dup.status(), 409);
    let body: Value = dup.json().await?;
    assert_eq!(body["error"]["statusCode"], 409);

    // Reads: list in id order, single record, 404 for a missing one.
    let list: Value = client
        .get(publisher.url("/api/Orders"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        list,
        json!([{"id": 10, "x": 1}, {"x": 2, "id": 11}, {"x": 3, "id": "abc"}])
    );
    let one: Value = client
        .get(publisher.url("/api/Orders/abc"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(one, json!({"x": 3, "id": "abc"}));
    let missing = client.get(publisher.url("/api/Orders/404")).send().await?;
    assert_eq!(missing.status(), 404);
    let empty: Value = client
        .get(publisher.url("/api/Nothing"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(empty, json!([]));

    // PUT and PATCH of a missing record: 404, nothing written.
    for req in [
        client
            .put(publisher.url("/api/Orders/99"))
            .json(&json!({"x": 1})),
        client
            .patch(publisher.url("/api/Orders/99"))
            .json(&json!({"x": 1})),
    ] {
        let res = req.send().await?;
        assert_eq!(res.status(), 404);
        let body: Value = res.json().await?;
        assert_eq!(body["error"]["code"], "MODEL_NOT_FOUND");
    }

    // Raw publish: an event without a record write, same envelope and stream.
    let change = json!({"target": 7, "data": {"id": 7, "name": "ext"}, "type": "update"});
    let published: Value = client
        .post(publisher.url("/publish"))
        .json(&json!({"topic": "External", "change": change}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = EventId::parse(published["id"].as_str().expect("id"))?;
    let topic = Topic::new("External")?;
    let entries = stream_entries(&redis, &topic).await?;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, id);
    assert_eq!(
        entries[0].1.change,
        r#"{"target":7,"data":{"id":7,"name":"ext"},"type":"update"}"#
    );
    let mut conn = redis.connection().await?;
    let records: bool = conn.exists(topic.records_key()).await?;
    assert!(!records, "raw publish writes no record");
    publisher.stop().await
}

#[tokio::test]
async fn an_array_create_numbers_its_items_in_array_order() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let client = http();
    let post = |body: Value| {
        client
            .post(publisher.url("/api/Batches"))
            .json(&body)
            .send()
    };

    // As if each were created in turn (LoopBack's order): id 10 moves the counter for
    // the items after it, in the same script run.
    let created: Value = post(json!([{"id": 10}, {"a": 1}, {"id": "s"}, {"a": 2}]))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        created,
        json!([{"id": 10}, {"a": 1, "id": 11}, {"id": "s"}, {"a": 2, "id": 12}])
    );
    let next: Value = post(json!({})).await?.json().await?;
    assert_eq!(next, json!({"id": 13}));
    // An id a later item names is skipped, not refused.
    let created: Value = post(json!([{"a": 3}, {"id": 14}]))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(created, json!([{"a": 3, "id": 15}, {"id": 14}]));
    publisher.stop().await
}

/// Numbers as a Python or Go client writes them come back, from Redis, in the bytes
/// JavaScript's `JSON.stringify` (and so LoopBack) writes: in the answer, the stored record,
/// the stream entry (what every gateway sends) and a later read.
#[tokio::test]
async fn numbers_are_stored_and_sent_in_javascripts_bytes() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let topic = Topic::new("Numbers")?;
    let client = http();
    let sent = "[10.0,-0.0,1e6,1e-06,1.5e+20,12345678901234567890,0.1,1e21]";
    let javascript = "[10,0,1000000,0.000001,150000000000000000000,12345678901234567000,0.1,1e+21]";
    let expected = format!(r#"{{"v":{javascript},"id":1}}"#);

    let answer = within(
        "POST",
        client
            .post(publisher.url("/api/Numbers"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"v":{sent}}}"#))
            .send(),
    )
    .await??
    .error_for_status()?;
    assert_eq!(within("answer", answer.text()).await??, expected);

    let mut conn = redis.connection().await?;
    let stored: String = within("HGET", conn.hget(topic.records_key(), "1")).await??;
    assert_eq!(stored, expected);
    let entries = stream_entries(&redis, &topic).await?;
    assert_eq!(
        entries
            .iter()
            .map(|(_, f)| f.change.as_str())
            .collect::<Vec<_>>(),
        [format!(
            r#"{{"target":1,"data":{expected},"type":"create"}}"#
        )]
    );
    let read = within("GET", client.get(publisher.url("/api/Numbers/1")).send()).await??;
    assert_eq!(within("read", read.text()).await??, expected);
    publisher.stop().await
}

#[tokio::test]
async fn retention_trims_the_stream() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start_with(&redis.url(), |c| c.retention.max_len = 100).await?;
    let client = http();
    for i in 0..1000 {
        client
            .post(publisher.url("/api/Trimmed"))
            .json(&json!({"i": i}))
            .send()
            .await?
            .error_for_status()?;
    }
    let mut conn = redis.connection().await?;
    let len: usize = conn.xlen(Topic::new("Trimmed")?.stream_key()).await?;
    // MAXLEN ~ keeps at least 100 and drops whole nodes (100 entries by default).
    assert!((100..=300).contains(&len), "stream length {len}");
    publisher.stop().await
}
