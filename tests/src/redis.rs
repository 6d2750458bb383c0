//! [`RedisServer`]: one `redis-server` child on a free loopback port, started and awaited
//! on its "Ready to accept connections" line, killed on drop, restartable on the same port
//! and data directory (AOF persistence tests). Also the pieces [`crate::cluster`] builds its
//! six nodes from: [`start_redis`], [`RedisChild`] and the binary's path. It does not own
//! clusters (`cluster.rs`) or anything that talks to the gateway.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::{STEP, free_port, within};

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

    /// Holds every write (scripts included) inside Redis, for up to 10 s, until
    /// [`RedisServer::release_writes`]: `CLIENT PAUSE 10000 WRITE`. Reads go on.
    pub async fn hold_writes(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let mut pause = redis::cmd("CLIENT");
        pause.arg("PAUSE").arg(10_000).arg("WRITE");
        Ok(within("CLIENT PAUSE", pause.query_async::<()>(&mut conn)).await??)
    }

    /// Waits until a write script has reached Redis and is held there by
    /// [`RedisServer::hold_writes`] (a client blocked on `EVALSHA`/`EVAL`).
    pub async fn wait_for_held_script(&self) -> anyhow::Result<()> {
        let conn = self.connection().await?;
        crate::poll_until("a script held in Redis", STEP, || {
            let mut conn = conn.clone();
            async move {
                let list: String = redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                list.lines()
                    .any(|client| {
                        let field = |name: &str| {
                            client
                                .split(' ')
                                .find_map(|f| f.strip_prefix(name).map(str::to_owned))
                        };
                        field("flags=").is_some_and(|f| f.contains('b'))
                            && field("cmd=").is_some_and(|c| c.starts_with("eval"))
                    })
                    .then_some(())
            }
        })
        .await
    }

    /// Lets the writes [`RedisServer::hold_writes`] held run: `CLIENT UNPAUSE`.
    pub async fn release_writes(&self) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        let mut unpause = redis::cmd("CLIENT");
        unpause.arg("UNPAUSE");
        Ok(within("CLIENT UNPAUSE", unpause.query_async::<()>(&mut conn)).await??)
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
pub(crate) fn redis_server_binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// The gateways' pub/sub channels on the node `conn` talks to: `PUBSUB CHANNELS cs:*`, or
/// `PUBSUB SHARDCHANNELS cs:*` for a cluster's sharded ones. Bounded by [`STEP`].
pub async fn gateway_channels(
    conn: &mut redis::aio::MultiplexedConnection,
    sharded: bool,
) -> anyhow::Result<Vec<String>> {
    let which = if sharded { "SHARDCHANNELS" } else { "CHANNELS" };
    let list = within(
        "PUBSUB",
        redis::cmd("PUBSUB")
            .arg(which)
            .arg("cs:*")
            .query_async(conn),
    )
    .await??;
    Ok(list)
}
