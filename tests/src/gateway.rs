//! The gateway as the tests start it: [`Gateway`], the real `gateway::run` in this process
//! on `127.0.0.1:0` (embedded, Redis or cluster mode), and [`GatewayProcess`], the real
//! `gateway` binary as a child process (for `kill -9`, RSS, fleets that ask each other
//! through `GATEWAY_PEERS`, metrics), plus the `/readyz` probes both wait on. Reading a
//! stream is [`crate::SseClient`]'s job.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{RedisCluster, free_port, http, poll_until, within, workspace_binary};

fn single(redis_url: Option<&str>) -> Option<publisher::RedisTarget> {
    redis_url.map(|url| publisher::RedisTarget::Single(url.to_owned()))
}

/// The `status` of a gateway's `/readyz` answer (`ready`, `degraded`, `unavailable`,
/// `draining`) with its HTTP status; `(0, "")` if it does not answer.
pub async fn ready_state(client: &reqwest::Client, url: &str) -> (u16, String) {
    let Ok(res) = client.get(url).send().await else {
        return (0, String::new());
    };
    let code = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap_or_default();
    (code, body["status"].as_str().unwrap_or("").to_owned())
}

/// Whether a gateway's `/readyz` says it serves fully: Redis answers and every
/// subscription is confirmed (not merely `degraded`, which is also a 200).
pub async fn is_ready(client: &reqwest::Client, url: &str) -> bool {
    ready_state(client, url).await == (200, "ready".to_owned())
}

/// A real gateway server (`gateway::run`) on `127.0.0.1:0`. Stopped on drop.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), gateway::RunError>>>,
}

impl Gateway {
    /// A pod of a fleet on `redis_url`.
    pub async fn start(redis_url: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(redis_url), |_| {}).await
    }

    /// `redis_url: None` is the embedded single-node mode.
    pub async fn start_with(
        redis_url: Option<&str>,
        tweak: impl FnOnce(&mut gateway::Config),
    ) -> anyhow::Result<Self> {
        Self::start_configured(single(redis_url), gateway::Config::embedded(), tweak).await
    }

    /// A pod in cluster mode (`GATEWAY_REDIS_CLUSTER`) on `cluster`'s seed nodes.
    pub async fn start_cluster(cluster: &RedisCluster) -> anyhow::Result<Self> {
        let target = publisher::RedisTarget::Cluster(cluster.seed_urls());
        Self::start_configured(Some(target), gateway::Config::embedded(), |_| {}).await
    }

    /// Starts with `GATEWAY_*` settings read as the binary reads its environment.
    pub async fn start_env(
        redis_url: Option<&str>,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let env = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let config = gateway::Config::load(["gateway"].map(Into::into), &env)?;
        Self::start_configured(single(redis_url), config, |_| {}).await
    }

    async fn start_configured(
        redis: Option<publisher::RedisTarget>,
        mut config: gateway::Config,
        tweak: impl FnOnce(&mut gateway::Config),
    ) -> anyhow::Result<Self> {
        config.redis = redis;
        tweak(&mut config);
        let fleet = config.redis.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway::run(config, listener, shutdown.clone()));
        let gateway = Self {
            addr,
            shutdown,
            task: Some(task),
        };
        if fleet {
            let client = http();
            let url = gateway.url("/readyz");
            poll_until("gateway ready", Duration::from_secs(10), || async {
                is_ready(&client, &url).await.then_some(())
            })
            .await?;
        }
        Ok(gateway)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("gateway to stop", task).await???;
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `gateway` binary next to this test executable (`target/<profile>/gateway`), built
/// first if `cargo test` did not build it; or `GATEWAY_BIN`, to run a test against another
/// build (an A/B of two commits).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("GATEWAY_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => workspace_binary("gateway"),
    }
}

/// A real `gateway` process on a loopback port, for faults an in-process server cannot
/// show (`kill -9`, RSS). Killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    drain: JoinHandle<()>,
}

impl GatewayProcess {
    /// Starts a pod of the fleet on `redis_url` with extra `GATEWAY_*` settings, and waits
    /// until it is ready.
    pub async fn start(redis_url: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut env = vec![("GATEWAY_REDIS_URL", redis_url)];
        env.extend_from_slice(settings);
        Self::start_env(&env).await
    }

    /// Starts a pod in cluster mode on `cluster`'s seed nodes, with extra settings.
    pub async fn start_cluster(
        cluster: &RedisCluster,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let seeds = cluster.seed_list();
        let mut env = vec![("GATEWAY_REDIS_CLUSTER", seeds.as_str())];
        env.extend_from_slice(settings);
        Self::start_env(&env).await
    }

    /// Starts a pod with exactly these `GATEWAY_*` settings (plus a loopback listener).
    pub async fn start_env(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut cmd = Command::new(gateway_binary()?);
        cmd.env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in settings {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().context("spawn gateway")?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let addr = within("gateway listening line", async {
            while let Some(line) = lines.next_line().await? {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(addr) = entry["addr"].as_str() {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            bail!("gateway exited before listening")
        })
        .await??;
        // `SHOW_GATEWAY_LOGS=1` copies every pod's log to the test's output.
        let show = std::env::var_os("SHOW_GATEWAY_LOGS").is_some();
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if show {
                    eprintln!("[gateway {addr}] {line}");
                }
            }
        });
        let process = Self { child, addr, drain };
        process.wait_ready().await?;
        Ok(process)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The HTTP status of `/readyz` (0 if it does not answer).
    pub async fn ready_status(&self) -> u16 {
        self.ready_state().await.0
    }

    /// `/readyz`'s HTTP status and `status` field.
    pub async fn ready_state(&self) -> (u16, String) {
        ready_state(&http(), &self.url("/readyz")).await
    }

    /// Waits until `/readyz` says `ready` (Redis answers, subscriptions confirmed).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        poll_until("gateway ready", Duration::from_secs(20), || async {
            is_ready(&http(), &self.url("/readyz")).await.then_some(())
        })
        .await
    }

    /// One pod per entry of `each` (its `GATEWAY_*` settings, Redis included), each on a
    /// port chosen up front and each naming all of them as `GATEWAY_PEERS`, so a pod that
    /// cannot reach Redis asks the others whether they can.
    pub async fn fleet(each: &[Vec<(&str, &str)>]) -> anyhow::Result<Vec<Self>> {
        let ports = each
            .iter()
            .map(|_| free_port())
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let peers = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut pods = Vec::new();
        for (port, settings) in ports.into_iter().zip(each) {
            let listen = format!("127.0.0.1:{port}");
            let mut env = vec![
                ("GATEWAY_LISTEN", listen.as_str()),
                ("GATEWAY_PEERS", peers.as_str()),
            ];
            env.extend_from_slice(settings);
            pods.push(Self::start_env(&env).await?);
        }
        Ok(pods)
    }

    /// The value of metric `name` (a series without labels) on `/metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = within("metrics", async {
            http().get(self.url("/metrics")).send().await?.text().await
        })
        .await??;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .with_context(|| format!("no metric {name}"))
    }

    /// Resident memory in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("process gone")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?)
    }

    /// `kill -9`: no drain, no goodbye.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        within("gateway to die", self.child.wait()).await??;
        self.drain.abort();
        Ok(())
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.drain.abort();
    }
}
