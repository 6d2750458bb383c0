//! [`Settler`]: what makes a snapshot read in pages exact at one position.
//!
//! A collection is read in pages (`HSCAN`, each page with the stream position at that
//! moment, [`crate::script::SNAPSHOT_PAGE_SCRIPT`]) while writers go on changing it. The
//! snapshot is the state at `P0`, the first page's position:
//! - a record no change touched after `P0` was the same all along, and `HSCAN` returns
//!   every record present for the whole scan;
//! - a record some change touched after `P0` had, at `P0`, the state its *first* such
//!   change tells: none before a `create`, the previous state (`last`) an `update` or a
//!   `remove` keeps in its stream entry.
//!
//! The settler takes the stream's entries after `P0` in order (their `prev` chain proves
//! none is missing) and keeps, per touched record, its state at `P0`. The reader drops what
//! the pages said of touched records and uses those states instead.

use std::collections::HashMap;

use crate::{Change, ChangeType, EventId, StreamFields};

/// Why a snapshot cannot be made exact from the stream: start again (later `P0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsettled {
    /// An entry's `prev` is not the one before it: history was trimmed (or lost).
    #[error("the stream was trimmed while the snapshot was read")]
    Trimmed,
    /// An update kept no previous state (a raw publish without `last`).
    #[error("a change kept no previous state")]
    NoPreviousState,
    /// An entry whose change is not a LoopBack change object this build writes.
    #[error("a stream entry is not a change")]
    NotAChange,
}

/// The states at `P0` of the records changed after it, from the stream.
#[derive(Clone, Debug)]
pub struct Settler {
    /// `P0`: the position the snapshot is the state of.
    from: EventId,
    /// The last entry taken (`P0` before any).
    after: EventId,
    /// Record key -> its state at `P0` (`None`: it did not exist).
    touched: HashMap<String, Option<String>>,
}

impl Settler {
    /// A settler for a snapshot at `from` (`P0`).
    pub fn new(from: EventId) -> Self {
        Self {
            from,
            after: from,
            touched: HashMap::new(),
        }
    }

    /// `P0`: the position the snapshot is the state of.
    pub fn from(&self) -> EventId {
        self.from
    }

    /// The last entry taken: the next one must follow it.
    pub fn after(&self) -> EventId {
        self.after
    }

    /// Takes the stream entry `id` that follows [`Settler::after`].
    ///
    /// # Errors
    /// [`Unsettled`] when the snapshot cannot be exact.
    pub fn take(&mut self, id: EventId, fields: &StreamFields) -> Result<(), Unsettled> {
        if fields.prev != self.after {
            return Err(Unsettled::Trimmed);
        }
        self.after = id;
        let change: Change =
            serde_json::from_str(&fields.change).map_err(|_| Unsettled::NotAChange)?;
        let key = change.target.key();
        if self.touched.contains_key(&key) {
            return Ok(());
        }
        let before = match change.kind {
            ChangeType::Create => None,
            ChangeType::Update | ChangeType::Remove => {
                Some(fields.last.clone().ok_or(Unsettled::NoPreviousState)?)
            }
        };
        self.touched.insert(key, before);
        Ok(())
    }

    /// Whether a change after `P0` touched the record stored under `key`.
    pub fn is_touched(&self, key: &str) -> bool {
        self.touched.contains_key(key)
    }

    /// How many records changes touched.
    pub fn len(&self) -> usize {
        self.touched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }

    /// Every touched record's key and its state at `P0` (`None`: it did not exist).
    pub fn into_touched(self) -> impl Iterator<Item = (String, Option<String>)> {
        self.touched.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(prev: EventId, change: &str, last: Option<&str>) -> StreamFields {
        StreamFields {
            prev,
            change: change.to_owned(),
            last: last.map(str::to_owned),
        }
    }

    #[test]
    fn the_first_change_after_the_position_tells_the_state_there() {
        let (p0, e1, e2, e3) = (
            EventId::new(1, 0),
            EventId::new(2, 0),
            EventId::new(3, 0),
            EventId::new(4, 0),
        );
        let mut settler = Settler::new(p0);
        let update = r#"{"target":1,"data":{"v":2,"id":1},"type":"update"}"#;
        settler
            .take(e1, &fields(p0, update, Some(r#"{"v":1,"id":1}"#)))
            .unwrap();
        let again = r#"{"target":1,"data":{"v":3,"id":1},"type":"update"}"#;
        settler
            .take(e2, &fields(e1, again, Some(r#"{"v":2,"id":1}"#)))
            .unwrap();
        let create = r#"{"target":"x","data":{"id":"x"},"type":"create"}"#;
        settler.take(e3, &fields(e2, create, None)).unwrap();
        assert!(settler.is_touched("1") && settler.is_touched("x") && !settler.is_touched("2"));
        let mut touched: Vec<_> = settler.into_touched().collect();
        touched.sort();
        assert_eq!(
            touched,
            [
                ("1".to_owned(), Some(r#"{"v":1,"id":1}"#.to_owned())),
                ("x".to_owned(), None)
            ]
        );
    }

    #[test]
    fn a_gap_or_an_unknown_previous_state_cannot_settle() {
        let p0 = EventId::new(1, 0);
        let mut settler = Settler::new(p0);
        let update = r#"{"target":1,"data":{"id":1},"type":"update"}"#;
        let gap = fields(EventId::new(0, 5), update, Some("{}"));
        assert_eq!(
            settler.take(EventId::new(2, 0), &gap),
            Err(Unsettled::Trimmed)
        );
        let mut settler = Settler::new(p0);
        let blind = fields(p0, update, None);
        assert_eq!(
            settler.take(EventId::new(2, 0), &blind),
            Err(Unsettled::NoPreviousState)
        );
    }
}
