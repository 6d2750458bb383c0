//! [`ClientStream`]: one SSE client's position in its topic, and the hand-over between
//! reading the topic's stream and following live events.
//!
//! The client joins the hub *before* reading the stream, so nothing published meanwhile
//! can fall between the two. It then keeps one number, `last` (the id of the last event
//! it was sent), and three rules make delivery exact:
//! - a live event with `id <= last` was already sent (replay overlapped live): skip it;
//! - a live event whose `prev == last` is the next one: send it;
//! - anything else (a `prev` it has not seen, a lagged receiver) means it missed
//!   something: read the stream from `last` in pages until caught up, then follow live
//!   again.
//!
//! A stream entry whose `prev` is not `last` means the range was trimmed (or lost with a
//! Redis that restarted empty): the client gets `event: reset` carrying the id it
//! continues from, never a silent skip. Memory per client is one broadcast cursor plus at
//! most one page of frames.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use proto::{EventId, Topic};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::bus::Bus;
use crate::error::BusError;
use crate::hub::Membership;
use crate::metrics::Metrics;

/// The `endpoint` label of this kind of stream.
const ENDPOINT: &str = "change-stream";

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

/// One client's stream of SSE chunks.
#[derive(Debug)]
pub struct ClientStream {
    topic: Topic,
    bus: Bus,
    membership: Membership,
    /// The id of the last event sent (or the position the client started from).
    last: EventId,
    /// Reading the stream rather than following live.
    catching_up: bool,
    page: usize,
    /// Chunks ready to send: at most one replay page plus a reset.
    pending: VecDeque<Bytes>,
    heartbeat: Interval,
    /// A stream read failed: send what is pending, then end (the client resumes).
    ended: bool,
    metrics: Metrics,
    /// Change events sent, for the close log line.
    sent: u64,
    opened: Instant,
}

impl ClientStream {
    /// Positions a client that joined `membership`: live from now, or from `resume`.
    ///
    /// # Errors
    /// [`BusError`] if the stream cannot be read.
    pub async fn open(
        topic: Topic,
        bus: Bus,
        membership: Membership,
        resume: Option<EventId>,
        page: usize,
        heartbeat: Duration,
        metrics: Metrics,
    ) -> Result<Self, BusError> {
        let newest = bus.last_id(&topic).await?;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut client = Self {
            topic,
            bus,
            membership,
            last: newest,
            catching_up: false,
            page,
            pending: VecDeque::new(),
            heartbeat,
            ended: false,
            metrics,
            sent: 0,
            opened: Instant::now(),
        };
        client
            .metrics
            .connections
            .with_label_values(&[ENDPOINT])
            .inc();
        client
            .metrics
            .connections_total
            .with_label_values(&[ENDPOINT])
            .inc();
        tracing::info!(topic = %client.topic, resume = ?resume.map(|id| id.to_string()), "stream opened");
        match resume {
            Some(from) if from > newest => client.reset(ResetReason::Unknown, from, newest),
            Some(from) => {
                client.last = from;
                client.catching_up = true;
            }
            None => {}
        }
        Ok(client)
    }

    /// The id of the last event sent.
    pub fn last(&self) -> EventId {
        self.last
    }

    fn reset(&mut self, reason: ResetReason, from: EventId, continue_at: EventId) {
        tracing::info!(topic = %self.topic, %from, %continue_at, reason = reason.as_str(), "client reset");
        let data = json!({
            "reason": reason.as_str(),
            "lastEventId": from.to_string(),
            "resumeFrom": continue_at.to_string(),
        });
        self.pending.push_back(Bytes::from(proto::sse::reset_frame(
            Some(&continue_at.to_string()),
            &data.to_string(),
        )));
        self.last = continue_at;
        self.catching_up = false;
        self.metrics
            .resets
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The next chunk to write; `None` ends the response.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                self.heartbeat.reset();
                return Some(chunk);
            }
            if self.ended {
                return None;
            }
            if self.catching_up {
                self.catch_up_page().await;
                continue;
            }
            tokio::select! {
                received = self.membership.events_rx.recv() => match received {
                    Ok(event) => {
                        if event.id <= self.last {
                            continue;
                        }
                        if event.prev == self.last {
                            self.last = event.id;
                            self.heartbeat.reset();
                            self.sent += 1;
                            self.metrics.delivered.inc();
                            self.metrics.observe_delivery(event.id);
                            return Some(event.frame.clone());
                        }
                        self.metrics.gap_refills.inc();
                        self.catching_up = true;
                    }
                    Err(RecvError::Lagged(_)) => {
                        self.metrics.catchups.inc();
                        self.catching_up = true;
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.heartbeat.tick() => return Some(Bytes::from_static(proto::sse::HEARTBEAT.as_bytes())),
            }
        }
    }

    /// Reads one page of the stream after `last` into `pending`.
    async fn catch_up_page(&mut self) {
        let entries = match self.bus.range(&self.topic, self.last, self.page).await {
            Ok(entries) => entries,
            Err(e) => return self.fail(&e),
        };
        let full = entries.len() == self.page;
        for entry in entries {
            if entry.fields.prev != self.last {
                let newest = match self.bus.last_id(&self.topic).await {
                    Ok(id) => id,
                    Err(e) => return self.fail(&e),
                };
                let from = self.last;
                return self.reset(ResetReason::Trimmed, from, newest);
            }
            self.pending.push_back(Bytes::from(proto::sse::change_frame(
                entry.id,
                &entry.fields.change,
            )));
            self.last = entry.id;
            self.sent += 1;
            self.metrics.delivered.inc();
            self.metrics.replayed.inc();
        }
        if !full {
            self.catching_up = false;
        }
    }

    fn fail(&mut self, error: &BusError) {
        // End the response: the browser reconnects with the last id it got and resumes.
        tracing::warn!(topic = %self.topic, last = %self.last, %error, "stream read failed; ending the response");
        self.ended = true;
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        self.metrics
            .connections
            .with_label_values(&[ENDPOINT])
            .dec();
        tracing::info!(
            topic = %self.topic,
            events = self.sent,
            last = %self.last,
            duration_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            "stream closed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, LiveEvent};
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

    #[tokio::test]
    async fn replays_then_follows_live_without_gap_or_duplicate() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, true);
        let mut ids_published = Vec::new();
        for n in 1..=5 {
            ids_published.push(publish(&store, &topic, n).await);
        }
        let membership = hub.join(&topic);
        let mut client = ClientStream::open(
            topic.clone(),
            Bus::Memory(store.clone()),
            membership,
            Some(ids_published[1]),
            2,
            Duration::from_secs(60),
            Metrics::new().unwrap(),
        )
        .await
        .unwrap();
        // Live events 6 and 7 arrive while the client is still replaying; 5 arrives live
        // too (overlap) and must not be sent twice.
        for n in 6..=7 {
            let prev = *ids_published.last().unwrap();
            let id = publish(&store, &topic, n).await;
            ids_published.push(id);
            hub.deliver(&topic, LiveEvent::new(id, prev, "{}"));
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
        let hub = Hub::new(8, true);
        let first = publish(&store, &topic, 1).await;
        for n in 2..=6 {
            publish(&store, &topic, n).await;
        }
        let newest = store.last_id(&topic);
        let mut client = ClientStream::open(
            topic.clone(),
            Bus::Memory(store.clone()),
            hub.join(&topic),
            Some(first),
            10,
            Duration::from_secs(60),
            Metrics::new().unwrap(),
        )
        .await
        .unwrap();
        let reset = text(&take(&mut client, 1).await[0]);
        assert_eq!(
            reset,
            format!(
                "id: {newest}\nevent: reset\ndata: {{\"reason\":\"history-trimmed\",\"lastEventId\":\"{first}\",\"resumeFrom\":\"{newest}\"}}\n\n"
            )
        );
        let id = publish(&store, &topic, 7).await;
        hub.deliver(&topic, LiveEvent::new(id, newest, "{}"));
        assert_eq!(ids(&take(&mut client, 1).await), [id.to_string()]);
    }

    #[tokio::test]
    async fn a_missed_live_event_is_refilled_from_the_stream() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, true);
        let mut client = ClientStream::open(
            topic.clone(),
            Bus::Memory(store.clone()),
            hub.join(&topic),
            None,
            10,
            Duration::from_secs(60),
            Metrics::new().unwrap(),
        )
        .await
        .unwrap();
        let a = publish(&store, &topic, 1).await; // never delivered live: "lost"
        let b = publish(&store, &topic, 2).await;
        hub.deliver(&topic, LiveEvent::new(b, a, "{}"));
        assert_eq!(
            ids(&take(&mut client, 2).await),
            [a.to_string(), b.to_string()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_on_an_idle_stream() {
        let store = MemoryStore::new(Retention::default());
        let topic = Topic::new("T").unwrap();
        let hub = Hub::new(8, true);
        let mut client = ClientStream::open(
            topic.clone(),
            Bus::Memory(store),
            hub.join(&topic),
            None,
            10,
            Duration::from_secs(15),
            Metrics::new().unwrap(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        let chunk = client.next_chunk().await.unwrap();
        assert_eq!(&chunk[..], b":\n\n");
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }
}
