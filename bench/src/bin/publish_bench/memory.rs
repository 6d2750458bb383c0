//! `--mode memory`: what a remembered idempotency key costs Redis. `--keys` creates of a
//! typical record (about 110 bytes of JSON with its id) without a key, then as many with
//! a distinct key each, each from an emptied Redis; the difference in `used_memory`,
//! over the number of keys, is one key's cost: its name, its hash (the 32-character
//! fingerprint and the first answer), its expiry and its share of the keyspace's tables.
//! Both runs write the same records and stream entries, so those cancel out. Then the
//! keyed run again with `hash-max-listpack-value` raised, so the hash fits Redis's compact
//! encoding: the answer alone passes the default 64 bytes. It does not time anything.

use anyhow::Context;
use proto::{Object, Topic};
use publisher::{RedisOptions, RedisStore, Store};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::RedisServer;

use crate::idempotent::create;
use crate::measure::{config_set, drive, info, info_field};
use crate::{Args, idempotency_key};

/// Default for `--keys`.
pub(crate) const DEFAULT_KEYS: usize = 100_000;
/// The longest value a hash may hold and still be stored compactly (Redis's default 64).
const LISTPACK_VALUE: &str = "hash-max-listpack-value";
/// `hash-max-listpack-value` for the last run: room for a typical create's answer.
const ROOMY_LISTPACK_VALUE: usize = 1024;

/// A typical record body: with the id Redis appends, about 110 bytes of JSON.
pub(crate) fn record(i: usize) -> Object {
    let body = json!({
        "name": format!("order-{i:06}"),
        "status": "open",
        "owner": format!("user-{:04}", i % 10_000),
        "note": "ring twice, leave at the door",
        "qty": i % 10,
    });
    match body {
        serde_json::Value::Object(body) => body,
        _ => unreachable!("a JSON object literal"),
    }
}

/// One run of `keys` creates from an emptied Redis.
#[derive(Debug)]
struct Growth {
    what: String,
    before: u64,
    after: u64,
}

impl Growth {
    fn per_create(&self, keys: usize) -> f64 {
        (self.after as f64 - self.before as f64) / keys as f64
    }
}

async fn used_memory(admin: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    info_field(&info(admin, "memory").await?, "used_memory")
}

/// Writes `args.keys` creates (`--concurrency` in flight), with a key each or none, from
/// an emptied Redis, and reads `used_memory` before and after.
async fn grow(
    admin: &mut MultiplexedConnection,
    store: &RedisStore,
    args: &Args,
    topic: &Topic,
    keyed: bool,
    what: String,
) -> anyhow::Result<Growth> {
    redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async::<()>(admin)
        .await
        .context("FLUSHALL SYNC")?;
    let before = used_memory(admin).await?;
    let store = store.clone();
    let topic = topic.clone();
    drive(args.keys, args.concurrency, move |i| {
        let store = store.clone();
        let topic = topic.clone();
        async move { create(&store, &topic, record(i), keyed.then_some(i)).await }
    })
    .await
    .with_context(|| format!("memory: {what}"))?;
    let after = used_memory(admin).await?;
    Ok(Growth {
        what,
        before,
        after,
    })
}

/// One remembered key as Redis holds it: `MEMORY USAGE` (all of its fields), its
/// encoding and what it keeps.
async fn describe_key(admin: &mut MultiplexedConnection, key: &str) -> anyhow::Result<String> {
    let usage: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(admin)
        .await
        .context("MEMORY USAGE")?;
    let encoding: String = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(key)
        .query_async(admin)
        .await
        .context("OBJECT ENCODING")?;
    let outcome: usize = redis::cmd("HSTRLEN")
        .arg(key)
        .arg("outcome")
        .query_async(admin)
        .await?;
    let fingerprint: usize = redis::cmd("HSTRLEN")
        .arg(key)
        .arg("fp")
        .query_async(admin)
        .await?;
    let ttl_ms: i64 = redis::cmd("PTTL").arg(key).query_async(admin).await?;
    Ok(format!(
        "MEMORY USAGE {usage} bytes, encoding {encoding}, name {} bytes, fp {fingerprint} \
         bytes, outcome {outcome} bytes, PTTL {:.1} h",
        key.len(),
        ttl_ms as f64 / 3_600_000.0
    ))
}

pub(crate) async fn run(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<()> {
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    // Connects and loads the script before the first reading.
    publisher::ops::create(&store, topic, record(0), None).await?;
    let default_value: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(LISTPACK_VALUE)
        .query_async(admin)
        .await?;
    let default_value: usize = default_value
        .get(1)
        .and_then(|v| v.parse().ok())
        .context("CONFIG GET hash-max-listpack-value")?;
    let sample = topic.idempotency_key("", &idempotency_key(args.keys / 2));
    let n = args.keys;

    let plain = grow(
        admin,
        &store,
        args,
        topic,
        false,
        format!("{n} creates, no key"),
    )
    .await?;
    let keyed = grow(
        admin,
        &store,
        args,
        topic,
        true,
        format!("{n} creates, a new Idempotency-Key each"),
    )
    .await?;
    let keyed_sample = describe_key(admin, &sample).await?;
    config_set(admin, LISTPACK_VALUE, &ROOMY_LISTPACK_VALUE.to_string()).await?;
    let roomy = grow(
        admin,
        &store,
        args,
        topic,
        true,
        format!("{n} creates, a key each, hash-max-listpack-value {ROOMY_LISTPACK_VALUE}"),
    )
    .await;
    let roomy_sample = describe_key(admin, &sample).await;
    config_set(admin, LISTPACK_VALUE, &default_value.to_string()).await?;
    let (roomy, roomy_sample) = (roomy?, roomy_sample?);

    let record_bytes = store
        .get(topic, &proto::RecordId::Int((n / 2 + 1) as i64))
        .await?
        .map_or(0, |r| r.len());
    println!();
    println!("## Memory per remembered idempotency key");
    println!();
    println!(
        "records of {record_bytes} bytes of JSON (record {}), hash-max-listpack-value {default_value}",
        n / 2 + 1
    );
    println!();
    println!("| writes | used_memory before MiB | after MiB | bytes per create |");
    println!("|---|--:|--:|--:|");
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for growth in [&plain, &keyed, &roomy] {
        println!(
            "| {} | {:.1} | {:.1} | {:.0} |",
            growth.what,
            mib(growth.before),
            mib(growth.after),
            growth.per_create(n),
        );
    }
    println!();
    println!(
        "per remembered key: {:.0} bytes (hash-max-listpack-value {default_value}), {:.0} bytes ({ROOMY_LISTPACK_VALUE})",
        keyed.per_create(n) - plain.per_create(n),
        roomy.per_create(n) - plain.per_create(n),
    );
    println!("one key ({sample}), default: {keyed_sample}");
    println!("one key, hash-max-listpack-value {ROOMY_LISTPACK_VALUE}: {roomy_sample}");
    Ok(())
}
