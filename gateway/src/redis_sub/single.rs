//! One Redis: classic `SUBSCRIBE` on one reconnecting RESP3 connection
//! (redis-rs `ConnectionManager`). A reconnect loses every subscription at once, so the
//! control task subscribes everything again and nudges every topic.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use proto::Topic;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Readiness, Signals, Wakes, nudge, push_queue, read};
use crate::bus::Bus;
use crate::config::Config;
use crate::error::RunError;
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
    bus: Bus,
    metrics: Metrics,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Readiness, RunError> {
    let readiness = Readiness::default();
    let (sender, push_rx) = push_queue(config, &metrics);
    let manager_config = ConnectionManagerConfig::new()
        .set_push_sender(sender)
        .set_automatic_resubscription()
        .set_response_timeout(Some(config.redis_timeout))
        .set_connection_timeout(Some(config.redis_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_lazy_with_config(resp3_client(url)?, manager_config)?;
    let signals = Arc::new(Signals::default());

    tracker.spawn(read(
        push_rx,
        hub.clone(),
        signals.clone(),
        shutdown.clone(),
    ));
    let control = Control {
        conn,
        hub,
        bus,
        readiness: readiness.clone(),
        signals,
        timeout: config.redis_timeout,
        subscribed: HashSet::new(),
        nudge: false,
        metrics,
    };
    tracker.spawn(control.run(shutdown));
    Ok(readiness)
}

/// The control task's state.
struct Control {
    conn: ConnectionManager,
    hub: Arc<Hub>,
    bus: Bus,
    readiness: Readiness,
    signals: Arc<Signals>,
    timeout: Duration,
    /// Topics subscribed on the current connection, as far as we know.
    subscribed: HashSet<Topic>,
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
        // Confirmations of our own UNSUBSCRIBEs would land here; one Redis never drops a
        // classic subscription by itself.
        self.signals.take_unsubscribed();
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
                if let Err(e) = nudge(&self.hub, &self.bus, topic).await {
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
        self.nudge = true;
    }
}
