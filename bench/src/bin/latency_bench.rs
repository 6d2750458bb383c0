//! Publish->deliver latency across two gateway pods with many SSE clients.
//!
//! Starts one `redis-server` (the harness's) and two `gateway` *processes* from the release
//! binary, opens `--clients` change streams on `/api/Lat/change-stream`, split evenly over
//! the two, then publishes `--events` creates at `--rate` per second through
//! `RedisStore::create`. Each body carries its publish time (`t`, Unix nanoseconds, taken
//! just before `create`), and each client records `arrival - t` on the same machine clock:
//! the whole path publisher -> Lua script -> pub/sub -> gateway hub -> socket -> client.
//!
//! Every client also checks delivery: the `id:`s it read must be exactly the ids `create`
//! returned, in publish order (nothing missing, nothing twice, nothing out of order).
//!
//! Clients speak HTTP/1.1 on a plain `TcpStream` with a small chunked-body + SSE reader:
//! one task and one `read` per wake-up per client, no JSON tree (`data.t` is read straight
//! from the bytes). The bench shares the machine with Redis and both gateways, so the
//! less CPU its own clients burn, the more the figures are the gateways'.
//!
//! ```text
//! latency_bench [--clients N] [--events N] [--rate PER_SECOND]
//! ```
//!
//! Needs the release gateway binary: `scripts/bench-latency` builds it. `GATEWAY_BIN`
//! overrides its path; `REDIS_SERVER` the `redis-server` one (see the harness).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::load::{
    Connection, GatewayProcess, READ_BUFFER, SseEvent, cpu_model, cpu_seconds, data_u64,
    gateway_binary, machine_cpu, mib, ms, percentile_ms, rss_kib, unix_nanos,
};
use futures::{StreamExt, TryStreamExt};
use proto::{EventId, Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::json;
use system_tests::{RedisServer, within};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const DEFAULT_CLIENTS: usize = 1000;
const DEFAULT_EVENTS: usize = 2000;
const DEFAULT_RATE: usize = 200;
/// Gateway processes; client `i` goes to gateway `i % GATEWAYS`.
const GATEWAYS: usize = 2;
/// The collection every client follows and every event is created in.
const TOPIC: &str = "Lat";
const STREAM_PATH: &str = "/api/Lat/change-stream?_format=event-stream";
/// Creates on another collection before the clients connect: loads the Lua script into
/// Redis and opens the store's connection, so the first measured event pays for neither.
const WARMUP_TOPIC: &str = "LatWarmup";
const WARMUP_CREATES: usize = 20;
/// Client connections being opened at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Longest wait for all clients to be connected.
const CONNECT_DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait, after the last publish, for every client to have every event.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// Failing clients described in full; the rest are counted.
const REPORT_CLIENTS: usize = 10;

/// Command-line flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Parser)]
#[command(about = "Publish->deliver latency across two gateway processes")]
struct Args {
    /// SSE clients, split evenly over the gateways.
    #[arg(long, default_value_t = DEFAULT_CLIENTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    clients: usize,
    /// Creates to publish.
    #[arg(long, default_value_t = DEFAULT_EVENTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    events: usize,
    /// Creates per second.
    #[arg(long, default_value_t = DEFAULT_RATE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rate: usize,
}

/// What one client received.
#[derive(Debug)]
struct ClientResult {
    index: usize,
    gateway: usize,
    /// Event ids in arrival order (including any past the expected count).
    ids: Vec<EventId>,
    /// `arrival - t` per event, nanoseconds, in arrival order.
    latencies: Vec<u64>,
    /// Events that were not a well-formed `data` change (first few described).
    anomalies: Vec<String>,
    /// Why the stream ended before the bench did, if it did.
    error: Option<String>,
}

/// Reads `conn` until `cancel`, recording every event; sends on `finished` once it has
/// `events` events (or its stream failed), so the bench knows when everyone is done.
async fn follow(
    mut conn: Connection,
    events: usize,
    finished: mpsc::Sender<()>,
    cancel: CancellationToken,
) -> ClientResult {
    let mut result = ClientResult {
        index: conn.index,
        gateway: conn.gateway,
        ids: Vec::with_capacity(events),
        latencies: Vec::with_capacity(events),
        anomalies: Vec::new(),
        error: None,
    };
    let mut buf = vec![0_u8; READ_BUFFER];
    let mut pending = std::mem::take(&mut conn.leftover);
    let mut told = false;
    loop {
        let arrived = unix_nanos();
        let mut on_event = |event: SseEvent<'_>| record(&mut result, arrived, &event);
        if let Err(e) = conn.reader.feed(&pending, &mut on_event) {
            result.error = Some(format!("{e:#}"));
            break;
        }
        if !told && result.ids.len() >= events {
            told = true;
            let _ = finished.try_send(());
        }
        let read = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            read = conn.stream.read(&mut buf) => read,
        };
        match read {
            Ok(0) => {
                result.error = Some("the gateway ended the stream".to_owned());
                break;
            }
            Ok(n) => {
                pending.clear();
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                result.error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    if !told {
        let _ = finished.try_send(());
    }
    result
}

fn record(result: &mut ClientResult, arrived: u64, event: &SseEvent<'_>) {
    let id = event
        .id
        .and_then(|id| std::str::from_utf8(id).ok())
        .and_then(|id| EventId::parse(id).ok());
    let t = data_u64(event.data, b"t");
    match (event.event, id, t) {
        (b"data", Some(id), Some(t)) => {
            result.ids.push(id);
            result.latencies.push(arrived.saturating_sub(t));
        }
        _ => {
            if result.anomalies.len() < 3 {
                result.anomalies.push(format!(
                    "event {:?} id {:?} data {:?}",
                    String::from_utf8_lossy(event.event),
                    event.id.map(String::from_utf8_lossy),
                    String::from_utf8_lossy(event.data),
                ));
            }
        }
    }
}

/// Opens every client, `CONNECT_CONCURRENCY` at a time, client `i` on gateway `i % n`.
async fn connect_all(addrs: &[SocketAddr], clients: usize) -> anyhow::Result<Vec<Connection>> {
    let all = futures::stream::iter(0..clients)
        .map(|index| {
            let gateway = index % addrs.len();
            let addr = addrs[gateway];
            async move {
                within(
                    "SSE connect",
                    Connection::open(index, gateway, addr, STREAM_PATH, None),
                )
                .await
                .and_then(|r| r)
                .with_context(|| format!("client {index} on gateway {}", gateway + 1))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect();
    tokio::time::timeout(CONNECT_DEADLINE, all)
        .await
        .with_context(|| format!("{clients} clients not connected within {CONNECT_DEADLINE:?}"))?
}

/// Describes how `ids` differs from `published`; `None` when they are equal.
fn delivery_fault(ids: &[EventId], published: &[EventId]) -> Option<String> {
    if ids == published {
        return None;
    }
    let received: HashSet<&EventId> = ids.iter().collect();
    let missing = published.iter().filter(|id| !received.contains(id)).count();
    let duplicated = ids.len() - received.len();
    let expected: HashSet<&EventId> = published.iter().collect();
    let unknown = received.iter().filter(|id| !expected.contains(*id)).count();
    let first = ids
        .iter()
        .zip(published)
        .position(|(a, b)| a != b)
        .unwrap_or(ids.len().min(published.len()));
    let out_of_order = ids.windows(2).filter(|w| w[0] >= w[1]).count();
    Some(format!(
        "received {} of {} events; first difference at #{first}; {missing} missing, \
         {duplicated} duplicated, {unknown} unknown, {out_of_order} out of order",
        ids.len(),
        published.len()
    ))
}

// ---------------------------------------------------------------------------------------
// Publishing

/// What the publisher did.
#[derive(Debug)]
struct Published {
    /// Event ids in publish order.
    ids: Vec<EventId>,
    /// How long each `create` call took, nanoseconds, in publish order.
    calls: Vec<u64>,
    elapsed: Duration,
}

fn body(t: u64, seq: usize) -> Object {
    let mut body = Object::new();
    body.insert("t".into(), json!(t));
    body.insert("seq".into(), json!(seq));
    body
}

/// The publisher on a thread and runtime of its own, as a backend service would be a
/// process of its own: its `create` calls and timestamps do not queue behind the client
/// tasks of this process's runtime (they still share the machine's cores).
#[derive(Debug)]
struct PublisherThread {
    ready: oneshot::Receiver<()>,
    go: oneshot::Sender<()>,
    done: oneshot::Receiver<anyhow::Result<Published>>,
}

impl PublisherThread {
    /// Connects and warms up (`WARMUP_CREATES` on another collection: the script gets
    /// loaded, the connection opened), then waits for [`PublisherThread::run`].
    fn start(redis_url: String, args: Args) -> anyhow::Result<Self> {
        let (ready_tx, ready) = oneshot::channel();
        let (go, go_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("publisher".to_owned())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("publisher runtime")
                    .and_then(|runtime| {
                        runtime.block_on(async {
                            let store =
                                RedisStore::connect_lazy(&redis_url, RedisOptions::default())?;
                            let warmup = Topic::new(WARMUP_TOPIC)?;
                            for seq in 0..WARMUP_CREATES {
                                within(
                                    "warm-up create",
                                    store.create(&warmup, body(unix_nanos(), seq)),
                                )
                                .await??;
                            }
                            let _ = ready_tx.send(());
                            go_rx.await.context("the bench gave up before publishing")?;
                            publish(&store, &Topic::new(TOPIC)?, &args).await
                        })
                    });
                let _ = done_tx.send(result);
            })
            .context("spawn the publisher thread")?;
        Ok(Self { ready, go, done })
    }

    /// Waits for the warm-up to be done.
    async fn ready(mut self) -> anyhow::Result<Self> {
        if within("publisher warm-up", &mut self.ready).await?.is_ok() {
            return Ok(self);
        }
        self.done.await.context("publisher thread panicked")??;
        bail!("publisher stopped before it was ready")
    }

    /// Publishes every event and returns what was published.
    async fn run(self) -> anyhow::Result<Published> {
        let _ = self.go.send(());
        self.done.await.context("publisher thread panicked")?
    }
}

/// `events` creates, one every `1/rate` s, each awaited before the next so the returned
/// ids are in publish order. A late tick fires at once (the interval's default `Burst`),
/// keeping the average rate.
async fn publish(store: &RedisStore, topic: &Topic, args: &Args) -> anyhow::Result<Published> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut ids = Vec::with_capacity(args.events);
    let mut calls = Vec::with_capacity(args.events);
    let started = Instant::now();
    for seq in 0..args.events {
        tick.tick().await;
        let call = Instant::now();
        let written = store
            .create(topic, body(unix_nanos(), seq))
            .await
            .with_context(|| format!("create #{seq}"))?;
        calls.push(call.elapsed().as_nanos() as u64);
        ids.push(written.event);
    }
    let elapsed = started.elapsed();
    Ok(Published {
        ids,
        calls,
        elapsed,
    })
}

// ---------------------------------------------------------------------------------------
// Report

/// The processes whose CPU time the report shows: (name, `/proc` entry).
fn processes(redis_pid: Option<u32>, gateways: &[GatewayProcess]) -> Vec<(String, String)> {
    let mut all = Vec::new();
    if let Some(pid) = redis_pid {
        all.push(("redis-server".to_owned(), pid.to_string()));
    }
    for (i, gateway) in gateways.iter().enumerate() {
        all.push((format!("gateway {}", i + 1), gateway.pid.to_string()));
    }
    all.push((
        "latency_bench (clients + publisher)".to_owned(),
        "self".to_owned(),
    ));
    all
}

fn cpu_snapshot(processes: &[(String, String)]) -> Vec<Option<f64>> {
    processes.iter().map(|(_, pid)| cpu_seconds(pid)).collect()
}

/// Latency by second of publishing (event `i` is in second `i / rate`), from the clients
/// that got every event in order, beside the slowest `create` call of that second.
fn print_timeline(results: &[ClientResult], published: &Published, rate: usize) {
    let seconds = published.ids.len().div_ceil(rate);
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); seconds];
    for result in results {
        if result.ids != published.ids {
            continue;
        }
        for (i, &latency) in result.latencies.iter().enumerate() {
            buckets[i / rate].push(latency);
        }
    }
    println!();
    println!("| second | p50 ms | p99 ms | max ms | slowest create ms |");
    println!("|--:|--:|--:|--:|--:|");
    for (second, bucket) in buckets.iter_mut().enumerate() {
        bucket.sort_unstable();
        let slowest = published
            .calls
            .iter()
            .skip(second * rate)
            .take(rate)
            .max()
            .map(|&ns| ns as f64 / 1e6);
        println!(
            "| {second} | {} | {} | {} | {} |",
            ms(percentile_ms(bucket, 0.50)),
            ms(percentile_ms(bucket, 0.99)),
            ms(percentile_ms(bucket, 1.0)),
            ms(slowest),
        );
    }
    println!();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let binary = gateway_binary();
    if !binary.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p gateway` \
             (scripts/bench-latency does), or set GATEWAY_BIN",
            binary.display()
        );
    }

    let redis = RedisServer::start().await?;
    let mut admin = redis.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .context("INFO server")?;
    let info_field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let version = info_field("redis_version").unwrap_or_else(|| "unknown".to_owned());
    let redis_pid = info_field("process_id").and_then(|p| p.parse::<u32>().ok());

    let mut gateways = Vec::with_capacity(GATEWAYS);
    for _ in 0..GATEWAYS {
        gateways.push(GatewayProcess::start(&binary, &redis.url(), &[]).await?);
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "latency_bench: {} clients over {GATEWAYS} gateway processes, {} events at {}/s; \
         {cores} cores ({}), redis-server {version}",
        args.clients,
        args.events,
        args.rate,
        cpu_model(),
    );

    let publisher = PublisherThread::start(redis.url(), args)?;
    let publisher = publisher.ready().await?;

    let connecting = Instant::now();
    let connections = connect_all(&addrs, args.clients).await?;
    println!(
        "connected {} clients in {:.2} s ({CONNECT_CONCURRENCY} at a time)",
        connections.len(),
        connecting.elapsed().as_secs_f64()
    );
    let rss_connected: Vec<Option<u64>> = gateways.iter().map(|g| rss_kib(g.pid)).collect();

    let cancel = CancellationToken::new();
    // Capacity: one message per client, so `try_send` never finds it full.
    let (finished_tx, mut finished_rx) = mpsc::channel(args.clients);
    let mut readers = JoinSet::new();
    for conn in connections {
        readers.spawn(follow(
            conn,
            args.events,
            finished_tx.clone(),
            cancel.clone(),
        ));
    }
    drop(finished_tx);

    let watched = processes(redis_pid, &gateways);
    let cpu_before = cpu_snapshot(&watched);
    let machine_before = machine_cpu();
    let published = publisher.run().await?;
    let publish_done = Instant::now();
    let mut finished = 0;
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        while finished < args.clients && finished_rx.recv().await.is_some() {
            finished += 1;
        }
    })
    .await
    .is_ok();
    let drain_time = publish_done.elapsed();
    let window = published.elapsed + drain_time;
    let cpu_after = cpu_snapshot(&watched);
    let machine_after = machine_cpu();
    let rss_end: Vec<Option<u64>> = gateways.iter().map(|g| rss_kib(g.pid)).collect();
    cancel.cancel();

    let mut results = Vec::with_capacity(args.clients);
    while let Some(joined) = within("clients to stop", readers.join_next()).await? {
        results.push(joined.context("client task panicked")?);
    }
    results.sort_by_key(|r| r.index);
    let mut logs = Vec::with_capacity(GATEWAYS);
    for gateway in gateways {
        logs.push(gateway.kill().await?);
    }

    // Figures.
    let mut calls = published.calls.clone();
    calls.sort_unstable();
    println!(
        "published {} events in {:.2} s ({:.1}/s); create call p50 {} ms, p99 {} ms, max {} ms",
        published.ids.len(),
        published.elapsed.as_secs_f64(),
        published.ids.len() as f64 / published.elapsed.as_secs_f64(),
        ms(percentile_ms(&calls, 0.50)),
        ms(percentile_ms(&calls, 0.99)),
        ms(percentile_ms(&calls, 1.0)),
    );
    if drained {
        println!(
            "every client had every event {:.3} s after the last create returned",
            drain_time.as_secs_f64()
        );
    } else {
        println!(
            "gave up waiting after {DRAIN_DEADLINE:?}: {finished} of {} clients finished",
            args.clients
        );
    }

    let mut all: Vec<u64> = Vec::with_capacity(args.clients * args.events);
    let mut per_gateway: Vec<Vec<u64>> = vec![Vec::new(); GATEWAYS];
    for result in &results {
        all.extend_from_slice(&result.latencies);
        per_gateway[result.gateway].extend_from_slice(&result.latencies);
    }
    all.sort_unstable();
    for samples in &mut per_gateway {
        samples.sort_unstable();
    }
    println!();
    println!("| clients | events | deliveries | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |",
        args.clients,
        published.ids.len(),
        all.len(),
        ms(percentile_ms(&all, 0.50)),
        ms(percentile_ms(&all, 0.90)),
        ms(percentile_ms(&all, 0.99)),
        ms(percentile_ms(&all, 0.999)),
        ms(percentile_ms(&all, 1.0)),
    );
    println!();
    println!(
        "| gateway | clients | deliveries | p50 ms | p99 ms | max ms | RSS after connect MiB | RSS at end MiB |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for (i, samples) in per_gateway.iter().enumerate() {
        let clients = results.iter().filter(|r| r.gateway == i).count();
        println!(
            "| {} | {clients} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            samples.len(),
            ms(percentile_ms(samples, 0.50)),
            ms(percentile_ms(samples, 0.99)),
            ms(percentile_ms(samples, 1.0)),
            mib(rss_connected[i]),
            mib(rss_end[i]),
        );
    }
    println!();
    println!(
        "CPU during publish + delivery ({:.2} s wall, {cores} cores):",
        window.as_secs_f64()
    );
    let mut ours = 0.0;
    for (i, (name, _)) in watched.iter().enumerate() {
        match (cpu_before[i], cpu_after[i]) {
            (Some(before), Some(after)) => {
                ours += after - before;
                println!(
                    "  {name}: {:.2} s ({:.0}% of one core)",
                    after - before,
                    100.0 * (after - before) / window.as_secs_f64()
                );
            }
            _ => println!("  {name}: unknown"),
        }
    }
    if let (Some(before), Some(after)) = (machine_before, machine_after) {
        let busy = after.0 - before.0;
        let steal = after.1 - before.1;
        let all = after.2 - before.2;
        println!(
            "  whole machine: {busy:.2} s busy of {all:.2} s ({:.0}%), of which {:.2} s \
             outside these processes; {steal:.2} s stolen by the hypervisor",
            100.0 * busy / all.max(f64::EPSILON),
            (busy - ours).max(0.0),
        );
    }
    println!(
        "  bench RSS at end: {} MiB",
        mib(rss_kib(std::process::id()))
    );

    print_timeline(&results, &published, args.rate);

    let mut faulty = 0;
    for result in &results {
        let mut faults = Vec::new();
        if let Some(fault) = delivery_fault(&result.ids, &published.ids) {
            faults.push(fault);
        }
        if let Some(error) = &result.error {
            faults.push(error.clone());
        }
        faults.extend(result.anomalies.iter().cloned());
        if faults.is_empty() {
            continue;
        }
        faulty += 1;
        if faulty <= REPORT_CLIENTS {
            println!(
                "client {} (gateway {}): {}",
                result.index,
                result.gateway + 1,
                faults.join("; ")
            );
        }
    }
    println!();
    for (i, log) in logs.iter().enumerate() {
        println!(
            "gateway {} log: {} lines, {} warnings, {} errors",
            i + 1,
            log.lines,
            log.warnings,
            log.errors
        );
        for sample in &log.samples {
            println!("  {sample}");
        }
    }
    if faulty > 0 {
        bail!(
            "{faulty} of {} clients did not receive every event exactly once in order",
            args.clients
        );
    }
    println!(
        "delivery: all {} clients received all {} events exactly once, in publish order",
        args.clients,
        published.ids.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_delivery_faults() {
        let ids: Vec<EventId> = (1..=4).map(|ms| EventId::new(ms, 0)).collect();
        assert_eq!(delivery_fault(&ids, &ids), None);
        let swapped = [ids[0], ids[2], ids[1], ids[3]];
        let fault = delivery_fault(&swapped, &ids).unwrap();
        assert!(fault.contains("first difference at #1"), "{fault}");
        assert!(fault.contains("1 out of order"), "{fault}");
        let doubled = [ids[0], ids[1], ids[1], ids[2]];
        let fault = delivery_fault(&doubled, &ids).unwrap();
        assert!(fault.contains("1 missing, 1 duplicated"), "{fault}");
    }

    #[test]
    fn flags() {
        let args = |s: &str| {
            <Args as clap::Parser>::try_parse_from(
                std::iter::once("latency_bench").chain(s.split_whitespace()),
            )
        };
        assert_eq!(
            args("").unwrap(),
            Args {
                clients: 1000,
                events: 2000,
                rate: 200
            }
        );
        assert_eq!(
            args("--clients 2000 --events=10 --rate 5").unwrap(),
            Args {
                clients: 2000,
                events: 10,
                rate: 5
            }
        );
        assert!(args("--clients 0").is_err());
        assert!(args("--rate").is_err());
        assert!(args("--fast 1").is_err());
    }

    #[test]
    fn percentiles() {
        let sorted: Vec<u64> = (1..=100).map(|ms| ms * 1_000_000).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), Some(51.0));
        assert_eq!(percentile_ms(&sorted, 0.99), Some(99.0));
        assert_eq!(percentile_ms(&sorted, 1.0), Some(100.0));
        assert_eq!(percentile_ms(&[], 0.5), None);
    }
}
