//! The gateway: a stateless pod that holds SSE connections and pushes LoopBack change
//! events to browsers.
//!
//! ```text
//! Redis pub/sub --> redis_sub (reader) --> hub (topic -> broadcast of framed events)
//!                                           |
//!   browser <-- sse <-- replay::ClientStream (stream replay, then live; gap refill)
//!                                           |
//! Redis stream  <-- history (XRANGE by id) -----+
//! ```
//!
//! - [`hub`]: per-topic fan-out; each event decoded and framed once; never waits on a client.
//! - [`redis_sub`]: the pod's subscription (one Redis, or sharded pub/sub on a Redis
//!   Cluster), reconnection, readiness.
//! - [`replay`]: a client's position; replay from `Last-Event-ID`, exact hand-over to live,
//!   gap refill by the id chain, `reset` when history is gone.
//! - [`history`]: stream reads (Redis, or the embedded [`publisher::MemoryStore`]).
//! - [`http`], [`sse`]: routes and the SSE response.
//! - [`assets`]: the browser client (`/client/live-set.js`) and the `/demo` page.
//!
//! With no Redis configured the gateway runs single-node on the embedded history and serves the
//! publisher's REST API too ([`embedded`]).

pub mod assets;
pub mod client;
pub mod config;
pub mod embedded;
pub mod error;
pub mod event;
pub mod history;
pub mod http;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod partition;
pub mod serve;
pub mod sse;
pub mod subscription;

use std::sync::Arc;

pub use config::Config;
pub use error::RunError;
pub use service::shutdown;
pub use service::telemetry;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::history::{History, RedisHistory};
use crate::hub::Hub;
use crate::subscription::Readiness;

/// The effective configuration, one line, secrets redacted.
fn log_config(config: &Config) {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        listen = %config.listen,
        admin_listen = config.admin_listen.map(|a| a.to_string()),
        redis_url = config
            .redis
            .as_ref()
            .filter(|r| !r.is_cluster())
            .map(service::RedisTarget::redacted),
        redis_cluster = config
            .redis
            .as_ref()
            .filter(|r| r.is_cluster())
            .map(service::RedisTarget::redacted),
        heartbeat_ms = ms(config.heartbeat),
        retry_ms = ms(config.retry),
        replay_page = config.replay_page.get(),
        hub_capacity = config.hub_capacity.get(),
        push_queue = config.push_queue.get(),
        max_connections = config.max_connections.get(),
        max_topics = config.max_topics.get(),
        peers = ?config.peers,
        partition_timeout_ms = ms(config.partition_timeout),
        filter_max_bytes = config.filter_max_bytes.get(),
        write_timeout_ms = ms(config.write_timeout),
        drain_window_ms = ms(config.drain_window),
        grace_period_ms = ms(config.grace_period),
        auth = if config.auth.is_on() { "on" } else { "off" },
        jwt_algorithms = ?config.auth.algorithms(),
        jwt_leeway_ms = ms(config.auth.leeway()),
        public_topics = ?config.auth.public_topics().iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        metrics_public = config.auth.metrics_public(),
        "configuration"
    );
}

/// Serves until `shutdown` is cancelled; open streams end at once (their clients resume
/// elsewhere with `Last-Event-ID`), then tasks get the grace period to finish.
///
/// # Errors
/// [`RunError::Redis`] for an unusable Redis URL or seed list, [`RunError::Io`] if
/// serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    log_config(&config);
    let tracker = TaskTracker::new();
    let metrics = metrics::Metrics::new().map_err(std::io::Error::other)?;
    let partition = partition::Partition::new(&shutdown);
    let (history, hub, readiness, embedded) = match &config.redis {
        None => {
            let store = publisher::MemoryStore::new(config.retention);
            let hub = Hub::new(config.hub_capacity.get(), true);
            tracker.spawn(embedded::feed(
                store.clone(),
                hub.clone(),
                shutdown.child_token(),
            ));
            (
                History::Memory(store.clone()),
                hub,
                Readiness::always(),
                Some(store),
            )
        }
        Some(target) => {
            let hub = Hub::new(config.hub_capacity.get(), false);
            let history = History::Redis(RedisHistory::connect(
                target,
                config.redis_timeout,
                config.replay_reads.get(),
            )?);
            let readiness = subscription::start(
                &config,
                target,
                hub.clone(),
                history.clone(),
                metrics.clone(),
                &tracker,
                shutdown.child_token(),
            )?;
            tracker.spawn(partition::watch(
                partition.clone(),
                readiness.clone(),
                config.peers.clone(),
                config.partition_timeout,
                metrics.clone(),
                shutdown.child_token(),
            ));
            (history, hub, readiness, None)
        }
    };
    let mode = match &config.redis {
        None => "embedded single-node",
        Some(service::RedisTarget::Single(_)) => "redis",
        Some(service::RedisTarget::Cluster(_)) => "redis cluster",
    };
    let grace = config.grace_period;
    let config_admin = config.admin_listen;
    let listener = listener::TimedListener::new(
        listener,
        config.write_timeout,
        metrics.slow_disconnects.clone(),
    );
    let state_limits = config.request_limits;
    let state = http::AppState {
        hub,
        history,
        streams: Arc::new(tokio::sync::Semaphore::new(config.max_connections.get())),
        config: Arc::new(config),
        readiness,
        partition,
        shutdown: shutdown.clone(),
        metrics,
    };
    let metrics_here = match config_admin {
        None => true,
        Some(addr) => {
            service::admin::serve(addr, http::admin_router(state.clone()), shutdown.clone())
                .await?;
            false
        }
    };
    let app = http::router(state, embedded, metrics_here).map_err(std::io::Error::other)?;
    tracing::info!(addr = %axum::serve::Listener::local_addr(&listener)?, mode, "gateway listening");
    // On shutdown the accept loop stops at once; open streams end over the drain window.
    let serve = tokio::spawn(serve::serve(
        listener,
        app,
        state_limits,
        shutdown.clone(),
        tracker.clone(),
    ));
    shutdown.cancelled().await;
    tracker.close();
    let drained = tokio::time::timeout(grace, async {
        let served = serve.await;
        tracker.wait().await;
        served
    })
    .await;
    match drained {
        Ok(served) => served.map_err(std::io::Error::other)?,
        Err(_) => tracing::warn!(
            ?grace,
            "still draining after the grace period; exiting anyway"
        ),
    }
    Ok(())
}
