//! Server-wide bounds on what long-lived streams hold: a count with a limit, from which
//! each stream takes its share (one stream, or its number of watched keys) and gives it
//! back when it ends. The per-connection counts are `watch::ConnectionStreams`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// A count with a limit, shared by the server's streams.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// A stream's share of a [`Budget`]; returned when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    n: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `n`, if the budget has that much left.
    pub fn take(self: &Arc<Self>, n: usize) -> Option<Share> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= self.limit)
            })
            .ok()?;
        Some(Share {
            budget: Arc::clone(self),
            n,
        })
    }

    /// What is taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_taken_within_the_limit_and_returned_when_dropped() {
        let budget = Budget::new(10);
        let a = budget.take(6).expect("fits");
        assert!(budget.take(5).is_none(), "6 + 5 > 10");
        let b = budget.take(4).expect("fits exactly");
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        assert!(budget.take(6).is_some());
        drop(b);
        assert_eq!(budget.used(), 0, "the take above was dropped at once");
        assert!(budget.take(usize::MAX).is_none(), "no overflow");
    }
}
