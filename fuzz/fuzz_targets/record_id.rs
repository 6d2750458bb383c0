//! `RecordId`: a URL path segment (`/api/MyModels/<id>`) or a JSON `id` value.
//!
//! The input is read both ways: as a path segment and, when it is JSON, as a body's `id`.
//! Checked: an id maps one-to-one onto its hash field (`key`) and back through the path
//! form, so two different ids never share a stored record; JSON ids round-trip through
//! `to_json`, `json_text` and serde; string ids are within the documented limits, and
//! integer ids within JavaScript's safe range (2^53-1 in size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::RecordId;
use serde::Deserialize;
use serde_json::Value;

const MAX_STRING_ID_LEN: usize = 256;
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

fn check(id: &RecordId) {
    // The stored key reads back as the same id: `7` and `"7"` cannot alias.
    assert_eq!(RecordId::from_path(&id.key()).as_ref(), Ok(id));
    assert_eq!(id.key(), id.to_string());
    assert_eq!(RecordId::from_json(&id.to_json()).as_ref(), Ok(id));
    let text = id.json_text();
    let reread: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(reread, id.to_json());
    assert_eq!(
        serde_json::from_str::<RecordId>(&text).ok().as_ref(),
        Some(id)
    );
    match id {
        RecordId::Int(n) => assert!(n.unsigned_abs() <= MAX_SAFE_INTEGER as u64),
        RecordId::Str(s) => {
            assert!(!s.is_empty() && s.len() <= MAX_STRING_ID_LEN);
            assert!(!s.chars().any(char::is_control));
            // No string id reads as an integer, of any size.
            let digits = s.strip_prefix('-').unwrap_or(s);
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'))
                && s != "-0";
            assert!(!canonical, "{s}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RecordId::from_path(text) {
        Ok(id) => {
            check(&id);
            assert_eq!(id.key(), text);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }

    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let from_json = RecordId::from_json(&value);
    // serde's Deserialize is the same rule as from_json.
    assert_eq!(
        RecordId::deserialize(&value).map_err(|e| e.to_string()),
        from_json.clone().map_err(|e| e.to_string())
    );
    match from_json {
        Ok(id) => {
            check(&id);
            assert_eq!(id.to_json(), value);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
