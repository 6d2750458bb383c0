//! [`MemoryStore`]: records and change streams in memory, what the embedded single-node
//! gateway runs on. Same semantics as [`super::RedisStore`]
//! (atomic write + event, stream ids, the id chain), a bounded history per topic, and a
//! broadcast of every event in publish order for the gateway's hub.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use proto::{Change, Envelope, EventId, RecordId, StreamFields, Topic};
use tokio::sync::broadcast;

use super::{
    Applied, Batch, Effect, Item, Refusal, Remember, Retention, Snapshot, Store, append_id,
    in_id_order, json, next_auto_id,
};
use crate::error::StoreError;

/// Most idempotency keys the memory store remembers at once. When full, the key closest
/// to expiry is forgotten first (a retry under it would write again); the embedded
/// gateway is one process for development and small installs, where this is far more
/// than a day of retried writes.
pub const MEMORY_IDEMPOTENCY_KEYS: usize = 100_000;

/// Capacity of the event broadcast. A receiver that falls further behind gets `Lagged`
/// and must refill from [`MemoryStore::range`]: nothing is lost, the history is the buffer.
pub const EVENT_BROADCAST_CAPACITY: usize = 4096;

/// One event as the store broadcasts it.
#[derive(Clone, Debug)]
pub struct Published {
    pub topic: Topic,
    pub envelope: Arc<Envelope>,
}

/// In-memory records and change history, for a gateway running without Redis.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    /// Every event, in publish order. Sent while the lock is held so broadcast order is
    /// history order. Full: the slowest receiver lags (see [`EVENT_BROADCAST_CAPACITY`]).
    events_tx: broadcast::Sender<Published>,
}

#[derive(Debug)]
struct Inner {
    topics: HashMap<Topic, TopicState>,
    last_id: EventId,
    retention: Retention,
    /// Outcomes under idempotency keys, by topic and key name.
    remembered: HashMap<(Topic, String), Kept>,
    /// The same keys in the order they expire (every key of one store has one TTL in
    /// practice, so insertion order); at most [`MEMORY_IDEMPOTENCY_KEYS`].
    expiry: VecDeque<(Instant, Topic, String)>,
}

/// A remembered outcome.
#[derive(Debug)]
struct Kept {
    fingerprint: String,
    effects: Vec<Effect>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct TopicState {
    records: HashMap<String, String>,
    seq: i64,
    /// Oldest first; at most `retention.max_len` entries (all, if 0).
    history: VecDeque<(EventId, StreamFields)>,
    /// Survives trimming, like a Redis stream's last-generated id.
    last: EventId,
    /// A raw publish wrote here: the records are a backend's, not kept here.
    raw: bool,
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        let (events_tx, _) = broadcast::channel(EVENT_BROADCAST_CAPACITY);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                topics: HashMap::new(),
                last_id: EventId::ZERO,
                retention,
                remembered: HashMap::new(),
                expiry: VecDeque::new(),
            })),
            events_tx,
        }
    }

    /// Every event from now on, in publish order.
    pub fn subscribe(&self) -> broadcast::Receiver<Published> {
        self.events_tx.subscribe()
    }

    /// Up to `count` history entries of `topic` after `after`, and the oldest id still
    /// held (`None` if the topic has no history).
    pub fn range(
        &self,
        topic: &Topic,
        after: EventId,
        count: usize,
    ) -> (Vec<(EventId, StreamFields)>, Option<EventId>) {
        let inner = self.lock();
        let Some(state) = inner.topics.get(topic) else {
            return (Vec::new(), None);
        };
        let start = state.history.partition_point(|(id, _)| *id <= after);
        let entries = state
            .history
            .iter()
            .skip(start)
            .take(count)
            .cloned()
            .collect();
        (entries, state.history.front().map(|(id, _)| *id))
    }

    /// The newest history entry of `topic`, if any.
    pub fn last_entry(&self, topic: &Topic) -> Option<(EventId, StreamFields)> {
        self.lock().topics.get(topic)?.history.back().cloned()
    }

    /// The newest id of `topic` (`0-0` if none).
    pub fn last_id(&self, topic: &Topic) -> EventId {
        self.lock()
            .topics
            .get(topic)
            .map_or(EventId::ZERO, |s| s.last)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends to history and broadcasts, under the caller's lock.
    fn emit(
        &self,
        inner: &mut Inner,
        topic: &Topic,
        change: String,
        last: Option<String>,
    ) -> EventId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let id = if now > inner.last_id.ms {
            EventId::new(now, 0)
        } else {
            EventId::new(inner.last_id.ms, inner.last_id.seq + 1)
        };
        inner.last_id = id;
        let retention = inner.retention;
        let state = inner.topics.entry(topic.clone()).or_default();
        let prev = state.last;
        state.last = id;
        state.history.push_back((
            id,
            StreamFields {
                prev,
                change: change.clone(),

                last: last.clone(),
            },
        ));
        if retention.max_len > 0 {
            while state.history.len() as u64 > retention.max_len {
                state.history.pop_front();
            }
        }
        if !retention.max_age.is_zero() {
            let horizon = now
                .saturating_sub(u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX));
            while state.history.front().is_some_and(|(id, _)| id.ms < horizon) {
                state.history.pop_front();
            }
        }
        // No receivers is fine: nobody is watching yet.
        let _ = self.events_tx.send(Published {
            topic: topic.clone(),
            envelope: Arc::new(Envelope {
                id,
                prev,
                change,
                last,
            }),
        });
        id
    }
}

impl Inner {
    /// Forgets expired keys, and the oldest beyond [`MEMORY_IDEMPOTENCY_KEYS`].
    fn expire(&mut self, now: Instant) {
        while let Some((expires, topic, key)) = self.expiry.front() {
            if *expires > now && self.expiry.len() < MEMORY_IDEMPOTENCY_KEYS {
                break;
            }
            let name = (topic.clone(), key.clone());
            if self
                .remembered
                .get(&name)
                .is_some_and(|k| k.expires == *expires)
            {
                self.remembered.remove(&name);
            }
            self.expiry.pop_front();
        }
    }

    /// The outcome under `remember`'s key; [`StoreError::KeyReused`] if for another request.
    fn recall(
        &mut self,
        topic: &Topic,
        remember: &Remember,
    ) -> Result<Option<Vec<Effect>>, StoreError> {
        self.expire(Instant::now());
        let name = (
            topic.clone(),
            topic.idempotency_key(&remember.subject, remember.key.as_str()),
        );
        match self.remembered.get(&name) {
            Some(kept) if kept.fingerprint == remember.fingerprint => {
                Ok(Some(kept.effects.clone()))
            }
            Some(_) => Err(StoreError::KeyReused),
            None => Ok(None),
        }
    }

    fn remember(&mut self, topic: &Topic, remember: &Remember, effects: &[Effect]) {
        let now = Instant::now();
        self.expire(now);
        let expires = now + remember.ttl;
        let key = topic.idempotency_key(&remember.subject, remember.key.as_str());
        self.expiry.push_back((expires, topic.clone(), key.clone()));
        self.remembered.insert(
            (topic.clone(), key),
            Kept {
                fingerprint: remember.fingerprint.clone(),
                effects: effects.to_vec(),
                expires,
            },
        );
    }
}

impl MemoryStore {
    /// Checks every item of `batch` against `state`, as the write script does before its
    /// first write: the refusal, if any, and the automatic ids the creates get.
    fn check(
        topic: &Topic,
        state: &TopicState,
        batch: &Batch,
    ) -> Result<Result<Vec<i64>, Refusal>, StoreError> {
        if let Some(at) = batch.at
            && at != state.last
        {
            return Ok(Err(Refusal::Moved(state.last)));
        }
        let mut given = HashSet::new();
        let mut autos = 0;
        for (n, item) in batch.items.iter().enumerate() {
            match item {
                Item::Create { id: None, .. } => autos += 1,
                Item::Create { id: Some(id), .. } => {
                    if state.records.contains_key(&id.key()) || !given.insert(id.key()) {
                        return Ok(Err(Refusal::Exists(n)));
                    }
                }
                Item::Update { id, expect, .. } => match state.records.get(&id.key()) {
                    None => return Ok(Err(Refusal::Missing(n))),
                    Some(current) if expect.as_ref().is_some_and(|e| e != current) => {
                        return Ok(Err(Refusal::Conflict(n)));
                    }
                    Some(_) => {}
                },
                Item::Delete { .. } | Item::Publish { .. } => {}
            }
        }
        // In item order, as if each create ran in turn: an integer id an earlier item
        // names moves the counter past it for the creates after it.
        let mut ids = Vec::with_capacity(autos);
        let mut seq = state.seq;
        for item in &batch.items {
            match item {
                Item::Create {
                    id: Some(RecordId::Int(n)),
                    ..
                } => seq = seq.max(*n),
                Item::Create { id: None, .. } => {
                    let taken = |n: i64| {
                        let key = n.to_string();
                        state.records.contains_key(&key) || given.contains(&key)
                    };
                    match next_auto_id(topic, seq, taken) {
                        Ok(n) => {
                            ids.push(n);
                            seq = n;
                        }
                        Err(StoreError::IdsExhausted { .. }) => {
                            return Ok(Err(Refusal::Exhausted));
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {}
            }
        }
        Ok(Ok(ids))
    }
}

impl Store for MemoryStore {
    async fn apply(
        &self,
        topic: &Topic,
        batch: &Batch,
        remember: Option<&Remember>,
    ) -> Result<Applied, StoreError> {
        let mut inner = self.lock();
        if let Some(remember) = remember
            && let Some(effects) = inner.recall(topic, remember)?
        {
            return Ok(Applied::Done {
                effects,
                replayed: true,
            });
        }
        let ids = {
            let state = inner.topics.entry(topic.clone()).or_default();
            match Self::check(topic, state, batch)? {
                Ok(ids) => ids,
                Err(refusal) => return Ok(Applied::Refused(refusal)),
            }
        };
        let mut ids = ids.into_iter();
        let mut effects = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            let state = inner.topics.entry(topic.clone()).or_default();
            let (key, record, change, last) = match item {
                Item::Create { id, record } => {
                    let (id, record) = match id {
                        Some(id) => (id.clone(), record.clone()),
                        None => {
                            let id = RecordId::Int(ids.next().unwrap_or_default());
                            let record = append_id(record.clone(), &id);
                            (id, record)
                        }
                    };
                    if let RecordId::Int(n) = id {
                        state.seq = state.seq.max(n);
                    }
                    let text = json(&record);
                    state.records.insert(id.key(), text.clone());
                    let change = Change::create(id.clone(), record).to_json();
                    (id.key(), Some(text), change, None)
                }
                Item::Update { id, record, .. } => {
                    let text = json(record);
                    // The previous state goes into the stream entry: a filtered view moves
                    // the record out when the new state no longer matches.
                    let previous = state.records.insert(id.key(), text.clone());
                    let change = Change::update(id.clone(), record.clone()).to_json();
                    (id.key(), Some(text), change, previous)
                }
                Item::Delete { id } => {
                    let Some(previous) = state.records.remove(&id.key()) else {
                        effects.push(Effect {
                            event: None,
                            key: id.key(),
                            record: None,
                        });
                        continue;
                    };
                    let change = Change::remove(id.clone()).to_json();
                    (id.key(), None, change, Some(previous))
                }
                Item::Publish { change, last } => {
                    state.raw = true;
                    (
                        String::new(),
                        None,
                        change.to_json(),
                        last.as_ref().map(json),
                    )
                }
            };
            let event = self.emit(&mut inner, topic, change, last);
            effects.push(Effect {
                event: Some(event),
                key,
                record,
            });
        }
        if let Some(remember) = remember {
            inner.remember(topic, remember, &effects);
        }
        Ok(Applied::Done {
            effects,
            replayed: false,
        })
    }

    async fn recall(
        &self,
        topic: &Topic,
        remember: &Remember,
    ) -> Result<Option<Vec<Effect>>, StoreError> {
        self.lock().recall(topic, remember)
    }

    async fn get(&self, topic: &Topic, id: &RecordId) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .topics
            .get(topic)
            .and_then(|s| s.records.get(&id.key()).cloned()))
    }

    async fn snapshot(&self, topic: &Topic) -> Result<Snapshot, StoreError> {
        // One lock: the records and the position are read in one step.
        let inner = self.lock();
        let Some(state) = inner.topics.get(topic) else {
            return Ok(Snapshot {
                records: Vec::new(),
                position: EventId::ZERO,
            });
        };
        if state.raw {
            return Err(StoreError::RecordsNotKept {
                topic: topic.clone(),
            });
        }
        let rows = state
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Snapshot {
            records: in_id_order(rows),
            position: state.last,
        })
    }

    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Object;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> Object {
        v.as_object().cloned().unwrap()
    }

    #[tokio::test]
    async fn an_array_create_numbers_its_items_in_array_order() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let bodies = [
            json!({"id": 10, "a": 1}),
            json!({"a": 2}),
            json!({"id": "s"}),
            json!({"a": 3}),
        ];
        let created = crate::ops::create_many(
            &store,
            &topic,
            bodies.into_iter().map(obj).collect(),
            None,
            &crate::ops::BatchLimits::default(),
        )
        .await
        .unwrap();
        // As if each were created in turn (LoopBack's order): id 10 moves the counter
        // for the items after it.
        let ids: Vec<RecordId> = created.value.into_iter().map(|w| w.id).collect();
        assert_eq!(
            ids,
            [
                RecordId::Int(10),
                RecordId::Int(11),
                RecordId::Str("s".into()),
                RecordId::Int(12)
            ]
        );
        assert_eq!(
            store.create(&topic, obj(json!({}))).await.unwrap().id,
            RecordId::Int(13)
        );
        // An id a later item names is skipped, not refused.
        let other = Topic::new("U").unwrap();
        let created = crate::ops::create_many(
            &store,
            &other,
            vec![obj(json!({"a": 1})), obj(json!({"id": 1}))],
            None,
            &crate::ops::BatchLimits::default(),
        )
        .await
        .unwrap();
        let ids: Vec<RecordId> = created.value.into_iter().map(|w| w.id).collect();
        assert_eq!(ids, [RecordId::Int(2), RecordId::Int(1)]);
    }

    #[tokio::test]
    async fn a_counter_at_the_safe_limit_refuses_only_creates_without_an_id() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let max = proto::MAX_SAFE_INTEGER;
        let last = store.create(&topic, obj(json!({"id": max}))).await.unwrap();
        assert_eq!(last.id, RecordId::Int(max));
        let mut events = store.subscribe();
        for _ in 0..2 {
            assert!(matches!(
                store.create(&topic, obj(json!({"a": 1}))).await,
                Err(StoreError::IdsExhausted { .. })
            ));
        }
        // Nothing was written or published, and the collection still works.
        assert!(events.try_recv().is_err());
        assert_eq!(store.last_id(&topic), last.event);
        store.create(&topic, obj(json!({"id": 5}))).await.unwrap();
        assert_eq!(
            store.snapshot(&topic).await.unwrap().records,
            [r#"{"id":5}"#.to_owned(), format!(r#"{{"id":{max}}}"#)]
        );
    }
}
