//! What the publish script writes: the pub/sub message ([`Envelope`]) and the stream
//! entry's fields ([`StreamFields`]).
//!
//! The pub/sub message is five newline-separated parts:
//!
//! ```text
//! 1                                   format version
//! 1732345678901-0                     this event's stream id
//! 1732345678900-3                     the topic's previous stream id (0-0 for the first)
//! {"target":1,...,"type":"create"}    the change, exactly the bytes the browser receives
//! {"foo":"bar","id":1}                the record's previous state (an update's or a
//!                                     removal's), or empty
//! ```
//!
//! Compact JSON never holds a raw newline (serde_json escapes control characters), so the
//! split is unambiguous and needs no JSON parse: a gateway can forward the change bytes
//! without decoding them. The previous id is the chain that lets a gateway notice a lost
//! message on the very next event (DESIGN.md, "A chain of ids").

use crate::{DecodeError, EventId};

/// The format version written by this build's publish script.
pub const FORMAT_VERSION: &str = "1";

/// Stream entry field names.
pub const FIELD_VERSION: &str = "v";
/// The topic's previous stream id: lets a reader of the stream tell a trimmed (or lost)
/// range from a contiguous one, exactly as the pub/sub `prev` does live.
pub const FIELD_PREV: &str = "prev";
pub const FIELD_CHANGE: &str = "change";
pub const FIELD_LAST: &str = "last";

/// One event as received on pub/sub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub id: EventId,
    /// The topic's stream id before this one; `EventId::ZERO` if this was the first.
    pub prev: EventId,
    /// The LoopBack change object's JSON text, as published.
    pub change: String,
    /// For an update or a removal: the record as it was, so filters can tell who it
    /// matched (and move it out of a view it no longer matches).
    pub last: Option<String>,
}

impl Envelope {
    /// # Errors
    /// [`DecodeError::Envelope`] if the message was not written by a compatible script.
    pub fn decode(message: &str) -> Result<Self, DecodeError> {
        let bad = |reason| DecodeError::Envelope { reason };
        let mut parts = message.splitn(5, '\n');
        let version = parts.next().ok_or(bad("empty"))?;
        if version != FORMAT_VERSION {
            return Err(bad("unknown format version"));
        }
        let id = EventId::parse(parts.next().ok_or(bad("no id"))?).map_err(|_| bad("bad id"))?;
        let prev =
            EventId::parse(parts.next().ok_or(bad("no prev"))?).map_err(|_| bad("bad prev"))?;
        let change = parts.next().ok_or(bad("no change"))?;
        let last = parts.next().ok_or(bad("no last"))?;
        if !change.starts_with('{') {
            return Err(bad("change is not a JSON object"));
        }
        Ok(Self {
            id,
            prev,
            change: change.to_owned(),
            last: (!last.is_empty()).then(|| last.to_owned()),
        })
    }

    /// The same bytes the publish script writes; for the in-memory bus and tests.
    pub fn encode(&self) -> String {
        format!(
            "{FORMAT_VERSION}\n{}\n{}\n{}\n{}",
            self.id,
            self.prev,
            self.change,
            self.last.as_deref().unwrap_or("")
        )
    }
}

/// The fields of one stream entry, as read back for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamFields {
    /// The entry before this one when it was written (`0-0` for a topic's first).
    pub prev: EventId,
    pub change: String,
    /// The record as it was before the change (an update or a removal), when known: a
    /// filter tells from it whether a client had the record (move-out).
    pub last: Option<String>,
}

impl StreamFields {
    /// Reads the entry's `(field, value)` pairs. Unknown fields are ignored so a newer
    /// publisher can add some without breaking older gateways.
    ///
    /// # Errors
    /// [`DecodeError::Envelope`] if the version is unknown or the change is missing.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, DecodeError> {
        let mut version = None;
        let mut prev = None;
        let mut change = None;
        let mut last = None;
        for (field, value) in pairs {
            match field {
                FIELD_VERSION => version = Some(value),
                FIELD_PREV => prev = Some(value),
                FIELD_CHANGE => change = Some(value),
                FIELD_LAST => last = Some(value),
                _ => {}
            }
        }
        if version != Some(FORMAT_VERSION) {
            return Err(DecodeError::Envelope {
                reason: "stream entry has an unknown format version",
            });
        }
        let prev = prev.ok_or(DecodeError::Envelope {
            reason: "stream entry has no prev",
        })?;
        Ok(Self {
            prev: EventId::parse(prev).map_err(|_| DecodeError::Envelope {
                reason: "stream entry has a bad prev",
            })?,
            change: change
                .ok_or(DecodeError::Envelope {
                    reason: "stream entry has no change",
                })?
                .to_owned(),
            last: last.filter(|l| !l.is_empty()).map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = "1\n1732345678901-0\n0-0\n{\"target\":1,\"data\":{\"foo\":\"bar\",\"id\":1},\"type\":\"create\"}\n";

    #[test]
    fn golden_envelope() {
        let env = Envelope::decode(GOLDEN).unwrap();
        assert_eq!(env.id, EventId::new(1732345678901, 0));
        assert_eq!(env.prev, EventId::ZERO);
        assert_eq!(
            env.change,
            r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#
        );
        assert_eq!(env.last, None);
        assert_eq!(env.encode(), GOLDEN);
    }

    #[test]
    fn removal_carries_last_state() {
        let text = "1\n5-1\n5-0\n{\"target\":1,\"where\":{\"id\":1},\"type\":\"remove\"}\n{\"foo\":\"a\\nb\",\"id\":1}";
        let env = Envelope::decode(text).unwrap();
        assert_eq!(env.last.as_deref(), Some(r#"{"foo":"a\nb","id":1}"#));
        assert_eq!(env.encode(), text);
    }

    #[test]
    fn rejects_foreign_messages() {
        for bad in [
            "",
            "hello",
            "2\n1-0\n0-0\n{}\n",
            "1\nx\n0-0\n{}\n",
            "1\n1-0\n0-0\n{}",
            "1\n1-0\n0-0\n[]\n",
        ] {
            assert!(Envelope::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_fields() {
        let f =
            StreamFields::from_pairs([("v", "1"), ("prev", "5-0"), ("change", "{}"), ("x", "y")])
                .unwrap();
        assert_eq!(
            f,
            StreamFields {
                prev: EventId::new(5, 0),
                change: "{}".into(),
                last: None
            }
        );
        let f = StreamFields::from_pairs([
            ("v", "1"),
            ("prev", "0-0"),
            ("change", "{}"),
            ("last", "{\"a\":1}"),
        ])
        .unwrap();
        assert_eq!(f.last.as_deref(), Some("{\"a\":1}"));
        assert!(StreamFields::from_pairs([("v", "1"), ("change", "{}")]).is_err());
        assert!(StreamFields::from_pairs([("v", "1"), ("prev", "x"), ("change", "{}")]).is_err());
        assert!(StreamFields::from_pairs([("prev", "0-0"), ("change", "{}")]).is_err());
        assert!(StreamFields::from_pairs([("v", "1"), ("prev", "0-0")]).is_err());
    }
}
