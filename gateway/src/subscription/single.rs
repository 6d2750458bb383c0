//! One Redis: classic `SUBSCRIBE` (one command per batch of up to [`SUBSCRIBE_BATCH`] new
//! topics; a topic no client wants is unsubscribed after [`SUBSCRIPTION_LINGER`], in
//! batches too) on one reconnecting RESP3 connection
//! (redis-rs `ConnectionManager`, in a [`SingleLink`] that replaces it when a command
//! times out: a connection that went silent without closing is never healed by
//! redis-rs). A reconnect or a replacement loses every subscription at once, so the
//! control task subscribes everything again and nudges every topic.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::Topic;
use redis::aio::ConnectionManagerConfig;
use redis::{IntoConnectionInfo, ProtocolVersion};
use service::SingleLink;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Readiness, SUBSCRIBE_BATCH, SUBSCRIPTION_LINGER, Signals, Wakes, nudge, push_queue, read,
};
use crate::config::Config;
use crate::error::RunError;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// A redis-rs client speaking RESP3 (needed for pub/sub on a managed connection).
pub fn resp3_client(url: &str) -> Result<redis::Client, redis::RedisError> {
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// Starts the reader and control tasks on `tracker`.
///
/// # Errors
/// [`RunError::Redis`] if the URL is unusable.
pub(super) fn start(
    config: &Config,
    url: &str,
    hub: Arc<Hub>,
    history: History,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Readiness, RunError> {
    let readiness = Readiness::default();
    let (sender, push_rx) = push_queue(config, &metrics);
    let manager_config = ConnectionManagerConfig::new()
        .set_push_sender(sender)
        .set_automatic_resubscription()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let link = SingleLink::single(resp3_client(url)?, manager_config, config.redis_timeout)?;
    let signals = Arc::new(Signals::default());

    tracker.spawn(read(
        push_rx,
        hub.clone(),
        signals.clone(),
        shutdown.clone(),
    ));
    let control = Control {
        generation: link.generation(),
        link,
        hub,
        history,
        readiness: readiness.clone(),
        signals,
        subscribed: HashSet::new(),
        lingering: HashMap::new(),
        nudge: false,
        metrics,
    };
    tracker.spawn(control.run(shutdown));
    Ok(readiness)
}

/// The control task's state.
struct Control {
    /// Subscriptions and PINGs; every command bounded by the Redis timeout, and the
    /// connection replaced after a timeout.
    link: SingleLink,
    /// The link's generation the subscriptions were made on.
    generation: u64,
    hub: Arc<Hub>,
    history: History,
    readiness: Readiness,
    signals: Arc<Signals>,
    /// Topics subscribed on the current connection, as far as we know.
    subscribed: HashSet<Topic>,
    /// Subscribed topics no client wants, since when. Bounded by `subscribed`.
    lingering: HashMap<Topic, Instant>,
    /// After a reconnect: tell every topic's clients the newest id, so they refill.
    nudge: bool,
    metrics: Metrics,
}

impl Control {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut wakes = Wakes::new(&shutdown);
        while wakes.next(&self.hub, &self.signals).await {
            self.step().await;
        }
        self.readiness.set(false);
    }

    async fn step(&mut self) {
        if self.signals.take_disconnected() {
            self.lost();
        }
        // A replaced connection took its subscriptions with it.
        let generation = self.link.generation();
        if generation != self.generation {
            self.generation = generation;
            self.lost();
        }
        // Confirmations of our own UNSUBSCRIBEs would land here; one Redis never drops a
        // classic subscription by itself.
        self.signals.take_unsubscribed();
        let alive = self
            .link
            .run(
                |mut conn| async move { redis::cmd("PING").query_async::<String>(&mut conn).await },
            )
            .await
            .is_ok();
        self.readiness.set_reachable(alive);
        if !alive {
            self.history.suspect();
            if self.readiness.is_up() || !self.subscribed.is_empty() {
                tracing::warn!("redis unreachable; not ready");
            }
            self.lost();
            return;
        }
        let wanted: HashSet<Topic> = self.hub.wanted().into_iter().collect();
        let new: Vec<Topic> = wanted
            .iter()
            .filter(|t| !self.subscribed.contains(*t))
            .cloned()
            .collect();
        // One SUBSCRIBE per batch of new topics; redis-rs answers once Redis confirmed
        // every channel of it.
        for batch in new.chunks(SUBSCRIBE_BATCH) {
            let channels: Vec<String> = batch.iter().map(Topic::redis_channel).collect();
            let started = Instant::now();
            let call = self
                .link
                .run(|mut conn| async move { conn.subscribe(channels).await });
            if let Err(e) = call.await {
                tracing::warn!(topics = batch.len(), error = %e, "subscribe failed; retrying");
                return;
            }
            self.metrics
                .subscription_batch("subscribe", started.elapsed());
            // Confirmed on a connection that has been replaced since: gone with it.
            if self.link.generation() != self.generation {
                return;
            }
            self.subscribed.extend(batch.iter().cloned());
        }
        // Wanted again while it lingered: it keeps its subscription.
        self.lingering.retain(|topic, _| !wanted.contains(topic));
        // A topic no client wants lingers for `SUBSCRIPTION_LINGER` before it is
        // unsubscribed (a reconnect storm does not churn Redis), then goes in batches.
        let now = Instant::now();
        let mut expired = Vec::new();
        for topic in self.subscribed.difference(&wanted) {
            let since = *self.lingering.entry(topic.clone()).or_insert(now);
            if now.duration_since(since) >= SUBSCRIPTION_LINGER {
                expired.push(topic.clone());
            }
        }
        for batch in expired.chunks(SUBSCRIBE_BATCH) {
            let channels: Vec<String> = batch.iter().map(Topic::redis_channel).collect();
            let started = Instant::now();
            let call = self
                .link
                .run(|mut conn| async move { conn.unsubscribe(channels).await });
            match call.await {
                Ok(()) => {
                    self.metrics
                        .subscription_batch("unsubscribe", started.elapsed());
                    for topic in batch {
                        self.subscribed.remove(topic);
                        self.lingering.remove(topic);
                    }
                }
                Err(e) => {
                    tracing::debug!(topics = batch.len(), error = %e, "unsubscribe failed; retrying");
                }
            }
        }
        if !expired.is_empty() {
            shrink_sparse!(self.subscribed);
            shrink_sparse!(self.lingering);
            crate::memory::trim_after_release().await;
        }
        // After the unsubscribes: a topic that joined again since `wanted` was read may
        // have just been unsubscribed (it is subscribed again next step).
        self.hub.confirm_subscribed(&self.subscribed);
        if self.nudge {
            for topic in &wanted {
                if let Err(e) = nudge(&self.hub, &self.history, topic).await {
                    tracing::warn!(%topic, error = %e, "refill after reconnect failed; retrying");
                    return;
                }
            }
            self.nudge = false;
            tracing::info!(topics = wanted.len(), "redis subscription restored");
        }
        self.readiness.set(true);
        self.metrics.subscription_up.set(1);
        self.metrics
            .subscribed_topics
            .set(i64::try_from(self.subscribed.len()).unwrap_or(i64::MAX));
    }

    /// The connection (and with it every subscription) is gone.
    fn lost(&mut self) {
        if self.readiness.is_up() {
            self.metrics.redis_reconnects.inc();
        }
        self.readiness.set(false);
        self.metrics.subscription_up.set(0);
        self.metrics.subscribed_topics.set(0);
        for topic in self.subscribed.drain() {
            self.hub.confirm(&topic, false);
        }
        self.lingering.clear();
        self.nudge = true;
    }
}
