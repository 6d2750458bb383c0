//! Cluster mode against a real Redis Cluster (3 masters, 3 replicas).

use std::collections::HashSet;

use proto::{Envelope, Topic};
use redis::{AsyncCommands, PushKind};
use serde_json::{Value, json};
use system_tests::{Publisher, RedisCluster, STEP, http, within};

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
    let topics: Vec<String> = cluster
        .topics_on_each_shard("Pub", 1)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let (mut sub, mut push_rx) = push_connection(&cluster).await?;
    for topic in &topics {
        // One command per topic: the topics hash to different slots.
        within(
            "ssubscribe",
            sub.ssubscribe(Topic::new(topic)?.redis_channel()),
        )
        .await??;
    }
    let publisher = Publisher::start_cluster(&cluster).await?;
    let http = http();
    for topic in &topics {
        let created: Value = http
            .post(publisher.url(&format!("/api/{topic}")))
            .json(&json!({"foo": topic}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        assert_eq!(created, json!({"foo": topic, "id": 1}));
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
        let stream: redis::streams::StreamRangeReply =
            within("xrange", conn.xrange_all(topic.stream_key())).await??;
        assert_eq!(stream.ids.len(), 1);
        assert_eq!(stream.ids[0].id, envelope.id.to_string(), "{topic}");
        let record: Option<String> = within("hget", conn.hget(topic.records_key(), "1")).await??;
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
