//! The gateway's errors. HTTP errors reuse [`service::ApiError`], so both binaries
//! answer in the same LoopBack JSON shape.

use std::time::Duration;

pub use service::ApiError;

/// A read of a topic's history (its stream) failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis reply: {0}")]
    Reply(#[from] redis::ParsingError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("stream entry {id}: {source}")]
    Decode {
        id: String,
        #[source]
        source: proto::DecodeError,
    },
    /// A snapshot of a topic whose changes come from a backend's raw `POST /publish`: its
    /// records are kept there, and an empty snapshot would look real.
    #[error(
        "the records of {topic} are kept by the backend that publishes its changes (POST /publish), not here; load them from there"
    )]
    RecordsNotKept { topic: proto::Topic },
    /// The embedded store failed (it does not, in practice).
    #[error("store: {0}")]
    Store(String),
}

/// How a failed read answers a request that is refused before its stream starts: a topic
/// without kept records is the client's mistake (409); anything else is transient.
impl service::HttpError for HistoryError {
    fn status_and_code(&self) -> (axum::http::StatusCode, &'static str) {
        match self {
            Self::RecordsNotKept { .. } => (axum::http::StatusCode::CONFLICT, "RECORDS_NOT_KEPT"),
            _ => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        }
    }
}

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}
