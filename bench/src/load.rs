//! Pieces of the load tools (`latency_bench`, `loadgen`, ...): release gateway (and
//! publisher) processes, a lean SSE client over a plain `TcpStream` (chunked decoding, SSE
//! fields, no JSON tree), a latency histogram, `/proc` readings (RSS and its peak, PSS, CPU
//! time, child processes) and small report helpers. Peer servers (Nchan, Centrifugo) live in [`crate::peers`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use system_tests::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStderr, Command};
use tokio::task::JoinHandle;

/// Longest wait for a gateway's `/readyz` to answer 200.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// Bytes read from a client socket at once.
pub const READ_BUFFER: usize = 8 * 1024;
/// Largest HTTP response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Warning and error log lines kept per gateway for the report.
const LOG_SAMPLES: usize = 5;
/// `/proc/<pid>/stat` times are in USER_HZ ticks, 100 per second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// In a stream path, where a client's topic suffix goes (`/api/Load{k}/change-stream`):
/// nothing with one topic (`Load`), the topic's index with several (`Load0`, `Load1`, ..).
pub const TOPIC_SLOT: &str = "{k}";

/// `base` for topic `k` of `topics`: `base` itself when there is one topic, else
/// `base` followed by `k`. Clients take topic `client % topics`; event `seq` (from 1) goes
/// to topic `(seq - 1) % topics`.
pub fn topic_name(base: &str, k: usize, topics: usize) -> String {
    if topics <= 1 {
        base.to_owned()
    } else {
        format!("{base}{k}")
    }
}

/// Of `events` published round-robin over `topics` topics (event `seq` to topic
/// `(seq - 1) % topics`), how many topic `k` got.
pub fn events_of_topic(events: u64, k: usize, topics: usize) -> u64 {
    let topics = topics.max(1) as u64;
    events / topics + u64::from((k as u64) < events % topics)
}

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------------------------------
// Gateway processes

/// `GATEWAY_BIN`, else `target/release/gateway` (under `CARGO_TARGET_DIR` if set).
pub fn gateway_binary() -> PathBuf {
    release_binary("GATEWAY_BIN", "gateway")
}

/// `PUBLISHER_BIN`, else `target/release/publisher` (under `CARGO_TARGET_DIR` if set).
pub fn publisher_binary() -> PathBuf {
    release_binary("PUBLISHER_BIN", "publisher")
}

fn release_binary(variable: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("release").join(name)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a gateway wrote to stderr (JSON log lines).
#[derive(Debug, Default)]
pub struct LogSummary {
    pub lines: usize,
    pub warnings: usize,
    pub errors: usize,
    /// The first few warning and error lines, verbatim.
    pub samples: Vec<String>,
}

/// Reads a gateway's log to its end, so the process never blocks on a full pipe.
pub async fn summarize_log(stderr: ChildStderr) -> LogSummary {
    let mut summary = LogSummary::default();
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        summary.lines += 1;
        let level = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v.get("level").and_then(|l| l.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let noteworthy = match level.as_str() {
            "WARN" => {
                summary.warnings += 1;
                true
            }
            "ERROR" => {
                summary.errors += 1;
                true
            }
            _ => false,
        };
        if noteworthy && summary.samples.len() < LOG_SAMPLES {
            summary.samples.push(line);
        }
    }
    summary
}

/// A `gateway` child process on a free loopback port, in fleet mode (or a `publisher`:
/// [`GatewayProcess::publisher`]). Killed on drop.
#[derive(Debug)]
pub struct GatewayProcess {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: JoinHandle<LogSummary>,
}

impl GatewayProcess {
    /// Spawns the binary and waits for `/readyz` to answer 200. Retries on a fresh port if
    /// the process exits first (the free port can be taken before the gateway binds it).
    pub async fn start(
        binary: &Path,
        redis_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn(binary, "GATEWAY", redis_url, settings).await
    }

    /// The `publisher` binary, the same way: it reads the same two settings under
    /// `PUBLISHER_` and answers `/readyz` once Redis does.
    pub async fn publisher(
        binary: &Path,
        redis_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::spawn(binary, "PUBLISHER", redis_url, settings).await
    }

    async fn spawn(
        binary: &Path,
        prefix: &str,
        redis_url: &str,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let mut child = Command::new(binary)
                .env(format!("{prefix}_LISTEN"), addr.to_string())
                .env(format!("{prefix}_REDIS_URL"), redis_url)
                .envs(settings.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawn {}", binary.display()))?;
            let pid = child.id().context("gateway has no pid")?;
            let stderr = child.stderr.take().context("gateway stderr")?;
            let mut gateway = Self {
                child,
                pid,
                addr,
                log: tokio::spawn(summarize_log(stderr)),
            };
            match gateway.wait_ready().await {
                Ok(()) => return Ok(gateway),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("{} did not start", binary.display())))
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = system_tests::http();
        let url = format!("http://{}/readyz", self.addr);
        let until = Instant::now() + READY_DEADLINE;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Some(status) = self.child.try_wait()? {
                bail!("gateway on {} exited with {status} before ready", self.addr);
            }
            if system_tests::is_ready(&client, &url).await {
                return Ok(());
            }
            if Instant::now() > until {
                bail!(
                    "gateway on {} not ready within {READY_DEADLINE:?}",
                    self.addr
                );
            }
        }
    }

    /// SIGKILL, then the summary of everything it logged.
    pub async fn kill(mut self) -> anyhow::Result<LogSummary> {
        self.child.start_kill()?;
        within("gateway to die", self.child.wait()).await??;
        within("gateway log to end", self.log)
            .await?
            .context("log reader panicked")
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// `RssAnon` and `RssFile` of a process, in KiB: what the process allocated, and the
/// pages of files it maps (its binary's code, shared libraries) that are resident.
pub fn rss_parts_kib(pid: u32) -> Option<(u64, u64)> {
    Some((status_kib(pid, "RssAnon:")?, status_kib(pid, "RssFile:")?))
}

/// `VmHWM` of a process, in KiB: the highest RSS it has had since it started, counted by
/// the kernel (a peak that sampling `VmRSS` can miss between two samples).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// User + system CPU time of a process so far, in seconds.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    cpu_split(pid).map(|(user, system)| user + system)
}

/// User and system (kernel) CPU time of a process so far, in seconds: what its own code
/// cost apart from what the kernel did for it (socket writes, mostly).
pub fn cpu_split(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the 3rd field of
    // the line, utime the 14th, stime the 15th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((
        utime as f64 / TICKS_PER_SECOND,
        stime as f64 / TICKS_PER_SECOND,
    ))
}

/// Proportional set size of a process, in KiB: its private pages plus its share of pages
/// it maps together with other processes (what RSS counts once per process). Differs from
/// RSS for multi-process servers such as nginx, whose workers share the master's pages.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The processes whose parent is `pid` (nginx's workers), from `/proc/*/stat`.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // After the command name (which may hold spaces): state, then ppid.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Latency histogram: microseconds rounded to 3 significant digits (error <= 0.5%).

#[derive(Debug, Default, Clone)]
pub struct Histogram {
    pub counts: BTreeMap<u64, u64>,
}

impl Histogram {
    fn bucket(micros: u64) -> u64 {
        let mut scale = 1;
        let mut v = micros;
        while v >= 1000 {
            v /= 10;
            scale *= 10;
        }
        v * scale
    }

    pub fn record(&mut self, nanos: u64) {
        *self.counts.entry(Self::bucket(nanos / 1000)).or_default() += 1;
    }

    pub fn merge(&mut self, pairs: &[(u64, u64)]) {
        for &(bucket, n) in pairs {
            *self.counts.entry(bucket).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The value (ms) at quantile `q` (nearest rank).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.total();
        let rank = ((total.checked_sub(1)? as f64) * q).round() as u64;
        let mut seen = 0;
        for (&bucket, &n) in &self.counts {
            seen += n;
            if seen > rank {
                return Some(bucket as f64 / 1000.0);
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// The client side: HTTP/1.1 chunked body -> SSE events

/// Where an HTTP/1.1 chunked body decoder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Reading the hex size line; the value so far.
    Size(usize),
    /// Skipping a chunk extension up to the CR.
    Extension(usize),
    /// Size line read up to its CR; expecting LF.
    SizeLf(usize),
    /// Inside a chunk's data; bytes left.
    Data(usize),
    DataCr,
    DataLf,
    /// The last (zero-size) chunk has been read.
    Done,
}

/// One SSE event, borrowed from the reader.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub id: Option<&'a [u8]>,
    /// Empty when the event had no `event:` field (the default `message`).
    pub event: &'a [u8],
    pub data: &'a [u8],
}

/// An incremental reader of an SSE response body, fed bytes as they arrive: decodes the
/// chunked transfer coding (if the response uses it), splits lines and gathers fields.
/// An event's id is its own `id:` field (the gateway sends one with every event).
#[derive(Debug)]
pub struct SseReader {
    pub chunk: Option<Chunk>,
    pub decoded: Vec<u8>,
    pub line: Vec<u8>,
    pub id: Vec<u8>,
    pub has_id: bool,
    pub event: Vec<u8>,
    pub data: Vec<u8>,
    pub has_data: bool,
}

impl SseReader {
    pub fn new(chunked: bool) -> Self {
        Self {
            chunk: chunked.then_some(Chunk::Size(0)),
            decoded: Vec::with_capacity(READ_BUFFER),
            line: Vec::new(),
            id: Vec::new(),
            has_id: false,
            event: Vec::new(),
            data: Vec::new(),
            has_data: false,
        }
    }

    /// Feeds body bytes; calls `on_event` for every event they complete.
    pub fn feed(
        &mut self,
        input: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) -> anyhow::Result<()> {
        if self.chunk.is_none() {
            self.lines(input, on_event);
            return Ok(());
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        decoded.clear();
        let result = self.dechunk(input, &mut decoded);
        self.lines(&decoded, on_event);
        self.decoded = decoded;
        result
    }

    /// Appends the data bytes of `input` to `out`.
    fn dechunk(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let Some(mut state) = self.chunk else {
            out.extend_from_slice(input);
            return Ok(());
        };
        while let Some((&byte, after)) = input.split_first() {
            state = match state {
                Chunk::Data(left) => {
                    let take = left.min(input.len());
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - take)
                    }
                }
                Chunk::Done => break,
                framing => {
                    input = after;
                    match (framing, byte) {
                        (Chunk::Size(n), b'\r') | (Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
                        (Chunk::Size(n), b';') => Chunk::Extension(n),
                        (Chunk::Size(n), b) if b.is_ascii_hexdigit() => {
                            let digit = (b as char).to_digit(16).unwrap_or(0) as usize;
                            let n = n
                                .checked_mul(16)
                                .and_then(|n| n.checked_add(digit))
                                .context("chunk size overflows")?;
                            Chunk::Size(n)
                        }
                        (Chunk::Extension(n), _) => Chunk::Extension(n),
                        (Chunk::SizeLf(0), b'\n') => Chunk::Done,
                        (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                        (Chunk::DataCr, b'\r') => Chunk::DataLf,
                        (Chunk::DataLf, b'\n') => Chunk::Size(0),
                        (state, b) => bail!("bad chunked encoding: byte {b:#04x} in {state:?}"),
                    }
                }
            };
        }
        self.chunk = Some(state);
        Ok(())
    }

    fn lines(&mut self, mut bytes: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.field(&bytes[..end], on_event);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.field(&line, on_event);
                line.clear();
                self.line = line;
            }
            bytes = &bytes[end + 1..];
        }
        self.line.extend_from_slice(bytes);
    }

    fn field(&mut self, line: &[u8], on_event: &mut impl FnMut(SseEvent<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    id: self.has_id.then_some(self.id.as_slice()),
                    event: &self.event,
                    data: &self.data,
                });
            }
            self.has_id = false;
            self.has_data = false;
            self.event.clear();
            self.data.clear();
            return;
        }
        if line.starts_with(b":") {
            return; // a comment: `:ok`, heartbeats
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match name {
            b"id" => {
                self.id.clear();
                self.id.extend_from_slice(value);
                self.has_id = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {} // retry:, unknown fields
        }
    }
}

/// The unsigned integer at `"key":` inside the change's `"data":{...}` object, read
/// straight from the compact JSON the gateway sends (no JSON tree per event per client).
pub fn data_u64(change: &[u8], key: &[u8]) -> Option<u64> {
    let data = find(change, b"\"data\":{")?;
    field_u64(&change[data..], key)
}

/// The unsigned integer at the first `"key":` in compact JSON, wherever it is nested: for
/// peers' messages (Nchan sends the published body as is; Centrifugo wraps it in
/// `{"channel":..,"pub":{"data":{..}}}`). A message without the key gives `None`.
pub fn field_u64(json: &[u8], key: &[u8]) -> Option<u64> {
    let mut pattern = Vec::with_capacity(key.len() + 3);
    pattern.push(b'"');
    pattern.extend_from_slice(key);
    pattern.extend_from_slice(b"\":");
    let at = find(json, &pattern)? + pattern.len();
    let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One client's connection, response head read.
#[derive(Debug)]
pub struct Connection {
    pub index: usize,
    pub gateway: usize,
    pub stream: TcpStream,
    pub reader: SseReader,
    /// Body bytes that came with the head.
    pub leftover: Vec<u8>,
}

impl Connection {
    /// `GET` the change stream as EventSource would, and read the response head.
    ///
    /// `source`: the local address to connect from (spread many connections over
    /// 127.0.0.x addresses: one source address has ~28k ephemeral ports per destination).
    pub async fn open(
        index: usize,
        gateway: usize,
        addr: SocketAddr,
        path: &str,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0_u8; 1024];
        let end = loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = find(&head, b"\r\n\r\n") {
                break end;
            }
            if head.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
        };
        let leftover = head.split_off(end + 4);
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let mut lines = head.lines();
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("http/1.1 200") {
            bail!("answered {status:?}, not 200");
        }
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if !header("content-type").is_some_and(|t| t.starts_with("text/event-stream")) {
            bail!("not an event stream: {head}");
        }
        let chunked = header("transfer-encoding").is_some_and(|t| t.contains("chunked"));
        Ok(Self {
            index,
            gateway,
            stream,
            reader: SseReader::new(chunked),
            leftover,
        })
    }

    /// Reads on until the body so far holds `marker` (the gateway's start position,
    /// `id: `, sent once Redis confirmed the topic's subscription; Centrifugo's connect
    /// reply), keeping every byte for the reader.
    ///
    /// # Errors
    /// The stream ends or fails first, or the marker is not within the first `MAX_HEAD`
    /// bytes.
    pub async fn read_until(&mut self, marker: &[u8]) -> anyhow::Result<()> {
        let mut buf = [0_u8; 1024];
        while find(&self.leftover, marker).is_none() {
            if self.leftover.len() > MAX_HEAD {
                bail!(
                    "no {:?} in the first {MAX_HEAD} bytes",
                    String::from_utf8_lossy(marker)
                );
            }
            let n = self.stream.read(&mut buf).await?;
            if n == 0 {
                bail!("stream ended before {:?}", String::from_utf8_lossy(marker));
            }
            self.leftover.extend_from_slice(&buf[..n]);
        }
        Ok(())
    }
}

/// Nearest-rank percentile of sorted nanoseconds, in milliseconds.
pub fn percentile_ms(sorted: &[u64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let index = ((last as f64) * q).round() as usize;
    sorted.get(index).map(|&ns| ns as f64 / 1e6)
}

pub fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The whole machine's CPU time from `/proc/stat`, in seconds: (busy, steal, all).
/// Busy is everything but idle, iowait and steal.
pub fn machine_cpu() -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: inside user/nice]
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let steal = *ticks.get(7)?;
    let seconds = |t: u64| t as f64 / TICKS_PER_SECOND;
    Some((seconds(all - idle - steal), seconds(steal), seconds(all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGE: &str =
        r#"{"target":7,"data":{"t":1732345678901234567,"seq":6,"id":7},"type":"create"}"#;

    fn body_bytes() -> Vec<u8> {
        format!(":ok\n\nretry: 2000\n\nid: 1-0\nevent: data\ndata: {CHANGE}\n\n:\n\nid: 1-1\r\nevent: data\r\ndata: a\r\ndata: b\r\n\r\n")
            .into_bytes()
    }

    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            out.extend_from_slice(format!("{n:x};ext=1\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// Feeds `wire` split at every position, and returns the (id, event, data) seen.
    fn read_all(wire: &[u8], is_chunked: bool) -> Vec<Vec<(String, String, String)>> {
        (0..=wire.len())
            .map(|split| {
                let mut reader = SseReader::new(is_chunked);
                let mut seen = Vec::new();
                let mut on_event = |e: SseEvent<'_>| {
                    seen.push((
                        String::from_utf8_lossy(e.id.unwrap_or(b"-")).into_owned(),
                        String::from_utf8_lossy(e.event).into_owned(),
                        String::from_utf8_lossy(e.data).into_owned(),
                    ));
                };
                reader.feed(&wire[..split], &mut on_event).unwrap();
                reader.feed(&wire[split..], &mut on_event).unwrap();
                seen
            })
            .collect()
    }

    #[test]
    fn reads_events_across_any_split_chunked_or_not() {
        let expected = vec![
            ("1-0".to_owned(), "data".to_owned(), CHANGE.to_owned()),
            ("1-1".to_owned(), "data".to_owned(), "a\nb".to_owned()),
        ];
        let body = body_bytes();
        for seen in read_all(&body, false) {
            assert_eq!(seen, expected);
        }
        for sizes in [&[1_usize][..], &[3, 17], &[4096]] {
            for seen in read_all(&chunked(&body, sizes), true) {
                assert_eq!(seen, expected);
            }
        }
    }

    #[test]
    fn rejects_broken_chunking() {
        let mut reader = SseReader::new(true);
        assert!(reader.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut reader = SseReader::new(true);
        assert!(reader.feed(b"2\r\nabX", &mut |_| {}).is_err());
    }

    #[test]
    fn reads_numbers_inside_data() {
        let change = CHANGE.as_bytes();
        assert_eq!(data_u64(change, b"t"), Some(1_732_345_678_901_234_567));
        assert_eq!(data_u64(change, b"seq"), Some(6));
        assert_eq!(data_u64(change, b"id"), Some(7));
        assert_eq!(data_u64(change, b"target"), None);
        assert_eq!(data_u64(br#"{"target":1,"type":"remove"}"#, b"t"), None);
        assert_eq!(data_u64(br#"{"data":{"t":"x"}}"#, b"t"), None);
    }

    #[test]
    fn reads_numbers_anywhere_in_peer_messages() {
        let nchan = br#"{"t":1732345678901234567,"seq":6}"#;
        assert_eq!(field_u64(nchan, b"t"), Some(1_732_345_678_901_234_567));
        assert_eq!(field_u64(nchan, b"seq"), Some(6));
        let centrifugo = br#"{"channel":"load","pub":{"data":{"t":5,"seq":7},"offset":3}}"#;
        assert_eq!(field_u64(centrifugo, b"t"), Some(5));
        assert_eq!(field_u64(centrifugo, b"seq"), Some(7));
        assert_eq!(field_u64(br#"{"connect":{"client":"x"}}"#, b"seq"), None);
    }

    #[test]
    fn spreads_events_round_robin_over_topics() {
        assert_eq!(topic_name("Load", 0, 1), "Load");
        assert_eq!(topic_name("Load", 7, 10), "Load7");
        assert_eq!(events_of_topic(200, 0, 1), 200);
        let owed: Vec<u64> = (0..3).map(|k| events_of_topic(10, k, 3)).collect();
        assert_eq!(owed, [4, 3, 3]);
        assert_eq!(events_of_topic(200, 4_999, 5_000), 0);
        assert_eq!(events_of_topic(200, 199, 5_000), 1);
    }

    #[test]
    fn reads_proc_of_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(peak_rss_kib(me).is_some_and(|kib| kib > 0));
        assert!(pss_kib(me).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds("self").is_some());
    }

    #[test]
    fn histogram_keeps_three_digits_and_ranks() {
        assert_eq!(Histogram::bucket(999), 999);
        assert_eq!(Histogram::bucket(12_345), 12_300);
        let mut h = Histogram::default();
        for ms in 1..=100_u64 {
            h.record(ms * 1_000_000);
        }
        assert_eq!(h.quantile_ms(0.5), Some(51.0));
        assert_eq!(h.quantile_ms(1.0), Some(100.0));
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }
}
