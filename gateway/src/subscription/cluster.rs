//! A Redis Cluster: sharded pub/sub. Each topic's channel lives on the shard that owns
//! its hash slot (the publisher `SPUBLISH`es there), so the pod sends one `SSUBSCRIBE`
//! per batch of one slot's new topics (one command naming channels of different slots
//! fails with `CROSSSLOT`; see [`super::slot_batches`]) and redis-rs routes it to that
//! slot's master, following `MOVED` and `ASK`. A topic no client wants lingers
//! [`SUBSCRIPTION_LINGER`] and is then `SUNSUBSCRIBE`d, in slot batches too.
//!
//! A subscription is lost, and the topic subscribed again and nudged, when:
//! - its slot moved to another node: the server sends `SUNSUBSCRIBE`, and redis-rs drops
//!   the channel without subscribing again (CRATES.md);
//! - a node connection dropped (a master died): redis-rs says `Disconnection` but not
//!   which node, so every topic is subscribed again. The dead master's topics succeed
//!   once its replica has taken over; until then the pod is not ready, while topics on
//!   healthy shards are subscribed and refilled at once;
//! - the [`ClusterLink`] was rebuilt after a command timed out (a master that hangs
//!   without closing its connections: see [`service::redis_link`]), which drops
//!   every subscription with the old connection.
//!
//! A PING to every master each [`super::PING_INTERVAL`] decides readiness (and, when one hangs,
//! times out and so rebuilds the link).
//!
//! Events published while a topic was deaf are in its stream: the nudge after the new
//! subscription hands clients the newest id, and the id chain makes them refill the
//! rest. What the old master acknowledged but never replicated is gone from the stream;
//! clients past it get `event: reset` (see [`crate::client`]), never a silent gap.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use proto::Topic;
use redis::ProtocolVersion;
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use service::ClusterLink;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Readiness, SUBSCRIPTION_LINGER, Signals, Wakes, nudge, push_queue, read, slot_batches,
};
use crate::config::Config;
use crate::error::RunError;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Most `SSUBSCRIBE`s or `SUNSUBSCRIBE`s (and nudges) in flight at once when many slots
/// need them, e.g. after a failover. Sequential would take one round trip per slot, or
/// one timeout per slot of a dead shard; unbounded would queue thousands of commands at
/// once.
pub const RESUBSCRIBE_CONCURRENCY: usize = 64;

/// Starts the reader and control tasks on `tracker`.
///
/// # Errors
/// [`RunError::Redis`] if a seed URL is unusable.
pub(super) fn start(
    config: &Config,
    seeds: &[String],
    hub: Arc<Hub>,
    history: History,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Readiness, RunError> {
    let readiness = Readiness::default();
    let (sender, push_rx) = push_queue(config, &metrics);
    let client = ClusterClientBuilder::new(seeds.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP3)
        .push_sender(sender)
        .build()?;
    let link = ClusterLink::cluster(client, config.redis_timeout, ClusterConfig::new());
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
        masters_up: false,
        subscribed: HashSet::new(),
        lingering: HashMap::new(),
        nudge: HashSet::new(),
        metrics,
    };
    tracker.spawn(control.run(shutdown));
    Ok(readiness)
}

/// The control task's state.
struct Control {
    /// Subscriptions and PINGs; every command bounded by the Redis timeout.
    link: ClusterLink,
    /// The link's generation the subscriptions were made on.
    generation: u64,
    hub: Arc<Hub>,
    history: History,
    readiness: Readiness,
    signals: Arc<Signals>,
    /// Whether the last PING reached every master.
    masters_up: bool,
    /// Topics whose `SSUBSCRIBE` was confirmed and not lost since, as far as we know.
    subscribed: HashSet<Topic>,
    /// Subscribed topics no client wants, since when. Bounded by `subscribed`.
    lingering: HashMap<Topic, Instant>,
    /// Topics whose subscription was lost: once subscribed again, their clients get the
    /// newest id so they refill. Bounded by the wanted topics.
    nudge: HashSet<Topic>,
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
            self.lost_all();
        }
        let generation = self.link.generation();
        if generation != self.generation {
            self.generation = generation;
            self.lost_all();
        }
        let wanted: HashSet<Topic> = self.hub.wanted().into_iter().collect();
        for topic in self.signals.take_unsubscribed() {
            // Our own SUNSUBSCRIBE of a topic nobody wants is confirmed the same way; only
            // a wanted topic is lost.
            if wanted.contains(&topic) && self.subscribed.contains(&topic) {
                tracing::info!(%topic, "shard channel unsubscribed by the server (slot moved); subscribing again");
                self.lost(&topic);
            }
        }
        // Subscribe first, each topic refilled as soon as it is confirmed: topics on healthy
        // shards must not wait for a failing shard's timeouts.
        let missing: Vec<Topic> = wanted
            .iter()
            .filter(|t| !self.subscribed.contains(*t))
            .cloned()
            .collect();
        self.subscribe(slot_batches(missing)).await;
        // Wanted again while it lingered: it keeps its subscription.
        self.lingering.retain(|topic, _| !wanted.contains(topic));
        self.unsubscribe_stale(&wanted).await;
        // A topic that came back while its subscription lingered is confirmed here; after
        // the unsubscribes, as one that came back since `wanted` was read may have just
        // been unsubscribed (it is subscribed again next step).
        self.hub.confirm_subscribed(&self.subscribed);
        self.nudge.retain(|t| wanted.contains(t));
        shrink_sparse!(self.nudge);
        let due: Vec<Topic> = self
            .nudge
            .iter()
            .filter(|t| self.subscribed.contains(*t))
            .cloned()
            .collect();
        self.refill(due).await;

        // Readiness only: a master that does not answer (in time) makes no subscription
        // suspect by itself. A dead one dropped its connection (Disconnection, above); a
        // hung one timed out, and the link is rebuilt (generation, above).
        let masters_up = self.ping_masters().await;
        if masters_up != self.masters_up {
            if masters_up {
                tracing::info!("every redis cluster master answers");
            } else {
                tracing::warn!("a redis cluster master does not answer; not ready");
            }
        }
        self.masters_up = masters_up;
        self.readiness.set_reachable(masters_up);
        if !masters_up {
            self.history.suspect();
        }

        let complete = wanted.iter().all(|t| self.subscribed.contains(t)) && self.nudge.is_empty();
        let ready = masters_up && complete;
        if ready && !self.readiness.is_up() && !wanted.is_empty() {
            tracing::info!(
                topics = wanted.len(),
                "redis cluster subscriptions confirmed"
            );
        }
        self.readiness.set(ready);
        self.metrics.subscription_up.set(i64::from(ready));
        self.metrics
            .subscribed_topics
            .set(i64::try_from(self.subscribed.len()).unwrap_or(i64::MAX));
    }

    /// PING to every master the cluster connection knows, each answer within the timeout.
    async fn ping_masters(&self) -> bool {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::AllSucceeded),
        ));
        self.link
            .route_command(redis::cmd("PING"), routing)
            .await
            .is_ok()
    }

    /// One `SSUBSCRIBE` per batch (one slot's topics), [`RESUBSCRIBE_CONCURRENCY`] at a
    /// time, each topic nudged (if it lost a subscription) right after its batch's
    /// confirmation. A batch that fails (its shard is failing over) is tried again on the
    /// next step.
    async fn subscribe(&mut self, batches: Vec<Vec<Topic>>) {
        let (link, hub, history, nudge) = (&self.link, &self.hub, &self.history, &self.nudge);
        let generation = self.generation;
        let mut results = futures::stream::iter(batches)
            .map(|batch| async move {
                let subscribed = shard_batch(link, &batch, Shard::Subscribe).await;
                let mut refilled = Vec::new();
                if subscribed.is_ok() {
                    for topic in batch.iter().filter(|t| nudge.contains(*t)) {
                        match super::nudge(hub, history, topic).await {
                            Ok(()) => refilled.push(topic.clone()),
                            Err(e) => {
                                tracing::warn!(%topic, error = %e, "refill after resubscription failed; retrying");
                            }
                        }
                    }
                }
                (batch, subscribed, refilled)
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY);
        let (mut confirmed, mut refilled, mut took) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((batch, subscribed, refill)) = results.next().await {
            match subscribed {
                Ok(elapsed) => took.push(elapsed),
                Err(e) => {
                    tracing::warn!(topics = batch.len(), error = %e, "ssubscribe failed; retrying");
                    continue;
                }
            }
            refilled.extend(refill);
            confirmed.extend(batch);
        }
        drop(results);
        for elapsed in took {
            self.metrics.subscription_batch("subscribe", elapsed);
        }
        // Confirmed on a link that has been rebuilt since: gone with it.
        if self.link.generation() != generation {
            return;
        }
        for topic in refilled {
            self.nudge.remove(&topic);
        }
        for topic in confirmed {
            self.hub.confirm(&topic, true);
            self.subscribed.insert(topic);
        }
    }

    /// Topics no client wants for [`SUBSCRIPTION_LINGER`] are `SUNSUBSCRIBE`d, one command
    /// per slot batch, [`RESUBSCRIBE_CONCURRENCY`] at a time; a failed batch is tried again
    /// on the next step.
    async fn unsubscribe_stale(&mut self, wanted: &HashSet<Topic>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for topic in self.subscribed.difference(wanted) {
            let since = *self.lingering.entry(topic.clone()).or_insert(now);
            if now.duration_since(since) >= SUBSCRIPTION_LINGER {
                expired.push(topic.clone());
            }
        }
        if expired.is_empty() {
            return;
        }
        let link = &self.link;
        let mut results = futures::stream::iter(slot_batches(expired))
            .map(|batch| async move {
                let call = shard_batch(link, &batch, Shard::Unsubscribe).await;
                (batch, call)
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY);
        let mut done: Vec<(Vec<Topic>, Duration)> = Vec::new();
        while let Some((batch, call)) = results.next().await {
            match call {
                Ok(elapsed) => done.push((batch, elapsed)),
                Err(e) => {
                    tracing::debug!(topics = batch.len(), error = %e, "sunsubscribe failed; retrying");
                }
            }
        }
        drop(results);
        for (batch, elapsed) in done {
            self.metrics.subscription_batch("unsubscribe", elapsed);
            for topic in batch {
                self.subscribed.remove(&topic);
                self.lingering.remove(&topic);
            }
        }
        shrink_sparse!(self.subscribed);
        shrink_sparse!(self.lingering);
        crate::memory::trim_after_release().await;
    }

    /// Nudges each topic subscribed again, [`RESUBSCRIBE_CONCURRENCY`] at a time.
    async fn refill(&mut self, topics: Vec<Topic>) {
        let (hub, history) = (&self.hub, &self.history);
        let mut results = futures::stream::iter(topics)
            .map(|topic| async move {
                let result = nudge(hub, history, &topic).await;
                (topic, result)
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY);
        let mut done = Vec::new();
        while let Some((topic, result)) = results.next().await {
            match result {
                Ok(()) => done.push(topic),
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "refill after resubscription failed; retrying");
                }
            }
        }
        drop(results);
        for topic in done {
            self.nudge.remove(&topic);
        }
    }

    /// `topic`'s subscription is gone.
    fn lost(&mut self, topic: &Topic) {
        self.subscribed.remove(topic);
        self.lingering.remove(topic);
        self.hub.confirm(topic, false);
        self.nudge.insert(topic.clone());
    }

    /// Any subscription may be gone (which node's connection dropped is not known).
    fn lost_all(&mut self) {
        if self.readiness.is_up() {
            self.metrics.redis_reconnects.inc();
        }
        self.readiness.set(false);
        self.metrics.subscription_up.set(0);
        self.lingering.clear();
        for topic in std::mem::take(&mut self.subscribed) {
            self.hub.confirm(&topic, false);
            self.nudge.insert(topic);
        }
    }
}

/// Which sharded command a batch is sent with.
#[derive(Clone, Copy)]
enum Shard {
    Subscribe,
    Unsubscribe,
}

/// `SSUBSCRIBE` or `SUNSUBSCRIBE` of one slot's `batch` (a command may not span slots);
/// how long Redis took to confirm it.
async fn shard_batch(
    link: &ClusterLink,
    batch: &[Topic],
    command: Shard,
) -> redis::RedisResult<Duration> {
    let channels: Vec<String> = batch.iter().map(Topic::redis_channel).collect();
    let started = Instant::now();
    link.run(|mut conn| async move {
        match command {
            Shard::Subscribe => conn.ssubscribe(channels).await,
            Shard::Unsubscribe => conn.sunsubscribe(channels).await,
        }
    })
    .await?;
    Ok(started.elapsed())
}
