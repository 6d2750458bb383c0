//! [`MemoryStore`]: records and change streams in memory, what the embedded single-node
//! gateway runs on. Same semantics as [`super::RedisStore`]
//! (atomic write + event, stream ids, the id chain), a bounded history per topic, and a
//! broadcast of every event in publish order for the gateway's hub.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::{Change, Envelope, EventId, Object, RecordId, StreamFields, Topic};
use tokio::sync::broadcast;

use super::{
    NewRecord, Retention, Snapshot, Store, Written, append_id, check_body_id, in_id_order, json,
    merged, next_auto_id, parse_record, plan_create, replacement,
};
use crate::error::StoreError;

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

impl Store for MemoryStore {
    async fn create(&self, topic: &Topic, body: Object) -> Result<Written, StoreError> {
        let plan = plan_create(body)?;
        let mut inner = self.lock();
        let state = inner.topics.entry(topic.clone()).or_default();
        let (id, record) = match plan {
            NewRecord::Auto(body) => {
                let n = next_auto_id(topic, state.seq, |n| {
                    state.records.contains_key(&n.to_string())
                })?;
                state.seq = n;
                let id = RecordId::Int(n);
                let record = append_id(body, &id);
                (id, record)
            }
            NewRecord::Given(id, record) => {
                if state.records.contains_key(&id.key()) {
                    return Err(StoreError::Exists {
                        topic: topic.clone(),
                        id,
                    });
                }
                if let RecordId::Int(n) = id {
                    state.seq = state.seq.max(n);
                }
                (id, record)
            }
        };
        state.records.insert(id.key(), json(&record));
        let change = Change::create(id.clone(), record.clone()).to_json();
        let event = self.emit(&mut inner, topic, change, None);
        Ok(Written { id, record, event })
    }

    async fn replace(
        &self,
        topic: &Topic,
        id: &RecordId,
        body: Object,
    ) -> Result<Written, StoreError> {
        let record = replacement(body, id)?;
        let mut inner = self.lock();
        let slot = inner
            .topics
            .get_mut(topic)
            .and_then(|s| s.records.get_mut(&id.key()))
            .ok_or_else(|| StoreError::NotFound {
                topic: topic.clone(),
                id: id.clone(),
            })?;
        // The previous state goes into the stream entry: a filtered view moves the record
        // out when the new state no longer matches.
        let previous = std::mem::replace(slot, json(&record));
        let change = Change::update(id.clone(), record.clone()).to_json();
        let event = self.emit(&mut inner, topic, change, Some(previous));
        Ok(Written {
            id: id.clone(),
            record,
            event,
        })
    }

    async fn patch(
        &self,
        topic: &Topic,
        id: &RecordId,
        body: Object,
    ) -> Result<Written, StoreError> {
        check_body_id(&body, id)?;
        let mut inner = self.lock();
        let slot = inner
            .topics
            .get_mut(topic)
            .and_then(|s| s.records.get_mut(&id.key()))
            .ok_or_else(|| StoreError::NotFound {
                topic: topic.clone(),
                id: id.clone(),
            })?;
        let record = merged(parse_record(slot)?, body);
        let previous = std::mem::replace(slot, json(&record));
        let change = Change::update(id.clone(), record.clone()).to_json();
        let event = self.emit(&mut inner, topic, change, Some(previous));
        Ok(Written {
            id: id.clone(),
            record,
            event,
        })
    }

    async fn delete(&self, topic: &Topic, id: &RecordId) -> Result<Option<EventId>, StoreError> {
        let mut inner = self.lock();
        let Some(last) = inner
            .topics
            .get_mut(topic)
            .and_then(|s| s.records.remove(&id.key()))
        else {
            return Ok(None);
        };
        let change = Change::remove(id.clone()).to_json();
        Ok(Some(self.emit(&mut inner, topic, change, Some(last))))
    }

    async fn publish(
        &self,
        topic: &Topic,
        change: &Change,
        last: Option<&Object>,
    ) -> Result<EventId, StoreError> {
        let mut inner = self.lock();
        let event = self.emit(&mut inner, topic, change.to_json(), last.map(json));
        inner.topics.entry(topic.clone()).or_default().raw = true;
        Ok(event)
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
    use serde_json::json;

    fn obj(v: serde_json::Value) -> Object {
        v.as_object().cloned().unwrap()
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
