//! `/healthz`, `/readyz` and `/readyz/redis`: what the kubelet and the pod's peers ask.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use service::http::Health;
use service::openapi::OpenApiRouter;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::AppState;
use crate::partition::Reach;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(service::http::healthz))
        .routes(routes!(readyz))
        .routes(routes!(readyz_redis))
}

/// Whether the Service should send this pod new streams (docs/OPERATIONS.md, "When Redis
/// is out of reach"):
/// - `200 ready`: Redis answers and every topic's subscription is confirmed;
/// - `200 degraded`: Redis is out of reach from every gateway asked (a fleet-wide outage):
///   an unready fleet would leave the Service without endpoints and the ingress would
///   answer 503 itself, which ends EventSource for good; this pod tells streams to retry;
/// - `503`: draining, starting, or cut off from Redis while a peer reaches it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "`ready`, or `degraded`: Redis is out of reach from every gateway asked (streams are kept, new ones told to retry).", body = Health),
        (status = 503, description = "`draining`, or `unavailable` (starting, or cut off from Redis while a peer reaches it), with the `reason`.", body = Health),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let unavailable = |status: &'static str, reason: &'static str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health::new(status).because(reason)),
        )
            .into_response()
    };
    if state.shutdown.is_cancelled() {
        return unavailable("draining", "shutting down");
    }
    if state.readiness.is_up() && state.hub.all_confirmed() {
        return Json(Health::new("ready")).into_response();
    }
    match (state.readiness.unreachable(), state.partition.reach()) {
        (true, Reach::Fleet) => Json(Health::new("degraded").because(
            "redis unreachable from every gateway; streams are kept and new ones told to retry",
        ))
        .into_response(),
        (true, Reach::Alone) => unavailable(
            "unavailable",
            "redis unreachable from this pod while a peer reaches it",
        ),
        _ => unavailable("unavailable", "redis subscription not confirmed"),
    }
}

/// Whether this pod reaches Redis now, whatever its peers do.
///
/// What peers ask to tell a partition of one pod from an outage of all.
#[utoipa::path(
    get,
    path = crate::partition::PEER_PATH,
    tag = "health",
    operation_id = "readyzRedis",
    responses(
        (status = 200, description = "`{\"redis\":\"up\"}`", body = RedisReach),
        (status = 503, description = "`{\"redis\":\"down\"}`", body = RedisReach),
    ),
)]
async fn readyz_redis(State(state): State<AppState>) -> Response {
    if state.readiness.is_up() {
        Json(RedisReach { redis: "up" }).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(RedisReach { redis: "down" }),
        )
            .into_response()
    }
}

/// `{"redis":"up"}` or `{"redis":"down"}`.
#[derive(Debug, Serialize, ToSchema)]
struct RedisReach {
    #[schema(example = "up")]
    redis: &'static str,
}
