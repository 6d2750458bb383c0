//! Running and checking one measured path: C workers with one operation in flight each,
//! a warm-up, an emptied Redis, and the check that Redis did exactly what was counted.
//! It does not know which path it measures (`main.rs`) or run `redis-benchmark`
//! (`benchmark.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;
use tokio::task::JoinSet;

use crate::Args;

/// Untimed operations before each measured run: connects, loads the script into Redis's
/// cache, fills the HTTP connection pool.
const WARMUP_OPS: usize = 1_000;

/// One line of the result table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) mode: String,
    pub(crate) ops: usize,
    /// Operations in flight: `64`, or `1x64` for one pipelining connection.
    pub(crate) concurrency: String,
    pub(crate) seconds: f64,
    pub(crate) rate: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// CPU time `redis-server` spent during the run (user + system), in seconds.
    pub(crate) redis_cpu: f64,
}

impl Row {
    /// Redis's CPU time per operation (per record for a batch).
    pub(crate) fn redis_us_per_op(&self) -> f64 {
        self.redis_cpu * 1e6 / self.ops as f64
    }
}

/// What [`drive`] measured.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) elapsed: Duration,
    /// Per-operation latencies, sorted.
    latencies: Vec<Duration>,
}

impl Measured {
    /// The row of a run whose every call wrote `items` records: it counts records, and
    /// its latencies are per call.
    fn row(&self, mode: &str, concurrency: usize, items: usize, redis_cpu: f64) -> Row {
        let ops = self.latencies.len() * items;
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
pub(crate) async fn drive<F, Fut>(ops: usize, concurrency: usize, op: F) -> anyhow::Result<Measured>
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

/// Runs a warm-up, empties Redis and zeroes its counters, then measures `op(0..calls)`
/// and checks it. Each call writes `items` records (1, or an array's length), so
/// `--ops` records are `--ops / items` calls (rounded up); the row counts records.
pub(crate) async fn measure<F, Fut>(
    admin: &mut MultiplexedConnection,
    args: &Args,
    items: usize,
    mode: &str,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let calls = args.ops.div_ceil(items);
    // At least one call per worker, so every HTTP connection of the pool is open.
    let warmup = WARMUP_OPS.div_ceil(items).max(args.concurrency).min(calls);
    let op = Arc::new(op);
    let warm = Arc::clone(&op);
    drive(warmup, args.concurrency, move |i| warm(i))
        .await
        .with_context(|| format!("{mode}: warm-up"))?;
    reset(admin).await?;
    let cpu = redis_cpu(admin).await?;
    let measured = drive(calls, args.concurrency, move |i| op(i))
        .await
        .with_context(|| format!("{mode}: measured run"))?;
    let cpu = redis_cpu(admin).await? - cpu;
    check(admin, mode, calls * items).await?;
    Ok(measured.row(mode, args.concurrency, items, cpu))
}

/// Empties Redis and zeroes its command statistics (the loaded script stays cached).
pub(crate) async fn reset(admin: &mut MultiplexedConnection) -> anyhow::Result<()> {
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

/// One section of `INFO`.
pub(crate) async fn info(
    admin: &mut MultiplexedConnection,
    section: &str,
) -> anyhow::Result<String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(admin)
        .await
        .with_context(|| format!("INFO {section}"))
}

/// A number `name:N` from an `INFO` section's text.
pub(crate) fn info_field<T: std::str::FromStr>(info: &str, name: &str) -> anyhow::Result<T> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("INFO has no number {name}"))
}

/// Seconds of CPU `redis-server` has used so far (`INFO cpu`, user + system).
pub(crate) async fn redis_cpu(admin: &mut MultiplexedConnection) -> anyhow::Result<f64> {
    let info = info(admin, "cpu").await?;
    Ok(info_field::<f64>(&info, "used_cpu_user")? + info_field::<f64>(&info, "used_cpu_sys")?)
}

/// `CONFIG SET name value`.
pub(crate) async fn config_set(
    admin: &mut MultiplexedConnection,
    name: &str,
    value: &str,
) -> anyhow::Result<()> {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(admin)
        .await
        .with_context(|| format!("CONFIG SET {name} {value}"))
}

/// Stream appends and error replies since the last [`reset`].
pub(crate) async fn appends_and_errors(
    admin: &mut MultiplexedConnection,
) -> anyhow::Result<(usize, usize)> {
    let commands = info(admin, "commandstats").await?;
    let xadds = commands
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_xadd:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    let errors = info_field(&info(admin, "stats").await?, "total_error_replies")?;
    Ok((xadds, errors))
}

/// Fails unless Redis ran exactly `ops` stream appends and answered no errors since the
/// last [`reset`].
pub(crate) async fn check(
    admin: &mut MultiplexedConnection,
    mode: &str,
    ops: usize,
) -> anyhow::Result<()> {
    let (xadds, errors) = appends_and_errors(admin).await?;
    if xadds != ops || errors != 0 {
        bail!("{mode}: Redis ran {xadds} XADDs for {ops} operations, {errors} error replies");
    }
    Ok(())
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// The result table, in Markdown. `redis µs/op` is `redis-server`'s CPU time per
/// operation; `redis busy` is that CPU time over the run's duration (100% = one core, the
/// most single-threaded Redis can use).
pub(crate) fn print_table(rows: &[Row]) {
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
            row.redis_us_per_op(),
            100.0 * row.redis_cpu / row.seconds,
        );
    }
}

/// Each pair's first row as a share of the second's rate (both must have run), with
/// Redis's CPU per operation for both.
pub(crate) fn print_ratios(rows: &[Row], pairs: &[(String, String)]) {
    let find = |mode: &str| rows.iter().find(|r| r.mode == mode);
    for (a, b) in pairs {
        if let (Some(a), Some(b)) = (find(a), find(b)) {
            println!(
                "{}: {:.0}% of {} (redis µs/op {:.1} vs {:.1})",
                a.mode,
                100.0 * a.rate / b.rate,
                b.mode,
                a.redis_us_per_op(),
                b.redis_us_per_op(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let m = Measured {
            elapsed: Duration::from_secs(1),
            latencies: (1..=100).map(Duration::from_millis).collect(),
        };
        let row = m.row("x", 1, 1, 0.0);
        assert_eq!(row.ops, 100);
        assert_eq!(m.row("x", 1, 10, 0.0).ops, 1000);
        assert_eq!(row.p50_ms, Some(51.0));
        assert_eq!(row.p99_ms, Some(99.0));
    }
}
