//! [`EventId`]: a Redis stream id (`<milliseconds>-<sequence>`), the SSE `id:` of a
//! single-topic change stream and the resume position a client sends back.

use std::fmt;
use std::str::FromStr;

use crate::DecodeError;

/// A Redis stream id. Ordered as Redis orders them: by milliseconds, then sequence.
/// The millisecond part is Redis's clock when the event was published, so
/// publish->deliver latency can be measured from the id alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// `0-0`: before every entry. The `prev` of a topic's first event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses the strict form `<digits>-<digits>`, each fitting in a `u64`.
    ///
    /// # Errors
    /// [`DecodeError::EventId`] for anything else (empty, signs, spaces, a bare number,
    /// Redis's special ids `-`, `+`, `$`, `*`).
    pub fn parse(s: &str) -> Result<Self, DecodeError> {
        let malformed = || DecodeError::EventId {
            id: s.chars().take(64).collect(),
        };
        let (ms, seq) = s.split_once('-').ok_or_else(malformed)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(malformed());
        }
        Ok(Self {
            ms: ms.parse().map_err(|_| malformed())?,
            seq: seq.parse().map_err(|_| malformed())?,
        })
    }

    /// A position *between* ids, for a client that has none yet and cannot be given the
    /// stream's newest id (the gateway cannot read Redis right now): after every id of
    /// the milliseconds before `ms`, before every id of `ms` and later. A resume from it
    /// delivers what was published from `ms` on, by Redis's clock. It has no event, so the
    /// id chain cannot start at it: the first entry after it is taken as it is.
    ///
    /// Written as a plain stream id (`<ms - 1>-18446744073709551615`, a sequence no real
    /// entry reaches), so EventSource, cursors and every parser take it unchanged.
    pub const fn anchor(ms: u64) -> Self {
        Self {
            ms: ms.saturating_sub(1),
            seq: u64::MAX,
        }
    }

    /// Whether this is an [`EventId::anchor`] rather than the id of an entry.
    pub const fn is_anchor(self) -> bool {
        self.seq == u64::MAX
    }

    /// The id right after this one, for exclusive ranges where `(id` syntax is not wanted.
    pub fn successor(self) -> Option<Self> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(Self { ms: self.ms, seq }),
            None => self.ms.checked_add(1).map(|ms| Self { ms, seq: 0 }),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anchor_sits_between_milliseconds() {
        let anchor = EventId::anchor(1_000);
        assert!(anchor.is_anchor());
        assert!(EventId::new(999, 5) < anchor && anchor < EventId::new(1_000, 0));
        assert_eq!(anchor.to_string(), "999-18446744073709551615");
        assert_eq!(EventId::parse(&anchor.to_string()).unwrap(), anchor);
        assert!(!EventId::new(1_000, 0).is_anchor());
        assert_eq!(EventId::anchor(0), EventId::new(0, u64::MAX));
    }

    #[test]
    fn parses_and_prints_round_trip() {
        for s in [
            "0-0",
            "1732345678901-0",
            "1732345678901-17",
            "18446744073709551615-18446744073709551615",
        ] {
            assert_eq!(EventId::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn orders_like_redis() {
        let a = EventId::parse("1732345678901-9").unwrap();
        let b = EventId::parse("1732345678901-10").unwrap();
        let c = EventId::parse("1732345678902-0").unwrap();
        assert!(EventId::ZERO < a && a < b && b < c);
        assert_eq!(a.successor(), Some(EventId::new(1732345678901, 10)));
        assert_eq!(
            EventId::new(5, u64::MAX).successor(),
            Some(EventId::new(6, 0))
        );
        assert_eq!(EventId::new(u64::MAX, u64::MAX).successor(), None);
    }

    #[test]
    fn rejects_malformed_ids() {
        for s in [
            "",
            "-",
            "+",
            "$",
            "*",
            "1",
            "1-",
            "-1",
            "1--1",
            "1-2-3",
            " 1-2",
            "1-2 ",
            "+1-2",
            "1-+2",
            "a-1",
            "1-b",
            "18446744073709551616-0",
            "0-18446744073709551616",
            "1.5-0",
            "١-٢",
        ] {
            assert_eq!(
                EventId::parse(s),
                Err(DecodeError::EventId { id: s.into() }),
                "{s:?}"
            );
        }
    }
}
