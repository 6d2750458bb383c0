//! The system-test harness: real `redis-server` children and real servers on port 0.
//!
//! - [`RedisServer`]: a `redis-server` on a free port, started and awaited on its
//!   "Ready to accept connections" line, killed on drop; restartable on the same port and
//!   data directory (for AOF persistence tests).
//! - [`Publisher`]: `publisher::run` on `127.0.0.1:0`, stopped on drop.
//! - [`within`]: every network await in a test goes through it, so failures are fast.

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

/// A `redis-server` child process on a free loopback port. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    drain: Option<JoinHandle<()>>,
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
                child: None,
                drain: None,
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
                // Keep reading the log so Redis never blocks on a full pipe.
                self.drain = Some(tokio::spawn(async move {
                    while let Ok(Some(_)) = lines.next_line().await {}
                }));
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let _ = child.kill().await;
                bail!("redis-server not ready within 10s on port {}", self.port)
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid URL")
    }

    /// A connection for checking what the server holds.
    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        within(
            "connect to redis",
            self.client().get_multiplexed_async_connection(),
        )
        .await?
        .context("connect")
    }

    /// SIGKILL: no shutdown, no final save. What survives is what AOF already had.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            within("redis-server to die", child.wait()).await??;
        }
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
        Ok(())
    }

    /// Starts again on the same port and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if let Some(drain) = self.drain.take() {
            drain.abort();
        }
    }
}

/// `redis-server` from `REDIS_SERVER` or the `PATH`.
fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

fn free_port() -> anyhow::Result<u16> {
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
        let env = [("PUBLISHER_REDIS_URL".to_owned(), redis_url.to_owned())].into();
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

/// An HTTP client whose every request fails after [`STEP`] instead of hanging.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(STEP)
        .build()
        .expect("HTTP client builds")
}
