//! [`History`]: where a topic's history is read back from, by id. Redis streams in fleet mode
//! (one Redis or a Redis Cluster, where each read goes to the master of the topic's
//! slot), the embedded [`MemoryStore`] in single-node mode. Live delivery is the hub's
//! business; this module only answers "what came after id X", "what is the newest id",
//! and, for in-band snapshots, "what records are there now" ([`History::snapshot_start`]).

use std::sync::Arc;
use std::time::Duration;

use proto::{EventId, StreamFields, Topic};
use publisher::MemoryStore;
use redis::streams::StreamRangeReply;
use service::{RedisConnection, RedisTarget};
use tokio::sync::Semaphore;

use crate::error::HistoryError;

/// One stream entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: EventId,
    pub fields: StreamFields,
}

/// Where a snapshot of a topic's records starts.
#[derive(Debug)]
pub enum SnapshotStart {
    /// Embedded: every record, exactly the state at `position` (read under one lock).
    Whole {
        records: Vec<String>,
        position: EventId,
    },
    /// Redis: the first page, read with the position at that moment; more follow
    /// ([`History::records_page`]) and are settled by the stream after `position`.
    Paged(RecordsPage),
}

/// One page of a topic's records, read in one short script run with the stream position.
#[derive(Debug)]
pub struct RecordsPage {
    /// The next `HSCAN` cursor; `None` when this was the last page.
    pub next: Option<String>,
    pub position: EventId,
    /// Record key and JSON text.
    pub records: Vec<(String, String)>,
}

/// A topic history reader. Cheap to clone: every open stream holds one (two words).
#[derive(Clone, Debug)]
pub enum History {
    Memory(MemoryStore),
    Redis(Arc<RedisHistory>),
}

/// Stream reads over a multiplexed, reconnecting connection (not the subscription's).
#[derive(Clone)]
pub struct RedisHistory {
    conn: RedisConnection,
    timeout: Duration,
    /// Reads in flight at once. Full: a read waits for a permit (its `timeout` starts
    /// once it has one), so a herd of clients catching up queues here instead of piling
    /// page reads into the connection until they all time out.
    reads: Arc<Semaphore>,
    /// [`proto::script::SNAPSHOT_PAGE_SCRIPT`], for in-band snapshots.
    snapshot_page: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisHistory {
    pub fn new(conn: RedisConnection, timeout: Duration, reads: usize) -> Self {
        Self {
            conn,
            timeout,
            reads: Arc::new(Semaphore::new(reads)),
            snapshot_page: Arc::new(redis::Script::new(proto::script::SNAPSHOT_PAGE_SCRIPT)),
        }
    }

    /// Prepares reads from `target` without connecting; each read waits at most `timeout`
    /// for Redis (a read that times out replaces the connection), and at most `reads`
    /// are in flight at once.
    ///
    /// # Errors
    /// If a URL is unusable.
    pub fn connect(
        target: &RedisTarget,
        timeout: Duration,
        reads: usize,
    ) -> Result<Self, redis::RedisError> {
        Ok(Self::new(
            RedisConnection::for_reads(target, timeout)?,
            timeout,
            reads,
        ))
    }

    /// One page of `topic`'s records and the stream position, in one script run.
    async fn records_page(
        &self,
        topic: &Topic,
        cursor: &str,
        count: usize,
    ) -> Result<RecordsPage, HistoryError> {
        // The semaphore is never closed.
        let _permit = self.reads.acquire().await.ok();
        let mut invocation = self.snapshot_page.prepare_invoke();
        invocation
            .key(topic.records_key())
            .key(topic.stream_key())
            .key(topic.raw_key())
            .arg(cursor)
            .arg(count);
        let mut conn = self.conn.clone();
        let reply: (String, String, Vec<String>, i64) =
            match invocation.invoke_async(&mut conn).await {
                Ok(reply) => reply,
                Err(e) if e.is_timeout() => return Err(HistoryError::Timeout(self.timeout)),
                Err(e) => return Err(e.into()),
            };
        let (next, position, flat, raw) = reply;
        if raw != 0 {
            return Err(HistoryError::RecordsNotKept {
                topic: topic.clone(),
            });
        }
        let position = EventId::parse(&position).map_err(|source| HistoryError::Decode {
            id: position.clone(),
            source,
        })?;
        let mut records = Vec::with_capacity(flat.len() / 2);
        let mut flat = flat.into_iter();
        while let (Some(key), Some(record)) = (flat.next(), flat.next()) {
            records.push((key, record));
        }
        Ok(RecordsPage {
            next: (next != "0").then_some(next),
            position,
            records,
        })
    }

    async fn query(&self, cmd: redis::Cmd) -> Result<StreamRangeReply, HistoryError> {
        // The semaphore is never closed.
        let _permit = self.reads.acquire().await.ok();
        let mut conn = self.conn.clone();
        // The connection bounds each command itself (and is replaced after a timeout).
        match cmd.query_async(&mut conn).await {
            Ok(reply) => Ok(reply),
            Err(e) if e.is_timeout() => Err(HistoryError::Timeout(self.timeout)),
            Err(e) => Err(e.into()),
        }
    }
}

impl History {
    /// Starts a snapshot of `topic`'s records, `count` records per page.
    ///
    /// # Errors
    /// [`HistoryError::RecordsNotKept`] for a topic fed by raw publishes; others if the
    /// store fails.
    pub async fn snapshot_start(
        &self,
        topic: &Topic,
        count: usize,
    ) -> Result<SnapshotStart, HistoryError> {
        use publisher::Store;
        match self {
            Self::Memory(store) => match store.snapshot(topic).await {
                Ok(snapshot) => Ok(SnapshotStart::Whole {
                    records: snapshot.records,
                    position: snapshot.position,
                }),
                Err(publisher::StoreError::RecordsNotKept { .. }) => {
                    Err(HistoryError::RecordsNotKept {
                        topic: topic.clone(),
                    })
                }
                Err(e) => Err(HistoryError::Store(e.to_string())),
            },
            Self::Redis(redis) => Ok(SnapshotStart::Paged(
                redis.records_page(topic, "0", count).await?,
            )),
        }
    }

    /// The page of `topic`'s records after `cursor` (Redis; see [`SnapshotStart::Paged`]).
    ///
    /// # Errors
    /// As [`History::snapshot_start`]; on the embedded store there are no pages to read.
    pub async fn records_page(
        &self,
        topic: &Topic,
        cursor: &str,
        count: usize,
    ) -> Result<RecordsPage, HistoryError> {
        match self {
            Self::Memory(_) => Err(HistoryError::Store(
                "the embedded store's snapshots are whole".into(),
            )),
            Self::Redis(redis) => redis.records_page(topic, cursor, count).await,
        }
    }

    /// The pod's subscription found Redis silent: the stream-read connection, which an
    /// event refill would use first, is likely silent too, so it is replaced now (within
    /// its backoff) rather than failing the first client reads after the network heals.
    pub fn suspect(&self) {
        if let Self::Redis(redis) = self {
            redis.conn.suspect();
        }
    }

    /// Up to `count` entries of `topic` strictly after `after`, oldest first.
    ///
    /// # Errors
    /// [`HistoryError`] if Redis fails or an entry is not in our format.
    pub async fn range(
        &self,
        topic: &Topic,
        after: EventId,
        count: usize,
    ) -> Result<Vec<Entry>, HistoryError> {
        match self {
            Self::Memory(store) => Ok(store
                .range(topic, after, count)
                .0
                .into_iter()
                .map(|(id, fields)| Entry { id, fields })
                .collect()),
            Self::Redis(redis) => {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(topic.stream_key())
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count);
                entries(redis.query(cmd).await?)
            }
        }
    }

    /// The newest id of `topic`'s stream, `0-0` if it has none.
    ///
    /// # Errors
    /// [`HistoryError`] if Redis fails.
    pub async fn last_id(&self, topic: &Topic) -> Result<EventId, HistoryError> {
        match self {
            Self::Memory(store) => Ok(store.last_id(topic)),
            Self::Redis(redis) => {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(topic.stream_key())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                Ok(entries(redis.query(cmd).await?)?
                    .first()
                    .map_or(EventId::ZERO, |e| e.id))
            }
        }
    }

    /// The newest entry of `topic`, if any.
    ///
    /// # Errors
    /// [`HistoryError`] if Redis fails.
    pub async fn last_entry(&self, topic: &Topic) -> Result<Option<Entry>, HistoryError> {
        match self {
            Self::Memory(store) => Ok(store
                .last_entry(topic)
                .map(|(id, fields)| Entry { id, fields })),

            Self::Redis(redis) => {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(topic.stream_key())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                Ok(entries(redis.query(cmd).await?)?.pop())
            }
        }
    }
}

fn entries(reply: StreamRangeReply) -> Result<Vec<Entry>, HistoryError> {
    reply
        .ids
        .into_iter()
        .map(|entry| {
            let decode = |source| HistoryError::Decode {
                id: entry.id.clone(),
                source,
            };
            let id = EventId::parse(&entry.id).map_err(decode)?;
            let mut pairs = Vec::with_capacity(entry.map.len());
            for (field, value) in &entry.map {
                let text: String = redis::from_redis_value_ref(value)?;
                pairs.push((field.as_str(), text));
            }
            let fields = StreamFields::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
                .map_err(decode)?;
            Ok(Entry { id, fields })
        })
        .collect()
}
