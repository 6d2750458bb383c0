//! The load generator: many SSE clients on a real server, a publisher at a fixed rate,
//! and what it cost; the same scenario against our gateway and against peers.
//!
//! ```text
//! loadgen [--target gateway,nchan,centrifugo] [--clients 1000,5000,15000] [--rate 20,40]
//!         [--seconds 10] [--rounds 1] [--gateways 2] [--workers 4] [--out results.json]
//!         [--plot results.svg] [--nginx PATH] [--nchan-module PATH] [--centrifugo PATH]
//!         [--filter '{"status":"open"}'] [--writes creates|toggles]
//!         [--topics 1,1000,per-client]
//! ```
//!
//! For each target and client count it starts a fresh `redis-server` and the server:
//! `--gateways` release `gateway` processes (Redis mode; published through the publisher
//! library, so the path is publisher -> Redis -> gateway), Nchan (nginx with the module,
//! Redis-backed; published with `POST /pub`) or Centrifugo (uni-SSE, Redis engine;
//! published with `POST /api/publish`), see `bench::peers`. Then for each rate:
//! spawns `--workers` worker processes (this binary, `worker` subcommand; a process may
//! hold at most 20,000 open files here), each connecting its share of SSE clients from its
//! own 127.0.0.x source address; measures the server's RSS and PSS before and after (KiB
//! per idle connection; all nginx processes, the Centrifugo process, all gateway
//! processes); publishes `rate` events per second for `--seconds`, each body carrying its
//! publish time `t` and `seq`; and collects from the workers, per second, the events
//! delivered and, at the end, a latency histogram, bytes, errors and whether every client
//! got every event exactly once in order (by the gateway's event ids, by `seq` for peers).
//! Several rates give a saturation curve: deliveries/s stop rising with the offered rate.
//! Every step starts a fresh server; targets take turns per step, and `--rounds` repeats
//! the whole sweep. Results: a table per step on stdout, medians over the rounds, a
//! side-by-side comparison of the medians with ratios (ours / peer) when several targets
//! ran, JSON (`--out`) and an SVG plot of the first target's
//! latency and throughput against connections (`--plot`).
//!
//! Topics: `--topics N` spreads the clients over N topics (client i follows topic i % N:
//! collections `Load0`.. for the gateway, channels `load0`.. for the peers) and publishes
//! event `seq` to topic `(seq - 1) % N`, so each client is owed its topic's share;
//! `per-client` gives each client its own topic. Several values are several steps. The
//! idle RSS per connection is then what a topic costs (docs/BENCHMARKS.md, "Topics at
//! scale"). A gateway client counts as connected once it has read its start position
//! (sent when Redis confirmed its topic), a Centrifugo client once it has its connect
//! reply; Nchan says nothing of the kind.
//!
//! Filters (gateway only): `--filter '{"status":"open"}'` opens every client's stream with
//! `options={"where":...}`, and `--writes toggles` makes the events updates (`PUT`) of
//! [`server::TOGGLED`] records in turn, each flipping its `status` between `done` and
//! `open`, so with that filter every event is a move-in (the update) or a move-out (a
//! `remove`) for every client. The parent evaluates the filter as the gateway does
//! (`proto::Filter` on the new and the previous state) to know what each client is owed;
//! an event the filter skips is not a delivery, a move-out is one (counted, but it carries
//! no `t`, so latency is taken from the deliveries that do).
//!
//! Workers talk to the parent with JSON lines on stdout; the parent tells them the number
//! of events to expect on stdin.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bench::load::{
    Connection, Histogram, READ_BUFFER, SseEvent, TOPIC_SLOT, cpu_model, cpu_seconds, data_u64,
    events_of_topic, field_u64, machine_cpu, unix_nanos,
};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use proto::EventId;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::task::AbortOnDropHandle;

use report::Step;
use server::Server;

mod report;
mod server;

/// The collection every gateway client follows; with several topics, their names' prefix.
const TOPIC: &str = "Load";
/// With `bench::load::TOPIC_SLOT` (`{k}`) where the client's topic suffix goes.
const STREAM_PATH: &str = "/api/Load{k}/change-stream?_format=event-stream";
/// Connections a worker opens at once.
const CONNECT_CONCURRENCY: usize = 128;
/// Longest wait for a step's clients to connect, and for the last events to arrive.
const DEADLINE: Duration = Duration::from_secs(180);
/// After publishing, a worker stops waiting for missing events once none has arrived for
/// this long (a server that dropped events would otherwise hold the step to `DEADLINE`).
const QUIET_END: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(
    about = "SSE load: connections, deliveries/s, publish->deliver latency, RSS per connection"
)]
struct Args {
    #[command(subcommand)]
    worker: Option<WorkerCommand>,
    /// Servers to measure, one after another, each with a fresh redis-server.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gateway")]
    target: Vec<Target>,
    /// Client counts to measure, one step each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    clients: Vec<usize>,
    /// Events published per second; several give a saturation curve.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    rate: Vec<u32>,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Times to run every step; medians over the rounds are compared (the machine is
    /// shared, and one round can land on someone else's build).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Gateway processes.
    #[arg(long, default_value_t = 2)]
    gateways: usize,
    /// Client processes (each from its own 127.0.0.x address).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write an SVG plot of latency and throughput against connections here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// nginx binary (for `--target nchan`).
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// The Nchan dynamic module.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    nchan_module: PathBuf,
    /// Centrifugo v5 binary (for `--target centrifugo`; scripts/bench-peers builds it).
    #[arg(long, default_value = "centrifugo")]
    centrifugo: PathBuf,
    /// Where peers' temporary config and log directories go.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// A `where` (JSON) every gateway client's stream is opened with, as
    /// `options={"where":...}`; gateway target only.
    #[arg(long)]
    filter: Option<String>,
    /// What the publisher writes (gateway target only for `toggles`).
    #[arg(long, value_enum, default_value = "creates")]
    writes: Writes,
    /// Topics the clients spread over, one step each: a number, or `per-client`.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    topics: Vec<Topics>,
}

/// How many topics a step's clients spread over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topics {
    Count(usize),
    PerClient,
}

impl std::str::FromStr for Topics {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "per-client" => Ok(Self::PerClient),
            n => match n.parse() {
                Ok(0) | Err(_) => Err(format!("{n:?}: a topic count (1 or more) or per-client")),
                Ok(n) => Ok(Self::Count(n)),
            },
        }
    }
}

impl Topics {
    fn count(self, clients: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::PerClient => clients.max(1),
        }
    }
}

/// What a gateway step publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Writes {
    /// A create per event.
    Creates,
    /// A `PUT` per event of one of `server::TOGGLED` records in turn, flipping its `status`
    /// between `done` (as created before clients connect) and `open`.
    Toggles,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    Gateway,
    Nchan,
    Centrifugo,
}

/// How a worker checks exactly-once, in-order delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Check {
    /// By the gateway's event ids (`id:` field), strictly increasing; latency from the
    /// change's `data.t`. An event without both is an error.
    Id,
    /// By the published `seq`, strictly increasing; latency from `t`. A message without
    /// `seq` is the peer's own (Centrifugo's connect reply, pings) and is only counted.
    Seq,
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// Internal: one client process.
    Worker {
        #[arg(long, value_delimiter = ',')]
        servers: Vec<SocketAddr>,
        #[arg(long)]
        path: String,
        #[arg(long, value_enum)]
        check: Check,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        source: Ipv4Addr,
        /// A `remove` (a filtered client's move-out) is a delivery, checked for order,
        /// without a latency (it carries no data).
        #[arg(long)]
        removes: bool,
        /// Topics of the step: this worker's client i follows topic `(first + i) %
        /// topics`, its suffix in place of `{k}` in `path`.
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long, default_value_t = 0)]
        first: usize,
        /// A client counts as connected once its stream holds this text.
        #[arg(long)]
        ready: Option<String>,
    },
}

/// One worker's clients: where they connect and what they wait for.
#[derive(Debug)]
struct Plan<'a> {
    servers: &'a [SocketAddr],
    path: &'a str,
    check: Check,
    clients: usize,
    source: IpAddr,
    removes: bool,
    topics: usize,
    first: usize,
    ready: Option<&'a str>,
}

impl Plan<'_> {
    /// The topic of this worker's client `i`.
    fn topic(&self, i: usize) -> usize {
        (self.first + i) % self.topics.max(1)
    }

    fn path(&self, i: usize) -> String {
        let suffix = if self.topics > 1 {
            self.topic(i).to_string()
        } else {
            String::new()
        };
        self.path.replace(TOPIC_SLOT, &suffix)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(WorkerCommand::Worker {
        servers,
        path,
        check,
        clients,
        source,
        removes,
        topics,
        first,
        ready,
    }) = &args.worker
    {
        let plan = Plan {
            servers,
            path,
            check: *check,
            clients: *clients,
            source: IpAddr::V4(*source),
            removes: *removes,
            topics: *topics,
            first: *first,
            ready: ready.as_deref(),
        };
        // One thread per worker: the parent runs several, each on its own address.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker(&plan));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(parent(args))
}

// ---------------------------------------------------------------------------------------
// Worker process

/// What a worker's clients share (one thread: the lock is never contended).
#[derive(Debug, Default)]
struct Tally {
    latency: Histogram,
    events: u64,
    bytes: u64,
    errors: u64,
    /// Events whose id or `seq` went backwards or repeated.
    disordered: u64,
    /// Peer messages without a `seq` (Centrifugo's connect reply and pings).
    other: u64,
    /// Move-outs: `remove`s counted as deliveries (`--removes`).
    moved_out: u64,
    /// Events per client, to check completeness.
    per_client: Vec<u64>,
    /// Unix nanos when the last event arrived (for deliveries/s when saturated, where
    /// delivery runs on after publishing ends).
    last_arrival: u64,
    first_error: Option<String>,
}

async fn worker(plan: &Plan<'_>) -> anyhow::Result<()> {
    let Plan {
        servers,
        check,
        clients,
        source,
        removes,
        ..
    } = *plan;
    let tally = Arc::new(Mutex::new(Tally {
        per_client: vec![0; clients],
        ..Tally::default()
    }));
    let mut stdout = tokio::io::stdout();
    let connected: Vec<Connection> = tokio::time::timeout(
        DEADLINE,
        futures::stream::iter(0..clients)
            .map(|i| async move {
                let server = i % servers.len();
                let path = plan.path(i);
                let mut conn =
                    Connection::open(i, server, servers[server], &path, Some(source)).await?;
                if let Some(marker) = plan.ready {
                    conn.read_until(marker.as_bytes()).await?;
                }
                anyhow::Ok(conn)
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect::<Vec<_>>(),
    )
    .await
    .context("connect deadline")?
    .into_iter()
    .filter_map(|c| match c {
        Ok(c) => Some(c),
        Err(e) => {
            let mut t = tally
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.errors += 1;
            t.first_error
                .get_or_insert_with(|| format!("connect: {e:#}"));
            None
        }
    })
    .collect();
    let held = connected.len();
    for conn in connected {
        tokio::spawn(follow(conn, check, removes, Arc::clone(&tally)));
    }
    line(&mut stdout, &json!({ "connected": held })).await?;

    // Progress every second until the parent says how many events to expect.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let expected: u64 = loop {
        tokio::select! {
            _ = tick.tick() => {
                let events = lock(&tally).events;
                line(&mut stdout, &json!({ "events": events })).await?;
            }
            text = stdin.next_line() => {
                let text = text?.context("parent closed stdin")?;
                break text.trim().parse().context("expected event count")?;
            }
        }
    };
    // What each client is owed: its topic's share of the events.
    let owed: Vec<u64> = (0..clients)
        .map(|i| events_of_topic(expected, plan.topic(i), plan.topics))
        .collect();
    // Wait for every client to have every event, or for deliveries to stop for
    // `QUIET_END`, or the deadline.
    let until = Instant::now() + DEADLINE;
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    let (mut seen, mut moved) = (0, Instant::now());
    while Instant::now() < until && moved.elapsed() < QUIET_END {
        poll.tick().await;
        let t = lock(&tally);
        let done = t
            .per_client
            .iter()
            .zip(&owed)
            .filter(|(n, o)| n >= o)
            .count();
        if done + usize::try_from(t.errors)? >= clients {
            break;
        }
        if t.events != seen {
            (seen, moved) = (t.events, Instant::now());
        }
    }
    let report = {
        let t = lock(&tally);
        let complete = t
            .per_client
            .iter()
            .zip(&owed)
            .filter(|(n, o)| n == o)
            .count();
        json!({
            "done": {
                "clients": held,
                "complete": complete,
                "events": t.events,
                "bytes": t.bytes,
                "errors": t.errors,
                "disordered": t.disordered,
                "other": t.other,
                "moved_out": t.moved_out,
                "last_arrival": t.last_arrival,
                "first_error": t.first_error,
                "latency": t.latency.counts.iter().map(|(b, n)| [*b, *n]).collect::<Vec<_>>(),
            }
        })
    };
    line(&mut stdout, &report).await?;
    Ok(())
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn line(out: &mut tokio::io::Stdout, value: &Value) -> anyhow::Result<()> {
    out.write_all(format!("{value}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one client's stream, recording every event's latency, in one read per wake-up.
/// With `removes`, a `remove` is a delivery without a latency.
async fn follow(mut conn: Connection, check: Check, removes: bool, tally: Arc<Mutex<Tally>>) {
    let mut buf = vec![0_u8; READ_BUFFER];
    let mut pending = std::mem::take(&mut conn.leftover);
    let mut last_id = EventId::ZERO;
    let mut last_seq = 0;
    loop {
        let arrived = unix_nanos();
        {
            let mut t = lock(&tally);
            t.bytes += pending.len() as u64;
            let mut on_event = |event: SseEvent<'_>| {
                let sent = match check {
                    Check::Id => {
                        let id = event
                            .id
                            .and_then(|id| std::str::from_utf8(id).ok())
                            .and_then(|id| EventId::parse(id).ok());
                        match (id, data_u64(event.data, b"t")) {
                            (Some(id), Some(sent)) => {
                                if id <= last_id {
                                    t.disordered += 1;
                                }
                                last_id = id;
                                sent
                            }
                            (Some(id), None) if removes && is_remove(event.data) => {
                                if id <= last_id {
                                    t.disordered += 1;
                                }
                                last_id = id;
                                t.moved_out += 1;
                                t.events += 1;
                                t.last_arrival = t.last_arrival.max(arrived);
                                t.per_client[conn.index] += 1;
                                return;
                            }
                            _ => {
                                t.errors += 1;
                                return;
                            }
                        }
                    }
                    Check::Seq => match field_u64(event.data, b"seq") {
                        Some(seq) => {
                            if seq <= last_seq {
                                t.disordered += 1;
                            }
                            last_seq = seq;
                            let Some(sent) = field_u64(event.data, b"t") else {
                                t.errors += 1;
                                return;
                            };
                            sent
                        }
                        None => {
                            t.other += 1;
                            return;
                        }
                    },
                };
                t.latency.record(arrived.saturating_sub(sent));
                t.events += 1;
                t.last_arrival = t.last_arrival.max(arrived);
                t.per_client[conn.index] += 1;
            };
            if let Err(e) = conn.reader.feed(&pending, &mut on_event) {
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("{e:#}"));
                return;
            }
        }
        match conn.stream.read(&mut buf).await {
            Ok(0) => {
                // The server ended the stream: an error unless this client had everything
                // (the parent kills workers at the end, so a normal end never gets here).
                let mut t = lock(&tally);
                t.errors += 1;
                t.first_error
                    .get_or_insert_with(|| "server closed the stream".to_owned());
                return;
            }
            Ok(n) => {
                pending.clear();
                pending.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                let mut t = lock(&tally);
                t.errors += 1;
                t.first_error.get_or_insert_with(|| format!("read: {e}"));
                return;
            }
        }
    }
}

/// A change object of type `remove` (compact JSON, as the gateway sends it).
fn is_remove(change: &[u8]) -> bool {
    bench::load::find(change, br#""type":"remove""#).is_some()
}

// ---------------------------------------------------------------------------------------
// Parent process

async fn parent(args: Args) -> anyhow::Result<()> {
    let variant = args.filter.is_some() || args.writes != Writes::Creates;
    if variant && args.target.iter().any(|&t| t != Target::Gateway) {
        anyhow::bail!("--filter and --writes toggles are for the gateway target only");
    }
    if variant && args.topics != [Topics::Count(1)] {
        anyhow::bail!("--filter and --writes toggles take one topic");
    }
    eprintln!(
        "loadgen: {:?}; {} worker(s), {:?} events/s for {} s per step; {} cores ({})",
        args.target,
        args.workers,
        args.rate,
        args.seconds,
        std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model()
    );
    report::print_header();
    let mut steps = Vec::new();
    let mut failures = Vec::new();
    // Every step gets a fresh redis-server and server, so its memory reading starts from
    // a server that never held a connection. Targets take turns at each step, so a change
    // in the machine's other load hits all of them alike rather than one target's block.
    for round in 1..=args.rounds {
        for &clients in &args.clients {
            for topics in args.topics.iter().map(|t| t.count(clients)) {
                for &rate in &args.rate {
                    for &target in &args.target {
                        // A target that fails (does not start, refuses a publish) is
                        // reported and skipped; the others still run.
                        match step(&args, target, clients, topics, rate).await {
                            Ok(mut step) => {
                                step.round = round;
                                report::print_step(&step);
                                steps.push(step);
                            }
                            Err(e) => {
                                eprintln!(
                                    "loadgen: {target:?} {clients} clients on {topics} topic(s) {rate}/s failed: {e:#}"
                                );
                                failures.push(json!({ "round": round, "target": target, "clients": clients, "topics": topics, "rate": rate, "error": format!("{e:#}") }));
                            }
                        }
                    }
                }
            }
        }
    }
    let summaries = report::summarize(&steps);
    report::print_summaries(&summaries);
    let comparison = report::compare(&summaries);
    let mut report = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, usize::from), "cpu": cpu_model() },
        "targets": args.target, "topics": args.topics.iter().map(|t| match t { Topics::Count(n) => json!(n), Topics::PerClient => json!("per-client") }).collect::<Vec<_>>(), "rates": args.rate, "seconds": args.seconds,
        "gateways": args.gateways, "workers": args.workers,
        "rounds": args.rounds, "steps": steps, "medians": summaries, "comparison": comparison, "failures": failures,
    });
    if variant {
        report["filter"] = json!(args.filter);
        report["writes"] = json!(args.writes);
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report::plot(&steps))?;
    }
    Ok(())
}

/// Starts the target on a fresh Redis, runs one step, stops both.
async fn step(
    args: &Args,
    target: Target,
    clients: usize,
    topics: usize,
    rate: u32,
) -> anyhow::Result<Step> {
    let server = Arc::new(
        Server::start(args, target, clients, topics)
            .await
            .context("start")?,
    );
    let step = run_step(args, target, clients, topics, rate, &server).await;
    // After a failed step an aborted publisher may still hold the server for a moment;
    // dropping the last reference stops it then (processes are killed on drop).
    let stopped = match Arc::into_inner(server) {
        Some(server) => server.stop().await,
        None => Ok(()),
    };
    let step = step?;
    stopped?;
    Ok(step)
}

async fn run_step(
    args: &Args,
    target: Target,
    clients: usize,
    topics: usize,
    rate: u32,
    server: &Arc<Server>,
) -> anyhow::Result<Step> {
    let idle = server.memory();
    let exe = std::env::current_exe()?;
    let addrs: Vec<String> = server.addrs().iter().map(ToString::to_string).collect();
    let check = match server.check() {
        Check::Id => "id",
        Check::Seq => "seq",
    };
    let mut workers = Vec::new();
    let mut first = 0;
    for w in 0..args.workers {
        let share = clients / args.workers + usize::from(w < clients % args.workers);
        let source = Ipv4Addr::new(127, 0, 0, u8::try_from(10 + w)?);
        let mut command = Command::new(&exe);
        command
            .args(["worker", "--servers", &addrs.join(",")])
            .args(["--path", &server.stream_path(), "--check", check])
            .arg("--clients")
            .arg(share.to_string())
            .arg("--source")
            .arg(source.to_string())
            .args([
                "--topics",
                &topics.to_string(),
                "--first",
                &first.to_string(),
            ]);
        first += share;
        if let Some(marker) = server.ready_marker() {
            command.args(["--ready", marker]);
        }
        if server.filtered() {
            command.arg("--removes");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        workers.push((child, lines));
    }
    // Connected?
    let mut held = 0;
    for (_, lines) in &mut workers {
        let msg = next_message(lines).await?;
        held += msg["connected"].as_u64().context("connected line")?;
    }
    let connected = server.memory();
    eprintln!(
        "{target:?}, {clients} clients on {topics} topic(s), {rate}/s: {held} connected; RSS {} -> {} KiB",
        idle.rss, connected.rss
    );

    // Publish at the rate, reading progress meanwhile.
    let events = u64::from(rate) * u64::from(args.seconds);
    let worker_pids: Vec<String> = workers
        .iter()
        .filter_map(|(child, _)| child.id())
        .map(|pid| pid.to_string())
        .collect();
    let ours = || -> f64 {
        let workers: f64 = worker_pids.iter().filter_map(|p| cpu_seconds(p)).sum();
        workers + cpu_seconds("self").unwrap_or(0.0)
    };
    let (server_cpu_before, redis_cpu_before) = server.cpu();
    let split_before = server.cpu_split();
    let (ours_before, machine_before) = (ours(), machine_cpu());
    let started = Instant::now();
    let publish_start = unix_nanos();
    // Aborted if the step fails, so it stops publishing to a server being torn down.
    let publishing = {
        let server = Arc::clone(server);
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            // What each client is owed: every event, unless its filter skips some.
            let mut owed = Owed::default();
            for seq in 1..=events {
                tick.tick().await;
                owed.add(server.publish(seq).await?);
            }
            anyhow::Ok(owed)
        }))
    };
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    while !publishing.is_finished() {
        progress.tick().await;
        let mut delivered = 0;
        for (_, lines) in &mut workers {
            // Each worker writes one progress line a second.
            if let Ok(Ok(msg)) =
                tokio::time::timeout(Duration::from_millis(1500), next_message(lines)).await
            {
                delivered += msg["events"].as_u64().unwrap_or(0);
            }
        }
        eprintln!(
            "  {:>4.1} s: {delivered} events delivered",
            started.elapsed().as_secs_f64()
        );
    }
    let owed = publishing.await??;
    let published_in = started.elapsed();
    let expected = owed.deliveries;

    let mut latency = Histogram::default();
    let mut totals = Totals::default();
    for (child, lines) in &mut workers {
        let stdin = child.stdin.as_mut().context("stdin")?;
        stdin.write_all(format!("{expected}\n").as_bytes()).await?;
        stdin.flush().await?;
        let done = loop {
            let msg = next_message(lines).await?;
            if let Some(done) = msg.get("done") {
                break done.clone();
            }
        };
        totals.add(&done);
        if let Some(e) = done["first_error"].as_str() {
            eprintln!("  worker error: {e}");
        }
        let pairs: Vec<(u64, u64)> = serde_json::from_value(done["latency"].clone())?;
        latency.merge(&pairs);
    }
    let (server_cpu_after, redis_cpu_after) = server.cpu();
    let split_after = server.cpu_split();
    let (ours_after, machine_after) = (ours(), machine_cpu());
    for (mut child, _) in workers {
        let _ = child.kill().await;
    }
    // Delivery runs on after publishing when the server is saturated: count until the
    // last event arrived.
    let delivering = if totals.last_arrival > publish_start {
        (totals.last_arrival - publish_start) as f64 / 1e9
    } else {
        published_in.as_secs_f64()
    };
    let server_cpu = server_cpu_after - server_cpu_before;
    let redis_cpu = redis_cpu_after - redis_cpu_before;
    let clients_cpu = ours_after - ours_before;
    let machine_busy = match (machine_before, machine_after) {
        (Some((before, ..)), Some((after, ..))) => after - before,
        _ => 0.0,
    };
    let per_connection =
        |after: u64, before: u64| after.saturating_sub(before) as f64 / held.max(1) as f64;
    let per_delivery =
        |seconds: f64| (totals.deliveries > 0).then(|| seconds * 1e6 / totals.deliveries as f64);
    let variant = (args.filter.is_some() || args.writes != Writes::Creates).then(|| {
        let variant = report::Variant {
            writes: args.writes,
            filter: args.filter.clone(),
            owed_per_client: expected,
            owed_move_outs_per_client: owed.move_outs,
            moved_out: totals.moved_out,
            latency_samples: latency.total(),
            gateway_cpu_us_per_delivery: per_delivery(server_cpu),
            gateway_user_us_per_delivery: per_delivery(split_after.0 - split_before.0),
            gateway_system_us_per_delivery: per_delivery(split_after.1 - split_before.1),
        };
        eprintln!(
            "  {:?}, filter {}: {} of {events} events owed per client ({} as move-outs); {} move-outs delivered, latency from the {} deliveries that carry `t`; gateway CPU {} µs/delivery ({} user + {} system)",
            variant.writes,
            variant.filter.as_deref().unwrap_or("none"),
            variant.owed_per_client,
            variant.owed_move_outs_per_client,
            variant.moved_out,
            variant.latency_samples,
            us(variant.gateway_cpu_us_per_delivery),
            us(variant.gateway_user_us_per_delivery),
            us(variant.gateway_system_us_per_delivery),
        );
        variant
    });
    Ok(Step {
        round: 0,
        target,
        clients,
        topics,
        rate,
        // Each event goes to one topic's clients.
        offered_per_second: clients as u64 * u64::from(rate) / topics as u64,
        held,
        complete: totals.complete,
        published: events,
        published_per_second: events as f64 / published_in.as_secs_f64(),
        deliveries: totals.deliveries,
        deliveries_per_second: totals.deliveries as f64 / delivering.max(1e-9),
        p50_ms: latency.quantile_ms(0.5),
        p99_ms: latency.quantile_ms(0.99),
        p999_ms: latency.quantile_ms(0.999),
        max_ms: latency.quantile_ms(1.0),
        bytes: totals.bytes,
        errors: totals.errors,
        disordered: totals.disordered,
        other_messages: totals.other,
        rss_idle_kib: idle.rss,
        rss_connected_kib: connected.rss,
        kib_per_connection: per_connection(connected.rss, idle.rss),
        pss_kib_per_connection: per_connection(connected.pss, idle.pss),
        server_cpu_seconds: server_cpu,
        redis_cpu_seconds: redis_cpu,
        clients_cpu_seconds: clients_cpu,
        machine_busy_seconds: machine_busy,
        other_cpu_seconds: (machine_busy - server_cpu - redis_cpu - clients_cpu).max(0.0),
        cpu_us_per_delivery: (totals.deliveries > 0)
            .then(|| (server_cpu + redis_cpu) * 1e6 / totals.deliveries as f64),
        variant,
    })
}

fn us(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// What a client is owed of the events published: a filter may skip some, and sends an
/// update that took a record out of it as a `remove`.
#[derive(Debug, Default)]
struct Owed {
    deliveries: u64,
    move_outs: u64,
}

impl Owed {
    fn add(&mut self, delivery: Option<server::Delivery>) {
        match delivery {
            Some(server::Delivery::Change) => self.deliveries += 1,
            Some(server::Delivery::MoveOut) => {
                self.deliveries += 1;
                self.move_outs += 1;
            }
            None => {}
        }
    }
}

/// The workers' final reports, summed.
#[derive(Debug, Default)]
struct Totals {
    complete: u64,
    deliveries: u64,
    bytes: u64,
    errors: u64,
    disordered: u64,
    other: u64,
    moved_out: u64,
    last_arrival: u64,
}

impl Totals {
    fn add(&mut self, done: &Value) {
        let n = |key: &str| done[key].as_u64().unwrap_or(0);
        self.complete += n("complete");
        self.deliveries += n("events");
        self.bytes += n("bytes");
        self.errors += n("errors");
        self.disordered += n("disordered");
        self.other += n("other");
        self.moved_out += n("moved_out");
        self.last_arrival = self.last_arrival.max(n("last_arrival"));
    }
}

async fn next_message(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> anyhow::Result<Value> {
    let text = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .context("worker silent")??
        .context("worker exited")?;
    Ok(serde_json::from_str(&text)?)
}
