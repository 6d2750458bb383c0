//! Publisher mutations per second against one local Redis, beside `redis-benchmark`'s
//! rate for the same Lua script.
//!
//! Starts its own `redis-server` (no persistence) and measures, each on an emptied Redis:
//! - `library`: `Store::create` through one shared (multiplexed) `RedisStore`;
//! - `http`: `POST /api/Bench` through a real publisher server, over reqwest;
//! - `raw`: `Store::publish` of a fixed change (no record write);
//! - `redis-benchmark`: `EVALSHA` of the publish script (`create_auto` and `publish`),
//!   plus `SET`, `XADD` and `PUBLISH` baselines.
//!
//! Every run is checked afterwards: Redis must have counted exactly one `XADD` per
//! mutation and no error replies, so a failing script cannot pass for a fast one
//! (`redis-benchmark` counts error replies as requests).
//!
//! ```text
//! publish_bench [--ops N] [--concurrency C] [--mode all|library|http|raw|redis-benchmark]
//! ```
//!
//! Load is bounded by C worker tasks, each with one operation in flight; nothing queues.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bench::load::cpu_model;
use proto::script::{ITEM_AUTO, ITEM_PUBLISH, WRITE_SCRIPT};
use proto::{Change, Object, RecordId, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::{Publisher, RedisServer};
use tokio::task::JoinSet;

const DEFAULT_OPS: usize = 100_000;
const DEFAULT_CONCURRENCY: usize = 64;
/// Untimed operations before each measured run: connects, loads the script into Redis's
/// cache, fills the HTTP connection pool.
const WARMUP_OPS: usize = 1_000;
/// The collection every mode writes to.
const TOPIC: &str = "Bench";
/// A record body for the `redis-benchmark` script runs, as long as the library's
/// `{"foo":"bar","n":i}` for a typical `i`.
const SCRIPT_BODY: &str = r#"{"foo":"bar","n":50000}"#;

/// Which paths to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    All,
    Library,
    Http,
    Raw,
    RedisBenchmark,
}

impl Mode {
    fn runs(self, mode: Self) -> bool {
        self == Self::All || self == mode
    }
}

/// Command-line flags.
#[derive(Debug, clap::Parser)]
#[command(about = "Publisher mutations/s beside redis-benchmark's rate for the same script")]
struct Args {
    /// Operations per mode.
    #[arg(long, default_value_t = DEFAULT_OPS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    ops: usize,
    /// Operations in flight.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    concurrency: usize,
    /// Which paths to measure.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
}

/// One line of the result table.
#[derive(Debug)]
struct Row {
    mode: String,
    ops: usize,
    /// Operations in flight: `64`, or `1x64` for one pipelining connection.
    concurrency: String,
    seconds: f64,
    rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// CPU time `redis-server` spent during the run (user + system), in seconds.
    redis_cpu: f64,
}

/// What [`drive`] measured.
#[derive(Debug)]
struct Measured {
    elapsed: Duration,
    /// Per-operation latencies, sorted.
    latencies: Vec<Duration>,
}

impl Measured {
    fn row(&self, mode: &str, concurrency: usize, redis_cpu: f64) -> Row {
        let ops = self.latencies.len();
        let seconds = self.elapsed.as_secs_f64();
        Row {
            mode: mode.to_owned(),
            ops,
            concurrency: concurrency.to_string(),
            seconds,
            rate: ops as f64 / seconds,
            p50_ms: self.percentile_ms(0.50),
            p99_ms: self.percentile_ms(0.99),
            redis_cpu,
        }
    }

    fn percentile_ms(&self, q: f64) -> Option<f64> {
        let last = self.latencies.len().checked_sub(1)?;
        let index = ((last as f64) * q).round() as usize;
        self.latencies.get(index).map(|d| d.as_secs_f64() * 1000.0)
    }
}

/// Runs `op(0..ops)` on `concurrency` workers, each with one operation in flight, and
/// times every operation. The first error stops the run (dropping the `JoinSet` aborts
/// the other workers): a benchmark with failed operations measures nothing.
async fn drive<F, Fut>(ops: usize, concurrency: usize, op: F) -> anyhow::Result<Measured>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let workers = concurrency.min(ops);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..workers {
        let op = Arc::clone(&op);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(ops / workers + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return anyhow::Ok(latencies);
                }
                let t = Instant::now();
                op(i).await.with_context(|| format!("operation {i}"))?;
                latencies.push(t.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(ops);
    while let Some(joined) = tasks.join_next().await {
        latencies.extend(joined.context("benchmark worker panicked")??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Measured { elapsed, latencies })
}

/// Runs a warm-up, empties Redis and zeroes its counters, then measures and checks.
async fn measure<F, Fut>(
    admin: &mut MultiplexedConnection,
    args: &Args,
    mode: &str,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let warm = Arc::clone(&op);
    drive(WARMUP_OPS.min(args.ops), args.concurrency, move |i| warm(i))
        .await
        .with_context(|| format!("{mode}: warm-up"))?;
    reset(admin).await?;
    let cpu = redis_cpu(admin).await?;
    let measured = drive(args.ops, args.concurrency, move |i| op(i))
        .await
        .with_context(|| format!("{mode}: measured run"))?;
    let cpu = redis_cpu(admin).await? - cpu;
    check(admin, mode, args.ops).await?;
    Ok(measured.row(mode, args.concurrency, cpu))
}

/// Empties Redis and zeroes its command statistics (the loaded script stays cached).
async fn reset(admin: &mut MultiplexedConnection) -> anyhow::Result<()> {
    redis::cmd("FLUSHALL")
        .query_async::<()>(admin)
        .await
        .context("FLUSHALL")?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(admin)
        .await
        .context("CONFIG RESETSTAT")
}

/// Seconds of CPU `redis-server` has used so far (`INFO cpu`, user + system).
async fn redis_cpu(admin: &mut MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(admin)
        .await
        .context("INFO cpu")?;
    let field = |name: &str| -> anyhow::Result<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .with_context(|| format!("INFO cpu has no {name}"))
    };
    Ok(field("used_cpu_user")? + field("used_cpu_sys")?)
}

/// Fails unless Redis ran exactly `ops` stream appends and answered no errors since the
/// last [`reset`].
async fn check(admin: &mut MultiplexedConnection, mode: &str, ops: usize) -> anyhow::Result<()> {
    let commands: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .context("INFO commandstats")?;
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(admin)
        .await
        .context("INFO stats")?;
    let xadds = commands
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_xadd:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let errors = stats
        .lines()
        .find_map(|line| line.strip_prefix("total_error_replies:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .context("INFO stats has no total_error_replies")?;
    if xadds != ops || errors != 0 {
        bail!("{mode}: Redis ran {xadds} XADDs for {ops} operations, {errors} error replies");
    }
    Ok(())
}

fn body(i: usize) -> Object {
    let mut body = Object::new();
    body.insert("foo".into(), json!("bar"));
    body.insert("n".into(), json!(i));
    body
}

/// The change the `raw` mode and the script's `publish` op send, every time.
fn fixed_change() -> Change {
    let mut record = Object::new();
    record.insert("foo".into(), json!("bar"));
    record.insert("id".into(), json!(1));
    Change::create(RecordId::Int(1), record)
}

async fn library(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<Row> {
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = topic.clone();
    measure(admin, args, "library Store::create", move |i| {
        let store = store.clone();
        let topic = topic.clone();
        async move {
            store.create(&topic, body(i)).await?;
            Ok(())
        }
    })
    .await
}

async fn raw(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<Row> {
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = topic.clone();
    let change = Arc::new(fixed_change());
    measure(admin, args, "library Store::publish (raw)", move |_| {
        let store = store.clone();
        let topic = topic.clone();
        let change = Arc::clone(&change);
        async move {
            store.publish(&topic, &change, None).await?;
            Ok(())
        }
    })
    .await
}

async fn http(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
) -> anyhow::Result<Row> {
    let publisher = Publisher::start(&redis.url()).await?;
    let url: Arc<str> = publisher.url(&format!("/api/{TOPIC}")).into();
    let client = system_tests::http();
    let row = measure(admin, args, "http POST /api/Bench", move |i| {
        let client = client.clone();
        let url = Arc::clone(&url);
        async move {
            let res = client
                .post(&*url)
                .json(&json!({"foo": "bar", "n": i}))
                .send()
                .await?;
            let status = res.status();
            // Read the whole body so the connection goes back to the pool.
            let answer = res.bytes().await?;
            if !status.is_success() {
                bail!(
                    "POST answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
            }
            Ok(())
        }
    })
    .await;
    publisher.stop().await?;
    row
}

/// `redis-benchmark` from `REDIS_BENCHMARK` or the `PATH`.
fn redis_benchmark_binary() -> String {
    std::env::var("REDIS_BENCHMARK").unwrap_or_else(|_| "redis-benchmark".to_owned())
}

/// How `redis-benchmark` keeps `--concurrency` requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `-c C`: C connections, one request in flight on each.
    Connections,
    /// `-c 1 -P C`: one connection with C requests in flight, the shape of the library's
    /// one multiplexed connection.
    Pipelined,
}

/// One `redis-benchmark` run.
#[derive(Debug)]
struct BenchmarkRun {
    mode: &'static str,
    shape: Shape,
    command: Vec<String>,
    /// Whether every request appends to a stream (checked afterwards).
    appends: bool,
}

/// Runs `redis-benchmark --csv` on an emptied Redis and reads its row.
async fn redis_benchmark(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    run: &BenchmarkRun,
) -> anyhow::Result<Row> {
    let mode = run.mode;
    let c = args.concurrency.to_string();
    let (flags, concurrency, ops) = match run.shape {
        Shape::Connections => (vec!["-c", c.as_str()], c.clone(), args.ops),
        // It sends whole pipelines: N rounded up to a multiple of C.
        Shape::Pipelined => (
            vec!["-c", "1", "-P", c.as_str()],
            format!("1x{c}"),
            args.ops.div_ceil(args.concurrency) * args.concurrency,
        ),
    };
    reset(admin).await?;
    let cpu = redis_cpu(admin).await?;
    let output = tokio::process::Command::new(redis_benchmark_binary())
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-n", &args.ops.to_string()])
        .args(&flags)
        .arg("--csv")
        .args(&run.command)
        .output()
        .await
        .context("run redis-benchmark (apt-get install redis-tools)")?;
    let cpu = redis_cpu(admin).await? - cpu;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "{mode}: redis-benchmark exited with {}: {}{}",
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if run.appends {
        check(admin, mode, ops).await?;
    }
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .with_context(|| format!("{mode}: redis-benchmark printed nothing"))?;
    let csv = BenchmarkCsv::parse(line).with_context(|| format!("{mode}: CSV line {line:?}"))?;
    Ok(Row {
        mode: mode.to_owned(),
        ops,
        concurrency,
        // redis-benchmark's own clock: its rate is requests over its measured time.
        seconds: ops as f64 / csv.rps,
        rate: csv.rps,
        p50_ms: Some(csv.p50_ms),
        p99_ms: Some(csv.p99_ms),
        redis_cpu: cpu,
    })
}

/// One row of `redis-benchmark --csv` (7.x):
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
#[derive(Debug)]
struct BenchmarkCsv {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl BenchmarkCsv {
    /// The test name is the command line, unescaped, so it may hold quotes and commas:
    /// read the seven numbers from the right.
    fn parse(line: &str) -> anyhow::Result<Self> {
        let mut fields = line.trim().rsplitn(8, ',').map(|f| f.trim_matches('"'));
        let mut numbers = [0.0_f64; 7];
        for slot in numbers.iter_mut().rev() {
            let field = fields.next().context("fewer than 8 fields")?;
            *slot = field
                .parse()
                .with_context(|| format!("{field:?} is not a number"))?;
        }
        let [rps, _avg, _min, p50_ms, _p95, p99_ms, _max] = numbers;
        if rps <= 0.0 {
            bail!("no requests per second");
        }
        Ok(Self {
            rps,
            p50_ms,
            p99_ms,
        })
    }
}

/// The write script with one item of `kind` and its arguments `a`, `b` (no idempotency
/// key), as `redis-benchmark` sends it.
fn evalsha(sha: &str, topic: &Topic, kind: &str, a: &str, b: &str) -> Vec<String> {
    let retention = publisher::Retention::default();
    [
        "EVALSHA",
        sha,
        "5",
        &topic.records_key(),
        &topic.seq_key(),
        &topic.stream_key(),
        &topic.raw_key(),
        &topic.raw_key(),
        &topic.redis_channel(),
        "PUBLISH",
        &retention.max_len.to_string(),
        &retention.max_age.as_millis().to_string(),
        "",
        "0",
        "",
        "1",
        kind,
        "",
        a,
        b,
        "",
    ]
    .map(str::to_owned)
    .into()
}

/// The write script's single automatic-id create and single publish, each over many
/// connections and over one pipelining connection, then the script's main commands alone
/// as baselines.
fn benchmark_runs(sha: &str, topic: &Topic) -> Vec<BenchmarkRun> {
    let retention = publisher::Retention::default();
    let change = fixed_change().to_json();
    let create_auto = evalsha(sha, topic, ITEM_AUTO, SCRIPT_BODY, "");
    let publish = evalsha(sha, topic, ITEM_PUBLISH, &change, "");
    let xadd = [
        "XADD",
        &topic.stream_key(),
        "MAXLEN",
        "~",
        &retention.max_len.to_string(),
        "*",
        "v",
        "1",
        "prev",
        "0-0",
        "change",
        &change,
    ]
    .map(str::to_owned)
    .into();
    let run = |mode, shape, command, appends| BenchmarkRun {
        mode,
        shape,
        command,
        appends,
    };
    vec![
        run(
            "redis-benchmark EVALSHA create_auto",
            Shape::Connections,
            create_auto.clone(),
            true,
        ),
        run(
            "redis-benchmark EVALSHA create_auto, pipelined",
            Shape::Pipelined,
            create_auto,
            true,
        ),
        run(
            "redis-benchmark EVALSHA publish",
            Shape::Connections,
            publish.clone(),
            true,
        ),
        run(
            "redis-benchmark EVALSHA publish, pipelined",
            Shape::Pipelined,
            publish,
            true,
        ),
        run(
            "redis-benchmark SET",
            Shape::Connections,
            vec!["-t".to_owned(), "set".to_owned()],
            false,
        ),
        run(
            "redis-benchmark XADD MAXLEN ~",
            Shape::Connections,
            xadd,
            true,
        ),
        run(
            "redis-benchmark PUBLISH",
            Shape::Connections,
            vec!["PUBLISH".to_owned(), topic.redis_channel(), change],
            false,
        ),
    ]
}

async fn redis_benchmarks(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<Vec<Row>> {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(WRITE_SCRIPT)
        .query_async(admin)
        .await
        .context("SCRIPT LOAD")?;
    let mut rows = Vec::new();
    for run in benchmark_runs(&sha, topic) {
        rows.push(redis_benchmark(admin, redis, args, &run).await?);
    }
    Ok(rows)
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// The result table, in Markdown. `redis µs/op` is `redis-server`'s CPU time per
/// operation; `redis busy` is that CPU time over the run's duration (100% = one core, the
/// most single-threaded Redis can use).
fn print_table(rows: &[Row]) {
    println!(
        "| mode | ops | concurrency | seconds | ops/s | p50 ms | p99 ms | redis µs/op | redis busy |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {} | {} | {:.1} | {:.0}% |",
            row.mode,
            row.ops,
            row.concurrency,
            row.seconds,
            row.rate,
            ms(row.p50_ms),
            ms(row.p99_ms),
            row.redis_cpu * 1e6 / row.ops as f64,
            100.0 * row.redis_cpu / row.seconds,
        );
    }
}

/// Each client path as a share of `redis-benchmark`'s rate for the same script op.
fn print_ratios(rows: &[Row]) {
    let rate = |mode: &str| rows.iter().find(|r| r.mode == mode).map(|r| r.rate);
    let create = "redis-benchmark EVALSHA create_auto";
    let publish = "redis-benchmark EVALSHA publish";
    let pairs = [
        ("library Store::create", create),
        ("http POST /api/Bench", create),
        ("library Store::publish (raw)", publish),
    ];
    for (ours, theirs) in pairs {
        for theirs in [theirs.to_owned(), format!("{theirs}, pipelined")] {
            if let (Some(a), Some(b)) = (rate(ours), rate(&theirs)) {
                println!("{ours}: {:.0}% of {theirs}", 100.0 * a / b);
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let topic = Topic::new(TOPIC)?;
    let redis = RedisServer::start().await?;
    let mut admin = redis.connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut admin)
        .await
        .context("INFO server")?;
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "publish_bench: {} ops, concurrency {}, mode {:?}; {cores} cores ({}), redis-server {version}",
        args.ops,
        args.concurrency,
        args.mode,
        cpu_model(),
    );

    let mut rows = Vec::new();
    if args.mode.runs(Mode::Library) {
        rows.push(library(&mut admin, &redis, &args, &topic).await?);
    }
    if args.mode.runs(Mode::Raw) {
        rows.push(raw(&mut admin, &redis, &args, &topic).await?);
    }
    if args.mode.runs(Mode::Http) {
        rows.push(http(&mut admin, &redis, &args).await?);
    }
    if args.mode.runs(Mode::RedisBenchmark) {
        rows.extend(redis_benchmarks(&mut admin, &redis, &args, &topic).await?);
    }
    println!();
    print_table(&rows);
    println!();
    print_ratios(&rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv_with_commas_in_the_command() {
        let line = r#""EVALSHA abc 3 k1 k2 k3 publish ch PUBLISH 10000 86400000 {"target":1,"data":{"foo":"bar","id":1},"type":"create"} ","21052.63","2.911","0.216","2.735","4.063","5.183","9.871""#;
        let csv = BenchmarkCsv::parse(line).unwrap();
        assert_eq!(csv.rps, 21052.63);
        assert_eq!(csv.p50_ms, 2.735);
        assert_eq!(csv.p99_ms, 5.183);
        assert!(BenchmarkCsv::parse(r#""SET","0.00","0","0","0","0","0","0""#).is_err());
        assert!(BenchmarkCsv::parse("garbage").is_err());
    }

    #[test]
    fn flags() {
        let args = |s: &str| {
            <Args as clap::Parser>::try_parse_from(
                std::iter::once("publish_bench").chain(s.split_whitespace()),
            )
        };
        let a = args("--ops 10 --concurrency=3 --mode raw").unwrap();
        assert_eq!((a.ops, a.concurrency, a.mode), (10, 3, Mode::Raw));
        let d = args("").unwrap();
        assert_eq!((d.ops, d.concurrency, d.mode), (100_000, 64, Mode::All));
        assert!(args("--ops 0").is_err());
        assert!(args("--mode fast").is_err());
        assert!(args("--ops").is_err());
    }

    #[test]
    fn percentiles() {
        let m = Measured {
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        let row = m.row("x", 1, 0.0);
        assert_eq!(row.ops, 100);
        assert_eq!(row.p50_ms, Some(51.0));
        assert_eq!(row.p99_ms, Some(99.0));
    }
}
