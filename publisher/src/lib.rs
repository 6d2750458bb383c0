//! The publisher: writes a record and its change event to Redis in one atomic step, and
//! serves the LoopBack-style REST API over it.
//!
//! ```text
//! REST request -> api (validate, 4xx) -> store::RedisStore -> EVALSHA publish script
//!                                          (HSET record + XADD stream + PUBLISH, atomic;
//!                                           in a Redis Cluster on the topic's slot, SPUBLISH)
//! ```
//!
//! - [`store`]: the [`Store`] trait, [`RedisStore`] (production) and [`MemoryStore`] (the
//!   store the embedded gateway runs on). Rust backends use a store directly as a library.
//! - [`api`]: the HTTP routes; every error is a [`service::ApiError`], the store's own
//!   through [`StoreError`].
//! - [`config`]: the publisher's settings.
//!
//! The plumbing it runs on (settings layering, auth, limits, telemetry, shutdown, Redis
//! connections) is the [`service`] crate, shared with the gateway. What it does not own:
//! SSE, subscriptions, replay (the gateway's).

pub mod api;
pub mod config;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod store;

pub use config::Config;
pub use error::{ApiError, StoreError};
pub use ops::{Answer, BatchLimits, Where};
pub use service::RedisTarget;
pub use store::{
    Idempotency, IdempotencyKey, MemoryStore, RedisOptions, RedisStore, Retention, Snapshot, Store,
    Written,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("redis: {0}")]
    Store(#[from] StoreError),
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the REST API on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish for at most the configured grace period.
///
/// # Errors
/// [`RunError::Store`] for an unusable Redis URL, [`RunError::Io`] if serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    tracing::info!(
        listen = %config.listen,
        admin_listen = config.admin_listen.map(|a| a.to_string()),
        redis_url = (!config.redis.is_cluster()).then(|| config.redis.redacted()),
        redis_cluster = config.redis.is_cluster().then(|| config.redis.redacted()),
        body_limit = config.body_limit,
        stream_max_len = config.retention.max_len,
        stream_max_age_ms = ms(config.retention.max_age),
        redis_timeout_ms = ms(config.redis_timeout),
        grace_period_ms = ms(config.grace_period),
        auth = if config.auth.is_on() { "on" } else { "off" },
        jwt_algorithms = ?config.auth.algorithms(),
        jwt_leeway_ms = ms(config.auth.leeway()),
        metrics_public = config.auth.metrics_public(),
        idempotency_ttl_ms = ms(config.idempotency_ttl),
        batch_max_items = config.batch.max_items,
        batch_max_bytes = config.batch.max_bytes,
        "configuration"
    );
    let store = RedisStore::connect(&config.redis, config.redis_options())?;
    let registry = prometheus::Registry::new();
    let metrics = metrics::PublisherMetrics::register(&registry).map_err(std::io::Error::other)?;
    let state = api::ApiState::new(store, config.body_limit, metrics, config.auth.clone())
        .with_rate_limit(config.rate_limiter())
        .with_writes(config.idempotency_ttl, config.batch);
    // The admin server, if any, runs on the tracker; the main one is awaited below.
    let tracker = tokio_util::task::TaskTracker::new();
    let app = match config.admin_listen {
        None => api::router(state, Some(registry)),
        Some(addr) => {
            let admin_app = api::admin_router(state.clone(), registry);
            service::admin::serve(addr, admin_app, shutdown.clone(), &tracker).await?;
            api::router(state, None)
        }
    };
    let app = app.layer(axum::middleware::from_fn_with_state(
        config.request_limits,
        service::limits::check_request,
    ));

    tracing::info!(addr = %listener.local_addr()?, "publisher listening");
    let grace = config.grace_period;
    let serve =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let serve = tokio::spawn(async move { serve.await });
    shutdown.cancelled().await;
    tracker.close();
    let finished = tokio::time::timeout(grace, async {
        let served = serve.await;
        tracker.wait().await;
        served
    });
    match finished.await {
        Ok(joined) => joined.map_err(std::io::Error::other)??,
        Err(_) => tracing::warn!(
            ?grace,
            "requests still running after the grace period; exiting anyway"
        ),
    }
    Ok(())
}
