//! A client's in-band snapshot of one topic (`snapshot=true`): the topic's records (what
//! its filter and token scope let through) in `event: snapshot` pages, exactly the state at
//! one stream position `P0`, which the last page names as its `id:`; the lane then follows
//! the changes after `P0` as a resume would.
//!
//! - **Embedded**: the store reads every record and the position under one lock
//!   ([`SnapshotStart::Whole`]); the pages are cut from that.
//! - **Redis**: one page at a time, as the client takes them, so a slow reader never makes
//!   the pod hold the collection: each page is one short script run that also reads the
//!   stream's position ([`crate::history::RecordsPage`]). `P0` is the first page's. Before
//!   a page is sent, the stream's entries up to its position are read into a
//!   [`Settler`]: a record a change touched after `P0` is left out of the pages, and once
//!   the last page is read the touched records are sent with their state at `P0` (what the
//!   first change after `P0` says it was). The result is exact at `P0`; a record changed
//!   after its page was sent can appear once more in the last page, in the same state
//!   (and `HSCAN` may return a record twice while the hash is resized), so a view is best
//!   built by id, as LoopBack's live sets do.
//!
//! What is kept per client: the `HSCAN` cursor and the touched records (those changed
//! during the snapshot), at most [`MAX_TOUCHED`]; past that, or when history the settling
//! needs was trimmed, the response ends and the client, which has no id yet, starts afresh.

use std::collections::VecDeque;
use std::sync::Arc;

use proto::snapshot::Settler;
use proto::{EventId, Filter, Object, Topic};

use crate::error::HistoryError;
use crate::history::{History, SnapshotStart};

/// Most records a snapshot may see changed while it is sent before it gives up (the
/// client starts again): bounds what a client reading slowly costs while writers are busy.
pub const MAX_TOUCHED: usize = 100_000;

/// Where a lane's snapshot is.
#[derive(Debug)]
pub(super) enum Snapshotting {
    /// Not read yet (after a `reset`): the first step starts it.
    Start,
    /// Embedded: the records left to send, exactly the state at `position`.
    Whole {
        records: VecDeque<String>,
        position: EventId,
    },
    /// Redis: the next page's `HSCAN` cursor and the changes seen since `P0`.
    Paged { cursor: String, settler: Settler },
}

/// What one step of a snapshot sends, and what is left.
#[derive(Debug)]
pub(super) struct Step {
    /// The records of this page the client may see, as sent (JSON).
    pub records: Vec<String>,
    pub next: Next,
}

#[derive(Debug)]
pub(super) enum Next {
    More(Snapshotting),
    /// Sent: the records were the state at this position.
    Done(EventId),
}

/// Why a snapshot stopped: the response ends and the client starts again.
#[derive(Debug, thiserror::Error)]
pub(super) enum Stopped {
    #[error(transparent)]
    Read(#[from] HistoryError),
    #[error(transparent)]
    Unsettled(#[from] proto::snapshot::Unsettled),
    #[error("more than {MAX_TOUCHED} records changed while the snapshot was sent")]
    TooManyChanges,
}

/// The first step of a snapshot from where it starts.
pub(super) fn begin(
    start: SnapshotStart,
    page: usize,
    filter: Option<&Filter>,
) -> Result<Step, Stopped> {
    match start {
        SnapshotStart::Whole { records, position } => {
            Ok(whole(records.into(), position, page, filter))
        }
        SnapshotStart::Paged(first) => {
            // Nothing to settle yet: the first page is read at `P0` itself.
            let settler = Settler::new(first.position);
            let records = select(first.records.into_iter().map(|(_, r)| r), filter);
            Ok(finish_page(records, first.next, settler, filter))
        }
    }
}

/// The next page of a whole (embedded) snapshot: no I/O.
pub(super) fn whole(
    mut records: VecDeque<String>,
    position: EventId,
    page: usize,
    filter: Option<&Filter>,
) -> Step {
    let take = page.min(records.len());
    let sent = select(records.drain(..take), filter);
    Step {
        records: sent,
        next: if records.is_empty() {
            Next::Done(position)
        } else {
            Next::More(Snapshotting::Whole { records, position })
        },
    }
}

/// The next step of a snapshot that needs Redis (or a fresh start).
pub(super) async fn next(
    history: History,
    topic: Topic,
    state: Snapshotting,
    page: usize,
    stream_page: usize,
    filter: Option<Arc<Filter>>,
) -> Result<Step, Stopped> {
    match state {
        Snapshotting::Start => begin(
            history.snapshot_start(&topic, page).await?,
            page,
            filter.as_deref(),
        ),
        Snapshotting::Whole { records, position } => {
            Ok(whole(records, position, page, filter.as_deref()))
        }
        Snapshotting::Paged {
            cursor,
            mut settler,
        } => {
            let read = history.records_page(&topic, &cursor, page).await?;
            // Every change up to this page's position, before its records are judged.
            while settler.after() < read.position {
                let entries = history.range(&topic, settler.after(), stream_page).await?;
                if entries.is_empty() {
                    return Err(proto::snapshot::Unsettled::Trimmed.into());
                }
                for entry in entries.iter().take_while(|e| e.id <= read.position) {
                    settler.take(entry.id, &entry.fields)?;
                }
                if settler.len() > MAX_TOUCHED {
                    return Err(Stopped::TooManyChanges);
                }
            }
            let untouched = read
                .records
                .into_iter()
                .filter(|(key, _)| !settler.is_touched(key))
                .map(|(_, record)| record);
            let records = select(untouched, filter.as_deref());
            Ok(finish_page(records, read.next, settler, filter.as_deref()))
        }
    }
}

/// A page's step: more to read, or the end, with the touched records' states at `P0`.
fn finish_page(
    mut records: Vec<String>,
    next: Option<String>,
    settler: Settler,
    filter: Option<&Filter>,
) -> Step {
    match next {
        Some(cursor) => Step {
            records,
            next: Next::More(Snapshotting::Paged { cursor, settler }),
        },
        None => {
            let position = settler.from();
            let before = settler.into_touched().filter_map(|(_, state)| state);
            records.extend(select(before, filter));
            Step {
                records,
                next: Next::Done(position),
            }
        }
    }
}

/// The records `filter` lets through, as sent (`fields` applied).
fn select(records: impl Iterator<Item = String>, filter: Option<&Filter>) -> Vec<String> {
    let Some(filter) = filter.filter(|f| !f.is_empty()) else {
        return records.collect();
    };
    records
        .filter_map(|text| {
            let record: Object = serde_json::from_str(&text).ok()?;
            if !filter.matches(&record) {
                return None;
            }
            Some(if filter.projects() {
                proto::json::to_string(&filter.project(&record))
            } else {
                text
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_whole_snapshot_is_cut_into_pages_and_filtered() {
        let records: VecDeque<String> = (1..=5)
            .map(|n| json!({"n": n, "odd": n % 2 == 1, "id": n}).to_string())
            .collect();
        let filter = Filter::parse(
            &json!({"where": {"odd": true}, "fields": ["id"]}),
            &proto::FilterLimits::default(),
        )
        .unwrap();
        let position = EventId::new(9, 0);
        let first = whole(records, position, 2, Some(&filter));
        assert_eq!(first.records, [r#"{"id":1}"#]);
        let Next::More(Snapshotting::Whole { records, .. }) = first.next else {
            panic!("more to come");
        };
        let second = whole(records, position, 2, Some(&filter));
        assert_eq!(second.records, [r#"{"id":3}"#]);
        let Next::More(Snapshotting::Whole { records, .. }) = second.next else {
            panic!("more to come");
        };
        let last = whole(records, position, 2, Some(&filter));
        assert_eq!(last.records, [r#"{"id":5}"#]);
        assert!(matches!(last.next, Next::Done(p) if p == position));
    }
}
