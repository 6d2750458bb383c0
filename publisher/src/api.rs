//! The LoopBack-style REST API over any [`Store`]:
//!
//! | method | path | answer |
//! |---|---|---|
//! | `POST` | `/api/{collection}` | the created record (id assigned) |
//! | `GET` | `/api/{collection}` | every record, by id |
//! | `GET` | `/api/{collection}/{id}` | the record, or 404 |
//! | `PUT` | `/api/{collection}/{id}` | the replaced record, or 404 |
//! | `PATCH` | `/api/{collection}/{id}` | the merged record, or 404 |
//! | `DELETE` | `/api/{collection}/{id}` | `{"count":1}` or `{"count":0}` |
//! | `POST` | `/publish` | `{"id":"<stream id>"}`: a change without a record write |
//! | `GET` | `/healthz`, `/readyz` | liveness; readiness (the store answers) |
//!
//! Every error is LoopBack's JSON shape (see [`ApiError`]) and writes nothing.
//!
//! With auth on ([`Auth`]), every data route needs a token (a bad one is a 401 before the
//! body is read): mutations and `/publish` a `publish` grant on the topic, reads a
//! `subscribe` or `publish` grant. `/healthz` and `/readyz` never need one; `/metrics`
//! only with `metrics_public = false`.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::{Change, FilterLimits, Object, Query, RecordId, Topic};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

use prometheus::Registry;
use service::auth::{Auth, Authenticated, Claims};
use service::http::{BodyLimit, JsonObject, healthz, metrics_route, no_route, wrong_method};
use service::limits::RateLimiter;

use crate::error::{ApiError, StoreError};
use crate::metrics::PublisherMetrics;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct ApiState<S> {
    pub store: S,
    pub body_limit: BodyLimit,
    pub metrics: PublisherMetrics,
    /// Who may publish and read which topic ([`Auth::off`] in development).
    pub auth: Auth,
    /// Events per second per token subject; `None`: no limit.
    pub rate: Option<Arc<RateLimiter>>,
}

impl<S> ApiState<S> {
    pub fn new(store: S, body_limit: usize, metrics: PublisherMetrics, auth: Auth) -> Self {
        Self {
            store,
            body_limit: BodyLimit(body_limit),
            metrics,
            auth,
            rate: None,
        }
    }

    /// Limits writes to `limiter`'s rate per token subject.
    #[must_use]
    pub fn with_rate_limit(mut self, limiter: Option<RateLimiter>) -> Self {
        self.rate = limiter.map(Arc::new);
        self
    }

    /// May this caller write `topic` now: its grant, then its rate. Nothing is written on
    /// refusal.
    fn authorize_write(&self, claims: Option<&Claims>, topic: &Topic) -> Result<(), ApiError> {
        self.auth.authorize_publish(claims, topic)?;
        if let Some(rate) = &self.rate {
            let subject = claims.and_then(|c| c.sub.as_deref()).unwrap_or("");
            rate.admit(subject, std::time::Instant::now())
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
        }
        Ok(())
    }

    /// Runs one store call of `kind`, counting its outcome and duration.
    async fn measured<T>(
        &self,
        kind: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.record(kind, started.elapsed(), &result);
        result
    }
}

impl<S: Clone> FromRef<ApiState<S>> for BodyLimit {
    fn from_ref(state: &ApiState<S>) -> Self {
        state.body_limit
    }
}

impl<S: Clone> FromRef<ApiState<S>> for Auth {
    fn from_ref(state: &ApiState<S>) -> Self {
        state.auth.clone()
    }
}

/// The REST API routes, health, `/metrics` from `registry` unless it is served on the
/// admin port (`None`), and JSON 404/405 fallbacks.
pub fn router<S: Store>(state: ApiState<S>, registry: Option<Registry>) -> Router {
    let mut app = routes().merge(health_routes());
    if let Some(registry) = registry {
        app = app.route("/metrics", metrics_route(registry));
    }
    app.method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
        .layer(service::telemetry::http_trace())
}

/// What the admin port serves: health and `/metrics`.
pub fn admin_router<S: Store>(state: ApiState<S>, registry: Registry) -> Router {
    health_routes()
        .route("/metrics", metrics_route(registry))
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
        .layer(service::telemetry::http_trace())
}

fn health_routes<S: Store>() -> Router<ApiState<S>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
}

/// The data routes alone (no health, no fallbacks), for a server that mounts them beside
/// its own (the embedded gateway).
pub fn routes<S: Store>() -> Router<ApiState<S>> {
    Router::new()
        .route("/api/{collection}", post(create::<S>).get(list::<S>))
        .route(
            "/api/{collection}/{id}",
            get(find::<S>)
                .put(replace::<S>)
                .patch(patch::<S>)
                .delete(delete::<S>),
        )
        .route("/publish", post(publish::<S>))
}

fn topic(path: &str) -> Result<Topic, ApiError> {
    Ok(Topic::new(path)?)
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("bad path: {}", e.body_text()))
}

/// A JSON response from text that is already JSON (stored records).
fn raw_json(text: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn create<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: Result<Path<String>, PathRejection>,
    JsonObject(body): JsonObject,
) -> Result<Json<Object>, ApiError> {
    let topic = topic(&path.map_err(path_error)?.0)?;
    state.authorize_write(caller.claims(), &topic)?;
    Ok(Json(
        state
            .measured("create", state.store.create(&topic, body))
            .await?
            .record,
    ))
}

/// LoopBack's `find`: the records `filter` selects (`?filter=<JSON>` or the bracket form,
/// [`Query`]), with `Last-Event-ID`: the stream position they are exactly the state of, so
/// a change stream opened with it yields exactly the later changes.
async fn list<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let topic = topic(&path.map_err(path_error)?.0)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?;
    let query = Query::from_query(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &FilterLimits::default(),
    )
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The token's row scope narrows what it reads, whatever its filter asks.
    let query = match caller.claims().and_then(|c| c.scope(&topic)) {
        Some(scope) => query.restricted_to(&scope),
        None => query,
    };
    let snapshot = state.store.snapshot(&topic).await?;
    let body = if query.is_empty() {
        format!("[{}]", snapshot.records.join(","))
    } else {
        let records = snapshot
            .records
            .iter()
            .map(|text| serde_json::from_str::<Object>(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Reply(format!("stored record is not a JSON object: {e}")))?;
        serde_json::Value::Array(
            query
                .apply(records)
                .into_iter()
                .map(serde_json::Value::Object)
                .collect(),
        )
        .to_string()
    };
    let mut response = raw_json(body);
    if let Ok(position) = HeaderValue::from_str(&snapshot.position.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("last-event-id"), position);
    }
    Ok(response)
}

type ItemPath = Result<Path<(String, String)>, PathRejection>;

fn item(path: ItemPath) -> Result<(Topic, RecordId), ApiError> {
    let Path((collection, id)) = path.map_err(path_error)?;
    Ok((topic(&collection)?, RecordId::from_path(&id)?))
}

async fn find<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
) -> Result<Response, ApiError> {
    let (topic, id) = item(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let record = state.store.get(&topic, &id).await?;
    // A record outside the token's row scope is not there, for this token.
    let scope = caller.claims().and_then(|c| c.scope(&topic));
    let visible = |text: &String| {
        scope.as_ref().is_none_or(|scope| {
            serde_json::from_str::<Object>(text).is_ok_and(|record| scope.matches(&record))
        })
    };
    match record {
        Some(record) if visible(&record) => Ok(raw_json(record)),
        _ => Err(StoreError::NotFound { topic, id }.into()),
    }
}

async fn replace<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    JsonObject(body): JsonObject,
) -> Result<Json<Object>, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    Ok(Json(
        state
            .measured("replace", state.store.replace(&topic, &id, body))
            .await?
            .record,
    ))
}

async fn patch<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    JsonObject(body): JsonObject,
) -> Result<Json<Object>, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    Ok(Json(
        state
            .measured("patch", state.store.patch(&topic, &id, body))
            .await?
            .record,
    ))
}

async fn delete<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let count = u8::from(
        state
            .measured("delete", state.store.delete(&topic, &id))
            .await?
            .is_some(),
    );
    Ok(Json(json!({ "count": count })))
}

/// `POST /publish` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    change: serde_json::Value,
    #[serde(default)]
    last: Option<Object>,
}

async fn publish<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    JsonObject(body): JsonObject,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: PublishRequest = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::BadRequest(format!("publish body: {e}")))?;
    let topic = topic(&request.topic)?;
    state.authorize_write(caller.claims(), &topic)?;
    let change = Change::deserialize(request.change)
        .map_err(|e| ApiError::BadRequest(format!("change: {e}")))?;
    let id = state
        .measured(
            "publish",
            state.store.publish(&topic, &change, request.last.as_ref()),
        )
        .await?;

    Ok(Json(json!({ "id": id.to_string() })))
}

async fn readyz<S: Store>(State(state): State<ApiState<S>>) -> Response {
    match state.store.ready().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "reason": "redis unreachable" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use service::auth::AuthOptions;
    use service::http::DEFAULT_BODY_LIMIT;
    use tower::ServiceExt;

    use crate::store::{MemoryStore, Retention};

    const SECRET: &str = "api-tests-secret-of-at-least-32-bytes";

    fn app(store: MemoryStore) -> Router {
        let auth = Auth::new(AuthOptions {
            jwt_secret: Some(SECRET.to_owned()),
            ..AuthOptions::default()
        })
        .unwrap();
        let registry = Registry::new();
        let metrics = PublisherMetrics::register(&registry).unwrap();
        router(
            ApiState::new(store, DEFAULT_BODY_LIMIT, metrics, auth),
            Some(registry),
        )
    }

    fn token(publish: &[&str]) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"exp": exp, "topics": {"publish": publish}}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    async fn status(app: &Router, request: Request) -> (StatusCode, Option<String>) {
        let res = app.clone().oneshot(request).await.unwrap();
        let challenge = res
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_owned());
        (res.status(), challenge)
    }

    fn create(token: Option<&str>, body: &'static str) -> Request {
        let mut req = Request::post("/api/Things").header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        req.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn refusals_come_first_and_write_nothing() {
        let store = MemoryStore::new(Retention::default());
        let app = app(store.clone());
        let (s, challenge) = status(&app, create(None, "{\"a\":1}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        // 401 before the body is looked at.
        assert_eq!(
            status(&app, create(None, "{nope")).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (s, challenge) = status(&app, create(Some("a.b.c"), "{\"a\":1}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer error=\"invalid_token\""));
        let other = token(&["Other"]);
        let (s, challenge) = status(&app, create(Some(&other), "{\"a\":1}")).await;
        assert_eq!((s, challenge), (StatusCode::FORBIDDEN, None));
        let topic = Topic::new("Things").unwrap();
        assert!(store.snapshot(&topic).await.unwrap().records.is_empty());

        let mine = token(&["Thing*"]);
        assert_eq!(
            status(&app, create(Some(&mine), "{\"a\":1}")).await.0,
            StatusCode::OK
        );
        assert_eq!(store.snapshot(&topic).await.unwrap().records.len(), 1);
        for path in ["/healthz", "/readyz", "/metrics"] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            assert_eq!(status(&app, req).await.0, StatusCode::OK, "{path}");
        }
    }
}
