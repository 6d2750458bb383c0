//! The system-test harness: real `redis-server` children and real servers on port 0.
//!
//! - [`RedisServer`]: a `redis-server` on a free port, started and awaited on its
//!   "Ready to accept connections" line, killed on drop; restartable on the same port and
//!   data directory (for AOF persistence tests).
//! - [`cluster::RedisCluster`]: a Redis Cluster of 3 masters and 3 replicas.
//! - [`Publisher`]: `publisher::run` on `127.0.0.1:0`, stopped on drop.
//! - [`Blackhole`]: a TCP proxy that can go silent (a partition with no FIN or RST).
//! - [`traffic`]: a writer that creates records until stopped, and the exactly-once check
//!   of every client against the stream.
//! - [`within`]: every network await in a test goes through it, so failures are fast.

pub mod blackhole;
pub mod cluster;
pub mod traffic;

pub use blackhole::Blackhole;
pub use cluster::RedisCluster;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// Options for [`RedisServer::start_with`].
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// AOF persistence with `appendfsync always`: every acknowledged write survives a kill.
    pub appendonly: bool,
}

/// A running `redis-server` child and the task that keeps reading its log (so Redis never
/// blocks on a full pipe). Killed on drop.
#[derive(Debug)]
pub(crate) struct RedisChild {
    child: Child,
    drain: JoinHandle<()>,
}

impl RedisChild {
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(crate) async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        within("redis-server to die", self.child.wait()).await??;
        Ok(())
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.drain.abort();
    }
}

/// Spawns a `redis-server` command (its arguments set) and waits for its "Ready to accept
/// connections" line.
pub(crate) async fn start_redis(mut cmd: Command, port: u16) -> anyhow::Result<RedisChild> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("spawn redis-server (is it installed? scripts/test installs it)")?;
    let stdout = child.stdout.take().context("redis stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await? {
            if line.contains("Ready to accept connections") {
                return Ok(());
            }
            seen.push(line);
        }
        bail!(
            "redis-server exited before it was ready:\n{}",
            seen.join("\n")
        )
    })
    .await;
    match ready {
        Ok(Ok(())) => {
            let drain =
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(RedisChild { child, drain })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = child.kill().await;
            bail!("redis-server not ready within 10s on port {port}")
        }
    }
}

/// A `redis-server` child process on a free loopback port. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<RedisChild>,
    port: u16,
    options: RedisOptions,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a Redis without persistence.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RedisOptions::default()).await
    }

    pub async fn start_with(options: RedisOptions) -> anyhow::Result<Self> {
        let mut last_error = None;
        // The free port can be taken between our probe and Redis's bind: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let dir = tempfile::tempdir()?;
            let mut server = Self {
                process: None,
                port,
                options: options.clone(),
                dir,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--loglevel")
            .arg("notice");
        if self.options.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        self.process = Some(start_redis(cmd, self.port).await?);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs (for `/proc` CPU and memory readings).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref()?.pid()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    /// A connection for checking what the server holds. Replies may be large (a whole
    /// stream), so each may take up to [`STEP`], not redis-rs's default 500 ms.
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(STEP));
        within(
            "connect to redis",
            self.client()
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?
        .context("connect")
    }

    /// SIGKILL: no shutdown, no final save. What survives is what AOF already had.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        match self.process.take() {
            Some(process) => process.kill().await,
            None => Ok(()),
        }
    }

    /// Starts again on the same port and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }
}

/// `redis-server` from `REDIS_SERVER` or the `PATH`.
fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// A loopback port nobody listens on right now (it may be taken before it is used).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A real publisher server (`publisher::run`) on `127.0.0.1:0`. Stopped on drop.
#[derive(Debug)]
pub struct Publisher {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), publisher::RunError>>>,
}

impl Publisher {
    /// Starts with default settings against `redis_url`.
    pub async fn start(redis_url: &str) -> anyhow::Result<Self> {
        Self::start_with(redis_url, |_| {}).await
    }

    /// Starts with default settings changed by `tweak`.
    pub async fn start_with(
        redis_url: &str,
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        Self::start_configured(redis_url, &[], tweak).await
    }

    /// Starts with `PUBLISHER_*` settings read as the binary reads its environment.
    pub async fn start_env(redis_url: &str, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_configured(redis_url, settings, |_| {}).await
    }

    /// Starts in cluster mode (`PUBLISHER_REDIS_CLUSTER`) on `cluster`'s seed nodes.
    pub async fn start_cluster(cluster: &RedisCluster) -> anyhow::Result<Self> {
        let env = [("PUBLISHER_REDIS_CLUSTER", cluster.seed_list())];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self::start_from(&env, |_| {}).await
    }

    async fn start_configured(
        redis_url: &str,
        settings: &[(&str, &str)],
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        let mut env = vec![("PUBLISHER_REDIS_URL", redis_url)];
        env.extend_from_slice(settings);
        Self::start_from(&env, tweak).await
    }

    async fn start_from(
        settings: &[(&str, &str)],
        tweak: impl FnOnce(&mut publisher::Config),
    ) -> anyhow::Result<Self> {
        let mut env = std::collections::HashMap::<String, String>::new();
        env.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let mut config = publisher::Config::load(["publisher"].map(Into::into), &env)?;
        tweak(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher::run(config, listener, shutdown.clone()));
        Ok(Self {
            addr,
            shutdown,
            task: Some(task),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels and waits for the server to stop.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within("publisher to stop", task).await???;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

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

/// One parsed SSE block (the lines up to a blank line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: Option<String>,
    /// The block's exact bytes, blank line included.
    pub raw: String,
}

impl Frame {
    /// A frame carrying an event (not a comment or a bare `retry:`).
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

/// A minimal SSE reader over a real HTTP response, every read bounded by [`STEP`].
pub struct SseClient {
    pub response_headers: reqwest::header::HeaderMap,
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    /// Every byte received so far, for exact-bytes checks.
    pub received: String,
}

impl std::fmt::Debug for SseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseClient")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl SseClient {
    /// `GET url` as EventSource would (`Accept: text/event-stream`, optional `Last-Event-ID`).
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        let mut req = stream_http().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Self::open(req).await
    }

    /// Sends `req` (built on [`stream_http`], with whatever headers a test needs) and
    /// expects a 200 stream.
    pub async fn open(req: reqwest::RequestBuilder) -> anyhow::Result<Self> {
        let res = within("SSE connect", req.send()).await??;
        if res.status() != 200 {
            let status = res.status();
            let url = res.url().clone();
            let body = res.text().await.unwrap_or_default();
            bail!("SSE connect to {url}: {status}: {body}");
        }
        Ok(Self {
            response_headers: res.headers().clone(),
            body: Box::pin(res.bytes_stream()),
            buffer: String::new(),
            received: String::new(),
        })
    }

    /// The next block; `None` when the server ended the response.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                return Ok(Some(parse_frame(raw)));
            }
            match within("next SSE bytes", self.body.next()).await? {
                Some(chunk) => {
                    let text = String::from_utf8(chunk?.to_vec())?;
                    self.received.push_str(&text);
                    self.buffer.push_str(&text);
                }
                None => return Ok(None),
            }
        }
    }

    /// The next frame that carries an event, skipping comments and `retry:`.
    pub async fn next_event(&mut self) -> anyhow::Result<Frame> {
        loop {
            match self.next_frame().await? {
                Some(frame) if frame.is_event() => return Ok(frame),
                Some(_) => {}
                None => bail!("stream ended while waiting for an event"),
            }
        }
    }
}

fn parse_frame(raw: String) -> Frame {
    let mut frame = Frame::default();
    for line in raw.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            frame.comment = Some(comment.trim_start().to_owned());
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "id" => frame.id = Some(value.to_owned()),
            "event" => frame.event = Some(value.to_owned()),
            "data" => frame.data = Some(value.to_owned()),
            "retry" => frame.retry = Some(value.to_owned()),
            _ => {}
        }
    }
    frame.raw = raw;
    frame
}

/// The `gateway` binary next to this test executable (`target/<profile>/gateway`), built
/// first if `cargo test` did not build it.
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("gateway")
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

/// What a [`Watcher`] recorded: every `data` and `reset` frame, in arrival order.
#[derive(Debug, Default)]
pub struct Watched {
    pub frames: Vec<Frame>,
    /// How many times the stream ended or failed and was reopened.
    pub reconnects: usize,
}

impl Watched {
    /// The ids of the `data` events.
    pub fn data_ids(&self) -> Vec<String> {
        self.frames
            .iter()
            .filter(|f| f.event.as_deref() == Some("data"))
            .filter_map(|f| f.id.clone())
            .collect()
    }

    pub fn resets(&self) -> Vec<&Frame> {
        self.frames
            .iter()
            .filter(|f| f.event.as_deref() == Some("reset"))
            .collect()
    }
}

/// A client that behaves like EventSource: it follows a change stream, and whenever the
/// stream ends or fails it reconnects (to the next of `urls`, as a Service would send it
/// elsewhere) with `Last-Event-ID`. It records what it receives until stopped.
#[derive(Debug)]
pub struct Watcher {
    stop: CancellationToken,
    last_rx: tokio::sync::watch::Receiver<Option<String>>,
    task: JoinHandle<anyhow::Result<Watched>>,
}

impl Watcher {
    /// Connects once (so the caller knows it is positioned), then follows in the background.
    pub async fn start(urls: Vec<String>, first: usize) -> anyhow::Result<Self> {
        let client = SseClient::connect(&urls[first % urls.len()], None).await?;
        let (last_tx, last_rx) = tokio::sync::watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(urls, first, client, last_tx, stop.clone()));
        Ok(Self {
            stop,
            last_rx,
            task,
        })
    }

    /// Waits until the last id received is `id`.
    pub async fn wait_for(&mut self, id: &str, deadline: Duration) -> anyhow::Result<()> {
        let reached = tokio::time::timeout(
            deadline,
            self.last_rx.wait_for(|last| last.as_deref() == Some(id)),
        )
        .await
        .map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => bail!("watcher stopped before event {id}"),
            Err(_) => bail!(
                "no event {id} within {deadline:?}; last was {:?}",
                *self.last_rx.borrow()
            ),
        }
    }

    pub async fn stop(self) -> anyhow::Result<Watched> {
        self.stop.cancel();
        within("watcher to stop", self.task).await??
    }
}

async fn follow(
    urls: Vec<String>,
    mut next: usize,
    first: SseClient,
    last_tx: tokio::sync::watch::Sender<Option<String>>,
    stop: CancellationToken,
) -> anyhow::Result<Watched> {
    let mut watched = Watched::default();
    let mut client = Some(first);
    // EventSource waits `retry` between attempts; a short tick keeps a refused connect
    // from spinning.
    let mut retry = tokio::time::interval(Duration::from_millis(50));
    loop {
        let mut current = match client.take() {
            Some(c) => c,
            None => {
                retry.tick().await;
                let last = last_tx.borrow().clone();
                let connect = SseClient::connect(&urls[next % urls.len()], last.as_deref());
                tokio::select! {
                    connected = connect => match connected {
                        Ok(c) => c,
                        Err(_) => {
                            next += 1;
                            continue;
                        }
                    },
                    () = stop.cancelled() => return Ok(watched),
                }
            }
        };
        loop {
            let frame = tokio::select! {
                frame = current.next_frame() => frame,
                () = stop.cancelled() => return Ok(watched),
            };
            match frame {
                Ok(Some(frame)) => {
                    if matches!(frame.event.as_deref(), Some("data" | "reset")) {
                        let id = frame.id.clone();
                        watched.frames.push(frame);
                        if id.is_some() {
                            last_tx.send_replace(id);
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        watched.reconnects += 1;
        next += 1;
    }
}

/// A real `gateway` or `publisher` process whose log lines are kept, for checks on what
/// it writes (secrets that must never appear). Killed on drop.
#[derive(Debug)]
pub struct LoggedProcess {
    child: Child,
    pub addr: SocketAddr,
    lines: tokio::sync::watch::Receiver<Vec<String>>,
    drain: JoinHandle<()>,
}

impl LoggedProcess {
    /// Starts workspace binary `name` on a loopback port with `settings` as its
    /// environment (plus `RUST_LOG` from `log_level`), and waits for its listening line.
    pub async fn start(
        name: &str,
        log_level: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let prefix = name.to_uppercase();
        let mut cmd = Command::new(workspace_binary(name)?);
        cmd.env(format!("{prefix}_LISTEN"), "127.0.0.1:0")
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in settings {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let mut reader = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (lines_tx, lines) = tokio::sync::watch::channel(Vec::new());
        let addr = within("listening line", async {
            while let Some(line) = reader.next_line().await? {
                let entry = serde_json::from_str::<serde_json::Value>(&line).ok();
                lines_tx.send_modify(|l| l.push(line));
                if let Some(addr) = entry.as_ref().and_then(|e| e["addr"].as_str()) {
                    return Ok(addr.parse::<SocketAddr>()?);
                }
            }
            bail!(
                "{name} exited before listening:\n{}",
                lines_tx.borrow().join("\n")
            )
        })
        .await??;
        let drain = tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                lines_tx.send_modify(|l| l.push(line));
            }
        });
        Ok(Self {
            child,
            addr,
            lines,
            drain,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every line logged so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// Waits until some logged line satisfies `found`.
    pub async fn wait_for_log(
        &mut self,
        what: &str,
        found: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        within(
            what,
            self.lines.wait_for(|lines| lines.iter().any(|l| found(l))),
        )
        .await?
        .map(|_| ())
        .with_context(|| format!("process exited before logging {what}"))
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.drain.abort();
    }
}
