//! [`RedisStore`]: every batch of writes is one `EVALSHA` of
//! [`proto::script::WRITE_SCRIPT`], on one Redis or on a Redis Cluster ([`RedisTarget`]).
//!
//! In a cluster every key of a topic and its channel carry the hash tag `{topic}`
//! ([`proto::Topic::stream_key`]), so the script runs on the master of that one slot and
//! `SPUBLISH`es there (sharded pub/sub).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proto::script::{ITEM_AUTO, ITEM_CREATE, ITEM_DELETE, ITEM_PUBLISH, ITEM_UPDATE};
use proto::{Change, EventId, RecordId, Topic};
use redis::AsyncCommands;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{ErrorKind, ServerErrorKind};
use service::{RedisConnection, RedisTarget};

use super::{
    Applied, Batch, Effect, Item, Refusal, Remember, Retention, Snapshot, Store, effects,
    in_id_order, json, remembered,
};
use crate::error::StoreError;

/// First pause before a cluster call is sent again after a refusal that proves the script
/// did not run (`MOVED`, `TRYAGAIN`, a refused connection during a failover); doubled
/// each time, within the response timeout.
const CLUSTER_RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Connection settings for [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub retention: Retention,
    /// Longest wait for one Redis reply before the request fails with 503.
    pub response_timeout: Duration,
    /// Use `SPUBLISH` (Redis Cluster sharded pub/sub) instead of `PUBLISH`. Always on for
    /// [`RedisTarget::Cluster`].
    pub sharded: bool,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            retention: Retention::default(),
            response_timeout: Duration::from_secs(2),
            sharded: false,
        }
    }
}

/// Records read per page of a snapshot (`HSCAN`'s `COUNT` hint): one page is one short
/// script run, so a large collection never blocks Redis for long.
const SNAPSHOT_PAGE: usize = 1000;
/// Stream entries read per `XRANGE` while a snapshot settles the changes made during it.
const SNAPSHOT_STREAM_PAGE: usize = 1000;
/// Tries at a consistent paged snapshot before answering 503 (each try starts afresh).
const SNAPSHOT_ATTEMPTS: usize = 3;

/// Whether a cluster refused `error` before running anything, so sending the same call
/// again cannot apply it twice.
fn refused_before_running(error: &redis::RedisError) -> bool {
    error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                )
        )
}

/// The production store: records, counters and change streams in Redis.
///
/// Cheap to clone: the connection is multiplexed and reconnects on its own
/// (redis-rs `ConnectionManager`, or its cluster connection); while Redis is down every
/// call fails fast with [`StoreError::Unavailable`] and writes nothing.
#[derive(Clone)]
pub struct RedisStore {
    /// In a cluster, built with no retries of its own: redis-rs would resend a script
    /// after a dropped connection, and the script is not idempotent (a create would happen
    /// twice). [`RedisStore::run_cluster`] resends only after refusals that prove nothing ran.
    conn: RedisConnection,
    script: Arc<redis::Script>,
    /// [`proto::script::SNAPSHOT_PAGE_SCRIPT`].
    snapshot_page: Arc<redis::Script>,
    options: RedisOptions,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Prepares a store for `url` without connecting: the first call connects, and a
    /// Redis that is down at start-up only makes calls fail until it is back.
    ///
    /// # Errors
    /// [`StoreError::Redis`] if the URL is invalid.
    pub fn connect_lazy(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        Self::connect(&RedisTarget::Single(url.to_owned()), options)
    }

    /// Prepares a store for one Redis or a cluster without connecting (see
    /// [`RedisStore::connect_lazy`]). A cluster store always uses `SPUBLISH`.
    ///
    /// # Errors
    /// [`StoreError::Redis`] if a URL is invalid.
    pub fn connect(target: &RedisTarget, mut options: RedisOptions) -> Result<Self, StoreError> {
        options.sharded |= target.is_cluster();
        let conn = RedisConnection::for_scripts(target, options.response_timeout)
            .map_err(StoreError::Redis)?;
        Ok(Self {
            conn,
            script: Arc::new(redis::Script::new(proto::script::WRITE_SCRIPT)),
            snapshot_page: Arc::new(redis::Script::new(proto::script::SNAPSHOT_PAGE_SCRIPT)),
            options,
        })
    }

    /// A failed call as a [`StoreError`]: a timeout names the configured wait.
    fn failed(&self, e: redis::RedisError) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout(self.options.response_timeout)
        } else {
            e.into()
        }
    }

    /// One call over the connection, which bounds it by the response timeout.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        call.await.map_err(|e| self.failed(e))
    }

    /// Runs the write script for `topic` with `batch` (and its idempotency key).
    async fn run(
        &self,
        topic: &Topic,
        batch: &Batch,
        remember: Option<&Remember>,
    ) -> Result<Vec<String>, StoreError> {
        let idem_key = match remember {
            Some(r) => topic.idempotency_key(&r.subject, r.key.as_str()),
            // Any key of the topic's slot: the script does not touch it.
            None => topic.raw_key(),
        };
        let mut invocation = self.script.key(topic.records_key());
        invocation
            .key(topic.seq_key())
            .key(topic.stream_key())
            .key(topic.raw_key())
            .key(idem_key)
            .arg(topic.redis_channel())
            .arg(if self.options.sharded {
                "SPUBLISH"
            } else {
                "PUBLISH"
            })
            .arg(self.options.retention.max_len)
            .arg(u64::try_from(self.options.retention.max_age.as_millis()).unwrap_or(u64::MAX))
            .arg(remember.map_or("", |r| r.fingerprint.as_str()))
            .arg(remember.map_or(0, |r| {
                u64::try_from(r.ttl.as_millis()).unwrap_or(u64::MAX).max(1)
            }))
            .arg(batch.at.map(|at| at.to_string()).unwrap_or_default())
            .arg(batch.items.len());
        for item in &batch.items {
            for arg in item_args(item) {
                invocation.arg(arg);
            }
        }
        let mut conn = self.conn.clone();
        match conn {
            RedisConnection::Single(_) => invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.write_failed(e)),
            RedisConnection::Cluster(_) => self.run_cluster(&invocation, &mut conn).await,
        }
    }

    /// A failed write as a [`StoreError`]: [`StoreError::Unanswered`] unless Redis
    /// answered (an error reply) or refused it before it could run.
    fn write_failed(&self, e: redis::RedisError) -> StoreError {
        let lost = !refused_before_running(&e)
            && (e.is_timeout() || e.is_io_error() || e.is_connection_dropped());
        let error = self.failed(e);
        if lost {
            StoreError::Unanswered(Box::new(error))
        } else {
            error
        }
    }

    /// Runs the script on a cluster, sending it again (after a short pause that doubles)
    /// while the cluster answers with a refusal that proves it did not run: `MOVED` after
    /// a slot moved or a failover (redis-rs refreshes its slot map before the next try),
    /// `TRYAGAIN`, `CLUSTERDOWN`, a refused connection to a dead master; no new try starts
    /// after the response timeout. Any other failure, notably a dropped connection or a
    /// timeout after the script was sent, is returned as is: it may have run.
    async fn run_cluster<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        conn: &mut RedisConnection,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.options.response_timeout;
        let mut pause = CLUSTER_RETRY_PAUSE;
        loop {
            match invocation.invoke_async(conn).await {
                Err(e)
                    if refused_before_running(&e)
                        && tokio::time::Instant::now() + pause < deadline =>
                {
                    tracing::debug!(error = %e, "cluster refused the script; sending it again");
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
                result => return result.map_err(|e| self.write_failed(e)),
            }
        }
    }
}

/// An item's [`proto::script::ITEM_ARGS`] script arguments.
fn item_args(item: &Item) -> [String; 5] {
    let none = String::new;
    match item {
        Item::Create { id: None, record } => {
            [ITEM_AUTO.into(), none(), json(record), none(), none()]
        }
        Item::Create {
            id: Some(id),
            record,
        } => {
            let int = match id {
                RecordId::Int(n) => n.to_string(),
                RecordId::Str(_) => none(),
            };
            let change = Change::create(id.clone(), record.clone()).to_json();
            [ITEM_CREATE.into(), id.key(), json(record), change, int]
        }
        Item::Update { id, record, expect } => [
            ITEM_UPDATE.into(),
            id.key(),
            expect.clone().unwrap_or_default(),
            json(record),
            Change::update(id.clone(), record.clone()).to_json(),
        ],
        Item::Delete { id } => [
            ITEM_DELETE.into(),
            id.key(),
            Change::remove(id.clone()).to_json(),
            none(),
            none(),
        ],
        Item::Publish { change, last } => [
            ITEM_PUBLISH.into(),
            none(),
            change.to_json(),
            last.as_ref().map(json).unwrap_or_default(),
            none(),
        ],
    }
}

/// Reads the write script's reply.
fn applied(reply: &[String], remember: Option<&Remember>) -> Result<Applied, StoreError> {
    let bad = || StoreError::Reply(format!("{reply:?}"));
    let item = |n: &String| -> Result<usize, StoreError> {
        n.parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .ok_or_else(bad)
    };
    Ok(match reply {
        [ok, ..] if ok == "ok" => Applied::Done {
            effects: effects(reply)?,
            replayed: false,
        },
        [replay, fingerprint, outcome] if replay == "replay" => {
            if remember.is_none_or(|r| &r.fingerprint != fingerprint) {
                return Err(StoreError::KeyReused);
            }
            Applied::Done {
                effects: remembered(outcome)?,
                replayed: true,
            }
        }
        [refusal, n] if refusal == "exists" => Applied::Refused(Refusal::Exists(item(n)?)),
        [refusal, n] if refusal == "missing" => Applied::Refused(Refusal::Missing(item(n)?)),
        [refusal, n] if refusal == "conflict" => Applied::Refused(Refusal::Conflict(item(n)?)),
        [refusal, top] if refusal == "moved" => {
            Applied::Refused(Refusal::Moved(EventId::parse(top).map_err(|_| bad())?))
        }
        [refusal] if refusal == "exhausted" => Applied::Refused(Refusal::Exhausted),
        _ => return Err(bad()),
    })
}

impl RedisStore {
    /// Runs a read-only script with `keys` and `args`; on a cluster it is sent again after
    /// a refusal that proves it did not run, as the publish script is.
    async fn read_script(
        &self,
        script: &redis::Script,
        keys: &[String],
        args: &[&str],
    ) -> Result<redis::Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let mut conn = self.conn.clone();
        match conn {
            RedisConnection::Single(_) => self.bounded(invocation.invoke_async(&mut conn)).await,
            RedisConnection::Cluster(_) => self
                .run_cluster(&invocation, &mut conn)
                .await
                .map_err(|e| e.read()),
        }
    }

    /// One try at a snapshot read in pages, each page in one short script run together
    /// with the stream position at that moment; `None` if it cannot be made exact (history
    /// it needs was trimmed, or a change did not keep the record's previous state).
    ///
    /// The records are exactly the state at `P0`, the position read with the first page:
    /// - a record no change touched between `P0` and the last page's position was the same
    ///   all along, and `HSCAN` returns every record present for the whole scan;
    /// - for a record some change touched in that window, its state at `P0` is told by the
    ///   first such change: absent before a `create`, the `last` (previous state) an
    ///   `update` or a `remove` keeps in its stream entry.
    ///
    /// So the window's changes are read back from the stream (their `prev` chain proves
    /// none is missing) and override what the pages saw of the records they touched.
    async fn snapshot_paged(&self, topic: &Topic) -> Result<Option<Snapshot>, StoreError> {
        let keys = [topic.records_key(), topic.stream_key(), topic.raw_key()];
        let count = SNAPSHOT_PAGE.to_string();
        let mut rows = std::collections::HashMap::new();
        let mut cursor = String::from("0");
        let mut first: Option<EventId> = None;
        let last = loop {
            let reply = self
                .read_script(&self.snapshot_page, &keys, &[&cursor, &count])
                .await?;
            let (next, position, flat, raw): (String, String, Vec<String>, i64) =
                redis::from_redis_value(reply)
                    .map_err(|e| StoreError::Reply(format!("snapshot page: {e}")))?;
            if raw != 0 {
                return Err(StoreError::RecordsNotKept {
                    topic: topic.clone(),
                });
            }
            let position = EventId::parse(&position)
                .map_err(|_| StoreError::Reply(format!("snapshot position {position:?}")))?;
            first.get_or_insert(position);
            for pair in flat.chunks_exact(2) {
                rows.insert(pair[0].clone(), pair[1].clone());
            }
            if next == "0" {
                break position;
            }
            cursor = next;
        };
        let position = first.unwrap_or(EventId::ZERO);
        if last != position && !self.settle(topic, position, last, &mut rows).await? {
            return Ok(None);
        }
        Ok(Some(Snapshot {
            records: in_id_order(rows.into_iter().collect()),
            position,
        }))
    }

    /// Rolls `rows` back to their state at `from`, by the stream's entries after `from` up
    /// to `to` ([`proto::snapshot::Settler`]); `false` if that cannot be done exactly.
    async fn settle(
        &self,
        topic: &Topic,
        from: EventId,
        to: EventId,
        rows: &mut std::collections::HashMap<String, String>,
    ) -> Result<bool, StoreError> {
        let mut settler = proto::snapshot::Settler::new(from);
        while settler.after() < to {
            let mut conn = self.conn.clone();
            let reply: redis::streams::StreamRangeReply = self
                .bounded(conn.xrange_count(
                    topic.stream_key(),
                    format!("({}", settler.after()),
                    to.to_string(),
                    SNAPSHOT_STREAM_PAGE,
                ))
                .await?;
            if reply.ids.is_empty() {
                // `to` was trimmed away meanwhile.
                return Ok(false);
            }
            for entry in &reply.ids {
                let (Some(fields), Ok(id)) = (stream_fields(entry), EventId::parse(&entry.id))
                else {
                    return Ok(false);
                };
                if settler.take(id, &fields).is_err() {
                    return Ok(false);
                }
            }
        }
        for (key, before) in settler.into_touched() {
            match before {
                Some(record) => rows.insert(key, record),
                None => rows.remove(&key),
            };
        }
        Ok(true)
    }
}

/// A stream entry's fields in our format; `None` for anything else.
fn stream_fields(entry: &redis::streams::StreamId) -> Option<proto::StreamFields> {
    let mut pairs = Vec::with_capacity(entry.map.len());
    for (field, value) in &entry.map {
        let text: String = redis::from_redis_value_ref(value).ok()?;
        pairs.push((field.as_str(), text));
    }
    proto::StreamFields::from_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str()))).ok()
}

impl Store for RedisStore {
    async fn apply(
        &self,
        topic: &Topic,
        batch: &Batch,
        remember: Option<&Remember>,
    ) -> Result<Applied, StoreError> {
        let reply = self.run(topic, batch, remember).await?;
        applied(&reply, remember)
    }

    async fn recall(
        &self,
        topic: &Topic,
        remember: &Remember,
    ) -> Result<Option<Vec<Effect>>, StoreError> {
        let key = topic.idempotency_key(&remember.subject, remember.key.as_str());
        let mut conn = self.conn.clone();
        let (fingerprint, outcome): (Option<String>, Option<String>) =
            self.bounded(conn.hmget(key, &["fp", "outcome"])).await?;
        match (fingerprint, outcome) {
            (Some(fingerprint), Some(outcome)) if fingerprint == remember.fingerprint => {
                Ok(Some(remembered(&outcome)?))
            }
            (Some(_), _) => Err(StoreError::KeyReused),
            _ => Ok(None),
        }
    }

    async fn get(&self, topic: &Topic, id: &RecordId) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        self.bounded(conn.hget(topic.records_key(), id.key())).await
    }

    async fn snapshot(&self, topic: &Topic) -> Result<Snapshot, StoreError> {
        for _ in 0..SNAPSHOT_ATTEMPTS {
            if let Some(snapshot) = self.snapshot_paged(topic).await? {
                return Ok(snapshot);
            }
        }
        Err(StoreError::Unsettled {
            topic: topic.clone(),
        })
    }

    async fn ready(&self) -> Result<(), StoreError> {
        match self.conn.clone() {
            RedisConnection::Single(mut conn) => {
                let _: String = self
                    .bounded(redis::cmd("PING").query_async(&mut conn))
                    .await?;
            }
            // Every master must answer: a topic on a master that is down (before its
            // replica takes over) cannot be written. Replicas do not matter here.
            RedisConnection::Cluster(link) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                link.route_command(redis::cmd("PING"), routing)
                    .await
                    .map_err(|e| self.failed(e))?;
            }
        }
        Ok(())
    }
}
