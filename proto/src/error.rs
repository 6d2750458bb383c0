//! The one error type of this crate: input that does not follow the wire contract.

/// Input that does not follow the wire contract. Each variant says what was wrong in
/// words a client can act on; the gateway and the publisher show it as the JSON error
/// message of a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("topic must not be empty")]
    EmptyTopic,
    #[error("topic is {len} bytes long; the limit is {max}")]
    TopicTooLong { len: usize, max: usize },
    #[error("topic {topic:?} contains {ch:?}; use letters, digits, '_', '-' and '.' (not first)")]
    TopicCharacter { topic: String, ch: char },
    #[error("event id {id:?} is not a stream id of the form <milliseconds>-<sequence>")]
    EventId { id: String },
    #[error("id must be an integer or a string, got {found}")]
    RecordIdType { found: &'static str },
    #[error("id {id:?} is a string that reads as an integer; send it as a JSON number")]
    RecordIdAmbiguous { id: String },
    #[error("id must not be empty, longer than {max} bytes, or contain control characters")]
    RecordIdString { max: usize },
    #[error("change type must be \"create\", \"update\" or \"remove\", got {found:?}")]
    ChangeType { found: String },
    #[error("malformed change: {reason}")]
    Change { reason: String },
    #[error("malformed pub/sub envelope: {reason}")]
    Envelope { reason: &'static str },
}
