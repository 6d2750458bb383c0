//! [`Link`]: a Redis connection (one Redis, or a Redis Cluster) that is replaced when a
//! command times out, as after a disconnect.
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
use redis::cluster::{ClusterClient, ClusterConfig};
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
