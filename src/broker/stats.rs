//! Counters of what the broker did: plain atomics, read by the tests and, at each scrape,
//! by the metrics at the top of the crate (the domain names no metrics type).

use std::sync::atomic::{AtomicU64, Ordering};

use super::Reason;

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Caller requests answered from the cache at once.
    pub cache_hits: u64,
    /// Caller requests that had to wait for (or start) an upstream flight.
    pub cache_misses: u64,
    /// Upstream request chains started, by callers or in the background.
    pub flights: u64,
    /// Tokens renewed ahead of expiry by the background renewal.
    pub renewals: u64,
    /// Background renewals that failed (each is retried with backoff).
    pub failed_renewals: u64,
    /// Times a still valid token was handed out because the platform failed.
    pub served_during_outage: u64,
    /// User tokens dropped for being idle or to respect the cap.
    pub evictions: u64,
    /// User token slots held now.
    pub user_tokens: usize,
    /// WatchTokens streams open now.
    pub watch_streams: u64,
    /// Subscriptions held now, over all keys (one per key per stream).
    pub watchers: usize,
    /// Callers waiting on the platform now (a cache miss, its own flight or another's).
    pub waiting_callers: usize,
    /// User-token flights holding a place among `upstream.max_concurrent_flights` now.
    pub flights_in_progress: usize,
    /// New tokens by reason: issued, renewed, forced, reissued (see [`Reason::ALL`]).
    pub rotations: [u64; 4],
    /// Tokens another replica made, taken from the shared store.
    pub adopted: u64,
    /// Calls answered `NOT_FOUND` from the memory of unknown users, with no request.
    pub unknown_user_hits: u64,
    /// Unknown users remembered now.
    pub unknown_users: usize,
    /// Renewals planned past the renewal share of the upstream budget: more come due than
    /// it can renew before their safety margin.
    pub renewals_over_budget: u64,
    /// The upstream budget: requests waiting by priority, time waited, 429s, holds.
    pub budget: super::BudgetStats,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    flights: AtomicU64,
    renewals: AtomicU64,
    failed_renewals: AtomicU64,
    served_stale: AtomicU64,
    evictions: AtomicU64,
    streams: AtomicU64,
    adopted: AtomicU64,
    unknown_user_hits: AtomicU64,
    rotations: [AtomicU64; 4],
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn hit(&self) {
        bump(&self.hits);
    }
    pub fn miss(&self) {
        bump(&self.misses);
    }
    pub fn flight(&self) {
        bump(&self.flights);
    }
    pub fn renewal(&self, ok: bool) {
        bump(if ok {
            &self.renewals
        } else {
            &self.failed_renewals
        });
    }
    pub fn served_stale(&self) {
        bump(&self.served_stale);
    }
    pub fn eviction(&self) {
        bump(&self.evictions);
    }
    pub fn adopted(&self) {
        bump(&self.adopted);
    }
    pub fn unknown_user_hit(&self) {
        bump(&self.unknown_user_hits);
    }
    pub fn rotation(&self, reason: Reason) {
        bump(&self.rotations[reason as usize]);
    }

    pub fn stream_opened(&self) {
        bump(&self.streams);
    }
    pub fn stream_closed(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, user_tokens: usize, watchers: usize) -> BrokerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BrokerStats {
            cache_hits: get(&self.hits),
            cache_misses: get(&self.misses),
            flights: get(&self.flights),
            renewals: get(&self.renewals),
            failed_renewals: get(&self.failed_renewals),
            served_during_outage: get(&self.served_stale),
            evictions: get(&self.evictions),
            user_tokens,
            watch_streams: get(&self.streams),
            watchers,
            waiting_callers: 0,
            flights_in_progress: 0,
            rotations: self.rotations.each_ref().map(get),
            adopted: get(&self.adopted),
            unknown_user_hits: get(&self.unknown_user_hits),
            unknown_users: 0,
            renewals_over_budget: 0,
            budget: super::BudgetStats::default(),
        }
    }
}
