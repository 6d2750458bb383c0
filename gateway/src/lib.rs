//! The gateway: a stateless pod that holds SSE connections and fans change events out
//! to browsers.
//!
//! This is the skeleton: with no Redis configured it runs single-node on the embedded
//! in-memory store and serves the publisher's REST API, so one process is a complete
//! LoopBack-style app. The change-stream endpoints, the Redis subscription and replay
//! come next (see the issues).

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use publisher::shutdown;
pub use publisher::telemetry;

/// Serves until `shutdown` is cancelled.
///
/// # Errors
/// If serving on `listener` fails.
pub async fn run(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let store = publisher::MemoryStore::new(publisher::Retention::default());
    let app = publisher::api::router(publisher::api::ApiState::new(
        store,
        publisher::api::DEFAULT_BODY_LIMIT,
    ));
    tracing::info!(addr = %listener.local_addr()?, "gateway listening (embedded single-node mode)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
