//! `redis-benchmark` against the same Redis: the write script (`EVALSHA`, loaded with
//! `SCRIPT LOAD`) with the same keys and arguments the library sends, and plain commands
//! for scale. It does not drive our own paths (`measure.rs`).

use anyhow::{Context, bail};
use proto::Topic;
use proto::script::{ITEM_AUTO, ITEM_PUBLISH, WRITE_SCRIPT};
use redis::aio::MultiplexedConnection;
use system_tests::RedisServer;

use crate::measure::{Row, check, redis_cpu, reset};
use crate::{Args, SCRIPT_BODY, fixed_change};

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

pub(crate) async fn redis_benchmarks(
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
}
