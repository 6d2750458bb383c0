//! Where Redis is ([`RedisTarget`]: one Redis or a Cluster's seed nodes) and the command
//! connections both binaries use ([`RedisConnection`]), each a [`Link`]: a connection
//! that is replaced when a command times out, as after a disconnect.
//!
//! redis-rs reconnects when a connection *drops* (`BrokenPipe`, `ConnectionReset`, EOF).
//! A connection that goes silent without closing (a network partition, a dropped route,
//! a dead NAT entry, a frozen node, a hung cluster master) says nothing: every command on
//! it times out, and redis-rs 1.8 treats a response timeout as retryable on the *same*
//! socket (CRATES.md), so without help the process stays cut off after the network has
//! healed, until the kernel gives up on the socket, which without TCP keepalive is never.
//! So a command that times out replaces the connection: [`Link::run`] bounds each command,
//! and a timeout builds a fresh connection (a cluster one asks a seed node that answers
//! for the slot map, so it also leaves a hung master whose replica took over).
//!
//! A fresh connection has to connect first, and a connect to a silent peer waits out the
//! connection timeout, so a connection is not judged before it is [`Link::min_age`] old
//! (the command timeout, at least [`REBUILD_INTERVAL`]); otherwise a fresh connection
//! could time out its first command and be replaced again, forever. While replacements
//! do not help (every new connection times out too) that age doubles, up to
//! [`MAX_REBUILD_INTERVAL`], each one jittered so a fleet of pods cut off together does
//! not reconnect in step. The first command answered resets it.
//!
//! Whoever holds subscriptions on a link watches [`Link::generation`]: a replacement drops
//! the old connection and every subscription with it.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{RedisError, RedisFuture, RedisResult};

/// Least time between two replacements. A replacement made before a cluster has promoted
/// a replica still points at the hung master; a timeout after this long tries again.
pub const REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait between two replacements while they keep failing (before jitter). Bounds
/// how long a process stays cut off after the network heals: at most about this long
/// plus one command timeout.
pub const MAX_REBUILD_INTERVAL: Duration = Duration::from_secs(4);

/// How often redis-rs may resend an idempotent read in a cluster (a redirect to follow,
/// a node connection that dropped): its own default.
const CLUSTER_READ_RETRIES: u32 = 16;

/// Where the Redis data lives.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server: `redis://host:port/db`.
    Single(String),
    /// Seed nodes of a Redis Cluster (`redis://host:port` each); the rest of the cluster
    /// is discovered from them.
    Cluster(Vec<String>),
}

impl RedisTarget {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// For logs: the URL(s) with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            Self::Single(url) => redact_url(url),
            Self::Cluster(seeds) => seeds
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => write!(f, "Single({})", self.redacted()),
            Self::Cluster(_) => write!(f, "Cluster({})", self.redacted()),
        }
    }
}

/// A command connection to one Redis or to a Redis Cluster, usable wherever redis-rs
/// takes a connection (`query_async`, `Script::invoke_async`). Cheap to clone. The
/// gateway reads streams over one too. Either kind bounds every command by its timeout
/// and is replaced after a timeout (see [`Link`]).
#[derive(Clone)]
pub enum RedisConnection {
    /// Multiplexed, reconnecting on its own after a drop.
    Single(SingleLink),
    /// Routes each command to the master of its keys' slot and follows the cluster's
    /// topology (`MOVED`, `ASK`, failovers).
    Cluster(ClusterLink),
}

impl RedisConnection {
    /// The connection the publisher's `RedisStore` writes over (not connected yet), each command bounded
    /// by `timeout`. Nothing is resent by redis-rs after a dropped connection: the script
    /// is not idempotent (a create would happen twice), so `RedisStore` resends only
    /// after refusals that prove nothing ran.
    ///
    /// # Errors
    /// If a URL is unusable.
    pub fn for_scripts(target: &RedisTarget, timeout: Duration) -> redis::RedisResult<Self> {
        Self::new(target, timeout, 0)
    }

    /// A connection for idempotent reads (the gateway's stream reads): in a cluster,
    /// redis-rs follows redirects and retries after a dropped node connection by itself.
    ///
    /// # Errors
    /// If a URL is unusable.
    pub fn for_reads(target: &RedisTarget, timeout: Duration) -> redis::RedisResult<Self> {
        Self::new(target, timeout, CLUSTER_READ_RETRIES)
    }

    fn new(
        target: &RedisTarget,
        timeout: Duration,
        cluster_retries: u32,
    ) -> redis::RedisResult<Self> {
        Ok(match target {
            RedisTarget::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    // Commands wait on a reconnect in progress, retries included. Keep that
                    // short so a request during an outage fails fast; the next command
                    // starts a fresh reconnect, so giving up here never strands anyone.
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(200));
                Self::Single(SingleLink::single(
                    redis::Client::open(url.as_str())?,
                    config,
                    timeout,
                )?)
            }
            RedisTarget::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                    .retries(cluster_retries)
                    .build()?;
                Self::Cluster(ClusterLink::cluster(client, timeout, ClusterConfig::new()))
            }
        })
    }

    /// How many times the connection was replaced after a timeout.
    pub fn generation(&self) -> u64 {
        match self {
            Self::Single(link) => link.generation(),
            Self::Cluster(link) => link.generation(),
        }
    }

    /// Another connection to the same Redis timed out: this one is likely silent too.
    /// Replaced as after a timeout of its own (within the same backoff), so it is fresh
    /// before its next command needs it.
    pub fn suspect(&self) {
        match self {
            Self::Single(link) => link.timed_out(),
            Self::Cluster(link) => link.timed_out(),
        }
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A connection to one Redis (a multiplexed, reconnecting `ConnectionManager`).
pub type SingleLink = Link<ConnectionManager>;
/// A connection to a Redis Cluster (routes each command to its slot's master).
pub type ClusterLink = Link<ClusterConnection>;

/// A connection that replaces itself after a timeout. Cheap to clone (shared).
pub struct Link<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for Link<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<C> {
    /// Builds a new connection (lazily: it connects on its first command).
    connect: Box<dyn Fn() -> RedisResult<C> + Send + Sync>,
    /// Longest wait for one command.
    timeout: Duration,
    /// Least age of a connection before a timeout replaces it, while nothing fails.
    min_age: Duration,
    /// Replacements since a command last got an answer: how far the backoff has grown.
    /// Read on every answer, written only when it changes, so the happy path takes no lock.
    failures: AtomicU32,
    current: Mutex<Current<C>>,
}

struct Current<C> {
    conn: C,
    built: Instant,
    /// Age this connection must reach before a timeout may replace it.
    judged_after: Duration,
    generation: u64,
}

impl<C: Clone> std::fmt::Debug for Link<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("timeout", &self.shared.timeout)
            .field("generation", &self.lock().generation)
            .finish_non_exhaustive()
    }
}

impl SingleLink {
    /// A link to one Redis through `client`, with `config`'s push sender and reconnect
    /// policy; each command (connecting included) bounded by `timeout`. Connects lazily.
    ///
    /// # Errors
    /// If `config` is inconsistent (automatic resubscription without a push sender).
    pub fn single(
        client: redis::Client,
        config: ConnectionManagerConfig,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let config = config
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout));
        let first = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        // The configuration was accepted once, and `new_lazy_with_config` checks nothing
        // else, so building again with it cannot fail; if it ever did, the previous
        // connection is kept.
        let connect =
            move || ConnectionManager::new_lazy_with_config(client.clone(), config.clone());
        Ok(Self::new(first, connect, timeout))
    }
}

impl ClusterLink {
    /// A link over `client` with `config` (push sender, if any, included), each command
    /// bounded by `timeout`, each node connection by half of it. Connects lazily.
    pub fn cluster(client: ClusterClient, timeout: Duration, config: ClusterConfig) -> Self {
        let config = config
            .set_connection_timeout(timeout / 2)
            .set_response_timeout(timeout);
        let first = client.get_pending_async_connection_with_config(config.clone());
        let connect = move || Ok(client.get_pending_async_connection_with_config(config.clone()));
        Self::new(first, connect, timeout)
    }

    /// `cmd` to the nodes `routing` names (see redis-rs `route_command`).
    ///
    /// # Errors
    /// As [`Link::run`].
    pub async fn route_command(
        &self,
        cmd: redis::Cmd,
        routing: RoutingInfo,
    ) -> RedisResult<redis::Value> {
        self.run(|mut conn| async move { conn.route_command(cmd, routing).await })
            .await
    }
}

impl<C: Clone> Link<C> {
    fn new(
        first: C,
        connect: impl Fn() -> RedisResult<C> + Send + Sync + 'static,
        timeout: Duration,
    ) -> Self {
        let min_age = timeout.max(REBUILD_INTERVAL);
        Self {
            shared: Arc::new(Shared {
                connect: Box::new(connect),
                timeout,
                min_age,
                failures: AtomicU32::new(0),
                current: Mutex::new(Current {
                    conn: first,
                    built: Instant::now(),
                    judged_after: min_age,
                    generation: 0,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current<C>> {
        // Plain data; a panic elsewhere must not stop Redis access.
        self.shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current connection.
    pub fn connection(&self) -> C {
        self.lock().conn.clone()
    }

    /// How many times the connection was replaced. Changes when subscriptions made on it
    /// are gone.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The longest wait for one command.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// How old a connection must be before a timeout replaces it (while nothing fails).
    pub fn min_age(&self) -> Duration {
        self.shared.min_age
    }

    /// A command did not answer in time: replace the connection, unless it is too young
    /// to be judged.
    pub fn timed_out(&self) {
        let mut current = self.lock();
        if current.built.elapsed() < current.judged_after {
            return;
        }
        let conn = match (self.shared.connect)() {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a redis connection; keeping the old one");
                return;
            }
        };
        let failures = self.shared.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let grown = self
            .shared
            .min_age
            .saturating_mul(1_u32 << failures.min(8))
            .min(MAX_REBUILD_INTERVAL.max(self.shared.min_age));
        current.conn = conn;
        current.built = Instant::now();
        current.judged_after = crate::jitter::around(grown);
        current.generation += 1;
        tracing::warn!(
            generation = current.generation,
            next_in_ms = u64::try_from(current.judged_after.as_millis()).unwrap_or(u64::MAX),
            "redis did not answer in time; replacing the connection"
        );
    }

    /// A command was answered: replacements, if any, helped.
    fn answered(&self) {
        if self.shared.failures.load(Ordering::Relaxed) != 0 {
            self.shared.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Runs `call` on the current connection within the timeout; a timeout replaces the
    /// connection (see [`Link::timed_out`]).
    ///
    /// # Errors
    /// What `call` returns, or an I/O `TimedOut` error.
    pub async fn run<T, Fut>(&self, call: impl FnOnce(C) -> Fut) -> RedisResult<T>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let result = match tokio::time::timeout(self.shared.timeout, call(self.connection())).await
        {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            ))),
        };
        match &result {
            Err(e) if e.is_timeout() => self.timed_out(),
            // A server error is an answer too.
            Err(e) if e.is_io_error() || e.is_connection_refusal() => {}
            _ => self.answered(),
        }
        result
    }
}

impl<C> ConnectionLike for Link<C>
where
    C: ConnectionLike + Clone + Send + 'static,
{
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        Box::pin(self.run(move |mut conn| async move { conn.req_packed_command(cmd).await }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(self.run(move |mut conn| async move {
            conn.req_packed_commands(pipeline, offset, count).await
        }))
    }

    fn get_db(&self) -> i64 {
        self.lock().conn.get_db()
    }
}
/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(redact_url("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(
            redact_url("rediss://user:s3cret@h:1"),
            "rediss://user:***@h:1"
        );
        assert_eq!(redact_url("redis://token@h"), "redis://***@h");
    }
}
