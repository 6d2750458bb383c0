//! `/healthz`, `/readyz` and `/readyz/redis`: what the kubelet and the pod's peers ask.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use service::http::healthz;

use super::AppState;
use crate::partition::Reach;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(crate::partition::PEER_PATH, get(readyz_redis))
}

/// Whether the Service should send this pod new streams (docs/OPERATIONS.md, "When Redis
/// is out of reach"):
/// - `200 ready`: Redis answers and every topic's subscription is confirmed;
/// - `200 degraded`: Redis is out of reach from every gateway asked (a fleet-wide outage):
///   an unready fleet would leave the Service without endpoints and the ingress would
///   answer 503 itself, which ends EventSource for good; this pod tells streams to retry;
/// - `503`: draining, starting, or cut off from Redis while a peer reaches it.
async fn readyz(State(state): State<AppState>) -> Response {
    let unavailable = |status: &str, reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": status, "reason": reason })),
        )
            .into_response()
    };
    if state.shutdown.is_cancelled() {
        return unavailable("draining", "shutting down");
    }
    if state.readiness.is_up() && state.hub.all_confirmed() {
        return Json(json!({ "status": "ready" })).into_response();
    }
    match (state.readiness.unreachable(), state.partition.reach()) {
        (true, Reach::Fleet) => Json(json!({
            "status": "degraded",
            "reason": "redis unreachable from every gateway; streams are kept and new ones told to retry",
        }))
        .into_response(),
        (true, Reach::Alone) => unavailable(
            "unavailable",
            "redis unreachable from this pod while a peer reaches it",
        ),
        _ => unavailable("unavailable", "redis subscription not confirmed"),
    }
}

/// `GET /readyz/redis`: whether this pod reaches Redis now, whatever its peers do. What
/// peers ask to tell a partition of one pod from an outage of all ([`crate::partition`]).
async fn readyz_redis(State(state): State<AppState>) -> Response {
    if state.readiness.is_up() {
        Json(json!({ "redis": "up" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "redis": "down" })),
        )
            .into_response()
    }
}
