//! The publisher's JSON bodies: `POST /publish` (`{"topic", "change", "last"}`) and the
//! record bodies of the REST API, whose `id` names the record.
//!
//! The publisher reads them inside axum extractors and private types (`JsonObject`,
//! `PublishRequest`), so this target runs the same pure steps on the raw bytes instead:
//! `serde_json::from_slice` to an object, `Topic::new` on `topic`, `Change::deserialize`
//! on `change`, `RecordId::from_json` on a body's `id`. Checked: an accepted change
//! re-serializes to LoopBack's wire form (`target`, `where`, `data`, `type`, in that
//! order, absent keys left out, records in their original key order, numbers in
//! JavaScript's bytes), parses back to itself by both entry points (`Change::from_json` for stream entries), and keeps the
//! multi-topic frame valid JSON with the topic first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{Change, Object, RecordId, Topic, sse};
use serde::Deserialize;
use serde_json::Value;

fn check_change(value: &Value, change: &Change) {
    let text = change.to_json();
    // The wire form is the input with null `where`/`data` dropped and keys reordered.
    let Value::Object(input) = value else {
        panic!("a change deserialized from a non-object: {value}");
    };
    let mut expected = Object::new();
    for key in ["target", "where", "data", "type"] {
        if let Some(v) = input.get(key).filter(|v| !v.is_null()) {
            expected.insert(key.to_owned(), v.clone());
        }
    }
    assert_eq!(text, proto::json::to_string(&Value::Object(expected)));
    // Read back, it is the same change (numbers the same doubles: `1.0` comes back as
    // the integer `1`) and prints the same bytes.
    let back = Change::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!((&back.target, &back.kind), (&change.target, &change.kind));
    for (a, b) in [(&back.where_, &change.where_), (&back.data, &change.data)] {
        match (a, b) {
            (Some(a), Some(b)) => {
                let (a, b) = (Value::Object(a.clone()), Value::Object(b.clone()));
                assert!(same_numbers(&a, &b), "{text}");
            }
            (a, b) => assert_eq!(a.is_some(), b.is_some(), "{text}"),
        }
    }
    assert_eq!(back.to_json(), text);
    assert!(
        !text.contains('\n'),
        "pub/sub framing relies on no raw newline"
    );

    let topic = Topic::new("T").unwrap_or_else(|e| panic!("{e}"));
    let framed: Value = serde_json::from_str(&sse::topic_change(&topic, &text))
        .unwrap_or_else(|e| panic!("multi-topic frame of {text}: {e}"));
    let Value::Object(framed) = framed else {
        panic!("multi-topic frame is not an object");
    };
    assert_eq!(framed.keys().next().map(String::as_str), Some("topic"));
}

/// JSON equality where numbers compare as the doubles JavaScript reads them as.
fn same_numbers(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_numbers(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same_numbers(va, vb))
        }
        (a, b) => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    // What `JsonObject` accepts.
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(data) else {
        return;
    };

    // `/publish`.
    if let Some(Value::String(topic)) = body.get("topic")
        && let Err(err) = Topic::new(topic)
    {
        assert!(!err.to_string().is_empty());
    }
    if let Some(change) = body.get("change") {
        let by_value = Change::deserialize(change);
        // Stream entries are read from text: same verdict, same change.
        let by_text = Change::from_json(&change.to_string());
        match (&by_value, &by_text) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                check_change(change, a);
            }
            (Err(a), Err(b)) => {
                assert!(!a.to_string().is_empty() && !b.to_string().is_empty());
            }
            _ => panic!("entry points disagree on {change}: {by_value:?} vs {by_text:?}"),
        }
    }

    // A record body's `id` (`null` means none, as in LoopBack).
    if let Some(id) = body.get("id").filter(|v| !v.is_null()) {
        match RecordId::from_json(id) {
            Ok(id) => assert_eq!(RecordId::from_path(&id.key()).as_ref(), Ok(&id)),
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }

    // The whole body read as a change (what a raw stream entry could hold).
    let whole = Value::Object(body);
    if let Ok(change) = Change::deserialize(&whole) {
        check_change(&whole, &change);
    }
});
