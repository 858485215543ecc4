//! Users the platform said it does not know (`NOT_FOUND`), remembered for
//! `cache.unknown_user_ttl` so that asking again costs no upstream request and holds no
//! slot: a caller sending ids that do not exist cannot turn each call into a grant
//! request, and a burst of them leaves memory where it was once they expire. Bounded by
//! `cache.max_unknown_users` (the oldest goes first).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use crate::sync::LockUnpoisoned;

/// The users found unknown lately, by org.
#[derive(Debug)]
pub(super) struct UnknownUsers {
    ttl: Duration,
    max: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    /// `org \n user` -> when it is forgotten.
    until: HashMap<Box<str>, Instant>,
    /// The same keys in the order they were remembered (so by expiry: the TTL is one for
    /// all); a key remembered again appears twice, the older entry skipped when popped.
    order: VecDeque<(Box<str>, Instant)>,
}

fn key(org: &str, user: &str) -> Box<str> {
    format!("{org}\n{user}").into_boxed_str()
}

impl Entries {
    /// Forgets what expired by `now`, and gives back the memory a burst took.
    fn expire(&mut self, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if *at > now {
                break;
            }
            if self.until.get(key) == Some(at) {
                self.until.remove(key);
            }
            self.order.pop_front();
        }
        if self.until.capacity() > 64 && self.until.len() < self.until.capacity() / 4 {
            self.until.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }
}

impl UnknownUsers {
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            entries: Mutex::default(),
        }
    }

    /// Remembers that `org` has no `user`, from `now` for the TTL.
    pub fn remember(&self, org: &str, user: &str, now: Instant) {
        let mut entries = self.entries.lock_unpoisoned();
        entries.expire(now);
        while entries.until.len() >= self.max {
            let Some((oldest, at)) = entries.order.pop_front() else {
                break;
            };
            if entries.until.get(&oldest) == Some(&at) {
                entries.until.remove(&oldest);
            }
        }
        let until = now + self.ttl;
        let key = key(org, user);
        entries.until.insert(key.clone(), until);
        entries.order.push_back((key, until));
    }

    /// Whether `org` was found to have no `user` within the TTL before `now`.
    pub fn contains(&self, org: &str, user: &str, now: Instant) -> bool {
        let mut entries = self.entries.lock_unpoisoned();
        entries.expire(now);
        entries.until.contains_key(&*key(org, user))
    }

    /// How many are remembered now.
    pub fn len(&self) -> usize {
        self.entries.lock_unpoisoned().until.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unknown_users_are_remembered_for_the_ttl_and_bounded() {
        let unknown = UnknownUsers::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        unknown.remember("acme", "ghost", now);
        assert!(unknown.contains("acme", "ghost", now));
        assert!(!unknown.contains("globex", "ghost", now), "per org");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(unknown.contains("acme", "ghost", Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!unknown.contains("acme", "ghost", Instant::now()));
        assert_eq!(unknown.len(), 0);
        // At the bound the oldest goes.
        let now = Instant::now();
        for user in ["a", "b", "c", "d"] {
            unknown.remember("acme", user, now);
        }
        assert_eq!(unknown.len(), 3);
        assert!(!unknown.contains("acme", "a", now));
        assert!(unknown.contains("acme", "d", now));
        // Remembered again: the later expiry counts.
        tokio::time::advance(Duration::from_secs(30)).await;
        unknown.remember("acme", "b", Instant::now());
        tokio::time::advance(Duration::from_secs(31)).await;
        let now = Instant::now();
        assert!(unknown.contains("acme", "b", now));
        assert!(!unknown.contains("acme", "c", now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_gives_its_memory_back_once_expired() {
        let unknown = UnknownUsers::new(Duration::from_secs(60), 100_000);
        let now = Instant::now();
        for i in 0..10_000 {
            unknown.remember("acme", &format!("ghost-{i}"), now);
        }
        assert_eq!(unknown.len(), 10_000);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!unknown.contains("acme", "ghost-1", Instant::now()));
        let entries = unknown.entries.lock_unpoisoned();
        assert_eq!(entries.until.len(), 0);
        assert!(
            entries.until.capacity() <= 64,
            "{}",
            entries.until.capacity()
        );
        assert!(
            entries.order.capacity() <= 64,
            "{}",
            entries.order.capacity()
        );
    }
}
