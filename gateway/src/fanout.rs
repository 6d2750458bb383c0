//! [`channel`]: one topic's local fan-out, a bounded broadcast whose memory follows its
//! use. `tokio::sync::broadcast` allocates its whole ring when the channel is made (1,024
//! slots of ~32 bytes for the default `hub_capacity`: ~33 KiB for every topic, even one
//! with a single quiet subscriber). This ring holds only the events some receiver has not
//! read yet: empty, it owns no buffer; it grows with a burst, up to `capacity`, and gives
//! the memory back once every receiver has read the burst.
//!
//! The semantics are the broadcast's: every receiver sees every event sent after it
//! subscribed, in order; the sender never waits; when `capacity` events are unread by
//! some receiver, the next send drops the oldest, and that receiver's next poll says how
//! many it missed ([`Lagged`]), after which it reads on from the oldest event still held.
//! The gateway then reads what it missed from the topic's stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A receiver missed this many events (they were dropped to stay within `capacity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lagged(pub u64);

/// Below this, an emptied ring keeps its buffer (a steady trickle does not reallocate).
const KEEP_EMPTY: usize = 16;

/// A new fan-out holding at most `capacity` unread events.
///
/// # Panics
/// If `capacity` is 0.
pub fn channel<T: Clone>(capacity: usize) -> Sender<T> {
    assert!(capacity > 0, "a fan-out holds at least one event");
    Sender {
        shared: Arc::new(Shared {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                head: 0,
                capacity,
                receivers: 0,
                wakers: Vec::new(),
                free: Vec::new(),
                waiting: Vec::new(),
                listed: Vec::new(),
                closed: false,
            }),
        }),
    }
}

#[derive(Debug)]
struct Shared<T> {
    ring: Mutex<Ring<T>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Ring<T>> {
        // Plain data, consistent between statements; a panic elsewhere must not stop
        // delivery.
        self.ring
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Ring<T> {
    /// Events some receiver has not read, oldest first. Bounded by `capacity`: a send to a
    /// full ring drops the oldest (its laggards are told, see [`Lagged`]).
    entries: VecDeque<Entry<T>>,
    /// The sequence number of `entries[0]` (of the next event sent, when empty).
    head: u64,
    capacity: usize,
    receivers: usize,
    /// The receivers waiting for an event, by the slot each holds; `free` lists the
    /// unused slots. As long as the most receivers this topic had at once.
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
    /// The slots that hold a waker, so a send touches only the receivers that wait (not
    /// the ones whose clients are busy or stalled). Each slot at most once (`listed`): a
    /// slot freed while listed stays listed for its next receiver.
    waiting: Vec<usize>,
    listed: Vec<bool>,
    closed: bool,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    /// The receivers that have yet to read it; at 0 it is dropped from the front.
    unread: usize,
}

impl<T> Ring<T> {
    fn tail(&self) -> u64 {
        self.head + self.entries.len() as u64
    }

    /// Drops the events every receiver has read, and an emptied buffer's memory.
    fn trim(&mut self) {
        while self.entries.front().is_some_and(|e| e.unread == 0) {
            self.entries.pop_front();
            self.head += 1;
        }
        if self.entries.is_empty() && self.entries.capacity() > KEEP_EMPTY {
            self.entries = VecDeque::new();
        }
    }

    /// A receiver at `next` no longer reads the events from there on.
    fn forget(&mut self, next: u64) {
        let from = next.saturating_sub(self.head);
        for entry in self.entries.iter_mut().skip(from as usize) {
            entry.unread -= 1;
        }
        self.trim();
    }

    fn wake_all(&mut self) -> Vec<Waker> {
        let mut wake = Vec::with_capacity(self.waiting.len());
        for slot in self.waiting.drain(..) {
            self.listed[slot] = false;
            if let Some(waker) = self.wakers.get_mut(slot).and_then(Option::take) {
                wake.push(waker);
            }
        }
        wake
    }
}

/// The sending half, held by the hub. Dropping it ends every receiver (after the events
/// they have not read).
#[derive(Debug)]
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Clone> Sender<T> {
    /// A receiver of every event sent from now on.
    pub fn subscribe(&self) -> Receiver<T> {
        let mut ring = self.shared.lock();
        ring.receivers += 1;
        let slot = match ring.free.pop() {
            Some(slot) => slot,
            None => {
                ring.wakers.push(None);
                ring.listed.push(false);
                ring.wakers.len() - 1
            }
        };
        Receiver {
            shared: Arc::clone(&self.shared),
            next: ring.tail(),
            slot,
        }
    }

    /// Hands `value` to every receiver; never waits. With none, it is dropped.
    pub fn send(&self, value: T) {
        let wake = {
            let mut ring = self.shared.lock();
            if ring.receivers == 0 {
                return;
            }
            if ring.entries.len() == ring.capacity {
                // Full: the oldest goes; whoever had not read it is told it lagged.
                ring.entries.pop_front();
                ring.head += 1;
            }
            let unread = ring.receivers;
            ring.entries.push_back(Entry { value, unread });
            ring.wake_all()
        };
        // Woken outside the lock: a woken task may run at once on another thread.
        for waker in wake {
            waker.wake();
        }
    }

    /// How many receivers there are now.
    pub fn receiver_count(&self) -> usize {
        self.shared.lock().receivers
    }

    /// How many events the ring holds now, and its buffer's capacity (for memory checks).
    pub fn held(&self) -> (usize, usize) {
        let ring = self.shared.lock();
        (ring.entries.len(), ring.entries.capacity())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let wake = {
            let mut ring = self.shared.lock();
            ring.closed = true;
            ring.wake_all()
        };
        for waker in wake {
            waker.wake();
        }
    }
}

/// One subscriber's place in the fan-out.
#[derive(Debug)]
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The sequence number of the next event this receiver reads.
    next: u64,
    /// Its place in the ring's wakers.
    slot: usize,
}

impl<T: Clone> Receiver<T> {
    /// The next event: `Ready(Some(Ok))`, `Ready(Some(Err(Lagged)))` after events were
    /// dropped before this receiver read them, `Ready(None)` once the sender is gone and
    /// everything was read, or `Pending` (woken by the next send).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Lagged>>> {
        let mut ring = self.shared.lock();
        if self.next < ring.head {
            let missed = ring.head - self.next;
            self.next = ring.head;
            return Poll::Ready(Some(Err(Lagged(missed))));
        }
        if self.next < ring.tail() {
            let at = (self.next - ring.head) as usize;
            let entry = &mut ring.entries[at];
            let value = entry.value.clone();
            entry.unread -= 1;
            self.next += 1;
            ring.trim();
            return Poll::Ready(Some(Ok(value)));
        }
        if ring.closed {
            return Poll::Ready(None);
        }
        let slot = self.slot;
        match &mut ring.wakers[slot] {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => *w = cx.waker().clone(),
            empty => {
                *empty = Some(cx.waker().clone());
                if !ring.listed[slot] {
                    ring.listed[slot] = true;
                    ring.waiting.push(slot);
                }
            }
        }
        Poll::Pending
    }

    /// [`Receiver::poll_recv`] as a future.
    pub async fn recv(&mut self) -> Option<Result<T, Lagged>> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut ring = self.shared.lock();
        ring.receivers -= 1;
        ring.wakers[self.slot] = None;
        let slot = self.slot;
        ring.free.push(slot);
        if ring.receivers == 0 {
            // Nobody left to wait for: the slots and events go.
            ring.wakers = Vec::new();
            ring.free = Vec::new();
            ring.waiting = Vec::new();
            ring.listed = Vec::new();
            let tail = ring.tail();
            ring.entries = VecDeque::new();
            ring.head = tail;
            return;
        }
        ring.forget(self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<T: Clone>(rx: &mut Receiver<T>) -> Poll<Option<Result<T, Lagged>>> {
        rx.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn every_receiver_sees_every_later_event_in_order() {
        let tx = channel(4);
        let mut a = tx.subscribe();
        tx.send(1);
        let mut b = tx.subscribe();
        tx.send(2);
        tx.send(3);
        assert_eq!(poll(&mut a), Poll::Ready(Some(Ok(1))));
        assert_eq!(poll(&mut a), Poll::Ready(Some(Ok(2))));
        assert_eq!(poll(&mut b), Poll::Ready(Some(Ok(2))));
        assert_eq!(poll(&mut b), Poll::Ready(Some(Ok(3))));
        assert_eq!(poll(&mut b), Poll::Pending);
        assert_eq!(poll(&mut a), Poll::Ready(Some(Ok(3))));
        assert_eq!(poll(&mut a), Poll::Pending);
        assert_eq!(tx.held(), (0, tx.held().1), "read by all: nothing held");
    }

    #[test]
    fn a_lagging_receiver_is_told_how_many_it_missed_and_reads_on() {
        let tx = channel(2);
        let mut slow = tx.subscribe();
        let mut fast = tx.subscribe();
        for i in 1..=5 {
            tx.send(i);
            assert_eq!(poll(&mut fast), Poll::Ready(Some(Ok(i))));
        }
        assert_eq!(tx.held().0, 2, "bounded by the capacity");
        assert_eq!(poll(&mut slow), Poll::Ready(Some(Err(Lagged(3)))));
        assert_eq!(poll(&mut slow), Poll::Ready(Some(Ok(4))));
        assert_eq!(poll(&mut slow), Poll::Ready(Some(Ok(5))));
        assert_eq!(poll(&mut slow), Poll::Pending);
    }

    #[test]
    fn memory_follows_the_unread_events() {
        let tx = channel(1024);
        let mut rx = tx.subscribe();
        assert_eq!(tx.held(), (0, 0), "an idle topic owns no buffer");
        for i in 0..500 {
            tx.send(i);
        }
        assert_eq!(tx.held().0, 500);
        while let Poll::Ready(Some(Ok(_))) = poll(&mut rx) {}
        assert_eq!(
            tx.held(),
            (0, 0),
            "a burst's memory is given back once read"
        );
        // A receiver leaving gives back what only it had left to read.
        let mut other = tx.subscribe();
        tx.send(1);
        tx.send(2);
        assert_eq!(poll(&mut other), Poll::Ready(Some(Ok(1))));
        drop(rx);
        assert_eq!(tx.held().0, 1);
        drop(other);
        assert_eq!(tx.held(), (0, 0));
        tx.send(3);
        assert_eq!(tx.held(), (0, 0), "no receiver: nothing kept");
    }

    #[test]
    fn the_end_comes_after_the_unread_events() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        tx.send(1);
        drop(tx);
        assert_eq!(poll(&mut rx), Poll::Ready(Some(Ok(1))));
        assert_eq!(poll(&mut rx), Poll::Ready(None));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send() {
        let tx = channel(4);
        let mut rx = tx.subscribe();
        let task = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.send(7);
        assert_eq!(task.await.unwrap(), Some(Ok(7)));
    }

    /// A waker that counts its wakes.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Random sends, subscribes, reads and drops against a model: each receiver gets the
    /// events sent since it subscribed, in order, with gaps only where it was told how
    /// many it missed; a receiver left waiting is woken by the next send; the ring never
    /// holds more than its capacity, nor anything once every receiver has read it all.
    #[test]
    fn random_use_matches_the_model() {
        for seed in 1..=20_u64 {
            let mut state = seed;
            let mut rand = move |n: u64| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % n
            };
            let capacity = 1 + rand(8) as usize;
            let tx = channel::<u64>(capacity);
            // (receiver, next value it must see at least, its wake counter, waiting)
            let mut rxs: Vec<(Receiver<u64>, u64, Arc<Count>, bool)> = Vec::new();
            let mut sent = 0_u64;
            for _ in 0..2000 {
                match rand(10) {
                    0..=3 => {
                        tx.send(sent);
                        sent += 1;
                        for (_, _, count, waiting) in &mut rxs {
                            if *waiting {
                                assert_eq!(
                                    count.0.load(std::sync::atomic::Ordering::SeqCst),
                                    1,
                                    "seed {seed}: woken"
                                );
                                count.0.store(0, std::sync::atomic::Ordering::SeqCst);
                                *waiting = false;
                            }
                        }
                    }
                    4 => {
                        let count = Arc::new(Count(0.into()));
                        rxs.push((tx.subscribe(), sent, count, false));
                    }
                    5 if !rxs.is_empty() => {
                        let at = rand(rxs.len() as u64) as usize;
                        rxs.swap_remove(at);
                    }
                    _ if !rxs.is_empty() => {
                        let at = rand(rxs.len() as u64) as usize;
                        let (rx, next, count, waiting) = &mut rxs[at];
                        let waker = Waker::from(count.clone());
                        match rx.poll_recv(&mut Context::from_waker(&waker)) {
                            Poll::Ready(Some(Ok(v))) => {
                                assert_eq!(v, *next, "seed {seed}: in order, none skipped");
                                *next += 1;
                            }
                            Poll::Ready(Some(Err(Lagged(n)))) => {
                                assert!(n > 0);
                                *next += n;
                            }
                            Poll::Ready(None) => panic!("seed {seed}: the sender is alive"),
                            Poll::Pending => {
                                assert_eq!(*next, sent, "seed {seed}: pending only when read up");
                                *waiting = true;
                            }
                        }
                    }
                    _ => {}
                }
                assert!(tx.held().0 <= capacity, "seed {seed}: bounded");
                let behind = rxs.iter().map(|r| sent - r.1).max().unwrap_or(0);
                assert!(
                    tx.held().0 as u64 <= behind,
                    "seed {seed}: only unread events held"
                );
            }
        }
    }

    #[test]
    fn waker_slots_are_reused() {
        let tx = channel::<u8>(4);
        for _ in 0..100 {
            let mut rx = tx.subscribe();
            assert_eq!(poll(&mut rx), Poll::Pending);
        }
        let a = tx.subscribe();
        let b = tx.subscribe();
        assert_eq!(
            (a.slot, b.slot),
            (0, 1),
            "at most as many slots as receivers at once"
        );
    }
}

#[cfg(test)]
mod stress {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_keep_up_beside_stalled_receivers() {
        let tx = Arc::new(channel::<u64>(1024));
        let _stalled: Vec<_> = (0..1000).map(|_| tx.subscribe()).collect();
        let mut readers = Vec::new();
        for _ in 0..20 {
            let mut rx = tx.subscribe();
            readers.push(tokio::spawn(async move {
                let mut last = None;
                loop {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
                        Ok(Some(Ok(v))) => {
                            last = Some(v);
                            if v == 9_999 {
                                return Ok(());
                            }
                        }
                        Ok(Some(Err(Lagged(_)))) => {}
                        Ok(None) => return Err(format!("closed after {last:?}")),
                        Err(_) => return Err(format!("stuck after {last:?}")),
                    }
                }
            }));
        }
        for i in 0..10_000 {
            tx.send(i);
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        for reader in readers {
            reader.await.unwrap().unwrap();
        }
    }
}
