//! What bounds the broker's work and memory: callers waiting on the platform, and token
//! fetches in progress. A caller answered from the cache costs neither, and a caller that
//! joins a fetch already in progress costs a waiting future, not upstream work: a stampede
//! on one key is the job, and is never refused while the waiting callers fit in memory.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{BrokerError, BudgetPolicy};

/// The broker's bounds (`server.max_waiting_callers`, `upstream.max_concurrent_flights`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The most callers waiting on the platform at once (a cache miss waits: for its own
    /// fetch, or for the one in progress for its key). Beyond it a caller is answered
    /// RESOURCE_EXHAUSTED. A memory bound: BENCHMARKS.md has the bytes per waiting caller.
    pub max_waiting_callers: usize,
    /// The most user-token fetches (a grant and a code exchange, or a refresh) in progress
    /// at once; more wait their turn, first come first served. Org-token fetches never wait
    /// here: a user-token fetch may need one, and there is one org token per org.
    pub max_concurrent_flights: usize,
    /// Requests per platform host (`upstream.max_requests_per_second`, `upstream.burst`).
    pub upstream_budget: BudgetPolicy,
}

impl Limits {
    /// The default of `server.max_waiting_callers`: holds 100,000 waiting callers.
    pub const DEFAULT_MAX_WAITING_CALLERS: usize = 100_000;
    /// The default of `upstream.max_concurrent_flights`.
    pub const DEFAULT_MAX_CONCURRENT_FLIGHTS: usize = 64;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_waiting_callers: Self::DEFAULT_MAX_WAITING_CALLERS,
            max_concurrent_flights: Self::DEFAULT_MAX_CONCURRENT_FLIGHTS,
            upstream_budget: BudgetPolicy::default(),
        }
    }
}

/// The callers waiting on the platform now, within [`Limits::max_waiting_callers`].
#[derive(Debug)]
pub(crate) struct Waiting {
    now: AtomicUsize,
    max: usize,
}

/// One caller's place among the waiting; given back when dropped.
pub(crate) struct WaitingCaller<'a>(&'a AtomicUsize);

impl Waiting {
    pub fn new(max: usize) -> Self {
        Self {
            now: AtomicUsize::new(0),
            max,
        }
    }

    /// A place for one more waiting caller, or the error that names the limit.
    pub fn enter(&self) -> Result<WaitingCaller<'_>, BrokerError> {
        self.now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| BrokerError::TooManyWaiting { limit: self.max })?;
        Ok(WaitingCaller(&self.now))
    }

    /// How many wait now.
    pub fn count(&self) -> usize {
        self.now.load(Ordering::Relaxed)
    }
}

impl Drop for WaitingCaller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_callers_are_counted_and_bounded() {
        let waiting = Waiting::new(2);
        let a = waiting.enter().expect("first");
        let b = waiting.enter().expect("second");
        assert_eq!(waiting.count(), 2);
        let refused = waiting.enter().err().expect("third refused");
        assert!(
            refused.to_string().contains("server.max_waiting_callers"),
            "{refused}"
        );
        drop(a);
        let _c = waiting.enter().expect("a place again");
        drop(b);
        assert_eq!(waiting.count(), 1);
    }
}
