//! What a topic costs a pod: gateway RSS per idle change stream when `--streams` streams
//! share one topic, spread over `--topics` topics, or each have their own. One release
//! gateway in Redis mode on its own redis-server; raw sockets, each waiting for its
//! stream's first bytes (`:ok` and the start position, sent once Redis confirmed the
//! topic's subscription), so every topic is held when memory is read.
//!
//!   scripts/bench-topics [--streams 5000,15000] [--topics 1,1000,per-stream]
//!                        [--per-connection K] [--latency N]
//!   scripts/bench-topics --churn 2000 [--seconds 60] [--stable 1000] [--stable-topics 100]
//!                        [--stable-rate 20] [--churn-topics 50000]
//!
//! With `--per-connection K` each stream is one `/events` connection of K topics (stream i
//! holds topics `i*K .. i*K+K-1`, modulo `--topics`), so 10,000 connections hold 100,000
//! topics within the per-process file limit. `--latency N` then times N publishes to random
//! held topics until a client of that topic reads them (publish -> deliver while every topic
//! is held).
//!
//! One client process holds every stream (at most 15,000 here: the 20,000-files limit
//! is per process, and the gateway is another process). Results: docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::load::{GatewayProcess, gateway_binary, rss_kib, rss_parts_kib};
use clap::Parser;
use system_tests::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// Stream counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5000,15000")]
    streams: Vec<usize>,
    /// Topic counts, comma-separated: a number, or `per-stream` (one topic each).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,per-stream")]
    topics: Vec<String>,
    /// Topics per connection (`/events?topic=..`); 1: one change stream each.
    #[arg(long, default_value_t = 1)]
    per_connection: usize,
    /// Publish -> deliver samples to random held topics, after every stream is open.
    #[arg(long, default_value_t = 0)]
    latency: usize,
    /// Churn instead: stream opens+closes per second over random topics (of
    /// `--churn-topics`), while `--stable` clients on `--stable-topics` topics receive
    /// `--stable-rate` events per second per topic, for `--seconds`.
    #[arg(long)]
    churn: Option<u32>,
    #[arg(long, default_value_t = 50_000)]
    churn_topics: usize,
    #[arg(long, default_value_t = 1000)]
    stable: usize,
    #[arg(long, default_value_t = 100)]
    stable_topics: usize,
    #[arg(long, default_value_t = 20)]
    stable_rate: u32,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// After the churn, with the stable clients still receiving: seconds until the end
    /// RSS is read (an allocator gives freed memory back over seconds, not at once).
    #[arg(long, default_value_t = 15)]
    settle: u64,
    /// Seconds of stable traffic before the churn starts and the start RSS is read.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
}

/// Opens a stream of `topics` (a change stream for one, `/events` for several) and waits
/// for its start position.
async fn open(addr: std::net::SocketAddr, topics: &[String]) -> anyhow::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    let path = match topics {
        [one] => format!("/api/{one}/change-stream"),
        many => format!("/events?topic={}", many.join(",")),
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    let topic = &topics[0];
    socket.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0_u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("\nid: ") {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            bail!("stream of {topic} ended before its start position");
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Ok(socket)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = gateway_binary();
    if let Some(rate) = args.churn {
        return churn(&args, rate).await;
    }
    let k = args.per_connection.max(1);
    println!(
        "| streams | topics per stream | topics | gateway RSS before | after | per stream | per topic held | open time | publish -> deliver p50 / p99 / max |"
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &streams in &args.streams {
        for topics in &args.topics {
            let topics = match topics.as_str() {
                "per-stream" => streams * k,
                n => n.parse().context("--topics: a number or per-stream")?,
            };
            let redis = RedisServer::start().await?;
            let max = k.to_string();
            let gateway = GatewayProcess::start(
                &binary,
                &redis.url(),
                &[
                    ("GATEWAY_MAX_TOPICS", &max),
                    ("GATEWAY_MAX_CONNECTIONS", "19000"),
                ],
            )
            .await?;
            let before = rss_kib(gateway.pid).context("gateway RSS")?;
            let started = Instant::now();
            let mut sockets = Vec::with_capacity(streams);
            // A few hundred at a time: the accept queue and Redis see a burst, not a flood.
            for chunk in (0..streams).collect::<Vec<_>>().chunks(500) {
                let opened = futures::future::join_all(chunk.iter().map(|i| {
                    let names: Vec<String> = (0..k)
                        .map(|j| format!("Bench{}", (i * k + j) % topics))
                        .collect();
                    async move {
                        tokio::time::timeout(Duration::from_secs(60), open(gateway.addr, &names))
                            .await
                            .context("a stream did not start within 30 s")?
                    }
                }))
                .await;
                for socket in opened {
                    sockets.push(socket?);
                }
            }
            let took = started.elapsed();
            let after = rss_kib(gateway.pid).context("gateway RSS")?;
            let latency = latency(&redis, &gateway, topics.min(streams * k), args.latency).await?;
            let held = topics.min(streams * k);
            println!(
                "| {streams} | {k} | {held} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.2} KiB | {:.1} s | {latency} |",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                (after.saturating_sub(before)) as f64 / streams as f64,
                (after.saturating_sub(before)) as f64 / held as f64,
                took.as_secs_f64(),
            );
            drop(sockets);
            gateway.kill().await?;
        }
    }
    Ok(())
}

/// `samples` publishes, each to a random one of the `held` topics, each timed from the
/// create's call to its event on a client of that topic (joined to the held topic: no
/// Redis subscription needed). "p50 / p99 / max" in ms, or "-" without samples.
async fn latency(
    redis: &RedisServer,
    gateway: &GatewayProcess,
    held: usize,
    samples: usize,
) -> anyhow::Result<String> {
    use publisher::{RedisOptions, RedisStore, Store};
    if samples == 0 {
        return Ok("-".to_owned());
    }
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        let name = format!("Bench{}", xorshift(&mut state) as usize % held);
        let topic = proto::Topic::new(&name)?;
        let mut socket = open(gateway.addr, std::slice::from_ref(&name)).await?;
        let started = Instant::now();
        store.create(&topic, serde_json::Map::new()).await?;
        let mut buf = [0_u8; 4096];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("event: data") {
            let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
                .await
                .context("no event within 10 s")??;
            if n == 0 {
                bail!("stream of {name} ended");
            }
            seen.extend_from_slice(&buf[..n]);
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    Ok(format!(
        "{:.2} / {:.2} / {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    ))
}

/// The churn run: stable clients count their events while other streams come and go.
async fn churn(args: &Args, rate: u32) -> anyhow::Result<()> {
    use publisher::{RedisOptions, RedisStore, Store};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use system_tests::Watcher;
    use tokio_util::sync::CancellationToken;

    let redis = RedisServer::start().await?;
    let gateway = GatewayProcess::start(
        &gateway_binary(),
        &redis.url(),
        &[("GATEWAY_MAX_CONNECTIONS", "19000")]
            .into_iter()
            .chain(malloc_env())
            .collect::<Vec<_>>(),
    )
    .await?;
    let stable_topic = |i: usize| format!("Stable{}", i % args.stable_topics);
    let mut watchers = Vec::with_capacity(args.stable);
    for i in 0..args.stable {
        let url = format!(
            "http://{}/api/{}/change-stream",
            gateway.addr,
            stable_topic(i)
        );
        watchers.push(Watcher::start(vec![url], 0).await?);
    }
    let idle_rss = rss_kib(gateway.pid).context("gateway RSS")?;
    // The stable writer runs until the end RSS is read; the churners until the churn ends.
    let (stop, churn_stop) = (CancellationToken::new(), CancellationToken::new());

    // The writer: every stable topic gets `stable_rate` creates per second.
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let writer = tokio::spawn({
        let (stop, topics, rate) = (stop.clone(), args.stable_topics, args.stable_rate);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            while !stop.is_cancelled() {
                tick.tick().await;
                let writes = (0..topics).map(|i| {
                    let store = store.clone();
                    async move {
                        let topic = proto::Topic::new(&format!("Stable{i}"))?;
                        store.create(&topic, serde_json::Map::new()).await?;
                        anyhow::Ok(())
                    }
                });
                for write in futures::future::join_all(writes).await {
                    write?;
                }
            }
            anyhow::Ok(())
        }
    });

    // Where the pod starts: the stable clients receiving their traffic, before the churn
    // (so the comparison is the churn's doing, not the traffic's).
    seconds(args.warmup).await;
    let start_rss = rss_kib(gateway.pid).context("gateway RSS")?;
    let start_parts = rss_parts_kib(gateway.pid).context("gateway RSS")?;

    // The churners: `rate` opens per second, each closed once it has its start position.
    let opened = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let churners = tokio::spawn({
        let (stop, opened, failed) = (churn_stop.clone(), opened.clone(), failed.clone());
        let (addr, topics) = (gateway.addr, args.churn_topics);
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut state = 0x2545_f491_4f6c_dd1d_u64;
            let mut tasks = tokio::task::JoinSet::new();
            while !stop.is_cancelled() {
                tick.tick().await;
                let name = format!("Churn{}", xorshift(&mut state) as usize % topics);
                let (opened, failed) = (opened.clone(), failed.clone());
                tasks.spawn(async move {
                    let result =
                        tokio::time::timeout(Duration::from_secs(10), open(addr, &[name])).await;
                    match result {
                        Ok(Ok(socket)) => {
                            // A reset, not a FIN: no TIME_WAIT left on this side.
                            let _ = socket.set_zero_linger();
                            opened.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    });

    let started = Instant::now();
    let mut peak_rss = start_rss;
    let mut second = tokio::time::interval(Duration::from_secs(1));
    second.tick().await;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        second.tick().await;
        peak_rss = peak_rss.max(rss_kib(gateway.pid).unwrap_or(0));
    }
    churn_stop.cancel();
    churners.await?;
    let churn_took = started.elapsed();

    // Once the linger is over, Redis shows only the stable topics (their clients still
    // connected), and memory is measured with the same clients as at the start.
    let mut conn = redis.connection().await?;
    let channels =
        system_tests::poll_until("churned topics released", Duration::from_secs(30), || {
            let mut conn = conn.clone();
            let want = args.stable_topics;
            async move {
                let list = system_tests::gateway_channels(&mut conn, false)
                    .await
                    .ok()?;
                (list.len() == want).then_some(list.len())
            }
        })
        .await;
    let channels = match channels {
        Ok(n) => n,
        Err(e) => {
            let list = system_tests::gateway_channels(&mut conn, false).await?;
            let metrics = reqwest::get(format!("http://{}/metrics", gateway.addr))
                .await?
                .text()
                .await?;
            let held: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("gateway_subscribed_topics")
                        || l.starts_with("gateway_sse_connections{")
                })
                .collect();
            bail!(
                "{e}: {} channels in Redis ({:?}...); {held:?}",
                list.len(),
                &list[..list.len().min(5)]
            );
        }
    };
    let released_rss = rss_kib(gateway.pid).context("gateway RSS")?;
    // The stable traffic goes on while the pod settles, as it would in a real one.
    seconds(args.settle).await;
    let end_rss = rss_kib(gateway.pid).context("gateway RSS")?;
    let end_parts = rss_parts_kib(gateway.pid).context("gateway RSS")?;
    stop.cancel();
    writer.await??;
    // Every stable client has every event of its topic, once, in order.
    let mut by_topic = std::collections::BTreeMap::<String, Vec<Watcher>>::new();
    for (i, watcher) in watchers.into_iter().enumerate() {
        by_topic.entry(stable_topic(i)).or_default().push(watcher);
    }
    let mut events = 0;
    for (name, group) in by_topic {
        let stream_key = proto::Topic::new(&name)?.stream_key();
        let reply: redis::streams::StreamRangeReply =
            redis::AsyncCommands::xrange_all(&mut conn, stream_key).await?;
        let ids: Vec<String> = reply.ids.into_iter().map(|e| e.id).collect();
        events += ids.len() * group.len();
        system_tests::traffic::all_complete(group, &ids, Duration::from_secs(30)).await?;
    }

    println!(
        "| churn opens/s | seconds | opened | failed | stable clients | stable topics | events delivered to them | channels after | RSS idle | start ({} s of stable traffic) | peak | released | end ({} s later) | end vs start |",
        args.warmup, args.settle
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    println!(
        "| {rate} | {:.0} | {} | {} | {} | {} | {events} (all, once, in order) | {channels} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:+.1}% |",
        churn_took.as_secs_f64(),
        opened.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        args.stable,
        args.stable_topics,
        idle_rss as f64 / 1024.0,
        start_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        released_rss as f64 / 1024.0,
        end_rss as f64 / 1024.0,
        (end_rss as f64 / start_rss as f64 - 1.0) * 100.0,
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nOf that RSS, allocated (RssAnon): {:.1} -> {:.1} MiB; the binary's and libraries' pages (RssFile): {:.1} -> {:.1} MiB.",
        mib(start_parts.0),
        mib(end_parts.0),
        mib(start_parts.1),
        mib(end_parts.1),
    );
    gateway.kill().await?;
    Ok(())
}

/// `n` seconds of the run going on (paced by an interval: traffic flows meanwhile).
async fn seconds(n: u64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for _ in 0..n {
        tick.tick().await;
    }
}

/// glibc malloc settings for the gateway from `BENCH_MALLOC` (`arena2`, `trim`), to see
/// what of the RSS after churn is the allocator keeping freed memory.
fn malloc_env() -> Vec<(&'static str, &'static str)> {
    match std::env::var("BENCH_MALLOC").as_deref() {
        Ok("arena2") => vec![("MALLOC_ARENA_MAX", "2")],
        Ok("trim") => vec![
            ("MALLOC_ARENA_MAX", "2"),
            ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ],
        _ => Vec::new(),
    }
}

/// The next of a xorshift64 sequence: random topics without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
