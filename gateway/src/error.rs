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
}

/// Why the gateway stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}
