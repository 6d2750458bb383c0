//! LoopBack change streams served by any pod: real Redis, a real publisher, real gateways.

use std::time::Duration;

use proto::{EventId, Object, Topic};
use publisher::{RedisOptions as StoreOptions, RedisStore, Retention, Store};
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::{Gateway, Publisher, RedisServer, SseClient, http, within};

const SEED: &str = r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#;

fn stream_url(gateway: &Gateway, topic: &str) -> String {
    gateway.url(&format!("/api/{topic}/change-stream?_format=event-stream"))
}

fn body(n: usize) -> Object {
    json!({ "n": n }).as_object().cloned().expect("object")
}

/// All stream ids of `topic`, in order.
async fn stream_ids(redis: &RedisServer, topic: &Topic) -> anyhow::Result<Vec<String>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(topic.stream_key()).await?;
    Ok(reply.ids.into_iter().map(|e| e.id).collect())
}

/// Reads `n` data events, returning their ids.
async fn read_ids(client: &mut SseClient, n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let frame = client.next_event().await?;
        assert_eq!(frame.event.as_deref(), Some("data"), "{frame:?}");
        ids.push(frame.id.expect("every change has an id"));
    }
    Ok(ids)
}

#[tokio::test]
async fn seed_scenario_a_client_on_another_pod_sees_create_update_remove() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let publisher = Publisher::start(&redis.url()).await?;
    let _a = Gateway::start(&redis.url()).await?;
    let b = Gateway::start(&redis.url()).await?;

    let mut client = SseClient::connect(&stream_url(&b, "MyModels"), None).await?;
    let h = &client.response_headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache, no-transform");
    assert_eq!(h["x-accel-buffering"], "no");
    assert!(h.get("content-encoding").is_none());

    let http = http();
    http.post(publisher.url("/api/MyModels"))
        .json(&json!({"foo": "bar"}))
        .send()
        .await?
        .error_for_status()?;
    let created = client.next_event().await?;
    assert!(
        client.received.starts_with(":ok\n\nretry: 2000\n\n"),
        "{:?}",
        client.received
    );
    assert_eq!(created.event.as_deref(), Some("data"));
    assert_eq!(created.data.as_deref(), Some(SEED));
    let id = created.id.clone().expect("id");
    EventId::parse(&id)?;
    assert_eq!(
        created.raw,
        format!("id: {id}\nevent: data\ndata: {SEED}\n\n")
    );

    http.patch(publisher.url("/api/MyModels/1"))
        .json(&json!({"foo": "baz"}))
        .send()
        .await?
        .error_for_status()?;
    let updated = client.next_event().await?;
    assert_eq!(
        updated.data.as_deref(),
        Some(r#"{"target":1,"data":{"foo":"baz","id":1},"type":"update"}"#)
    );
    http.delete(publisher.url("/api/MyModels/1"))
        .send()
        .await?
        .error_for_status()?;
    let removed = client.next_event().await?;
    assert_eq!(
        removed.data.as_deref(),
        Some(r#"{"target":1,"where":{"id":1},"type":"remove"}"#)
    );
    assert!(EventId::parse(removed.id.as_deref().unwrap_or(""))? > EventId::parse(&id)?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_on_two_pods_each_get_all_1000_events_in_order_once() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let pods = [
        Gateway::start(&redis.url()).await?,
        Gateway::start(&redis.url()).await?,
    ];
    let topic = Topic::new("Fleet")?;
    let mut readers = Vec::new();
    for i in 0..20 {
        let client = SseClient::connect(&stream_url(&pods[i % 2], "Fleet"), None).await?;
        readers.push(tokio::spawn(async move {
            let mut client = client;
            read_ids(&mut client, 1000).await
        }));
    }
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    for n in 0..1000 {
        store.create(&topic, body(n)).await?;
    }
    let expected = stream_ids(&redis, &topic).await?;
    assert_eq!(expected.len(), 1000);
    for reader in readers {
        let got = within("a reader to finish", reader).await???;
        assert_eq!(got, expected, "every event, in stream order, none twice");
    }
    Ok(())
}

/// Reads 300 of 1,000 on pod A, misses 500, resumes on pod B while publishing goes on.
async fn resume_on_the_other_pod(by_header: bool) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let a = Gateway::start(&redis.url()).await?;
    let b = Gateway::start(&redis.url()).await?;
    let topic = Topic::new("Resume")?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;

    let mut first = SseClient::connect(&stream_url(&a, "Resume"), None).await?;
    for n in 0..1000 {
        store.create(&topic, body(n)).await?;
    }
    let seen = read_ids(&mut first, 300).await?;
    drop(first);
    for n in 1000..1500 {
        store.create(&topic, body(n)).await?;
    }

    // Publishing continues during the hand-over.
    let writer = {
        let store = store.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for n in 1500..1700 {
                store.create(&topic, body(n)).await?;
            }
            anyhow::Ok(())
        })
    };
    let last = seen.last().expect("300 ids").clone();
    let mut resumed = if by_header {
        SseClient::connect(&stream_url(&b, "Resume"), Some(&last)).await?
    } else {
        SseClient::connect(
            &format!("{}&last_event_id={last}", stream_url(&b, "Resume")),
            None,
        )
        .await?
    };
    let got = read_ids(&mut resumed, 1400).await?;
    writer.await??;
    let all = stream_ids(&redis, &topic).await?;
    assert_eq!(all.len(), 1700);
    assert_eq!(
        &all[..300],
        &seen[..],
        "the first pod delivered the first 300"
    );
    assert_eq!(
        got,
        all[300..],
        "events 301.. exactly: in order, none missed, none twice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_pod_with_last_event_id_header() -> anyhow::Result<()> {
    resume_on_the_other_pod(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_pod_with_last_event_id_query() -> anyhow::Result<()> {
    resume_on_the_other_pod(false).await
}

#[tokio::test]
async fn trimmed_history_gets_reset_then_live_and_a_malformed_id_is_400() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start(&redis.url()).await?;
    let topic = Topic::new("Trim")?;
    let options = StoreOptions {
        retention: Retention {
            max_len: 100,
            max_age: Duration::ZERO,
        },
        ..StoreOptions::default()
    };
    let store = RedisStore::connect_lazy(&redis.url(), options)?;
    let first = store.create(&topic, body(0)).await?.event;
    for n in 1..1000 {
        store.create(&topic, body(n)).await?;
    }
    let newest = stream_ids(&redis, &topic).await?.pop().expect("entries");

    let mut client =
        SseClient::connect(&stream_url(&gateway, "Trim"), Some(&first.to_string())).await?;
    let reset = client.next_event().await?;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(
        reset.id.as_deref(),
        Some(newest.as_str()),
        "a reconnect after the reset resumes from here"
    );
    let reason: Value = serde_json::from_str(reset.data.as_deref().unwrap_or(""))?;
    assert_eq!(
        reason,
        json!({"reason": "history-trimmed", "lastEventId": first.to_string(), "resumeFrom": newest})
    );
    let live = store.create(&topic, body(1000)).await?.event;
    let next = client.next_event().await?;
    assert_eq!(next.event.as_deref(), Some("data"));
    assert_eq!(next.id, Some(live.to_string()));

    // An id from the future (e.g. a Redis that lost its data) is a reset too, never stuck.
    let mut ahead =
        SseClient::connect(&stream_url(&gateway, "Trim"), Some("99999999999999-0")).await?;
    let reset = ahead.next_event().await?;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert!(
        reset
            .data
            .as_deref()
            .unwrap_or("")
            .contains("position-unknown")
    );

    let http = http();
    for url in [
        stream_url(&gateway, "Trim") + "&last_event_id=banana",
        stream_url(&gateway, "Trim") + "&last_event_id=1-2-3",
    ] {
        let res = http.get(&url).send().await?;
        assert_eq!(res.status(), 400);
        let body: Value = res.json().await?;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("is not a stream id"),
            "{body}"
        );
    }
    let res = http
        .get(stream_url(&gateway, "Trim"))
        .header("last-event-id", "x")
        .send()
        .await?;
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await?;
    assert_eq!(body["error"]["statusCode"], 400);
    Ok(())
}

#[tokio::test]
async fn embedded_mode_serves_rest_and_change_stream_in_one_process() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    let mut client = SseClient::connect(&stream_url(&gateway, "MyModels"), None).await?;
    let created: Value = http()
        .post(gateway.url("/api/MyModels"))
        .json(&json!({"foo": "bar"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(created, json!({"foo": "bar", "id": 1}));
    let event = client.next_event().await?;
    assert_eq!(event.data.as_deref(), Some(SEED));
    let id = event.id.expect("id");

    // Resume works the same on the embedded bus.
    http()
        .patch(gateway.url("/api/MyModels/1"))
        .json(&json!({"n": 1}))
        .send()
        .await?;
    drop(client);
    let mut again = SseClient::connect(&stream_url(&gateway, "MyModels"), Some(&id)).await?;
    let update = again.next_event().await?;
    assert_eq!(
        update.data.as_deref(),
        Some(r#"{"target":1,"data":{"foo":"bar","id":1,"n":1},"type":"update"}"#)
    );
    gateway.stop().await
}

#[tokio::test]
async fn heartbeats_on_an_idle_stream_and_streams_end_on_shutdown() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let gateway = Gateway::start_with(Some(&redis.url()), |c| {
        c.heartbeat = Duration::from_millis(100);
        c.drain_window = Duration::from_millis(100);
    })
    .await?;

    let mut client = SseClient::connect(&stream_url(&gateway, "Idle"), None).await?;
    let mut heartbeats = 0;
    while heartbeats < 2 {
        let frame = client.next_frame().await?.expect("open stream");
        if frame.raw == ":\n\n" {
            heartbeats += 1;
        }
    }
    let shutdown = gateway.shutdown.clone();
    let stopping = tokio::spawn(gateway.stop());
    shutdown.cancel();
    // The open stream ends (EOF), and the server stops, well within the grace period.
    while client.next_frame().await?.is_some() {}
    within("gateway stop", stopping).await???;
    Ok(())
}

#[tokio::test]
async fn cors_preflight_allows_last_event_id_and_bad_requests_are_json() -> anyhow::Result<()> {
    let gateway = Gateway::start_with(None, |_| {}).await?;
    let http = http();
    let res = http
        .request(reqwest::Method::OPTIONS, stream_url(&gateway, "MyModels"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await?;
    assert!(res.status().is_success());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()?
        .to_ascii_lowercase();
    assert!(allowed.contains("last-event-id"), "{allowed}");

    for (url, accept, status, message) in [
        (
            gateway.url("/api/My%20Models/change-stream"),
            "text/event-stream",
            400,
            "topic",
        ),
        (
            gateway.url("/api/MyModels/change-stream"),
            "application/json",
            406,
            "text/event-stream",
        ),
        (
            gateway.url("/api/MyModels/change-stream?_format=json"),
            "*/*",
            406,
            "event-stream",
        ),
        (
            gateway.url("/api/MyModels/change-stream?options=%7Bnot"),
            "text/event-stream",
            400,
            "options is not valid JSON",
        ),
        (
            gateway.url(
                "/api/MyModels/change-stream?options=%7B%22where%22%3A%7B%22a%22%3A%7B%22foo%22%3A1%7D%7D%7D",
            ),
            "text/event-stream",
            400,
            "options: where.a: unknown operator \"foo\"",
        ),
    ] {
        let res = http.get(&url).header("accept", accept).send().await?;
        assert_eq!(res.status(), status, "{url}");
        let body: Value = res.json().await?;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(message),
            "{url}: {body}"
        );
    }
    gateway.stop().await
}

#[tokio::test]
async fn a_client_dropped_before_its_first_event_resumes_from_where_it_started()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let a = Gateway::start(&redis.url()).await?;
    let b = Gateway::start(&redis.url()).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let topic = Topic::new("Early")?;
    let before = store.create(&topic, body(1)).await?.event;

    // A fresh client is told its position (an `id:` without an event), which EventSource
    // keeps as its Last-Event-ID although no event fired.
    let mut client = SseClient::connect(&stream_url(&a, "Early"), None).await?;
    let position = loop {
        let frame = within("position frame", client.next_frame())
            .await??
            .expect("stream open");
        let is_event = frame.is_event();
        if let Some(id) = frame.id {
            assert!(!is_event, "the position comes before any event");
            break id;
        }
    };
    assert_eq!(position, before.to_string());
    drop(client);

    let mut missed = Vec::new();
    for n in 2..=4 {
        missed.push(store.create(&topic, body(n)).await?.event.to_string());
    }
    let mut resumed = SseClient::connect(&stream_url(&b, "Early"), Some(&position)).await?;
    assert_eq!(read_ids(&mut resumed, 3).await?, missed);
    Ok(())
}
