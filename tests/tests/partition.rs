//! The quiet network fault: a partition between one process and Redis that sends no FIN
//! and no RST (a dropped route, a dead NAT entry, a frozen node), through a [`Blackhole`]
//! proxy on loopback. Once it heals, new connections work and the old ones stay dead.
//!
//! - A gateway behind the proxy (one Redis, and a Redis Cluster) turns not ready while its
//!   peer serves, and once the network heals replaces its dead connections, subscribes
//!   again and refills: ready within seconds, every client holding every acknowledged
//!   event exactly once, in order.
//! - A publisher behind the proxy answers 503 during the partition and writes again once
//!   it heals; every acknowledged create is in the stream once.
//! - A partition longer than `partition_timeout`: the pod ends its streams and its
//!   clients resume on the healthy pod, losing nothing; a fresh client turned away by the
//!   cut-off pod is given a position that loses nothing published after it asked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::Topic;
use publisher::{RedisOptions as StoreOptions, RedisStore, RedisTarget};
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::traffic::{self, Tally};
use system_tests::{
    Blackhole, GatewayProcess, Publisher, RedisCluster, RedisServer, SseClient, Watcher, http,
    poll_until, within,
};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "Partition";
/// How long a scenario may take to converge after a fault.
const CONVERGE: Duration = Duration::from_secs(30);
/// Acknowledged creates (one per [`EVERY`]) the partition lasts for: about 8 s.
const DURING: usize = 160;
/// A create every this long, as in the reported scenario.
const EVERY: Duration = Duration::from_millis(50);
/// After the network heals, the process must be ready again within this long.
const RECOVERS_WITHIN: Duration = Duration::from_secs(10);

fn stream_url(pod: &GatewayProcess) -> String {
    pod.url(&format!("/api/{TOPIC}/change-stream?_format=event-stream"))
}

fn write_until_stopped(
    store: RedisStore,
    tally: Arc<Tally>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    traffic::publish_until_stopped(store, Topic::new(TOPIC).expect("topic"), EVERY, tally, stop)
}

async fn reach(what: &str, count: &AtomicUsize, target: usize) -> anyhow::Result<()> {
    traffic::reach(what, count, target, CONVERGE).await
}

async fn wait_state(pod: &GatewayProcess, want: (u16, &str)) -> anyhow::Result<Duration> {
    let started = Instant::now();
    poll_until(&format!("/readyz {want:?}"), CONVERGE, || async {
        let (code, status) = pod.ready_state().await;
        (code == want.0 && status == want.1).then_some(())
    })
    .await?;
    Ok(started.elapsed())
}

/// Ten watchers on each pod; a watcher whose stream ends moves to the other pod.
async fn watchers(a: &GatewayProcess, b: &GatewayProcess) -> anyhow::Result<Vec<Watcher>> {
    let urls = vec![stream_url(a), stream_url(b)];
    let mut watchers = Vec::new();
    for i in 0..20 {
        watchers.push(Watcher::start(urls.clone(), i % 2).await?);
    }
    Ok(watchers)
}

/// Every watcher holds the whole stream once, in order, with no reset; each one's
/// reconnect count.
async fn all_complete(watchers: Vec<Watcher>, stream: &[String]) -> anyhow::Result<Vec<usize>> {
    let watched = traffic::all_complete(watchers, stream, CONVERGE).await?;
    Ok(watched.iter().map(|w| w.reconnects).collect())
}

/// Gateway `a` reaches Redis only through `proxies`, `b` directly. The proxies go silent
/// for [`DURING`] creates, then heal: `a` must be ready again within [`RECOVERS_WITHIN`]
/// and every client hold every event.
async fn gateway_partition_heals(
    a: &GatewayProcess,
    b: &GatewayProcess,
    proxies: &[Blackhole],
    store: RedisStore,
    stream: impl AsyncFn() -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<()> {
    let watchers = watchers(a, b).await?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let writer = write_until_stopped(store, tally.clone(), stop.clone());
    reach("creates before the partition", &tally.ok, 20).await?;

    for proxy in proxies {
        proxy.partition();
    }
    let noticed = wait_state(a, (503, "unavailable")).await?;
    assert_eq!(b.ready_state().await, (200, "ready".to_owned()));
    let during = tally.ok.load(Ordering::SeqCst) + DURING;
    reach("creates during the partition", &tally.ok, during).await?;
    assert_eq!(
        a.ready_state().await.0,
        503,
        "still cut off while the partition lasts"
    );

    for proxy in proxies {
        proxy.heal();
    }
    let healed = Instant::now();
    a.wait_ready().await?;
    let recovered = healed.elapsed();
    let after = tally.ok.load(Ordering::SeqCst) + 20;
    reach("creates after the partition", &tally.ok, after).await?;
    stop.cancel();
    writer.await?;

    let stream = stream().await?;
    assert!(stream.len() >= tally.ok.load(Ordering::SeqCst));
    let reconnects = all_complete(watchers, &stream).await?;
    eprintln!(
        "partition noticed after {noticed:?}; ready {recovered:?} after the network healed; \
         {} events; reconnects per client {reconnects:?}",
        stream.len()
    );
    assert!(
        reconnects.iter().all(|r| *r == 0),
        "a partition shorter than the bound keeps every client where it is, refilled by its pod: {reconnects:?}"
    );
    assert!(
        recovered < RECOVERS_WITHIN,
        "ready again {recovered:?} after the network healed"
    );
    Ok(())
}

async fn single_stream(redis: &RedisServer) -> anyhow::Result<Vec<String>> {
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(TOPIC)?.stream_key())).await??;
    Ok(reply.ids.into_iter().map(|e| e.id).collect())
}

fn addr_of(redis: &RedisServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], redis.port()))
}

/// Every pod sends a heartbeat each second: the test clients give up on a stream that
/// is silent for [`system_tests::STEP`], and a cut-off pod's streams are silent.
const HEARTBEAT: (&str, &str) = ("GATEWAY_HEARTBEAT", "1s");

/// Settings for the pod behind the proxy: short Redis timeouts, so the test is quick,
/// and a partition bound far beyond the partition, so its clients stay.
const KEEPS_CLIENTS: [(&str, &str); 3] = [
    ("GATEWAY_REDIS_TIMEOUT", "500ms"),
    ("GATEWAY_PARTITION_TIMEOUT", "120s"),
    HEARTBEAT,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_silently_from_redis_recovers_when_the_network_heals()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = Blackhole::start(addr_of(&redis)).await?;
    let through_proxy = format!("redis://{}/", proxy.addr);
    let mut a = vec![("GATEWAY_REDIS_URL", through_proxy.as_str())];
    a.extend_from_slice(&KEEPS_CLIENTS);
    let direct = redis.url();
    let b = vec![("GATEWAY_REDIS_URL", direct.as_str()), HEARTBEAT];
    let pods = GatewayProcess::fleet(&[a, b]).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    gateway_partition_heals(
        &pods[0],
        &pods[1],
        std::slice::from_ref(&proxy),
        store,
        async || single_stream(&redis).await,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_gateway_cut_off_silently_recovers_when_the_network_heals() -> anyhow::Result<()>
{
    let cluster = RedisCluster::start().await?;
    // Gateway A reaches every node through a proxy on 127.0.0.3 with the node's port;
    // the nodes name no host in their slot maps, so A keeps using that address.
    cluster.answer_with_unknown_endpoints().await?;
    let mut proxies = Vec::new();
    for port in cluster.ports() {
        proxies.push(
            Blackhole::start_on(
                SocketAddr::from(([127, 0, 0, 3], port)),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
            .await?,
        );
    }
    let behind = cluster
        .ports()
        .iter()
        .map(|p| format!("redis://127.0.0.3:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut a = vec![("GATEWAY_REDIS_CLUSTER", behind.as_str())];
    a.extend_from_slice(&KEEPS_CLIENTS);
    let direct = cluster.seed_list();
    let b = vec![("GATEWAY_REDIS_CLUSTER", direct.as_str()), HEARTBEAT];
    let pods = GatewayProcess::fleet(&[a, b]).await?;
    let store = RedisStore::connect(
        &RedisTarget::Cluster(cluster.seed_urls()),
        StoreOptions::default(),
    )?;
    let topic = Topic::new(TOPIC)?;
    gateway_partition_heals(&pods[0], &pods[1], &proxies, store, async || {
        let mut conn = cluster.connection().await?;
        let reply: redis::streams::StreamRangeReply =
            within("XRANGE", conn.xrange_all(topic.stream_key())).await??;
        Ok(reply.ids.into_iter().map(|e| e.id).collect())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_cut_off_silently_writes_again_when_the_network_heals() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = Blackhole::start(addr_of(&redis)).await?;
    let publisher = Publisher::start_env(
        &format!("redis://{}/", proxy.addr),
        &[("PUBLISHER_REDIS_TIMEOUT", "500ms")],
    )
    .await?;
    let pod = GatewayProcess::start(&redis.url(), &[HEARTBEAT]).await?;
    let mut watchers = Vec::new();
    for _ in 0..10 {
        watchers.push(Watcher::start(vec![stream_url(&pod)], 0).await?);
    }

    // Writes through the publisher's REST API, every acknowledged id kept.
    let acked_ids = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let (acked, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = CancellationToken::new();
    let writer = {
        let (acked_ids, acked, refused, stop) = (
            acked_ids.clone(),
            acked.clone(),
            refused.clone(),
            stop.clone(),
        );
        let url = publisher.url(&format!("/api/{TOPIC}"));
        tokio::spawn(async move {
            let client = http();
            let mut tick = tokio::time::interval(EVERY);
            let mut n = 0;
            while !stop.is_cancelled() {
                tick.tick().await;
                n += 1;
                let res = client.post(&url).json(&json!({ "n": n })).send().await;
                match res {
                    Ok(res) if res.status() == 200 => {
                        let record: Value = res.json().await.unwrap_or_default();
                        if let Some(id) = record["id"].as_i64() {
                            acked_ids.lock().expect("ids").push(id);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(res) => {
                        assert_eq!(res.status(), 503, "only 503 while cut off");
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    reach("creates before the partition", &acked, 20).await?;

    proxy.partition();
    let ready = publisher.url("/readyz");
    poll_until("publisher not ready", CONVERGE, || async {
        let res = http().get(&ready).send().await.ok()?;
        (res.status() == 503).then_some(())
    })
    .await?;
    reach("refused writes during the partition", &refused, 40).await?;

    proxy.heal();
    let healed = Instant::now();
    poll_until("publisher ready again", CONVERGE, || async {
        let res = http().get(&ready).send().await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await?;
    let recovered = healed.elapsed();
    let after = acked.load(Ordering::SeqCst) + 20;
    reach("creates after the partition", &acked, after).await?;
    stop.cancel();
    writer.await?;

    // Every acknowledged create has exactly one event; a refused one may have run (its
    // answer lost) but never twice.
    let mut conn = redis.connection().await?;
    let entries: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(TOPIC)?.stream_key())).await??;
    let mut targets = Vec::new();
    for entry in &entries.ids {
        let change: String = entry.get("change").expect("change field");
        let change: Value = serde_json::from_str(&change)?;
        targets.push(change["target"].as_i64().expect("integer target"));
    }
    let mut unique = targets.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), targets.len(), "no create twice");
    for id in acked_ids.lock().expect("ids").iter() {
        assert!(
            targets.contains(id),
            "acknowledged create {id} has its event"
        );
    }
    let stream: Vec<String> = entries.ids.iter().map(|e| e.id.clone()).collect();
    for (i, mut watcher) in watchers.into_iter().enumerate() {
        watcher
            .wait_for(stream.last().expect("events"), CONVERGE)
            .await?;
        let watched = watcher.stop().await?;
        assert_eq!(watched.data_ids(), stream, "client {i}");
    }
    eprintln!(
        "publisher ready {recovered:?} after the network healed; {} acked, {} refused",
        acked.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst)
    );
    assert!(
        recovered < RECOVERS_WITHIN,
        "ready again {recovered:?} after the network healed"
    );
    publisher.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cut_off_past_the_bound_moves_its_clients_to_a_healthy_pod() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let proxy = Blackhole::start(addr_of(&redis)).await?;
    let through_proxy = format!("redis://{}/", proxy.addr);
    let a = vec![
        ("GATEWAY_REDIS_URL", through_proxy.as_str()),
        ("GATEWAY_REDIS_TIMEOUT", "500ms"),
        ("GATEWAY_PARTITION_TIMEOUT", "2s"),
        ("GATEWAY_DRAIN_WINDOW", "1s"),
        HEARTBEAT,
    ];
    let direct = redis.url();
    let b = vec![("GATEWAY_REDIS_URL", direct.as_str()), HEARTBEAT];
    let pods = GatewayProcess::fleet(&[a, b]).await?;
    let (a, b) = (&pods[0], &pods[1]);
    let watchers = watchers(a, b).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let writer = write_until_stopped(store, tally.clone(), stop.clone());
    reach("creates before the partition", &tally.ok, 20).await?;

    proxy.partition();
    wait_state(a, (503, "unavailable")).await?;

    // A fresh client that reaches the cut-off pod anyway (a stale endpoint) is told to
    // come back (200, so EventSource retries), with a position at its request.
    let mut turned_away = SseClient::connect(&stream_url(a), None).await?;
    let mut anchor = None;
    while let Some(frame) = turned_away.next_frame().await? {
        anchor = anchor.or(frame.id);
    }
    assert!(
        turned_away.received.starts_with(":ok\n\nid: ")
            && turned_away.received.contains("\nretry: "),
        "{:?}",
        turned_away.received
    );
    let anchor = anchor.expect("a fresh client turned away gets a position");
    let asked_at = tally.ok.load(Ordering::SeqCst);

    // Past the bound the pod ends its streams; its clients move to B.
    poll_until("streams ended by the cut-off pod", CONVERGE, || async {
        let ends = a.metric("gateway_partition_stream_ends_total").await.ok()?;
        (ends >= 1.0).then_some(())
    })
    .await?;
    let after = tally.ok.load(Ordering::SeqCst) + 40;
    reach("creates after the clients moved", &tally.ok, after).await?;
    stop.cancel();
    writer.await?;
    // Still partitioned: everything below reaches the clients through B.
    let stream = single_stream(&redis).await?;
    let reconnects = all_complete(watchers, &stream).await?;
    assert!(
        reconnects.iter().step_by(2).all(|r| *r >= 1),
        "every client of the cut-off pod moved: {reconnects:?}"
    );

    // The turned-away client resumes on B from its position: everything published
    // since it asked (and nothing before its anchor), once, in order.
    let mut resumed = SseClient::connect(&stream_url(b), Some(&anchor)).await?;
    let anchor_id = proto::EventId::parse(&anchor)?;
    let since: Vec<String> = stream
        .iter()
        .filter(|id| proto::EventId::parse(id).is_ok_and(|id| id > anchor_id))
        .cloned()
        .collect();
    assert!(since.len() >= tally.ok.load(Ordering::SeqCst) - asked_at);
    let mut got = Vec::new();
    while got.len() < since.len() {
        let frame = resumed.next_event().await?;
        assert_eq!(frame.event.as_deref(), Some("data"), "{frame:?}");
        got.push(frame.id.expect("id"));
    }
    assert_eq!(got, since);
    proxy.heal();
    Ok(())
}
