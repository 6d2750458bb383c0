//! Cluster mode against a real Redis Cluster (3 masters, 3 replicas from `redis-server`
//! children): the publisher writes each topic on its slot's master and `SPUBLISH`es
//! there; gateways use sharded pub/sub. Every scenario spreads its topics over all
//! three shards, and checks each client's sequence against the topic's stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{Envelope, EventId, Object, Topic};
use publisher::{RedisOptions as StoreOptions, RedisStore, RedisTarget, Store};
use redis::{AsyncCommands, PushKind};
use serde_json::{Value, json};
use system_tests::cluster::CONVERGE;
use system_tests::{
    Gateway, GatewayProcess, Publisher, RedisCluster, STEP, SseClient, Watched, Watcher, http,
    poll_until, within,
};
use tokio_util::sync::CancellationToken;

fn body(n: usize) -> Object {
    json!({ "n": n }).as_object().cloned().expect("object")
}

fn store(cluster: &RedisCluster, response_timeout: Duration) -> anyhow::Result<RedisStore> {
    let options = StoreOptions {
        response_timeout,
        ..StoreOptions::default()
    };
    Ok(RedisStore::connect(
        &RedisTarget::Cluster(cluster.seed_urls()),
        options,
    )?)
}

/// One topic on each of the three shards.
async fn one_topic_per_shard(cluster: &RedisCluster, prefix: &str) -> anyhow::Result<Vec<Topic>> {
    let shards = cluster.topics_on_each_shard(prefix, 1).await?;
    shards
        .into_iter()
        .flatten()
        .map(|name| Ok(Topic::new(&name)?))
        .collect()
}

/// All stream ids of `topic`, in order, as the cluster holds them now.
async fn stream_ids(cluster: &RedisCluster, topic: &Topic) -> anyhow::Result<Vec<String>> {
    let mut conn = cluster.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(topic.stream_key())).await??;
    Ok(reply.ids.into_iter().map(|e| e.id).collect())
}

fn change_stream(base: &str, topic: &Topic) -> String {
    format!("{base}/api/{topic}/change-stream?_format=event-stream")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cluster_forms_spreads_topics_and_fails_over() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::start().await?;
    let shards = cluster.topics_on_each_shard("T", 2).await?;
    assert!(shards.iter().all(|s| s.len() == 2), "{shards:?}");
    let before = cluster.masters().await?;
    assert_eq!(before.len(), 3);
    let slot = cluster
        .keyslot(&format!("cs:{{{}}}:stream", shards[1][0]))
        .await?;
    assert_eq!(cluster.shard_of_slot(slot).await?, 1);
    let (killed, promoted) = cluster.kill_master_of(slot).await?;
    assert_eq!(before[&1], killed);
    let after = cluster.masters().await?;
    assert_eq!(after[&1], promoted, "the replica serves the shard now");
    assert_eq!((after[&0], after[&2]), (before[&0], before[&2]));
    Ok(())
}

/// A RESP3 cluster connection whose pushes (sharded messages) arrive on the receiver.
async fn push_connection(
    cluster: &RedisCluster,
) -> anyhow::Result<(
    redis::cluster_async::ClusterConnection,
    tokio::sync::mpsc::Receiver<redis::PushInfo>,
)> {
    let (push_tx, push_rx) = tokio::sync::mpsc::channel(10_000);
    let client = redis::cluster::ClusterClientBuilder::new(cluster.seed_urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(move |info| push_tx.try_send(info).map_err(|_| ()))
        .response_timeout(STEP)
        .build()?;
    let conn = within("cluster connect", client.get_async_connection()).await??;
    Ok((conn, push_rx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_writes_each_topic_on_its_shard_and_spublishes() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let topics = one_topic_per_shard(&cluster, "Pub").await?;
    let (mut sub, mut push_rx) = push_connection(&cluster).await?;
    for topic in &topics {
        // One command per topic: the topics hash to different slots.
        within("ssubscribe", sub.ssubscribe(topic.redis_channel())).await??;
    }
    let publisher = Publisher::start_cluster(&cluster).await?;
    let http = http();
    for topic in &topics {
        let created: Value = http
            .post(publisher.url(&format!("/api/{topic}")))
            .json(&json!({"foo": topic.as_str()}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(created, json!({"foo": topic.as_str(), "id": 1}));
    }
    let mut conn = cluster.connection().await?;
    let mut seen = HashSet::new();
    while seen.len() < topics.len() {
        let push = within("sharded message", push_rx.recv())
            .await?
            .expect("push channel open");
        if push.kind != PushKind::SMessage {
            continue;
        }
        let channel: String = redis::from_redis_value_ref(&push.data[0])?;
        let payload: String = redis::from_redis_value_ref(&push.data[1])?;
        let topic = Topic::from_redis_channel(&channel).expect("our channel");
        let envelope = Envelope::decode(&payload)?;
        assert_eq!(
            stream_ids(&cluster, &topic).await?,
            [envelope.id.to_string()],
            "{topic}"
        );
        let record: Option<String> = within("HGET", conn.hget(topic.records_key(), "1")).await??;
        assert_eq!(
            record.as_deref(),
            Some(format!(r#"{{"foo":"{topic}","id":1}}"#).as_str())
        );
        seen.insert(topic);
    }
    let ready = http.get(publisher.url("/readyz")).send().await?;
    assert_eq!(ready.status(), 200);
    Ok(())
}

/// The resume-across-pods scenario of `gateway_change_stream.rs` on one topic: read 300
/// of 1,000 on pod A, miss 500, resume on pod B with `Last-Event-ID` while 200 more are
/// published, and get exactly events 301..1700.
async fn resume_on_the_other_pod(
    cluster: &RedisCluster,
    store: RedisStore,
    a: String,
    b: String,
    topic: Topic,
) -> anyhow::Result<()> {
    let mut first = SseClient::connect(&change_stream(&a, &topic), None).await?;
    for n in 0..1000 {
        store.create(&topic, body(n)).await?;
    }
    let seen = read_ids(&mut first, 300).await?;
    drop(first);
    for n in 1000..1500 {
        store.create(&topic, body(n)).await?;
    }
    let writer = {
        let (store, topic) = (store.clone(), topic.clone());
        tokio::spawn(async move {
            for n in 1500..1700 {
                store.create(&topic, body(n)).await?;
            }
            anyhow::Ok(())
        })
    };
    let last = seen.last().expect("300 ids").clone();
    let mut resumed = SseClient::connect(&change_stream(&b, &topic), Some(&last)).await?;
    let got = read_ids(&mut resumed, 1400).await?;
    writer.await??;
    let all = stream_ids(cluster, &topic).await?;
    assert_eq!(all.len(), 1700, "{topic}");
    assert_eq!(
        &all[..300],
        &seen[..],
        "{topic}: pod A delivered the first 300"
    );
    assert_eq!(
        got,
        all[300..],
        "{topic}: events 301.. exactly: in order, none missed, none twice"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_pod_with_last_event_id_header_on_every_shard() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let a = Gateway::start_cluster(&cluster).await?;
    let b = Gateway::start_cluster(&cluster).await?;
    let store = store(&cluster, Duration::from_secs(2))?;
    let topics = one_topic_per_shard(&cluster, "Resume").await?;
    // The three shards at once.
    let scenarios = topics
        .into_iter()
        .map(|topic| resume_on_the_other_pod(&cluster, store.clone(), a.url(""), b.url(""), topic));
    futures::future::try_join_all(scenarios).await?;

    // The multi-topic stream: one cursor over the three shards, resumed on the other pod.
    let topics = one_topic_per_shard(&cluster, "Multi").await?;
    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let url = |pod: &Gateway| pod.url(&format!("/events?{}", query.join("&")));
    let mut first = SseClient::connect(&url(&a), None).await?;
    for n in 0..300 {
        store.create(&topics[n % 3], body(n)).await?;
    }
    let mut cursor = None;
    let mut got: Vec<(String, u64)> = Vec::new();
    while got.len() < 100 {
        let frame = first.next_event().await?;
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))?;
        got.push((
            change["topic"].as_str().unwrap_or("?").to_owned(),
            change["target"].as_u64().unwrap_or(0),
        ));
        cursor = frame.id;
    }
    drop(first);
    let cursor = cursor.expect("every event has an id");
    for n in 300..600 {
        store.create(&topics[n % 3], body(n)).await?;
    }
    let mut resumed = SseClient::connect(&url(&b), Some(&cursor)).await?;
    while got.len() < 600 {
        let frame = resumed.next_event().await?;
        assert_eq!(frame.event, None, "{frame:?}");
        let change: Value = serde_json::from_str(frame.data.as_deref().unwrap_or("null"))?;
        got.push((
            change["topic"].as_str().unwrap_or("?").to_owned(),
            change["target"].as_u64().unwrap_or(0),
        ));
    }
    for topic in &topics {
        let targets: Vec<u64> = got
            .iter()
            .filter(|(t, _)| t == topic.as_str())
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            targets,
            (1..=200).collect::<Vec<u64>>(),
            "{topic}: every event once, in order, across the hand-over"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_1000_events_over_three_shards_reach_every_client_once_in_order()
-> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let pods = [
        Gateway::start_cluster(&cluster).await?,
        Gateway::start_cluster(&cluster).await?,
    ];
    let topics = one_topic_per_shard(&cluster, "Fleet").await?;
    let per_topic = |i: usize| (1000 + 2 - i) / 3; // 334, 333, 333
    let mut readers = Vec::new();
    for i in 0..24 {
        let (pod, t) = (&pods[i % 2], i % 3);
        let client = SseClient::connect(&change_stream(&pod.url(""), &topics[t]), None).await?;
        let n = per_topic(t);
        readers.push((
            t,
            tokio::spawn(async move {
                let mut client = client;
                read_ids(&mut client, n).await
            }),
        ));
    }
    let store = store(&cluster, Duration::from_secs(2))?;
    for n in 0..1000 {
        store.create(&topics[n % 3], body(n)).await?;
    }
    let mut expected = Vec::new();
    for (t, topic) in topics.iter().enumerate() {
        let ids = stream_ids(&cluster, topic).await?;
        assert_eq!(ids.len(), per_topic(t));
        expected.push(ids);
    }
    for (t, reader) in readers {
        let got = within("a reader to finish", reader).await???;
        assert_eq!(got, expected[t], "every event, in stream order, none twice");
    }
    Ok(())
}

/// What one publishing task got acknowledged (the publisher returned an id), in order.
#[derive(Debug, Default)]
struct Acks {
    ids: Mutex<HashMap<Topic, Vec<EventId>>>,
    failed: Mutex<usize>,
}

impl Acks {
    fn count(&self, topic: &Topic) -> usize {
        self.ids
            .lock()
            .expect("lock")
            .get(topic)
            .map_or(0, Vec::len)
    }

    fn min_count(&self, topics: &[Topic]) -> usize {
        topics.iter().map(|t| self.count(t)).min().unwrap_or(0)
    }
}

/// Publishes to `topic` every `every` until stopped, recording what was acknowledged.
fn publish_until_stopped(
    store: RedisStore,
    topic: Topic,
    every: Duration,
    acks: Arc<Acks>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut n = 0;
        while !stop.is_cancelled() {
            tick.tick().await;
            n += 1;
            match store.create(&topic, body(n)).await {
                Ok(written) => acks
                    .ids
                    .lock()
                    .expect("lock")
                    .entry(topic.clone())
                    .or_default()
                    .push(written.event),
                Err(_) => *acks.failed.lock().expect("lock") += 1,
            }
        }
    })
}

/// One [`publish_until_stopped`] writer per topic.
fn publish_to_each(
    store: &RedisStore,
    topics: &[Topic],
    every: Duration,
    acks: &Arc<Acks>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    topics
        .iter()
        .map(|t| publish_until_stopped(store.clone(), t.clone(), every, acks.clone(), stop.clone()))
        .collect()
}

/// Two watchers per topic, starting on the first and second of the pods at `bases`, each
/// moving on to the next pod when its stream ends.
async fn two_watchers_per_topic(
    bases: &[String],
    topics: &[Topic],
) -> anyhow::Result<Vec<(Topic, Watcher)>> {
    let mut watchers = Vec::new();
    for topic in topics {
        let urls: Vec<String> = bases.iter().map(|b| change_stream(b, topic)).collect();
        for first in 0..2 {
            watchers.push((topic.clone(), Watcher::start(urls.clone(), first).await?));
        }
    }
    Ok(watchers)
}

async fn reach(what: &str, acks: &Acks, topics: &[Topic], target: usize) -> anyhow::Result<()> {
    poll_until(what, CONVERGE, || async {
        (acks.min_count(topics) >= target).then_some(())
    })
    .await
}

/// Checks one client's frames against its topic's final stream: data ids strictly
/// increasing (in order, none twice); every stream id received unless a `reset` told the
/// client that history up to its `resumeFrom` is gone; an id the stream no longer holds
/// (written on the old master, lost in the failover) is followed by a `reset` before any
/// more data. Returns how many resets the client got.
fn check_against_stream(who: &str, watched: &Watched, stream: &[String]) -> anyhow::Result<usize> {
    let position = |id: &str| -> anyhow::Result<EventId> { Ok(EventId::parse(id)?) };
    let in_stream: HashSet<&str> = stream.iter().map(String::as_str).collect();
    let mut next = 0; // index in `stream` of the next id the client is owed
    let mut last: Option<EventId> = None;
    let mut owes_reset = false;
    let mut resets = 0;
    for frame in &watched.frames {
        let id = frame
            .id
            .as_deref()
            .expect("data and reset frames carry an id");
        match frame.event.as_deref() {
            Some("reset") => {
                resets += 1;
                owes_reset = false;
                let resume = position(id)?;
                // Everything up to `resume` is written off, told.
                while next < stream.len() && position(&stream[next])? <= resume {
                    next += 1;
                }
                last = Some(resume);
            }
            Some("data") => {
                let this = position(id)?;
                if let Some(last) = last {
                    assert!(
                        this > last,
                        "{who}: {id} after {last}: out of order or twice"
                    );
                }
                last = Some(this);
                if in_stream.contains(id) {
                    assert!(!owes_reset, "{who}: {id} after a lost id without a reset");
                    assert_eq!(
                        stream.get(next).map(String::as_str),
                        Some(id),
                        "{who}: silent gap before {id}"
                    );
                    next += 1;
                } else {
                    // Acknowledged (or not) on the old master, gone from the new one.
                    owes_reset = true;
                }
            }
            other => panic!("{who}: unexpected frame {other:?}"),
        }
    }
    assert_eq!(
        next,
        stream.len(),
        "{who}: did not reach the end of the stream"
    );
    Ok(resets)
}

/// What a failover scenario saw.
#[derive(Debug)]
struct Failover {
    /// Acknowledged events the new master's stream does not hold.
    lost_acked: usize,
    /// `reset`s the clients of the failed-over shard got.
    resets: usize,
}

/// Clients on two gateway processes follow two topics on each shard while publishing
/// goes on; the master of shard 1 is SIGKILLed and its replica takes over (with
/// `cut_off_replica`, after missing the master's last writes). Then each client must
/// hold every event of the final stream once, in order, live on its first connection,
/// with a `reset` after any event Redis lost; the other shards lose nothing and reset
/// nobody.
async fn failover(cut_off_replica: bool) -> anyhow::Result<Failover> {
    let mut cluster = RedisCluster::start().await?;
    let shards = cluster.topics_on_each_shard("Failover", 2).await?;
    let topics: Vec<Topic> = shards
        .iter()
        .flatten()
        .map(|n| Topic::new(n))
        .collect::<Result<_, _>>()?;
    let failing: HashSet<Topic> = shards[1]
        .iter()
        .map(|n| Topic::new(n))
        .collect::<Result<_, _>>()?;
    let pods = [
        GatewayProcess::start_cluster(&cluster, &[]).await?,
        GatewayProcess::start_cluster(&cluster, &[]).await?,
    ];
    // Two clients per topic, one starting on each pod.
    let bases: Vec<String> = pods.iter().map(|p| p.url("")).collect();
    let watchers = two_watchers_per_topic(&bases, &topics).await?;
    let store = store(&cluster, Duration::from_millis(500))?;
    let acks = Arc::new(Acks::default());
    let stop = CancellationToken::new();
    let writers = publish_to_each(&store, &topics, Duration::from_millis(10), &acks, &stop);

    reach("events before the kill", &acks, &topics, 100).await?;
    let slot = cluster
        .keyslot(&format!("cs:{{{}}}:stream", shards[1][0]))
        .await?;
    let (killed, promoted) = if cut_off_replica {
        let failing: Vec<Topic> = failing.iter().cloned().collect();
        let replica = cluster.cut_off_replica_of(slot).await?;
        let target = acks.min_count(&failing) + 20;
        reach("writes the replica never gets", &acks, &failing, target).await?;
        let (killed, its_replica) = cluster.kill_master(slot).await?;
        anyhow::ensure!(its_replica == replica);
        cluster.resume(replica).await?;
        cluster.wait_failover(slot, killed, replica).await?;
        (killed, replica)
    } else {
        cluster.kill_master_of(slot).await?
    };
    eprintln!("killed master {killed}; replica {promoted} took over");
    for pod in &pods {
        pod.wait_ready().await?;
    }
    let after = acks.min_count(&topics) + 100;
    reach(
        "events on every shard after the failover",
        &acks,
        &topics,
        after,
    )
    .await?;
    stop.cancel();
    for writer in writers {
        within("a writer to stop", writer).await??;
    }

    let acked = std::mem::take(&mut *acks.ids.lock().expect("lock"));
    let mut lost_acked = 0;
    let mut streams = HashMap::new();
    for topic in &topics {
        let stream = stream_ids(&cluster, topic).await?;
        let held: HashSet<&String> = stream.iter().collect();
        let lost: Vec<String> = acked[topic]
            .iter()
            .map(ToString::to_string)
            .filter(|id| !held.contains(id))
            .collect();
        if !failing.contains(topic) {
            assert!(lost.is_empty(), "{topic}: a healthy shard lost {lost:?}");
        }
        lost_acked += lost.len();
        streams.insert(topic.clone(), stream);
    }
    let mut resets = 0;
    for (i, (topic, mut watcher)) in watchers.into_iter().enumerate() {
        let stream = &streams[&topic];
        let last = stream.last().expect("events were published");
        watcher.wait_for(last, CONVERGE).await?;
        let watched = watcher.stop().await?;
        let who = format!("client {i} of {topic}");
        // Both pods stayed up: every client stayed on its connection, which went on live
        // after the failover (a deaf pod's client would have reconnected on its read
        // timeout and caught up by replay).
        assert_eq!(watched.reconnects, 0, "{who} had to reconnect");
        let got = check_against_stream(&who, &watched, stream)?;
        if !failing.contains(&topic) {
            assert_eq!(got, 0, "{who}: reset on a shard that did not fail over");
        }
        resets += got;
    }
    eprintln!(
        "acknowledged {} events, {} refused during the failover, {lost_acked} acknowledged but lost by async replication, {resets} client resets",
        acked.values().map(Vec::len).sum::<usize>(),
        acks.failed.lock().expect("lock"),
    );
    Ok(Failover { lost_acked, resets })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_loses_nothing_acknowledged_or_resets_where_redis_lost_it()
-> anyhow::Result<()> {
    failover(false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_a_replica_that_missed_writes_resets_the_clients_that_saw_them()
-> anyhow::Result<()> {
    let seen = failover(true).await?;
    assert!(
        seen.lost_acked >= 20,
        "Redis lost acknowledged writes: {seen:?}"
    );
    assert!(
        seen.resets > 0,
        "clients past the lost writes were told: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_gateways_loses_nothing_on_any_shard() -> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let topics = one_topic_per_shard(&cluster, "Kill").await?;
    let a = GatewayProcess::start_cluster(&cluster, &[]).await?;
    let b = GatewayProcess::start_cluster(&cluster, &[]).await?;
    let mut watchers = Vec::new();
    for (i, topic) in topics.iter().cycle().take(12).enumerate() {
        let urls = vec![
            change_stream(&a.url(""), topic),
            change_stream(&b.url(""), topic),
        ];
        watchers.push((topic.clone(), Watcher::start(urls, i % 2).await?));
    }
    let store = store(&cluster, Duration::from_secs(2))?;
    let acks = Arc::new(Acks::default());
    let stop = CancellationToken::new();
    let writers = publish_to_each(&store, &topics, Duration::from_millis(2), &acks, &stop);
    reach("events before the kill", &acks, &topics, 200).await?;
    a.kill9().await?;
    let after = acks.min_count(&topics) + 300;
    reach("events after the kill", &acks, &topics, after).await?;
    stop.cancel();
    for writer in writers {
        within("a writer to stop", writer).await??;
    }
    assert_eq!(*acks.failed.lock().expect("lock"), 0);
    let mut moved = 0;
    for (i, (topic, mut watcher)) in watchers.into_iter().enumerate() {
        let stream = stream_ids(&cluster, &topic).await?;
        watcher
            .wait_for(stream.last().expect("events"), CONVERGE)
            .await?;
        let watched = watcher.stop().await?;
        assert!(
            watched.resets().is_empty(),
            "client {i} of {topic} was reset"
        );
        assert_eq!(
            watched.data_ids(),
            stream,
            "client {i} of {topic}: all, in order, once"
        );
        moved += usize::from(watched.reconnects > 0);
    }
    assert!(
        moved >= 6,
        "the killed pod's clients moved to the other: {moved}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_whose_slot_moves_to_another_shard_keeps_every_client_complete()
-> anyhow::Result<()> {
    let cluster = RedisCluster::start().await?;
    let shards = cluster.topics_on_each_shard("Moving", 1).await?;
    let topic = Topic::new(&shards[0][0])?;
    let steady = Topic::new(&shards[2][0])?;
    let pods = [
        Gateway::start_cluster(&cluster).await?,
        Gateway::start_cluster(&cluster).await?,
    ];
    let bases: Vec<String> = pods.iter().map(|p| p.url("")).collect();
    let watchers = two_watchers_per_topic(&bases, &[topic.clone(), steady.clone()]).await?;
    let store = store(&cluster, Duration::from_secs(2))?;
    let acks = Arc::new(Acks::default());
    let stop = CancellationToken::new();
    let both = [topic.clone(), steady.clone()];
    let writers = publish_to_each(&store, &both, Duration::from_millis(5), &acks, &stop);
    reach("events before the move", &acks, &both, 100).await?;
    let slot = cluster.keyslot(&topic.stream_key()).await?;
    cluster.migrate_slot(slot, 1).await?;
    assert_eq!(cluster.shard_of_slot(slot).await?, 1);
    let after = acks.min_count(&both) + 200;
    reach("events after the move", &acks, &both, after).await?;
    stop.cancel();
    for writer in writers {
        within("a writer to stop", writer).await??;
    }
    for t in &both {
        let acked: Vec<String> = acks.ids.lock().expect("lock")[t]
            .iter()
            .map(ToString::to_string)
            .collect();
        let stream = stream_ids(&cluster, t).await?;
        let held: HashSet<&String> = stream.iter().collect();
        assert!(
            acked.iter().all(|id| held.contains(id)),
            "{t}: a slot move loses nothing acknowledged"
        );
    }
    for (i, (t, mut watcher)) in watchers.into_iter().enumerate() {
        let stream = stream_ids(&cluster, &t).await?;
        watcher
            .wait_for(stream.last().expect("events"), CONVERGE)
            .await?;
        let watched = watcher.stop().await?;
        assert!(watched.resets().is_empty(), "client {i} of {t} was reset");
        assert_eq!(
            watched.data_ids(),
            stream,
            "client {i} of {t}: all, in order, once"
        );
        // Live, on the same connection: a client whose pod went deaf would only have
        // caught up by reconnecting after its read timeout.
        assert_eq!(watched.reconnects, 0, "client {i} of {t} had to reconnect");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_is_routed_around_once_its_replica_takes_over() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::start().await?;
    let topics = one_topic_per_shard(&cluster, "Hung").await?;
    let pods = [
        GatewayProcess::start_cluster(&cluster, &[]).await?,
        GatewayProcess::start_cluster(&cluster, &[]).await?,
    ];
    let bases: Vec<String> = pods.iter().map(|p| p.url("")).collect();
    let watchers = two_watchers_per_topic(&bases, &topics).await?;
    let store = store(&cluster, Duration::from_millis(500))?;
    let acks = Arc::new(Acks::default());
    let stop = CancellationToken::new();
    let writers = publish_to_each(&store, &topics, Duration::from_millis(10), &acks, &stop);
    reach("events before the hang", &acks, &topics, 50).await?;

    // SIGSTOP: the master keeps every connection open and answers nothing, as behind a
    // network partition. Nobody is told; the cluster fails it over after the node timeout.
    let hung = cluster.masters().await?[&1];
    cluster.stop_node(hung).await?;
    poll_until("replica promoted", CONVERGE, || async {
        let masters = cluster.masters().await.ok()?;
        (masters.len() == 3 && masters[&1] != hung).then_some(())
    })
    .await?;
    let after = acks.min_count(&topics) + 100;
    reach("publishing on every shard again", &acks, &topics, after).await?;
    for pod in &pods {
        pod.wait_ready().await?;
    }
    stop.cancel();
    for writer in writers {
        within("a writer to stop", writer).await??;
    }

    for (i, (topic, mut watcher)) in watchers.into_iter().enumerate() {
        let stream = stream_ids(&cluster, &topic).await?;
        watcher
            .wait_for(stream.last().expect("events"), CONVERGE)
            .await?;
        let watched = watcher.stop().await?;
        // A client may have reconnected (its reads time out after 5 s, the pod went
        // deaf for about as long on the hung shard): exactly once in order either way.
        let resets = check_against_stream(&format!("client {i} of {topic}"), &watched, &stream)?;
        if topic != topics[1] {
            assert_eq!(resets, 0, "client {i} of {topic}: reset on a healthy shard");
        }
    }
    // And live again on both pods: a new client gets a new event on its connection.
    for pod in &pods {
        for topic in &topics {
            let mut client = SseClient::connect(&change_stream(&pod.url(""), topic), None).await?;
            let written = store.create(topic, body(0)).await?;
            let frame = client.next_event().await?;
            assert_eq!(frame.id, Some(written.event.to_string()), "{topic} live");
        }
    }
    Ok(())
}
