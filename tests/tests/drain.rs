//! The drain order (DESIGN.md, "Running"): on SIGTERM a pod stops accepting and ends its
//! streams one by one over the drain window, but keeps delivering live events to every
//! stream still open; the Redis subscription closes only after the last one. So a client
//! of a draining pod never sees a silent stream: it gets every event until its own close,
//! then resumes on another pod with nothing missed or repeated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Topic;
use publisher::{RedisOptions, RedisStore, Store};
use redis::AsyncCommands;
use system_tests::traffic::body;
use system_tests::{Gateway, RedisServer, SseClient, within};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "Drain";
/// A create every this long.
const EVERY: Duration = Duration::from_millis(50);
/// What an event may take from its acknowledgement to a client, on a loaded machine: a
/// stream that ends later than this after an event was acknowledged must carry it.
const DELIVERY_MARGIN: Duration = Duration::from_secs(1);
/// Long, so most streams of the draining pod live well past the SIGTERM.
const DRAIN_WINDOW: Duration = Duration::from_secs(5);
/// Clients of the draining pod.
const CLIENTS: usize = 10;

fn stream_url(gateway: &Gateway) -> String {
    gateway.url(&format!("/api/{TOPIC}/change-stream?_format=event-stream"))
}

/// What one client of the draining pod saw: its starting position, the ids of the events
/// it got, and when its stream ended.
struct Seen {
    start: String,
    ids: Vec<String>,
    ended: Instant,
}

async fn follow_until_closed(mut client: SseClient) -> anyhow::Result<Seen> {
    let mut start = None;
    let mut ids = Vec::new();
    while let Some(frame) = client.next_frame().await? {
        match (frame.event.as_deref(), frame.id) {
            (Some("data"), Some(id)) => ids.push(id),
            (None, Some(id)) if frame.data.is_none() => start = start.or(Some(id)),
            _ => {}
        }
    }
    Ok(Seen {
        start: start.expect("a fresh stream is told its starting position"),
        ids,
        ended: Instant::now(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pod_delivers_until_each_stream_closes_then_clients_resume_elsewhere()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let draining = Gateway::start_with(Some(&redis.url()), |c| {
        c.drain_window = DRAIN_WINDOW;
        c.grace_period = DRAIN_WINDOW * 2;
        // The test clients give up on a stream silent for 5 s.
        c.heartbeat = Duration::from_secs(1);
    })
    .await?;
    let other = Gateway::start(&redis.url()).await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = SseClient::connect(&stream_url(&draining), None).await?;
        clients.push(tokio::spawn(follow_until_closed(client)));
    }

    // Every acknowledged create, with when it was acknowledged.
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let stop = CancellationToken::new();
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let topic = Topic::new(TOPIC).expect("topic");
            let mut tick = tokio::time::interval(EVERY);
            let mut n = 0;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                if let Ok(written) = store.create(&topic, body(n)).await {
                    let entry = (written.event.to_string(), Instant::now());
                    acked.lock().expect("acked").push(entry);
                }
            }
        })
    };
    system_tests::poll_until(
        "events before the drain",
        Duration::from_secs(10),
        || async { (acked.lock().expect("acked").len() >= 20).then_some(()) },
    )
    .await?;

    let sigterm = Instant::now();
    draining.shutdown.cancel();
    let mut seen = Vec::new();
    for client in clients {
        // Each stream ends within the drain window; the wait is bounded by twice that.
        let joined = tokio::time::timeout(DRAIN_WINDOW * 2, client)
            .await
            .map_err(|_| anyhow::anyhow!("a stream of the draining pod did not end"))?;
        seen.push(joined??);
    }
    stop.cancel();
    writer.await?;

    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(TOPIC)?.stream_key())).await??;
    let stream: Vec<String> = reply.ids.into_iter().map(|e| e.id).collect();
    let acked = acked.lock().expect("acked").clone();
    let mut lived_past_sigterm = 0;
    for (i, client) in seen.iter().enumerate() {
        // What it got is the stream from its starting position on, in order, once.
        let from = stream
            .iter()
            .position(|id| *id > client.start)
            .unwrap_or(stream.len());
        assert_eq!(
            client.ids,
            stream[from..from + client.ids.len()],
            "client {i}: a prefix of the stream after its start, in order, once"
        );
        // And it got every event acknowledged longer than the margin before its close:
        // delivery went on while its stream was open.
        for (id, at) in &acked {
            if *id > client.start && *at + DELIVERY_MARGIN < client.ended {
                assert!(
                    client.ids.contains(id),
                    "client {i}: event {id}, acknowledged {:?} after SIGTERM, {:?} before its \
                     stream closed, never arrived",
                    at.saturating_duration_since(sigterm),
                    client.ended - *at
                );
            }
        }
        if client.ended > sigterm + 2 * DELIVERY_MARGIN {
            lived_past_sigterm += 1;
        }
        // It resumes on the other pod from its last id: the rest of the stream, exactly.
        let last = client.ids.last().unwrap_or(&client.start);
        let mut resumed = SseClient::connect(&stream_url(&other), Some(last)).await?;
        let rest = &stream[from + client.ids.len()..];
        let mut got = Vec::new();
        while got.len() < rest.len() {
            let frame = resumed.next_event().await?;
            assert_eq!(
                frame.event.as_deref(),
                Some("data"),
                "client {i}: {frame:?}"
            );
            got.push(frame.id.expect("id"));
        }
        assert_eq!(
            got, rest,
            "client {i}: resumed elsewhere, nothing missed or repeated"
        );
    }
    assert!(
        lived_past_sigterm > 0,
        "some streams stayed open well into the drain window"
    );
    other.stop().await
}
