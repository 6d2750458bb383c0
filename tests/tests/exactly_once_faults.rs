//! Exactly once from the backend to the browser, under faults: a writer retries every
//! create with its `Idempotency-Key` until it gets an answer, while the publisher process
//! is killed -9 and started again (three times, once with a create's answer lost on
//! its way back from Redis) and Redis is killed -9 and restarted (AOF,
//! `appendfsync always`). Every create is in the store exactly once, and on every
//! client's stream exactly once, in order. A second writer that never retries checks the
//! other half: what it was told failed (a 503 `REDIS_UNAVAILABLE`, a 4xx) never shows up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proto::Topic;
use redis::AsyncCommands;
use serde_json::{Value, json};
use system_tests::{
    Blackhole, GatewayProcess, LoggedProcess, RedisOptions, RedisServer, Watcher, http, traffic,
    within,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "Orders";
const ONCE: &str = "Attempts";
const CREATES: usize = 400;
const CONVERGE: Duration = Duration::from_secs(30);
/// How long one attempt may wait for its answer before the writer tries again.
const ATTEMPT: Duration = Duration::from_secs(2);

/// What the retrying writer saw.
#[derive(Debug, Default)]
struct Seen {
    answered: AtomicUsize,
    attempts: AtomicUsize,
    replays: AtomicUsize,
    unknown: AtomicUsize,
    unavailable: AtomicUsize,
    no_answer: AtomicUsize,
}

async fn start_publisher(redis: &RedisServer) -> anyhow::Result<LoggedProcess> {
    start_publisher_on(&redis.url()).await
}

async fn start_publisher_on(url: &str) -> anyhow::Result<LoggedProcess> {
    LoggedProcess::start(
        "publisher",
        "info",
        &[
            ("PUBLISHER_REDIS_URL", url),
            ("PUBLISHER_REDIS_TIMEOUT", "500ms"),
        ],
    )
    .await
}

/// One create of `{"n": n}` at `url` under `key`: its status, whether it was a replay,
/// and its body; `None` without a whole answer within [`ATTEMPT`].
async fn attempt(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    n: usize,
) -> Option<(reqwest::StatusCode, bool, Value)> {
    let sent = client
        .post(url)
        .header("Idempotency-Key", key)
        .json(&json!({"n": n}))
        .send();
    let res = tokio::time::timeout(ATTEMPT, sent).await.ok()?.ok()?;
    let (status, replayed) = (
        res.status(),
        res.headers().contains_key("idempotent-replayed"),
    );
    let body = tokio::time::timeout(ATTEMPT, res.json::<Value>())
        .await
        .ok()?
        .ok()?;
    Some((status, replayed, body))
}

/// Creates `{"n": 1}` .. `{"n": CREATES}` in order, each under key `order-<n>`, sending
/// each again until it is answered 200. Returns the id each was answered with.
async fn retrying_writer(
    base: watch::Receiver<String>,
    seen: Arc<Seen>,
) -> anyhow::Result<Vec<i64>> {
    let client = http();
    let mut ids = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for n in 1..=CREATES {
        let key = format!("order-{n}");
        loop {
            seen.attempts.fetch_add(1, Ordering::SeqCst);
            let url = format!("{}/api/{TOPIC}", base.borrow().clone());
            match attempt(&client, &url, &key, n).await {
                Some((status, replayed, body)) if status == 200 => {
                    if replayed {
                        seen.replays.fetch_add(1, Ordering::SeqCst);
                    }
                    assert_eq!(body["n"], n, "{body}");
                    ids.push(body["id"].as_i64().expect("an integer id"));
                    seen.answered.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Some((status, _, body)) if status == 503 => {
                    match body["error"]["code"].as_str() {
                        Some("OUTCOME_UNKNOWN") => &seen.unknown,
                        Some("REDIS_UNAVAILABLE") => &seen.unavailable,
                        _ => anyhow::bail!("unexpected 503: {body}"),
                    }
                    .fetch_add(1, Ordering::SeqCst);
                }
                Some((status, _, body)) => anyhow::bail!("create {n}: {status} {body}"),
                None => {
                    seen.no_answer.fetch_add(1, Ordering::SeqCst);
                }
            }
            pace.tick().await;
        }
    }
    Ok(ids)
}

/// How one attempt of the writer that never retries ended.
#[derive(Debug, Clone, PartialEq)]
enum Told {
    Created(i64),
    /// Refused before it ran: nothing was written.
    Failed(u16),
    /// No answer, or `OUTCOME_UNKNOWN`: either way.
    Unknown,
}

/// Creates `{"n": 1}`, `{"n": 2}`, ... in `ONCE`, each tried once (with a key, as a
/// careful client would, but never sent again), until `stop`.
async fn writer_that_never_retries(
    base: watch::Receiver<String>,
    stop: CancellationToken,
) -> BTreeMap<usize, Told> {
    let client = http();
    let mut told = BTreeMap::new();
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut n = 0;
    while !stop.is_cancelled() {
        pace.tick().await;
        n += 1;
        let url = format!("{}/api/{ONCE}", base.borrow().clone());
        let outcome = match attempt(&client, &url, &format!("attempt-{n}"), n).await {
            Some((status, _, body)) if status == 200 => {
                Told::Created(body["id"].as_i64().unwrap_or(-1))
            }
            Some((_, _, body)) if body["error"]["code"] == "OUTCOME_UNKNOWN" => Told::Unknown,
            Some((status, _, _)) => Told::Failed(status.as_u16()),
            None => Told::Unknown,
        };
        told.insert(n, outcome);
    }
    told
}

/// The `n` of every record of `topic`, with its id.
async fn stored(redis: &RedisServer, topic: &str) -> anyhow::Result<Vec<(usize, i64)>> {
    let mut conn = redis.connection().await?;
    let records: BTreeMap<String, String> =
        within("HGETALL", conn.hgetall(Topic::new(topic)?.records_key())).await??;
    records
        .values()
        .map(|text| {
            let record: Value = serde_json::from_str(text)?;
            let n = record["n"].as_u64().unwrap_or(0) as usize;
            Ok((n, record["id"].as_i64().unwrap_or(-1)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_creates_land_exactly_once_through_publisher_and_redis_kills() -> anyhow::Result<()>
{
    let mut redis = RedisServer::start_with(RedisOptions { appendonly: true }).await?;
    let url = redis.url();
    let settings = vec![
        ("GATEWAY_REDIS_URL", url.as_str()),
        ("GATEWAY_PARTITION_TIMEOUT", "5s"),
        ("GATEWAY_HEARTBEAT", "1s"),
    ];
    let pods = GatewayProcess::fleet(&[settings.clone(), settings]).await?;
    let urls: Vec<String> = pods
        .iter()
        .map(|pod| pod.url(&format!("/api/{TOPIC}/change-stream?_format=event-stream")))
        .collect();
    let mut watchers = Vec::new();
    for i in 0..6 {
        watchers.push(Watcher::start(urls.clone(), i % 2).await?);
    }

    // The first publisher reaches Redis through a route that can go silent.
    let route = Blackhole::start(format!("127.0.0.1:{}", redis.port()).parse()?).await?;
    let mut publisher = start_publisher_on(&format!("redis://{}/", route.addr)).await?;
    let (base_tx, base) = watch::channel(publisher.url(""));
    let seen = Arc::new(Seen::default());
    let writer = tokio::spawn(retrying_writer(base.clone(), seen.clone()));
    let reach =
        |what: &'static str, target: usize| traffic::reach(what, &seen.answered, target, CONVERGE);

    // The answer lost after the write happened: a create is held inside Redis, the route
    // goes silent, Redis runs the create (its answer goes nowhere), and the publisher is
    // killed -9 before it times out. The writer's retry, on the next publisher, must get
    // that create's answer, not make a second record.
    reach("creates before the lost answer", 50).await?;
    redis.hold_writes().await?;
    redis.wait_for_held_script().await?;
    route.partition();
    redis.release_writes().await?;
    drop(publisher); // SIGKILL
    publisher = start_publisher(&redis).await?;
    base_tx.send_replace(publisher.url(""));
    let stop = CancellationToken::new();
    let careless = tokio::spawn(writer_that_never_retries(base, stop.clone()));

    reach("creates before the second publisher kill", 100).await?;
    drop(publisher); // SIGKILL
    publisher = start_publisher(&redis).await?;
    base_tx.send_replace(publisher.url(""));

    reach("creates before the Redis kill", 200).await?;
    redis.kill().await?;
    let refused = seen.attempts.load(Ordering::SeqCst) + 5;
    traffic::reach(
        "attempts while Redis is down",
        &seen.attempts,
        refused,
        CONVERGE,
    )
    .await?;
    redis.restart().await?;

    reach("creates before the third publisher kill", 300).await?;
    drop(publisher);
    publisher = start_publisher(&redis).await?;
    base_tx.send_replace(publisher.url(""));

    let ids = within_converge("the writer to finish", writer).await???;
    stop.cancel();
    let told = within_converge("the careless writer to stop", careless).await??;

    // The store: every n once, with the id its create was answered with.
    let mut store = stored(&redis, TOPIC).await?;
    store.sort_unstable();
    let expected: Vec<(usize, i64)> = (1..=CREATES).zip(ids.iter().copied()).collect();
    assert_eq!(
        store, expected,
        "every create exactly once, with the id it was answered with"
    );

    // The stream: one create per n, in order; and every client holds exactly the stream.
    let mut conn = redis.connection().await?;
    let reply: redis::streams::StreamRangeReply =
        within("XRANGE", conn.xrange_all(Topic::new(TOPIC)?.stream_key())).await??;
    let mut stream_ids = Vec::new();
    let mut order = Vec::new();
    for entry in &reply.ids {
        let change: String = entry.get("change").expect("a change field");
        let change: Value = serde_json::from_str(&change)?;
        assert_eq!(change["type"], "create");
        order.push(change["data"]["n"].as_u64().unwrap_or(0) as usize);
        stream_ids.push(entry.id.clone());
    }
    assert_eq!(
        order,
        (1..=CREATES).collect::<Vec<_>>(),
        "one event per create, in order"
    );
    let watched = traffic::all_complete(watchers, &stream_ids, CONVERGE).await?;

    // What the careless writer was told failed is not there; what it was told was made is,
    // once; an unknown outcome is there at most once.
    let once = stored(&redis, ONCE).await?;
    let mut count = BTreeMap::<usize, usize>::new();
    for (n, _) in &once {
        *count.entry(*n).or_default() += 1;
    }
    for (n, outcome) in &told {
        let times = count.get(n).copied().unwrap_or(0);
        match outcome {
            Told::Created(id) => {
                assert_eq!(times, 1, "attempt {n} was answered as made");
                assert!(once.contains(&(*n, *id)), "attempt {n} has id {id}");
            }
            Told::Failed(status) => {
                assert_eq!(times, 0, "attempt {n} was told {status} and is not there")
            }
            Told::Unknown => assert!(times <= 1, "attempt {n} is there at most once"),
        }
    }

    let failed = told
        .values()
        .filter(|t| matches!(t, Told::Failed(_)))
        .count();
    let unknown = told.values().filter(|t| **t == Told::Unknown).count();
    eprintln!(
        "exactly-once under faults: {CREATES} creates in {} attempts ({} replays, {} \
         OUTCOME_UNKNOWN, {} REDIS_UNAVAILABLE, {} unanswered), 0 duplicates; {} clients \
         complete ({} reconnects); the writer that never retries: {} attempts, {failed} \
         told failed (none stored), {unknown} unknown",
        seen.attempts.load(Ordering::SeqCst),
        seen.replays.load(Ordering::SeqCst),
        seen.unknown.load(Ordering::SeqCst),
        seen.unavailable.load(Ordering::SeqCst),
        seen.no_answer.load(Ordering::SeqCst),
        watched.len(),
        watched.iter().map(|w| w.reconnects).sum::<usize>(),
        told.len(),
    );
    assert!(
        seen.replays.load(Ordering::SeqCst) >= 1,
        "the create whose answer was lost was answered by a replay"
    );
    assert!(
        failed > 0,
        "the careless writer was refused while Redis was down"
    );
    drop(publisher);
    Ok(())
}

/// Awaits `fut` for at most `CONVERGE`.
async fn within_converge<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    use anyhow::Context;
    tokio::time::timeout(CONVERGE, fut)
        .await
        .with_context(|| format!("timed out after {CONVERGE:?}: {what}"))
}
