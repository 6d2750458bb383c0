//! The stream handlers: LoopBack's change stream and `/events`, their query and body
//! (filters, resume position, content negotiation), and opening the client's stream, or
//! telling it to come back when it cannot be served right now.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use proto::{Cursor, EventId, Filter, Topic};
use serde::Deserialize;
use serde_json::Value;
use service::auth::Caller;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use crate::client::{ClientStream, Pages, Shape, Subscription};
use crate::config::Config;
use crate::error::ApiError;
use crate::error::HistoryError;
use crate::sse;

/// Query parameters of the change stream. Unknown ones are ignored, as LoopBack does.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// `event-stream` (LoopBack's); anything else is a 406. Without it the `Accept` header
    /// decides: `text/event-stream`, `*/*`, `text/*` or none get the stream.
    #[serde(rename = "_format")]
    #[param(example = "event-stream")]
    format: Option<String>,
    /// LoopBack's filter as JSON, applied to every change: `where` (with move-in and
    /// move-out: an update leaving the filter arrives as a `remove`) and `fields`. On
    /// `POST`, the body's `options` wins.
    #[param(example = json!(r#"{"where":{"status":"open"}}"#))]
    options: Option<String>,
    /// Where to resume, for a client that cannot send `Last-Event-ID` (the header wins).
    last_event_id: Option<String>,
    /// `true`: the topic's current records first, in `event: snapshot` pages, then its
    /// changes from exactly that position. A resume sends none.
    #[param(value_type = Option<bool>)]
    snapshot: Option<String>,
}

/// What `/events` reads from its query (by hand: `options.<topic>` names vary).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[expect(
    dead_code,
    reason = "describes what `events` reads from its query pairs"
)]
struct EventsQuery {
    /// The topics, repeated (`topic=A&topic=B`) or comma-separated; at most `max_topics`.
    #[param(style = Form, explode)]
    topic: Vec<String>,
    /// As on the change stream.
    #[param(rename = "_format")]
    format: Option<String>,
    /// A filter for every topic, as on the change stream; `options.<topic>` (a parameter
    /// named after a topic of the stream) filters that topic instead.
    options: Option<String>,
    /// Where to resume: the stream's last `id:` (a cursor over all its topics), for a
    /// client that cannot send `Last-Event-ID` (the header wins).
    last_event_id: Option<String>,
    /// `true`: each topic's records first, as on the change stream.
    #[param(value_type = Option<bool>)]
    snapshot: Option<String>,
}

/// The collection of a change stream.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
#[expect(dead_code, reason = "describes what the handlers read from the path")]
struct Collection {
    /// LoopBack's model plural: the topic whose changes the stream carries.
    #[param(value_type = service::openapi::TopicName)]
    collection: String,
}

/// The `Last-Event-ID` request header: where a reconnecting EventSource resumes.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[expect(
    dead_code,
    reason = "describes what the handlers read from the headers"
)]
struct Resume {
    /// The last `id:` the client got; the stream sends exactly what came after it, on any
    /// pod (or `event: reset` when that history is gone). Malformed: 400.
    #[param(rename = "Last-Event-ID", value_type = String, required = false)]
    last_event_id: Option<String>,
}

/// LoopBack's change stream of a collection, as Server-Sent Events.
///
/// First `:ok`, `retry:` and the starting position, then one `event: data` frame per
/// change (`data:` is LoopBack's change object, `id:` its stream id), and a `:` comment
/// heartbeat after `heartbeat` of silence. A stream that cannot be served right now (Redis
/// out of reach, draining, full) is a 200 with a `retry:` and the end, so EventSource
/// comes back; only real errors are HTTP errors.
#[utoipa::path(
    get,
    path = "/api/{collection}/change-stream",
    tag = "streams",
    operation_id = "createChangeStream",
    params(Collection, StreamQuery, Resume),
    responses((status = 200, description = "The stream.", content_type = "text/event-stream", body = String)),
)]
pub(super) async fn change_stream_get(
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

/// LoopBack's change stream by `POST`, with `{"options": <filter>}` in an optional JSON body.
#[utoipa::path(
    post,
    path = "/api/{collection}/change-stream",
    tag = "streams",
    operation_id = "createChangeStreamByPost",
    params(Collection, StreamQuery, Resume),
    request_body(content = inline(ChangeStreamBody), description = "Optional: an empty body is no filter."),
    responses((status = 200, description = "The stream.", content_type = "text/event-stream", body = String)),
)]
pub(super) async fn change_stream_post(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    // LoopBack's POST variant takes `options` in a JSON body; an empty body is fine. Read
    // here, not by axum's `Bytes` extractor: its 2 MiB limit and plain-text rejections
    // would bypass `body_limit` and the JSON error shape.
    let body = service::http::read_body(&headers, body, state.config.body_limit).await?;
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

/// The body of a `POST` change stream.
#[derive(Debug, ToSchema)]
#[expect(
    dead_code,
    reason = "describes what `change_stream_post` reads from the body"
)]
struct ChangeStreamBody {
    /// LoopBack's filter, as the `options` query parameter takes it (but as JSON, not text).
    #[schema(value_type = Option<Object>)]
    options: Option<Value>,
}

/// `snapshot=true` (or `1`): the stream starts with the topics' records. Anything but
/// `true`/`1`/`false`/`0` is a 400, not a silent no.
fn wants_snapshot(value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "snapshot must be true or false, got {other:?}"
        ))),
    }
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
    let filter = parse_filter(&state.config, options.as_ref(), "options")?;
    let filter = scoped(filter, caller, &topic);
    let resume = match resume_text(headers, query.last_event_id.as_deref())? {
        Some(id) => Some(EventId::parse(id)?),
        None => None,
    };
    let snapshot = wants_snapshot(query.snapshot.as_deref())?;
    open_stream(
        state,
        Shape::ChangeStream,
        vec![(topic, resume, filter)],
        access_ends,
        snapshot,
    )
    .await
}

/// One stream of several topics' changes, as Server-Sent Events.
///
/// Frames as on the change stream; each `data:` is LoopBack's change object with its
/// `topic`, and each `id:` is a cursor over all the topics.
#[utoipa::path(
    get,
    path = "/events",
    tag = "streams",
    operation_id = "events",
    params(EventsQuery, Resume),
    responses((status = 200, description = "The stream.", content_type = "text/event-stream", body = String)),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut topics = Vec::new();
    let mut format = None;
    let mut last_event_id = None;
    let mut common = None;
    let mut per_topic = Vec::new();
    let mut snapshot = false;
    for (key, value) in &pairs {
        match key.as_str() {
            "topic" => {
                for name in value.split(',').filter(|n| !n.is_empty()) {
                    topics.push(Topic::new(name)?);
                }
            }
            "_format" => format = Some(value.as_str()),
            "snapshot" => snapshot = wants_snapshot(Some(value))?,
            "last_event_id" => last_event_id = Some(value.as_str()),
            "options" => common = Some(parse_options(value)?),
            key => {
                if let Some(name) = key.strip_prefix("options.") {
                    per_topic.push((Topic::new(name)?, parse_options(value)?));
                }
                // Other parameters are ignored, as on the change stream (cache busters).
            }
        }
    }
    negotiate(format, &headers)?;
    let topics = Cursor::canonical(topics);
    if topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one topic: /events?topic=A&topic=B".into(),
        ));
    }
    let max = state.config.max_topics.get();
    if topics.len() > max {
        return Err(ApiError::BadRequest(format!(
            "{} topics asked for; a stream may carry at most {max}",
            topics.len()
        )));
    }
    // Every topic is authorized before anything else about it is looked at (resume
    // included); the stream ends when the first topic's access does.
    let auth = &state.config.auth;
    for topic in &topics {
        auth.authorize_subscribe(caller.claims(), topic)?;
    }
    let access_ends = topics
        .iter()
        .filter_map(|t| auth.access_ends(caller.claims(), t))
        .min();
    if let Some((topic, _)) = per_topic.iter().find(|(t, _)| !topics.contains(t)) {
        return Err(ApiError::BadRequest(format!(
            "options.{topic} names a topic this stream does not subscribe to"
        )));
    }
    let common = parse_filter(&state.config, common.as_ref(), "options")?;
    let resume = match resume_text(&headers, last_event_id)? {
        None => vec![None; topics.len()],
        // One topic: a plain stream id works too (as on its change stream).
        Some(text) if topics.len() == 1 && !text.starts_with("c1.") => {
            vec![Some(EventId::parse(text)?)]
        }
        Some(text) => Cursor::parse(text, &topics)?
            .positions
            .into_iter()
            .map(|(_, id)| Some(id))
            .collect(),
    };
    let mut subscriptions = Vec::with_capacity(topics.len());
    for (topic, resume) in topics.into_iter().zip(resume) {
        let filter = match per_topic.iter().find(|(t, _)| *t == topic) {
            Some((_, options)) => {
                parse_filter(&state.config, Some(options), &format!("options.{topic}"))?
            }
            None => common.clone(),
        };
        let filter = scoped(filter, &caller, &topic);
        subscriptions.push((topic, resume, filter));
    }
    open_stream(state, Shape::Events, subscriptions, access_ends, snapshot).await
}

/// `filter` with the caller's row scope on `topic` ANDed in (the token's `topics.where`,
/// [`service::auth::Claims::scope`]): a client's own filter can only narrow what its token
/// lets it see.
fn scoped(filter: Option<Arc<Filter>>, caller: &Caller, topic: &Topic) -> Option<Arc<Filter>> {
    let Some(scope) = caller.claims().and_then(|claims| claims.scope(topic)) else {
        return filter;
    };
    Some(Arc::new(match filter {
        None => scope,
        Some(filter) => Filter::clone(&filter).restricted_to(&scope),
    }))
}

/// A LoopBack filter from `options`; `None` when there is none. `name` is where it came
/// from, for the error message.
fn parse_filter(
    config: &Config,
    options: Option<&Value>,
    name: &str,
) -> Result<Option<Arc<Filter>>, ApiError> {
    let Some(options) = options else {
        return Ok(None);
    };
    let filter = Filter::parse(options, &config.filter_limits())
        .map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))?;
    Ok((!filter.is_empty()).then(|| Arc::new(filter)))
}

/// Why a stream request was told to come back instead of being served.
#[derive(Clone, Copy, Debug)]
enum TurnedAway {
    Redis,
    SubscribeTimeout,
    Full,
    Draining,
    ReadFailed,
}

impl TurnedAway {
    fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::SubscribeTimeout => "subscribe-timeout",
            Self::Full => "full",
            Self::Draining => "draining",
            Self::ReadFailed => "read-failed",
        }
    }
}

/// The answer to a stream request that cannot be served right now for a transient reason:
/// `200` with `:ok`, a jittered `retry:` and the end, so EventSource reconnects (to this
/// pod or, through the Service, another) instead of closing for good as it does on a 503.
///
/// The resume position stays exact: a client that came with one gets no `id:` and keeps
/// it; a client without one gets an anchor ([`EventId::anchor`]) at its request's arrival,
/// less [`ANCHOR_MARGIN`] for the clocks of this pod and Redis, so its next connection
/// replays everything published since it asked, on any pod. No Redis read is needed, so
/// this works while Redis is out of reach and costs nothing when shedding load. A fresh
/// client that asked for a snapshot (`snapshot`) gets no anchor: its next connection must
/// come without a position, to get the snapshot.
fn turn_away(
    state: &AppState,
    shape: Shape,
    positions: &[(Topic, Option<EventId>)],
    asked_at: SystemTime,
    reason: TurnedAway,
    snapshot: bool,
) -> Response {
    state
        .metrics
        .turned_away
        .with_label_values(&[reason.as_str()])
        .inc();
    tracing::debug!(
        reason = reason.as_str(),
        "stream turned away; told to retry"
    );
    let fresh = positions.iter().any(|(_, p)| p.is_none());
    let position = (fresh && !snapshot).then(|| {
        let ms = asked_at
            .checked_sub(ANCHOR_MARGIN)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let anchor = EventId::anchor(ms);
        match shape {
            Shape::ChangeStream => anchor.to_string(),
            Shape::Events => {
                let topics: Vec<Topic> = positions.iter().map(|(t, _)| t.clone()).collect();
                Cursor::encode_ids(
                    Cursor::checksum(&topics),
                    positions.iter().map(|(_, p)| p.unwrap_or(anchor)),
                )
            }
        }
    });
    let retry = state.config.retry;
    sse::come_back(retry + service::jitter::below(retry), position.as_deref())
}

/// How far before a turned-away client's request its anchor lies: more than the clocks of
/// a pod and Redis disagree by (NTP keeps them within milliseconds). A client may get
/// changes from up to this long before it asked, never miss one after.
pub const ANCHOR_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Joins every topic, waits for Redis to confirm each subscription, positions the client
/// and answers with the SSE response; or, when that cannot happen now, tells the client
/// to come back ([`turn_away`]).
async fn open_stream(
    state: AppState,
    shape: Shape,
    topics: Vec<(Topic, Option<EventId>, Option<Arc<Filter>>)>,
    access_ends: Option<SystemTime>,
    snapshot: bool,
) -> Result<Response, ApiError> {
    let asked_at = SystemTime::now();
    // Sorted by topic, as cursors are.
    let mut positions: Vec<(Topic, Option<EventId>)> =
        topics.iter().map(|(t, r, _)| (t.clone(), *r)).collect();
    positions.sort_by(|a, b| a.0.cmp(&b.0));
    let away = |reason| {
        Ok(turn_away(
            &state, shape, &positions, asked_at, reason, snapshot,
        ))
    };
    if state.shutdown.is_cancelled() {
        return away(TurnedAway::Draining);
    }
    if state.readiness.unreachable() {
        return away(TurnedAway::Redis);
    }
    let Ok(permit) = Arc::clone(&state.streams).try_acquire_owned() else {
        return away(TurnedAway::Full);
    };
    // Join all first, so the subscriptions are confirmed concurrently.
    let mut subscriptions: Vec<Subscription> = topics
        .into_iter()
        .map(|(topic, resume, filter)| Subscription {
            membership: state.hub.join(&topic),
            topic,
            resume,
            filter,
            snapshot,
        })
        .collect();
    for sub in &mut subscriptions {
        if !sub
            .membership
            .confirmed(state.config.subscribe_timeout)
            .await
        {
            return away(TurnedAway::SubscribeTimeout);
        }
    }
    let client = match ClientStream::open(
        shape,
        subscriptions,
        state.history.clone(),
        Pages {
            replay: state.config.replay_page.get(),
            snapshot: state.config.snapshot_page.get(),
        },
        state.config.heartbeat,
        state.metrics.clone(),
    )
    .await
    {
        Ok(client) => client,
        // The client's mistake, not a transient state: a real error.
        Err(e @ HistoryError::RecordsNotKept { .. }) => return Err(ApiError::Domain(Box::new(e))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open stream");
            return away(TurnedAway::ReadFailed);
        }
    };
    let end = sse::End::new(
        state.partition.stream_end(),
        state.config.drain_window,
        access_ends,
    );
    Ok(sse::response(client, permit, state.config.retry, end))
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

/// `Last-Event-ID` header, else the `last_event_id` query parameter (EventSource cannot
/// set headers on its first connection). The header wins. Empty means none.
fn resume_text<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?,
        ),
        None => None,
    };
    Ok(header.or(query).map(str::trim).filter(|s| !s.is_empty()))
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
        assert_eq!(resume_text(&h, None).unwrap(), None);
        assert_eq!(resume_text(&h, Some(" 5-1 ")).unwrap(), Some("5-1"));
        h.insert("last-event-id", HeaderValue::from_static("7-0"));
        assert_eq!(resume_text(&h, Some("5-1")).unwrap(), Some("7-0"));
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(resume_text(&h, Some("5-1")).unwrap(), None);
    }
}
