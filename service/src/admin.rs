//! The optional admin port: `/metrics`, `/healthz` and `/readyz` on their own address, so
//! the metrics need not be reachable where the public API is (`admin_listen`). Without it
//! they are served on the main port. The routes are `publisher::api::admin_router` (and the
//! gateway's own); `/metrics` there follows `metrics_public` as on the main port.

use std::future::IntoFuture;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Binds `addr` and serves `app` there until `shutdown`, on `tracker` (so the process waits
/// for it like for its other tasks). Logs the bound address as `admin_addr` (port 0 picks
/// a free one).
///
/// # Errors
/// If `addr` cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(admin_addr = %listener.local_addr()?, "admin listening (/metrics, /healthz, /readyz)");
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
    tracker.spawn(async move {
        if let Err(e) = serve.into_future().await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(())
}
