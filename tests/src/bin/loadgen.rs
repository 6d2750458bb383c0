//! The load generator: many SSE clients on real gateway processes, a publisher at a fixed
//! rate, and what it cost.
//!
//! ```text
//! loadgen [--clients 1000,5000,15000] [--rate 20] [--seconds 10] [--gateways 2]
//!         [--workers 4] [--out results.json] [--plot results.svg]
//! ```
//!
//! It starts one `redis-server` and `--gateways` release `gateway` processes (Redis mode),
//! then for each client count (on fresh gateways): spawns `--workers` worker processes (this binary, `worker`
//! subcommand; a process may hold at most 20,000 open files here), each connecting its share
//! of change streams from its own 127.0.0.x source address, round-robin over the gateways;
//! measures the gateways' RSS before and after (KiB per idle connection); publishes
//! `--rate` creates per second for `--seconds` through the publisher library, each body
//! carrying its publish time; and collects from the workers, per second, the events
//! delivered and, at the end, a latency histogram, bytes, errors and whether every client
//! got every event exactly once in order. Results: a table on stdout, JSON (`--out`) and an
//! SVG plot of latency and throughput against connections (`--plot`).
//!
//! Workers talk to the parent with JSON lines on stdout; the parent tells them the number
//! of events to expect on stdin.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use proto::{EventId, Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::{Value, json};
use system_tests::RedisServer;
use system_tests::load::{
    Connection, GatewayProcess, READ_BUFFER, SseEvent, cpu_model, cpu_seconds, data_u64,
    gateway_binary, rss_kib, unix_nanos,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// The collection every client follows.
const TOPIC: &str = "Load";
const STREAM_PATH: &str = "/api/Load/change-stream?_format=event-stream";
/// Connections a worker opens at once.
const CONNECT_CONCURRENCY: usize = 128;
/// Longest wait for a step's clients to connect, and for the last events to arrive.
const DEADLINE: Duration = Duration::from_secs(180);

#[derive(Debug, Parser)]
#[command(
    about = "SSE load: connections, deliveries/s, publish->deliver latency, RSS per connection"
)]
struct Args {
    #[command(subcommand)]
    worker: Option<WorkerCommand>,
    /// Client counts to measure, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    clients: Vec<usize>,
    /// Creates published per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Gateway processes.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Client processes (each from its own 127.0.0.x address).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Write an SVG plot of latency and throughput against connections here.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Internal: one client process.
    Worker {
        #[arg(long, value_delimiter = ',')]
        gateways: Vec<SocketAddr>,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        source: Ipv4Addr,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(WorkerCommand::Worker {
        gateways,
        clients,
        source,
    }) = args.worker
    {
        // One thread per worker: the parent runs several, each on its own address.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker(gateways, clients, IpAddr::V4(source)));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(parent(args))
}

// ---------------------------------------------------------------------------------------
// Latency histogram: microseconds rounded to 3 significant digits (error <= 0.5%).

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: BTreeMap<u64, u64>,
}

impl Histogram {
    fn bucket(micros: u64) -> u64 {
        let mut scale = 1;
        let mut v = micros;
        while v >= 1000 {
            v /= 10;
            scale *= 10;
        }
        v * scale
    }

    fn record(&mut self, nanos: u64) {
        *self.counts.entry(Self::bucket(nanos / 1000)).or_default() += 1;
    }

    fn merge(&mut self, pairs: &[(u64, u64)]) {
        for &(bucket, n) in pairs {
            *self.counts.entry(bucket).or_default() += n;
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The value (ms) at quantile `q` (nearest rank).
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        let rank = ((total.checked_sub(1)? as f64) * q).round() as u64;
        let mut seen = 0;
        for (&bucket, &n) in &self.counts {
            seen += n;
            if seen > rank {
                return Some(bucket as f64 / 1000.0);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// Worker process

/// What a worker's clients share (one thread: the lock is never contended).
#[derive(Debug, Default)]
struct Tally {
    latency: Histogram,
    events: u64,
    bytes: u64,
    errors: u64,
    /// Clients whose ids went backwards or repeated.
    disordered: u64,
    /// Events per client, to check completeness.
    per_client: Vec<u64>,
    first_error: Option<String>,
}

async fn worker(gateways: Vec<SocketAddr>, clients: usize, source: IpAddr) -> anyhow::Result<()> {
    let tally = Arc::new(Mutex::new(Tally {
        per_client: vec![0; clients],
        ..Tally::default()
    }));
    let mut stdout = tokio::io::stdout();
    let connected: Vec<Connection> = tokio::time::timeout(
        DEADLINE,
        futures::stream::iter(0..clients)
            .map(|i| {
                let gateway = i % gateways.len();
                Connection::open(i, gateway, gateways[gateway], STREAM_PATH, Some(source))
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await
    .context("connect deadline")?
    .into_iter()
    .filter_map(|c| match c {
        Ok(c) => Some(c),
        Err(e) => {
            let mut t = tally
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.errors += 1;
            t.first_error
                .get_or_insert_with(|| format!("connect: {e:#}"));
            None
        }
    })
    .collect();
    let held = connected.len();
    for conn in connected {
        tokio::spawn(follow(conn, Arc::clone(&tally)));
    }
    line(&mut stdout, &json!({ "connected": held })).await?;

    // Progress every second until the parent says how many events to expect.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let expected: u64 = loop {
        tokio::select! {
            _ = tick.tick() => {
                let events = lock(&tally).events;
                line(&mut stdout, &json!({ "events": events })).await?;
            }
            text = stdin.next_line() => {
                let text = text?.context("parent closed stdin")?;
                break text.trim().parse().context("expected event count")?;
            }
        }
    };
    // Wait for every client to have every event (or the deadline).
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        tick.tick().await;
        let t = lock(&tally);
        let done = t.per_client.iter().filter(|&&n| n >= expected).count();
        if done + usize::try_from(t.errors)? >= clients {
            break;
        }
    }
    let report = {
        let t = lock(&tally);
        let complete = t.per_client.iter().filter(|&&n| n == expected).count();
        json!({
            "done": {
                "clients": held,
                "complete": complete,
                "events": t.events,
                "bytes": t.bytes,
                "errors": t.errors,
                "disordered": t.disordered,
                "first_error": t.first_error,
                "latency": t.latency.counts.iter().map(|(b, n)| [*b, *n]).collect::<Vec<_>>(),
            }
        })
    };
    line(&mut stdout, &report).await?;
    Ok(())
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn line(out: &mut tokio::io::Stdout, value: &Value) -> anyhow::Result<()> {
    out.write_all(format!("{value}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one client's stream, recording every event's latency, in one read per wake-up.
async fn follow(mut conn: Connection, tally: Arc<Mutex<Tally>>) {
    let mut buf = vec![0_u8; READ_BUFFER];
    let mut pending = std::mem::take(&mut conn.leftover);
    let mut last = EventId::ZERO;
    loop {
        let arrived = unix_nanos();
        {
            let mut t = lock(&tally);
            t.bytes += pending.len() as u64;
            let mut on_event = |event: SseEvent<'_>| {
                let id = event
                    .id
                    .and_then(|id| std::str::from_utf8(id).ok())
                    .and_then(|id| EventId::parse(id).ok());
                match (id, data_u64(event.data, b"t")) {
                    (Some(id), Some(sent)) => {
                        if id <= last {
                            t.disordered += 1;
                        }
                        last = id;
                        t.latency.record(arrived.saturating_sub(sent));
                        t.events += 1;
                        t.per_client[conn.index] += 1;
                    }
                    _ => t.errors += 1,
                }
            };
            if let Err(e) = conn.reader.feed(&pending, &mut on_event) {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("{e:#}"));
                return;
            }
        }
        match conn.stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                pending.clear();
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                let mut t = lock(&tally);
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("read: {e}"));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parent process

/// One step's results.
#[derive(Debug, serde::Serialize)]
struct Step {
    clients: usize,
    held: u64,
    complete: u64,
    published: u64,
    deliveries: u64,
    deliveries_per_second: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    max_ms: Option<f64>,
    bytes: u64,
    errors: u64,
    disordered: u64,
    gateway_rss_idle_kib: u64,
    gateway_rss_connected_kib: u64,
    gateway_kib_per_connection: f64,
    gateway_cpu_seconds: f64,
}

async fn parent(args: Args) -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let binary = gateway_binary();
    let limit = args.clients.iter().max().copied().unwrap_or(0) + 1000;
    let max_connections = limit.to_string();
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = Topic::new(TOPIC)?;
    // Warm up: load the script, open the connection.
    store.create(&topic, body(unix_nanos(), 0)).await?;
    eprintln!(
        "loadgen: {} gateway(s), {} worker(s), {} events/s for {} s per step; {} cores ({})",
        args.gateways,
        args.workers,
        args.rate,
        args.seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );
    let mut steps = Vec::new();
    for &clients in &args.clients {
        // Fresh gateways per step: memory a previous step's clients left in the
        // allocator's free lists would make the next step's per-connection figure too low.
        let mut gateways = Vec::new();
        for _ in 0..args.gateways {
            let settings = [("GATEWAY_MAX_CONNECTIONS", max_connections.as_str())];
            gateways.push(GatewayProcess::start(&binary, &redis.url(), &settings).await?);
        }
        let addrs: Vec<String> = gateways.iter().map(|g| g.addr.to_string()).collect();
        let step = run_step(&args, clients, &addrs, &gateways, &store, &topic).await?;
        print_step(&step);
        steps.push(step);
        for gateway in gateways {
            gateway.kill().await?;
        }
    }
    let report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, usize::from), "cpu": cpu_model() },
        "rate": args.rate, "seconds": args.seconds, "gateways": args.gateways, "workers": args.workers,
        "steps": steps,
    });
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot(&steps))?;
    }
    Ok(())
}

fn body(t: u64, seq: u64) -> Object {
    let mut body = Object::new();
    body.insert("t".into(), json!(t));
    body.insert("seq".into(), json!(seq));
    body
}

fn total_rss(gateways: &[GatewayProcess]) -> u64 {
    gateways.iter().filter_map(|g| rss_kib(g.pid)).sum()
}

fn total_cpu(gateways: &[GatewayProcess]) -> f64 {
    gateways
        .iter()
        .filter_map(|g| cpu_seconds(&g.pid.to_string()))
        .sum()
}

async fn run_step(
    args: &Args,
    clients: usize,
    addrs: &[String],
    gateways: &[GatewayProcess],
    store: &RedisStore,
    topic: &Topic,
) -> anyhow::Result<Step> {
    let rss_idle = total_rss(gateways);
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for w in 0..args.workers {
        let share = clients / args.workers + usize::from(w < clients % args.workers);
        let source = Ipv4Addr::new(127, 0, 0, u8::try_from(10 + w)?);
        let mut child = Command::new(&exe)
            .args(["worker", "--gateways", &addrs.join(","), "--clients"])
            .arg(share.to_string())
            .arg("--source")
            .arg(source.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        workers.push((child, lines));
    }
    // Connected?
    let mut held = 0;
    for (_, lines) in &mut workers {
        let msg = next_message(lines).await?;
        held += msg["connected"].as_u64().context("connected line")?;
    }
    let rss_connected = total_rss(gateways);
    eprintln!(
        "{clients} clients: {held} connected; gateways' RSS {rss_idle} -> {rss_connected} KiB"
    );

    // Publish at the rate, reading progress meanwhile.
    let events = u64::from(args.rate) * u64::from(args.seconds);
    let cpu_before = total_cpu(gateways);
    let started = Instant::now();
    let publishing = {
        let (store, topic, rate) = (store.clone(), topic.clone(), args.rate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            for seq in 1..=events {
                tick.tick().await;
                store.create(&topic, body(unix_nanos(), seq)).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while !publishing.is_finished() {
        progress.tick().await;
        let mut delivered = 0;
        for (_, lines) in &mut workers {
            // Each worker writes one progress line a second.
            if let Ok(Ok(msg)) =
                tokio::time::timeout(Duration::from_millis(1500), next_message(lines)).await
            {
                delivered += msg["events"].as_u64().unwrap_or(0);
            }
        }
        eprintln!(
            "  {:>4.1} s: {delivered} events delivered",
            started.elapsed().as_secs_f64()
        );
    }
    publishing.await??;
    let published_in = started.elapsed();

    // Expect every event (plus the warm-up ones before the step are not seen: clients
    // connected after them).
    let mut latency = Histogram::default();
    let (mut complete, mut deliveries, mut bytes, mut errors, mut disordered) = (0, 0, 0, 0, 0);
    for (child, lines) in &mut workers {
        let stdin = child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{events}\n").as_bytes()).await?;
        stdin.flush().await?;
        let done = loop {
            let msg = next_message(lines).await?;
            if let Some(done) = msg.get("done") {
                break done.clone();
            }
        };
        complete += done["complete"].as_u64().unwrap_or(0);
        deliveries += done["events"].as_u64().unwrap_or(0);
        bytes += done["bytes"].as_u64().unwrap_or(0);
        errors += done["errors"].as_u64().unwrap_or(0);
        disordered += done["disordered"].as_u64().unwrap_or(0);
        if let Some(e) = done["first_error"].as_str() {
            eprintln!("  worker error: {e}");
        }
        let pairs: Vec<(u64, u64)> = serde_json::from_value(done["latency"].clone())?;
        latency.merge(&pairs);
    }
    let cpu = total_cpu(gateways) - cpu_before;
    for (mut child, _) in workers {
        let _ = child.kill().await;
    }
    Ok(Step {
        clients,
        held,
        complete,
        published: events,
        deliveries,
        deliveries_per_second: deliveries as f64 / published_in.as_secs_f64(),
        p50_ms: latency.quantile_ms(0.5),
        p99_ms: latency.quantile_ms(0.99),
        p999_ms: latency.quantile_ms(0.999),
        max_ms: latency.quantile_ms(1.0),
        bytes,
        errors,
        disordered,
        gateway_rss_idle_kib: rss_idle,
        gateway_rss_connected_kib: rss_connected,
        gateway_kib_per_connection: rss_connected.saturating_sub(rss_idle) as f64
            / held.max(1) as f64,
        gateway_cpu_seconds: cpu,
    })
}

async fn next_message(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<Value> {
    let text = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .context("worker silent")??
        .context("worker exited")?;
    Ok(serde_json::from_str(&text)?)
}

fn print_step(s: &Step) {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "| {} | {} | {}/{} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.2} | {} |",
        s.clients,
        s.held,
        s.complete,
        s.held,
        s.deliveries,
        s.deliveries_per_second,
        ms(s.p50_ms),
        ms(s.p99_ms),
        ms(s.p999_ms),
        ms(s.max_ms),
        s.gateway_kib_per_connection,
        s.gateway_cpu_seconds,
        s.errors + s.disordered,
    );
}

/// Latency (p50, p99; left axis, ms) and deliveries/s (right axis) against connections.
fn plot(steps: &[Step]) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 60.0, 70.0, 20.0, 40.0);
    let x = |i: usize| left + (w - left - right) * (i as f64 + 0.5) / steps.len().max(1) as f64;
    let max_ms = steps
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(1.0_f64, f64::max);
    let max_rate = steps
        .iter()
        .map(|s| s.deliveries_per_second)
        .fold(1.0_f64, f64::max);
    let y_ms = |v: f64| top + (h - top - bottom) * (1.0 - v / max_ms);
    let y_rate = |v: f64| top + (h - top - bottom) * (1.0 - v / max_rate);
    let series = |f: &dyn Fn(&Step) -> Option<f64>, y: &dyn Fn(f64) -> f64| {
        steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| f(s).map(|v| format!("{:.1},{:.1}", x(i), y(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="14">p50 / p99 publish->deliver (ms, left) and deliveries/s (right) by connections</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<text x="4" y="{top}">{max_ms:.1} ms</text><text x="{}" y="{top}">{max_rate:.0}/s</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#d62728" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#2ca02c" stroke-width="2" stroke-dasharray="6 3" points="{}"/>
"##,
        h - bottom,
        w - right,
        h - bottom,
        w - right + 4.0,
        series(&|s| s.p50_ms, &y_ms),
        series(&|s| s.p99_ms, &y_ms),
        series(&|s| Some(s.deliveries_per_second), &y_rate),
    );
    for (i, s) in steps.iter().enumerate() {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(i),
            h - bottom + 16.0,
            s.clients
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{}\" fill=\"#1f77b4\">p50</text><text x=\"{}\" y=\"{}\" fill=\"#d62728\">p99</text><text x=\"{}\" y=\"{}\" fill=\"#2ca02c\">deliveries/s</text>\n</svg>\n",
        h - 6.0,
        left + 40.0,
        h - 6.0,
        left + 80.0,
        h - 6.0
    ));
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_keeps_three_digits_and_ranks() {
        assert_eq!(Histogram::bucket(999), 999);
        assert_eq!(Histogram::bucket(12_345), 12_300);
        let mut h = Histogram::default();
        for ms in 1..=100_u64 {
            h.record(ms * 1_000_000);
        }
        assert_eq!(h.quantile_ms(0.5), Some(51.0));
        assert_eq!(h.quantile_ms(1.0), Some(100.0));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }
}
