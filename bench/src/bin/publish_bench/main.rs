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

mod benchmark;
mod measure;

use std::sync::Arc;

use anyhow::{Context, bail};
use bench::load::cpu_model;
use proto::{Change, Object, RecordId, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::{Publisher, RedisServer};

use benchmark::redis_benchmarks;
use measure::{Row, measure, print_table};

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
}

fn body(i: usize) -> Object {
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
}
