//! [`StoreError`]: why a store operation did not happen, and the HTTP answer it gives
//! (through [`service::HttpError`], as an [`ApiError`]).

use axum::http::StatusCode;
use proto::{DecodeError, FilterError, RecordId, Topic};
pub use service::ApiError;
use service::HttpError;

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
    /// A write was sent and its answer lost (a timeout, a dropped connection): it ran in
    /// full or not at all, and only a retry with the same Idempotency-Key can tell which.
    /// The one case where "nothing was written" cannot be promised.
    #[error("the write got no answer from redis ({0}); it ran in full or not at all")]
    Unanswered(#[source] Box<StoreError>),
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
    /// A snapshot could not be made exact in a few tries: history it needed was trimmed
    /// while it was read, or the topic's changes do not keep previous states (raw
    /// publishes of updates without `last`). Nothing was written; a retry may succeed.
    #[error("{topic} kept changing while it was read; try again")]
    Unsettled { topic: Topic },
    /// The topic's changes come from a backend's raw `POST /publish`: its records are kept
    /// by that backend, and an empty answer here would look real.
    #[error(
        "the records of {topic} are kept by the backend that publishes its changes (POST /publish), not here; load them from there"
    )]
    RecordsNotKept { topic: Topic },
    #[error(transparent)]
    Invalid(#[from] DecodeError),
    #[error("where: {0}")]
    Filter(#[from] FilterError),
    #[error(
        "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces or control characters)"
    )]
    BadIdempotencyKey,
    /// The key was used for another request (another operation, topic or body): its first
    /// answer belongs to that request.
    #[error(
        "this Idempotency-Key was used for a different request; use a new key for a new request"
    )]
    KeyReused,
    /// A batch over [`crate::ops::BatchLimits`]; nothing was written.
    #[error("batch of {what} is larger than the limit of {limit}; split it")]
    BatchTooLarge { what: String, limit: String },
    /// `upsertWithWhere` found several records: it updates one or creates one.
    #[error("{count} records of {topic} match the where; upsertWithWhere updates only one")]
    ManyMatched { topic: Topic, count: usize },
    /// `findOne` found nothing.
    #[error("no record of {topic} matches the filter")]
    NoneFound { topic: Topic },
}

impl StoreError {
    /// The error of a read: a lost answer to a read wrote nothing, so it is what caused it.
    #[must_use]
    pub fn read(self) -> Self {
        match self {
            Self::Unanswered(cause) => *cause,
            e => e,
        }
    }
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

impl HttpError for StoreError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unavailable(_) | Self::Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "REDIS_UNAVAILABLE")
            }
            Self::Unanswered(_) => (StatusCode::SERVICE_UNAVAILABLE, "OUTCOME_UNKNOWN"),
            Self::Unsettled { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNSETTLED"),
            // The request conflicts with how the topic is fed; a retry would fail alike.
            Self::RecordsNotKept { .. } => (StatusCode::CONFLICT, "RECORDS_NOT_KEPT"),
            Self::Redis(_) | Self::Reply(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            Self::NotFound { .. } => (StatusCode::NOT_FOUND, "MODEL_NOT_FOUND"),
            Self::Exists { .. } => (StatusCode::CONFLICT, "DUPLICATE_ID"),
            Self::IdMismatch { .. } => (StatusCode::BAD_REQUEST, "ID_MISMATCH"),
            Self::Contended { .. } => (StatusCode::CONFLICT, "CONTENDED"),
            // 409, not 5xx: the server is not failing and a retry would fail alike; the
            // request conflicts with the collection's state (its counter reached the end of
            // the safe range), and the client can resolve it by naming an id. A 5xx would
            // also be retried by clients and proxies, and page operators.
            Self::IdsExhausted { .. } => (StatusCode::CONFLICT, "ID_COUNTER_EXHAUSTED"),
            Self::NoneFound { .. } => (StatusCode::NOT_FOUND, "MODEL_NOT_FOUND"),
            Self::Invalid(_) | Self::Filter(_) | Self::ManyMatched { .. } => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            Self::BadIdempotencyKey => (StatusCode::BAD_REQUEST, "BAD_IDEMPOTENCY_KEY"),
            Self::KeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED"),
            Self::BatchTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "BATCH_TOO_LARGE"),
        }
    }

    fn public_message(&self) -> Option<String> {
        matches!(self, Self::Unanswered(_)).then(|| {
            "Redis did not answer the write: it was made in full or not at all (never in part); \
             send it again with the same Idempotency-Key to make it exactly once"
                .to_owned()
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            // The same answer as any other malformed topic or id.
            StoreError::Invalid(e) => Self::Invalid(e),
            e => Self::Domain(Box::new(e)),
        }
    }
}
