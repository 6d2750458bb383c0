//! [`Cursor`]: the SSE `id:` of a multi-topic stream (`GET /events`): one stream position
//! per topic, so a reconnect to any pod resumes every topic exactly, although ids of
//! separate streams do not order against each other.
//!
//! The text is `c1.<set>.<id>.<id>...`: a version, an 8-hex-digit checksum of the topic set
//! (FNV-1a of the sorted names), then one stream id per topic in sorted topic order. It is
//! opaque to clients; the checksum makes a cursor offered for another set of topics an
//! error instead of positions silently applied to the wrong streams.

use crate::{DecodeError, EventId, Topic};

const VERSION: &str = "c1";

/// Longest text a cursor over `topics` topics can have; anything longer is refused unread.
pub const fn max_cursor_len(topics: usize) -> usize {
    // "c1." + 8 hex + "." + per topic "<20 digits>-<20 digits>."
    VERSION.len() + 1 + 8 + topics * (20 + 1 + 20 + 1)
}

/// A position per topic of a sorted, de-duplicated topic set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// `(topic, position)`, sorted by topic.
    pub positions: Vec<(Topic, EventId)>,
}

impl Cursor {
    /// The topic set in cursor order (sorted, duplicates removed).
    pub fn canonical(mut topics: Vec<Topic>) -> Vec<Topic> {
        topics.sort();
        topics.dedup();
        topics
    }

    /// The cursor text for `positions`, which must be in [`Cursor::canonical`] order.
    pub fn encode(positions: &[(Topic, EventId)]) -> String {
        let topics: Vec<Topic> = positions.iter().map(|p| p.0.clone()).collect();
        Self::encode_ids(Self::checksum(&topics), positions.iter().map(|p| p.1))
    }

    /// The cursor text from a topic set's [`Cursor::checksum`] and its positions in
    /// canonical order (what a stream computes per event without cloning topics).
    pub fn encode_ids(checksum: u32, ids: impl IntoIterator<Item = EventId>) -> String {
        use std::fmt::Write;
        let mut out = format!("{VERSION}.{checksum:08x}");
        for id in ids {
            // Writing to a String cannot fail.
            let _ = write!(out, ".{id}");
        }
        out
    }

    /// The checksum of a topic set (in [`Cursor::canonical`] order) that a cursor carries.
    pub fn checksum(topics: &[Topic]) -> u32 {
        set_checksum(topics.iter())
    }

    /// Reads `text` as a cursor over `topics` (in [`Cursor::canonical`] order).
    ///
    /// # Errors
    /// [`DecodeError::Cursor`] naming what is wrong: too long, not a cursor, issued for
    /// another topic set, or a malformed position.
    pub fn parse(text: &str, topics: &[Topic]) -> Result<Self, DecodeError> {
        let bad = |reason: &str| DecodeError::Cursor {
            reason: reason.to_owned(),
        };
        if text.len() > max_cursor_len(topics.len()) {
            return Err(bad("too long for this many topics"));
        }
        let mut parts = text.split('.');
        if parts.next() != Some(VERSION) {
            return Err(bad(
                "not a cursor of this gateway (expected c1.<set>.<ids>)",
            ));
        }
        let set = parts
            .next()
            // `from_str_radix` alone would also take a sign: `+e576352` for `0e576352`.
            .filter(|s| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or_else(|| bad("the topic-set checksum is not 8 hex digits"))?;
        if set != set_checksum(topics.iter()) {
            return Err(bad(
                "it was issued for another set of topics; reconnect without it",
            ));
        }
        let ids = parts
            .map(|p| EventId::parse(p).map_err(|_| bad("a position is not a stream id")))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() != topics.len() {
            return Err(bad("it holds a different number of positions than topics"));
        }
        Ok(Self {
            positions: topics.iter().cloned().zip(ids).collect(),
        })
    }
}

/// FNV-1a (32 bits) of the topic names, each followed by a `,`.
fn set_checksum<'a>(topics: impl Iterator<Item = &'a Topic>) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for topic in topics {
        for byte in topic.as_str().bytes().chain([b',']) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<Topic> {
        Cursor::canonical(names.iter().map(|n| Topic::new(n).unwrap()).collect())
    }

    #[test]
    fn golden_text_and_round_trip() {
        let set = topics(&["Orders", "MyModels", "Orders"]);
        assert_eq!(set, topics(&["MyModels", "Orders"]));
        let positions = vec![
            (set[0].clone(), EventId::new(1_732_345_678_901, 0)),
            (set[1].clone(), EventId::ZERO),
        ];
        let text = Cursor::encode(&positions);
        // FNV-1a of "MyModels,Orders," checked with Python.
        assert_eq!(text, "c1.cc2c4dae.1732345678901-0.0-0");
        assert_eq!(Cursor::parse(&text, &set).unwrap().positions, positions);
    }

    #[test]
    fn refuses_what_is_not_its_own() {
        let set = topics(&["A", "B"]);
        let good = Cursor::encode(&[
            (set[0].clone(), EventId::new(1, 0)),
            (set[1].clone(), EventId::new(2, 0)),
        ]);
        let err = |text: &str, set: &[Topic]| Cursor::parse(text, set).unwrap_err().to_string();
        assert!(err(&good, &topics(&["A", "C"])).contains("another set of topics"));
        assert!(err("1-0", &set).contains("not a cursor"));
        assert!(err("c1.zz.1-0.2-0", &set).contains("8 hex digits"));
        let short = good.rsplit_once('.').unwrap().0;
        assert!(err(short, &set).contains("different number"));
        let broken = good.replace("2-0", "2-x");
        assert!(err(&broken, &set).contains("not a stream id"));
        assert!(err(&"c1.".repeat(100), &set).contains("too long"));
    }

    /// Found by `fuzz/fuzz_targets/cursor.rs`: the checksum field went through
    /// `u32::from_str_radix`, which accepts a leading `+`, so a set whose checksum starts
    /// with `0` also took `+` in its place: a second spelling of the same cursor.
    #[test]
    fn checksum_is_eight_hex_digits_exactly() {
        let set = topics(&["MyModels", "a.b"]);
        assert_eq!(Cursor::checksum(&set), 0x0e57_6352);
        assert!(Cursor::parse("c1.0e576352.7-0.0-5", &set).is_ok());
        assert!(Cursor::parse("c1.0E576352.7-0.0-5", &set).is_ok());
        let err = Cursor::parse("c1.+e576352.7-0.0-5", &set).unwrap_err();
        assert!(err.to_string().contains("8 hex digits"), "{err}");
    }
}
