//! An org's user slots, found by user id. The set holds the slots themselves (each knows
//! its user id): 8 bytes an entry, where a map from a copy of the id took 24, for each of
//! up to 100,000 user tokens (BENCHMARKS.md).

use std::{
    borrow::Borrow,
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::slot::Slot;

/// User slots by user id.
#[derive(Debug, Default)]
pub(super) struct UserSlots {
    set: HashSet<ByUser>,
}

/// A user slot, hashed and compared by its user id.
#[derive(Debug)]
struct ByUser(Arc<Slot>);

impl ByUser {
    /// The user id's bytes: compared without the UTF-8 check a `&str` would need.
    fn user(&self) -> &[u8] {
        self.0.key.user.as_ref().map_or(&[], |u| u.as_bytes())
    }
}

impl Borrow<[u8]> for ByUser {
    fn borrow(&self) -> &[u8] {
        self.user()
    }
}

// As `[u8]` hashes and compares, so that lookups by the id's bytes find the entry
// (`Borrow`'s rule).
impl Hash for ByUser {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.user().hash(state);
    }
}

impl PartialEq for ByUser {
    fn eq(&self, other: &Self) -> bool {
        self.user() == other.user()
    }
}

impl Eq for ByUser {}

impl UserSlots {
    pub fn get(&self, user: &str) -> Option<&Arc<Slot>> {
        self.set.get(user.as_bytes()).map(|s| &s.0)
    }

    /// Adds a user slot (the slot of a key with a user), replacing one of the same user.
    pub fn insert(&mut self, slot: Arc<Slot>) {
        debug_assert!(slot.key.user.is_some(), "a user slot names its user");
        self.set.replace(ByUser(slot));
    }

    pub fn remove(&mut self, user: &str) -> Option<Arc<Slot>> {
        self.set.take(user.as_bytes()).map(|s| s.0)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.set.iter().map(|s| &s.0)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = Arc<Slot>> {
        self.set.drain().map(|s| s.0)
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
}
