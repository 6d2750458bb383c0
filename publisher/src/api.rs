//! The LoopBack `PersistedModel` REST API over any [`Store`]:
//!
//! | method | path | LoopBack | answer |
//! |---|---|---|---|
//! | `GET` | `/api/{c}` | `find` | the records `filter` selects, with `Last-Event-ID` |
//! | `POST` | `/api/{c}` | `create` | the created record, or with an array body every record (all or none) |
//! | `PATCH` | `/api/{c}` | `upsert` | the merged or created record |
//! | `PUT` | `/api/{c}`, `POST /api/{c}/replaceOrCreate` | `replaceOrCreate` | the replaced or created record |
//! | `POST` | `/api/{c}/upsertWithWhere?where=` | `upsertWithWhere` | the merged or created record |
//! | `POST` | `/api/{c}/update?where=` | `updateAll` | `{"count":N}` |
//! | `GET` | `/api/{c}/count?where=` | `count` | `{"count":N}` |
//! | `GET` | `/api/{c}/findOne?filter=` | `findOne` | the first record `filter` selects, or 404 |
//! | `GET` | `/api/{c}/{id}` | `findById` (with `filter[fields]`) | the record, or 404 |
//! | `GET` | `/api/{c}/{id}/exists`, `HEAD /api/{c}/{id}` | `exists` | `{"exists":bool}`; `HEAD`: 200 or 404 |
//! | `PUT` | `/api/{c}/{id}`, `POST /api/{c}/{id}/replace` | `replaceById` | the replaced record, or 404 |
//! | `PATCH` | `/api/{c}/{id}` | `patchAttributes` | the merged record, or 404 |
//! | `DELETE` | `/api/{c}/{id}` | `deleteById` | `{"count":1}` or `{"count":0}` |
//! | `POST` | `/publish` | | `{"id":"<stream id>"}`, or with an array one per change |
//! | `GET` | `/healthz`, `/readyz` | | liveness; readiness (the store answers) |
//!
//! Every write emits the change LoopBack's own change stream would, in the same atomic
//! step as the write ([`crate::ops`]). Every mutating route takes an `Idempotency-Key`
//! header: a retry with the same key and request answers the first answer again (with
//! `Idempotent-Replayed: true`) and writes nothing; another request under the key is a 422.
//! Every error is LoopBack's JSON shape (see [`ApiError`]) and writes nothing.
//!
//! `GET /openapi.json` describes all of it: each handler carries its `#[utoipa::path]` and
//! is registered with `routes!`, which serves it and documents it in one step; what the
//! operations share is added in [`openapi`].
//!
//! With auth on ([`Auth`]), every data route needs a token (a bad one is a 401 before the
//! body is read): writes and `/publish` a `publish` grant on the topic, reads a
//! `subscribe` or `publish` grant. A token's row scope (`topics.where`) narrows every read,
//! and the records `updateAll` and `upsertWithWhere` select. `/healthz` and `/readyz` never
//! need one; `/metrics` only with `metrics_public = false`.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use proto::{Change, Filter, FilterLimits, Object, Query, RecordId, Topic};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use service::auth::{Auth, Authenticated, Claims};
use service::http::{BodyLimit, Health, JsonBody, JsonObject, no_route, wrong_method};
use service::limits::RateLimiter;
use service::openapi::{ErrorBody, OpenApiRouter, alias};
use utoipa::ToSchema;
use utoipa_axum::routes;

use crate::error::{ApiError, StoreError};
use crate::metrics::PublisherMetrics;
use crate::ops::{self, Answer, BatchLimits, Where};
use crate::store::{Idempotency, IdempotencyKey, Store, Written};

mod openapi;

use openapi::{
    CollectionPath as CollectionParams, Count, CreateAnswer, CreateBody, Exists, FilterQuery,
    FoundRecord, ItemPath as ItemParams, NewRecord, PublishAnswer, PublishBody, Published, Record,
    RecordPatch, RequiredWhere, WhereQuery,
};

/// The request header that carries an idempotency key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header on an answer given again under an idempotency key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

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
    /// How long an idempotency key is remembered.
    pub idempotency_ttl: Duration,
    pub batch: BatchLimits,
}

impl<S> ApiState<S> {
    pub fn new(store: S, body_limit: usize, metrics: PublisherMetrics, auth: Auth) -> Self {
        Self {
            store,
            body_limit: BodyLimit(body_limit),
            metrics,
            auth,
            rate: None,
            idempotency_ttl: ops::default_ttl(),
            batch: BatchLimits::default(),
        }
    }

    /// Limits writes to `limiter`'s rate per token subject.
    #[must_use]
    pub fn with_rate_limit(mut self, limiter: Option<RateLimiter>) -> Self {
        self.rate = limiter.map(Arc::new);
        self
    }

    /// Keeps idempotency keys for `ttl`, and bounds batches by `batch`.
    #[must_use]
    pub fn with_writes(mut self, ttl: Duration, batch: BatchLimits) -> Self {
        self.idempotency_ttl = ttl;
        self.batch = batch;
        self
    }

    /// May this caller write `topic` now: its grant, then its rate (`events` of them).
    /// Nothing is written on refusal.
    fn authorize_write(&self, claims: Option<&Claims>, topic: &Topic) -> Result<(), ApiError> {
        self.auth.authorize_publish(claims, topic)?;
        if let Some(rate) = &self.rate {
            let subject = claims.and_then(|c| c.sub.as_deref()).unwrap_or("");
            rate.admit(subject, std::time::Instant::now())
                .map_err(|retry_after| ApiError::TooManyRequests { retry_after })?;
        }
        Ok(())
    }

    /// The request's idempotency key, if it has one, scoped to the caller's subject.
    fn idempotency(
        &self,
        headers: &HeaderMap,
        claims: Option<&Claims>,
    ) -> Result<Option<Idempotency>, ApiError> {
        let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(StoreError::BadIdempotencyKey.into());
        }
        let key = value
            .to_str()
            .map_err(|_| StoreError::BadIdempotencyKey)
            .and_then(IdempotencyKey::new)?;
        Ok(Some(Idempotency {
            subject: claims.and_then(|c| c.sub.clone()).unwrap_or_default(),
            key,
            ttl: self.idempotency_ttl,
        }))
    }

    /// Runs one write of `kind`, counting its outcome, duration and replays.
    async fn measured<T>(
        &self,
        kind: &str,
        call: impl Future<Output = Result<Answer<T>, StoreError>>,
    ) -> Result<Answer<T>, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.record(kind, started.elapsed(), &result);
        if let Ok(answer) = &result
            && answer.replayed
        {
            self.metrics.replays.with_label_values(&[kind]).inc();
        }
        result
    }

    fn batch_size(&self, kind: &str, items: usize) {
        self.metrics
            .batch_items
            .with_label_values(&[kind])
            .observe(items as f64);
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
/// admin port (`None`), `GET /openapi.json` describing them, and JSON 404/405 fallbacks.
pub fn router<S: Store>(state: ApiState<S>, registry: Option<Registry>) -> Router {
    let mut app = routes().merge(health_routes());
    if let Some(registry) = registry {
        app = app.routes(service::http::metrics(registry));
    }
    service::openapi::serve(app, openapi::document_info(), openapi::TAGS)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
        .layer(service::telemetry::http_trace())
}

/// What the admin port serves: health and `/metrics`.
pub fn admin_router<S: Store>(state: ApiState<S>, registry: Registry) -> Router {
    let (app, _) = health_routes()
        .routes(service::http::metrics(registry))
        .split_for_parts();
    app.method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(state)
        .layer(service::telemetry::http_trace())
}

fn health_routes<S: Store>() -> OpenApiRouter<ApiState<S>> {
    OpenApiRouter::new()
        .routes(routes!(service::http::healthz))
        .routes(routes!(readyz))
}

/// The data routes alone (no health, no fallbacks), documented, for a server that mounts
/// them beside its own (the embedded gateway). One `routes!` per path.
pub fn routes<S: Store>() -> OpenApiRouter<ApiState<S>> {
    let mut router = OpenApiRouter::new()
        .routes(routes!(list, create, upsert, replace_or_create))
        .routes(alias::<__path_replace_or_create, _>(
            "/api/{collection}/replaceOrCreate",
            "replaceOrCreateByPost",
            post(replace_or_create::<S>),
        ))
        .routes(routes!(upsert_with_where))
        .routes(routes!(update_all))
        .routes(routes!(count))
        .routes(routes!(find_one))
        .routes(routes!(find, head, replace, patch, delete))
        .routes(routes!(exists))
        .routes(alias::<__path_replace, _>(
            "/api/{collection}/{id}/replace",
            "replaceByIdByPost",
            post(replace::<S>),
        ))
        .routes(routes!(publish));
    openapi::describe_shared(&mut router.get_openapi_mut().paths);
    router
}

fn topic(path: &str) -> Result<Topic, ApiError> {
    Ok(Topic::new(path)?)
}

fn path_error(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("bad path: {}", e.body_text()))
}

type CollectionPath = Result<Path<String>, PathRejection>;

fn collection(path: CollectionPath) -> Result<Topic, ApiError> {
    topic(&path.map_err(path_error)?.0)
}

/// A JSON response from text that is already JSON (stored records).
fn raw_json(text: String) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        text,
    )
        .into_response()
}

/// A write's answer: `body`, marked when it is the first answer given again.
fn answered<T>(answer: Answer<T>, body: impl FnOnce(T) -> String) -> Response {
    let replayed = answer.replayed;
    let mut response = raw_json(body(answer.value));
    if replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

fn record_json(written: Written) -> String {
    proto::json::to_string(&written.record)
}

fn count_json(count: usize) -> String {
    json!(Count { count }).to_string()
}

/// The query string's decoded pairs.
fn query_pairs(uri: &Uri) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))
}

fn pairs_ref(pairs: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The find filter of `uri` (`filter=` or its bracket form), with the token's row scope
/// ANDed in.
fn find_query(uri: &Uri, claims: Option<&Claims>, topic: &Topic) -> Result<Query, ApiError> {
    let pairs = query_pairs(uri)?;
    let query = Query::from_query(pairs_ref(&pairs), &FilterLimits::default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // The token's row scope narrows what it reads, whatever its filter asks.
    Ok(match claims.and_then(|c| c.scope(topic)) {
        Some(scope) => query.restricted_to(&scope),
        None => query,
    })
}

/// The `where` of `uri` (`where=` or its bracket form), with the token's row scope ANDed
/// in. None: every record, unless `required` (a write must say what it selects; `{}` is
/// every record).
fn where_param(
    uri: &Uri,
    claims: Option<&Claims>,
    topic: &Topic,
    required: bool,
) -> Result<Where, ApiError> {
    let pairs = query_pairs(uri)?;
    let value = proto::query::json_param("where", pairs_ref(&pairs), &FilterLimits::default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let value = match value {
        Some(value) => value,
        None if required => {
            return Err(ApiError::BadRequest(
                "where is required: ?where={...} selects the records ({} selects every one)".into(),
            ));
        }
        None => Value::Object(Object::new()),
    };
    let scope = claims.and_then(|c| c.scope(topic));
    Ok(Where::new(&value, scope.as_ref())?)
}

/// The records of a snapshot, parsed.
fn parsed(records: &[String]) -> Result<Vec<Object>, ApiError> {
    records
        .iter()
        .map(|text| serde_json::from_str::<Object>(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Reply(format!("stored record is not a JSON object: {e}")).into())
}

/// `Last-Event-ID`: the position a read's records are exactly the state of.
fn at_position(mut response: Response, position: proto::EventId) -> Response {
    if let Ok(position) = HeaderValue::from_str(&position.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("last-event-id"), position);
    }
    response
}

/// LoopBack's `create`: one record, or an array of records written all or none.
///
/// A record without an `id` gets the collection's next one. The change stream gets one
/// `create` per record, adjacent, in array order.
#[utoipa::path(
    post,
    path = "/api/{collection}",
    tag = "records",
    operation_id = "create",
    params(CollectionParams),
    request_body = CreateBody,
    responses(
        (status = 200, description = "The created record, or the created records in order.", body = CreateAnswer),
        (status = 409, description = "A record with that id exists (`DUPLICATE_ID`), or the counter has reached the largest safe integer (`ID_COUNTER_EXHAUSTED`).", body = ErrorBody),
    ),
)]
async fn create<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    match body {
        Value::Object(body) => {
            let answer = state
                .measured(
                    "create",
                    ops::create(&state.store, &topic, body, idem.as_ref()),
                )
                .await?;
            Ok(answered(answer, record_json))
        }
        Value::Array(items) => {
            let bodies = items
                .into_iter()
                .enumerate()
                .map(|(n, item)| match item {
                    Value::Object(body) => Ok(body),
                    _ => Err(ApiError::BadRequest(format!(
                        "request body[{n}] must be a JSON object"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            state.batch_size("create", bodies.len());
            let answer = state
                .measured(
                    "create",
                    ops::create_many(&state.store, &topic, bodies, idem.as_ref(), &state.batch),
                )
                .await?;
            Ok(answered(answer, |written| {
                let records: Vec<Object> = written.into_iter().map(|w| w.record).collect();
                proto::json::to_string(&records)
            }))
        }
        _ => Err(ApiError::BadRequest(
            "request body must be a JSON object or an array of objects".into(),
        )),
    }
}

/// LoopBack's `find`: the records `filter` selects.
///
/// Default order: integer ids ascending, then string ids. The answer's `Last-Event-ID` is
/// the stream position the records are exactly the state of, so a change stream opened
/// with it yields exactly the later changes.
#[utoipa::path(
    get,
    path = "/api/{collection}",
    tag = "records",
    operation_id = "find",
    params(CollectionParams, FilterQuery),
    responses(
        (status = 200, description = "The records, in the filter's order.", body = [FoundRecord], headers(("last-event-id" = String, description = "The stream position whose state the answer is exactly: a change stream opened with it sends exactly the later changes."))),
        (status = 409, description = "The collection's changes come from a backend's `POST /publish`: its records are not kept here (`RECORDS_NOT_KEPT`).", body = ErrorBody),
    ),
)]
async fn list<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let query = find_query(&uri, caller.claims(), &topic)?;
    let snapshot = state.store.snapshot(&topic).await?;
    let body = if query.is_empty() {
        format!("[{}]", snapshot.records.join(","))
    } else {
        proto::json::to_string(&query.apply(parsed(&snapshot.records)?))
    };
    Ok(at_position(raw_json(body), snapshot.position))
}

/// LoopBack's `findOne`: the first record `filter` selects.
#[utoipa::path(
    get,
    path = "/api/{collection}/findOne",
    tag = "records",
    operation_id = "findOne",
    params(CollectionParams, FilterQuery),
    responses(
        (status = 200, description = "The first record the filter selects.", body = FoundRecord, headers(("last-event-id" = String, description = "The stream position whose state the answer is exactly: a change stream opened with it sends exactly the later changes."))),
        (status = 404, description = "No record matches (`MODEL_NOT_FOUND`).", body = ErrorBody),
        (status = 409, description = "The collection's changes come from a backend's `POST /publish`: its records are not kept here (`RECORDS_NOT_KEPT`).", body = ErrorBody),
    ),
)]
async fn find_one<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let query = find_query(&uri, caller.claims(), &topic)?.first();
    let snapshot = state.store.snapshot(&topic).await?;
    match query.apply(parsed(&snapshot.records)?).into_iter().next() {
        Some(record) => Ok(at_position(
            raw_json(proto::json::to_string(&record)),
            snapshot.position,
        )),
        None => Err(StoreError::NoneFound { topic }.into()),
    }
}

/// LoopBack's `count`: how many records `where` selects.
#[utoipa::path(
    get,
    path = "/api/{collection}/count",
    tag = "records",
    operation_id = "count",
    params(CollectionParams, WhereQuery),
    responses(
        (status = 200, description = "`{\"count\":N}`", body = Count, headers(("last-event-id" = String, description = "The stream position whose state the answer is exactly: a change stream opened with it sends exactly the later changes."))),
        (status = 409, description = "The collection's changes come from a backend's `POST /publish`: its records are not kept here (`RECORDS_NOT_KEPT`).", body = ErrorBody),
    ),
)]
async fn count<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let where_ = where_param(&uri, caller.claims(), &topic, false)?;
    let snapshot = state.store.snapshot(&topic).await?;
    let count = parsed(&snapshot.records)?
        .iter()
        .filter(|r| where_.filter().matches(r))
        .count();
    Ok(at_position(raw_json(count_json(count)), snapshot.position))
}

type ItemPath = Result<Path<(String, String)>, PathRejection>;

fn item(path: ItemPath) -> Result<(Topic, RecordId), ApiError> {
    let Path((collection, id)) = path.map_err(path_error)?;
    Ok((topic(&collection)?, RecordId::from_path(&id)?))
}

/// The record the caller may see: `None` if absent or outside its token's row scope.
async fn visible<S: Store>(
    state: &ApiState<S>,
    claims: Option<&Claims>,
    topic: &Topic,
    id: &RecordId,
) -> Result<Option<Object>, ApiError> {
    let Some(text) = state.store.get(topic, id).await? else {
        return Ok(None);
    };
    let record: Object = serde_json::from_str(&text)
        .map_err(|e| StoreError::Reply(format!("stored record is not a JSON object: {e}")))?;
    // A record outside the token's row scope is not there, for this token.
    let scope: Option<Filter> = claims.and_then(|c| c.scope(topic));
    Ok(scope.is_none_or(|s| s.matches(&record)).then_some(record))
}

/// LoopBack's `findById`, with `filter[fields]`.
#[utoipa::path(
    get,
    path = "/api/{collection}/{id}",
    tag = "records",
    operation_id = "findById",
    params(ItemParams, FilterQuery),
    responses(
        (status = 200, description = "The record (its `fields`).", body = FoundRecord),
        (status = 404, description = "No such record, or not one the token may see (`MODEL_NOT_FOUND`).", body = ErrorBody),
    ),
)]
async fn find<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (topic, id) = item(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let query = find_query(&uri, None, &topic)?;
    match visible(&state, caller.claims(), &topic, &id).await? {
        Some(record) => Ok(raw_json(proto::json::to_string(
            &query.filter().project(&record),
        ))),
        None => Err(StoreError::NotFound { topic, id }.into()),
    }
}

/// LoopBack's `exists`: whether the record is there.
#[utoipa::path(
    get,
    path = "/api/{collection}/{id}/exists",
    tag = "records",
    operation_id = "exists",
    params(ItemParams),
    responses((status = 200, description = "`{\"exists\":true}` or `{\"exists\":false}`", body = Exists)),
)]
async fn exists<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
) -> Result<Json<Exists>, ApiError> {
    let (topic, id) = item(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    let exists = visible(&state, caller.claims(), &topic, &id)
        .await?
        .is_some();
    Ok(Json(Exists { exists }))
}

/// LoopBack's `exists` as a status: 200 or 404, no body.
#[utoipa::path(
    head,
    path = "/api/{collection}/{id}",
    tag = "records",
    operation_id = "existsByHead",
    params(ItemParams),
    responses(
        (status = 200, description = "The record is there."),
        (status = 404, description = "It is not, or not for this token."),
    ),
)]
async fn head<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
) -> Result<StatusCode, ApiError> {
    let (topic, id) = item(path)?;
    state.auth.authorize_read(caller.claims(), &topic)?;
    Ok(match visible(&state, caller.claims(), &topic, &id).await? {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    })
}

/// LoopBack's `replaceById`: the record replaced by the body (with the URL's id).
///
/// The change stream gets an `update` with the whole record.
#[utoipa::path(
    put,
    path = "/api/{collection}/{id}",
    tag = "records",
    operation_id = "replaceById",
    params(ItemParams),
    request_body = NewRecord,
    responses(
        (status = 200, description = "The replaced record.", body = Record),
        (status = 404, description = "No such record, or not one the token may see (`MODEL_NOT_FOUND`).", body = ErrorBody),
    ),
)]
async fn replace<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "replace",
            ops::replace(&state.store, &topic, &id, body, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, record_json))
}

/// LoopBack's `patchAttributes`: the body's properties set on the record.
///
/// The change stream gets an `update` with the whole record after the change.
#[utoipa::path(
    patch,
    path = "/api/{collection}/{id}",
    tag = "records",
    operation_id = "patchAttributes",
    params(ItemParams),
    request_body = RecordPatch,
    responses(
        (status = 200, description = "The merged record.", body = Record),
        (status = 404, description = "No such record, or not one the token may see (`MODEL_NOT_FOUND`).", body = ErrorBody),
        (status = 409, description = "The record kept changing while it was patched (`CONTENDED`); retry.", body = ErrorBody),
    ),
)]
async fn patch<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "patch",
            ops::patch(&state.store, &topic, &id, body, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, record_json))
}

/// LoopBack's `upsert`: the body merged into the record with its `id`, or created.
#[utoipa::path(
    patch,
    path = "/api/{collection}",
    tag = "records",
    operation_id = "upsert",
    params(CollectionParams),
    request_body = NewRecord,
    responses(
        (status = 200, description = "The merged or the created record.", body = Record),
        (status = 409, description = "`CONTENDED` (retry) or `ID_COUNTER_EXHAUSTED`.", body = ErrorBody),
    ),
)]
async fn upsert<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "upsert",
            ops::upsert(&state.store, &topic, body, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, record_json))
}

/// LoopBack's `replaceOrCreate`: the record with the body's `id` replaced, or created.
#[utoipa::path(
    put,
    path = "/api/{collection}",
    tag = "records",
    operation_id = "replaceOrCreate",
    params(CollectionParams),
    request_body = NewRecord,
    responses(
        (status = 200, description = "The replaced or the created record.", body = Record),
        (status = 409, description = "The counter has reached the largest safe integer (`ID_COUNTER_EXHAUSTED`).", body = ErrorBody),
    ),
)]
async fn replace_or_create<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "replace_or_create",
            ops::replace_or_create(&state.store, &topic, body, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, record_json))
}

/// LoopBack's `upsertWithWhere`: the one record `where` selects merged, or the body created.
///
/// Several matches are a 400; the merged record keeps its id.
#[utoipa::path(
    post,
    path = "/api/{collection}/upsertWithWhere",
    tag = "records",
    operation_id = "upsertWithWhere",
    params(CollectionParams, RequiredWhere),
    request_body = RecordPatch,
    responses(
        (status = 200, description = "The merged or the created record.", body = Record),
        (status = 409, description = "`CONTENDED` (retry) or `ID_COUNTER_EXHAUSTED`.", body = ErrorBody),
    ),
)]
async fn upsert_with_where<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    uri: Uri,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let where_ = where_param(&uri, caller.claims(), &topic, true)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "upsert_with_where",
            ops::upsert_with_where(&state.store, &topic, &where_, body, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, record_json))
}

/// LoopBack's `updateAll`: the patch set on every record `where` selects, in one step.
///
/// The change stream gets one `update` (the whole record) per matched record, in find
/// order, adjacent; none when none matched. An `id` in the patch is ignored.
#[utoipa::path(
    post,
    path = "/api/{collection}/update",
    tag = "records",
    operation_id = "updateAll",
    params(CollectionParams, RequiredWhere),
    request_body = RecordPatch,
    responses(
        (status = 200, description = "`{\"count\":N}`: how many records were updated.", body = Count),
        (status = 409, description = "A record kept changing while it was updated (`CONTENDED`); retry.", body = ErrorBody),
    ),
)]
async fn update_all<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: CollectionPath,
    uri: Uri,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let topic = collection(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let where_ = where_param(&uri, caller.claims(), &topic, true)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "update_all",
            ops::update_all(
                &state.store,
                &topic,
                &where_,
                body,
                idem.as_ref(),
                &state.batch,
            ),
        )
        .await?;
    state.batch_size("update_all", answer.value.len());
    Ok(answered(answer, |written| count_json(written.len())))
}

/// LoopBack's `deleteById`.
///
/// The change stream gets a `remove`; a missing record is `{"count":0}` and publishes
/// nothing.
#[utoipa::path(
    delete,
    path = "/api/{collection}/{id}",
    tag = "records",
    operation_id = "deleteById",
    params(ItemParams),
    responses((status = 200, description = "`{\"count\":1}`, or `{\"count\":0}` when there was no such record.", body = Count)),
)]
async fn delete<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    path: ItemPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (topic, id) = item(path)?;
    state.authorize_write(caller.claims(), &topic)?;
    let idem = state.idempotency(&headers, caller.claims())?;
    let answer = state
        .measured(
            "delete",
            ops::delete(&state.store, &topic, &id, idem.as_ref()),
        )
        .await?;
    Ok(answered(answer, |event| {
        count_json(usize::from(event.is_some()))
    }))
}

/// One change to publish.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    /// The topic (collection) whose stream gets the change.
    #[schema(value_type = service::openapi::TopicName)]
    topic: String,
    #[schema(value_type = openapi::Change)]
    change: Value,
    /// The record's previous state, for an `update` or a `remove`: what filtered views
    /// need to move it out. With it the topic is one whose records the backend keeps.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    last: Option<Object>,
}

/// A change of a `POST /publish` array, with its place in the array and its `last`.
type Numbered = (usize, Change, Option<Object>);

/// A change, or an array of changes, published as given (no record is written).
///
/// Each topic's items are written all or none, in order, in one step; with several topics,
/// each topic is its own step (in the order of its first item). An idempotency key covers
/// the whole request: a retry after a failure between two topics' steps writes only the
/// topics not yet written.
#[utoipa::path(
    post,
    path = "/publish",
    tag = "publish",
    operation_id = "publish",
    request_body = PublishBody,
    responses((status = 200, description = "`{\"id\":\"<stream id>\"}`, or one per item in order.", body = PublishAnswer)),
)]
async fn publish<S: Store>(
    State(state): State<ApiState<S>>,
    caller: Authenticated,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let request_text = body.to_string();
    let (items, one) = match body {
        Value::Array(items) => (items, false),
        body @ Value::Object(_) => (vec![body], true),
        _ => {
            return Err(ApiError::BadRequest(
                "publish body must be a JSON object or an array of objects".into(),
            ));
        }
    };
    if items.len() > state.batch.max_items {
        return Err(StoreError::BatchTooLarge {
            what: format!("{} items", items.len()),
            limit: format!("{} items", state.batch.max_items),
        }
        .into());
    }
    // Every item is checked, and every topic authorized, before anything is written.
    let mut groups: Vec<(Topic, Vec<Numbered>)> = Vec::new();
    for (n, item) in items.into_iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| {
            if one {
                format!("publish body: {e}")
            } else {
                format!("publish body[{n}]: {e}")
            }
        };
        let request: PublishRequest =
            serde_json::from_value(item).map_err(|e| ApiError::BadRequest(at(&e)))?;
        let topic = topic(&request.topic)?;
        let change = Change::deserialize(request.change)
            .map_err(|e| ApiError::BadRequest(at(&format!("change: {e}"))))?;
        match groups.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, group)) => group.push((n, change, request.last)),
            None => groups.push((topic, vec![(n, change, request.last)])),
        }
    }
    for (topic, _) in &groups {
        state.auth.authorize_publish(caller.claims(), topic)?;
    }
    // One request is one admission by the rate limit, as a single write is.
    if let Some((topic, _)) = groups.first() {
        state.authorize_write(caller.claims(), topic)?;
    }
    let idem = state.idempotency(&headers, caller.claims())?;
    let total: usize = groups.iter().map(|(_, g)| g.len()).sum();
    state.batch_size("publish", total);
    let mut ids = vec![String::new(); total];
    let mut replayed = true;
    for (topic, group) in groups {
        let (positions, changes): (Vec<usize>, Vec<(Change, Option<Object>)>) =
            group.into_iter().map(|(n, c, l)| (n, (c, l))).unzip();
        let answer = state
            .measured(
                "publish",
                ops::publish_limited(
                    &state.store,
                    &topic,
                    changes,
                    idem.as_ref(),
                    &state.batch,
                    &request_text,
                ),
            )
            .await?;
        replayed &= answer.replayed;
        for (n, event) in positions.into_iter().zip(answer.value) {
            ids[n] = event.to_string();
        }
    }
    let answer = Answer {
        value: ids,
        replayed: replayed && total > 0,
    };
    Ok(answered(answer, |ids| {
        let mut ids: Vec<Value> = ids.into_iter().map(|id| json!(Published { id })).collect();
        if one {
            ids.pop().unwrap_or_default().to_string()
        } else {
            Value::Array(ids).to_string()
        }
    }))
}

/// Readiness: whether Redis answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = Health),
        (status = 503, description = "`{\"status\":\"unavailable\",\"reason\":\"redis unreachable\"}`", body = Health),
    ),
)]
async fn readyz<S: Store>(State(state): State<ApiState<S>>) -> Response {
    match state.store.ready().await {
        Ok(()) => Json(Health::new("ready")).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health::new("unavailable").because("redis unreachable")),
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
