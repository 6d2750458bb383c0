//! The pod's Redis subscription: which channels are subscribed, reading pub/sub messages
//! into the [`Hub`], reconnecting, and proving readiness. Two implementations, chosen by
//! the configured [`RedisTarget`]:
//!
//! - [`single`]: one Redis, classic `SUBSCRIBE` on one reconnecting connection, in
//!   batches, with a linger before a topic is unsubscribed.
//! - [`cluster`]: a Redis Cluster, sharded pub/sub (`SSUBSCRIBE`, one command per batch
//!   of one hash slot's topics) that follows slot moves and master failovers, with the
//!   same linger.
//!
//! Both run two tasks:
//! - the **reader** ([`read`], shared) decodes each message once and hands it to the hub.
//!   It never waits on a client or on Redis, because Redis disconnects a subscriber that
//!   reads too slowly (`client-output-buffer-limit pubsub`). It passes connection losses
//!   and server-side unsubscribes to the control task as [`Signals`].
//! - the **control** task reconciles the subscribed channels with the hub's wanted topics
//!   (subscribe on a topic's first client, unsubscribe after its last), PINGs every
//!   [`PING_INTERVAL`] (redis-rs reconnects only when a command is sent; see CRATES.md),
//!   and after a subscription was lost subscribes again itself (the crate's automatic
//!   resubscription ignores failures) and nudges the topic so its clients refill what
//!   was published while the pod was deaf.
//!
//! Readiness is "Redis answers and every wanted topic is confirmed".

pub mod cluster;
pub mod single;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::{Envelope, Topic};
use redis::{PushInfo, PushKind};
use service::RedisTarget;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{HistoryError, RunError};
use crate::event::LiveEvent;
use crate::history::History;
use crate::hub::Hub;
use crate::metrics::Metrics;

pub use single::resp3_client;

/// How often the control task PINGs Redis (and retries failed subscriptions).
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Most channels in one `SUBSCRIBE` or `UNSUBSCRIBE` (one Redis, where one command may
/// name any channels), or `SSUBSCRIBE`/`SUNSUBSCRIBE` (a cluster, where one command names
/// one hash slot's channels: see [`slot_batches`]).
pub const SUBSCRIBE_BATCH: usize = 1000;

/// How long a topic whose last local client left stays subscribed: a client that comes
/// back (a reconnect storm, a page reload) finds it subscribed and costs Redis nothing.
/// Checked on every PING tick, so it is unsubscribed within this plus [`PING_INTERVAL`].
pub const SUBSCRIPTION_LINGER: Duration = Duration::from_secs(2);

/// Whether this pod can serve: shared with `/readyz`, the stream handlers and
/// [`crate::partition`].
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    /// Redis answers and every wanted topic is subscribed (and refilled after a loss).
    up: Arc<AtomicBool>,
    /// The last PING (to every master, in a cluster) failed or timed out: Redis is out
    /// of reach from here, not merely busy confirming a new topic.
    unreachable: Arc<AtomicBool>,
}

impl Readiness {
    pub fn always() -> Self {
        let r = Self::default();
        r.up.store(true, Ordering::SeqCst);
        r
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Whether the last PING failed: new streams are turned away at once instead of
    /// waiting for a subscription that cannot come.
    pub fn unreachable(&self) -> bool {
        self.unreachable.load(Ordering::SeqCst)
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn set_reachable(&self, reachable: bool) {
        self.unreachable.store(!reachable, Ordering::SeqCst);
    }
}

/// Starts the reader and control tasks for `target` on `tracker`.
///
/// # Errors
/// [`RunError::Redis`] if a URL is unusable. An unreachable Redis is not an error: the
/// pod starts not-ready and keeps trying.
pub fn start(
    config: &Config,
    target: &RedisTarget,
    hub: Arc<Hub>,
    history: History,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Readiness, RunError> {
    match target {
        RedisTarget::Single(url) => {
            single::start(config, url, hub, history, metrics, tracker, shutdown)
        }
        RedisTarget::Cluster(seeds) => {
            cluster::start(config, seeds, hub, history, metrics, tracker, shutdown)
        }
    }
}

/// The queue from the Redis connection(s) to the reader. Full: the message is dropped and
/// counted; its topic's next event carries a `prev` the clients have not seen, so they
/// refill the gap from the stream.
/// The returned sender is what redis-rs calls with every push (message, confirmation,
/// disconnection); it never blocks.
fn push_queue(
    config: &Config,
    metrics: &Metrics,
) -> (
    impl Fn(PushInfo) -> Result<(), ()> + Send + Sync + 'static,
    mpsc::Receiver<PushInfo>,
) {
    let (push_tx, push_rx) = mpsc::channel::<PushInfo>(config.push_queue.get());
    let dropped = metrics.pubsub_dropped.clone();
    let sender = move |info: PushInfo| push_tx.try_send(info).map_err(|_| dropped.inc());
    (sender, push_rx)
}

/// When a control task reconciles its subscriptions with the hub: the wanted topics
/// changed, the reader signalled, or the PING tick came (which also proves the connection
/// alive: redis-rs reconnects only when a command is sent).
struct Wakes<'a> {
    shutdown: &'a CancellationToken,
    tick: tokio::time::Interval,
}

impl<'a> Wakes<'a> {
    fn new(shutdown: &'a CancellationToken) -> Self {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { shutdown, tick }
    }

    /// Waits for the next reason to reconcile; `false` at shutdown.
    async fn next(&mut self, hub: &Hub, signals: &Signals) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = hub.changed() => true,
            () = signals.wake.notified() => true,
            _ = self.tick.tick() => true,
        }
    }
}

/// What the reader tells the control task. Set by the reader, taken by the control task.
#[derive(Debug, Default)]
struct Signals {
    /// A connection (to the one Redis, or to any node of a cluster) dropped: the
    /// subscriptions it carried are gone.
    disconnected: AtomicBool,
    /// Shard channels the server unsubscribed this pod from by itself (their slot moved to
    /// another node), or confirmations of our own unsubscribes. At most one entry per
    /// channel subscribed, so bounded by the topics this pod has wanted.
    unsubscribed: Mutex<HashSet<Topic>>,
    /// Wakes the control task.
    wake: Notify,
}

impl Signals {
    fn take_disconnected(&self) -> bool {
        self.disconnected.swap(false, Ordering::SeqCst)
    }

    fn take_unsubscribed(&self) -> HashSet<Topic> {
        std::mem::take(
            &mut *self
                .unsubscribed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// The reader task: pub/sub messages -> hub; losses -> [`Signals`].
async fn read(
    mut push_rx: mpsc::Receiver<PushInfo>,
    hub: Arc<Hub>,
    signals: Arc<Signals>,
    shutdown: CancellationToken,
) {
    loop {
        let info = tokio::select! {
            info = push_rx.recv() => match info { Some(info) => info, None => return },
            () = shutdown.cancelled() => return,
        };
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some((topic, envelope)) = decode_message(&info) {
                    hub.deliver(&topic, LiveEvent::from_envelope(&envelope));
                }
            }
            PushKind::SUnsubscribe => {
                if let Some(topic) = push_topic(&info) {
                    tracing::debug!(%topic, "shard channel unsubscribed");
                    signals
                        .unsubscribed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(topic);
                    signals.wake.notify_one();
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis subscription connection lost");
                signals.disconnected.store(true, Ordering::SeqCst);
                signals.wake.notify_one();
            }
            _ => {}
        }
    }
}

/// The topic a push names as its first element (its channel), if it is one of ours.
fn push_topic(info: &PushInfo) -> Option<Topic> {
    let channel: String = redis::from_redis_value_ref(info.data.first()?).ok()?;
    Topic::from_redis_channel(&channel)
}

fn decode_message(info: &PushInfo) -> Option<(Topic, Envelope)> {
    let [channel, payload] = info.data.as_slice() else {
        tracing::warn!(data = ?info.data, "pub/sub message with an unexpected shape");
        return None;
    };
    let channel: String = redis::from_redis_value_ref(channel).ok()?;
    let payload: String = redis::from_redis_value_ref(payload).ok()?;
    let topic = Topic::from_redis_channel(&channel)?;
    match Envelope::decode(&payload) {
        Ok(envelope) => Some((topic, envelope)),
        Err(e) => {
            tracing::warn!(%topic, error = %e, "undecodable event ignored");
            None
        }
    }
}

/// `topics` in batches for a Redis Cluster: each batch of one hash slot (one `SSUBSCRIBE`
/// may not name channels of two), at most [`SUBSCRIBE_BATCH`] long. 100,000 random topics
/// make ~15,000 batches over 16,384 slots, not 100,000 commands.
fn slot_batches(topics: Vec<Topic>) -> Vec<Vec<Topic>> {
    let mut by_slot: HashMap<u16, Vec<Topic>> = HashMap::new();
    for topic in topics {
        by_slot.entry(topic.cluster_slot()).or_default().push(topic);
    }
    let mut batches = Vec::new();
    for group in by_slot.into_values() {
        batches.extend(group.chunks(SUBSCRIBE_BATCH).map(<[Topic]>::to_vec));
    }
    batches
}

/// Hands `topic`'s clients the newest stream entry as a live event. One that has not seen
/// its `prev` refills from the stream: what was published while the pod was deaf reaches
/// them even if nothing more is published.
async fn nudge(hub: &Hub, history: &History, topic: &Topic) -> Result<(), HistoryError> {
    if let Some(entry) = history.last_entry(topic).await? {
        hub.deliver(topic, LiveEvent::from_entry(entry.id, &entry.fields));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_batches_keep_one_slot_each_and_lose_no_topic() {
        let topics: Vec<Topic> = (0..5_000)
            .map(|i| Topic::new(&format!("T{i}")).unwrap())
            .collect();
        let batches = slot_batches(topics.clone());
        assert!(batches.len() < topics.len(), "{} batches", batches.len());
        for batch in &batches {
            assert!(!batch.is_empty() && batch.len() <= SUBSCRIBE_BATCH);
            assert!(
                batch
                    .iter()
                    .all(|t| t.cluster_slot() == batch[0].cluster_slot())
            );
        }
        let mut all: Vec<Topic> = batches.into_iter().flatten().collect();
        all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut expected = topics;
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(all, expected);
        // One slot's topics beyond a batch: split.
        let same: Vec<Topic> = (0..2_500).map(|_| Topic::new("Same").unwrap()).collect();
        let sizes: Vec<usize> = slot_batches(same).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
    }
}
