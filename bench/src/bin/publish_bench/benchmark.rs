//! `redis-benchmark` against the same Redis: the write script (`EVALSHA`, loaded with
//! `SCRIPT LOAD`) with the same keys and the same shape of arguments the library sends
//! (one item or a batch of them, with an idempotency key or none), and plain commands for
//! scale. It does not drive our own paths (`measure.rs`).

use anyhow::{Context, bail};
use proto::Topic;
use proto::script::{ITEM_ARGS, ITEM_AUTO, ITEM_PUBLISH, WRITE_SCRIPT};
use redis::aio::MultiplexedConnection;
use system_tests::RedisServer;

use crate::measure::{Row, appends_and_errors, check, redis_cpu, reset};
use crate::{Args, SCRIPT_BODY, fixed_change};

/// The idempotency key `redis-benchmark` sends with a keyed run: as long as a UUID, its
/// last 12 characters a random number per request (`-r`, [`RANDOM_KEYS`]).
const RANDOM_IDEMPOTENCY_KEY: &str = "00000000-0000-4000-8000-__rand_int__";
/// How many distinct numbers `__rand_int__` draws from (`-r`; redis-benchmark 7.0 takes
/// an `int` and draws with `random()`, so at most 2^31). 100,000 requests repeat about
/// 2.5 keys, answered as replays: [`check_remembered`] counts them.
const RANDOM_KEYS: &str = "2000000000";
/// A request fingerprint as long as the one `publisher::ops` computes (128 bits in hex).
const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef";

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

/// What each request appends to the topic's stream, checked after the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Appends {
    /// Nothing is checked (`SET`, `PUBLISH`).
    Unchecked,
    /// Exactly `items` entries per request.
    Each,
    /// One entry per request and one remembered key per entry, except for the few
    /// requests whose random key repeats an earlier one's (a replay, no write).
    Remembered,
}

/// One `redis-benchmark` run.
#[derive(Debug)]
pub(crate) struct BenchmarkRun {
    mode: String,
    shape: Shape,
    command: Vec<String>,
    /// Records (script items) per request: the row counts records.
    items: usize,
    appends: Appends,
}

/// Runs `redis-benchmark --csv` on an emptied Redis and reads its row. `--ops` records
/// are `--ops / items` requests (rounded up, and to whole pipelines).
async fn redis_benchmark(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    run: &BenchmarkRun,
) -> anyhow::Result<Row> {
    let mode = run.mode.as_str();
    let c = args.concurrency.to_string();
    let requests = args.ops.div_ceil(run.items);
    let (flags, concurrency, requests) = match run.shape {
        Shape::Connections => (vec!["-c", c.as_str()], c.clone(), requests),
        // It sends whole pipelines: N rounded up to a multiple of C.
        Shape::Pipelined => (
            vec!["-c", "1", "-P", c.as_str()],
            format!("1x{c}"),
            requests.div_ceil(args.concurrency) * args.concurrency,
        ),
    };
    let random = match run.appends {
        Appends::Remembered => vec!["-r", RANDOM_KEYS],
        Appends::Unchecked | Appends::Each => Vec::new(),
    };
    reset(admin).await?;
    let cpu = redis_cpu(admin).await?;
    let output = tokio::process::Command::new(redis_benchmark_binary())
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args(["-n", &requests.to_string()])
        .args(&flags)
        .args(&random)
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
    match run.appends {
        Appends::Unchecked => {}
        Appends::Each => check(admin, mode, requests * run.items).await?,
        Appends::Remembered => check_remembered(admin, mode, requests).await?,
    }
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .with_context(|| format!("{mode}: redis-benchmark printed nothing"))?;
    let csv = BenchmarkCsv::parse(line).with_context(|| format!("{mode}: CSV line {line:?}"))?;
    let ops = requests * run.items;
    Ok(Row {
        mode: mode.to_owned(),
        ops,
        concurrency,
        // redis-benchmark's own clock: its rate is requests over its measured time.
        seconds: requests as f64 / csv.rps,
        rate: csv.rps * run.items as f64,
        p50_ms: Some(csv.p50_ms),
        p99_ms: Some(csv.p99_ms),
        redis_cpu: cpu,
    })
}

/// After a keyed run with random keys: every stream append has its remembered key (none
/// was written without, none remembered without its write), no errors, and the requests
/// that wrote nothing are the few whose random key repeated (printed; fails past 0.1%).
async fn check_remembered(
    admin: &mut MultiplexedConnection,
    mode: &str,
    requests: usize,
) -> anyhow::Result<()> {
    let (xadds, errors) = appends_and_errors(admin).await?;
    let keys: usize = redis::cmd("DBSIZE")
        .query_async(admin)
        .await
        .context("DBSIZE")?;
    // The records hash, the id counter and the stream are the topic's other keys.
    let remembered = keys.saturating_sub(3);
    let replays = requests.saturating_sub(xadds);
    if remembered != xadds || errors != 0 || replays > requests / 1000 {
        bail!(
            "{mode}: {requests} requests, {xadds} XADDs, {remembered} remembered keys, \
             {errors} error replies"
        );
    }
    println!("{mode}: {replays} of {requests} random keys repeated (answered as replays)");
    Ok(())
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

/// The write script as `redis-benchmark` sends it, with `items` (each [`ITEM_ARGS`]
/// strings: kind, key, a, b, c) and, with `idempotency_key`, that key remembered for the
/// publisher's default time.
fn evalsha(
    sha: &str,
    topic: &Topic,
    idempotency_key: Option<&str>,
    items: &[[&str; ITEM_ARGS]],
) -> Vec<String> {
    let retention = publisher::Retention::default();
    let ttl = publisher::ops::default_ttl().as_millis().to_string();
    let (idem, fingerprint, ttl) = match idempotency_key {
        Some(key) => (topic.idempotency_key("", key), FINGERPRINT, ttl.as_str()),
        // Any key of the topic, untouched, as the library sends it.
        None => (topic.raw_key(), "", "0"),
    };
    let head = [
        "EVALSHA",
        sha,
        "5",
        &topic.records_key(),
        &topic.seq_key(),
        &topic.stream_key(),
        &topic.raw_key(),
        &idem,
        &topic.redis_channel(),
        "PUBLISH",
        &retention.max_len.to_string(),
        &retention.max_age.as_millis().to_string(),
        fingerprint,
        ttl,
        "",
        &items.len().to_string(),
    ]
    .map(str::to_owned);
    head.into_iter()
        .chain(items.iter().flatten().map(|&arg| arg.to_owned()))
        .collect()
}

/// The write script creating `items` automatic-id records per request (an array create
/// of `items`, or a single create for 1), with a random idempotency key per request or
/// none: rows `name` (C connections) and `"{name}, pipelined"`.
pub(crate) fn create_auto(
    sha: &str,
    topic: &Topic,
    name: &str,
    items: usize,
    keyed: bool,
) -> [BenchmarkRun; 2] {
    let item = [ITEM_AUTO, "", SCRIPT_BODY, "", ""];
    let command = evalsha(
        sha,
        topic,
        keyed.then_some(RANDOM_IDEMPOTENCY_KEY),
        &vec![item; items],
    );
    let appends = if keyed {
        Appends::Remembered
    } else {
        Appends::Each
    };
    [Shape::Connections, Shape::Pipelined].map(|shape| BenchmarkRun {
        mode: match shape {
            Shape::Connections => name.to_owned(),
            Shape::Pipelined => format!("{name}, pipelined"),
        },
        shape,
        command: command.clone(),
        items,
        appends,
    })
}

/// The write script's single automatic-id create and single publish, each over many
/// connections and over one pipelining connection, then the script's main commands alone
/// as baselines.
fn benchmark_runs(sha: &str, topic: &Topic) -> Vec<BenchmarkRun> {
    let retention = publisher::Retention::default();
    let change = fixed_change().to_json();
    let publish = evalsha(sha, topic, None, &[[ITEM_PUBLISH, "", &change, "", ""]]);
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
    let run = |mode: &str, shape, command, appends| BenchmarkRun {
        mode: mode.to_owned(),
        shape,
        command,
        items: 1,
        appends,
    };
    let mut runs: Vec<_> = create_auto(sha, topic, "redis-benchmark EVALSHA create_auto", 1, false)
        .into_iter()
        .collect();
    runs.extend([
        run(
            "redis-benchmark EVALSHA publish",
            Shape::Connections,
            publish.clone(),
            Appends::Each,
        ),
        run(
            "redis-benchmark EVALSHA publish, pipelined",
            Shape::Pipelined,
            publish,
            Appends::Each,
        ),
        run(
            "redis-benchmark SET",
            Shape::Connections,
            vec!["-t".to_owned(), "set".to_owned()],
            Appends::Unchecked,
        ),
        run(
            "redis-benchmark XADD MAXLEN ~",
            Shape::Connections,
            xadd,
            Appends::Each,
        ),
        run(
            "redis-benchmark PUBLISH",
            Shape::Connections,
            vec!["PUBLISH".to_owned(), topic.redis_channel(), change],
            Appends::Unchecked,
        ),
    ]);
    runs
}

/// Loads the write script into Redis's cache; its SHA1 is what `EVALSHA` names.
pub(crate) async fn load_script(admin: &mut MultiplexedConnection) -> anyhow::Result<String> {
    redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(WRITE_SCRIPT)
        .query_async(admin)
        .await
        .context("SCRIPT LOAD")
}

/// Runs each of `runs` on an emptied Redis, in order.
pub(crate) async fn run_all(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    runs: impl IntoIterator<Item = BenchmarkRun>,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for run in runs {
        rows.push(redis_benchmark(admin, redis, args, &run).await?);
    }
    Ok(rows)
}

/// The `redis-benchmark` mode: the script's single create and publish, and baselines.
pub(crate) async fn redis_benchmarks(
    admin: &mut MultiplexedConnection,
    redis: &RedisServer,
    args: &Args,
    topic: &Topic,
) -> anyhow::Result<Vec<Row>> {
    let sha = load_script(admin).await?;
    run_all(admin, redis, args, benchmark_runs(&sha, topic)).await
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
    fn script_arguments_have_the_calling_convention() {
        let topic = Topic::new("T").unwrap();
        let item = [ITEM_AUTO, "", "{}", "", ""];
        let plain = evalsha("sha", &topic, None, &[item]);
        assert_eq!(plain.len(), 3 + 5 + 8 + ITEM_ARGS);
        assert_eq!(plain[7], topic.raw_key());
        assert_eq!((plain[12].as_str(), plain[13].as_str()), ("", "0"));
        let keyed = evalsha("sha", &topic, Some("k"), &[item, item, item]);
        assert_eq!(keyed.len(), 3 + 5 + 8 + 3 * ITEM_ARGS);
        assert_eq!(keyed[7], topic.idempotency_key("", "k"));
        assert_eq!(keyed[12], FINGERPRINT);
        assert_eq!(keyed[13], "86400000");
        assert_eq!(keyed[15], "3");
        assert_eq!(&keyed[16..21], item.map(str::to_owned).as_slice());
        assert_eq!(RANDOM_IDEMPOTENCY_KEY.len() - "__rand_int__".len() + 12, 36);
    }
}
