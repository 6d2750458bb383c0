//! `--mode limits`: how long one batch blocks Redis at the batch limits
//! (`publisher::ops::DEFAULT_BATCH_MAX_ITEMS` items, `DEFAULT_BATCH_MAX_BYTES` bytes).
//! Redis runs a script to completion, so the longest script run is the longest any other
//! client waits behind a batch.
//!
//! With `slowlog-log-slower-than 100` every command over 0.1 ms is logged with its run
//! time (Redis's own clock around the command, not reading the request or writing the
//! reply). Each case runs once untimed, then `--runs` times one call at a time, each
//! after `SLOWLOG RESET`; the log then holds that call's slow commands: the write
//! script's `EVALSHA` (told apart by its SHA1) and the snapshot pages an `updateAll` reads
//! first. Cases, each from an emptied Redis, through the library's operations
//! with the default limits:
//! - an array create of 1000 small records, and of 1000 records totalling just under
//!   1 MiB of JSON, each without and with an idempotency key (the key keeps the whole
//!   answer: its `MEMORY USAGE` is printed);
//! - `updateAll` of all 1000 records of a 1000-record collection, small records and
//!   records at the byte limit (the limit counts each record twice: record and change);
//! - `updateAll` of 1000 records picked from a `--collection`-record collection, where
//!   the call also reads the whole collection first.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use proto::script::{SNAPSHOT_PAGE_SCRIPT, WRITE_SCRIPT};
use proto::{Object, Topic};
use publisher::ops::{DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ITEMS};
use publisher::{BatchLimits, RedisOptions, RedisStore, Where};
use redis::Value;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::RedisServer;

use crate::measure::config_set;
use crate::memory::record;
use crate::{Args, body, idempotency, idempotency_key};

/// Default for `--runs`.
pub(crate) const DEFAULT_RUNS: usize = 20;
/// Default for `--collection`.
pub(crate) const DEFAULT_COLLECTION: usize = 100_000;
/// Records per array create while filling a collection.
const FILL_BATCH: usize = 1000;
/// The slow log's threshold, in µs. Redis 7.0 logs the commands a script calls too, 4 to
/// 5 per item (each a few µs); logging all of them (threshold 0) made a 1000-item script
/// run 20-30% longer here. Every script run at the limits, and every snapshot page of
/// 1000 records, takes longer than this.
const SLOWER_THAN_US: u64 = 100;
/// Entries `SLOWLOG` keeps: one call's slow commands, room to spare.
const SLOWLOG_LEN: usize = 1024;

/// One command from `SLOWLOG GET`.
#[derive(Debug)]
struct Logged {
    micros: u64,
    /// For an `EVALSHA`, the script's SHA1.
    sha: Option<String>,
}

fn text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// Every entry of the slow log: `[id, time, micros, [args..], client, name]`.
async fn slowlog(admin: &mut MultiplexedConnection) -> anyhow::Result<Vec<Logged>> {
    let entries: Vec<Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(admin)
        .await
        .context("SLOWLOG GET")?;
    entries
        .iter()
        .map(|entry| {
            let Value::Array(fields) = entry else {
                bail!("SLOWLOG entry {entry:?}");
            };
            let (Some(Value::Int(micros)), Some(Value::Array(args))) =
                (fields.get(2), fields.get(3))
            else {
                bail!("SLOWLOG entry {entry:?}");
            };
            let command = args.first().map(text).unwrap_or_default();
            let sha = command
                .eq_ignore_ascii_case("evalsha")
                .then(|| args.get(1).map(text))
                .flatten();
            Ok(Logged {
                micros: u64::try_from(*micros).unwrap_or(0),
                sha,
            })
        })
        .collect()
}

/// What one measured call did.
#[derive(Debug, Default)]
struct Call {
    elapsed: Duration,
    /// The write script's run (the longest, should an `updateAll` have run it twice).
    write_us: u64,
    /// The longest snapshot page script, for an `updateAll`.
    page_us: u64,
}

/// One line of the table: a case's calls.
#[derive(Debug)]
struct Case {
    what: String,
    items: usize,
    /// What the limit counts: the array's JSON for a create, twice each record written
    /// for an `updateAll`.
    bytes: usize,
    calls: Vec<Call>,
}

/// A batch operation under test: call `run` writes `items` records of `bytes` bytes as
/// the limit counts them.
trait Batch {
    async fn call(&self, run: usize) -> anyhow::Result<(usize, usize)>;
}

/// The scripts' SHA1s, to tell their `EVALSHA`s apart in the log.
struct Shas {
    write: String,
    page: String,
}

/// Runs `batch` once untimed, then `runs` times, each with the slow log emptied first.
async fn measure(
    admin: &mut MultiplexedConnection,
    shas: &Shas,
    what: String,
    runs: usize,
    batch: &impl Batch,
) -> anyhow::Result<Case> {
    let (mut items, mut bytes) = batch.call(0).await.with_context(|| what.clone())?;
    let mut calls = Vec::with_capacity(runs);
    for run in 1..=runs {
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .query_async::<()>(admin)
            .await?;
        let started = Instant::now();
        (items, bytes) = batch.call(run).await.with_context(|| what.clone())?;
        let elapsed = started.elapsed();
        let mut call = Call {
            elapsed,
            ..Call::default()
        };
        for logged in slowlog(admin).await? {
            match logged.sha.as_deref() {
                Some(sha) if sha == shas.write => call.write_us = call.write_us.max(logged.micros),
                Some(sha) if sha == shas.page => call.page_us = call.page_us.max(logged.micros),
                // A command a script called that happened to pass the threshold: its
                // time is inside the script's.
                _ => {}
            }
        }
        if call.write_us == 0 {
            bail!("{what}: no write script in the slow log");
        }
        calls.push(call);
    }
    if items != DEFAULT_BATCH_MAX_ITEMS || bytes > DEFAULT_BATCH_MAX_BYTES {
        bail!("{what}: {items} items of {bytes} bytes, not at the limit");
    }
    Ok(Case {
        what,
        items,
        bytes,
        calls,
    })
}

/// Body `{"foo":"bar","n":j,"pad":"xx.."}` (`pad` 0: no pad, a small record). Every
/// call sends the same bodies, so every call is as long.
fn padded_body(j: usize, pad: usize) -> Object {
    let mut body = body(j);
    if pad > 0 {
        body.insert("pad".into(), json!("x".repeat(pad)));
    }
    body
}

fn padded_bodies(pad: usize) -> Vec<Object> {
    (0..DEFAULT_BATCH_MAX_ITEMS)
        .map(|j| padded_body(j, pad))
        .collect()
}

/// The longest `pad` whose array of 1000 still fits the byte limit (each pad byte adds
/// one byte per item).
fn pad_for_limit() -> usize {
    let base = serde_json::to_string(&padded_bodies(1)).map_or(0, |t| t.len());
    (DEFAULT_BATCH_MAX_BYTES - base) / DEFAULT_BATCH_MAX_ITEMS + 1
}

/// An array create of 1000 records, with a new idempotency key per call or none.
struct CreateMany {
    store: RedisStore,
    topic: Topic,
    /// Pad for records at the byte limit; 0 for small ones.
    pad: usize,
    keyed: bool,
}

impl Batch for CreateMany {
    async fn call(&self, run: usize) -> anyhow::Result<(usize, usize)> {
        let bodies = padded_bodies(self.pad);
        let bytes = serde_json::to_string(&bodies)?.len();
        let idem = self.keyed.then(|| idempotency(run)).transpose()?;
        let limits = BatchLimits::default();
        let answer =
            publisher::ops::create_many(&self.store, &self.topic, bodies, idem.as_ref(), &limits)
                .await?;
        if answer.replayed {
            bail!("array create {run} answered a replay");
        }
        Ok((answer.value.len(), bytes))
    }
}

/// `updateAll` of the records `where_` picks, setting `step` to the call's number.
struct UpdateAll {
    store: RedisStore,
    topic: Topic,
    where_: Where,
}

impl Batch for UpdateAll {
    async fn call(&self, run: usize) -> anyhow::Result<(usize, usize)> {
        let mut patch = Object::new();
        // Fixed width, so every call writes as many bytes.
        patch.insert("step".into(), json!(format!("{run:04}")));
        let limits = BatchLimits::default();
        let answer = publisher::ops::update_all(
            &self.store,
            &self.topic,
            &self.where_,
            patch,
            None,
            &limits,
        )
        .await?;
        let bytes = answer
            .value
            .iter()
            .map(|w| serde_json::to_string(&w.record).map_or(0, |t| 2 * t.len()))
            .sum();
        Ok((answer.value.len(), bytes))
    }
}

/// Fills an emptied Redis with `bodies(0..count)`, 1000 records per array create.
async fn fill(
    admin: &mut MultiplexedConnection,
    store: &RedisStore,
    topic: &Topic,
    count: usize,
    body: impl Fn(usize) -> Object,
) -> anyhow::Result<()> {
    redis::cmd("FLUSHALL")
        .query_async::<()>(admin)
        .await
        .context("FLUSHALL")?;
    let limits = BatchLimits::default();
    for start in (0..count).step_by(FILL_BATCH) {
        let bodies = (start..count.min(start + FILL_BATCH)).map(&body).collect();
        publisher::ops::create_many(store, topic, bodies, None, &limits)
            .await
            .context("fill")?;
    }
    Ok(())
}

/// The longest pad for which 1000 updated records `{"foo":..,"n":..,"pad":..,"id":..,
/// "step":"0000"}` fit the byte limit, which counts each twice (record and change).
fn update_pad_for_limit() -> usize {
    let base: usize = (0..DEFAULT_BATCH_MAX_ITEMS)
        .map(|j| {
            let mut record = padded_body(j, 1);
            record.insert("id".into(), json!(j + 1));
            record.insert("step".into(), json!("0000"));
            serde_json::to_string(&record).map_or(0, |t| 2 * t.len())
        })
        .sum();
    (DEFAULT_BATCH_MAX_BYTES - base) / (2 * DEFAULT_BATCH_MAX_ITEMS) + 1
}

pub(crate) async fn run(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<()> {
    let store = RedisStore::connect_lazy(&redis.url(), RedisOptions::default())?;
    let shas = Shas {
        write: redis::Script::new(WRITE_SCRIPT).get_hash().to_owned(),
        page: redis::Script::new(SNAPSHOT_PAGE_SCRIPT)
            .get_hash()
            .to_owned(),
    };
    config_set(admin, "slowlog-max-len", &SLOWLOG_LEN.to_string()).await?;
    config_set(
        admin,
        "slowlog-log-slower-than",
        &SLOWER_THAN_US.to_string(),
    )
    .await?;
    let cases = cases(admin, &store, args, topic, &shas).await;
    // Back to Redis's default, so no other mode pays for logging every command.
    config_set(admin, "slowlog-log-slower-than", "10000").await?;
    let (cases, remembered) = cases?;
    print(args, &cases);
    println!("{remembered}");
    Ok(())
}

/// Every case, and what the key of a remembered 1 MiB array create holds.
async fn cases(
    admin: &mut MultiplexedConnection,
    store: &RedisStore,
    args: &Args,
    topic: &Topic,
    shas: &Shas,
) -> anyhow::Result<(Vec<Case>, String)> {
    let mut cases = Vec::new();
    let mut remembered = String::new();
    let big = pad_for_limit();
    for (pad, size) in [(0, "small records"), (big, "records at 1 MiB")] {
        for keyed in [false, true] {
            fill(admin, store, topic, 0, body).await?;
            let what = format!(
                "array create, 1000 {size}{}",
                if keyed { ", Idempotency-Key" } else { "" }
            );
            let batch = CreateMany {
                store: store.clone(),
                topic: topic.clone(),
                pad,
                keyed,
            };
            cases.push(measure(admin, shas, what, args.runs, &batch).await?);
            if keyed && pad > 0 {
                let key = topic.idempotency_key("", &idempotency_key(1));
                let usage: u64 = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&key)
                    .arg("SAMPLES")
                    .arg(0)
                    .query_async(admin)
                    .await
                    .context("MEMORY USAGE")?;
                remembered = format!(
                    "the key of one remembered 1 MiB array create ({key}): MEMORY USAGE {usage} bytes"
                );
            }
        }
    }

    let all = UpdateAll {
        store: store.clone(),
        topic: topic.clone(),
        where_: Where::all(),
    };
    fill(admin, store, topic, DEFAULT_BATCH_MAX_ITEMS, body).await?;
    let what = "updateAll, all 1000 small records of 1000".to_owned();
    cases.push(measure(admin, shas, what, args.runs, &all).await?);
    let pad = update_pad_for_limit();
    fill(admin, store, topic, DEFAULT_BATCH_MAX_ITEMS, |j| {
        padded_body(j, pad)
    })
    .await?;
    let what = "updateAll, all 1000 records of 1000, at 1 MiB".to_owned();
    cases.push(measure(admin, shas, what, args.runs, &all).await?);

    // One group in `collection / 1000` holds 1000 records.
    let groups = (args.collection / DEFAULT_BATCH_MAX_ITEMS).max(1);
    let count = groups * DEFAULT_BATCH_MAX_ITEMS;
    fill(admin, store, topic, count, |i| {
        let mut record = record(i);
        record.insert("group".into(), json!(i % groups));
        record
    })
    .await?;
    let picked = UpdateAll {
        store: store.clone(),
        topic: topic.clone(),
        where_: Where::new(&json!({"group": 0}), None)?,
    };
    let what = format!("updateAll, 1000 records picked from {count}");
    cases.push(measure(admin, shas, what, args.runs, &picked).await?);
    Ok((cases, remembered))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The median and the largest of `values`.
fn median_max(mut values: Vec<u64>) -> (u64, u64) {
    values.sort_unstable();
    let median = values.get(values.len() / 2).copied().unwrap_or(0);
    (median, values.last().copied().unwrap_or(0))
}

fn print(args: &Args, cases: &[Case]) {
    println!();
    println!(
        "## The longest script run at the batch limits ({} calls each, one at a time; SLOWLOG over {SLOWER_THAN_US} µs)",
        args.runs
    );
    println!();
    println!(
        "| batch | items | bytes (as limited) | call p50 ms | call max ms | write script p50 ms | write script max ms | longest snapshot page ms |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|--:|");
    for case in cases {
        let micros = |f: fn(&Call) -> u64| case.calls.iter().map(f).collect::<Vec<_>>();
        let (call_p50, call_max) = median_max(micros(|c| {
            u64::try_from(c.elapsed.as_micros()).unwrap_or(u64::MAX)
        }));
        let (write_p50, write_max) = median_max(micros(|c| c.write_us));
        let (_, page_max) = median_max(micros(|c| c.page_us));
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            case.what,
            case.items,
            case.bytes,
            ms(call_p50),
            ms(call_max),
            ms(write_p50),
            ms(write_max),
            ms(page_max),
        );
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_batches_fit_the_byte_limit() {
        let pad = pad_for_limit();
        let text = serde_json::to_string(&padded_bodies(pad)).unwrap();
        assert!(text.len() <= DEFAULT_BATCH_MAX_BYTES);
        assert!(text.len() + DEFAULT_BATCH_MAX_ITEMS > DEFAULT_BATCH_MAX_BYTES);
        assert!(update_pad_for_limit() < pad / 2);
    }
}
