//! [`LiveEvent`]: one event of a topic as the pod hands it to its clients, framed once and
//! shared by all of them; and [`ParsedChange`], its change parsed once for filters.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use proto::{Envelope, EventId, Object, StreamFields, Topic};

/// One live event of a topic, ready to write.
#[derive(Debug)]
pub struct LiveEvent {
    pub id: EventId,
    /// The topic's previous id: a client whose last id differs has missed something.
    pub prev: EventId,
    /// The single-topic SSE frame (`id:`, `event: data`, `data:`), encoded once. Shares
    /// `text`'s allocation.
    pub frame: Bytes,
    text: FrameText,
    /// Where the change JSON lies in `text`, as the frame builder placed it.
    change: Range<usize>,
    /// A removed record's last state (JSON), which filters test a `remove` against.
    pub last: Option<Box<str>>,
    /// The change parsed, for clients with a filter: once per pod, on first use.
    parsed: OnceLock<Option<ParsedChange>>,
    /// The multi-topic `data:` JSON, for `/events` clients: once per pod, on first use.
    topic_change: OnceLock<Box<str>>,
}

/// A frame's text, owned once and lent to [`Bytes`] without a copy.
#[derive(Clone, Debug)]
struct FrameText(Arc<str>);

impl AsRef<[u8]> for FrameText {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl LiveEvent {
    pub fn new(id: EventId, prev: EventId, change_json: &str, last: Option<&str>) -> Self {
        let (frame, change) = proto::sse::change_frame_spanned(id, change_json);
        let text = FrameText(Arc::from(frame));
        Self {
            id,
            prev,
            frame: Bytes::from_owner(text.clone()),
            text,
            change,
            last: last.map(Box::from),
            parsed: OnceLock::new(),
            topic_change: OnceLock::new(),
        }
    }

    /// A pub/sub message as it arrived.
    pub fn from_envelope(envelope: &Envelope) -> Self {
        Self::new(
            envelope.id,
            envelope.prev,
            &envelope.change,
            envelope.last.as_deref(),
        )
    }

    /// Stream entry `id`, handed out as if it had arrived live (a nudge: clients that have
    /// not seen its `prev` refill from history).
    pub fn from_entry(id: EventId, fields: &StreamFields) -> Self {
        Self::new(id, fields.prev, &fields.change, fields.last.as_deref())
    }

    /// The change object's JSON, as published.
    pub fn change(&self) -> &str {
        &self.text.0[self.change.clone()]
    }

    /// The change parsed for filtering; `None` if it is not a JSON object.
    pub fn parsed(&self) -> Option<&ParsedChange> {
        self.parsed
            .get_or_init(|| ParsedChange::parse(self.change(), self.last.as_deref()))
            .as_ref()
    }

    /// The change with its topic first, for the multi-topic stream.
    pub fn topic_change(&self, topic: &Topic) -> &str {
        self.topic_change
            .get_or_init(|| proto::sse::topic_change(topic, self.change()).into())
    }
}

/// A change object parsed once, for filters.
#[derive(Debug)]
pub struct ParsedChange {
    pub change: Object,
    /// A removed record's last state.
    pub last: Option<Object>,
}

impl ParsedChange {
    pub fn parse(change_json: &str, last: Option<&str>) -> Option<Self> {
        let change = serde_json::from_str(change_json).ok()?;
        let last = last.and_then(|l| serde_json::from_str(l).ok());
        Some(Self { change, last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_and_the_change_are_one_text() {
        let change = r#"{"target":"ü","type":"create"}"#;
        let event = LiveEvent::new(EventId::new(3, 0), EventId::ZERO, change, None);
        assert_eq!(event.change(), change);
        assert_eq!(
            &event.frame[..],
            format!("id: 3-0\nevent: data\ndata: {change}\n\n").as_bytes()
        );
        assert_eq!(event.frame.as_ptr(), event.text.0.as_ptr(), "no copy");
    }
}
