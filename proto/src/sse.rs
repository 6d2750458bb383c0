//! SSE frame bytes (the `text/event-stream` format), exactly as LoopBack's change stream
//! sends them plus the `id:` lines that make `Last-Event-ID` work.
//!
//! Every `data:` payload here is compact JSON, which never contains a raw newline, so each
//! event is a single `data:` line. Ids and event names are produced by this crate
//! (stream ids, cursors, fixed names), never copied from a client.

use crate::EventId;

/// The first bytes of every stream, as LoopBack sends them: a comment, then a blank line.
pub const PREAMBLE: &str = ":ok\n\n";

/// The comment sent on an idle stream so proxies do not close it.
pub const HEARTBEAT: &str = ":\n\n";

/// LoopBack's event name for a change; what `src.addEventListener('data', ...)` hears.
pub const EVENT_DATA: &str = "data";
/// Sent when a resume position is older than the stream still holds.
pub const EVENT_RESET: &str = "reset";
/// A page of an in-band snapshot (`snapshot=true`): `{"records":[...],"last":false}`.
pub const EVENT_SNAPSHOT: &str = "snapshot";
/// LoopBack's error event: `data` is `{"message": ...}`.
pub const EVENT_ERROR: &str = "error";
/// LoopBack's end-of-stream event.
pub const EVENT_END: &str = "end";

/// `retry: <ms>`: how long the browser waits before reconnecting.
pub fn retry(ms: u64) -> String {
    format!("retry: {ms}\n\n")
}

/// One event. `event` is `None` for the default event name (`onmessage`).
pub fn frame(id: Option<&str>, event: Option<&str>, data: &str) -> String {
    frame_spanned(id, event, data).0
}

/// [`frame`], and where `data` lies in it (a byte range on character boundaries).
pub fn frame_spanned(
    id: Option<&str>,
    event: Option<&str>,
    data: &str,
) -> (String, std::ops::Range<usize>) {
    let mut out = String::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    out.push_str("data: ");
    let start = out.len();
    out.push_str(data);
    let span = start..out.len();
    out.push_str("\n\n");
    (out, span)
}

/// A change on a single-topic LoopBack change stream.
pub fn change_frame(id: EventId, change_json: &str) -> String {
    change_frame_spanned(id, change_json).0
}

/// [`change_frame`], and where the change JSON lies in it.
pub fn change_frame_spanned(id: EventId, change_json: &str) -> (String, std::ops::Range<usize>) {
    frame_spanned(Some(&id.to_string()), Some(EVENT_DATA), change_json)
}

/// The JSON of a change on the multi-topic stream (`GET /events`): LoopBack's change
/// object with the topic first, `{"topic":"A","target":1,...}`. `change_json` is a JSON
/// object as the publish script stores it; a topic needs no escaping (its characters are
/// restricted).
pub fn topic_change(topic: &crate::Topic, change_json: &str) -> String {
    let rest = change_json.trim_start().strip_prefix('{').unwrap_or("}");
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"topic\":\"{topic}\"{sep}{rest}")
}

/// A frame of the multi-topic stream: default event name (so `onmessage` sees it), the
/// cursor as `id:`.
pub fn events_frame(cursor: &str, data_json: &str) -> String {
    frame(Some(cursor), None, data_json)
}

/// A page of an in-band snapshot: `event: snapshot`, data `{"records":[...],"last":..}`
/// (with `"topic"` first on `/events`). `records` are JSON objects as text; the page with
/// `last` true carries `id`, the position the snapshot is the state of.
pub fn snapshot_frame(
    id: Option<&str>,
    topic: Option<&crate::Topic>,
    records: &[String],
    last: bool,
) -> String {
    let mut data = String::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 48);
    data.push('{');
    if let Some(topic) = topic {
        data.push_str(&format!("\"topic\":\"{topic}\","));
    }
    data.push_str("\"records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            data.push(',');
        }
        data.push_str(record);
    }
    data.push_str("],\"last\":");
    data.push_str(if last { "true" } else { "false" });
    data.push('}');
    frame(id, Some(EVENT_SNAPSHOT), &data)
}

/// A position without an event: `id:` alone. EventSource records it as its last event id
/// without firing anything (the SSE dispatch sets the id before it drops an event with no
/// data), so a client whose connection drops before its first event still resumes from
/// where it started instead of missing what was published meanwhile.
pub fn position_frame(id: &str) -> String {
    format!("id: {id}\n\n")
}

/// History was trimmed past the client's position. `id` is where the client continues
/// from, so a reconnect after the reset does not ask for the lost range again.
pub fn reset_frame(id: Option<&str>, reason_json: &str) -> String {
    frame(id, Some(EVENT_RESET), reason_json)
}

/// LoopBack's `error` event; `message` is JSON-escaped here.
pub fn error_frame(message: &str) -> String {
    let data = serde_json::json!({ "message": message }).to_string();
    frame(None, Some(EVENT_ERROR), &data)
}

/// LoopBack's `end` event.
pub fn end_frame() -> String {
    frame(None, Some(EVENT_END), "null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_frames() {
        assert_eq!(PREAMBLE, ":ok\n\n");
        assert_eq!(retry(3000), "retry: 3000\n\n");
        assert_eq!(
            change_frame(
                EventId::new(1732345678901, 0),
                r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#
            ),
            "id: 1732345678901-0\nevent: data\ndata: {\"target\":1,\"data\":{\"foo\":\"bar\",\"id\":1},\"type\":\"create\"}\n\n"
        );
        assert_eq!(frame(Some("c1"), None, "{}"), "id: c1\ndata: {}\n\n");
        assert_eq!(
            reset_frame(Some("5-0"), r#"{"reason":"trimmed"}"#),
            "id: 5-0\nevent: reset\ndata: {\"reason\":\"trimmed\"}\n\n"
        );
        assert_eq!(
            error_frame("bad \"x\"\n"),
            "event: error\ndata: {\"message\":\"bad \\\"x\\\"\\n\"}\n\n"
        );
        assert_eq!(end_frame(), "event: end\ndata: null\n\n");
        assert_eq!(position_frame("5-0"), "id: 5-0\n\n");
        assert_eq!(
            snapshot_frame(
                None,
                None,
                &[r#"{"id":1}"#.into(), r#"{"id":2}"#.into()],
                false
            ),
            "event: snapshot\ndata: {\"records\":[{\"id\":1},{\"id\":2}],\"last\":false}\n\n"
        );
        let topic = crate::Topic::new("A").unwrap();
        assert_eq!(
            snapshot_frame(Some("5-0"), Some(&topic), &[], true),
            "id: 5-0\nevent: snapshot\ndata: {\"topic\":\"A\",\"records\":[],\"last\":true}\n\n"
        );
    }

    #[test]
    fn the_span_is_exactly_the_data() {
        let change = r#"{"target":"é","type":"create"}"#;
        let (frame, span) = change_frame_spanned(EventId::new(7, 1), change);
        assert_eq!(&frame[span], change);
        assert_eq!(frame, change_frame(EventId::new(7, 1), change));
    }

    #[test]
    fn golden_multi_topic_frames() {
        let topic = crate::Topic::new("MyModels").unwrap();
        let change = r#"{"target":1,"data":{"foo":"bar","id":1},"type":"create"}"#;
        let data = topic_change(&topic, change);
        assert_eq!(
            data,
            r#"{"topic":"MyModels","target":1,"data":{"foo":"bar","id":1},"type":"create"}"#
        );
        assert_eq!(topic_change(&topic, "{}"), r#"{"topic":"MyModels"}"#);
        assert_eq!(
            events_frame("c1.0000abcd.1-0", &data),
            format!("id: c1.0000abcd.1-0\ndata: {data}\n\n")
        );
    }
}
