//! [`Hub`]: topic -> local fan-out. Each event is decoded and framed once, then shared
//! (`Arc`) by every local client of its topic through a bounded broadcast.
//!
//! The hub also owns the set of topics this pod needs from Redis: the first client of a
//! topic adds it, the last one leaving removes it, and the subscription task
//! ([`crate::subscription`]) reconciles Redis with that set, confirming each topic once
//! Redis has acknowledged the SUBSCRIBE. Delivery never waits on a client: `send` on a
//! broadcast overwrites the oldest event of a lagging receiver, which that client then
//! reads back from the stream ([`crate::client`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::Topic;
use tokio::sync::{Notify, broadcast, watch};

use crate::event::LiveEvent;

/// The ring of a topic with few local clients: tokio's broadcast allocates its whole ring
/// up front (~32 bytes a slot), so a topic per user or per record starts small.
const SMALL_CAPACITY: usize = 16;
/// Past this many local clients a topic's ring grows to `hub_capacity` (the clients that
/// joined before keep theirs: each gets every event from one of them).
const SMALL_MEMBERS: usize = 4;

#[derive(Debug)]
struct Slot {
    /// Fan-out to this topic's local clients joining now. Full: the oldest event is
    /// overwritten for a lagging client, which gets `Lagged` and catches up from the
    /// stream.
    events_tx: broadcast::Sender<Arc<LiveEvent>>,
    /// Smaller rings clients still hold from before the topic grew; every event goes to
    /// each, and one is dropped when its last receiver is gone. At most one per growth:
    /// one, as a topic grows once.
    outgrown: Vec<broadcast::Sender<Arc<LiveEvent>>>,
    members: usize,
    /// True once Redis has confirmed the subscription (always, on the embedded store).
    confirmed_tx: watch::Sender<bool>,
}

/// The local fan-out of every topic this pod's clients watch.
#[derive(Debug)]
pub struct Hub {
    slots: Mutex<HashMap<Topic, Slot>>,
    /// Wakes the subscription task when the set of wanted topics changes.
    changed: Notify,
    capacity: usize,
    confirm: Confirm,
}

/// When a topic's clients may start: at once, or once Redis confirmed the subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// The embedded store: a topic is "subscribed" as soon as it is wanted.
    OnJoin,
    /// A fleet pod: [`Hub::confirm`] marks a topic once Redis acknowledged it.
    BySubscription,
}

impl Hub {
    pub fn new(capacity: usize, confirm: Confirm) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            capacity,
            confirm,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Topic, Slot>> {
        // Plain data; a panic elsewhere must not stop delivery.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a local client of `topic`. Its receiver sees every event delivered from now.
    pub fn join(self: &Arc<Self>, topic: &Topic) -> Membership {
        let mut slots = self.lock();
        let mut added = false;
        let small = self.capacity.min(SMALL_CAPACITY);
        let slot = slots.entry(topic.clone()).or_insert_with(|| {
            added = true;
            let (events_tx, _) = broadcast::channel(small);
            let (confirmed_tx, _) = watch::channel(self.confirm == Confirm::OnJoin);
            Slot {
                events_tx,
                outgrown: Vec::new(),
                members: 0,
                confirmed_tx,
            }
        });
        slot.members += 1;
        if slot.members > SMALL_MEMBERS && small < self.capacity && slot.outgrown.is_empty() {
            let (grown, _) = broadcast::channel(self.capacity);
            let outgrown = std::mem::replace(&mut slot.events_tx, grown);
            slot.outgrown.push(outgrown);
        }
        let membership = Membership {
            guard: TopicGuard {
                hub: Arc::clone(self),
                topic: topic.clone(),
            },
            events_rx: slot.events_tx.subscribe(),
            confirmed_rx: slot.confirmed_tx.subscribe(),
        };
        drop(slots);
        if added {
            self.changed.notify_one();
        }
        membership
    }

    fn leave(&self, topic: &Topic) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(topic) else {
            return;
        };
        slot.members -= 1;
        if slot.members == 0 {
            slots.remove(topic);
            drop(slots);
            self.changed.notify_one();
        }
    }

    /// Hands an event to the topic's local clients, if it has any. Never waits.
    pub fn deliver(&self, topic: &Topic, event: LiveEvent) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(topic) {
            let event = Arc::new(event);
            // No receiver left is fine: the last client is leaving.
            let _ = slot.events_tx.send(Arc::clone(&event));
            if !slot.outgrown.is_empty() {
                slot.outgrown
                    .retain(|tx| tx.send(Arc::clone(&event)).is_ok());
            }
        }
    }

    /// The topics local clients want now.
    pub fn wanted(&self) -> Vec<Topic> {
        self.lock().keys().cloned().collect()
    }

    /// Marks `topic` as subscribed (or not) in Redis.
    pub fn confirm(&self, topic: &Topic, confirmed: bool) {
        if let Some(slot) = self.lock().get(topic) {
            // Waiters are woken only by a change (this runs for every topic on every
            // reconcile).
            slot.confirmed_tx.send_if_modified(|c| {
                let changed = *c != confirmed;
                *c = confirmed;
                changed
            });
        }
    }

    /// Whether every wanted topic is confirmed.
    pub fn all_confirmed(&self) -> bool {
        self.lock().values().all(|slot| *slot.confirmed_tx.borrow())
    }

    /// Resolves when the set of wanted topics may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A local client's place in a topic's fan-out. Dropping it (its `guard`) leaves the topic.
#[derive(Debug)]
pub struct Membership {
    pub guard: TopicGuard,
    pub events_rx: broadcast::Receiver<Arc<LiveEvent>>,
    confirmed_rx: watch::Receiver<bool>,
}

impl Membership {
    /// Waits until Redis confirmed the topic's subscription; `false` after `timeout`.
    pub async fn confirmed(&mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.confirmed_rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Keeps a topic wanted by this pod while a client holds it.
#[derive(Debug)]
pub struct TopicGuard {
    hub: Arc<Hub>,
    topic: Topic,
}

impl Drop for TopicGuard {
    fn drop(&mut self) {
        self.hub.leave(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::EventId;

    #[test]
    fn first_join_and_last_leave_change_the_wanted_set() {
        let hub = Hub::new(4, Confirm::BySubscription);
        let t = Topic::new("A").unwrap();
        let a = hub.join(&t);
        let b = hub.join(&t);
        assert_eq!(hub.wanted(), std::slice::from_ref(&t));
        assert!(!hub.all_confirmed());
        hub.confirm(&t, true);
        assert!(hub.all_confirmed());
        drop(a);
        assert_eq!(hub.wanted(), std::slice::from_ref(&t));
        drop(b);
        assert!(hub.wanted().is_empty());
    }

    #[tokio::test]
    async fn delivers_one_shared_frame_to_every_member() {
        let hub = Hub::new(4, Confirm::OnJoin);
        let t = Topic::new("A").unwrap();
        let mut a = hub.join(&t);
        let mut b = hub.join(&t);
        assert!(a.confirmed(Duration::from_millis(10)).await);
        hub.deliver(
            &t,
            LiveEvent::new(EventId::new(1, 0), EventId::ZERO, "{}", None),
        );
        let ea = a.events_rx.recv().await.unwrap();
        let eb = b.events_rx.recv().await.unwrap();
        assert!(Arc::ptr_eq(&ea, &eb));
        assert_eq!(&ea.frame[..], b"id: 1-0\nevent: data\ndata: {}\n\n");
    }

    #[tokio::test]
    async fn a_topic_grows_its_ring_past_a_few_members_and_everyone_gets_every_event() {
        let hub = Hub::new(1024, Confirm::OnJoin);
        let t = Topic::new("A").unwrap();
        let mut early: Vec<_> = (0..SMALL_MEMBERS).map(|_| hub.join(&t)).collect();
        assert_eq!(hub.lock()[&t].outgrown.len(), 0);
        let mut late: Vec<_> = (0..3).map(|_| hub.join(&t)).collect();
        assert_eq!(hub.lock()[&t].outgrown.len(), 1, "grown once");
        // More events than the small ring holds: the late members (grown ring) keep them
        // all, the early ones (small ring) are told they lagged.
        for i in 1..=100 {
            hub.deliver(
                &t,
                LiveEvent::new(EventId::new(i, 0), EventId::new(i - 1, 0), "{}", None),
            );
        }
        for m in &mut late {
            for i in 1..=100 {
                assert_eq!(m.events_rx.recv().await.unwrap().id, EventId::new(i, 0));
            }
        }
        for m in &mut early {
            assert!(matches!(
                m.events_rx.recv().await,
                Err(broadcast::error::RecvError::Lagged(84))
            ));
        }
        // Once every early member left, the small ring goes at the next event.
        early.clear();
        hub.deliver(
            &t,
            LiveEvent::new(EventId::new(101, 0), EventId::new(100, 0), "{}", None),
        );
        assert!(hub.lock()[&t].outgrown.is_empty());
        assert_eq!(
            late[0].events_rx.recv().await.unwrap().id,
            EventId::new(101, 0)
        );
    }

    #[tokio::test]
    async fn a_lagging_member_is_told_and_others_are_not_slowed() {
        let hub = Hub::new(2, Confirm::OnJoin);
        let t = Topic::new("A").unwrap();
        let mut slow = hub.join(&t);
        let mut fast = hub.join(&t);
        for i in 1..=3 {
            hub.deliver(
                &t,
                LiveEvent::new(EventId::new(i, 0), EventId::new(i - 1, 0), "{}", None),
            );
            assert_eq!(fast.events_rx.recv().await.unwrap().id, EventId::new(i, 0));
        }
        assert!(matches!(
            slow.events_rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
    }
}
