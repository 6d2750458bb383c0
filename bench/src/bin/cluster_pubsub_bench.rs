//! Classic vs sharded pub/sub throughput on a local Redis Cluster (3 masters, 3
//! replicas), the choice behind the gateway's cluster mode.
//!
//! Starts its own cluster ([`system_tests::RedisCluster`]), picks `--channels` topic
//! channels on each shard (`cs:{T}:events`, as the gateway uses), and per mode:
//! - one subscriber per shard (a RESP3 cluster connection, so each `SUBSCRIBE` or
//!   `SSUBSCRIBE` goes to the shard's master) subscribed to that shard's channels; a
//!   push callback only counts messages;
//! - one publisher connection per shard master sending `PUBLISH` or `SPUBLISH` to its own
//!   shard's channels in pipelined batches, `--inflight` batches at a time.
//!
//! Classic `PUBLISH` in a cluster is forwarded over the cluster bus to every node, whether
//! or not anyone there subscribed; `SPUBLISH` stays in the channel's shard (its master and
//! replicas). The run ends when every subscriber has counted its shard's share.
//! Reported per run: messages/s (published and delivered), CPU seconds of each node
//! (masters and replicas apart), and the cluster-bus publish messages sent
//! (`CLUSTER INFO` `cluster_stats_messages_publish*_sent`, summed over nodes).
//!
//! ```text
//! cluster_pubsub_bench [--messages N] [--payload BYTES] [--channels PER_SHARD]
//!                      [--batch B] [--inflight K] [--rounds R]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bench::load::{cpu_model, cpu_seconds};
use clap::Parser;
use futures::StreamExt;
use redis::cluster::ClusterClientBuilder;
use redis::{ProtocolVersion, PushInfo, PushKind};
use system_tests::RedisCluster;
use system_tests::cluster::MASTERS;

/// Longest a run may take to deliver everything.
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// Longest wait for one reply (a pipelined batch under load takes far more than redis-rs's
/// default 500 ms).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `SUBSCRIBE` / `PUBLISH`.
    Classic,
    /// `SSUBSCRIBE` / `SPUBLISH`.
    Sharded,
}

impl Mode {
    fn publish(self) -> &'static str {
        match self {
            Self::Classic => "PUBLISH",
            Self::Sharded => "SPUBLISH",
        }
    }
}

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(about = "Classic vs sharded pub/sub throughput on a local Redis Cluster")]
struct Args {
    /// Messages per run, split evenly over the shards.
    #[arg(long, default_value_t = 300_000)]
    messages: u64,
    /// Payload bytes per message (a change event envelope is ~100-300).
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Channels per shard.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Commands per pipelined batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Batches in flight per shard publisher.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// Runs of each mode, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One run's figures.
#[derive(Debug)]
struct Run {
    mode: Mode,
    seconds: f64,
    messages: u64,
    master_cpu: f64,
    replica_cpu: f64,
    busiest: f64,
    bus_publish: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.messages > 0 && args.batch > 0 && args.inflight > 0 && args.channels > 0);
    eprintln!("starting a 3-master, 3-replica cluster ...");
    let cluster = RedisCluster::start().await?;
    let shards = cluster.topics_on_each_shard("Bench", args.channels).await?;
    let channels: Vec<Vec<String>> = shards
        .iter()
        .map(|names| names.iter().map(|n| format!("cs:{{{n}}}:events")).collect())
        .collect();
    let masters = cluster.masters().await?;
    let payload = "x".repeat(args.payload);
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        // Alternate the order so neither mode always runs on a warmer cluster.
        let order = if round % 2 == 0 {
            [Mode::Classic, Mode::Sharded]
        } else {
            [Mode::Sharded, Mode::Classic]
        };
        for mode in order {
            let run = run(&cluster, &args, mode, &channels, &masters, &payload).await?;
            eprintln!(
                "{mode:?}: {:.0} msg/s, masters {:.2} cpu-s, replicas {:.2} cpu-s, bus publish {}",
                run.messages as f64 / run.seconds,
                run.master_cpu,
                run.replica_cpu,
                run.bus_publish
            );
            runs.push(run);
        }
    }
    report(&args, &runs);
    Ok(())
}

async fn run(
    cluster: &RedisCluster,
    args: &Args,
    mode: Mode,
    channels: &[Vec<String>],
    masters: &std::collections::BTreeMap<usize, u16>,
    payload: &str,
) -> anyhow::Result<Run> {
    let per_shard = args.messages / MASTERS as u64;
    // Subscribers: one per shard, counting in the push callback (no queue).
    let mut subscribers = Vec::new();
    let mut counters = Vec::new();
    for shard_channels in channels {
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        let sender = move |info: PushInfo| {
            if matches!(info.kind, PushKind::Message | PushKind::SMessage) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), ()>(())
        };
        let client = ClusterClientBuilder::new(cluster.seed_urls())
            .use_protocol(ProtocolVersion::RESP3)
            .push_sender(sender)
            .response_timeout(REPLY_TIMEOUT)
            .build()?;
        let mut conn = client.get_async_connection().await?;
        for channel in shard_channels {
            match mode {
                Mode::Classic => conn.subscribe(channel).await?,
                Mode::Sharded => conn.ssubscribe(channel).await?,
            }
        }
        subscribers.push(conn);
        counters.push(count);
    }
    let mut publishers = Vec::new();
    for shard in 0..MASTERS {
        let port = masters.get(&shard).context("master")?;
        publishers.push(node_connection(*port).await?);
    }

    let cpu_before = node_cpu(cluster).await?;
    let bus_before = bus_publish_sent(cluster).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (shard, conn) in publishers.into_iter().enumerate() {
        let shard_channels = channels[shard].clone();
        let payload = payload.to_owned();
        let (batch, inflight) = (args.batch as u64, args.inflight);
        tasks.push(tokio::spawn(async move {
            let batches = per_shard.div_ceil(batch);
            futures::stream::iter(0..batches)
                .map(|b| {
                    let mut conn = conn.clone();
                    let mut pipe = redis::pipe();
                    let first = b * batch;
                    for i in first..(first + batch).min(per_shard) {
                        let channel = &shard_channels[i as usize % shard_channels.len()];
                        pipe.cmd(mode.publish()).arg(channel).arg(&payload).ignore();
                    }
                    async move { pipe.exec_async(&mut conn).await }
                })
                .buffer_unordered(inflight)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<redis::RedisResult<()>>()
        }));
    }
    for task in tasks {
        task.await??;
    }
    let published = started.elapsed();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        tick.tick().await;
        if counters
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= per_shard)
        {
            break;
        }
        ensure!(
            started.elapsed() < RUN_DEADLINE,
            "{mode:?}: not delivered within {RUN_DEADLINE:?}: {:?}",
            counters
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>()
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = node_cpu(cluster).await?;
    let bus_after = bus_publish_sent(cluster).await?;
    for (shard, count) in counters.iter().enumerate() {
        ensure!(
            count.load(Ordering::Relaxed) == per_shard,
            "shard {shard}: delivered {} of {per_shard}",
            count.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "{mode:?}: published in {:.2}s, delivered in {seconds:.2}s",
        published.as_secs_f64()
    );
    drop(subscribers);
    let (master_cpu, replica_cpu, busiest) = cpu_delta(&cpu_before, &cpu_after);
    Ok(Run {
        mode,
        seconds,
        messages: per_shard * MASTERS as u64,
        master_cpu,
        replica_cpu,
        busiest,
        bus_publish: bus_after.saturating_sub(bus_before),
    })
}

/// A plain connection to one node, replies waited for up to [`REPLY_TIMEOUT`].
async fn node_connection(port: u16) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(REPLY_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// CPU time of one node.
#[derive(Clone, Debug)]
struct NodeCpu {
    port: u16,
    master: bool,
    seconds: f64,
}

/// CPU seconds each live node of `cluster` has used so far.
async fn node_cpu(cluster: &RedisCluster) -> anyhow::Result<Vec<NodeCpu>> {
    let topology = cluster.topology().await?;
    let mut out = Vec::new();
    for (port, pid) in cluster.pids()? {
        let seconds = cpu_seconds(&pid.to_string()).context("cpu time")?;
        let master = topology.iter().any(|n| n.port == port && n.master);
        out.push(NodeCpu {
            port,
            master,
            seconds,
        });
    }
    Ok(out)
}

/// CPU seconds used between two readings: masters, replicas, and the busiest node.
fn cpu_delta(before: &[NodeCpu], after: &[NodeCpu]) -> (f64, f64, f64) {
    let (mut masters, mut replicas, mut busiest) = (0.0, 0.0, 0.0_f64);
    for node in after {
        let start = before
            .iter()
            .find(|b| b.port == node.port)
            .map_or(0.0, |b| b.seconds);
        let used = node.seconds - start;
        busiest = busiest.max(used);
        if node.master {
            masters += used;
        } else {
            replicas += used;
        }
    }
    (masters, replicas, busiest)
}

/// Cluster-bus publish messages sent, summed over the nodes (`CLUSTER INFO`).
async fn bus_publish_sent(cluster: &RedisCluster) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in cluster.topology().await? {
        let mut conn = node_connection(node.port).await?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await?;
        for line in info.lines() {
            if let Some((key, value)) = line.split_once(':')
                && key.starts_with("cluster_stats_messages_publish")
                && key.ends_with("_sent")
            {
                total += value.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn report(args: &Args, runs: &[Run]) {
    println!(
        "\n{} messages of {} bytes per run over {} channels per shard, {} per pipeline, {} pipelines in flight per shard; CPU: {}\n",
        args.messages,
        args.payload,
        args.channels,
        args.batch,
        args.inflight,
        cpu_model()
    );
    println!(
        "| mode | runs | msg/s (median) | masters cpu-s per 100k msg | replicas cpu-s per 100k msg | busiest node cpu-s per 100k msg | cluster-bus publish msgs per msg |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for mode in [Mode::Classic, Mode::Sharded] {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.mode == mode).collect();
        let per = |f: fn(&Run) -> f64| {
            median(
                mine.iter()
                    .map(|r| f(r) * 100_000.0 / r.messages as f64)
                    .collect(),
            )
        };
        let rate = median(mine.iter().map(|r| r.messages as f64 / r.seconds).collect());
        let bus = median(
            mine.iter()
                .map(|r| r.bus_publish as f64 / r.messages as f64)
                .collect(),
        );
        println!(
            "| {} | {} | {rate:.0} | {:.2} | {:.2} | {:.2} | {bus:.2} |",
            match mode {
                Mode::Classic => "classic PUBLISH/SUBSCRIBE",
                Mode::Sharded => "sharded SPUBLISH/SSUBSCRIBE",
            },
            mine.len(),
            per(|r| r.master_cpu),
            per(|r| r.replica_cpu),
            per(|r| r.busiest),
        );
    }
}
