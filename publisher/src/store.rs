//! Record stores: where a mutation and its change event are written together.
//!
//! [`Store`] is what the REST API calls. [`RedisStore`] is the production store (one
//! atomic Lua script per batch of writes); [`MemoryStore`] keeps records and streams in
//! memory for the embedded single-node gateway, with the same semantics and a bounded
//! history. The id rules, record assembly and patch merge live here, once, for both; the
//! LoopBack operations over them live in [`crate::ops`].

use std::future::Future;
use std::time::Duration;

use proto::{Change, EventId, Object, RecordId, Topic};

use crate::error::StoreError;

mod memory;
mod redis_store;

pub use memory::{MemoryStore, Published};
pub use redis_store::{RedisOptions, RedisStore};

/// Default stream length limit per topic (approximate, see [`Retention`]).
pub const DEFAULT_STREAM_MAX_LEN: u64 = 10_000;
/// Default stream age limit per topic.
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How much history each topic's stream keeps for replay. Both limits apply; `0` /
/// `Duration::ZERO` turns one off. Redis trims approximately (`MAXLEN ~`, `MINID ~`):
/// at least this much is kept, a little more until a whole stream node can be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_len: u64,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_len: DEFAULT_STREAM_MAX_LEN,
            max_age: DEFAULT_STREAM_MAX_AGE,
        }
    }
}

/// A record written together with its change event.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub id: RecordId,
    pub record: Object,
    /// The stream id of the change event.
    pub event: EventId,
}

/// One write of a [`Batch`]. The items of one batch name distinct records.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A new record. `id: None`: the collection's next integer, appended as the record's
    /// last key (the record has no `id` then).
    Create {
        id: Option<RecordId>,
        record: Object,
    },
    /// A new state for an existing record; with `expect`, only if its stored JSON text is
    /// still that (compare-and-set).
    Update {
        id: RecordId,
        record: Object,
        expect: Option<String>,
    },
    /// Deletes a record; a missing one is no event.
    Delete { id: RecordId },
    /// A change without a record write; `last` is the record's previous state.
    Publish {
        change: Change,
        last: Option<Object>,
    },
}

/// Writes made in one atomic step: all or none, their events adjacent in the stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub items: Vec<Item>,
    /// The stream position the batch was computed at: it is refused
    /// ([`Refusal::Moved`]) if any write came after it (`updateAll` reads, then writes).
    pub at: Option<EventId>,
}

impl Batch {
    pub fn of(items: Vec<Item>) -> Self {
        Self { items, at: None }
    }

    pub fn one(item: Item) -> Self {
        Self::of(vec![item])
    }
}

/// What one item of a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    /// Its change event; `None` for a delete of a missing record.
    pub event: Option<EventId>,
    /// The record's key (empty for a publish).
    pub key: String,
    /// The record's JSON text as stored (`None` for a delete or a publish).
    pub record: Option<String>,
}

/// Why a batch wrote nothing, when the reason is the data (not the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Item `n` (from 0) creates a record that exists.
    Exists(usize),
    /// Item `n` updates a record that does not exist.
    Missing(usize),
    /// Item `n`'s record is no longer the expected state.
    Conflict(usize),
    /// The stream moved past [`Batch::at`]; this is its newest id.
    Moved(EventId),
    /// An automatic id would pass [`proto::MAX_SAFE_INTEGER`].
    Exhausted,
}

/// What [`Store::apply`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Written now, or (`replayed`) the first time this idempotency key was used; then
    /// nothing was written now and these are the first write's effects.
    Done {
        effects: Vec<Effect>,
        replayed: bool,
    },
    Refused(Refusal),
}

/// An idempotency key as a write carries it ([`Store::apply`]): whose it is, the
/// request's fingerprint (a different request under the same key is refused), and how
/// long it is remembered. [`crate::ops`] makes it from an [`Idempotency`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remember {
    pub subject: String,
    pub key: IdempotencyKey,
    pub fingerprint: String,
    pub ttl: Duration,
}

/// An `Idempotency-Key`: 1 to [`IdempotencyKey::MAX_LEN`] visible ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// # Errors
    /// [`StoreError::BadIdempotencyKey`] for an empty or longer key, or one with a byte
    /// outside `!`..=`~`.
    pub fn new(key: &str) -> Result<Self, StoreError> {
        let visible = key.bytes().all(|b| b.is_ascii_graphic());
        if key.is_empty() || key.len() > Self::MAX_LEN || !visible {
            return Err(StoreError::BadIdempotencyKey);
        }
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who writes under an idempotency key, and for how long it is kept: what a caller
/// passes to the [`crate::ops`] functions, which add the request's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idempotency {
    /// The token's subject (`""` without auth): keys are scoped per subject and topic.
    pub subject: String,
    pub key: IdempotencyKey,
    pub ttl: Duration,
}

/// Default for how long an idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A place records and their change events are written to, atomically.
///
/// The primitive is [`Store::apply`]: a batch of writes, each record written and its
/// change appended and published, all in one step, or nothing. The LoopBack operations
/// ([`crate::ops`]) are built on it once, for every store; the provided methods here are
/// the common ones without an idempotency key.
pub trait Store: Clone + Send + Sync + 'static {
    /// Writes `batch` in one atomic step. With `remember`, the outcome is kept under its
    /// key in the same step; a key used before answers its first outcome
    /// ([`Applied::Done`] `replayed`) and writes nothing, or [`StoreError::KeyReused`] if
    /// the fingerprint differs.
    fn apply(
        &self,
        topic: &Topic,
        batch: &Batch,
        remember: Option<&Remember>,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send;

    /// The first outcome under `remember`'s key, if it was used (and not expired), or
    /// [`StoreError::KeyReused`] if for another request. Writes nothing.
    fn recall(
        &self,
        topic: &Topic,
        remember: &Remember,
    ) -> impl Future<Output = Result<Option<Vec<Effect>>, StoreError>> + Send;

    /// One record's JSON text.
    fn get(
        &self,
        topic: &Topic,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Every record's JSON text, integer ids first in numeric order, then string ids, and
    /// the stream position they are exactly the state of ([`Snapshot`]).
    fn snapshot(&self, topic: &Topic) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Whether the store can take writes now (Redis answers PING).
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates a record. Its id is the body's `id`, or the collection's next integer.
    fn create(
        &self,
        topic: &Topic,
        body: Object,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        async move { Ok(crate::ops::create(self, topic, body, None).await?.value) }
    }

    /// Replaces an existing record (HTTP `PUT`).
    fn replace(
        &self,
        topic: &Topic,
        id: &RecordId,
        body: Object,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        async move {
            Ok(crate::ops::replace(self, topic, id, body, None)
                .await?
                .value)
        }
    }

    /// Merges `body` into an existing record (HTTP `PATCH`); the event carries the whole
    /// record after the change.
    fn patch(
        &self,
        topic: &Topic,
        id: &RecordId,
        body: Object,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send {
        async move { Ok(crate::ops::patch(self, topic, id, body, None).await?.value) }
    }

    /// Deletes a record. `None` if it did not exist (no event is published then).
    fn delete(
        &self,
        topic: &Topic,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<EventId>, StoreError>> + Send {
        async move { Ok(crate::ops::delete(self, topic, id, None).await?.value) }
    }

    /// Publishes a change without touching records, for backends with their own database.
    /// `last` is the record's previous state, used by gateway filters.
    fn publish(
        &self,
        topic: &Topic,
        change: &Change,
        last: Option<&Object>,
    ) -> impl Future<Output = Result<EventId, StoreError>> + Send {
        async move {
            let item = (change.clone(), last.cloned());
            let events = crate::ops::publish(self, topic, vec![item], None)
                .await?
                .value;
            events
                .into_iter()
                .next()
                .ok_or_else(|| StoreError::Reply("publish answered no event".into()))
        }
    }
}

/// A collection's records as they were at one stream position: opening the change stream
/// with `position` as `Last-Event-ID` yields exactly the changes after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Each record's JSON text, integer ids first in numeric order, then string ids.
    pub records: Vec<String>,
    /// The topic's stream position the records reflect (`0-0` before any event).
    pub position: EventId,
}

/// Reads the write script's `{"ok", event, key, record, ...}` reply (the memory store
/// answers the same shape).
pub(crate) fn effects(reply: &[String]) -> Result<Vec<Effect>, StoreError> {
    let bad = || StoreError::Reply(format!("{reply:?}"));
    let (Some("ok"), rest) = (
        reply.first().map(String::as_str),
        reply.get(1..).unwrap_or(&[]),
    ) else {
        return Err(bad());
    };
    if rest.len() % 3 != 0 {
        return Err(bad());
    }
    rest.chunks_exact(3)
        .map(|item| {
            let event = match item[0].as_str() {
                "" => None,
                id => Some(EventId::parse(id).map_err(|_| bad())?),
            };
            Ok(Effect {
                event,
                key: item[1].clone(),
                record: (!item[2].is_empty()).then(|| item[2].clone()),
            })
        })
        .collect()
}

/// A remembered outcome: the first `ok` reply as a JSON array of strings (Lua's cjson
/// writes an empty array as `{}`).
pub(crate) fn remembered(outcome: &str) -> Result<Vec<Effect>, StoreError> {
    let reply: Vec<String> = if outcome == "{}" {
        Vec::new()
    } else {
        serde_json::from_str(outcome)
            .map_err(|e| StoreError::Reply(format!("remembered outcome: {e}")))?
    };
    effects(&reply)
}

/// How a create names its record.
#[derive(Debug)]
pub(crate) enum NewRecord {
    /// No id in the body: the store assigns the next integer and appends `id` last.
    Auto(Object),
    /// The body names its id; the record is the body as sent.
    Given(RecordId, Object),
}

/// Reads the id rules of a create body. `"id": null` counts as no id, as in LoopBack.
pub(crate) fn plan_create(mut body: Object) -> Result<NewRecord, StoreError> {
    match body.get("id") {
        None => Ok(NewRecord::Auto(body)),
        Some(serde_json::Value::Null) => {
            body.shift_remove("id");
            Ok(NewRecord::Auto(body))
        }
        Some(v) => Ok(NewRecord::Given(RecordId::from_json(v)?, body)),
    }
}

/// The id a create without one gets: the first integer after the counter `seq` that
/// `taken` does not hold, never past [`proto::MAX_SAFE_INTEGER`] (the publish script's
/// `create_auto` does the same in Lua). The caller stores it as the new counter.
pub(crate) fn next_auto_id(
    topic: &Topic,
    seq: i64,
    taken: impl Fn(i64) -> bool,
) -> Result<i64, StoreError> {
    let max = proto::MAX_SAFE_INTEGER;
    let exhausted = || StoreError::IdsExhausted {
        topic: topic.clone(),
        max,
    };
    // A counter can only be past `max` if it was moved there before ids were bounded.
    let mut n = seq.checked_add(1).ok_or_else(exhausted)?;
    while n <= max && taken(n) {
        n += 1;
    }
    if n > max { Err(exhausted()) } else { Ok(n) }
}

/// Appends `"id": n` to an auto-id record, as the publish script does in Lua.
pub(crate) fn append_id(mut body: Object, id: &RecordId) -> Object {
    body.insert("id".into(), id.to_json());
    body
}

/// The record a `PUT` stores: the body, with the URL's id appended if the body has none.
pub(crate) fn replacement(body: Object, id: &RecordId) -> Result<Object, StoreError> {
    check_body_id(&body, id)?;
    if body.contains_key("id") {
        Ok(body)
    } else {
        Ok(append_id(body, id))
    }
}

/// The record a `PATCH` stores: existing keys keep their place, new keys are appended.
/// The patch must have passed [`check_body_id`].
pub(crate) fn merged(mut current: Object, patch: Object) -> Object {
    for (key, value) in patch {
        current.insert(key, value);
    }
    current
}

/// A body's `id`, if any, must be the URL's. Checked before any read, so a bad body is a
/// 400 whether or not the record exists.
pub(crate) fn check_body_id(body: &Object, url: &RecordId) -> Result<(), StoreError> {
    match body.get("id") {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(v) => {
            let given = RecordId::from_json(v)?;
            if &given == url {
                Ok(())
            } else {
                Err(StoreError::IdMismatch {
                    url: url.clone(),
                    body: given,
                })
            }
        }
    }
}

/// Orders `(key, json)` pairs by id: integers numerically, then strings.
pub(crate) fn in_id_order(mut rows: Vec<(String, String)>) -> Vec<String> {
    rows.sort_by_cached_key(|(key, _)| match RecordId::from_path(key) {
        Ok(RecordId::Int(n)) => (0, n, String::new()),
        _ => (1, 0, key.clone()),
    });
    rows.into_iter().map(|(_, json)| json).collect()
}

/// A record's compact JSON text, keys in their stored order.
pub(crate) fn json(object: &Object) -> String {
    proto::json::to_string(object)
}

/// Parses a stored record.
pub(crate) fn parse_record(text: &str) -> Result<Object, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Reply(format!("stored record is not a JSON object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> Object {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn create_ids() {
        assert!(matches!(
            plan_create(obj(json!({"a":1}))),
            Ok(NewRecord::Auto(_))
        ));
        match plan_create(obj(json!({"a":1,"id":null}))).unwrap() {
            NewRecord::Auto(body) => {
                assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"a":1}"#)
            }
            other => panic!("{other:?}"),
        }
        match plan_create(obj(json!({"id":"x","a":1}))).unwrap() {
            NewRecord::Given(id, body) => {
                assert_eq!(id, RecordId::Str("x".into()));
                assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"id":"x","a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        assert!(plan_create(obj(json!({"id":true}))).is_err());
    }

    #[test]
    fn auto_ids_skip_taken_ones_and_stop_at_the_safe_range() {
        let topic = Topic::new("T").unwrap();
        let max = proto::MAX_SAFE_INTEGER;
        assert_eq!(next_auto_id(&topic, 0, |_| false).unwrap(), 1);
        assert_eq!(next_auto_id(&topic, 0, |n| n < 3).unwrap(), 3);
        assert_eq!(next_auto_id(&topic, max - 1, |_| false).unwrap(), max);
        for seq in [max, i64::MAX] {
            assert!(matches!(
                next_auto_id(&topic, seq, |_| false),
                Err(StoreError::IdsExhausted { .. })
            ));
        }
        // The last ids taken by explicit creates: nothing is left either.
        assert!(matches!(
            next_auto_id(&topic, max - 2, |n| n >= max - 1),
            Err(StoreError::IdsExhausted { .. })
        ));
    }

    #[test]
    fn replace_and_patch_keep_order() {
        let id = RecordId::Int(1);
        let put = replacement(obj(json!({"b":1,"a":2})), &id).unwrap();
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"b":1,"a":2,"id":1}"#
        );
        let patched = merged(put, obj(json!({"c":3,"b":9})));
        assert_eq!(
            serde_json::to_string(&patched).unwrap(),
            r#"{"b":9,"a":2,"id":1,"c":3}"#
        );
        assert!(matches!(
            replacement(obj(json!({"id":2})), &id),
            Err(StoreError::IdMismatch { .. })
        ));
        assert!(matches!(
            check_body_id(&obj(json!({"id":"1x"})), &id),
            Err(StoreError::IdMismatch { .. })
        ));
        assert!(check_body_id(&obj(json!({"id":1})), &id).is_ok());
    }

    #[test]
    fn list_order() {
        let rows = vec![
            ("b".to_owned(), "B".to_owned()),
            ("10".to_owned(), "10".to_owned()),
            ("2".to_owned(), "2".to_owned()),
            ("a".to_owned(), "A".to_owned()),
            ("-1".to_owned(), "-1".to_owned()),
        ];
        assert_eq!(in_id_order(rows), ["-1", "2", "10", "A", "B"]);
    }
}
