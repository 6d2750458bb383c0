//! The delivery guarantee under faults, with real redis-server and real gateway
//! processes. Every scenario checks each client's received sequence against the stream:
//! nothing lost, nothing twice, order kept, or an explicit `reset`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::Topic;
use publisher::{RedisOptions as StoreOptions, RedisStore, Store};
use redis::AsyncCommands;
use serde_json::json;
use system_tests::traffic::{self, Tally, body};
use system_tests::{
    GatewayProcess, RedisOptions, RedisServer, SseClient, Watched, Watcher, poll_until,
};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "Faults";
/// How long a fault scenario may take to converge after the fault.
const CONVERGE: Duration = Duration::from_secs(30);

fn stream_url(pod: &GatewayProcess) -> String {
    pod.url(&format!("/api/{TOPIC}/change-stream?_format=event-stream"))
}

async fn stream_ids(redis: &RedisServer) -> anyhow::Result<Vec<String>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        conn.xrange_all(Topic::new(TOPIC)?.stream_key()).await?;
    Ok(reply.ids.into_iter().map(|e| e.id).collect())
}

fn publish_until_stopped(
    store: RedisStore,
    every: Duration,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    traffic::publish_until_stopped(store, Topic::new(TOPIC).expect("topic"), every, tally, stop)
}

async fn reach(what: &str, count: &AtomicUsize, target: usize) -> anyhow::Result<()> {
    traffic::reach(what, count, target, CONVERGE).await
}

/// Waits for every watcher to reach the stream's last id, then checks each one got the
/// whole stream, in order, once.
async fn all_complete(redis: &RedisServer, watchers: Vec<Watcher>) -> anyhow::Result<Vec<Watched>> {
    traffic::all_complete(watchers, &stream_ids(redis).await?, CONVERGE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_gateways_loses_nothing() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let a = GatewayProcess::start(&redis.url(), &[]).await?;
    let b = GatewayProcess::start(&redis.url(), &[]).await?;
    let urls = vec![stream_url(&a), stream_url(&b)];
    let mut watchers = Vec::new();
    for i in 0..20 {
        watchers.push(Watcher::start(urls.clone(), i % 2).await?);
    }
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let writer =
        publish_until_stopped(store, Duration::from_millis(1), tally.clone(), stop.clone());

    reach("events before the kill", &tally.ok, 500).await?;
    a.kill9().await?;
    let after = tally.ok.load(Ordering::SeqCst) + 1000;
    reach("events after the kill", &tally.ok, after).await?;
    stop.cancel();
    writer.await?;
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0);

    let results = all_complete(&redis, watchers).await?;
    let moved = results.iter().filter(|w| w.reconnects > 0).count();
    assert!(
        moved >= 10,
        "the killed pod's clients reconnected to the other: {moved}"
    );
    Ok(())
}

/// Redis down for 10 s under two pods that know each other (`GATEWAY_PEERS`): a fleet-wide
/// outage. Both pods stay ready (`degraded`), so a Service keeps its endpoints and the
/// ingress never answers 503 itself; they keep every stream past `partition_timeout`;
/// new streams are told to retry (200) instead of a 503 that would end EventSource; and
/// once Redis is back every client holds every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_10s_with_aof_then_every_sequence_is_complete() -> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions { appendonly: true }).await?;
    let url = redis.url();
    let settings = vec![
        ("GATEWAY_REDIS_URL", url.as_str()),
        // Shorter than the outage: a pod that took it for its own partition would end
        // its streams.
        ("GATEWAY_PARTITION_TIMEOUT", "2s"),
        // Test clients give up on a stream silent for 5 s.
        ("GATEWAY_HEARTBEAT", "1s"),
    ];
    let pods = GatewayProcess::fleet(&[settings.clone(), settings]).await?;
    let urls: Vec<String> = pods.iter().map(stream_url).collect();
    let mut watchers = Vec::new();
    for i in 0..10 {
        watchers.push(Watcher::start(urls.clone(), i % 2).await?);
    }
    let store = RedisStore::connect_lazy(
        &redis.url(),
        StoreOptions {
            response_timeout: Duration::from_millis(300),
            ..StoreOptions::default()
        },
    )?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let writer = publish_until_stopped(
        store,
        Duration::from_millis(10),
        tally.clone(),
        stop.clone(),
    );

    reach("events before the outage", &tally.ok, 100).await?;
    redis.kill().await?;
    for pod in &pods {
        poll_until("readyz degraded", CONVERGE, || async {
            (pod.ready_state().await == (200, "degraded".to_owned())).then_some(())
        })
        .await?;
    }
    // A new stream during the outage is told to retry: 200 (EventSource closes for good
    // on a 503), `:ok`, a resume position for a fresh client, a `retry:` hint, the end.
    let mut fresh = SseClient::connect(&urls[0], None).await?;
    while fresh.next_frame().await?.is_some() {}
    assert!(
        fresh.received.starts_with(":ok\n\nid: ") && fresh.received.contains("\nretry: "),
        "{:?}",
        fresh.received
    );
    // One that comes with a position keeps it: no `id:`.
    let mut resuming = SseClient::connect(&urls[1], Some("1-0")).await?;
    while resuming.next_frame().await?.is_some() {}
    assert!(
        resuming.received.starts_with(":ok\n\nretry: "),
        "{:?}",
        resuming.received
    );
    // The outage lasts ten seconds; publishing keeps trying all along, and both pods stay
    // ready (degraded) the whole time.
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    for _ in 0..10 {
        second.tick().await;
        for pod in &pods {
            assert_eq!(
                pod.ready_state().await,
                (200, "degraded".to_owned()),
                "a fleet-wide outage keeps every pod in the Service"
            );
        }
    }
    assert!(
        tally.failed.load(Ordering::SeqCst) > 0,
        "publishing was refused during the outage"
    );
    redis.restart().await?;
    for pod in &pods {
        pod.wait_ready().await?;
    }
    let after = tally.ok.load(Ordering::SeqCst) + 100;
    reach("events after the outage", &tally.ok, after).await?;
    stop.cancel();
    writer.await?;

    let results = all_complete(&redis, watchers).await?;
    assert!(
        results.iter().all(|w| w.reconnects == 0),
        "every stream was kept through the outage: {:?}",
        results.iter().map(|w| w.reconnects).collect::<Vec<_>>()
    );
    for pod in &pods {
        assert_eq!(
            pod.metric("gateway_partition_stream_ends_total").await?,
            0.0
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resets_clients_who_then_continue_live() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let pod = GatewayProcess::start(&redis.url(), &[]).await?;
    let mut watchers = Vec::new();
    for _ in 0..5 {
        watchers.push(Watcher::start(vec![stream_url(&pod)], 0).await?);
    }
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let topic = Topic::new(TOPIC)?;
    for n in 0..50 {
        store.create(&topic, body(n)).await?;
    }
    let before = stream_ids(&redis).await?;
    for watcher in &mut watchers {
        watcher
            .wait_for(before.last().expect("50 events"), CONVERGE)
            .await?;
    }

    redis.restart().await?; // no persistence: the stream is gone
    pod.wait_ready().await?;
    let mut published = 0;
    poll_until("the publisher writes again", CONVERGE, || async {
        store.create(&topic, body(1000)).await.ok()
    })
    .await?;
    published += 1;
    for n in 0..20 {
        store.create(&topic, body(1001 + n)).await?;
        published += 1;
    }
    let after = stream_ids(&redis).await?;
    assert_eq!(after.len(), published);
    let last = after.last().expect("new events").clone();
    for (i, mut watcher) in watchers.into_iter().enumerate() {
        watcher.wait_for(&last, CONVERGE).await?;
        let watched = watcher.stop().await?;
        let frames = &watched.frames;
        // The old history, then a reset naming where it continues, then exactly the new
        // stream after that point: never a silent skip, never stuck.
        let data_before: Vec<String> = frames[..50].iter().filter_map(|f| f.id.clone()).collect();
        assert_eq!(data_before, before, "client {i}");
        let reset = &frames[50];
        assert_eq!(
            reset.event.as_deref(),
            Some("reset"),
            "client {i}: {frames:?}"
        );
        let resume_from = reset.id.clone().expect("reset carries an id");
        let rest: Vec<String> = frames[51..].iter().filter_map(|f| f.id.clone()).collect();
        let position = after
            .iter()
            .position(|id| *id == resume_from)
            .expect("reset id is a stream id");
        assert_eq!(
            rest,
            after[position + 1..],
            "client {i}: live after the reset"
        );
        assert!(
            frames[51..]
                .iter()
                .all(|f| f.event.as_deref() == Some("data"))
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_that_never_read_cost_bounded_memory_and_slow_nobody()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let pod = GatewayProcess::start(&redis.url(), &[("GATEWAY_HEARTBEAT", "1h")]).await?;
    let url = stream_url(&pod);
    let idle_rss = pod.rss_kib()?;

    // 1,000 clients that take the response head and then never read again.
    let mut stuck = Vec::new();
    for _ in 0..1000 {
        stuck.push(SseClient::connect(&url, None).await?);
    }
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(Watcher::start(vec![url.clone()], 0).await?);
    }
    let connected_rss = pod.rss_kib()?;

    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let topic = Topic::new(TOPIC)?;
    let pad = "x".repeat(400);
    let mut peak_rss = connected_rss;
    for n in 0..10_000 {
        let record = json!({ "n": n, "pad": pad })
            .as_object()
            .cloned()
            .expect("object");
        store.create(&topic, record).await?;
        if n % 500 == 0 {
            peak_rss = peak_rss.max(pod.rss_kib()?);
        }
    }
    let expected = stream_ids(&redis).await?;
    let last = expected.last().expect("events").clone();
    for watcher in &mut readers {
        watcher.wait_for(&last, CONVERGE).await?;
    }
    peak_rss = peak_rss.max(pod.rss_kib()?);
    for watcher in readers {
        let watched = watcher.stop().await?;
        assert_eq!(
            watched.data_ids(),
            expected,
            "readers got every event while 1,000 clients stalled"
        );
    }

    // Ten of the stalled clients start reading: whatever they get is a gap-free prefix
    // of the stream, and if the pod dropped them they resume and get the rest.
    for mut client in stuck.drain(..10) {
        let mut got = Vec::new();
        loop {
            match client.next_frame().await {
                Ok(Some(frame)) if frame.event.as_deref() == Some("data") => {
                    got.push(frame.id.clone().expect("id"))
                }
                Ok(Some(frame)) => assert_ne!(frame.event.as_deref(), Some("reset")),
                Ok(None) | Err(_) => break,
            }
            if got.last() == Some(&last) {
                break;
            }
        }
        if got.last() != Some(&last) {
            let mut resumed = SseClient::connect(&url, got.last().map(String::as_str)).await?;
            while got.last() != Some(&last) {
                let frame = resumed.next_event().await?;
                got.push(frame.id.expect("id"));
            }
        }
        assert_eq!(got, expected, "a slow client lost nothing it later read");
    }
    drop(stuck);
    eprintln!(
        "gateway RSS: idle {idle_rss} KiB, 1,020 connected {connected_rss} KiB, peak during 10,000 events {peak_rss} KiB"
    );
    // Stated bound: the stalled clients cost socket buffers, not event copies.
    assert!(
        peak_rss < 128 * 1024,
        "gateway RSS {peak_rss} KiB over the 128 MiB bound"
    );
    Ok(())
}
