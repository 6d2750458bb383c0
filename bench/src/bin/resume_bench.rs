//! Resume timing: one client reconnects with a `Last-Event-ID` that is a whole backlog
//! behind, and is replayed to the present.
//!
//! ```text
//! resume_bench [--backlog 10000] [--runs 20] [--pages 500] [--out results.json]
//! ```
//!
//! Starts one `redis-server` and, per replay page size, one release `gateway` process
//! (Redis mode, `GATEWAY_REPLAY_PAGE`); publishes `--backlog` creates through the publisher
//! library after one marker event; then `--runs` times per endpoint (the LoopBack change
//! stream with `last_event_id=<marker>`, and `/events` with the same position as a
//! cursor) opens a fresh connection and times it from before `connect` to the arrival of
//! the backlog's last event, checking every id arrives once, in order. The time covers TCP
//! connect, the request, the gateway's XRANGE pages, framing and the client reading.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::load::{
    Connection, GatewayProcess, READ_BUFFER, SseEvent, cpu_model, gateway_binary, ms, percentile_ms,
};
use clap::Parser;
use proto::{Cursor, EventId, Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::json;
use system_tests::RedisServer;
use tokio::io::AsyncReadExt;

const TOPIC: &str = "Backlog";
/// Longest wait for one replay.
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "Replay of a backlog to one reconnecting client")]
struct Args {
    /// Events the client is behind.
    #[arg(long, default_value_t = 10_000)]
    backlog: u64,
    /// Reconnections timed per endpoint and page size.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Replay page sizes (`GATEWAY_REPLAY_PAGE`), one gateway each.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pages: Vec<usize>,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Debug, serde::Serialize)]
struct Row {
    endpoint: &'static str,
    page: usize,
    backlog: u64,
    runs: usize,
    min_ms: Option<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    max_ms: Option<f64>,
    events_per_second: f64,
    bytes: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = RedisServer::start().await?;
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = Topic::new(TOPIC)?;
    let marker = store.create(&topic, body(0)).await?.event;
    let mut ids = Vec::with_capacity(usize::try_from(args.backlog)?);
    let published = Instant::now();
    // 64 creates in flight, ids collected in stream order.
    let mut seq = 1;
    while seq <= args.backlog {
        let batch: Vec<_> = (seq..=args.backlog.min(seq + 63))
            .map(|n| store.create(&topic, body(n)))
            .collect();
        seq += batch.len() as u64;
        for event in futures::future::try_join_all(batch).await? {
            ids.push(event.event);
        }
    }
    ids.sort();
    eprintln!(
        "resume_bench: {} events published in {:.2} s; {} cores ({})",
        args.backlog,
        published.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );

    let binary = gateway_binary();
    let mut rows = Vec::new();
    for &page in &args.pages {
        let page_setting = page.to_string();
        let gateway = GatewayProcess::start(
            &binary,
            &redis.url(),
            &[("GATEWAY_REPLAY_PAGE", page_setting.as_str())],
        )
        .await?;
        let cursor = Cursor::encode_ids(Cursor::checksum(std::slice::from_ref(&topic)), [marker]);
        let endpoints = [
            (
                "change-stream",
                format!("/api/{TOPIC}/change-stream?_format=event-stream&last_event_id={marker}"),
            ),
            (
                "events",
                format!("/events?topic={TOPIC}&last_event_id={cursor}"),
            ),
        ];
        for (endpoint, path) in &endpoints {
            // One untimed run warms the gateway's Redis connection and the page cache.
            replay(gateway.addr, path, &ids).await?;
            let mut times = Vec::with_capacity(args.runs);
            let mut bytes = 0;
            for _ in 0..args.runs {
                let (took, read) = replay(gateway.addr, path, &ids).await?;
                times.push(u64::try_from(took.as_nanos())?);
                bytes = read;
            }
            times.sort_unstable();
            let p50 = percentile_ms(&times, 0.5);
            let row = Row {
                endpoint,
                page,
                backlog: args.backlog,
                runs: args.runs,
                min_ms: percentile_ms(&times, 0.0),
                p50_ms: p50,
                p90_ms: percentile_ms(&times, 0.9),
                max_ms: percentile_ms(&times, 1.0),
                events_per_second: p50.map_or(0.0, |p| args.backlog as f64 / (p / 1000.0)),
                bytes,
            };
            eprintln!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |",
                row.endpoint,
                row.page,
                row.backlog,
                row.runs,
                ms(row.min_ms),
                ms(row.p50_ms),
                ms(row.p90_ms),
                ms(row.max_ms),
                row.events_per_second,
                row.bytes
            );
            rows.push(row);
        }
        gateway.kill().await?;
    }
    if let Some(path) = &args.out {
        let report = json!({
            "machine": { "cores": std::thread::available_parallelism().map_or(0, usize::from), "cpu": cpu_model() },
            "rows": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

fn body(seq: u64) -> Object {
    let mut body = Object::new();
    body.insert("seq".into(), json!(seq));
    body.insert("name".into(), json!(format!("record {seq}")));
    body
}

/// Opens `path` on `gateway` and reads until the last of `ids` has arrived; the time from
/// before connecting, and the bytes read. Fails unless exactly `ids` arrived, in order.
async fn replay(
    gateway: SocketAddr,
    path: &str,
    ids: &[EventId],
) -> anyhow::Result<(Duration, u64)> {
    let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    let mut conn = tokio::time::timeout(
        DEADLINE,
        Connection::open(0, 0, gateway, path, Some(source)),
    )
    .await
    .context("connect timed out")??;
    let mut pending = std::mem::take(&mut conn.leftover);
    let mut buf = vec![0_u8; READ_BUFFER];
    let (mut next, mut bytes, mut wrong) = (0_usize, 0_u64, None);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        bytes += pending.len() as u64;
        let mut on_event = |event: SseEvent<'_>| {
            if event.data.is_empty() {
                return; // the position frame of a fresh stream has no data
            }
            let id = event.id.and_then(|id| std::str::from_utf8(id).ok());
            let expected = ids.get(next);
            let matches = match (id, expected) {
                // A cursor ends with the topic's position.
                (Some(id), Some(want)) => id.rsplit('.').next() == Some(want.to_string().as_str()),
                _ => false,
            };
            if matches {
                next += 1;
            } else if wrong.is_none() {
                wrong = Some(format!(
                    "event {next}: got id {id:?}, expected {expected:?}"
                ));
            }
        };
        conn.reader.feed(&pending, &mut on_event)?;
        if let Some(wrong) = wrong {
            bail!("{path}: {wrong}");
        }
        if next == ids.len() {
            return Ok((started.elapsed(), bytes));
        }
        let n = tokio::time::timeout_at(deadline, conn.stream.read(&mut buf))
            .await
            .with_context(|| format!("{path}: {next} of {} events in {DEADLINE:?}", ids.len()))??;
        if n == 0 {
            bail!("{path}: closed after {next} of {} events", ids.len());
        }
        pending.clear();
        pending.extend_from_slice(&buf[..n]);
    }
}
