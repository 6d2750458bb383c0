//! Cluster mode against a real Redis Cluster (3 masters, 3 replicas).

use system_tests::RedisCluster;

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
