//! `--mode idempotent`: what an `Idempotency-Key` costs a create. In one run, creates
//! without a key and with a new key each (so every one writes: no replays), through the
//! library (`publisher::ops::create`) and over HTTP (`POST /api/Bench` with the header),
//! then `redis-benchmark` of the write script without and with a key (a random one per
//! request). It does not measure what a kept key costs in memory (`memory.rs`).

use std::sync::Arc;

use anyhow::bail;
use proto::{Object, Topic};
use publisher::RedisStore;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::{Publisher, RedisServer};

use crate::benchmark::{create_auto, load_script, run_all};
use crate::measure::Row;
use crate::{Args, TOPIC, body, idempotency, idempotency_key, measure_library, measure_posts};

const LIBRARY: &str = "library ops::create";
const HTTP: &str = "http POST /api/Bench";
const SCRIPT: &str = "redis-benchmark EVALSHA create_auto";
const PLAIN: &str = "no key";
const KEYED: &str = "Idempotency-Key";

fn name(path: &str, variant: &str) -> String {
    format!("{path}, {variant}")
}

/// The rows, and the pairs to compare: each path with a key beside itself without, and
/// each of ours beside `redis-benchmark` of the same script call.
pub(crate) async fn run(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<(Vec<Row>, Vec<(String, String)>)> {
    let mut rows = Vec::new();
    for keyed in [false, true] {
        rows.push(library(admin, redis, args, topic, keyed).await?);
    }
    let publisher = Publisher::start(&redis.url()).await?;
    let url: Arc<str> = publisher.url(&format!("/api/{TOPIC}")).into();
    for keyed in [false, true] {
        let mode = name(HTTP, if keyed { KEYED } else { PLAIN });
        let request = move |i| {
            let body = json!({"foo": "bar", "n": i});
            (body, keyed.then(|| idempotency_key(i)))
        };
        rows.push(measure_posts(admin, args, &url, 1, &mode, request).await?);
    }
    publisher.stop().await?;
    let sha = load_script(admin).await?;
    let runs = [false, true].into_iter().flat_map(|keyed| {
        let variant = if keyed { KEYED } else { PLAIN };
        create_auto(&sha, topic, &name(SCRIPT, variant), 1, keyed)
    });
    rows.extend(run_all(admin, redis, args, runs).await?);

    let mut pairs = Vec::new();
    for path in [LIBRARY, HTTP, SCRIPT] {
        pairs.push((name(path, KEYED), name(path, PLAIN)));
    }
    pairs.push((
        name(SCRIPT, &format!("{KEYED}, pipelined")),
        name(SCRIPT, &format!("{PLAIN}, pipelined")),
    ));
    for ours in [LIBRARY, HTTP] {
        for shape in ["", ", pipelined"] {
            pairs.push((name(ours, KEYED), name(SCRIPT, &format!("{KEYED}{shape}"))));
        }
    }
    Ok((rows, pairs))
}

async fn library(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
    keyed: bool,
) -> anyhow::Result<Row> {
    let mode = name(LIBRARY, if keyed { KEYED } else { PLAIN });
    let op = move |store, topic, i| async move {
        create(&store, &topic, body(i), keyed.then_some(i)).await
    };
    measure_library(admin, redis, args, topic, 1, &mode, op).await
}

/// Creates `body` through `publisher::ops::create`, under the `Idempotency-Key` of
/// operation `key` or none, and fails on a replay (every key sent is new).
pub(crate) async fn create(
    store: &RedisStore,
    topic: &Topic,
    body: Object,
    key: Option<usize>,
) -> anyhow::Result<()> {
    let idem = key.map(idempotency).transpose()?;
    let answer = publisher::ops::create(store, topic, body, idem.as_ref()).await?;
    if answer.replayed {
        bail!("a create answered a replay under the new key {key:?}");
    }
    Ok(())
}
