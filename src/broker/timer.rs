//! The renewal timer's queue: one heap of wake-up times for every slot of a broker, served
//! by one task ([`super::renew`]), instead of a sleeping task per key. A task per key cost
//! about 900 bytes and a timer entry; an entry here costs 16 bytes. The queue knows its
//! items only through [`Timed`] (the slot implements it): it depends on nothing else of
//! the broker's.

use crate::sync::LockUnpoisoned;
use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    num::NonZeroU64,
    sync::{Arc, Mutex, Weak},
};

use tokio::{
    sync::Notify,
    time::{Duration, Instant},
};

/// What the timer schedules: an item that records its own one wake-up that counts, so
/// that entries left behind by a rescheduling are skipped when they come up.
pub(super) trait Timed {
    /// Records `at` as the item's wake-up; false if it was that already (nothing to queue).
    fn set_wake(&self, at: Option<WakeAt>) -> bool;
    /// Whether `at` is still the item's wake-up and the item still wants waking: it is due
    /// (its wake-up is cleared). False for a stale entry.
    fn take_wake(&self, at: WakeAt) -> bool;
}

/// When each item (a slot) is next looked at.
#[derive(Debug)]
pub(super) struct Timer<T> {
    heap: Mutex<BinaryHeap<Entry<T>>>,
    /// Wakes the timer task when an entry earlier than all others arrives.
    earlier: Notify,
    /// Entries count their time from here: 8 bytes, where an `Instant` takes 16.
    origin: Instant,
}

#[derive(Debug)]
struct Entry<T> {
    at: WakeAt,
    item: Weak<T>,
}

/// A time on a timer: one nanosecond more than the time since its origin (so never zero:
/// an `Option<WakeAt>` takes 8 bytes in every slot, where an `Option<Instant>` takes 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct WakeAt(NonZeroU64);

impl<T> Default for Timer<T> {
    fn default() -> Self {
        Self {
            heap: Mutex::default(),
            earlier: Notify::new(),
            origin: Instant::now(),
        }
    }
}

// The heap is a max-heap: the earliest instant is the greatest entry.
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl<T> Eq for Entry<T> {}

impl<T: Timed> Timer<T> {
    /// `at` on this timer (the origin for an instant before it: due at once).
    fn wake_at(&self, at: Instant) -> WakeAt {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        WakeAt(NonZeroU64::MIN.saturating_add(nanos))
    }

    fn instant(&self, at: WakeAt) -> Instant {
        self.origin + Duration::from_nanos(at.0.get() - 1)
    }

    /// Sets when `item` is next looked at; `None`: not until something changes.
    pub fn set(&self, item: &Arc<T>, at: Option<Instant>) {
        let at = at.map(|at| self.wake_at(at));
        if !item.set_wake(at) {
            return;
        }
        let Some(at) = at else { return };
        let mut heap = self.heap.lock_unpoisoned();
        let earliest = heap.peek().is_none_or(|first| at < first.at);
        heap.push(Entry {
            at,
            item: Arc::downgrade(item),
        });
        drop(heap);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Takes out the items due at `now` (each one's wake-up is cleared), and says when the
    /// next one is due.
    pub fn due(&self, now: Instant) -> (Vec<Arc<T>>, Option<Instant>) {
        let now = self.wake_at(now);
        let mut heap = self.heap.lock_unpoisoned();
        let mut due = Vec::new();
        while let Some(first) = heap.peek()
            && first.at <= now
        {
            let Some(entry) = heap.pop() else { break };
            let Some(item) = entry.item.upgrade() else {
                continue;
            };
            if item.take_wake(entry.at) {
                due.push(item);
            }
        }
        (due, heap.peek().map(|first| self.instant(first.at)))
    }

    /// Resolves when an entry earlier than the others was set since the last call.
    pub async fn earlier_entry(&self) {
        self.earlier.notified().await;
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.lock_unpoisoned().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An item of the timer's own: its wake-up, and whether it still wants waking.
    #[derive(Debug, Default)]
    struct Item {
        wake: Mutex<Option<WakeAt>>,
        retired: std::sync::atomic::AtomicBool,
    }

    impl Timed for Item {
        fn set_wake(&self, at: Option<WakeAt>) -> bool {
            let mut wake = self.wake.lock_unpoisoned();
            at != std::mem::replace(&mut *wake, at)
        }
        fn take_wake(&self, at: WakeAt) -> bool {
            let retired = self.retired.load(std::sync::atomic::Ordering::Relaxed);
            let mut wake = self.wake.lock_unpoisoned();
            let due = *wake == Some(at) && !retired;
            if due {
                *wake = None;
            }
            due
        }
    }

    #[test]
    fn items_come_due_in_order_and_only_at_their_latest_time() {
        let timer = Timer::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let (a, b, c) = (
            Arc::new(Item::default()),
            Arc::new(Item::default()),
            Arc::new(Item::default()),
        );
        timer.set(&a, Some(s(30)));
        timer.set(&b, Some(s(10)));
        timer.set(&c, Some(s(20)));
        // Rescheduled: a's entry at 30 is stale; b no longer wants a wake-up.
        timer.set(&a, Some(s(5)));
        timer.set(&b, None);
        // The same time again adds nothing.
        timer.set(&c, Some(s(20)));
        assert_eq!(timer.len(), 4);

        let (due, next) = timer.due(s(4));
        assert!(due.is_empty());
        assert_eq!(next, Some(s(5)));
        let (due, next) = timer.due(s(25));
        assert_eq!(due.len(), 2);
        assert!(Arc::ptr_eq(&due[0], &a) && Arc::ptr_eq(&due[1], &c));
        assert_eq!(next, Some(s(30)));
        // Due items have no wake-up until one is set again.
        assert_eq!(*a.wake.lock_unpoisoned(), None);
        let (due, next) = timer.due(s(40));
        assert!(due.is_empty() && next.is_none());
        assert_eq!(timer.len(), 0);
    }

    #[test]
    fn retired_and_dropped_items_never_come_due() {
        let timer = Timer::default();
        let t0 = Instant::now();
        let (a, b) = (Arc::new(Item::default()), Arc::new(Item::default()));
        timer.set(&a, Some(t0));
        timer.set(&b, Some(t0));
        a.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(b);
        let (due, _) = timer.due(t0);
        assert!(due.is_empty());
    }
}
