//! Locks taken whatever a panic left behind. A panic while a lock is held (a bug, which
//! tokio confines to its task) poisons the lock; every state behind the broker's locks is
//! left consistent by each writer before it can panic, so the guard is taken as it is
//! rather than failing every later call. One place for that decision, instead of a
//! `unwrap_or_else(PoisonError::into_inner)` at each lock.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], poison or not.
pub trait LockUnpoisoned<T: ?Sized> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockUnpoisoned<T> for Mutex<T> {
    fn lock_unpoisoned(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], poison or not.
pub trait RwLockUnpoisoned<T: ?Sized> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T>;
    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockUnpoisoned<T> for RwLock<T> {
    fn read_unpoisoned(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_unpoisoned(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_as_it_is() {
        let lock = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&lock);
        let _ = std::thread::spawn(move || {
            let _guard = held.lock_unpoisoned();
            panic!("a bug while the lock is held");
        })
        .join();
        assert!(lock.is_poisoned());
        assert_eq!(*lock.lock_unpoisoned(), 1);
        let rw = RwLock::new(2);
        *rw.write_unpoisoned() += 1;
        assert_eq!(*rw.read_unpoisoned(), 3);
    }
}
