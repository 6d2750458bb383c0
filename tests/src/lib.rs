//! The system-test harness: real `redis-server` children and real servers on port 0.
//! One module per thing it starts; everything a test uses is re-exported here.
//!
//! - [`RedisServer`] (`redis.rs`): a `redis-server` on a free port, started and awaited on
//!   its "Ready to accept connections" line, killed on drop; restartable on the same port
//!   and data directory (for AOF persistence tests).
//! - [`cluster::RedisCluster`]: a Redis Cluster of 3 masters and 3 replicas.
//! - [`Publisher`] (`publisher.rs`): `publisher::run` on `127.0.0.1:0`, stopped on drop.
//! - [`Gateway`] and [`GatewayProcess`] (`gateway.rs`): `gateway::run` on `127.0.0.1:0`,
//!   and the `gateway` binary as a child process (fleets, `kill -9`, metrics).
//! - [`SseClient`] (`sse.rs`): a minimal SSE reader whose every read is bounded.
//! - [`Watcher`] (`watcher.rs`): an EventSource-like client that reconnects with
//!   `Last-Event-ID` and records what it got.
//! - [`LoggedProcess`] (`logged.rs`): a `gateway` or `publisher` child whose log is kept.
//! - [`Blackhole`]: a TCP proxy that can go silent (a partition with no FIN or RST).
//! - [`traffic`]: a writer that creates records until stopped, and the exactly-once check
//!   of every client against the stream.
//! - [`within`]: every network await in a test goes through it, so failures are fast.
//!
//! The benchmarks and the load generator are the `bench` crate (`bench/`); they use this
//! harness, never the other way round.

pub mod blackhole;
pub mod cluster;
mod gateway;
mod logged;
mod publisher;
mod redis;
mod sse;
pub mod traffic;
mod watcher;

pub use blackhole::Blackhole;
pub use cluster::RedisCluster;
pub use gateway::{Gateway, GatewayProcess, gateway_binary, is_ready, ready_state};
pub use logged::LoggedProcess;
pub use publisher::Publisher;
pub use redis::{RedisOptions, RedisServer, gateway_channels};
pub use sse::{Frame, SseClient};
pub use watcher::{Watched, Watcher};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long any single network step of a test may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// Awaits `fut` for at most `STEP`, failing with `what` instead of hanging.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, fut)
        .await
        .with_context(|| format!("timed out after {STEP:?}: {what}"))
}

/// Polls `check` until it returns `Some`, at most `deadline` long. For state that has no
/// event to wait on (a process coming back). Each poll is itself bounded.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let until = tokio::time::Instant::now() + deadline;
    loop {
        tick.tick().await;
        if let Some(value) = tokio::time::timeout(STEP, check()).await.ok().flatten() {
            return Ok(value);
        }
        if tokio::time::Instant::now() > until {
            bail!("gave up after {deadline:?}: {what}");
        }
    }
}

/// A loopback port nobody listens on right now (it may be taken before it is used).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// An HTTP client whose every request fails after [`STEP`] instead of hanging.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("HTTP client builds")
}

/// An HTTP client for streams: connecting is bounded by [`STEP`], the response is not
/// (each read is bounded by the caller, e.g. [`SseClient::next_frame`]).
pub fn stream_http() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(STEP)
        .build()
        .expect("HTTP client builds")
}

/// A workspace binary (`gateway` or `publisher`) next to this test executable, built
/// first if `cargo test` did not build it.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .context("test executable has no target dir")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", name, "--bin", name])
            .status()?;
        anyhow::ensure!(status.success(), "cargo build -p {name} failed");
    }
    Ok(binary)
}
