//! Publisher mutations per second against one local Redis, beside `redis-benchmark`'s
//! rate for the same Lua script; and what idempotency keys and batches cost.
//!
//! Starts its own `redis-server` (no persistence) and measures, each on an emptied Redis:
//! - `library`: `Store::create` through one shared (multiplexed) `RedisStore`;
//! - `http`: `POST /api/Bench` through a real publisher server, over reqwest;
//! - `raw`: `Store::publish` of a fixed change (no record write);
//! - `redis-benchmark`: `EVALSHA` of the write script (`create_auto` and `publish`),
//!   plus `SET`, `XADD` and `PUBLISH` baselines;
//! - `idempotent`: creates without and with an `Idempotency-Key` (a new one each), library
//!   and HTTP, then `redis-benchmark` of the script without and with a key
//!   (`idempotent.rs`);
//! - `batch`: array creates of `--batch` records beside single creates, in records/s,
//!   library and HTTP, then `redis-benchmark` of the script with as many items
//!   (`batch.rs`);
//! - `memory`: Redis memory per remembered key (`memory.rs`);
//! - `limits`: the longest script run of batches at the limits, from `SLOWLOG`
//!   (`limits.rs`).
//!
//! Every throughput run is checked afterwards: Redis must have counted exactly one `XADD`
//! per record and no error replies, so a failing script cannot pass for a fast one
//! (`redis-benchmark` counts error replies as requests).
//!
//! ```text
//! publish_bench [--ops N] [--concurrency C] [--batch 10,100] [--keys N] [--runs N]
//!               [--collection N]
//!               [--mode all|library|http|raw|redis-benchmark|idempotent|batch|memory|limits]
//! ```
//!
//! Load is bounded by C worker tasks, each with one operation in flight; nothing queues.
//! The machine's load average (`/proc/loadavg`) is printed before and after each mode:
//! on a shared machine other work takes Redis's core.

mod batch;
mod benchmark;
mod idempotent;
mod limits;
mod measure;
mod memory;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, bail};
use bench::load::cpu_model;
use proto::{Change, Object, RecordId, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::{Publisher, RedisServer};

use benchmark::redis_benchmarks;
use measure::{Row, measure, print_ratios, print_table};

const DEFAULT_OPS: usize = 100_000;
const DEFAULT_CONCURRENCY: usize = 64;
/// The collection every mode writes to.
const TOPIC: &str = "Bench";
/// A record body for the `redis-benchmark` script runs, as long as the library's
/// `{"foo":"bar","n":i}` for a typical `i`.
pub(crate) const SCRIPT_BODY: &str = r#"{"foo":"bar","n":50000}"#;

/// Which paths to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    All,
    Library,
    Http,
    Raw,
    RedisBenchmark,
    Idempotent,
    Batch,
    Memory,
    Limits,
}

impl Mode {
    fn runs(self, mode: Self) -> bool {
        self == Self::All || self == mode
    }
}

/// Command-line flags.
#[derive(Debug, clap::Parser)]
#[command(about = "Publisher mutations/s beside redis-benchmark's rate for the same script")]
pub(crate) struct Args {
    /// Operations per mode.
    #[arg(long, default_value_t = DEFAULT_OPS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) ops: usize,
    /// Operations in flight.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) concurrency: usize,
    /// Which paths to measure.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    pub(crate) mode: Mode,
    /// Records per array create in `--mode batch`, beside single creates.
    #[arg(long, value_delimiter = ',', default_value = "10,100", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=publisher::ops::DEFAULT_BATCH_MAX_ITEMS as u64))]
    pub(crate) batch: Vec<usize>,
    /// Creates with distinct keys (and as many without) in `--mode memory`.
    #[arg(long, default_value_t = memory::DEFAULT_KEYS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) keys: usize,
    /// Measured calls per batch in `--mode limits`.
    #[arg(long, default_value_t = limits::DEFAULT_RUNS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) runs: usize,
    /// Records of the larger collection a 1000-record `updateAll` picks from in
    /// `--mode limits`.
    #[arg(long, default_value_t = limits::DEFAULT_COLLECTION, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(crate) collection: usize,
}

/// The record body every throughput mode creates, `{"foo":"bar","n":i}`.
pub(crate) fn body(i: usize) -> Object {
    let mut body = Object::new();
    body.insert("foo".into(), json!("bar"));
    body.insert("n".into(), json!(i));
    body
}

/// The change the `raw` mode and the script's `publish` op send, every time.
pub(crate) fn fixed_change() -> Change {
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
    let mode = "library Store::create";
    measure_library(
        admin,
        redis,
        args,
        topic,
        1,
        mode,
        |store, topic, i| async move {
            store.create(&topic, body(i)).await?;
            Ok(())
        },
    )
    .await
}

async fn raw(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<Row> {
    let change = Arc::new(fixed_change());
    let mode = "library Store::publish (raw)";
    measure_library(
        admin,
        redis,
        args,
        topic,
        1,
        mode,
        move |store, topic, _| {
            let change = Arc::clone(&change);
            async move {
                store.publish(&topic, &change, None).await?;
                Ok(())
            }
        },
    )
    .await
}

/// Measures `op(store, topic, i)` per call `i` through one shared (multiplexed)
/// `RedisStore`, each call writing `items` records.
pub(crate) async fn measure_library<F, Fut>(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
    items: usize,
    mode: &str,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn(RedisStore, Topic, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let topic = topic.clone();
    measure(admin, args, items, mode, move |i| {
        op(store.clone(), topic.clone(), i)
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
    let row = measure_posts(admin, args, &url, 1, "http POST /api/Bench", |i| {
        (json!({"foo": "bar", "n": i}), None)
    })
    .await;
    publisher.stop().await?;
    row
}

/// Measures a `POST` to `url` of `request(i)` (its body and `Idempotency-Key`) per call
/// `i`, each writing `items` records.
pub(crate) async fn measure_posts<R>(
    admin: &mut MultiplexedConnection,
    args: &Args,
    url: &Arc<str>,
    items: usize,
    mode: &str,
    request: R,
) -> anyhow::Result<Row>
where
    R: Fn(usize) -> (serde_json::Value, Option<String>) + Send + Sync + 'static,
{
    let client = system_tests::http();
    let url = Arc::clone(url);
    let request = Arc::new(request);
    measure(admin, args, items, mode, move |i| {
        let client = client.clone();
        let url = Arc::clone(&url);
        let (body, key) = request(i);
        async move { post(&client, &url, &body, key.as_deref()).await }
    })
    .await
}

/// `POST`s `body` (with an `Idempotency-Key`, or none) and reads the whole answer, so the
/// connection goes back to the pool. Fails on anything but a first answer: an error
/// status, or a replay (every key the benchmark sends is new).
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    key: Option<&str>,
) -> anyhow::Result<()> {
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.header(publisher::api::IDEMPOTENCY_KEY.as_str(), key);
    }
    let res = request.send().await?;
    let status = res.status();
    let replayed = res
        .headers()
        .contains_key(publisher::api::IDEMPOTENT_REPLAYED.as_str());
    let answer = res.bytes().await?;
    if !status.is_success() {
        bail!(
            "POST answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    if replayed {
        bail!("POST answered a replay under the new key {key:?}");
    }
    Ok(())
}

/// The `Idempotency-Key` of operation `i`: as long as a UUID, distinct per `i`.
pub(crate) fn idempotency_key(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The library's idempotency key of operation `i` ([`idempotency_key`]), kept as long as
/// the publisher keeps keys by default.
pub(crate) fn idempotency(i: usize) -> anyhow::Result<publisher::Idempotency> {
    Ok(publisher::Idempotency {
        subject: String::new(),
        key: publisher::IdempotencyKey::new(&idempotency_key(i))?,
        ttl: publisher::ops::default_ttl(),
    })
}

/// The machine's load average over 1, 5 and 15 minutes.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// One section of the report: a heading, its table, then each pair's ratio.
fn print_section(title: &str, rows: &[Row], pairs: &[(String, String)]) {
    println!();
    println!("## {title}");
    println!();
    print_table(rows);
    println!();
    print_ratios(rows, pairs);
}

/// Each client path as a share of `redis-benchmark`'s rate for the same script op.
fn single_pairs() -> Vec<(String, String)> {
    let create = "redis-benchmark EVALSHA create_auto";
    let publish = "redis-benchmark EVALSHA publish";
    let pairs = [
        ("library Store::create", create),
        ("http POST /api/Bench", create),
        ("library Store::publish (raw)", publish),
    ];
    pairs
        .into_iter()
        .flat_map(|(ours, theirs)| {
            [theirs.to_owned(), format!("{theirs}, pipelined")]
                .map(|theirs| (ours.to_owned(), theirs))
        })
        .collect()
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

    println!("load average at start: {}", load_average());

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
    if !rows.is_empty() {
        print_section("Single writes", &rows, &single_pairs());
        println!("load average: {}", load_average());
    }
    if args.mode.runs(Mode::Idempotent) {
        let (rows, pairs) = idempotent::run(&mut admin, &redis, &args, &topic).await?;
        print_section("Idempotency keys: creates with and without", &rows, &pairs);
        println!("load average: {}", load_average());
    }
    if args.mode.runs(Mode::Batch) {
        let (rows, pairs) = batch::run(&mut admin, &redis, &args, &topic).await?;
        print_section(
            "Batches: array creates beside single creates (ops = records)",
            &rows,
            &pairs,
        );
        println!("load average: {}", load_average());
    }
    if args.mode.runs(Mode::Memory) {
        memory::run(&mut admin, &redis, &args, &topic).await?;
        println!("load average: {}", load_average());
    }
    if args.mode.runs(Mode::Limits) {
        limits::run(&mut admin, &redis, &args, &topic).await?;
        println!("load average: {}", load_average());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(d.batch, [10, 100]);
        assert_eq!(args("--batch 2,1000").unwrap().batch, [2, 1000]);
        assert!(args("--batch 1").is_err());
        assert!(args("--batch 1001").is_err());
        assert!(args("--mode idempotent").is_ok());
        assert_eq!(args("--mode memory --keys 5").unwrap().keys, 5);
        let l = args("--mode limits --runs 3 --collection 5000").unwrap();
        assert_eq!((l.mode, l.runs, l.collection), (Mode::Limits, 3, 5000));
        assert_eq!(idempotency_key(7).len(), 36);
        assert_ne!(idempotency_key(7), idempotency_key(70));
    }
}
