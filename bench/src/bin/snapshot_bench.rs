//! In-band snapshot timing and memory: `GET /api/{topic}/change-stream?snapshot=true` on a
//! topic of 10,000 and 100,000 records, for one client at a time, for a herd taking it at
//! once and for clients that read slowly; beside the REST find (`GET /api/{topic}`) of
//! the same records from a publisher process.
//!
//! ```text
//! snapshot_bench [--records 10000,100000] [--runs 10] [--pages 500] [--herd 100]
//!                [--slow 100] [--slow-read 16384] [--slow-pause-ms 20]
//!                [--find-runs 10] [--find-herd 0] [--out results.json]
//! ```
//!
//! Starts one `redis-server` and fills one topic per record count through the publisher
//! library (creates, many in flight; not measured). Then, per record count and snapshot
//! page size (`GATEWAY_SNAPSHOT_PAGE`, one release `gateway` process each, Redis mode):
//!
//! - **one client**: `--runs` times, a fresh connection read as fast as it comes, timed
//!   from before `connect` to the arrival of the page with `"last":true`;
//! - **a herd**: `--herd` clients connect at once to a fresh gateway; the time until the
//!   last of them has its last page, and the gateway's RSS: before (after a warm-up
//!   snapshot of a one-record topic), the peak of `VmRSS` sampled every 10 ms during the
//!   herd and the kernel's own peak (`VmHWM`);
//! - **slow readers** (default page only): `--slow` clients on a fresh gateway, each
//!   reading `--slow-read` bytes every `--slow-pause-ms`, with the same RSS readings: the
//!   gateway reads a page from Redis only when the client has taken the previous one.
//!
//! Every client checks its snapshot: every record id `1..=N` arrives, no other, and nothing
//! but `event: snapshot` pages up to the last, which carries an `id:`. A record that
//! arrives twice is counted and reported, not an error: the gateway allows it for a record
//! changed while the snapshot is read (nothing writes here) and while `HSCAN` meets a hash
//! being resized (`gateway/src/client/snapshot.rs`).
//!
//! The find: `--find-runs` sequential `GET /api/{topic}` on a release `publisher` process
//! (fresh per record count), timed to the end of the body, with its RSS; `--find-herd`
//! concurrent finds on another fresh publisher (off by default: a publisher holds a whole
//! answer per request).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bench::load::{
    Connection, GatewayProcess, READ_BUFFER, SseEvent, cpu_model, cpu_seconds, find,
    gateway_binary, mib, ms, peak_rss_kib, percentile_ms, publisher_binary, rss_kib,
};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use proto::{Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use serde_json::json;
use system_tests::RedisServer;
use tokio::io::AsyncReadExt;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Longest wait for one snapshot or find, and for a herd's.
const DEADLINE: Duration = Duration::from_secs(180);
/// Creates in flight while a topic is filled.
const FILL_IN_FLIGHT: usize = 256;
/// How often the RSS sampler reads `/proc/<pid>/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// A topic of one record, snapshotted once before a herd so the gateway's read
/// connection and script are in place before its RSS is read.
const WARM_TOPIC: &str = "SnapWarm";
/// Text that brings a record to ~150 bytes of JSON.
const NOTE: &str = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod";

#[derive(Debug, Parser)]
#[command(about = "In-band snapshots (snapshot=true): time to the last page, memory under a herd")]
struct Args {
    /// Record counts, one topic each.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    records: Vec<u64>,
    /// Snapshots timed one at a time per record count and page size.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Snapshot page sizes (`GATEWAY_SNAPSHOT_PAGE`), one gateway each.
    #[arg(long, value_delimiter = ',', default_value = "500")]
    pages: Vec<usize>,
    /// Clients taking the snapshot at once (0: no herd).
    #[arg(long, default_value_t = 100)]
    herd: usize,
    /// Slow clients taking the snapshot at once, default page only (0: none).
    #[arg(long, default_value_t = 100)]
    slow: usize,
    /// Bytes a slow client reads at a time.
    #[arg(long, default_value_t = 16 * 1024)]
    slow_read: usize,
    /// Milliseconds a slow client waits between reads.
    #[arg(long, default_value_t = 20)]
    slow_pause_ms: u64,
    /// Sequential REST finds (`GET /api/{topic}`) per record count (0: none).
    #[arg(long, default_value_t = 10)]
    find_runs: usize,
    /// Concurrent REST finds on a fresh publisher (0: none).
    #[arg(long, default_value_t = 0)]
    find_herd: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// One snapshot (or find) as a client took it.
#[derive(Clone, Copy, Debug, Default)]
struct Taken {
    /// From before `connect` to the last page (the end of a find's body).
    took: Duration,
    /// From before `connect` to the first page.
    first_page: Duration,
    pages: u64,
    /// Distinct records received: always the topic's count (checked).
    records: u64,
    /// Records received more than once.
    duplicates: u64,
    bytes: u64,
}

#[derive(Debug, serde::Serialize)]
struct SingleRow {
    what: &'static str,
    records: u64,
    page: Option<usize>,
    runs: usize,
    first_page_p50_ms: Option<f64>,
    min_ms: Option<f64>,
    p50_ms: Option<f64>,
    max_ms: Option<f64>,
    records_per_second: f64,
    pages: u64,
    bytes: u64,
    duplicates: u64,
    /// The gateway's (a find: the publisher's) CPU per run.
    server_cpu_ms_per_run: f64,
    redis_cpu_ms_per_run: f64,
}

/// Many clients at once on a fresh process: time, memory, CPU.
#[derive(Debug, serde::Serialize)]
struct HerdRow {
    what: &'static str,
    records: u64,
    page: Option<usize>,
    clients: usize,
    /// From the first connect to the last client done.
    all_ms: f64,
    client_p50_ms: Option<f64>,
    client_max_ms: Option<f64>,
    rss_before_kib: u64,
    /// Highest `VmRSS` seen by the 10 ms sampler.
    rss_peak_sampled_kib: u64,
    /// `VmHWM`: the kernel's peak RSS of the process.
    rss_peak_kib: u64,
    rss_after_kib: u64,
    /// (peak - before) / clients.
    kib_per_client: f64,
    server_cpu_seconds: f64,
    redis_cpu_seconds: f64,
    /// This process: the clients (and its runtime).
    clients_cpu_seconds: f64,
    duplicates: u64,
    bytes: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let redis = RedisServer::start().await?;
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let warm = Topic::new(WARM_TOPIC)?;
    store.create(&warm, record(1)).await?;
    let mut topics = Vec::new();
    for &n in &args.records {
        let topic = Topic::new(&format!("Snap{n}"))?;
        let filled = Instant::now();
        futures::stream::iter(1..=n)
            .map(|seq| store.create(&topic, record(seq)))
            .buffer_unordered(FILL_IN_FLIGHT)
            .try_for_each(|_| async { Ok(()) })
            .await?;
        eprintln!(
            "snapshot_bench: {n} records in {} (~{} bytes each) filled in {:.2} s",
            topic,
            record_json(n / 2).len(),
            filled.elapsed().as_secs_f64()
        );
        topics.push((n, topic));
    }
    eprintln!(
        "snapshot_bench: {} cores ({})",
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );

    let gateway = gateway_binary();
    let redis_pid = redis.pid().context("redis-server has no pid")?;
    let default_page = args
        .pages
        .contains(&500)
        .then_some(500)
        .or(args.pages.first().copied());
    let (mut singles, mut herds) = (Vec::new(), Vec::new());
    for (n, topic) in &topics {
        let n = *n;
        for &page in &args.pages {
            let page_setting = page.to_string();
            let settings = [("GATEWAY_SNAPSHOT_PAGE", page_setting.as_str())];
            let path = format!("/api/{topic}/change-stream?_format=event-stream&snapshot=true");

            if args.runs > 0 {
                let process = GatewayProcess::start(&gateway, &redis.url(), &settings).await?;
                // One untimed run warms the connection, the script and the page cache.
                snapshot(process.addr, &path, n, None).await?;
                let cpu = (cpu_of(process.pid), cpu_of(redis_pid));
                let mut taken = Vec::with_capacity(args.runs);
                for _ in 0..args.runs {
                    taken.push(snapshot(process.addr, &path, n, None).await?);
                }
                let cpu_ms =
                    |before: f64, pid: u32| (cpu_of(pid) - before) * 1e3 / args.runs as f64;
                let row = single_row(
                    "snapshot",
                    n,
                    Some(page),
                    &taken,
                    cpu_ms(cpu.0, process.pid),
                    cpu_ms(cpu.1, redis_pid),
                );
                eprintln!("{}", single_line(&row));
                singles.push(row);
                report_log(process.kill().await?);
            }
            if args.herd > 0 {
                let process = GatewayProcess::start(&gateway, &redis.url(), &settings).await?;
                let warm_path =
                    format!("/api/{warm}/change-stream?_format=event-stream&snapshot=true");
                snapshot(process.addr, &warm_path, 1, None).await?;
                let addr = process.addr;
                let row = herd(
                    "snapshot",
                    n,
                    Some(page),
                    args.herd,
                    process.pid,
                    redis_pid,
                    || {
                        let path = path.clone();
                        async move { snapshot(addr, &path, n, None).await }
                    },
                )
                .await?;
                eprintln!("{}", herd_line(&row));
                herds.push(row);
                report_log(process.kill().await?);
            }
            if args.slow > 0 && Some(page) == default_page {
                let process = GatewayProcess::start(&gateway, &redis.url(), &settings).await?;
                let warm_path =
                    format!("/api/{warm}/change-stream?_format=event-stream&snapshot=true");
                snapshot(process.addr, &warm_path, 1, None).await?;
                let addr = process.addr;
                let pace = Pace {
                    bytes: args.slow_read,
                    pause: Duration::from_millis(args.slow_pause_ms),
                };
                let row = herd(
                    "slow snapshot",
                    n,
                    Some(page),
                    args.slow,
                    process.pid,
                    redis_pid,
                    || {
                        let path = path.clone();
                        async move { snapshot(addr, &path, n, Some(pace)).await }
                    },
                )
                .await?;
                eprintln!("{}", herd_line(&row));
                herds.push(row);
                report_log(process.kill().await?);
            }
        }

        // The REST find of the same records, from a publisher process.
        let http = reqwest::Client::builder().timeout(DEADLINE).build()?;
        let publisher = publisher_binary();
        if args.find_runs > 0 {
            let process = GatewayProcess::publisher(&publisher, &redis.url(), &[]).await?;
            let url = format!("http://{}/api/{topic}", process.addr);
            find_all(&http, &format!("http://{}/api/{warm}", process.addr), 1).await?;
            let before = rss_kib(process.pid).unwrap_or(0);
            let cpu = (cpu_of(process.pid), cpu_of(redis_pid));
            let mut taken = Vec::with_capacity(args.find_runs);
            for _ in 0..args.find_runs {
                taken.push(find_all(&http, &url, n).await?);
            }
            let cpu_ms =
                |before: f64, pid: u32| (cpu_of(pid) - before) * 1e3 / args.find_runs as f64;
            let row = single_row(
                "find",
                n,
                None,
                &taken,
                cpu_ms(cpu.0, process.pid),
                cpu_ms(cpu.1, redis_pid),
            );
            eprintln!("{}", single_line(&row));
            singles.push(row);
            let peak = peak_rss_kib(process.pid).unwrap_or(0);
            eprintln!(
                "  find, one at a time: publisher RSS {} MiB before, peak {} MiB",
                mib(Some(before)),
                mib(Some(peak))
            );
            report_log(process.kill().await?);
        }
        if args.find_herd > 0 {
            let process = GatewayProcess::publisher(&publisher, &redis.url(), &[]).await?;
            let url = format!("http://{}/api/{topic}", process.addr);
            find_all(&http, &format!("http://{}/api/{warm}", process.addr), 1).await?;
            let row = herd(
                "find",
                n,
                None,
                args.find_herd,
                process.pid,
                redis_pid,
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move { find_all(&http, &url, n).await }
                },
            )
            .await?;
            eprintln!("{}", herd_line(&row));
            herds.push(row);
            report_log(process.kill().await?);
        }
    }

    println!(
        "\n| what | records | page | runs | first page p50 ms | min ms | p50 ms | max ms | records/s (p50) | pages | bytes | duplicates | server CPU ms/run | redis CPU ms/run |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in &singles {
        println!("{}", single_line(row));
    }
    println!(
        "\n| what | records | page | clients | all done ms | client p50 ms | client max ms | RSS before MiB | peak sampled MiB | peak (VmHWM) MiB | after MiB | KiB per client | server CPU s | redis CPU s | clients CPU s | duplicates |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in &herds {
        println!("{}", herd_line(row));
    }
    if let Some(path) = &args.out {
        let report = json!({
            "machine": { "cores": std::thread::available_parallelism().map_or(0, usize::from), "cpu": cpu_model() },
            "single": singles,
            "herds": herds,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

/// A record of ~150 bytes of JSON (the publisher appends `"id":N`).
fn record(seq: u64) -> Object {
    let mut body = Object::new();
    body.insert("seq".into(), json!(seq));
    body.insert("name".into(), json!(format!("record {seq}")));
    let status = if seq.is_multiple_of(2) {
        "open"
    } else {
        "done"
    };
    body.insert("status".into(), json!(status));
    body.insert("owner".into(), json!(format!("user-{}", seq % 100)));
    body.insert("note".into(), json!(NOTE));
    body
}

fn record_json(seq: u64) -> String {
    let mut body = record(seq);
    body.insert("id".into(), json!(seq));
    serde_json::Value::Object(body).to_string()
}

fn cpu_of(pid: u32) -> f64 {
    cpu_seconds(&pid.to_string()).unwrap_or(0.0)
}

fn report_log(log: bench::load::LogSummary) {
    if log.warnings + log.errors > 0 {
        eprintln!(
            "  {} warnings, {} errors; first: {:?}",
            log.warnings,
            log.errors,
            log.samples.first()
        );
    }
}

/// How a slow client reads.
#[derive(Clone, Copy, Debug)]
struct Pace {
    bytes: usize,
    pause: Duration,
}

/// Which record ids a client got: each of `1..=n` once.
struct Seen {
    bits: Vec<u64>,
    n: u64,
    distinct: u64,
    duplicates: u64,
}

impl Seen {
    fn new(n: u64) -> Self {
        Self {
            bits: vec![0; usize::try_from(n / 64 + 1).unwrap_or(0)],
            n,
            distinct: 0,
            duplicates: 0,
        }
    }

    /// Takes every `"id":N` in `json` (the records' ids: no other key of theirs is `id`).
    fn take(&mut self, json: &[u8]) -> anyhow::Result<()> {
        const KEY: &[u8] = b"\"id\":";
        let mut rest = json;
        while let Some(at) = find(rest, KEY) {
            rest = &rest[at + KEY.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let id: u64 = std::str::from_utf8(&rest[..digits])?
                .parse()
                .with_context(|| {
                    format!(
                        "an id that is not a number: {:?}",
                        String::from_utf8_lossy(&rest[..digits.max(16).min(rest.len())])
                    )
                })?;
            ensure!(
                (1..=self.n).contains(&id),
                "id {id} is not one of the topic's 1..={}",
                self.n
            );
            let (word, bit) = (usize::try_from(id / 64)?, id % 64);
            if self.bits[word] & (1 << bit) != 0 {
                self.duplicates += 1;
            } else {
                self.bits[word] |= 1 << bit;
                self.distinct += 1;
            }
            rest = &rest[digits..];
        }
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            self.distinct == self.n,
            "{} of {} records arrived",
            self.distinct,
            self.n
        );
        Ok(())
    }
}

/// Opens a snapshot stream at `path` and reads it to the page with `"last":true`; fails
/// unless exactly the ids `1..=n` arrived (duplicates are counted), and nothing but pages.
async fn snapshot(
    gateway: SocketAddr,
    path: &str,
    n: u64,
    pace: Option<Pace>,
) -> anyhow::Result<Taken> {
    let source = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    let mut conn = tokio::time::timeout(
        DEADLINE,
        Connection::open(0, 0, gateway, path, Some(source)),
    )
    .await
    .context("connect timed out")??;
    let mut pending = std::mem::take(&mut conn.leftover);
    let mut buf = vec![0_u8; pace.map_or(READ_BUFFER, |p| p.bytes)];
    let mut tick = pace.map(|p| {
        let mut tick = tokio::time::interval(p.pause);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    let mut seen = Seen::new(n);
    let mut taken = Taken::default();
    let mut last = false;
    let mut wrong: Option<anyhow::Error> = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        taken.bytes += pending.len() as u64;
        let mut on_event = |event: SseEvent<'_>| {
            if wrong.is_some() || event.data.is_empty() {
                return;
            }
            if event.event != b"snapshot" || last {
                wrong = Some(anyhow::anyhow!(
                    "{} event after {} pages: {}",
                    String::from_utf8_lossy(event.event),
                    taken.pages,
                    String::from_utf8_lossy(&event.data[..event.data.len().min(120)])
                ));
                return;
            }
            if taken.pages == 0 {
                taken.first_page = started.elapsed();
            }
            taken.pages += 1;
            if let Err(e) = seen.take(event.data) {
                wrong = Some(e);
            }
            last = event.data.ends_with(b"\"last\":true}");
            if last && event.id.is_none() {
                wrong = Some(anyhow::anyhow!("the last page has no id"));
            }
        };
        conn.reader.feed(&pending, &mut on_event)?;
        if let Some(wrong) = wrong {
            bail!("{path}: {wrong:#}");
        }
        if last {
            taken.took = started.elapsed();
            seen.check().with_context(|| path.to_owned())?;
            taken.records = seen.distinct;
            taken.duplicates = seen.duplicates;
            return Ok(taken);
        }
        if let Some(tick) = &mut tick {
            tick.tick().await;
        }
        let read = tokio::time::timeout_at(deadline, conn.stream.read(&mut buf))
            .await
            .with_context(|| format!("{path}: {} pages in {DEADLINE:?}, no last", taken.pages))??;
        if read == 0 {
            bail!("{path}: closed after {} pages, none last", taken.pages);
        }
        pending.clear();
        pending.extend_from_slice(&buf[..read]);
    }
}

/// `GET url` (a REST find), read to the end of its body; fails unless exactly the ids
/// `1..=n` came.
async fn find_all(http: &reqwest::Client, url: &str, n: u64) -> anyhow::Result<Taken> {
    let started = Instant::now();
    let response = http.get(url).send().await?.error_for_status()?;
    let first_page = started.elapsed();
    let body = response.bytes().await?;
    let took = started.elapsed();
    let mut seen = Seen::new(n);
    seen.take(&body)?;
    seen.check().with_context(|| url.to_owned())?;
    Ok(Taken {
        took,
        first_page,
        pages: 1,
        records: seen.distinct,
        duplicates: seen.duplicates,
        bytes: body.len() as u64,
    })
}

/// Samples a process's `VmRSS` every [`SAMPLE_EVERY`] until stopped.
struct RssSampler {
    stop: CancellationToken,
    /// The sampling task; returns the highest RSS it saw.
    task: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut peak = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return peak,
                        _ = tick.tick() => peak = peak.max(rss_kib(pid).unwrap_or(0)),
                    }
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.cancel();
        self.task.await.unwrap_or(0)
    }
}

/// Runs `clients` copies of `client` at once against the process `pid` (fresh: its
/// `VmHWM` is the herd's peak), sampling its RSS meanwhile.
async fn herd<F, Fut>(
    what: &'static str,
    records: u64,
    page: Option<usize>,
    clients: usize,
    pid: u32,
    redis_pid: u32,
    client: F,
) -> anyhow::Result<HerdRow>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Taken>> + Send + 'static,
{
    let before = rss_kib(pid).unwrap_or(0);
    let cpu = (cpu_of(pid), cpu_of(redis_pid));
    let ours = cpu_seconds("self").unwrap_or(0.0);
    let sampler = RssSampler::start(pid);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..clients {
        set.spawn(client());
    }
    let mut taken = Vec::with_capacity(clients);
    let joined = tokio::time::timeout(DEADLINE, async {
        while let Some(result) = set.join_next().await {
            taken.push(result??);
        }
        anyhow::Ok(())
    })
    .await;
    let all = started.elapsed();
    let sampled = sampler.stop().await;
    joined.context("herd deadline")??;
    let peak = peak_rss_kib(pid).unwrap_or(0).max(sampled);
    let mut times: Vec<u64> = taken.iter().map(|t| t.took.as_nanos() as u64).collect();
    times.sort_unstable();
    Ok(HerdRow {
        what,
        records,
        page,
        clients,
        all_ms: all.as_secs_f64() * 1e3,
        client_p50_ms: percentile_ms(&times, 0.5),
        client_max_ms: percentile_ms(&times, 1.0),
        rss_before_kib: before,
        rss_peak_sampled_kib: sampled,
        rss_peak_kib: peak,
        rss_after_kib: rss_kib(pid).unwrap_or(0),
        kib_per_client: peak.saturating_sub(before) as f64 / clients.max(1) as f64,
        server_cpu_seconds: cpu_of(pid) - cpu.0,
        redis_cpu_seconds: cpu_of(redis_pid) - cpu.1,
        clients_cpu_seconds: cpu_seconds("self").unwrap_or(0.0) - ours,
        duplicates: taken.iter().map(|t| t.duplicates).sum(),
        bytes: taken.iter().map(|t| t.bytes).sum(),
    })
}

fn single_row(
    what: &'static str,
    records: u64,
    page: Option<usize>,
    taken: &[Taken],
    server_ms: f64,
    redis_ms: f64,
) -> SingleRow {
    let sorted = |f: fn(&Taken) -> Duration| {
        let mut v: Vec<u64> = taken.iter().map(|t| f(t).as_nanos() as u64).collect();
        v.sort_unstable();
        v
    };
    let times = sorted(|t| t.took);
    let p50 = percentile_ms(&times, 0.5);
    SingleRow {
        what,
        records,
        page,
        runs: taken.len(),
        first_page_p50_ms: percentile_ms(&sorted(|t| t.first_page), 0.5),
        min_ms: percentile_ms(&times, 0.0),
        p50_ms: p50,
        max_ms: percentile_ms(&times, 1.0),
        records_per_second: p50.map_or(0.0, |p| records as f64 / (p / 1000.0)),
        pages: taken.last().map_or(0, |t| t.pages),
        bytes: taken.last().map_or(0, |t| t.bytes),
        duplicates: taken.iter().map(|t| t.duplicates).sum(),
        server_cpu_ms_per_run: server_ms,
        redis_cpu_ms_per_run: redis_ms,
    }
}

fn single_line(row: &SingleRow) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} |",
        row.what,
        row.records,
        row.page.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        row.runs,
        ms(row.first_page_p50_ms),
        ms(row.min_ms),
        ms(row.p50_ms),
        ms(row.max_ms),
        row.records_per_second,
        row.pages,
        row.bytes,
        row.duplicates,
        row.server_cpu_ms_per_run,
        row.redis_cpu_ms_per_run,
    )
}

fn herd_line(row: &HerdRow) -> String {
    format!(
        "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        row.what,
        row.records,
        row.page.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        row.clients,
        row.all_ms,
        ms(row.client_p50_ms),
        ms(row.client_max_ms),
        mib(Some(row.rss_before_kib)),
        mib(Some(row.rss_peak_sampled_kib)),
        mib(Some(row.rss_peak_kib)),
        mib(Some(row.rss_after_kib)),
        row.kib_per_client,
        row.server_cpu_seconds,
        row.redis_cpu_seconds,
        row.clients_cpu_seconds,
        row.duplicates,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_each_id_once_and_refuses_strangers() {
        let page = format!(
            r#"{{"records":[{},{},{}],"last":false}}"#,
            record_json(1),
            record_json(3),
            record_json(1)
        );
        let mut seen = Seen::new(3);
        seen.take(page.as_bytes()).unwrap();
        assert_eq!((seen.distinct, seen.duplicates), (2, 1));
        assert!(seen.check().is_err());
        seen.take(record_json(2).as_bytes()).unwrap();
        seen.check().unwrap();
        assert!(seen.take(record_json(4).as_bytes()).is_err());
        assert!(Seen::new(3).take(br#"{"id":"x"}"#).is_err());
    }
}
