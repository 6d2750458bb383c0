//! The wire contract shared by the gateway and the publisher, and nothing else.
//!
//! This crate owns the names and bytes that cross a process boundary:
//! - [`Topic`]: a validated collection name and the Redis keys and channel derived from it
//!   (one hash tag per topic, so all of a topic's keys live on one Redis Cluster shard);
//! - [`Change`]: LoopBack's change object, byte-compatible (`target`, `where`, `data`,
//!   `type`, absent keys left out);
//! - [`EventId`]: a Redis stream id, parsed and ordered; [`Cursor`]: one per topic, the id
//!   of a multi-topic stream;
//! - [`Envelope`]: what the publish script puts on pub/sub (id, previous id, change,
//!   the removed record's last state);
//! - [`sse`]: the exact SSE frame bytes;
//! - [`script`]: the Lua text of the one atomic publish script;
//! - [`Filter`]: a LoopBack change-stream filter (`where`, `fields`), parsed and applied;
//! - [`json`]: JSON text with numbers in JavaScript's bytes, for everything a client reads.
//!
//! It does no I/O and depends on no runtime: a golden-fixture test in each module fails if
//! the wire format changes.

mod change;
mod cursor;
mod envelope;
mod error;
mod event_id;
mod filter;
pub mod json;
mod keys;
pub mod query;
mod record_id;
pub mod script;
pub mod snapshot;
pub mod sse;
mod topic;

pub use change::{Change, ChangeType};
pub use cursor::{Cursor, max_cursor_len};
pub use envelope::{Envelope, StreamFields};
pub use error::{DecodeError, FilterError};
pub use event_id::EventId;
pub use filter::{
    DEFAULT_MAX_FILTER_BYTES, DEFAULT_MAX_FILTER_CONDITIONS, DEFAULT_MAX_FILTER_DEPTH,
    DEFAULT_MAX_PATTERN_BYTES, Filter, FilterLimits,
};
pub use query::{Query, QueryError};
pub use record_id::{MAX_SAFE_INTEGER, MAX_STRING_ID_LEN, RecordId};
pub use topic::{MAX_TOPIC_LEN, TOPIC_PATTERN, Topic};

/// A JSON object, in insertion order (serde_json is built with `preserve_order`), so a
/// record's keys come out in the order the client sent them.
pub type Object = serde_json::Map<String, serde_json::Value>;
