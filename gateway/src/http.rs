//! Routes: LoopBack's change stream (`GET`/`POST /api/{collection}/change-stream`),
//! health, readiness and, in embedded mode, the publisher's REST API.
//!
//! Auth ([`publisher::auth`]): a presented token is verified by the [`Caller`] extractor
//! (401 if bad); each topic is then checked with [`Auth::authorize_subscribe`] (401 without
//! a token, 403 without a grant; public topics need none), and the stream ends when
//! [`Auth::access_ends`] says. `/healthz` and `/readyz` never need a token, `/metrics`
//! only with `metrics_public = false`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::FromRef;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proto::{EventId, Topic};
use publisher::MemoryStore;
use publisher::api::{ApiState, healthz, metrics_route, no_route, wrong_method};
use publisher::auth::{Auth, Caller};
use publisher::metrics::PublisherMetrics;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use tower_http::cors::{Any, CorsLayer};

use crate::bus::Bus;
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::redis_sub::Readiness;
use crate::replay::ClientStream;
use crate::sse;

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub bus: Bus,
    pub config: Arc<Config>,
    pub readiness: Readiness,
    /// Ends every open SSE response when cancelled (each at a random moment of the drain
    /// window), and turns `/readyz` and new streams away.
    pub shutdown: CancellationToken,
    /// One permit per open SSE stream (`max_connections`). None left: 503 + Retry-After.
    pub streams: Arc<Semaphore>,
    pub metrics: Metrics,
}

/// What [`Caller`] verifies tokens with.
impl FromRef<AppState> for Auth {
    fn from_ref(state: &AppState) -> Self {
        state.config.auth.clone()
    }
}

/// The gateway's routes; `embedded` adds the publisher REST API over the same store.
///
/// # Errors
/// Only if the embedded publisher's metrics clash with the gateway's (a programming error).
pub fn router(state: AppState, embedded: Option<MemoryStore>) -> prometheus::Result<Router> {
    let body_limit = state.config.body_limit;
    let auth = state.config.auth.clone();
    let registry = state.metrics.registry.clone();
    let mut app = Router::new()
        .route(
            "/api/{collection}/change-stream",
            get(change_stream_get).post(change_stream_post),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", metrics_route(registry.clone()))
        .with_state(state);
    if let Some(store) = embedded {
        let metrics = PublisherMetrics::register(&registry)?;
        app = app.merge(
            publisher::api::routes().with_state(ApiState::new(store, body_limit, metrics, auth)),
        );
    }
    Ok(app
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(publisher::telemetry::http_trace())
        .layer(cors()))
}

/// Any origin may read (no credentials yet); the preflight allows `Last-Event-ID`, which
/// browsers send on reconnect and which makes them preflight a cross-origin request.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("last-event-id"),
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::CACHE_CONTROL,
            header::AUTHORIZATION,
        ])
        .max_age(std::time::Duration::from_secs(86_400))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "draining", "reason": "shutting down" })),
        )
            .into_response();
    }
    if state.readiness.is_up() && state.hub.all_confirmed() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": "redis subscription not confirmed" })),
        )
            .into_response()
    }
}

/// Query parameters of the change stream. Unknown ones are ignored, as LoopBack does.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    #[serde(rename = "_format")]
    format: Option<String>,
    options: Option<String>,
    last_event_id: Option<String>,
}

async fn change_stream_get(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let options = query.options.as_deref().map(parse_options).transpose()?;
    change_stream(state, &caller, path, query, options, &headers).await
}

async fn change_stream_post(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // LoopBack's POST variant takes `options` in a JSON body; an empty body is fine.
    let mut options = query.options.as_deref().map(parse_options).transpose()?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let parsed: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let Value::Object(mut object) = parsed else {
            return Err(ApiError::BadRequest(
                "request body must be a JSON object".into(),
            ));
        };
        if let Some(o) = object.remove("options") {
            options = Some(o);
        }
    }
    change_stream(state, &caller, path, query, options, &headers).await
}

/// `options` as LoopBack takes it: a JSON object (in the query, as JSON text).
fn parse_options(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("options is not valid JSON: {e}")))
}

async fn change_stream(
    state: AppState,
    caller: &Caller,
    path: Result<Path<String>, PathRejection>,
    query: StreamQuery,
    options: Option<Value>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let Path(collection) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let topic = Topic::new(&collection)?;
    // Before anything else about the request, resume included: a refused client learns
    // nothing about the topic's history.
    state
        .config
        .auth
        .authorize_subscribe(caller.claims(), &topic)?;
    let access_ends = state.config.auth.access_ends(caller.claims(), &topic);
    negotiate(query.format.as_deref(), headers)?;
    check_options(options.as_ref())?;
    let resume = resume_position(headers, query.last_event_id.as_deref())?;

    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable(
            "this gateway is shutting down; reconnect".into(),
        ));
    }
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        return Err(ApiError::Unavailable(format!(
            "this gateway holds its maximum of {} streams; retry shortly",
            state.config.max_connections
        )));
    };
    let mut membership = state.hub.join(&topic);
    if !membership.confirmed(state.config.subscribe_timeout).await {
        return Err(ApiError::Unavailable(
            "the gateway could not subscribe to Redis; retry shortly".into(),
        ));
    }
    let client = ClientStream::open(
        topic.clone(),
        state.bus.clone(),
        membership,
        resume,
        state.config.replay_page.get(),
        state.config.heartbeat,
        state.metrics.clone(),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "cannot open change stream");
        ApiError::Unavailable("Redis is unavailable; retry shortly".into())
    })?;
    let drained = sse::drained(state.shutdown.clone(), state.config.drain_window);
    let expired = async move {
        sse::expired(access_ends).await;
        tracing::info!(%topic, "access token expired; ending the stream");
    };
    Ok(sse::response(
        client,
        permit,
        state.config.retry,
        sse::until_either(drained, expired),
    ))
}

/// SSE when `_format=event-stream`, when the client accepts `text/event-stream` (as
/// EventSource does), or when it states no preference (`*/*`, no `Accept`): curl gets a
/// stream too. Only a client that accepts other types alone gets 406.
fn negotiate(format: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(format) = format {
        return if format.eq_ignore_ascii_case("event-stream") {
            Ok(())
        } else {
            Err(ApiError::NotAcceptable(format!(
                "change-stream answers only as event-stream; got _format={format:?}"
            )))
        };
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let accepts_sse = accept.trim().is_empty()
        || accept.split(',').any(|range| {
            let essence = range
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            matches!(essence.as_str(), "text/event-stream" | "text/*" | "*/*")
        });
    if accepts_sse {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!(
            "change-stream answers only as text/event-stream; Accept was {accept:?}"
        )))
    }
}

/// Filters arrive with a later release; until then a filter is refused, never silently
/// ignored (that would be a match-all).
fn check_options(options: Option<&Value>) -> Result<(), ApiError> {
    let Some(options) = options else {
        return Ok(());
    };
    let Value::Object(object) = options else {
        return Err(ApiError::BadRequest("options must be a JSON object".into()));
    };
    for key in ["where", "fields"] {
        if object.get(key).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::BadRequest(format!(
                "options.{key} is not supported yet; subscribe without it"
            )));
        }
    }
    Ok(())
}

/// `Last-Event-ID` header, else the `last_event_id` query parameter (EventSource cannot
/// set headers on its first connection). The header wins. Empty means none.
fn resume_position(headers: &HeaderMap, query: Option<&str>) -> Result<Option<EventId>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?,
        ),
        None => None,
    };
    match header.or(query).map(str::trim).filter(|s| !s.is_empty()) {
        Some(id) => Ok(Some(EventId::parse(id)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn negotiation() {
        let mut h = HeaderMap::new();
        assert!(negotiate(None, &h).is_ok());
        assert!(negotiate(Some("event-stream"), &h).is_ok());
        assert!(negotiate(Some("json"), &h).is_err());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert!(negotiate(None, &h).is_ok());
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(negotiate(None, &h).is_err());
        assert!(negotiate(Some("event-stream"), &h).is_ok());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, */*;q=0.1"),
        );
        assert!(negotiate(None, &h).is_ok());
    }

    #[test]
    fn resume_header_wins_over_query() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_position(&h, None).unwrap(), None);
        assert_eq!(
            resume_position(&h, Some("5-1")).unwrap(),
            Some(EventId::new(5, 1))
        );
        h.insert("last-event-id", HeaderValue::from_static("7-0"));
        assert_eq!(
            resume_position(&h, Some("5-1")).unwrap(),
            Some(EventId::new(7, 0))
        );
        h.insert("last-event-id", HeaderValue::from_static("nope"));
        assert!(resume_position(&h, Some("5-1")).is_err());
    }
}
