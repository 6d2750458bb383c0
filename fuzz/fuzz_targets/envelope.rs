//! `Envelope::decode` (a pub/sub message) and `StreamFields::from_pairs` (a stream entry
//! read for replay): what a gateway reads back from Redis, so what anyone who can write
//! to Redis controls.
//!
//! Checked: a decoded envelope encodes to a message that decodes to itself, its change
//! part is one line starting with `{` and its `last` is never `Some("")`; the stream-entry
//! reader takes the last value of each known field, ignores unknown ones, and refuses
//! exactly what lacks version 1, a valid `prev` or a change. For stream fields the input
//! is read as lines: field, value, field, value...
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{Envelope, EventId, StreamFields};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    match Envelope::decode(text) {
        Ok(env) => {
            assert!(env.change.starts_with('{') && !env.change.contains('\n'));
            assert_ne!(env.last.as_deref(), Some(""));
            let encoded = env.encode();
            assert_eq!(Envelope::decode(&encoded).as_ref(), Ok(&env));
            // Only the ids can be spelled differently (leading zeros).
            let parts: Vec<&str> = text.splitn(5, '\n').collect();
            if parts[1] == env.id.to_string() && parts[2] == env.prev.to_string() {
                assert_eq!(encoded, text);
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }

    let lines: Vec<&str> = text.split('\n').collect();
    let pairs: Vec<(&str, &str)> = lines.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    let last_of = |name: &str| pairs.iter().rev().find(|p| p.0 == name).map(|p| p.1);
    let expected_ok = last_of("v") == Some("1")
        && last_of("prev").is_some_and(|p| EventId::parse(p).is_ok())
        && last_of("change").is_some();
    match StreamFields::from_pairs(pairs.iter().copied()) {
        Ok(fields) => {
            assert!(expected_ok, "{pairs:?}");
            assert_eq!(
                Some(fields.prev),
                last_of("prev").and_then(|p| p.parse().ok())
            );
            assert_eq!(Some(fields.change.as_str()), last_of("change"));
            assert_eq!(
                fields.last.as_deref(),
                last_of("last").filter(|l| !l.is_empty())
            );
        }
        Err(err) => {
            assert!(!expected_ok, "{pairs:?}: {err}");
            assert!(!err.to_string().is_empty());
        }
    }
});
