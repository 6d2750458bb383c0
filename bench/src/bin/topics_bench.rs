//! What a topic costs a pod: gateway RSS per idle change stream when `--streams` streams
//! share one topic, spread over `--topics` topics, or each have their own. One release
//! gateway in Redis mode on its own redis-server; raw sockets, each waiting for its
//! stream's first bytes (`:ok` and the start position, sent once Redis confirmed the
//! topic's subscription), so every topic is held when memory is read.
//!
//!   scripts/bench-topics [--streams 5000,15000] [--topics 1,1000,per-stream]
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
}

/// Opens a change stream of `topic` and waits for its start position.
async fn open(addr: std::net::SocketAddr, topic: &str) -> anyhow::Result<TcpStream> {
    let mut socket = TcpStream::connect(addr).await?;
    let request = format!(
        "GET /api/{topic}/change-stream HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    );
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
    println!("| streams | topics | gateway RSS before | after | per stream | open time |");
    println!("|--:|--:|--:|--:|--:|--:|");
    for &streams in &args.streams {
        for topics in &args.topics {
            let topics = match topics.as_str() {
                "per-stream" => streams,
                n => n.parse().context("--topics: a number or per-stream")?,
            };
            let redis = RedisServer::start().await?;
            let gateway = GatewayProcess::start(&binary, &redis.url(), &[]).await?;
            let before = rss_kib(gateway.pid).context("gateway RSS")?;
            let started = Instant::now();
            let mut sockets = Vec::with_capacity(streams);
            // A few hundred at a time: the accept queue and Redis see a burst, not a flood.
            for chunk in (0..streams).collect::<Vec<_>>().chunks(500) {
                let opened = futures::future::join_all(chunk.iter().map(|i| {
                    let topic = format!("Bench{}", i % topics);
                    async move {
                        tokio::time::timeout(Duration::from_secs(30), open(gateway.addr, &topic))
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
            println!(
                "| {streams} | {topics} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.1} s |",
                before as f64 / 1024.0,
                after as f64 / 1024.0,
                (after.saturating_sub(before)) as f64 / streams as f64,
                took.as_secs_f64(),
            );
            drop(sockets);
            gateway.kill().await?;
        }
    }
    Ok(())
}
