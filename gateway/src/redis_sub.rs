//! The pod's one Redis subscription: which channels are subscribed, reading pub/sub
//! messages into the [`Hub`], reconnecting, and proving readiness.
//!
//! Two tasks share it:
//! - the **reader** decodes each message once and hands it to the hub. It never waits on
//!   a client or on Redis, because Redis disconnects a subscriber that reads too slowly
//!   (`client-output-buffer-limit pubsub`).
//! - the **control** task reconciles the subscribed channels with the hub's wanted topics
//!   (SUBSCRIBE on a topic's first client, UNSUBSCRIBE after its last), PINGs every
//!   [`PING_INTERVAL`] (redis-rs reconnects only when a command is sent; see CRATES.md),
//!   and after a reconnect re-subscribes everything itself (the crate's automatic
//!   resubscription ignores failures) and nudges every topic so clients refill what was
//!   published while the pod was deaf.
//!
//! Readiness is "the last PING answered and every wanted topic is confirmed".

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use proto::{Envelope, Topic};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::config::Config;
use crate::error::RunError;
use crate::hub::{Hub, LiveEvent};
use crate::metrics::Metrics;

/// How often the control task PINGs Redis (and retries failed subscriptions).
pub const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Whether this pod can serve: shared with `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    up: Arc<AtomicBool>,
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

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

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
/// [`RunError::Redis`] if the URL is unusable. An unreachable Redis is not an error: the
/// pod starts not-ready and keeps trying.
pub fn start(
    config: &Config,
    url: &str,
    hub: Arc<Hub>,
    bus: Bus,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Readiness, RunError> {
    let readiness = Readiness::default();
    // Redis -> reader. Full: the message is dropped and counted; its topic's next event
    // carries a `prev` the clients have not seen, so they refill the gap from the stream.
    let (push_tx, push_rx) = mpsc::channel::<PushInfo>(config.push_queue.get());
    let dropped = metrics.pubsub_dropped.clone();
    let sender = move |info: PushInfo| push_tx.try_send(info).map_err(|_| dropped.inc());
    let manager_config = ConnectionManagerConfig::new()
        .set_push_sender(sender)
        .set_automatic_resubscription()
        .set_response_timeout(Some(config.redis_timeout))
        .set_connection_timeout(Some(config.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(resp3_client(url)?, manager_config)?;
    let reconnected = Arc::new(Notify::new());
    let disconnected = Arc::new(AtomicBool::new(false));

    tracker.spawn(read(
        push_rx,
        hub.clone(),
        disconnected.clone(),
        reconnected.clone(),
        shutdown.clone(),
    ));
    let control = Control {
        conn,
        hub,
        bus,
        readiness: readiness.clone(),
        disconnected,
        wake: reconnected,
        timeout: config.redis_timeout,
        subscribed: HashSet::new(),
        nudge: false,
        metrics,
    };
    tracker.spawn(control.run(shutdown));
    Ok(readiness)
}

/// The reader task: pub/sub messages -> hub.
async fn read(
    mut push_rx: mpsc::Receiver<PushInfo>,
    hub: Arc<Hub>,
    disconnected: Arc<AtomicBool>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let info = tokio::select! {
            info = push_rx.recv() => match info { Some(info) => info, None => return },
            () = shutdown.cancelled() => return,
        };
        match info.kind {
            PushKind::Message => {
                if let Some((topic, envelope)) = decode_message(&info) {
                    hub.deliver(
                        &topic,
                        LiveEvent::new(
                            envelope.id,
                            envelope.prev,
                            &envelope.change,
                            envelope.last.as_deref(),
                        ),
                    );
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("redis subscription connection lost");
                disconnected.store(true, Ordering::SeqCst);
                wake.notify_one();
            }
            _ => {}
        }
    }
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

/// The control task's state.
struct Control {
    conn: ConnectionManager,
    hub: Arc<Hub>,
    bus: Bus,
    readiness: Readiness,
    disconnected: Arc<AtomicBool>,
    wake: Arc<Notify>,
    timeout: Duration,
    /// Topics subscribed on the current connection, as far as we know.
    subscribed: HashSet<Topic>,
    /// After a reconnect: tell every topic's clients the newest id, so they refill.
    nudge: bool,
    metrics: Metrics,
}

impl Control {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PING_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.hub.changed() => {}
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
            }
            self.step().await;
        }
        self.readiness.set(false);
    }

    async fn step(&mut self) {
        if self.disconnected.swap(false, Ordering::SeqCst) {
            self.lost();
        }
        let ping = redis::cmd("PING");
        let mut conn = self.conn.clone();
        let alive = matches!(
            tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut conn)).await,
            Ok(Ok(_))
        );
        if !alive {
            if self.readiness.is_up() || !self.subscribed.is_empty() {
                tracing::warn!("redis unreachable; not ready");
            }
            self.lost();
            return;
        }
        let wanted: HashSet<Topic> = self.hub.wanted().into_iter().collect();
        for topic in &wanted {
            if !self.subscribed.contains(topic) {
                let call = conn.subscribe(topic.redis_channel());
                match tokio::time::timeout(self.timeout, call).await {
                    Ok(Ok(())) => {
                        self.subscribed.insert(topic.clone());
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%topic, error = %e, "subscribe failed; retrying");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(%topic, "subscribe timed out; retrying");
                        return;
                    }
                }
            }
            self.hub.confirm(topic, true);
        }
        let stale: Vec<Topic> = self.subscribed.difference(&wanted).cloned().collect();
        for topic in stale {
            match tokio::time::timeout(self.timeout, conn.unsubscribe(topic.redis_channel())).await
            {
                Ok(Ok(())) => {
                    self.subscribed.remove(&topic);
                }
                _ => tracing::debug!(%topic, "unsubscribe failed; retrying"),
            }
        }
        if self.nudge {
            for topic in &wanted {
                match self.bus.last_entry(topic).await {
                    Ok(Some(entry)) => self.hub.deliver(
                        topic,
                        LiveEvent::new(
                            entry.id,
                            entry.fields.prev,
                            &entry.fields.change,
                            entry.fields.last.as_deref(),
                        ),
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(%topic, error = %e, "refill after reconnect failed; retrying");
                        return;
                    }
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
        self.nudge = true;
    }
}
