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

    /// The Redis Cluster hash slot of every key and the channel of this topic: CRC16
    /// (XMODEM) of the hash tag, the topic's name (a topic has no `{` or `}`), modulo
    /// 16384, as `CLUSTER KEYSLOT` computes it. Shard channels of one slot may share one
    /// `SSUBSCRIBE`.
    pub fn cluster_slot(&self) -> u16 {
        crc16_xmodem(self.as_str().as_bytes()) % CLUSTER_SLOTS
    }
}

/// Hash slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16_384;

/// CRC16 with polynomial 0x1021, initial value 0, no reflection: Redis Cluster's key hash.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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

    #[test]
    fn cluster_slot_is_redis_keyslot() {
        // The check value of CRC16/XMODEM, and slots `CLUSTER KEYSLOT` gives (Redis
        // 7.0.15; `cs:{MyModels}:events` hashes `MyModels`).
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        let slot = |name: &str| Topic::new(name).unwrap().cluster_slot();
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("bar"), 5_061);
        assert_eq!(slot("MyModels"), 13_412);
        assert_eq!(slot("Load7"), 14_974);
    }
}
