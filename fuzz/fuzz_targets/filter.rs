//! `Filter::parse_str` (the `?options=` / `?filter=` query parameter of a change stream),
//! then `matches` and `project` on a record.
//!
//! Input: the first line is the filter's JSON text, the rest the record's JSON (the
//! record part is optional). Checked:
//! - parsing never panics; a refusal has a non-empty message whose size is bounded by the
//!   input's (what the client sent is echoed, nothing more);
//! - the limits are monotone: a filter accepted under tight limits is accepted under the
//!   defaults and decides every record the same way;
//! - wrapping `where` as `{"and": [where]}` or `{"or": [where]}` changes nothing;
//! - `matches` terminates (libFuzzer's `-timeout` turns a hang into a crash);
//! - `project` keeps a subset of the record's keys, in the record's order, values
//!   untouched, is idempotent, and is the identity when the filter does not project.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{Filter, FilterLimits, Object};
use serde_json::{Value, json};

const TIGHT: FilterLimits = FilterLimits {
    max_bytes: 512,
    max_depth: 3,
    max_conditions: 8,
    max_pattern_bytes: 32,
};

fn check_projection(filter: &Filter, record: &Object) {
    let projected = filter.project(record);
    let mut keys = record.keys();
    for (key, value) in &projected {
        // Subsequence of the record's keys: each found after the previous one.
        assert!(keys.any(|k| k == key), "{key:?} not in order in {record:?}");
        assert_eq!(record.get(key), Some(value));
    }
    assert_eq!(filter.project(&projected), projected);
    if !filter.projects() {
        assert_eq!(&projected, record);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (options, record) = text.split_once('\n').unwrap_or((text, "{}"));
    let record = match serde_json::from_str::<Value>(record) {
        Ok(Value::Object(record)) => record,
        _ => Object::new(),
    };

    let limits = FilterLimits::default();
    let filter = match Filter::parse_str(options, &limits) {
        Ok(filter) => filter,
        Err(err) => {
            let message = err.to_string();
            assert!(!message.is_empty());
            // Debug-escaping can grow a character to `\u{10ffff}`.
            assert!(
                message.len() <= 512 + 30 * options.len().min(limits.max_bytes + 1),
                "{} bytes of message for {} bytes of filter",
                message.len(),
                options.len()
            );
            if Filter::parse_str(options, &TIGHT).is_ok() {
                panic!("accepted under tight limits, refused under the defaults: {err}");
            }
            return;
        }
    };

    let matched = filter.matches(&record);
    if filter.is_empty() {
        assert!(matched);
        assert!(!filter.projects());
    }
    check_projection(&filter, &record);

    if let Ok(tight) = Filter::parse_str(options, &TIGHT) {
        assert_eq!(tight.matches(&record), matched);
        assert_eq!(tight.project(&record), filter.project(&record));
    }

    // The same condition one `and`/`or` level down decides the same way.
    let Ok(Value::Object(parsed)) = serde_json::from_str::<Value>(options) else {
        return;
    };
    if let Some(where_) = parsed.get("where").filter(|w| !w.is_null()) {
        for wrapped in [json!({ "and": [where_] }), json!({ "or": [where_] })] {
            let mut alt = parsed.clone();
            alt.insert("where".into(), wrapped);
            let alt = Value::Object(alt);
            if let Ok(filter) = Filter::parse(&alt, &limits) {
                assert_eq!(filter.matches(&record), matched, "{alt}");
            }
        }
    }
});
