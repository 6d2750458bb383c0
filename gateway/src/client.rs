//! [`ClientStream`]: one SSE client's position in each of its topics, and the hand-over
//! between reading a topic's stream and following its live events.
//!
//! A client has one [`Lane`] per topic. Each lane joins the hub *before* reading the
//! stream, so nothing published meanwhile can fall between the two. It then keeps one
//! number, `last` (the id of the last event of its topic it has passed: sent, or skipped
//! by the client's filter), and three rules make delivery exact:
//! - a live event with `id <= last` was already passed (replay overlapped live): skip it;
//! - a live event whose `prev == last` is the next one: send it (if the filter lets it);
//! - anything else (a `prev` it has not seen, a lagged receiver) means it missed
//!   something: read the stream from `last` in pages until caught up, then follow live
//!   again.
//!
//! A stream entry whose `prev` is not `last` means the range was trimmed (or lost with a
//! Redis that restarted empty): the client gets `event: reset` carrying the position it
//! continues from, never a silent skip. Memory per client is one broadcast cursor per
//! topic plus at most one page of frames.
//!
//! A resume position may also be an anchor ([`EventId::anchor`]): a position between ids
//! that a fresh client was given when it was turned away (see [`crate::http`]). It names
//! no entry, so the first entry after it starts the chain, and an anchor newer than the
//! stream is no reset: nothing was published since.
//!
//! Two shapes share this logic: the LoopBack change stream (one topic, `id:` the stream
//! id, `event: data`) and the multi-topic `/events` stream (`id:` a [`Cursor`] with every
//! topic's `last`, default event name, the topic inside the JSON).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proto::{Cursor, EventId, Filter, Topic};
use serde_json::Value;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::error::HistoryError;
use crate::event::{LiveEvent, ParsedChange};
use crate::history::{Entry, History};

mod snapshot;

use crate::hub::{Membership, TopicGuard};
use crate::metrics::Metrics;
use snapshot::{Next, Snapshotting, Step, Stopped};

/// How events are written for the endpoint a client came in by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `/api/{collection}/change-stream`: one topic, LoopBack's frames.
    ChangeStream,
    /// `/events?topic=..`: several topics, cursor ids, the topic in each JSON.
    Events,
}

impl Shape {
    /// The `endpoint` label of this kind of stream.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::ChangeStream => "change-stream",
            Self::Events => "events",
        }
    }
}

/// Why a client was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The events after its position were trimmed from the stream (retention).
    Trimmed,
    /// Its position is newer than anything the stream holds (e.g. Redis lost its data).
    Unknown,
}

impl ResetReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Trimmed => "history-trimmed",
            Self::Unknown => "position-unknown",
        }
    }
}

/// What a client asks of one topic.
#[derive(Debug)]
pub struct Subscription {
    pub topic: Topic,
    /// Joined (and confirmed) before the stream is opened.
    pub membership: Membership,
    /// Where to resume from; `None`: live from now.
    pub resume: Option<EventId>,
    /// `None` or an empty filter: every change, whole.
    pub filter: Option<Arc<Filter>>,
    /// `snapshot=true`: a fresh client (and one reset later) first gets the topic's
    /// records in `event: snapshot` pages ([`snapshot`]).
    pub snapshot: bool,
}

/// How much a client reads at once.
#[derive(Clone, Copy, Debug)]
pub struct Pages {
    /// Stream entries per replay read.
    pub replay: usize,
    /// Records per snapshot page.
    pub snapshot: usize,
}

/// One topic of a client.
#[derive(Debug)]
struct Lane {
    topic: Topic,
    /// Keeps the topic wanted while the client is here; dropping it leaves the topic.
    guard: TopicGuard,
    events: BroadcastStream<Arc<LiveEvent>>,
    /// The id of the last event of this topic passed (or the starting position).
    last: EventId,
    /// Reading the stream rather than following live.
    catching_up: bool,
    filter: Option<Arc<Filter>>,
    /// The client asked for snapshots: a reset is followed by a fresh one.
    snapshot_wanted: bool,
    /// A snapshot being sent (boxed: most lanes never have one).
    snapshot: Option<Box<Snapshotting>>,
}

/// A read in flight: the lane it is for, and what was read.
type Fetch = Pin<Box<dyn Future<Output = (usize, Fetched)> + Send>>;

enum Fetched {
    /// A page of the lane's stream.
    Page(Result<Page, HistoryError>),
    /// A step of the lane's snapshot.
    Snapshot(Result<Step, Stopped>),
}

/// One page of a lane's stream.
struct Page {
    entries: Vec<Entry>,
    /// The stream's newest id, read when `entries` do not continue the lane's chain.
    newest: Option<EventId>,
}

/// What the client's filter makes of one change.
enum Filtered {
    Skip,
    AsIs,
    /// The change with `data` projected by `fields`.
    Projected(String),
    /// An update that took the record out of the filter, sent as its `remove`.
    MovedOut(String),
}

/// One client's stream of SSE chunks.
pub struct ClientStream {
    shape: Shape,
    /// Sorted by topic (the cursor's order).
    lanes: Vec<Lane>,
    /// Checksum of the topic set, for cursors.
    cursor_set: u32,
    history: History,
    page: usize,
    /// Records per snapshot page.
    snapshot_page: usize,
    /// Chunks ready to send: at most one replay or snapshot page plus resets.
    pending: VecDeque<Bytes>,
    /// A page being read for a lane that is catching up: boxed, so a client that is not
    /// reading costs nothing for it.
    fetching: Option<Fetch>,
    heartbeat: Interval,
    /// A stream read failed: send what is pending, then end (the client resumes).
    ended: bool,
    /// The lane polled first next time, so a busy topic cannot starve the others.
    next_lane: usize,
    metrics: Arc<Metrics>,
    /// Change events sent, for the close log line.
    sent: u64,
    opened: Instant,
}

impl std::fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStream")
            .field("shape", &self.shape)
            .field("lanes", &self.lanes)
            .field("pending", &self.pending.len())
            .field("fetching", &self.fetching.is_some())
            .field("ended", &self.ended)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl ClientStream {
    /// Positions a client on each of `subscriptions`: live from now, or from its resume
    /// position.
    ///
    /// # Errors
    /// [`HistoryError`] if a stream cannot be read.
    pub async fn open(
        shape: Shape,
        mut subscriptions: Vec<Subscription>,
        history: History,
        pages: Pages,
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, HistoryError> {
        subscriptions.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let topics: Vec<Topic> = subscriptions.iter().map(|s| s.topic.clone()).collect();
        let mut client = Self {
            shape,
            lanes: Vec::with_capacity(subscriptions.len()),
            cursor_set: Cursor::checksum(&topics),
            history,
            page: pages.replay,
            snapshot_page: pages.snapshot,
            pending: VecDeque::new(),
            fetching: None,
            heartbeat,
            ended: false,
            next_lane: 0,
            metrics,
            sent: 0,
            opened: Instant::now(),
        };
        client
            .metrics
            .connections
            .with_label_values(&[shape.endpoint()])
            .inc();
        client
            .metrics
            .connections_total
            .with_label_values(&[shape.endpoint()])
            .inc();
        let resumed: Vec<String> = subscriptions
            .iter()
            .filter_map(|s| s.resume.map(|id| format!("{}:{id}", s.topic)))
            .collect();
        tracing::info!(topics = %topic_names(&topics), resume = ?resumed, endpoint = shape.endpoint(), "stream opened");
        let mut resets = Vec::new();
        let mut snapshots = Vec::new();
        for (index, sub) in subscriptions.into_iter().enumerate() {
            let newest = client.history.last_id(&sub.topic).await?;
            let Membership {
                guard, events_rx, ..
            } = sub.membership;
            let filter = sub.filter.filter(|f| !f.is_empty());
            if sub.snapshot && sub.resume.is_none() {
                // Read before the stream starts: a topic without kept records is refused
                // with its reason instead of getting a snapshot that looks empty.
                let start = client
                    .history
                    .snapshot_start(&sub.topic, client.snapshot_page)
                    .await?;
                snapshots.push((
                    index,
                    snapshot::begin(start, client.snapshot_page, filter.as_deref()),
                ));
            }
            let mut lane = Lane {
                topic: sub.topic,
                guard,
                events: BroadcastStream::new(events_rx),
                last: newest,
                catching_up: false,
                filter,
                snapshot_wanted: sub.snapshot,
                snapshot: None,
            };
            match sub.resume {
                // Nothing was published since the anchor: live from the newest.
                Some(from) if from > newest && from.is_anchor() => {}
                Some(from) if from > newest => resets.push((index, from, newest)),
                Some(from) => {
                    lane.last = from;
                    lane.catching_up = true;
                }
                None => {}
            }
            client.lanes.push(lane);
        }
        for (index, from, newest) in resets {
            client.reset(index, ResetReason::Unknown, from, newest);
        }
        // Every lane waits in its snapshot before the first page goes out, so no `id:` is
        // sent before every snapshot is done.
        for (index, _) in &snapshots {
            client.lanes[*index].snapshot = Some(Box::new(Snapshotting::Start));
        }
        for (index, step) in snapshots {
            client.snapshot_step(index, step);
        }
        if resumed.is_empty() && !client.snapshotting() {
            // A fresh client learns its starting position at once (see
            // `proto::sse::position_frame`).
            let newest = client.last();
            let id = client.id_line(newest);
            client
                .pending
                .push_back(Bytes::from(proto::sse::position_frame(&id)));
        }
        Ok(client)
    }

    /// The id of the last event passed on the first topic.
    pub fn last(&self) -> EventId {
        self.lanes.first().map_or(EventId::ZERO, |l| l.last)
    }

    /// The `id:` of the next frame: the stream id on a change stream, else the cursor of
    /// every topic's position.
    fn id_line(&self, id: EventId) -> String {
        match self.shape {
            Shape::ChangeStream => id.to_string(),
            Shape::Events => Cursor::encode_ids(self.cursor_set, self.lanes.iter().map(|l| l.last)),
        }
    }

    fn reset(&mut self, index: usize, reason: ResetReason, from: EventId, continue_at: EventId) {
        let lane = &mut self.lanes[index];
        tracing::info!(topic = %lane.topic, %from, %continue_at, reason = reason.as_str(), "client reset");
        lane.last = continue_at;
        lane.catching_up = false;
        // A client that asked for snapshots gets a fresh one: the reset then names no
        // position (a reconnect before the snapshot is done resets and starts it again).
        let fresh_snapshot = lane.snapshot_wanted;
        if fresh_snapshot {
            lane.snapshot = Some(Box::new(Snapshotting::Start));
        }
        // On /events the topic comes first, as in its change frames.
        let mut data = serde_json::Map::new();
        if self.shape == Shape::Events {
            data.insert("topic".into(), lane.topic.as_str().into());
        }
        data.insert("reason".into(), reason.as_str().into());
        data.insert("lastEventId".into(), from.to_string().into());
        data.insert("resumeFrom".into(), continue_at.to_string().into());
        let data = Value::Object(data);
        let id = (!fresh_snapshot).then(|| self.id_line(continue_at));
        self.pending.push_back(Bytes::from(proto::sse::reset_frame(
            id.as_deref(),
            &data.to_string(),
        )));
        self.metrics
            .resets
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The next chunk to write; `None` ends the response.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The next chunk to write, polled; `Ready(None)` ends the response.
    ///
    /// Poll-based rather than an `async fn` so an idle client costs only this struct: a
    /// stream read in flight is the one state that needs more, and it is boxed for as
    /// long as it runs (see [`Self::fetching`]).
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // Live events skip the queue: an idle client keeps no room for it.
                    self.pending = VecDeque::new();
                }
                self.heartbeat.reset();
                return Poll::Ready(Some(chunk));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            if let Some(fetch) = &mut self.fetching {
                let Poll::Ready((index, fetched)) = fetch.as_mut().poll(cx) else {
                    // A long read (a selective filter skipping snapshot pages that hold
                    // nothing for it) still shows the stream alive; the read goes on.
                    ready!(self.heartbeat.poll_tick(cx));
                    return Poll::Ready(Some(Bytes::from_static(proto::sse::HEARTBEAT.as_bytes())));
                };
                self.fetching = None;
                match fetched {
                    Fetched::Page(page) => self.caught_up(index, page),
                    Fetched::Snapshot(step) => self.snapshot_step(index, step),
                }
                continue;
            }
            // Snapshots first: no lane goes live (or names a position) before all are sent.
            if let Some(index) = self.lanes.iter().position(|l| l.snapshot.is_some()) {
                self.fetching = self.next_snapshot(index);
                continue;
            }
            if let Some(index) = self.lanes.iter().position(|l| l.catching_up) {
                self.fetching = Some(self.fetch_page(index));
                continue;
            }
            let n = self.lanes.len();
            let received = (0..n).find_map(|k| {
                let index = (self.next_lane + k) % n;
                match self.lanes[index].events.poll_next_unpin(cx) {
                    Poll::Ready(item) => Some((index, item)),
                    Poll::Pending => None,
                }
            });
            if let Some((index, item)) = received {
                self.next_lane = (index + 1) % n;
                match item {
                    Some(Ok(event)) => {
                        if let Some(chunk) = self.live(index, &event) {
                            self.heartbeat.reset();
                            return Poll::Ready(Some(chunk));
                        }
                    }
                    Some(Err(BroadcastStreamRecvError::Lagged(_))) => {
                        self.metrics.catchups.inc();
                        let lane = &mut self.lanes[index];
                        lane.catching_up = true;
                        // Lagged on a ring the topic has outgrown: on to the big one.
                        if let Some(events_rx) = lane.guard.grown_ring() {
                            lane.events = BroadcastStream::new(events_rx);
                        }
                    }
                    None => return Poll::Ready(None),
                }
                continue;
            }
            ready!(self.heartbeat.poll_tick(cx));
            return Poll::Ready(Some(Bytes::from_static(proto::sse::HEARTBEAT.as_bytes())));
        }
    }

    /// A live event of lane `index`: the chunk to send, or nothing (skipped, or the sign
    /// of a gap).
    fn live(&mut self, index: usize, event: &LiveEvent) -> Option<Bytes> {
        let lane = &mut self.lanes[index];
        if event.id <= lane.last {
            return None;
        }
        if event.prev != lane.last {
            self.metrics.gap_refills.inc();
            lane.catching_up = true;
            return None;
        }
        lane.last = event.id;
        let filtered = match &lane.filter {
            None => Filtered::AsIs,
            Some(filter) => event.parsed().map_or(Filtered::AsIs, |p| apply(filter, p)),
        };
        let chunk = match (&filtered, self.shape) {
            (Filtered::Skip, _) => return None,
            (Filtered::AsIs, Shape::ChangeStream) => event.frame.clone(),
            (Filtered::AsIs, Shape::Events) => {
                let data = event.topic_change(&self.lanes[index].topic);
                Bytes::from(proto::sse::events_frame(&self.id_line(event.id), data))
            }
            (Filtered::Projected(change), _) => self.frame(index, event.id, change),
            (Filtered::MovedOut(remove), _) => {
                self.metrics.moved_out.inc();
                self.frame(index, event.id, remove)
            }
        };
        self.sent += 1;
        self.metrics.delivered.inc();
        self.metrics.observe_delivery(event.id);
        Some(chunk)
    }

    /// A frame of `change` (JSON) of lane `index`, encoded for this client alone.
    fn frame(&self, index: usize, id: EventId, change: &str) -> Bytes {
        Bytes::from(match self.shape {
            Shape::ChangeStream => proto::sse::change_frame(id, change),
            Shape::Events => proto::sse::events_frame(
                &self.id_line(id),
                &proto::sse::topic_change(&self.lanes[index].topic, change),
            ),
        })
    }

    /// Whether a lane is still in its snapshot.
    fn snapshotting(&self) -> bool {
        self.lanes.iter().any(|l| l.snapshot.is_some())
    }

    /// Takes lane `index`'s next snapshot step: at once for an embedded snapshot (the
    /// records are at hand; `None` is returned), else a read to run.
    fn next_snapshot(&mut self, index: usize) -> Option<Fetch> {
        let state = *self.lanes[index].snapshot.take()?;
        let filter = self.lanes[index].filter.clone();
        if let Snapshotting::Whole { records, position } = state {
            let step = snapshot::whole(records, position, self.snapshot_page, filter.as_deref());
            self.snapshot_step(index, Ok(step));
            return None;
        }
        let (history, topic) = (self.history.clone(), self.lanes[index].topic.clone());
        let (page, stream_page) = (self.snapshot_page, self.page);
        Some(Box::pin(async move {
            let step = snapshot::next(history, topic, state, page, stream_page, filter).await;
            (index, Fetched::Snapshot(step))
        }))
    }

    /// Sends a snapshot step of lane `index`: a page (`event: snapshot`), and at the end
    /// the lane's position, from which it follows the changes after the snapshot.
    fn snapshot_step(&mut self, index: usize, step: Result<Step, Stopped>) {
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                // No id was sent yet: the client's reconnect starts a fresh snapshot.
                tracing::warn!(topic = %self.lanes[index].topic, error = %e, "snapshot stopped; ending the response");
                self.lanes[index].snapshot = None;
                self.ended = true;
                return;
            }
        };
        let done = match step.next {
            Next::More(state) => {
                self.lanes[index].snapshot = Some(Box::new(state));
                None
            }
            Next::Done(position) => {
                let lane = &mut self.lanes[index];
                lane.snapshot = None;
                lane.last = position;
                // From the snapshot's position on, as a resume: replay, then live.
                lane.catching_up = true;
                Some(position)
            }
        };
        if step.records.is_empty() && done.is_none() {
            return;
        }
        // The position goes with the last page of the last snapshot (a cursor of every
        // topic's position on `/events`).
        let id = done
            .filter(|_| !self.snapshotting())
            .map(|position| self.id_line(position));
        let topic = (self.shape == Shape::Events).then(|| &self.lanes[index].topic);
        let frame = proto::sse::snapshot_frame(id.as_deref(), topic, &step.records, done.is_some());
        self.metrics.snapshot_pages.inc();
        self.metrics
            .snapshot_records
            .inc_by(u64::try_from(step.records.len()).unwrap_or(u64::MAX));
        self.pending.push_back(Bytes::from(frame));
    }

    /// Reads one page of lane `index`'s stream after its `last` (and, if the page does not
    /// continue the chain, the stream's newest id for the reset).
    fn fetch_page(&self, index: usize) -> Fetch {
        let history = self.history.clone();
        let topic = self.lanes[index].topic.clone();
        let (after, count) = (self.lanes[index].last, self.page);
        Box::pin(async move {
            let page = async {
                let entries = history.range(&topic, after, count).await?;
                let mut last = after;
                let broken = entries.iter().any(|e| {
                    let broken = e.fields.prev != last && !last.is_anchor();
                    last = e.id;
                    broken
                });
                let newest = if broken {
                    Some(history.last_id(&topic).await?)
                } else {
                    None
                };
                Ok(Page { entries, newest })
            };
            (index, Fetched::Page(page.await))
        })
    }

    /// Passes a page read for lane `index` into `pending`.
    fn caught_up(&mut self, index: usize, page: Result<Page, HistoryError>) {
        let Page { entries, newest } = match page {
            Ok(page) => page,
            Err(e) => {
                let topic = self.lanes[index].topic.clone();
                return self.fail(&topic, &e);
            }
        };
        let full = entries.len() == self.page;
        for entry in entries {
            // After an anchor (a position between ids) the chain starts with its first entry.
            let last = self.lanes[index].last;
            if entry.fields.prev != last && !last.is_anchor() {
                let from = self.lanes[index].last;
                // `fetch_page` read the newest id when the chain broke.
                let newest = newest.unwrap_or(from);
                return self.reset(index, ResetReason::Trimmed, from, newest);
            }
            self.lanes[index].last = entry.id;
            let filtered = match &self.lanes[index].filter {
                None => Filtered::AsIs,
                Some(filter) => {
                    ParsedChange::parse(&entry.fields.change, entry.fields.last.as_deref())
                        .map_or(Filtered::AsIs, |p| apply(filter, &p))
                }
            };
            let chunk = match filtered {
                Filtered::Skip => continue,
                Filtered::AsIs => self.frame(index, entry.id, &entry.fields.change),
                Filtered::Projected(change) => self.frame(index, entry.id, &change),
                Filtered::MovedOut(remove) => {
                    self.metrics.moved_out.inc();
                    self.frame(index, entry.id, &remove)
                }
            };
            self.pending.push_back(chunk);
            self.sent += 1;
            self.metrics.delivered.inc();
            self.metrics.replayed.inc();
        }
        if !full {
            self.lanes[index].catching_up = false;
        }
    }

    fn fail(&mut self, topic: &Topic, error: &HistoryError) {
        // End the response: the browser reconnects with the last id it got and resumes.
        tracing::warn!(%topic, %error, "stream read failed; ending the response");
        self.ended = true;
    }
}

fn topic_names(topics: &[Topic]) -> String {
    topics
        .iter()
        .map(Topic::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// Applies `filter` to a change, so that a view built from what is sent holds exactly the
/// matching records (DESIGN.md, "Move-in, move-out"):
/// - a `create` is sent when its `data` matches;
/// - an `update` whose new state matches is sent (a move-in when the previous state did
///   not); one whose previous state (`last`, kept in the stream entry) matched and whose
///   new state does not is sent as LoopBack's `remove` of the record (a move-out); one
///   that matches neither is skipped. Without a previous state (a raw publish that gave
///   none) an update that does not match is skipped: there is nothing to move out from;
/// - a `remove` is sent when the record's last state matched, or when there is none (the
///   client may hold the record).
///
/// `fields` projects `data`; a `remove` has none and passes untouched.
fn apply(filter: &Filter, parsed: &ParsedChange) -> Filtered {
    let data = parsed.change.get("data").and_then(Value::as_object);
    let kind = parsed.change.get("type").and_then(Value::as_str);
    let empty = proto::Object::new();
    let matches = |record: Option<&proto::Object>| filter.matches(record.unwrap_or(&empty));
    match kind {
        Some("remove") => {
            if parsed.last.as_ref().is_none_or(|last| filter.matches(last)) {
                Filtered::AsIs
            } else {
                Filtered::Skip
            }
        }
        Some("update") if !matches(data) => match &parsed.last {
            Some(last) if filter.matches(last) => move_out(parsed),
            _ => Filtered::Skip,
        },
        _ if !matches(data) => Filtered::Skip,
        _ => match data {
            Some(data) if filter.projects() => {
                let mut change = parsed.change.clone();
                change.insert("data".into(), Value::Object(filter.project(data)));
                Filtered::Projected(proto::json::to_string(&change))
            }
            _ => Filtered::AsIs,
        },
    }
}

/// The `remove` a filtered view gets for a record that was updated out of it: LoopBack's
/// remove of the same target, `{"target":7,"where":{"id":7},"type":"remove"}`.
fn move_out(parsed: &ParsedChange) -> Filtered {
    let target = parsed
        .change
        .get("target")
        .and_then(|t| proto::RecordId::from_json(t).ok());
    match target {
        Some(target) => Filtered::MovedOut(proto::Change::remove(target).to_json()),
        // Not a change this build wrote (no usable target): nothing to move out.
        None => Filtered::Skip,
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.metrics
            .connections
            .with_label_values(&[self.shape.endpoint()])
            .dec();
        let positions: Vec<String> = self
            .lanes
            .iter()
            .map(|l| format!("{}:{}", l.topic, l.last))
            .collect();
        tracing::info!(
            endpoint = self.shape.endpoint(),
            events = self.sent,
            last = ?positions,
            duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            "stream closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Confirm, Hub};
    use proto::{Change, Object, RecordId};
    use publisher::{MemoryStore, Retention, Store};
    use serde_json::Value;

    fn text(chunk: &Bytes) -> String {
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    fn ids(chunks: &[Bytes]) -> Vec<String> {
        chunks
            .iter()
            .filter_map(|c| {
                text(c)
                    .lines()
                    .find_map(|l| l.strip_prefix("id: ").map(str::to_owned))
            })
            .collect()
    }

    async fn publish(store: &MemoryStore, topic: &Topic, n: i64) -> EventId {
        let mut data = Object::new();
        data.insert("n".into(), Value::from(n));
        store
            .publish(topic, &Change::create(RecordId::Int(n), data), None)
            .await
            .unwrap()
    }

    /// A change-stream client of `topic` on the embedded store.
    async fn open_one(
        topic: &Topic,
        store: MemoryStore,
        membership: Membership,
        resume: Option<EventId>,
        page: usize,
        heartbeat: Duration,
    ) -> ClientStream {
        let subscription = Subscription {
            topic: topic.clone(),
            membership,
            resume,
            filter: None,
            snapshot: false,
        };
        ClientStream::open(
            Shape::ChangeStream,
            vec![subscription],
            History::Memory(store),
            Pages {
                replay: page,
                snapshot: page,
            },
            heartbeat,
            Arc::new(Metrics::new().unwrap()),
        )
        .await
        .unwrap()
    }

    async fn take(client: &mut ClientStream, n: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        while out.len() < n {
            let chunk = tokio::time::timeout(Duration::from_secs(5), client.next_chunk())
                .await
                .unwrap()
                .unwrap();
            out.push(chunk);
        }
        out
    }

    #[test]
    fn updates_move_records_into_and_out_of_a_filter() {
        let filter = Filter::parse(
            &serde_json::json!({"where": {"status": "open"}}),
            &proto::FilterLimits::default(),
        )
        .unwrap();
        let parsed = |change: Value, last: Option<Value>| {
            ParsedChange::parse(&change.to_string(), last.map(|l| l.to_string()).as_deref())
                .unwrap()
        };
        let open = serde_json::json!({"status": "open", "id": 7});
        let done = serde_json::json!({"status": "done", "id": 7});
        let update =
            |data: &Value| serde_json::json!({"target": 7, "data": data, "type": "update"});
        let kind = |f: Filtered| match f {
            Filtered::Skip => "skip".to_owned(),
            Filtered::AsIs => "as is".to_owned(),
            Filtered::Projected(c) => format!("projected {c}"),
            Filtered::MovedOut(c) => format!("moved out {c}"),
        };
        // In: the new state matches, whatever the previous one was.
        assert_eq!(
            kind(apply(&filter, &parsed(update(&open), Some(done.clone())))),
            "as is"
        );
        assert_eq!(kind(apply(&filter, &parsed(update(&open), None))), "as is");
        // Out: the previous state matched, the new one does not: LoopBack's remove.
        assert_eq!(
            kind(apply(&filter, &parsed(update(&done), Some(open.clone())))),
            r#"moved out {"target":7,"where":{"id":7},"type":"remove"}"#
        );
        // Neither, or no previous state to tell: nothing for this view.
        assert_eq!(
            kind(apply(&filter, &parsed(update(&done), Some(done.clone())))),
            "skip"
        );
        assert_eq!(kind(apply(&filter, &parsed(update(&done), None))), "skip");
        // A remove goes to views that had the record, or when its last state is unknown.
        let remove = serde_json::json!({"target": 7, "where": {"id": 7}, "type": "remove"});
        assert_eq!(
            kind(apply(&filter, &parsed(remove.clone(), Some(open)))),
            "as is"
        );
        assert_eq!(
            kind(apply(&filter, &parsed(remove.clone(), Some(done)))),
            "skip"
        );
        assert_eq!(kind(apply(&filter, &parsed(remove, None))), "as is");
        // A string id moves out as itself.
        let out = serde_json::json!({"target": "a", "data": {"status": "done", "id": "a"}, "type": "update"});
        let was = serde_json::json!({"status": "open", "id": "a"});
        assert_eq!(
            kind(apply(&filter, &parsed(out, Some(was)))),
            r#"moved out {"target":"a","where":{"id":"a"},"type":"remove"}"#
        );
    }

    #[tokio::test]
    async fn replays_then_follows_live_without_gap_or_duplicate() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, Confirm::OnJoin);
        let mut ids_published = Vec::new();
        for n in 1..=5 {
            ids_published.push(publish(&store, &topic, n).await);
        }
        let membership = hub.join(&topic);
        let mut client = open_one(
            &topic,
            store.clone(),
            membership,
            Some(ids_published[1]),
            2,
            Duration::from_secs(60),
        )
        .await;
        // Live events 6 and 7 arrive while the client is still replaying; 5 arrives live
        // too (overlap) and must not be sent twice.
        for n in 6..=7 {
            let prev = *ids_published.last().unwrap();
            let id = publish(&store, &topic, n).await;
            ids_published.push(id);
            hub.deliver(&topic, LiveEvent::new(id, prev, "{}", None));
        }
        let chunks = take(&mut client, 5).await;
        let expected: Vec<String> = ids_published[2..].iter().map(ToString::to_string).collect();
        assert_eq!(ids(&chunks), expected);
    }

    #[tokio::test]
    async fn trimmed_history_is_a_reset_then_live() {
        let store = MemoryStore::new(Retention {
            max_len: 3,
            max_age: Duration::ZERO,
        });
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, Confirm::OnJoin);
        let first = publish(&store, &topic, 1).await;
        for n in 2..=6 {
            publish(&store, &topic, n).await;
        }
        let newest = store.last_id(&topic);
        let mut client = open_one(
            &topic,
            store.clone(),
            hub.join(&topic),
            Some(first),
            10,
            Duration::from_secs(60),
        )
        .await;
        let reset = text(&take(&mut client, 1).await[0]);
        assert_eq!(
            reset,
            format!(
                "id: {newest}\nevent: reset\ndata: {{\"reason\":\"history-trimmed\",\"lastEventId\":\"{first}\",\"resumeFrom\":\"{newest}\"}}\n\n"
            )
        );
        let id = publish(&store, &topic, 7).await;
        hub.deliver(&topic, LiveEvent::new(id, newest, "{}", None));
        assert_eq!(ids(&take(&mut client, 1).await), [id.to_string()]);
    }

    #[tokio::test]
    async fn an_anchor_resumes_from_its_millisecond_without_a_reset() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, Confirm::OnJoin);
        let mut published = Vec::new();
        for n in 1..=4 {
            published.push(publish(&store, &topic, n).await);
        }
        let anchor = EventId::anchor(published[2].ms);
        let mut client = open_one(
            &topic,
            store.clone(),
            hub.join(&topic),
            Some(anchor),
            10,
            Duration::from_secs(60),
        )
        .await;
        let expected: Vec<String> = published
            .iter()
            .filter(|id| **id > anchor)
            .map(ToString::to_string)
            .collect();
        assert!(expected.len() >= 2);
        assert_eq!(ids(&take(&mut client, expected.len()).await), expected);

        // An anchor newer than every entry: nothing was published since; live, no reset.
        let newest = *published.last().unwrap();
        let later = EventId::anchor(newest.ms + 10);
        let mut client = open_one(
            &topic,
            store.clone(),
            hub.join(&topic),
            Some(later),
            10,
            Duration::from_secs(60),
        )
        .await;
        let id = publish(&store, &topic, 5).await;
        hub.deliver(&topic, LiveEvent::new(id, newest, "{}", None));
        let chunks = take(&mut client, 1).await;
        assert_eq!(ids(&chunks), [id.to_string()], "{:?}", text(&chunks[0]));
    }

    #[tokio::test]
    async fn a_missed_live_event_is_refilled_from_the_stream() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, Confirm::OnJoin);
        let mut client = open_one(
            &topic,
            store.clone(),
            hub.join(&topic),
            None,
            10,
            Duration::from_secs(60),
        )
        .await;
        // A fresh client is told its starting position first (an id without an event).
        assert_eq!(&take(&mut client, 1).await[0][..], b"id: 0-0\n\n");
        let a = publish(&store, &topic, 1).await; // never delivered live: "lost"
        let b = publish(&store, &topic, 2).await;
        hub.deliver(&topic, LiveEvent::new(b, a, "{}", None));
        assert_eq!(
            ids(&take(&mut client, 2).await),
            [a.to_string(), b.to_string()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_on_an_idle_stream() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, Confirm::OnJoin);
        let mut client = open_one(
            &topic,
            store,
            hub.join(&topic),
            None,
            10,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(&client.next_chunk().await.unwrap()[..], b"id: 0-0\n\n");
        let started = Instant::now();
        let chunk = client.next_chunk().await.unwrap();
        assert_eq!(&chunk[..], b":\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test]
    async fn a_multi_topic_client_is_reset_on_one_topic_and_keeps_the_others() {
        let store = MemoryStore::new(Retention {
            max_len: 2,
            max_age: Duration::ZERO,
        });
        let hub = Hub::new(8, Confirm::OnJoin);
        let (a, b) = (Topic::new("A").unwrap(), Topic::new("B").unwrap());
        let a1 = publish(&store, &a, 1).await;
        for n in 2..=4 {
            publish(&store, &a, n).await;
        }
        let a_newest = store.last_id(&a);
        let b1 = publish(&store, &b, 1).await;
        let b2 = publish(&store, &b, 2).await;
        // Given out of order: lanes are sorted by topic, as the cursor is.
        let subscriptions = [(&b, b1), (&a, a1)]
            .into_iter()
            .map(|(topic, from)| Subscription {
                topic: topic.clone(),
                membership: hub.join(topic),
                resume: Some(from),
                filter: None,
                snapshot: false,
            })
            .collect();
        let mut client = ClientStream::open(
            Shape::Events,
            subscriptions,
            History::Memory(store.clone()),
            Pages {
                replay: 10,
                snapshot: 10,
            },
            Duration::from_secs(60),
            Arc::new(Metrics::new().unwrap()),
        )
        .await
        .unwrap();
        let set = Cursor::checksum(&[a.clone(), b.clone()]);
        let chunks = take(&mut client, 2).await;
        // A's history after a1 was trimmed: a reset naming A, then B's missed event.
        assert_eq!(
            text(&chunks[0]),
            format!(
                "id: {}\nevent: reset\ndata: {{\"topic\":\"A\",\"reason\":\"history-trimmed\",\"lastEventId\":\"{a1}\",\"resumeFrom\":\"{a_newest}\"}}\n\n",
                Cursor::encode_ids(set, [a_newest, b1])
            )
        );
        assert_eq!(
            text(&chunks[1]),
            format!(
                "id: {}\ndata: {{\"topic\":\"B\",\"target\":2,\"data\":{{\"n\":2}},\"type\":\"create\"}}\n\n",
                Cursor::encode_ids(set, [a_newest, b2])
            )
        );
    }
}
