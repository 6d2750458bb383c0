//! `--mode batch`: records/s of array creates (`--batch` records each, one script run per
//! array) beside single creates, through the library (`publisher::ops::create_many`) and
//! over HTTP (`POST /api/Bench` with a JSON array), then `redis-benchmark` of the write
//! script with as many `auto` items per call. Every row counts records; its latencies are
//! per call. The longest single run at the batch limits is `limits.rs`.

use std::sync::Arc;

use proto::Topic;
use publisher::BatchLimits;
use redis::aio::MultiplexedConnection;
use serde_json::json;
use system_tests::{Publisher, RedisServer};

use crate::benchmark::{create_auto, load_script, run_all};
use crate::measure::Row;
use crate::{Args, TOPIC, body, measure_library, measure_posts};

const SCRIPT: &str = "redis-benchmark EVALSHA create_auto";

fn library_name(items: usize) -> String {
    match items {
        1 => "library ops::create, 1 record".to_owned(),
        n => format!("library ops::create_many, {n} records"),
    }
}

fn http_name(items: usize) -> String {
    match items {
        1 => "http POST /api/Bench, 1 record".to_owned(),
        n => format!("http POST /api/Bench, array of {n}"),
    }
}

fn script_name(items: usize) -> String {
    match items {
        1 => format!("{SCRIPT}, 1 item"),
        n => format!("{SCRIPT}, {n} items"),
    }
}

/// The rows (single creates, then each size), and the pairs to compare: each batch
/// beside the single creates of its path, and each of ours beside `redis-benchmark` of
/// the same script call.
pub(crate) async fn run(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<(Vec<Row>, Vec<(String, String)>)> {
    let sizes: Vec<usize> = std::iter::once(1)
        .chain(args.batch.iter().copied())
        .collect();
    let mut rows = Vec::new();
    for &items in &sizes {
        rows.push(library(admin, redis, args, topic, items).await?);
    }
    let publisher = Publisher::start(&redis.url()).await?;
    let url: Arc<str> = publisher.url(&format!("/api/{TOPIC}")).into();
    for &items in &sizes {
        let request = move |i| match items {
            1 => (json!(body(i)), None),
            _ => (json!(bodies(i, items).collect::<Vec<_>>()), None),
        };
        rows.push(measure_posts(admin, args, &url, items, &http_name(items), request).await?);
    }
    publisher.stop().await?;
    let sha = load_script(admin).await?;
    let runs = sizes
        .iter()
        .flat_map(|&items| create_auto(&sha, topic, &script_name(items), items, false));
    rows.extend(run_all(admin, redis, args, runs).await?);

    let mut pairs = Vec::new();
    for &items in &sizes[1..] {
        pairs.push((library_name(items), library_name(1)));
        pairs.push((http_name(items), http_name(1)));
        pairs.push((script_name(items), script_name(1)));
    }
    for &items in &sizes {
        for shape in ["", ", pipelined"] {
            let script = format!("{}{shape}", script_name(items));
            pairs.push((library_name(items), script.clone()));
            pairs.push((http_name(items), script));
        }
    }
    Ok((rows, pairs))
}

/// The bodies of call `i` of `items` records each.
fn bodies(i: usize, items: usize) -> impl Iterator<Item = proto::Object> {
    (i * items..(i + 1) * items).map(body)
}

async fn library(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
    items: usize,
) -> anyhow::Result<Row> {
    let mode = library_name(items);
    measure_library(
        admin,
        redis,
        args,
        topic,
        items,
        &mode,
        move |store, topic, i| async move {
            if items == 1 {
                publisher::ops::create(&store, &topic, body(i), None).await?;
            } else {
                let bodies = bodies(i, items).collect();
                let limits = BatchLimits::default();
                publisher::ops::create_many(&store, &topic, bodies, None, &limits).await?;
            }
            Ok(())
        },
    )
    .await
}
