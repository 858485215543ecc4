//! The renewal timer's queue: one heap of wake-up times for every slot of a broker, served
//! by one task ([`super::renew`]), instead of a sleeping task per key. A task per key cost
//! about 900 bytes and a timer entry; an entry here costs 16 bytes.

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

use super::slot::Slot;

/// When each slot is next looked at. A slot's own state records the one wake-up that
/// counts ([`super::slot::SlotState::wake`]); entries left behind by a rescheduling are
/// skipped when they come up.
#[derive(Debug)]
pub(super) struct Timer {
    heap: Mutex<BinaryHeap<Entry>>,
    /// Wakes the timer task when an entry earlier than all others arrives.
    earlier: Notify,
    /// Entries count their time from here: 8 bytes, where an `Instant` takes 16.
    origin: Instant,
}

#[derive(Debug)]
struct Entry {
    at: WakeAt,
    slot: Weak<Slot>,
}

/// A time on a timer: one nanosecond more than the time since its origin (so never zero:
/// an `Option<WakeAt>` takes 8 bytes in every slot, where an `Option<Instant>` takes 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct WakeAt(NonZeroU64);

impl Default for Timer {
    fn default() -> Self {
        Self {
            heap: Mutex::default(),
            earlier: Notify::new(),
            origin: Instant::now(),
        }
    }
}

// The heap is a max-heap: the earliest instant is the greatest entry.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Entry {}

impl Timer {
    /// `at` on this timer (the origin for an instant before it: due at once).
    fn wake_at(&self, at: Instant) -> WakeAt {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        WakeAt(NonZeroU64::MIN.saturating_add(nanos))
    }

    fn instant(&self, at: WakeAt) -> Instant {
        self.origin + Duration::from_nanos(at.0.get() - 1)
    }

    /// Sets when `slot` is next looked at; `None`: not until something changes.
    pub fn set(&self, slot: &Arc<Slot>, at: Option<Instant>) {
        let at = at.map(|at| self.wake_at(at));
        {
            let mut state = slot.state();
            if state.wake == at {
                return;
            }
            state.wake = at;
        }
        let Some(at) = at else { return };
        let mut heap = self.heap.lock_unpoisoned();
        let earliest = heap.peek().is_none_or(|first| at < first.at);
        heap.push(Entry {
            at,
            slot: Arc::downgrade(slot),
        });
        drop(heap);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// Takes out the slots due at `now` (each one's wake-up is cleared), and says when the
    /// next one is due.
    pub fn due(&self, now: Instant) -> (Vec<Arc<Slot>>, Option<Instant>) {
        let now = self.wake_at(now);
        let mut heap = self.heap.lock_unpoisoned();
        let mut due = Vec::new();
        while let Some(first) = heap.peek()
            && first.at <= now
        {
            let Some(entry) = heap.pop() else { break };
            let Some(slot) = entry.slot.upgrade() else {
                continue;
            };
            let mut state = slot.state();
            if state.wake == Some(entry.at) && !state.retired {
                state.wake = None;
                drop(state);
                due.push(slot);
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

    fn slot(user: &str) -> Arc<Slot> {
        Slot::detached_user(user)
    }

    #[test]
    fn slots_come_due_in_order_and_only_at_their_latest_time() {
        let timer = Timer::default();
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let (a, b, c) = (slot("a"), slot("b"), slot("c"));
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
        let keys: Vec<_> = due.iter().map(|d| d.key.to_string()).collect();
        assert_eq!(keys, ["user \"a\" of org acme", "user \"c\" of org acme"]);
        assert_eq!(next, Some(s(30)));
        // Due slots have no wake-up until one is set again.
        assert_eq!(a.state().wake, None);
        let (due, next) = timer.due(s(40));
        assert!(due.is_empty() && next.is_none());
        assert_eq!(timer.len(), 0);
    }

    #[test]
    fn retired_and_dropped_slots_never_come_due() {
        let timer = Timer::default();
        let t0 = Instant::now();
        let (a, b) = (slot("a"), slot("b"));
        timer.set(&a, Some(t0));
        timer.set(&b, Some(t0));
        a.retire();
        drop(b);
        let (due, _) = timer.due(t0);
        assert!(due.is_empty());
    }
}
