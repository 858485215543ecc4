//! An org's user slots, found by user id, and the choice of which to drop when the cache
//! is full. The table holds the slots themselves (each knows its user id): 8 bytes an
//! entry, where a map from a copy of the id took 24, for each of up to 100,000 user tokens
//! (BENCHMARKS.md).
//!
//! Eviction is sampled, as Redis approximates LRU: of [`SAMPLE`] slots read from a random
//! place in the table, the longest idle one no stream watches goes. That costs O(1) and
//! no memory; the scan of every slot under the lock it replaces let a full cache take 466
//! new ids/s at 100,000 held while cached calls waited 222 ms. (An exact order, a heap of
//! every slot by last use, cost 24 bytes a slot: 4 MiB at 100,000, past the memory
//! budget.) With at most [`SAMPLE`] slots held the choice is exact.

use crate::sync::RwLockUnpoisoned;
use std::{
    hash::BuildHasher,
    sync::{Arc, RwLock},
};

use hashbrown::HashTable;
use rand::Rng;

use super::slot::Slot;

/// Slots looked at per eviction.
const SAMPLE: usize = 32;

/// An org's user slots, behind their lock, within the cache's cap.
#[derive(Debug)]
pub(super) struct Users {
    slots: RwLock<UserSlots>,
    /// The most held (`cache.max_user_tokens`).
    max: usize,
}

impl Users {
    pub fn new(max: usize) -> Self {
        Self {
            slots: RwLock::default(),
            max,
        }
    }

    /// The slot of `user`, if one is held.
    pub fn get(&self, user: &str) -> Option<Arc<Slot>> {
        self.slots.read_unpoisoned().get(user).cloned()
    }

    /// The slot of `user`, made by `make` (and touched) if none is held; and, when the cache
    /// was full, the one dropped to make room (the idlest of a sample), retired.
    pub fn get_or_insert(
        &self,
        user: &str,
        make: impl FnOnce() -> Arc<Slot>,
    ) -> (Arc<Slot>, Option<Arc<Slot>>) {
        if let Some(slot) = self.get(user) {
            return (slot, None);
        }
        let mut slots = self.slots.write_unpoisoned();
        if let Some(slot) = slots.get(user) {
            return (Arc::clone(slot), None);
        }
        let evicted = if slots.len() >= self.max {
            slots.evict()
        } else {
            None
        };
        if let Some(slot) = &evicted {
            slot.retire();
        }
        let slot = make();
        slot.touch(tokio::time::Instant::now());
        slots.insert(Arc::clone(&slot));
        (slot, evicted)
    }

    /// Adds the slot `make` makes for `user`, unless one is held or the cache is full.
    pub fn insert_new(&self, user: &str, make: impl FnOnce() -> Arc<Slot>) -> Option<Arc<Slot>> {
        let mut slots = self.slots.write_unpoisoned();
        if slots.len() >= self.max || slots.get(user).is_some() {
            return None;
        }
        // Not touched: a restored slot counts as unused until a caller comes.
        let slot = make();
        slots.insert(Arc::clone(&slot));
        Some(slot)
    }

    /// Removes `slot` if it is still the one held for its user; true if it was.
    pub fn remove(&self, slot: &Arc<Slot>) -> bool {
        let mut slots = self.slots.write_unpoisoned();
        let Some(user) = &slot.key.user else {
            return false;
        };
        if slots.get(user).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(user);
            return true;
        }
        false
    }

    /// Every slot held now.
    pub fn all(&self) -> Vec<Arc<Slot>> {
        self.slots.read_unpoisoned().slots().cloned().collect()
    }

    /// Removes every slot.
    pub fn drain(&self) -> Vec<Arc<Slot>> {
        self.slots.write_unpoisoned().drain().collect()
    }

    /// How many are held, and the subscriptions on them.
    pub fn count(&self) -> (usize, usize) {
        let slots = self.slots.read_unpoisoned();
        (slots.len(), slots.slots().map(|s| s.watchers()).sum())
    }
}

/// User slots by user id.
#[derive(Debug, Default)]
pub(super) struct UserSlots {
    table: HashTable<Arc<Slot>>,
    hasher: std::hash::RandomState,
}

/// The user id's bytes: compared without the UTF-8 check a `&str` would need.
fn user_of(slot: &Slot) -> &[u8] {
    slot.key.user.as_ref().map_or(&[], |u| u.as_bytes())
}

impl UserSlots {
    fn hash(&self, user: &[u8]) -> u64 {
        self.hasher.hash_one(user)
    }

    pub fn get(&self, user: &str) -> Option<&Arc<Slot>> {
        let user = user.as_bytes();
        self.table.find(self.hash(user), |s| user_of(s) == user)
    }

    /// Adds a user slot (the slot of a key with a user), replacing one of the same user.
    pub fn insert(&mut self, slot: Arc<Slot>) {
        debug_assert!(slot.key.user.is_some(), "a user slot names its user");
        let hash = self.hash(user_of(&slot));
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |s| user_of(s) == user_of(&slot),
            |s| hasher.hash_one(user_of(s)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = slot,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
    }

    /// Removes and returns the longest idle slot no stream watches among a sample of
    /// [`SAMPLE`] (all of them, when no more are held); none if every one sampled is
    /// watched.
    pub fn evict(&mut self) -> Option<Arc<Slot>> {
        let (victim, _) = self.pick();
        let user = victim?.key.user.clone()?;
        self.remove(&user)
    }

    /// The slot [`Self::evict`] would take, and how many slots it looked at for it.
    fn pick(&self) -> (Option<&Arc<Slot>>, usize) {
        let buckets = self.table.num_buckets();
        if buckets == 0 {
            return (None, 0);
        }
        let start = rand::rng().random_range(0..buckets);
        let mut sampled = 0;
        let mut victim: Option<&Arc<Slot>> = None;
        for i in 0..buckets {
            let Some(slot) = self.table.get_bucket((start + i) % buckets) else {
                continue;
            };
            sampled += 1;
            if slot.watchers() == 0 && victim.is_none_or(|v| slot.last_used() < v.last_used()) {
                victim = Some(slot);
            }
            if sampled == SAMPLE {
                break;
            }
        }
        (victim, sampled)
    }

    pub fn remove(&mut self, user: &str) -> Option<Arc<Slot>> {
        let user = user.as_bytes();
        let hash = self.hash(user);
        self.table
            .find_entry(hash, |s| user_of(s) == user)
            .ok()
            .map(|e| e.remove().0)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.table.iter()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Arc<Slot>> {
        self.table.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(user: &str) -> Arc<Slot> {
        Slot::detached_user(user)
    }

    #[test]
    fn slots_are_found_replaced_and_removed_by_user_id() {
        let mut users = UserSlots::default();
        let (e1, e2) = (slot("e1"), slot("e2"));
        users.insert(Arc::clone(&e1));
        users.insert(Arc::clone(&e2));
        assert!(users.get("e1").is_some_and(|s| Arc::ptr_eq(s, &e1)));
        assert!(users.get("e3").is_none());
        let newer = slot("e1");
        users.insert(Arc::clone(&newer));
        assert_eq!(users.len(), 2, "one slot per user");
        assert!(users.get("e1").is_some_and(|s| Arc::ptr_eq(s, &newer)));
        assert!(users.remove("e2").is_some_and(|s| Arc::ptr_eq(&s, &e2)));
        assert!(users.remove("e2").is_none());
        assert_eq!(users.slots().count(), 1);
        assert_eq!(users.drain().count(), 1);
        assert_eq!(users.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn with_few_slots_eviction_takes_the_longest_idle_unwatched_one() {
        let mut users = UserSlots::default();
        let slots: Vec<Arc<Slot>> = (0..5).map(|i| slot(&format!("e{i}"))).collect();
        for s in &slots {
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
            s.touch(tokio::time::Instant::now());
            users.insert(Arc::clone(s));
        }
        // e0 is the oldest but was used since; e1 is watched.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        slots[0].touch(tokio::time::Instant::now());
        let _watch = slots[1].subscribe();
        let order: Vec<String> = (0..4)
            .filter_map(|_| users.evict())
            .filter_map(|s| s.key.user.as_deref().map(str::to_owned))
            .collect();
        assert_eq!(order, ["e2", "e3", "e4", "e0"]);
        assert!(users.evict().is_none(), "only the watched one is left");
        assert_eq!(users.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn with_many_slots_eviction_takes_one_of_the_long_idle_ones() {
        // 100,000 slots, used in order: the later the slot, the more recent its use.
        let mut users = UserSlots::default();
        for i in 0..100_000 {
            let s = slot(&format!("e{i:06}"));
            tokio::time::advance(std::time::Duration::from_millis(1)).await;
            s.touch(tokio::time::Instant::now());
            users.insert(s);
        }
        // Each eviction looks at 32 slots, not 100,000 (the scan it replaced looked at
        // every one); its victim is the idlest of them, so on average among the idlest
        // 1/33 of all.
        let ranks: Vec<u32> = (0..1_000)
            .map(|_| {
                assert_eq!(users.pick().1, SAMPLE, "slots looked at for one eviction");
                let victim = users.evict().expect("a victim");
                victim.key.user.as_deref().unwrap_or_default()[1..]
                    .parse()
                    .expect("a number")
            })
            .collect();
        let mean = ranks.iter().map(|&r| f64::from(r)).sum::<f64>() / ranks.len() as f64;
        assert!(mean < 100_000.0 / 16.0, "mean rank of the evicted {mean}");
        assert_eq!(users.len(), 99_000);
    }
}
