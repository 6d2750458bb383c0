//! Peer SSE servers for side-by-side load runs (`loadgen --target nchan|centrifugo`):
//! Nchan (nginx with the Nchan module, Redis-backed) and Centrifugo v5 (unidirectional SSE,
//! Redis engine), each a child process on a free loopback port, using the run's own
//! `redis-server`, configured at run time in a temporary directory.
//!
//! This module owns starting them, waiting until they answer, their publish API and
//! stopping them. It does not own their code or binaries: nginx and the module come from
//! Debian packages, Centrifugo is built by `scripts/bench-peers` into `~/.cache`; nothing
//! of theirs is in this repository.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use system_tests::within;
use tokio::process::{Child, Command};

use crate::load::{TOPIC_SLOT, child_pids, free_port};

/// The channel every client follows, or with several topics the prefix of each channel's
/// name (`load0`, `load1`, ..; see [`crate::load::topic_name`]).
pub const CHANNEL: &str = "load";
/// Longest wait for a peer to answer its readiness URL.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Centrifugo's server API key (loopback only, a fresh process per run).
const API_KEY: &str = "bench";
/// Files one process may hold here; nginx workers are told so, and keep some spare.
const OPEN_FILES: usize = 20_000;
/// Messages Nchan keeps per channel. Subscribers get messages as they are published;
/// the buffer only serves late readers, but a full buffer evicts the oldest message,
/// so it is sized above any step's event count.
const NCHAN_BUFFER: u32 = 100_000;
/// Successful probe publishes in a row before Nchan counts as ready (see `wait_ready`).
const NCHAN_PROBES: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Nchan,
    Centrifugo,
}

/// A peer server child process. Stopped on drop (nginx's master first, so it takes its
/// workers down with it).
#[derive(Debug)]
pub struct Peer {
    pub kind: PeerKind,
    pub addr: SocketAddr,
    child: Child,
    pid: u32,
    /// Config, pid file and logs; removed on drop.
    dir: tempfile::TempDir,
    /// Publishes over the peer's HTTP API; every request fails after `STEP`.
    http: reqwest::Client,
}

impl Peer {
    /// nginx (`daemon off`, master and 2 workers) with the Nchan module, a publisher
    /// location (`/pub`) and an EventSource subscriber location (`/sub`) on one channel,
    /// both stored in the Redis at `redis_port`.
    pub async fn nchan(
        nginx: &Path,
        module: &Path,
        redis_port: u16,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_retrying(PeerKind::Nchan, work_dir, |dir, port| {
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nchan_conf(module, dir, port, redis_port))?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log"));
            Ok(cmd)
        })
        .await
    }

    /// Centrifugo with the Redis engine, the uni-SSE endpoint, anonymous connections that
    /// may subscribe to any channel they name in `cf_connect`, and the server API.
    pub async fn centrifugo(
        binary: &Path,
        redis_port: u16,
        work_dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_retrying(PeerKind::Centrifugo, work_dir, |dir, port| {
            let conf = dir.join("config.json");
            let config = json!({
                "address": "127.0.0.1",
                "port": port.to_string(),
                "engine": "redis",
                "redis_address": format!("redis://127.0.0.1:{redis_port}"),
                "api_key": API_KEY,
                "uni_sse": true,
                "allow_anonymous_connect_without_token": true,
                "allow_subscribe_for_client": true,
                "allow_subscribe_for_anonymous": true,
                "health": true,
                "log_level": "error",
                "usage_stats_disable": true,
                "pid_file": dir.join("centrifugo.pid"),
            });
            std::fs::write(&conf, serde_json::to_vec_pretty(&config)?)?;
            let mut cmd = Command::new(binary);
            cmd.arg("--config").arg(&conf);
            Ok(cmd)
        })
        .await
    }

    /// Spawns on a free port and waits until it answers; retries on a fresh port if the
    /// process exits first (the port can be taken between the probe and its bind).
    async fn start_retrying(
        kind: PeerKind,
        work_dir: &Path,
        command: impl Fn(&Path, u16) -> anyhow::Result<Command>,
    ) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix(kind.name())
                .tempdir_in(work_dir)?;
            let port = free_port()?;
            let log = std::fs::File::create(dir.path().join("stdout.log"))?;
            let child = command(dir.path(), port)?
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawn {}", kind.name()))?;
            let pid = child.id().context("peer has no pid")?;
            let mut peer = Self {
                kind,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                pid,
                dir,
                http: system_tests::http(),
            };
            match peer.wait_ready().await {
                Ok(()) => return Ok(peer),
                Err(e) => last_error = Some(e.context(peer.log_tail())),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{} did not start", kind.name())))
    }

    /// Waits until the peer answers and, for Nchan, until its workers reach Redis: Nchan
    /// accepts subscribers before its Redis connection is up and answers 503 meanwhile (a
    /// run that started too early got 503s and no events at all). Each probe is a
    /// publish to a probe channel on a fresh connection, which lands on either worker;
    /// `NCHAN_PROBES` in a row must succeed.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let until = Instant::now() + READY_DEADLINE;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut in_a_row = 0;
        loop {
            tick.tick().await;
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status} before ready", self.kind.name());
            }
            let answer = match self.kind {
                PeerKind::Nchan => {
                    self.http
                        .post(format!("http://{}/probe", self.addr))
                        .header("connection", "close")
                        .body("probe")
                        .send()
                        .await
                }
                PeerKind::Centrifugo => {
                    let url = format!("http://{}/health", self.addr);
                    self.http.get(url).send().await
                }
            };
            if answer.is_ok_and(|res| res.status().is_success()) {
                in_a_row += 1;
            } else {
                in_a_row = 0;
            }
            let needed = match self.kind {
                PeerKind::Nchan => NCHAN_PROBES,
                PeerKind::Centrifugo => 1,
            };
            if in_a_row >= needed {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("{} not ready within {READY_DEADLINE:?}", self.kind.name());
            }
        }
    }

    /// The last lines the peer logged (nginx's error log, Centrifugo's stdout), for errors.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["error.log", "stdout.log"] {
            if let Ok(log) = std::fs::read_to_string(self.dir.path().join(name)) {
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(10);
                for line in &lines[from..] {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    /// The path an EventSource client GETs to follow a channel: [`CHANNEL`] followed by
    /// [`TOPIC_SLOT`], which the client replaces with its topic's suffix.
    pub fn stream_path(&self) -> String {
        match self.kind {
            PeerKind::Nchan => format!("/sub/{CHANNEL}{TOPIC_SLOT}"),
            // cf_connect={"subs":{"load":{}}}: a server-side subscription at connect.
            PeerKind::Centrifugo => format!(
                "/connection/uni_sse?cf_connect=%7B%22subs%22%3A%7B%22{CHANNEL}{TOPIC_SLOT}%22%3A%7B%7D%7D%7D"
            ),
        }
    }

    /// The processes whose memory and CPU count: Centrifugo's one, nginx's master and its
    /// workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid];
        pids.extend(child_pids(self.pid));
        pids
    }

    /// Publishes `{"t":t,"seq":seq}` to `channel` over the peer's HTTP API and waits for
    /// it to accept the message.
    ///
    /// # Errors
    /// The request fails, times out, or the peer refuses the message.
    pub async fn publish(&self, channel: &str, t: u64, seq: u64) -> anyhow::Result<()> {
        let body = json!({ "t": t, "seq": seq });
        let request = match self.kind {
            PeerKind::Nchan => self
                .http
                .post(format!("http://{}/pub/{channel}", self.addr))
                .header("content-type", "application/json")
                .body(body.to_string()),
            PeerKind::Centrifugo => self
                .http
                .post(format!("http://{}/api/publish", self.addr))
                .header("x-api-key", API_KEY)
                .json(&json!({ "channel": channel, "data": body })),
        };
        let response = request.send().await.context("publish")?;
        let status = response.status();
        let text = response.text().await.context("publish answer")?;
        // Nchan: 201 (subscribers waiting) or 202 (queued). Centrifugo: 200 with a
        // `result`, or 200 with an `error` object.
        if !status.is_success() || text.contains("\"error\"") {
            bail!("{} refused a publish: {status} {text}", self.kind.name());
        }
        Ok(())
    }

    /// Stops the peer and waits for it to exit (nginx: SIGTERM to the master, which stops
    /// its workers).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.terminate();
        within("peer to exit", self.child.wait()).await??;
        Ok(())
    }

    fn terminate(&mut self) {
        // No libc here (unsafe code is denied): the `kill` utility sends the signal.
        // nginx's workers outlive a SIGKILLed master, so TERM first, then SIGKILL.
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.kind == PeerKind::Centrifugo {
            let _ = self.child.start_kill();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

impl PeerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nchan => "nchan",
            Self::Centrifugo => "centrifugo",
        }
    }
}

/// nginx.conf for Nchan: 2 workers (one per core, as nginx recommends), as many
/// connections as a process may hold files, Redis storage for the channel.
fn nchan_conf(module: &Path, dir: &Path, port: u16, redis_port: u16) -> String {
    let dir = dir.display();
    let module = module.display();
    let connections = OPEN_FILES - 500;
    format!(
        r#"load_module {module};
worker_processes 2;
worker_rlimit_nofile {OPEN_FILES};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {connections};
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream bench_redis {{
        nchan_redis_server redis://127.0.0.1:{redis_port};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /probe {{
            nchan_publisher;
            nchan_channel_id probe;
            nchan_redis_pass bench_redis;
        }}
        location ~ ^/pub/(\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_redis_pass bench_redis;
            nchan_message_buffer_length {NCHAN_BUFFER};
            nchan_message_timeout 10m;
        }}
        location ~ ^/sub/(\w+)$ {{
            nchan_subscriber eventsource;
            # New subscribers start at the next message, not at the oldest buffered one
            # (the default), like the gateway's and Centrifugo's clients without a resume id.
            nchan_subscriber_first_message newest;
            nchan_channel_id $1;
            nchan_redis_pass bench_redis;
        }}
    }}
}}
"#
    )
}
