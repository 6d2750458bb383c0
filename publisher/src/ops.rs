//! The LoopBack `PersistedModel` writes, built once over any [`Store`]'s one primitive
//! ([`Store::apply`]: a batch of writes in one atomic step), each with an optional
//! idempotency key.
//!
//! With a key ([`Idempotency`]), each operation adds the request's fingerprint (the
//! operation, the topic and its arguments) and the store keeps the outcome under the key in
//! the same atomic step as the write. A retry with the same key and the same request
//! answers that first outcome ([`Answer::replayed`]) and writes nothing; the same key with
//! another request is [`StoreError::KeyReused`]. Two concurrent requests under one key: the
//! store runs one, and the other finds its outcome, so they never both write. Operations
//! that read before they write (`patch`, `upsert`, `updateAll`, `upsertWithWhere`) look
//! for the key first, so a retry answers the first answer even if the record changed since.
//!
//! Every answer is built from the store's effects (the records as stored, their stream
//! ids), the first time and on a replay alike, so a replay is the same bytes.

use std::time::Duration;

use proto::{Change, EventId, Filter, FilterLimits, Object, RecordId, Topic};
use sha2::{Digest, Sha256};

use crate::error::StoreError;
use crate::store::{
    Applied, Batch, Effect, Idempotency, Item, NewRecord, Refusal, Remember, Store, Written,
    check_body_id, json, merged, parse_record, plan_create, replacement,
};

/// How many times a write that read first (a patch, an upsert, `updateAll`) reads again
/// and retries when another writer changed what it read, before answering 409 (or 503 for
/// a collection-wide read). Each retry means another writer won; eight losses in a row is
/// a hot record, not bad luck.
const MAX_ATTEMPTS: usize = 8;

/// Default for [`BatchLimits::max_items`].
pub const DEFAULT_BATCH_MAX_ITEMS: usize = 1000;
/// Default for [`BatchLimits::max_bytes`].
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;

/// How large one batch may be: one script run blocks Redis for its whole length, so a
/// batch is bounded in items and in the bytes of the records and changes it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most items: records of an array create or of an `updateAll`, changes of a publish.
    pub max_items: usize,
    /// Most bytes of record and change JSON written in one step.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_items: DEFAULT_BATCH_MAX_ITEMS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
        }
    }
}

impl BatchLimits {
    /// Refuses `items` (whose JSON is `bytes` long) if over a limit; nothing is written.
    fn check(&self, items: usize, bytes: usize) -> Result<(), StoreError> {
        if items > self.max_items {
            return Err(StoreError::BatchTooLarge {
                what: format!("{items} items"),
                limit: format!("{} items", self.max_items),
            });
        }
        if bytes > self.max_bytes {
            return Err(StoreError::BatchTooLarge {
                what: format!("{bytes} bytes"),
                limit: format!("{} bytes", self.max_bytes),
            });
        }
        Ok(())
    }
}

/// An operation's result, and whether it is the first answer under the idempotency key
/// given again (nothing was written now).
#[derive(Clone, Debug, PartialEq)]
pub struct Answer<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> Answer<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            value: f(self.value),
            replayed: self.replayed,
        }
    }
}

/// The request's fingerprint: its operation, topic and arguments, hashed (SHA-256, the
/// first 128 bits in hex), so the store keeps 32 bytes per key for it.
fn fingerprint(op: &str, topic: &Topic, parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in [op, topic.as_str()].iter().chain(parts) {
        // Length-prefixed, so no two argument lists hash the same text.
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn remember(
    idem: Option<&Idempotency>,
    op: &str,
    topic: &Topic,
    parts: &[&str],
) -> Option<Remember> {
    idem.map(|idem| Remember {
        subject: idem.subject.clone(),
        key: idem.key.clone(),
        fingerprint: fingerprint(op, topic, parts),
        ttl: idem.ttl,
    })
}

/// What a batch did, or why it wrote nothing.
type Ran = Result<Answer<Vec<Effect>>, Refusal>;

async fn run<S: Store>(
    store: &S,
    topic: &Topic,
    batch: &Batch,
    remember: Option<&Remember>,
) -> Result<Ran, StoreError> {
    Ok(match store.apply(topic, batch, remember).await? {
        Applied::Done { effects, replayed } => Ok(Answer {
            value: effects,
            replayed,
        }),
        Applied::Refused(refusal) => Err(refusal),
    })
}

/// The first outcome under the key, for operations that read before they write.
async fn recalled<S: Store>(
    store: &S,
    topic: &Topic,
    remember: Option<&Remember>,
) -> Result<Option<Answer<Vec<Effect>>>, StoreError> {
    let Some(remember) = remember else {
        return Ok(None);
    };
    Ok(store.recall(topic, remember).await?.map(|effects| Answer {
        value: effects,
        replayed: true,
    }))
}

/// A created or updated record from its effect.
fn written(effect: &Effect) -> Result<Written, StoreError> {
    let bad = || StoreError::Reply(format!("{effect:?}"));
    let record = effect.record.as_deref().ok_or_else(bad)?;
    Ok(Written {
        id: RecordId::from_path(&effect.key)?,
        record: parse_record(record)?,
        event: effect.event.ok_or_else(bad)?,
    })
}

fn all_written(effects: &[Effect]) -> Result<Vec<Written>, StoreError> {
    effects.iter().map(written).collect()
}

fn one_written(answer: Answer<Vec<Effect>>) -> Result<Answer<Written>, StoreError> {
    let effect = answer
        .value
        .first()
        .ok_or_else(|| StoreError::Reply("no effect".into()))?;
    let written = written(effect)?;
    Ok(answer.map(|_| written))
}

/// The item that creates `body`, and its id if the body names one.
fn create_item(body: Object) -> Result<(Item, Option<RecordId>), StoreError> {
    Ok(match plan_create(body)? {
        NewRecord::Auto(record) => (Item::Create { id: None, record }, None),
        NewRecord::Given(id, record) => (
            Item::Create {
                id: Some(id.clone()),
                record,
            },
            Some(id),
        ),
    })
}

/// The error for a refusal of the items whose ids are `ids` (`None`: automatic).
fn refused(topic: &Topic, refusal: Refusal, ids: &[Option<RecordId>]) -> StoreError {
    let id_of = |n: usize| ids.get(n).cloned().flatten();
    match refusal {
        Refusal::Exists(n) => match id_of(n) {
            Some(id) => StoreError::Exists {
                topic: topic.clone(),
                id,
            },
            None => StoreError::Reply(format!("an automatic id of {topic} was taken")),
        },
        Refusal::Missing(n) | Refusal::Conflict(n) => match id_of(n) {
            Some(id) => StoreError::NotFound {
                topic: topic.clone(),
                id,
            },
            None => StoreError::Reply(format!("{refusal:?}")),
        },
        Refusal::Exhausted => StoreError::IdsExhausted {
            topic: topic.clone(),
            max: proto::MAX_SAFE_INTEGER,
        },
        Refusal::Moved(_) => StoreError::Unsettled {
            topic: topic.clone(),
        },
    }
}

/// LoopBack's `create` of one record: its id is the body's `id`, or the collection's next
/// integer.
pub async fn create<S: Store>(
    store: &S,
    topic: &Topic,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    create_under(store, topic, body, idem, "create").await
}

/// LoopBack's `create` with an array: every record or none, in one step, their events
/// adjacent and in array order. An item whose id exists (or repeats an earlier item's)
/// refuses the whole batch.
pub async fn create_many<S: Store>(
    store: &S,
    topic: &Topic,
    bodies: Vec<Object>,
    idem: Option<&Idempotency>,
    limits: &BatchLimits,
) -> Result<Answer<Vec<Written>>, StoreError> {
    let text = serde_json::to_string(&bodies).map_err(|e| StoreError::Reply(e.to_string()))?;
    limits.check(bodies.len(), text.len())?;
    let remember = remember(idem, "create_many", topic, &[&text]);
    let (items, ids): (Vec<_>, Vec<_>) = bodies
        .into_iter()
        .map(create_item)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    match run(store, topic, &Batch::of(items), remember.as_ref()).await? {
        Ok(answer) => {
            let written = all_written(&answer.value)?;
            Ok(answer.map(|_| written))
        }
        Err(refusal) => Err(refused(topic, refusal, &ids)),
    }
}

/// LoopBack's `replaceById`: the body becomes the record (its id appended if absent).
pub async fn replace<S: Store>(
    store: &S,
    topic: &Topic,
    id: &RecordId,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    let record = replacement(body, id)?;
    let remember = remember(idem, "replace", topic, &[&id.key(), &json(&record)]);
    let item = Item::Update {
        id: id.clone(),
        record,
        expect: None,
    };
    match run(store, topic, &Batch::one(item), remember.as_ref()).await? {
        Ok(answer) => one_written(answer),
        Err(refusal) => Err(refused(topic, refusal, &[Some(id.clone())])),
    }
}

/// LoopBack's `patchAttributes`: `body` merged into the record (existing keys keep their
/// place, new ones are appended); the event carries the whole record after the change.
/// Merged in Rust (key order), written only if the record is still what was read.
pub async fn patch<S: Store>(
    store: &S,
    topic: &Topic,
    id: &RecordId,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    check_body_id(&body, id)?;
    let remember = remember(idem, "patch", topic, &[&id.key(), &json(&body)]);
    if let Some(answer) = recalled(store, topic, remember.as_ref()).await? {
        return one_written(answer);
    }
    let not_found = || StoreError::NotFound {
        topic: topic.clone(),
        id: id.clone(),
    };
    for _ in 0..MAX_ATTEMPTS {
        let current = store.get(topic, id).await?.ok_or_else(not_found)?;
        let item = Item::Update {
            id: id.clone(),
            record: merged(parse_record(&current)?, body.clone()),
            expect: Some(current),
        };
        match run(store, topic, &Batch::one(item), remember.as_ref()).await? {
            Ok(answer) => return one_written(answer),
            Err(Refusal::Conflict(_)) => continue,
            Err(refusal) => return Err(refused(topic, refusal, &[Some(id.clone())])),
        }
    }
    Err(StoreError::Contended {
        topic: topic.clone(),
        id: id.clone(),
    })
}

/// LoopBack's `upsert` (`patchOrCreate`): with the body's id naming a record, `body` is
/// merged into it (an `update`); else the body is created (a `create`).
pub async fn upsert<S: Store>(
    store: &S,
    topic: &Topic,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    let NewRecord::Given(id, body) = plan_create(body.clone())? else {
        return create_under(store, topic, body, idem, "upsert").await;
    };
    let remember = remember(idem, "upsert", topic, &[&json(&body)]);
    if let Some(answer) = recalled(store, topic, remember.as_ref()).await? {
        return one_written(answer);
    }
    for _ in 0..MAX_ATTEMPTS {
        let item = match store.get(topic, &id).await? {
            Some(current) => Item::Update {
                id: id.clone(),
                record: merged(parse_record(&current)?, body.clone()),
                expect: Some(current),
            },
            None => Item::Create {
                id: Some(id.clone()),
                record: body.clone(),
            },
        };
        match run(store, topic, &Batch::one(item), remember.as_ref()).await? {
            Ok(answer) => return one_written(answer),
            // Created, changed or deleted since it was read: read again.
            Err(Refusal::Exists(_) | Refusal::Conflict(_) | Refusal::Missing(_)) => continue,
            Err(refusal) => return Err(refused(topic, refusal, &[Some(id.clone())])),
        }
    }
    Err(StoreError::Contended {
        topic: topic.clone(),
        id,
    })
}

/// A create whose fingerprint names the route it came from (an `upsert` without an id is
/// another request than a `create` of the same body).
async fn create_under<S: Store>(
    store: &S,
    topic: &Topic,
    body: Object,
    idem: Option<&Idempotency>,
    op: &str,
) -> Result<Answer<Written>, StoreError> {
    let remember = remember(idem, op, topic, &[&json(&body)]);
    let (item, id) = create_item(body)?;
    match run(store, topic, &Batch::one(item), remember.as_ref()).await? {
        Ok(answer) => one_written(answer),
        Err(refusal) => Err(refused(topic, refusal, &[id])),
    }
}

/// LoopBack's `replaceOrCreate`: with the body's id naming a record, the body replaces it
/// (an `update`); else the body is created (a `create`).
pub async fn replace_or_create<S: Store>(
    store: &S,
    topic: &Topic,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    let NewRecord::Given(id, body) = plan_create(body.clone())? else {
        return create_under(store, topic, body, idem, "replace_or_create").await;
    };
    let remember = remember(idem, "replace_or_create", topic, &[&json(&body)]);
    for _ in 0..MAX_ATTEMPTS {
        let replace = Item::Update {
            id: id.clone(),
            record: body.clone(),
            expect: None,
        };
        match run(store, topic, &Batch::one(replace), remember.as_ref()).await? {
            Ok(answer) => return one_written(answer),
            Err(Refusal::Missing(_)) => {}
            Err(refusal) => return Err(refused(topic, refusal, &[Some(id.clone())])),
        }
        let create = Item::Create {
            id: Some(id.clone()),
            record: body.clone(),
        };
        match run(store, topic, &Batch::one(create), remember.as_ref()).await? {
            Ok(answer) => return one_written(answer),
            // Created meanwhile: replace it.
            Err(Refusal::Exists(_)) => {}
            Err(refusal) => return Err(refused(topic, refusal, &[Some(id.clone())])),
        }
    }
    Err(StoreError::Contended {
        topic: topic.clone(),
        id,
    })
}

/// A `where` as a write takes it: its JSON (for the fingerprint) and the filter, with the
/// caller's token scope ANDed in (a token writes only rows it may read).
#[derive(Clone, Debug)]
pub struct Where {
    text: String,
    filter: Filter,
}

impl Where {
    /// # Errors
    /// [`StoreError::Filter`] for a `where` the filter engine does not take.
    pub fn new(where_: &serde_json::Value, scope: Option<&Filter>) -> Result<Self, StoreError> {
        let filter = Filter::from_where(where_, &FilterLimits::default())?;
        let filter = match scope {
            Some(scope) => filter.restricted_to(scope),
            None => filter,
        };
        // The key is the subject's own, so its scope is the same on a retry.
        Ok(Self {
            text: where_.to_string(),
            filter,
        })
    }

    /// Every record.
    pub fn all() -> Self {
        Self {
            text: String::new(),
            filter: Filter::default(),
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}

/// The records `where_` selects from a snapshot, in find order, with the position.
async fn matching<S: Store>(
    store: &S,
    topic: &Topic,
    where_: &Where,
) -> Result<(Vec<Object>, EventId), StoreError> {
    let snapshot = store.snapshot(topic).await?;
    let mut records = Vec::new();
    for text in &snapshot.records {
        let record = parse_record(text)?;
        if where_.filter.matches(&record) {
            records.push(record);
        }
    }
    Ok((records, snapshot.position))
}

fn record_id(topic: &Topic, record: &Object) -> Result<RecordId, StoreError> {
    record
        .get("id")
        .map(RecordId::from_json)
        .transpose()?
        .ok_or_else(|| StoreError::Reply(format!("a record of {topic} has no id")))
}

/// LoopBack's `updateAll`: `patch` (less any `id`: records keep theirs, as in LoopBack)
/// merged into every record `where_` selects, in one step,
/// one `update` (the whole record) per record in find order (integer ids ascending, then
/// string ids); nothing when none matched. Read, then written only if nothing was written
/// to the topic since the read, so the records updated are exactly those matching at the
/// batch's position.
pub async fn update_all<S: Store>(
    store: &S,
    topic: &Topic,
    where_: &Where,
    patch: Object,
    idem: Option<&Idempotency>,
    limits: &BatchLimits,
) -> Result<Answer<Vec<Written>>, StoreError> {
    // LoopBack ignores an id in updateAll's data: every record keeps its own.
    let mut patch = patch;
    patch.shift_remove("id");
    let remember = remember(idem, "update_all", topic, &[&where_.text, &json(&patch)]);
    if let Some(answer) = recalled(store, topic, remember.as_ref()).await? {
        let written = all_written(&answer.value)?;
        return Ok(answer.map(|_| written));
    }
    for _ in 0..MAX_ATTEMPTS {
        let (records, position) = matching(store, topic, where_).await?;
        let mut items = Vec::with_capacity(records.len());
        let mut bytes = 0;
        for record in records {
            let id = record_id(topic, &record)?;
            let record = merged(record, patch.clone());
            bytes += json(&record).len() * 2;
            items.push(Item::Update {
                id,
                record,
                expect: None,
            });
        }
        limits.check(items.len(), bytes)?;
        let batch = Batch {
            items,
            at: Some(position),
        };
        match run(store, topic, &batch, remember.as_ref()).await? {
            Ok(answer) => {
                let written = all_written(&answer.value)?;
                return Ok(answer.map(|_| written));
            }
            Err(Refusal::Moved(_)) => continue,
            Err(refusal) => return Err(refused(topic, refusal, &[])),
        }
    }
    Err(StoreError::Unsettled {
        topic: topic.clone(),
    })
}

/// LoopBack's `upsertWithWhere`: `body` merged into the one record `where_` selects (an
/// `update`; the record keeps its id), or created when none does (a `create`, 409 if the
/// body's id exists); more than one is
/// [`StoreError::ManyMatched`]. Exact as `updateAll` is: written only if nothing was
/// written to the topic since the read.
pub async fn upsert_with_where<S: Store>(
    store: &S,
    topic: &Topic,
    where_: &Where,
    body: Object,
    idem: Option<&Idempotency>,
) -> Result<Answer<Written>, StoreError> {
    let remember = remember(
        idem,
        "upsert_with_where",
        topic,
        &[&where_.text, &json(&body)],
    );
    if let Some(answer) = recalled(store, topic, remember.as_ref()).await? {
        return one_written(answer);
    }
    for _ in 0..MAX_ATTEMPTS {
        let (records, position) = matching(store, topic, where_).await?;
        let (item, id) = match <[Object; 1]>::try_from(records) {
            Ok([record]) => {
                let id = record_id(topic, &record)?;
                // As in LoopBack, the match keeps its id whatever the body says.
                let mut patch = body.clone();
                patch.shift_remove("id");
                let item = Item::Update {
                    id: id.clone(),
                    record: merged(record, patch),
                    expect: None,
                };
                (item, Some(id))
            }
            Err(records) if records.is_empty() => create_item(body.clone())?,
            Err(records) => {
                return Err(StoreError::ManyMatched {
                    topic: topic.clone(),
                    count: records.len(),
                });
            }
        };
        let batch = Batch {
            items: vec![item],
            at: Some(position),
        };
        match run(store, topic, &batch, remember.as_ref()).await? {
            Ok(answer) => return one_written(answer),
            Err(Refusal::Moved(_)) => continue,
            Err(refusal) => return Err(refused(topic, refusal, &[id])),
        }
    }
    Err(StoreError::Unsettled {
        topic: topic.clone(),
    })
}

/// LoopBack's `deleteById`: the record's stream id, or `None` if there was none (nothing
/// is published then).
pub async fn delete<S: Store>(
    store: &S,
    topic: &Topic,
    id: &RecordId,
    idem: Option<&Idempotency>,
) -> Result<Answer<Option<EventId>>, StoreError> {
    let remember = remember(idem, "delete", topic, &[&id.key()]);
    let item = Item::Delete { id: id.clone() };
    match run(store, topic, &Batch::one(item), remember.as_ref()).await? {
        Ok(answer) => {
            let event = answer.value.first().and_then(|e| e.event);
            Ok(answer.map(|_| event))
        }
        Err(refusal) => Err(refused(topic, refusal, &[Some(id.clone())])),
    }
}

/// Changes without record writes, for backends with their own database (`POST
/// /publish`): all of `changes` or none, in order, in one step. Each change's `last` is
/// the record's previous state, used by gateway filters.
pub async fn publish<S: Store>(
    store: &S,
    topic: &Topic,
    changes: Vec<(Change, Option<Object>)>,
    idem: Option<&Idempotency>,
) -> Result<Answer<Vec<EventId>>, StoreError> {
    publish_limited(store, topic, changes, idem, &BatchLimits::default(), "").await
}

/// [`publish`] within `limits`; `request` is the whole request's text when the changes
/// are one topic's share of a larger request (its fingerprint covers the whole request,
/// so reusing a key with any other request is refused).
pub async fn publish_limited<S: Store>(
    store: &S,
    topic: &Topic,
    changes: Vec<(Change, Option<Object>)>,
    idem: Option<&Idempotency>,
    limits: &BatchLimits,
    request: &str,
) -> Result<Answer<Vec<EventId>>, StoreError> {
    let texts: Vec<(String, String)> = changes
        .iter()
        .map(|(change, last)| {
            (
                change.to_json(),
                last.as_ref().map(json).unwrap_or_default(),
            )
        })
        .collect();
    let bytes = texts.iter().map(|(c, l)| c.len() + l.len()).sum();
    limits.check(changes.len(), bytes)?;
    let joined = texts
        .iter()
        .map(|(c, l)| format!("{c}\n{l}"))
        .collect::<Vec<_>>()
        .join("\n");
    let remember = remember(idem, "publish", topic, &[request, &joined]);
    let items = changes
        .into_iter()
        .map(|(change, last)| Item::Publish { change, last })
        .collect();
    match run(store, topic, &Batch::of(items), remember.as_ref()).await? {
        Ok(answer) => {
            let events = answer
                .value
                .iter()
                .map(|e| e.event.ok_or_else(|| StoreError::Reply(format!("{e:?}"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(answer.map(|_| events))
        }
        Err(refusal) => Err(refused(topic, refusal, &[])),
    }
}

/// How long [`Idempotency`] keys are kept by default.
pub const fn default_ttl() -> Duration {
    crate::store::DEFAULT_IDEMPOTENCY_TTL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_requests_apart() {
        let t = Topic::new("T").unwrap();
        let u = Topic::new("U").unwrap();
        let a = fingerprint("create", &t, &[r#"{"a":1}"#]);
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint("create", &t, &[r#"{"a":1}"#]));
        assert_ne!(a, fingerprint("create", &u, &[r#"{"a":1}"#]));
        assert_ne!(a, fingerprint("upsert", &t, &[r#"{"a":1}"#]));
        assert_ne!(
            fingerprint("x", &t, &["ab", "c"]),
            fingerprint("x", &t, &["a", "bc"])
        );
    }

    #[test]
    fn limits_refuse_before_anything_is_written() {
        let limits = BatchLimits {
            max_items: 2,
            max_bytes: 10,
        };
        assert!(limits.check(2, 10).is_ok());
        assert!(matches!(
            limits.check(3, 1),
            Err(StoreError::BatchTooLarge { .. })
        ));
        assert!(matches!(
            limits.check(1, 11),
            Err(StoreError::BatchTooLarge { .. })
        ));
    }
}
