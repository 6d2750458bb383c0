//! `Cursor::parse`: the `Last-Event-ID` of a multi-topic stream (`GET /events`).
//!
//! Input layout: the first byte picks how many topics the connection names (0 to 7) and
//! the next bytes their names (from a small alphabet, so sets repeat and checksums can
//! match); the rest is the cursor text. Checked:
//! - anything accepted is within `max_cursor_len`, has exactly one position per topic, in
//!   canonical topic order, and a checksum field of 8 hex digits equal to the one the
//!   gateway would write; encoding it and parsing again gives the same cursor;
//! - every cursor the gateway can issue for the set (any ids, up to `u64::MAX`) fits
//!   `max_cursor_len` and parses back to its positions, so a client can always resume;
//! - a refused cursor gets a non-empty reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::{Cursor, EventId, Topic, max_cursor_len};

const NAMES: [&str; 8] = ["A", "B", "Orders", "MyModels", "a.b", "x-y", "_", "Z9"];

fn ids_from(bytes: &[u8], count: usize) -> Vec<EventId> {
    let mut words = bytes.chunks(8).map(|w| {
        let mut buf = [0u8; 8];
        buf[..w.len()].copy_from_slice(w);
        u64::from_le_bytes(buf)
    });
    (0..count)
        .map(|_| {
            EventId::new(
                words.next().unwrap_or(u64::MAX),
                words.next().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 8);
    let (picks, text) = rest.split_at(count.min(rest.len()));
    let topics = Cursor::canonical(
        picks
            .iter()
            .filter_map(|&p| Topic::new(NAMES[usize::from(p % 8)]).ok())
            .collect(),
    );

    // What the gateway issues always comes back (ids taken from the text's bytes).
    let issued: Vec<(Topic, EventId)> = topics
        .iter()
        .cloned()
        .zip(ids_from(text, topics.len()))
        .collect();
    let encoded = Cursor::encode(&issued);
    assert!(encoded.len() <= max_cursor_len(topics.len()), "{encoded}");
    assert_eq!(
        Cursor::parse(&encoded, &topics).map(|c| c.positions),
        Ok(issued)
    );
    let all_max: Vec<(Topic, EventId)> = topics
        .iter()
        .map(|t| (t.clone(), EventId::new(u64::MAX, u64::MAX)))
        .collect();
    assert_eq!(Cursor::encode(&all_max).len(), max_cursor_len(topics.len()));

    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    match Cursor::parse(text, &topics) {
        Ok(cursor) => {
            assert!(text.len() <= max_cursor_len(topics.len()));
            let named: Vec<&Topic> = cursor.positions.iter().map(|p| &p.0).collect();
            assert_eq!(named, topics.iter().collect::<Vec<_>>());
            let again = Cursor::encode(&cursor.positions);
            assert_eq!(Cursor::parse(&again, &topics).as_ref(), Ok(&cursor));
            // The checksum field is the one the gateway writes, up to letter case.
            let field = |s: &str| s.split('.').nth(1).unwrap_or_default().to_owned();
            let (given, written) = (field(text), field(&again));
            assert!(
                given.len() == 8 && given.bytes().all(|b| b.is_ascii_hexdigit()),
                "checksum field {given:?} of accepted cursor {text:?}"
            );
            assert!(given.eq_ignore_ascii_case(&written), "{text:?}");
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
