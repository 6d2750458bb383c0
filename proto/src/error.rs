//! The error types of this crate: input that does not follow the wire contract
//! ([`DecodeError`]) and a change-stream filter that cannot be used ([`FilterError`]).

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
    #[error(
        "id {id} is outside JavaScript's safe integer range: integer ids must be between \
         -{max} and {max} (2^53-1), the numbers a browser's JSON.parse keeps exact"
    )]
    RecordIdRange { id: String, max: i64 },
    #[error("id must not be empty, longer than {max} bytes, or contain control characters")]
    RecordIdString { max: usize },
    #[error("change type must be \"create\", \"update\" or \"remove\", got {found:?}")]
    ChangeType { found: String },
    #[error("malformed change: {reason}")]
    Change { reason: String },
    #[error("malformed cursor (Last-Event-ID of a multi-topic stream): {reason}")]
    Cursor { reason: String },
    #[error("malformed pub/sub envelope: {reason}")]
    Envelope { reason: &'static str },
}

/// A change-stream filter (`options`) that cannot be used. Each message starts with where
/// the problem is (`where.age.gt`, `where.or[1].name`, `fields[2]`, `options.limit`) and
/// says what was expected, in words a client can act on: the gateway sends it as the
/// JSON error message of a 400. A filter is never half-applied: any of these refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("options is not valid JSON: {reason}")]
    Json { reason: String },
    #[error("options is larger than {max} bytes of JSON")]
    TooBig { max: usize },
    #[error("{at}: nested more than {max} levels deep")]
    TooDeep { at: String, max: usize },
    #[error("where has more than {max} conditions")]
    TooManyConditions { max: usize },
    #[error("{at}: expected {expected}, got {found}")]
    Type {
        at: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("options.{key}: {key:?} does not apply to a change stream; only where and fields do")]
    NotForStreams { key: String },
    #[error("options.{key}: unknown key; only where and fields apply to a change stream")]
    UnknownKey { key: String },
    #[error(
        "{at}: unknown operator {op:?}; the operators are eq, neq, gt, gte, lt, lte, between, \
         inq, nin, like, nlike, ilike, nilike and regexp (for a nested property write \
         \"{property}.{op}\")"
    )]
    UnknownOperator {
        at: String,
        op: String,
        property: String,
    },
    #[error("{at}: empty condition; give a value, or operators such as {{\"gt\": 1}}")]
    EmptyCondition { at: String },
    #[error("{at}: property name {name:?} is empty or has an empty segment")]
    PropertyName { at: String, name: String },
    #[error("{at}: expected an array of two values, got {len}")]
    BetweenLength { at: String, len: usize },
    #[error("{at}: options only applies to like, nlike, ilike, nilike and regexp")]
    OptionsWithoutPattern { at: String },
    #[error("{at}: unsupported regular expression flag {flag:?}; use i, m or g")]
    Flag { at: String, flag: char },
    #[error("{at}: pattern is longer than {max} bytes")]
    PatternTooLong { at: String, max: usize },
    #[error("{at}: invalid regular expression: {reason}")]
    Pattern { at: String, reason: String },
}
