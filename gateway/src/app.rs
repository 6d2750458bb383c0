//! The gateway's two modes and what differs between them: where a topic's history is read
//! from, what feeds the hub, and what readiness means.
//!
//! - **Embedded** (no Redis configured): one process is a complete LoopBack-style app. The
//!   in-memory [`MemoryStore`] is the history, its own events feed the hub
//!   ([`crate::embedded::feed`]), the pod is always ready, and the publisher's REST API
//!   is served beside the streams.
//! - **Fleet** (one Redis, or a Redis Cluster): a stateless pod. Redis streams are the
//!   history, the pod's Redis subscription feeds the hub ([`crate::subscription`]), and
//!   readiness is the subscription's, judged against the pod's peers when Redis is out
//!   of reach ([`crate::partition`]).

use std::sync::Arc;

use publisher::MemoryStore;
use service::RedisTarget;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::RunError;
use crate::history::{History, RedisHistory};
use crate::hub::{Confirm, Hub};
use crate::metrics::Metrics;
use crate::partition::{self, Partition};
use crate::subscription::{self, Readiness};

/// How this pod gets its events.
#[derive(Debug)]
pub enum Mode {
    Embedded,
    Fleet(RedisTarget),
}

/// What the mode built: what the handlers read and serve.
#[derive(Debug)]
pub struct Parts {
    pub hub: Arc<Hub>,
    pub history: History,
    pub readiness: Readiness,
    /// Embedded mode: the store whose REST API the gateway serves.
    pub rest: Option<MemoryStore>,
}

impl Mode {
    pub fn of(config: &Config) -> Self {
        match &config.redis {
            None => Self::Embedded,
            Some(target) => Self::Fleet(target.clone()),
        }
    }

    /// The `mode` of the listening log line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded single-node",
            Self::Fleet(RedisTarget::Single(_)) => "redis",
            Self::Fleet(RedisTarget::Cluster(_)) => "redis cluster",
        }
    }

    /// Builds this mode's parts and spawns on `tracker` what feeds the hub: the embedded
    /// feed, or the Redis subscription and the partition watch. They run until `feeds`
    /// is cancelled, which happens only after the pod's streams have ended (the drain,
    /// [`crate::run`]).
    ///
    /// # Errors
    /// [`RunError::Redis`] if a Redis URL is unusable.
    pub fn start(
        self,
        config: &Config,
        metrics: &Metrics,
        partition: &Partition,
        tracker: &TaskTracker,
        feeds: &CancellationToken,
    ) -> Result<Parts, RunError> {
        let capacity = config.hub_capacity.get();
        match self {
            Self::Embedded => {
                let store = MemoryStore::new(config.retention);
                let hub = Hub::new(capacity, Confirm::OnJoin);
                tracker.spawn(crate::embedded::feed(
                    store.clone(),
                    hub.clone(),
                    feeds.clone(),
                ));
                Ok(Parts {
                    hub,
                    history: History::Memory(store.clone()),
                    readiness: Readiness::always(),
                    rest: Some(store),
                })
            }
            Self::Fleet(target) => {
                let hub = Hub::new(capacity, Confirm::BySubscription);
                let history = History::Redis(Arc::new(RedisHistory::connect(
                    &target,
                    config.redis_timeout,
                    config.replay_reads.get(),
                )?));
                let readiness = subscription::start(
                    config,
                    &target,
                    hub.clone(),
                    history.clone(),
                    metrics.clone(),
                    tracker,
                    feeds.clone(),
                )?;
                tracker.spawn(partition::watch(
                    partition.clone(),
                    readiness.clone(),
                    config.peers.clone(),
                    config.partition_timeout,
                    metrics.clone(),
                    feeds.clone(),
                ));
                Ok(Parts {
                    hub,
                    history,
                    readiness,
                    rest: None,
                })
            }
        }
    }
}
