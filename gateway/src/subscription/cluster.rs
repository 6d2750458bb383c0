//! A Redis Cluster: sharded pub/sub. Each topic's channel lives on the shard that owns
//! its hash slot (the publisher `SPUBLISH`es there), so the pod sends one `SSUBSCRIBE`
//! per topic (one command naming channels of different slots fails with `CROSSSLOT`) and
//! redis-rs routes it to that slot's master, following `MOVED` and `ASK`.
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

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use proto::Topic;
use redis::ProtocolVersion;
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use service::ClusterLink;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Readiness, Signals, Wakes, nudge, push_queue, read};
use crate::config::Config;
use crate::error::RunError;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Most `SSUBSCRIBE`s (and nudges) in flight at once when many topics need them, e.g.
/// after a failover. Sequential would take one round trip per topic, or one timeout per
/// topic of a dead shard; unbounded would queue thousands of commands at once.
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
        self.subscribe(missing).await;
        self.unsubscribe_stale(&wanted).await;
        self.nudge.retain(|t| wanted.contains(t));
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

    /// One `SSUBSCRIBE` per topic, [`RESUBSCRIBE_CONCURRENCY`] at a time, each topic
    /// nudged (if it lost a subscription) right after its confirmation. A topic that fails
    /// (its shard is failing over) is tried again on the next step.
    async fn subscribe(&mut self, topics: Vec<Topic>) {
        let (link, hub, history, nudge) = (&self.link, &self.hub, &self.history, &self.nudge);
        let generation = self.generation;
        let mut results = futures::stream::iter(topics)
            .map(|topic| async move {
                let channel = topic.redis_channel();
                let subscribed = link
                    .run(|mut conn| async move { conn.ssubscribe(channel).await })
                    .await;
                let refilled = match &subscribed {
                    Ok(()) if nudge.contains(&topic) => {
                        Some(super::nudge(hub, history, &topic).await)
                    }
                    _ => None,
                };
                (topic, subscribed, refilled)
            })
            .buffer_unordered(RESUBSCRIBE_CONCURRENCY);
        let (mut confirmed, mut refilled) = (Vec::new(), Vec::new());
        while let Some((topic, subscribed, refill)) = results.next().await {
            if let Err(e) = subscribed {
                tracing::warn!(%topic, error = %e, "ssubscribe failed; retrying");
                continue;
            }
            match refill {
                Some(Err(e)) => {
                    tracing::warn!(%topic, error = %e, "refill after resubscription failed; retrying");
                }
                Some(Ok(())) => refilled.push(topic.clone()),
                None => {}
            }
            confirmed.push(topic);
        }
        drop(results);
        // Confirmed on a link that has been rebuilt since: gone with it.
        if self.link.generation() != generation {
            return;
        }
        for topic in confirmed {
            self.hub.confirm(&topic, true);
            self.subscribed.insert(topic);
        }
        for topic in refilled {
            self.nudge.remove(&topic);
        }
    }

    async fn unsubscribe_stale(&mut self, wanted: &HashSet<Topic>) {
        let stale: Vec<Topic> = self.subscribed.difference(wanted).cloned().collect();
        for topic in stale {
            let channel = topic.redis_channel();
            let call = self
                .link
                .run(|mut conn| async move { conn.sunsubscribe(channel).await });
            match call.await {
                Ok(()) => {
                    self.subscribed.remove(&topic);
                }
                Err(e) => tracing::debug!(%topic, error = %e, "sunsubscribe failed; retrying"),
            }
        }
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
        for topic in std::mem::take(&mut self.subscribed) {
            self.hub.confirm(&topic, false);
            self.nudge.insert(topic);
        }
    }
}
