//! Topics at scale (DESIGN.md "Topics at scale"), with a real gateway process and Redis:
//! thousands of topics are subscribed in batches, confirmed before their streams start,
//! carried through a Redis restart (every client refilled, nothing lost), and released
//! after their clients leave (no channel left in Redis); a topic whose client comes back
//! within the linger keeps its subscription. In a Redis Cluster, one `SSUBSCRIBE` names
//! one hash slot's new topics, and nothing is left on any shard after.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use proto::Topic;
use publisher::{RedisOptions as StoreOptions, RedisStore, RedisTarget, Store};
use serde_json::{Value, json};
use system_tests::{
    GatewayProcess, RedisCluster, RedisOptions, RedisServer, SseClient, gateway_channels, http,
    poll_until, within,
};

const TOPICS: usize = 2000;
const CONVERGE: Duration = Duration::from_secs(30);

fn topic(i: usize) -> Topic {
    Topic::new(&format!("User{i}")).expect("a topic name")
}

/// The gateway's channels subscribed in Redis now.
async fn channels(redis: &RedisServer) -> anyhow::Result<usize> {
    let mut conn = redis.connection().await?;
    Ok(gateway_channels(&mut conn, false).await?.len())
}

/// The `_count` of `gateway_subscription_batch_seconds{op}`.
async fn batches(pod: &GatewayProcess, op: &str) -> anyhow::Result<f64> {
    let text = within("metrics", async {
        http().get(pod.url("/metrics")).send().await?.text().await
    })
    .await??;
    let series = format!("gateway_subscription_batch_seconds_count{{op=\"{op}\"}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0.0))
}

/// Once every client left: the pod holds no topic, released in batches (not one
/// unsubscribe each).
async fn holds_nothing(pod: &GatewayProcess) -> anyhow::Result<()> {
    poll_until("the pod holds no topic", CONVERGE, || async {
        (pod.metric("gateway_subscribed_topics").await.ok()? == 0.0).then_some(())
    })
    .await?;
    assert!(batches(pod, "unsubscribe").await? < (TOPICS as f64) / 4.0);
    Ok(())
}

/// Opens a change stream of `topic` and reads up to its start position (sent once the
/// topic's subscription is confirmed).
async fn open(pod: &GatewayProcess, topic: &Topic) -> anyhow::Result<SseClient> {
    let url = pod.url(&format!("/api/{topic}/change-stream"));
    let mut client = SseClient::connect(&url, None).await?;
    loop {
        let frame = client.next_frame().await?.expect("the stream stays open");
        if frame.id.is_some() {
            return Ok(client);
        }
    }
}

/// The `n` of the next `data` event.
async fn next_n(client: &mut SseClient) -> anyhow::Result<i64> {
    let frame = client.next_event().await?;
    let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or(""))?;
    Ok(change["data"]["n"].as_i64().unwrap_or(-1))
}

async fn publish_to_each(store: &RedisStore, topics: &[Topic], n: i64) -> anyhow::Result<()> {
    let writes = futures::stream::iter(topics)
        .map(|topic| {
            let store = store.clone();
            async move {
                let record = json!({ "n": n }).as_object().cloned().unwrap_or_default();
                store.create(topic, record).await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    for write in writes {
        write?;
    }
    Ok(())
}

/// A client of each topic, 200 opening at a time, each up to its start position.
async fn open_all(pod: &GatewayProcess, topics: &[Topic]) -> anyhow::Result<Vec<SseClient>> {
    let clients = futures::stream::iter(topics)
        .map(|t| open(pod, t))
        .buffer_unordered(200)
        .collect::<Vec<_>>()
        .await;
    clients.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_topics_subscribe_in_batches_survive_a_redis_restart_and_leave_nothing()
-> anyhow::Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions { appendonly: true }).await?;
    let pod = GatewayProcess::start(&redis.url(), &[]).await?;
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;

    let topics: Vec<Topic> = (0..TOPICS).map(topic).collect();
    let mut clients = open_all(&pod, &topics).await?;
    assert_eq!(channels(&redis).await?, TOPICS, "every topic subscribed");
    let subscribes = batches(&pod, "subscribe").await?;
    assert!(
        (1.0..(TOPICS as f64) / 4.0).contains(&subscribes),
        "{TOPICS} topics in batches, not one command each: {subscribes} SUBSCRIBEs"
    );

    // Clients are ordered by topic only by chance; each reads its own topic's events.
    publish_to_each(&store, &topics, 1).await?;
    for client in &mut clients {
        assert_eq!(next_n(client).await?, 1);
    }
    redis.restart().await?;
    pod.wait_ready().await?;
    // The writer's connection broke with the restart: a write to another topic shows it
    // back (a create here would be one more event for a client).
    poll_until("the store to reconnect", CONVERGE, || async {
        let probe = Topic::new("Probe").ok()?;
        store.create(&probe, Default::default()).await.ok()
    })
    .await?;
    publish_to_each(&store, &topics, 2).await?;
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(
            next_n(client).await?,
            2,
            "client {i} after the restart, nothing lost"
        );
    }
    assert_eq!(
        channels(&redis).await?,
        TOPICS,
        "every topic subscribed again"
    );

    drop(clients);
    poll_until("every channel released", CONVERGE, || async {
        (channels(&redis).await.ok()? == 0).then_some(())
    })
    .await?;
    holds_nothing(&pod).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_within_the_linger_keeps_the_subscription() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let pod = GatewayProcess::start(&redis.url(), &[]).await?;
    let t = Topic::new("Linger")?;
    let first = open(&pod, &t).await?;
    let subscribes = batches(&pod, "subscribe").await?;
    drop(first);
    // The pod saw the client go: the topic is unwanted, and lingers.
    poll_until("the stream to close", CONVERGE, || async {
        let text = http()
            .get(pod.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l.starts_with("gateway_sse_connections{") && l.ends_with(" 0"))
            .then_some(())
    })
    .await?;
    let mut again = open(&pod, &t).await?;
    assert_eq!(
        batches(&pod, "subscribe").await?,
        subscribes,
        "no new SUBSCRIBE for a topic back within the linger"
    );
    assert_eq!(channels(&redis).await?, 1);
    let store = RedisStore::connect_lazy(&redis.url(), StoreOptions::default())?;
    store
        .create(&t, json!({"n": 7}).as_object().cloned().unwrap_or_default())
        .await?;
    assert_eq!(next_n(&mut again).await?, 7);
    drop(again);
    poll_until(
        "the channel released after the linger",
        CONVERGE,
        || async { (channels(&redis).await.ok()? == 0).then_some(()) },
    )
    .await
}

/// `per_slot` topics on each of `slots` hash slots (the first slots `User<i>` names hit).
fn topics_sharing_slots(slots: usize, per_slot: usize) -> Vec<Topic> {
    let mut by_slot: BTreeMap<u16, Vec<Topic>> = BTreeMap::new();
    let mut full = 0;
    for i in 0.. {
        let t = topic(i);
        let slot = t.cluster_slot();
        if by_slot.len() < slots || by_slot.contains_key(&slot) {
            let names = by_slot.entry(slot).or_default();
            if names.len() < per_slot {
                names.push(t);
                full += usize::from(names.len() == per_slot);
                if full == slots {
                    break;
                }
            }
        }
    }
    by_slot.into_values().flatten().collect()
}

/// The shard channels of this gateway on every master.
async fn shard_channels(cluster: &RedisCluster) -> anyhow::Result<usize> {
    let mut total = 0;
    for port in cluster.masters().await?.into_values() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = within("connect", client.get_multiplexed_async_connection()).await??;
        total += gateway_channels(&mut conn, true).await?.len();
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_cluster_one_ssubscribe_takes_a_slots_topics_and_nothing_is_left_on_any_shard()
-> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let pod = GatewayProcess::start_cluster(&cluster, &[]).await?;
    let store = RedisStore::connect(
        &RedisTarget::Cluster(cluster.seed_urls()),
        StoreOptions::default(),
    )?;
    // 2,000 topics on 20 slots (100 each): one SSUBSCRIBE per slot a reconcile meets.
    let topics = topics_sharing_slots(20, TOPICS / 20);
    let mut clients = open_all(&pod, &topics).await?;
    assert_eq!(
        shard_channels(&cluster).await?,
        TOPICS,
        "every topic subscribed"
    );
    let subscribes = batches(&pod, "subscribe").await?;
    assert!(
        (20.0..(TOPICS as f64) / 4.0).contains(&subscribes),
        "{TOPICS} topics in slot batches, not one SSUBSCRIBE each: {subscribes}"
    );
    publish_to_each(&store, &topics, 1).await?;
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(next_n(client).await?, 1, "client {i}");
    }
    drop(clients);
    poll_until("every shard channel released", CONVERGE, || async {
        (shard_channels(&cluster).await.ok()? == 0).then_some(())
    })
    .await?;
    holds_nothing(&pod).await
}
