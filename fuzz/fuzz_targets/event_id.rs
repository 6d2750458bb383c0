//! `EventId::parse`: the `Last-Event-ID` header and the `?lastEventId=` query parameter.
//!
//! Anything accepted is `<digits>-<digits>` and prints back to an id that parses to
//! itself; printing is canonical (differs from the input only by leading zeros). The
//! order agrees with Redis's (milliseconds, then sequence), checked against the
//! independent oracle of zero-padded text, and `successor` is the very next id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{DecodeError, EventId};

/// Redis's order written as text: equal-width decimal parts compare like the numbers.
fn padded(id: EventId) -> String {
    format!("{:020}-{:020}", id.ms, id.seq)
}

fn check_id(id: EventId) {
    let text = id.to_string();
    assert_eq!(EventId::parse(&text), Ok(id));
    assert_eq!(text.parse::<EventId>(), Ok(id));
    match id.successor() {
        Some(next) => {
            assert!(next > id);
            let expected = if id.seq == u64::MAX {
                EventId::new(id.ms + 1, 0)
            } else {
                EventId::new(id.ms, id.seq + 1)
            };
            assert_eq!(next, expected);
        }
        None => assert_eq!(id, EventId::new(u64::MAX, u64::MAX)),
    }
}

fuzz_target!(|data: &[u8]| {
    // Structured half: the first 32 bytes as two ids, compared by the oracle.
    if let (Some(a), Some(b)) = (data.get(..16), data.get(16..32)) {
        let id = |b: &[u8]| {
            let (ms, seq) = b.split_at(8);
            let word = |w: &[u8]| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            EventId::new(word(ms), word(seq))
        };
        let (a, b) = (id(a), id(b));
        check_id(a);
        check_id(b);
        assert_eq!(a.cmp(&b), padded(a).cmp(&padded(b)), "{a} vs {b}");
    }

    // Text half: the whole input as a header value.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match EventId::parse(text) {
        Ok(id) => {
            check_id(id);
            let (ms, seq) = text.split_once('-').unwrap_or_default();
            assert!(
                !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()),
                "{text:?}"
            );
            assert!(
                !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()),
                "{text:?}"
            );
            let trim = |s: &str| s.trim_start_matches('0').to_owned();
            let canonical = id.to_string();
            let (cms, cseq) = canonical.split_once('-').unwrap_or_default();
            assert_eq!(trim(ms), trim(cms));
            assert_eq!(trim(seq), trim(cseq));
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            let DecodeError::EventId { id } = err else {
                panic!("unexpected error for an event id: {err:?}");
            };
            // The echo in the error message is bounded whatever the header's size.
            assert!(id.chars().count() <= 64);
            assert!(text.starts_with(&id));
        }
    }
});
