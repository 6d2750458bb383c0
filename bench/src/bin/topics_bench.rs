//! What a topic costs a pod: gateway RSS per idle change stream when `--streams` streams
//! share one topic, spread over `--topics` topics, or each have their own. One release
//! gateway in Redis mode on its own redis-server; raw sockets, each waiting for its
//! stream's first bytes (`:ok` and the start position, sent once Redis confirmed the
//! topic's subscription), so every topic is held when memory is read.
//!
//!   scripts/bench-topics [--streams 5000,15000] [--topics 1,1000,per-stream]
//!                        [--per-connection K] [--latency N]
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
use bench::load::{GatewayProcess, gateway_binary, rss_kib};
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
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let name = format!("Bench{}", state as usize % held);
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
