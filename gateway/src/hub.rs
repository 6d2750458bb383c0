//! [`Hub`]: topic -> local fan-out. Each event is decoded and framed once, then shared
//! (`Arc`) by every local client of its topic through a bounded broadcast.
//!
//! The hub also owns the set of topics this pod needs from Redis: the first client of a
//! topic adds it, the last one leaving removes it, and the subscription task
//! ([`crate::subscription`]) reconciles Redis with that set, confirming each topic once
//! Redis has acknowledged the SUBSCRIBE. Delivery never waits on a client: `send` on a
//! broadcast overwrites the oldest event of a lagging receiver, which that client then
//! reads back from the stream ([`crate::client`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::Topic;
use tokio::sync::{Notify, broadcast};

use crate::event::LiveEvent;

/// The ring of a topic with few local clients: tokio's broadcast allocates its whole ring
/// up front (~40 bytes a slot), so a topic per user or per record starts small.
const SMALL_CAPACITY: usize = 8;
/// Ring slots per local client while a topic is small: a client more than its ring behind
/// catches up from the Redis stream (a read per lagging client), so the ring grows with
/// the clients a burst would send there: 8 slots up to 2 clients, 16 up to 4, 32 up to
/// [`SMALL_MEMBERS`]; past that, `hub_capacity` (1,024 by default), as a topic with many
/// clients is where a burst is costly.
const SLOTS_PER_MEMBER: usize = 4;
/// Past this many local clients a topic's ring is `hub_capacity`.
const SMALL_MEMBERS: usize = 8;

/// The ring a topic with `members` local clients joins: see [`SLOTS_PER_MEMBER`].
fn ring_capacity(members: usize, max: usize) -> usize {
    if members > SMALL_MEMBERS {
        return max;
    }
    (members.next_power_of_two() * SLOTS_PER_MEMBER)
        .max(SMALL_CAPACITY)
        .min(max)
}

#[derive(Debug)]
struct Slot {
    /// Fan-out to this topic's local clients joining now. Full: the oldest event is
    /// overwritten for a lagging client, which gets `Lagged` and catches up from the
    /// stream.
    events_tx: broadcast::Sender<Arc<LiveEvent>>,
    /// Slots of `events_tx`'s ring.
    capacity: usize,
    /// Smaller rings clients still hold from before the topic grew; every event goes to
    /// each, and one is dropped when its last receiver is gone. At most one per growth,
    /// so at most 3 (8, 16 and 32 slots).
    outgrown: Vec<broadcast::Sender<Arc<LiveEvent>>>,
    members: usize,
    /// Set once Redis has confirmed the subscription (always, on the embedded store).
    confirmation: Arc<Confirmation>,
}

/// Whether Redis confirmed a topic's subscription, and a wake-up for the clients waiting
/// for it: a flag and one `Notify`, ~60 bytes a topic (a `watch` channel, with its
/// eight-way notifier, is ~350).
#[derive(Debug)]
struct Confirmation {
    confirmed: AtomicBool,
    /// Woken (every waiter) when `confirmed` becomes true.
    changed: Notify,
}

impl Confirmation {
    fn is_set(&self) -> bool {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Sets the flag; waiters wait for true, and are woken only by that change.
    fn set(&self) {
        if !self.confirmed.swap(true, Ordering::SeqCst) {
            self.changed.notify_waiters();
        }
    }
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
        let slot = slots.entry(topic.clone()).or_insert_with(|| {
            added = true;
            let capacity = ring_capacity(1, self.capacity);
            let (events_tx, _) = broadcast::channel(capacity);
            Slot {
                events_tx,
                capacity,
                outgrown: Vec::new(),
                members: 0,
                confirmation: Arc::new(Confirmation {
                    confirmed: AtomicBool::new(self.confirm == Confirm::OnJoin),
                    changed: Notify::new(),
                }),
            }
        });
        slot.members += 1;
        let capacity = ring_capacity(slot.members, self.capacity);
        if capacity > slot.capacity {
            let (grown, _) = broadcast::channel(capacity);
            let outgrown = std::mem::replace(&mut slot.events_tx, grown);
            slot.outgrown.push(outgrown);
            slot.capacity = capacity;
        }
        let membership = Membership {
            guard: TopicGuard {
                hub: Arc::clone(self),
                topic: topic.clone(),
                ring: slot.capacity,
            },
            events_rx: slot.events_tx.subscribe(),
            confirmation: Arc::clone(&slot.confirmation),
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
            shrink_sparse!(*slots);
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

    /// Confirms every wanted topic not confirmed yet that is in `subscribed` (Redis has
    /// it): new ones once their SUBSCRIBE is answered, ones whose subscription was lost
    /// once it is made again, and ones that came back while their subscription lingered.
    /// One pass under one lock, over the topics only.
    pub fn confirm_subscribed(&self, subscribed: &HashSet<Topic>) {
        for (topic, slot) in self.lock().iter() {
            if !slot.confirmation.is_set() && subscribed.contains(topic) {
                slot.confirmation.set();
            }
        }
    }

    /// Marks `topic` as subscribed (or not) in Redis.
    pub fn confirm(&self, topic: &Topic, confirmed: bool) {
        if let Some(slot) = self.lock().get(topic) {
            if confirmed {
                slot.confirmation.set();
            } else {
                slot.confirmation.confirmed.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Whether every wanted topic is confirmed.
    pub fn all_confirmed(&self) -> bool {
        self.lock().values().all(|slot| slot.confirmation.is_set())
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
    confirmation: Arc<Confirmation>,
}

impl Membership {
    /// Waits until Redis confirmed the topic's subscription; `false` after `timeout`.
    pub async fn confirmed(&mut self, timeout: Duration) -> bool {
        let confirmation = &self.confirmation;
        let wait = async {
            loop {
                // Made before the check: a `notify_waiters` after it wakes this one.
                let changed = confirmation.changed.notified();
                if confirmation.is_set() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}

/// Keeps a topic wanted by this pod while a client holds it.
#[derive(Debug)]
pub struct TopicGuard {
    hub: Arc<Hub>,
    topic: Topic,
    /// Slots of the ring this client's receiver is on.
    ring: usize,
}

impl TopicGuard {
    /// A receiver on the topic's current ring, if it has grown past this client's since
    /// it joined: a client that lagged on a small ring moves to the big one, so an early
    /// client of a topic that became hot does not fall back to the stream at every burst.
    /// The new receiver starts at the next event; what came between is the client's to
    /// read from the stream (it lagged, so it catches up anyway).
    pub fn grown_ring(&mut self) -> Option<broadcast::Receiver<Arc<LiveEvent>>> {
        let slots = self.hub.lock();
        let slot = slots.get(&self.topic)?;
        if slot.capacity <= self.ring {
            return None;
        }
        self.ring = slot.capacity;
        Some(slot.events_tx.subscribe())
    }
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
        hub.confirm_subscribed(&HashSet::new());
        assert!(!hub.all_confirmed(), "not subscribed: not confirmed");
        hub.confirm_subscribed(&HashSet::from([t.clone()]));
        assert!(hub.all_confirmed());
        hub.confirm(&t, false);
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

    #[test]
    fn a_ring_grows_with_the_members_up_to_the_hub_capacity() {
        let sizes: Vec<usize> = [1, 2, 3, 4, 5, 8, 9, 100, 256, 257, 10_000]
            .iter()
            .map(|&m| ring_capacity(m, 1024))
            .collect();
        assert_eq!(sizes, [8, 8, 16, 16, 32, 32, 1024, 1024, 1024, 1024, 1024]);
        assert_eq!(ring_capacity(1, 4), 4, "never above hub_capacity");
    }

    #[tokio::test]
    async fn a_topic_grows_its_ring_with_its_members_and_everyone_gets_every_event() {
        let hub = Hub::new(1024, Confirm::OnJoin);
        let t = Topic::new("A").unwrap();
        // 100 members, each on the ring of the topic when it joined: 8, 8, 16, 16, 32 x 4,
        // then 1,024.
        let mut members: Vec<(Membership, usize)> = (1..=100)
            .map(|n| (hub.join(&t), ring_capacity(n, 1024)))
            .collect();
        assert_eq!(hub.lock()[&t].capacity, 1024);
        assert_eq!(hub.lock()[&t].outgrown.len(), 3, "8, 16, 32");
        // More events than the small rings hold: members of rings of 100 or more keep
        // them all, the others are told they lagged by what their ring could not hold.
        for i in 1..=100 {
            hub.deliver(
                &t,
                LiveEvent::new(EventId::new(i, 0), EventId::new(i - 1, 0), "{}", None),
            );
        }
        for (m, ring) in &mut members {
            if *ring >= 100 {
                for i in 1..=100 {
                    assert_eq!(m.events_rx.recv().await.unwrap().id, EventId::new(i, 0));
                }
            } else {
                let lagged = 100 - *ring as u64;
                assert!(matches!(
                    m.events_rx.recv().await,
                    Err(broadcast::error::RecvError::Lagged(n)) if n == lagged
                ));
            }
        }
        // Once every member of a ring left, it goes at the next event.
        members.retain(|(_, ring)| *ring >= 16);
        hub.deliver(
            &t,
            LiveEvent::new(EventId::new(101, 0), EventId::new(100, 0), "{}", None),
        );
        assert_eq!(hub.lock()[&t].outgrown.len(), 2, "16 and 32 have members");
        for (m, _) in members.iter_mut().filter(|(_, ring)| *ring >= 100) {
            assert_eq!(m.events_rx.recv().await.unwrap().id, EventId::new(101, 0));
        }
    }

    #[tokio::test]
    async fn a_member_of_an_outgrown_ring_moves_to_the_grown_one() {
        let hub = Hub::new(1024, Confirm::OnJoin);
        let t = Topic::new("A").unwrap();
        let mut first = hub.join(&t);
        assert!(first.guard.grown_ring().is_none(), "not grown yet");
        let _others: Vec<_> = (0..99).map(|_| hub.join(&t)).collect();
        let mut moved = first.guard.grown_ring().expect("grown to 1,024");
        assert!(first.guard.grown_ring().is_none(), "moved once");
        drop(first.events_rx);
        for i in 1..=100 {
            hub.deliver(
                &t,
                LiveEvent::new(EventId::new(i, 0), EventId::new(i - 1, 0), "{}", None),
            );
        }
        for i in 1..=100 {
            assert_eq!(moved.recv().await.unwrap().id, EventId::new(i, 0));
        }
    }

    #[tokio::test]
    async fn a_client_waits_for_the_confirmation_and_is_woken_by_it() {
        let hub = Hub::new(4, Confirm::BySubscription);
        let t = Topic::new("A").unwrap();
        let mut m = hub.join(&t);
        assert!(!m.confirmed(Duration::from_millis(5)).await);
        let waiting = tokio::spawn(async move { m.confirmed(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        hub.confirm(&t, true);
        assert!(waiting.await.unwrap());
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
