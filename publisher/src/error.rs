//! Errors: [`StoreError`] from the record stores, [`FramingError`] for a request whose
//! framing cannot be trusted, [`ApiError`] for HTTP responses.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::{DecodeError, RecordId, Topic};
use serde_json::json;

use crate::auth::AuthError;

/// Why a store operation did not happen. In every case nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached, timed out, or is not serving (loading, failing over).
    /// A timed-out script may still have run in full; it never ran in part.
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// No reply in time. The script may have run (in full) or not at all.
    #[error("redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("unexpected reply from the publish script: {0}")]
    Reply(String),
    #[error("record {id} of {topic} not found")]
    NotFound { topic: Topic, id: RecordId },
    #[error("record {id} of {topic} already exists")]
    Exists { topic: Topic, id: RecordId },
    #[error("id {body} in the body differs from id {url} in the URL")]
    IdMismatch { url: RecordId, body: RecordId },
    #[error("record {id} of {topic} kept changing while it was patched; try again")]
    Contended { topic: Topic, id: RecordId },
    /// The collection's counter is at the largest safe id: a create without an id cannot
    /// be given one. The collection itself is fine (reads, and creates with an id, work).
    #[error(
        "{topic} has used its last automatic id ({max}, the largest integer a browser's \
         JSON.parse keeps exact); create records with an explicit id instead"
    )]
    IdsExhausted { topic: Topic, max: i64 },
    #[error(transparent)]
    Invalid(#[from] DecodeError),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            );
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// A request whose body cannot be delimited, or read, as HTTP/1 says (RFC 9112): after one
/// of these the connection's remaining bytes mean nothing, so the answer closes it. Each
/// message says what was wrong in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed request head: {0}")]
    Head(String),
    #[error("malformed request target")]
    Target,
    #[error("Transfer-Encoding is not allowed in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding must be a list of codings that ends with chunked")]
    NotChunked,
    #[error("Transfer-Encoding names chunked more than once; a body is chunked once")]
    ChunkedTwice,
    #[error("Content-Length must be a single decimal number of bytes")]
    ContentLength,
    #[error("Content-Length headers disagree: {first} and {second}")]
    ContentLengths { first: u64, second: u64 },
    #[error("request body is malformed (bad chunked framing) or was cut short")]
    Body,
}

/// An HTTP error in LoopBack's shape:
/// `{"error":{"statusCode":404,"name":"Error","code":"MODEL_NOT_FOUND","message":"..."}}`.
///
/// Internal causes are logged, never sent to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("Content-Type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("request URL is longer than the limit of {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("request headers are larger than the limit of {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("request has more than {max} header fields")]
    TooManyHeaders { max: usize },
    /// Bad framing: a 400 that closes the connection.
    #[error(transparent)]
    Malformed(#[from] FramingError),
    /// A token's subject published faster than `publish_rate`; try again after the wait.
    #[error("too many events for this token; retry in {} ms", retry_after.as_millis())]
    TooManyRequests { retry_after: std::time::Duration },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    NotAcceptable(String),
    /// A dependency (Redis) cannot serve this request now; the message is safe to show.
    #[error("{0}")]
    Unavailable(String),
    /// No or a bad token (401), or a token without a grant for the topic (403).
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        Self::Store(StoreError::Invalid(e))
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            Self::InvalidJson(_) => (StatusCode::BAD_REQUEST, "INVALID_JSON"),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            Self::UriTooLong { .. } => (StatusCode::URI_TOO_LONG, "URI_TOO_LONG"),
            Self::HeadersTooLarge { .. } | Self::TooManyHeaders { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "REQUEST_HEADER_FIELDS_TOO_LARGE",
            ),
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST"),
            Self::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
            Self::NoRoute { .. } => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            Self::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NOT_ACCEPTABLE"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            // LoopBack 3's codes for the same two refusals.
            Self::Auth(e) if e.is_unauthenticated() => {
                (StatusCode::UNAUTHORIZED, "AUTHORIZATION_REQUIRED")
            }
            Self::Auth(_) => (StatusCode::FORBIDDEN, "ACCESS_DENIED"),
            Self::Store(e) => match e {
                StoreError::Unavailable(_) | StoreError::Timeout(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE")
                }
                StoreError::Redis(_) | StoreError::Reply(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
                }
                StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "MODEL_NOT_FOUND"),
                StoreError::Exists { .. } => (StatusCode::CONFLICT, "DUPLICATE_ID"),
                StoreError::IdMismatch { .. } => (StatusCode::BAD_REQUEST, "ID_MISMATCH"),
                StoreError::Contended { .. } => (StatusCode::CONFLICT, "CONTENDED"),
                // 409, not 5xx: the server is not failing and a retry would fail alike; the
                // request conflicts with the collection's state (its counter reached the
                // end of the safe range), and the client can resolve it by naming an id.
                // A 5xx would also be retried by clients and proxies, and page operators.
                StoreError::IdsExhausted { .. } => (StatusCode::CONFLICT, "ID_COUNTER_EXHAUSTED"),
                StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            },
        }
    }
}

/// The `name` LoopBack's http-errors would give a status.
fn error_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "BadRequestError",
        StatusCode::UNAUTHORIZED => "UnauthorizedError",
        StatusCode::FORBIDDEN => "ForbiddenError",
        StatusCode::NOT_FOUND => "NotFoundError",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowedError",
        StatusCode::NOT_ACCEPTABLE => "NotAcceptableError",
        StatusCode::URI_TOO_LONG => "URITooLongError",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "RequestHeaderFieldsTooLargeError",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequestsError",
        StatusCode::CONFLICT => "ConflictError",
        StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLargeError",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaTypeError",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableError",
        _ => "Error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let challenge = match &self {
            Self::Auth(e) if e.is_unauthenticated() => Some(e.challenge()),
            _ => None,
        };
        if let Self::Auth(e) = &self {
            // Never the token; the refusal and, for a 403, the topic.
            tracing::debug!(status = status.as_u16(), reason = %e, "request refused");
        }
        let message = if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
            match (&self, status) {
                (Self::Unavailable(message), _) => message.clone(),
                (_, StatusCode::SERVICE_UNAVAILABLE) => {
                    "Redis is unavailable; nothing was written".to_owned()
                }
                _ => "internal error; nothing was written".to_owned(),
            }
        } else {
            self.to_string()
        };
        let body = json!({"error": {
            "statusCode": status.as_u16(),
            "name": error_name(status),
            "code": code,
            "message": message,
        }});
        let retry_after = match &self {
            // Whole seconds, rounded up (Retry-After has no fractions).
            Self::TooManyRequests { retry_after } => {
                Some(retry_after.as_millis().div_ceil(1000).max(1))
            }
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Malformed(_)) {
            // The rest of the connection cannot be read as requests; hyper closes it
            // after this answer.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
