//! HTTP errors in LoopBack's shape: [`ApiError`] (one type chooses every status, for both
//! binaries), [`FramingError`] for a request whose framing cannot be trusted, and
//! [`HttpError`], through which a crate's own errors (the publisher's store errors) answer
//! with their status and code.

use crate::auth::AuthError;
use crate::openapi::{ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::DecodeError;

/// An error of another crate that knows its HTTP answer. Wrapped as [`ApiError::Domain`]
/// (with a `From` impl beside the error type), it answers like every other refusal.
pub trait HttpError: std::error::Error + Send + Sync + 'static {
    /// The status and LoopBack `code`. A 5xx is logged with its cause and answered with a
    /// generic message; anything else is answered with the error's text.
    fn status_and_code(&self) -> (StatusCode, &'static str);

    /// The message a 5xx answers instead of the generic one, when the client must know
    /// more than "nothing was written" (a write whose outcome is unknown). The cause
    /// itself is only logged.
    fn public_message(&self) -> Option<String> {
        None
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
    /// A topic, id or event id that does not parse.
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    /// Another crate's error that chose its own answer ([`HttpError`]).
    #[error("{0}")]
    Domain(Box<dyn HttpError>),
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
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            Self::Domain(e) => e.status_and_code(),
        }
    }
}

/// A refused token answers as the [`ApiError`] it is (the extractors' rejection).
impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ApiError::Auth(self).into_response()
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
        StatusCode::UNPROCESSABLE_ENTITY => "UnprocessableEntityError",
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
                (Self::Domain(e), _) if e.public_message().is_some() => {
                    e.public_message().unwrap_or_default()
                }
                (_, StatusCode::SERVICE_UNAVAILABLE) => {
                    "Redis is unavailable; nothing was written".to_owned()
                }
                _ => "internal error; nothing was written".to_owned(),
            }
        } else {
            self.to_string()
        };
        let body = ErrorBody {
            error: ErrorDetail {
                status_code: status.as_u16(),
                name: error_name(status),
                code,
                message,
            },
        };
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
