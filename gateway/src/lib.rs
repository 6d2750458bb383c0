//! The gateway: a stateless pod that holds SSE connections and pushes LoopBack change
//! events to browsers.
//!
//! ```text
//! Redis pub/sub --> subscription (reader) --> hub (topic -> broadcast of framed events)
//!                                              |
//!   browser <-- conn <-- sse <-- client::ClientStream (history, then live; gap refill)
//!                                              |
//! Redis stream  <-- history (XRANGE by id) ----+
//! ```
//!
//! - [`app`]: the two modes (embedded, fleet) and what differs between them.
//! - [`hub`]: per-topic fan-out; [`event`]: each event decoded and framed once, shared.
//! - [`subscription`]: the pod's Redis subscription (one Redis, or sharded pub/sub on a
//!   Redis Cluster), reconnection, readiness; [`partition`]: what the pod does when Redis
//!   is out of reach (alone, or the whole fleet).
//! - [`client`]: one client's state machine: its position, replay from `Last-Event-ID`,
//!   exact hand-over to live, gap refill by the id chain, `reset` when history is gone.
//! - [`history`]: a topic's stream read back by id (Redis, or the embedded
//!   [`publisher::MemoryStore`]).
//! - [`http`]: routes and handlers ([`http::STREAM_ROUTES`]: the stream routes);
//!   [`sse`]: the SSE response; [`conn`]: the accept loop and the hand-written HTTP/1.1
//!   that serves streams without hyper.
//! - [`assets`]: the browser client (`/client/live-set.js`) and the `/demo` page.
//!
//! [`run`] reads as the architecture: build the mode's parts, spawn what feeds the hub,
//! serve, and drain in order.

/// Gives a `HashMap` or `HashSet` that is under a quarter full (and past 1,024 slots)
/// its spare room back: a burst of topics or streams leaves no memory behind once it is
/// over. Halving only at a quarter keeps the cost amortized over the removals.
macro_rules! shrink_sparse {
    ($collection:expr) => {{
        let collection = &mut $collection;
        if collection.capacity() > 1024 && collection.len() * 4 < collection.capacity() {
            collection.shrink_to(collection.len() * 2);
        }
    }};
}

pub mod app;
pub mod assets;
pub mod client;
pub mod config;
pub mod conn;
pub mod embedded;
pub mod error;
pub mod event;
pub mod history;
pub mod http;
pub mod hub;
pub mod memory;
pub mod metrics;
pub mod partition;
pub mod sse;
pub mod subscription;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use error::RunError;
pub use service::shutdown;
pub use service::telemetry;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::Mode;
use crate::conn::TimedListener;
use crate::partition::Partition;

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

/// Serves until `shutdown` is cancelled, then drains in order ([`drain`]).
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
    let partition = Partition::new(&shutdown);
    // Live delivery (the subscription, or the embedded feed) outlives the streams: it is
    // stopped only once they have all ended (`drain`).
    let feeds = CancellationToken::new();
    let mode = Mode::of(&config);
    let mode_name = mode.name();
    let parts = mode.start(&config, &metrics, &partition, &tracker, &feeds)?;

    let max_streams = config.max_connections.get();
    let streams = Arc::new(Semaphore::new(max_streams));
    let listener = TimedListener::new(
        listener,
        config.write_timeout,
        metrics.slow_disconnects.clone(),
    );
    let (admin_listen, limits, grace) = (
        config.admin_listen,
        config.request_limits,
        config.grace_period,
    );
    let state = http::AppState {
        hub: parts.hub,
        history: parts.history,
        streams: streams.clone(),
        config: Arc::new(config),
        readiness: parts.readiness,
        partition,
        shutdown: shutdown.clone(),
        metrics: Arc::new(metrics),
    };
    if let Some(addr) = admin_listen {
        let admin = http::admin_router(state.clone());
        service::admin::serve(addr, admin, shutdown.clone(), &tracker).await?;
    }
    let serve = http::Serve {
        rest: parts.rest,
        metrics: admin_listen.is_none(),
    };
    let app = http::app(state, serve).map_err(std::io::Error::other)?;
    tracing::info!(addr = %axum::serve::Listener::local_addr(&listener)?, mode = mode_name, "gateway listening");
    let serving = tokio::spawn(conn::serve(
        listener,
        app,
        limits,
        shutdown.clone(),
        tracker.clone(),
    ));

    shutdown.cancelled().await;
    drain(serving, &streams, max_streams, &feeds, &tracker, grace).await
}

/// The drain, in DESIGN.md's order: the accept loop has stopped (new connections are
/// refused and retried elsewhere); each open stream ends at a random moment of the drain
/// window while live delivery keeps flowing to it, so its client gets every event until
/// its own close and then resumes elsewhere; only once every stream has given back its
/// place is the subscription (or the embedded feed) closed; then the remaining tasks
/// finish. All within `grace`; past it the process exits anyway.
async fn drain(
    serving: tokio::task::JoinHandle<()>,
    streams: &Semaphore,
    max_streams: usize,
    feeds: &CancellationToken,
    tracker: &TaskTracker,
    grace: Duration,
) -> Result<(), RunError> {
    let drained = tokio::time::timeout(grace, async {
        let served = serving.await;
        // Every open stream holds one permit until its body is dropped. The semaphore is
        // never closed, so this waits for the last stream.
        let every_place = u32::try_from(max_streams).unwrap_or(u32::MAX);
        let _streams_ended = streams.acquire_many(every_place).await;
        feeds.cancel();
        tracker.close();
        tracker.wait().await;
        served
    })
    .await;
    feeds.cancel();
    match drained {
        Ok(served) => served.map_err(std::io::Error::other)?,
        Err(_) => tracing::warn!(
            ?grace,
            "still draining after the grace period; exiting anyway"
        ),
    }
    Ok(())
}
