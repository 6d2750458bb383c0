//! HTTP plumbing both servers share: liveness, `/metrics`, the JSON 404/405 fallbacks and
//! request bodies read within the limit, all answering in LoopBack's error shape
//! ([`ApiError`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use proto::Object;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::{ApiError, FramingError};
use crate::openapi::{UtoipaMethodRouter, documented, operations_mut, takes_token};

/// Default largest request body, in bytes: body-parser's `100kb`, which LoopBack uses.
pub const DEFAULT_BODY_LIMIT: usize = 100 * 1024;

/// Largest accepted request body, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// `GET /metrics` on a router and in its document ([`metrics_route`]).
pub fn metrics<St>(registry: Registry) -> UtoipaMethodRouter<St>
where
    St: Clone + Send + Sync + 'static,
    Auth: FromRef<St>,
{
    let (schemas, mut paths, route) = documented::<__path_metrics_doc, St>(metrics_route(registry));
    for (_, operation) in operations_mut(&mut paths) {
        takes_token(operation);
    }
    (schemas, paths, route)
}

/// The Prometheus text exposition of the server's metrics.
///
/// With auth on and `metrics_public = false` it needs a valid token (any grants).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    operation_id = "metrics",
    responses((status = 200, description = "Every series, in Prometheus's text format 0.0.4.", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
)]
#[expect(
    dead_code,
    reason = "only its description is used: the handler is a closure"
)]
fn metrics_doc() {}

/// `GET /metrics`: Prometheus text of `registry`. With auth on and `metrics_public =
/// false` it needs a valid token (any grants); otherwise tokens are not looked at.
pub fn metrics_route<St>(registry: Registry) -> axum::routing::MethodRouter<St>
where
    St: Clone + Send + Sync + 'static,
    Auth: FromRef<St>,
{
    get(
        move |State(auth): State<Auth>, headers: HeaderMap, uri: Uri| async move {
            if !auth.metrics_public() {
                let token = crate::auth::find_token(&headers, uri.query())?;
                let claims = auth.authenticate(token.as_deref())?;
                auth.authorize_metrics(claims.as_ref())?;
            }
            Ok::<_, ApiError>(metrics_response(&registry))
        },
    )
}

/// Prometheus text exposition of `registry`.
pub fn metrics_response(registry: &Registry) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        encode(registry),
    )
        .into_response()
}

/// The JSON 404 for unknown paths.
pub async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// The JSON 405 for a known path and a method it does not serve.
pub async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// A request body that is JSON (any value): right content type, within the size limit.
#[derive(Debug)]
pub struct JsonBody(pub serde_json::Value);

impl<St> FromRequest<St> for JsonBody
where
    St: Send + Sync,
    BodyLimit: FromRef<St>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        let BodyLimit(limit) = BodyLimit::from_ref(state);
        let (parts, body) = req.into_parts();
        let bytes = read_json_body(&parts.headers, body, limit).await?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| ApiError::InvalidJson(e.to_string()))
    }
}

/// A request body that is a JSON object: right content type, within the size limit.
#[derive(Debug)]
pub struct JsonObject(pub Object);

impl<St> FromRequest<St> for JsonObject
where
    St: Send + Sync,
    BodyLimit: FromRef<St>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &St) -> Result<Self, ApiError> {
        match JsonBody::from_request(req, state).await?.0 {
            serde_json::Value::Object(object) => Ok(Self(object)),
            _ => Err(ApiError::BadRequest(
                "request body must be a JSON object".into(),
            )),
        }
    }
}

/// Checks the content type and reads at most `limit` bytes ([`read_body`]).
async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json"
        && !(essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return Err(ApiError::UnsupportedMediaType(content_type));
    }
    read_body(headers, body, limit).await
}

/// Reads a request body of at most `limit` bytes, whatever its type: a declared
/// `Content-Length` over the limit is refused before reading, a chunked body when it
/// passes the limit.
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] over the limit; [`ApiError::Malformed`] for a body that
/// cannot be read (bad chunked framing, cut short).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // `to_bytes` wraps the limit's own error; anything else is the body itself.
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
        if over_limit {
            ApiError::PayloadTooLarge { limit }
        } else {
            tracing::debug!(error = %e, "request body unreadable");
            ApiError::Malformed(FramingError::Body)
        }
    })
}

/// A health answer: `{"status":"ok"}`, `{"status":"ready"}`, or a status and why
/// (`{"status":"unavailable","reason":"redis unreachable"}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ready")]
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

impl Health {
    pub fn new(status: &'static str) -> Self {
        Self {
            status,
            reason: None,
        }
    }

    #[must_use]
    pub fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// Liveness: the process answers (no dependency is asked).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health::new("ok"))
}

/// The text exposition of every series in `registry`.
fn encode(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding gathered families into a Vec cannot fail for the text format.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_and_a_broken_one_400() {
        let chunks = |parts: Vec<Result<&'static str, std::io::Error>>| {
            Body::from_stream(futures::stream::iter(parts))
        };
        let none = HeaderMap::new();
        let ok = read_body(&none, chunks(vec![Ok("{}"), Ok(" ")]), 3).await;
        assert_eq!(ok.unwrap(), "{} ");
        let over = read_body(&none, chunks(vec![Ok("{}"), Ok("  ")]), 3).await;
        assert!(matches!(over, Err(ApiError::PayloadTooLarge { limit: 3 })));
        let broken = read_body(
            &none,
            chunks(vec![Ok("{"), Err(std::io::Error::other("bad chunk"))]),
            3,
        )
        .await;
        assert!(matches!(
            broken,
            Err(ApiError::Malformed(FramingError::Body))
        ));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "4".parse().unwrap());
        let early = read_body(&declared, chunks(vec![]), 3).await;
        assert!(matches!(early, Err(ApiError::PayloadTooLarge { limit: 3 })));
    }
}
