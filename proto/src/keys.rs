//! The Redis key layout. Every key and the channel of a topic carry the hash tag
//! `{<topic>}`, so in Redis Cluster they share one slot: the publish script may touch
//! them all atomically, and `SPUBLISH` goes to the shard that owns the stream.
//!
//! | what | name | type |
//! |---|---|---|
//! | records | `cs:{MyModels}:records` | hash: record key -> record JSON |
//! | id counter | `cs:{MyModels}:seq` | string: the highest integer id given, at most 2^53-1 |
//! | change stream | `cs:{MyModels}:stream` | stream of change events (replay) |
//! | raw marker | `cs:{MyModels}:raw` | string `1` once a raw `POST /publish` wrote to the topic: its records are kept by the backend, not here |
//! | idempotency record | `cs:{MyModels}:idem:<subject>:<key>` | hash `fp` (the request's fingerprint), `outcome` (the write script's first reply), expiring after `idempotency_ttl` |
//! | pub/sub channel | `cs:{MyModels}:events` | channel carrying [`crate::Envelope`]s |

use crate::Topic;

impl Topic {
    fn key(&self, suffix: &str) -> String {
        format!("cs:{{{}}}:{suffix}", self.as_str())
    }

    /// Hash of the collection's records, keyed by [`crate::RecordId::key`].
    pub fn records_key(&self) -> String {
        self.key("records")
    }

    /// Counter behind auto-assigned integer ids.
    pub fn seq_key(&self) -> String {
        self.key("seq")
    }

    /// The topic's change stream: the replay buffer every gateway reads from.
    pub fn stream_key(&self) -> String {
        self.key("stream")
    }

    /// Set once a raw publish wrote to the topic (a backend with its own database): a
    /// snapshot of it would be empty and look real, so none is given.
    pub fn raw_key(&self) -> String {
        self.key("raw")
    }

    /// Where the outcome of a write made under idempotency key `key` by token subject
    /// `subject` (empty without auth) is remembered. `%` and `:` in the subject are
    /// percent-encoded, so no two (subject, key) pairs share a name.
    pub fn idempotency_key(&self, subject: &str, key: &str) -> String {
        let subject = subject.replace('%', "%25").replace(':', "%3A");
        self.key(&format!("idem:{subject}:{key}"))
    }

    /// The topic whose [`Topic::redis_channel`] is `channel`, if it is one.
    pub fn from_redis_channel(channel: &str) -> Option<Topic> {
        let name = channel.strip_prefix("cs:{")?.strip_suffix("}:events")?;
        Topic::new(name).ok()
    }

    /// The pub/sub channel (or shard channel, in cluster mode) the publish script sends
    /// each event on. The only place a channel name is made.
    pub fn redis_channel(&self) -> String {
        self.key("events")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_key_layout() {
        let t = Topic::new("MyModels").unwrap();
        assert_eq!(t.records_key(), "cs:{MyModels}:records");
        assert_eq!(t.seq_key(), "cs:{MyModels}:seq");
        assert_eq!(t.stream_key(), "cs:{MyModels}:stream");
        assert_eq!(t.raw_key(), "cs:{MyModels}:raw");
        assert_eq!(t.redis_channel(), "cs:{MyModels}:events");
        assert_eq!(t.idempotency_key("", "k-1"), "cs:{MyModels}:idem::k-1");
        assert_eq!(
            t.idempotency_key("a:b%", "c"),
            "cs:{MyModels}:idem:a%3Ab%25:c"
        );
        assert_ne!(t.idempotency_key("a:b", "c"), t.idempotency_key("a", "b:c"));
        assert_eq!(Topic::from_redis_channel(&t.redis_channel()), Some(t));
        assert_eq!(Topic::from_redis_channel("cs:{a b}:events"), None);
        assert_eq!(Topic::from_redis_channel("other"), None);
    }
}
