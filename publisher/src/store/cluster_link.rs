//! [`ClusterLink`]: a redis-rs cluster connection that is built again from the seed nodes
//! when a node stops answering.
//!
//! redis-rs 1.8 refreshes its slot map when a node says so (`MOVED`) or a node connection
//! drops. A master that hangs with its connections open (a network partition, a stopped
//! process) says nothing: after its replica has taken over, every command for its slots
//! still goes to the hung node and times out, for as long as it hangs (tested: over 30 s,
//! while the rest of the cluster had failed over in 3). So a command that times out
//! rebuilds the link: a fresh connection asks a seed node that answers for the slot map.
//! Commands that only fail fast (`MOVED`, refused connections) leave the link alone;
//! redis-rs handles those.
//!
//! A fresh connection first connects to every seed, and waits out the connection timeout
//! on a hung one, so it is given time before it may be judged: half the command timeout
//! to connect, and no rebuild before it is [`ClusterLink::min_age`] old (the command
//! timeout, at least [`REBUILD_INTERVAL`]). Otherwise a fresh link could time out its
//! first command and be replaced again, forever.
//!
//! Whoever holds subscriptions on the link watches [`ClusterLink::generation`]: a rebuild
//! drops the old connection and every subscription with it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{RedisError, RedisFuture, RedisResult};

/// Least time between two rebuilds. A rebuild made before the cluster has promoted a
/// replica still points at the hung master; a timeout after this long tries again.
pub const REBUILD_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster connection that replaces itself after a timeout. Cheap to clone (shared).
#[derive(Clone)]
pub struct ClusterLink {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    config: ClusterConfig,
    /// Longest wait for one command (also the connection's own response timeout).
    timeout: Duration,
    /// Least age of a connection before a timeout replaces it.
    min_age: Duration,
    current: Mutex<Current>,
}

struct Current {
    conn: ClusterConnection,
    built: Instant,
    generation: u64,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("timeout", &self.shared.timeout)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl ClusterLink {
    /// A link over `client` with `config` (push sender, if any, included), each command
    /// bounded by `timeout`, each node connection by half of it. Connects lazily, on first
    /// use.
    pub fn new(client: ClusterClient, timeout: Duration, config: ClusterConfig) -> Self {
        let config = config
            .set_connection_timeout(timeout / 2)
            .set_response_timeout(timeout);
        let conn = client.get_pending_async_connection_with_config(config.clone());
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                timeout,
                min_age: timeout.max(REBUILD_INTERVAL),
                current: Mutex::new(Current {
                    conn,
                    built: Instant::now(),
                    generation: 0,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        // Plain data; a panic elsewhere must not stop Redis access.
        self.shared
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current connection.
    pub fn connection(&self) -> ClusterConnection {
        self.lock().conn.clone()
    }

    /// How many times the link was rebuilt. Changes when subscriptions made on it are gone.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The longest wait for one command.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// How old a connection must be before a timeout replaces it.
    pub fn min_age(&self) -> Duration {
        self.shared.min_age
    }

    /// A command did not answer in time: rebuild, unless the connection is younger than
    /// [`ClusterLink::min_age`].
    pub fn timed_out(&self) {
        let mut current = self.lock();
        if current.built.elapsed() < self.shared.min_age {
            return;
        }
        current.conn = self
            .shared
            .client
            .get_pending_async_connection_with_config(self.shared.config.clone());
        current.built = Instant::now();
        current.generation += 1;
        tracing::warn!(
            generation = current.generation,
            "a redis cluster node did not answer in time; reconnecting from the seed nodes"
        );
    }

    /// Runs `call` on the current connection within the timeout; a timeout marks the
    /// link (see [`ClusterLink::timed_out`]).
    ///
    /// # Errors
    /// What `call` returns, or an I/O `TimedOut` error.
    pub async fn run<T, Fut>(&self, call: impl FnOnce(ClusterConnection) -> Fut) -> RedisResult<T>
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
        if result.as_ref().is_err_and(RedisError::is_timeout) {
            self.timed_out();
        }
        result
    }

    /// `cmd` to the nodes `routing` names (see redis-rs `route_command`).
    ///
    /// # Errors
    /// As [`ClusterLink::run`].
    pub async fn route_command(
        &self,
        cmd: redis::Cmd,
        routing: RoutingInfo,
    ) -> RedisResult<redis::Value> {
        self.run(|mut conn| async move { conn.route_command(cmd, routing).await })
            .await
    }
}

impl redis::aio::ConnectionLike for ClusterLink {
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
        0
    }
}
