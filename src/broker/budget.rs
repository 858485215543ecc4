//! The upstream budget: every request to a platform host waits for a place in a token
//! bucket of that host (`upstream.max_requests_per_second`, `upstream.burst`), so that
//! whatever callers do, the platform sees no more than the budget. Waiting requests go in
//! priority order ([`Priority`]), and within one priority the org served least goes
//! first, so that one org cannot starve another on a shared host. A 429 holds every
//! request to its host, not only the key that saw it. With a shared store the bucket and
//! the hold are the cluster's (a GCRA in Redis, [`crate::store::Store::budget_take`]), so
//! three replicas send no more than one broker would.
//!
//! The bucket is GCRA (the generic cell rate algorithm): one "theoretical arrival time"
//! per host, a pure function of it and the clock ([`gcra`]), tested without a clock.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tracing::{debug, warn};

use crate::{store::Store, sync::LockUnpoisoned};

/// Why a request waits for the budget, in the order waiting requests are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// An org token when none valid is held: every user flight of the org waits on it.
    OrgCold = 0,
    /// A caller waits on this key (a cold key, a Refresh).
    Caller = 1,
    /// A background renewal: it has time, it starts well before expiry.
    Renewal = 2,
    /// A background fetch nobody waits on in a call (a watched key whose token was lost).
    Prefetch = 3,
}

impl Priority {
    /// Every priority, in order (metrics' labels).
    pub const ALL: [Priority; 4] = [
        Priority::OrgCold,
        Priority::Caller,
        Priority::Renewal,
        Priority::Prefetch,
    ];

    /// The name metrics and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Priority::OrgCold => "org_cold",
            Priority::Caller => "caller",
            Priority::Renewal => "renewal",
            Priority::Prefetch => "prefetch",
        }
    }
}

/// The budget's rate (`upstream.max_requests_per_second`, `upstream.burst`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// Requests per second to one platform host, in steady state.
    pub per_second: f64,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
}

impl Default for BudgetPolicy {
    /// Below what the platform was seen to throttle at (a burst of 15-20 quick requests).
    fn default() -> Self {
        Self {
            per_second: 10.0,
            burst: 10,
        }
    }
}

impl BudgetPolicy {
    /// The time one request "costs" in the bucket.
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(1e-3))
    }

    /// How far ahead of the clock the bucket's time may run: `burst - 1` intervals.
    pub fn tolerance(&self) -> Duration {
        self.interval() * self.burst.max(1).saturating_sub(1)
    }
}

/// GCRA: whether a request may go at `now` given the bucket's theoretical arrival time
/// `tat` (never before `now`'s past: a quiet bucket starts at `now`). `Ok` carries the new
/// `tat` to store; `Err` how long to wait before asking again.
pub fn gcra(policy: &BudgetPolicy, tat: Instant, now: Instant) -> Result<Instant, Duration> {
    let tat = tat.max(now);
    let ahead = tat - now;
    if ahead > policy.tolerance() {
        return Err(ahead - policy.tolerance());
    }
    Ok(tat + policy.interval())
}

/// The hold after the `n`-th 429 in a row without `Retry-After`: 1 s doubling to 30 s.
pub fn throttle_hold(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// One waiting request.
#[derive(Debug)]
struct Waiter {
    seq: u64,
    priority: Priority,
    org: Arc<str>,
}

#[derive(Debug)]
struct HostState {
    /// GCRA's theoretical arrival time (this process's bucket).
    tat: Instant,
    /// No request before this (a 429).
    hold_until: Instant,
    /// 429s in a row (for the hold without `Retry-After`).
    throttles: u32,
    waiting: Vec<Waiter>,
    next_seq: u64,
    /// Requests sent per org: the fair share within one priority.
    served: HashMap<Arc<str>, u64>,
}

impl HostState {
    /// The waiter to serve next: the best priority, then the org served least, then the
    /// first to come.
    fn best(&self) -> Option<u64> {
        self.waiting
            .iter()
            .min_by_key(|w| {
                let served = self.served.get(&w.org).copied().unwrap_or(0);
                (w.priority, served, w.seq)
            })
            .map(|w| w.seq)
    }

    fn remove(&mut self, seq: u64) {
        self.waiting.retain(|w| w.seq != seq);
    }
}

#[derive(Debug)]
struct Host {
    name: Arc<str>,
    state: Mutex<HostState>,
    /// Woken when the waiters or the hold change.
    changed: Notify,
}

/// Every host's bucket, and what the metrics read of them.
#[derive(Debug)]
pub(crate) struct Budget {
    policy: BudgetPolicy,
    hosts: Mutex<HashMap<Arc<str>, Arc<Host>>>,
    /// The shared store whose bucket is the cluster's, if any.
    store: Option<Arc<Store>>,
    /// Microseconds waited, and requests that waited, by priority.
    waited_us: [AtomicU64; 4],
    waits: [AtomicU64; 4],
    throttled: AtomicU64,
}

/// What the budget reports (`BrokerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetStats {
    /// Requests waiting for the budget now, by priority ([`Priority::ALL`]).
    pub waiting: [u64; 4],
    /// Seconds waited in all (as microseconds), by priority.
    pub waited_us: [u64; 4],
    /// Requests that went through the budget, by priority.
    pub waits: [u64; 4],
    /// 429 answers seen.
    pub throttled: u64,
    /// Hosts held by a 429 now.
    pub holds: u64,
}

/// Takes a waiter out of its host's queue when its wait ends (also if it is dropped).
struct Queued<'a> {
    host: &'a Host,
    seq: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.host.state.lock_unpoisoned().remove(self.seq);
        self.host.changed.notify_waiters();
    }
}

impl Budget {
    pub fn new(policy: BudgetPolicy, store: Option<Arc<Store>>) -> Self {
        Self {
            policy,
            hosts: Mutex::default(),
            store: store.filter(|s| s.is_shared()),
            waited_us: Default::default(),
            waits: Default::default(),
            throttled: AtomicU64::new(0),
        }
    }

    fn host(&self, name: &str) -> Arc<Host> {
        let mut hosts = self.hosts.lock_unpoisoned();
        if let Some(host) = hosts.get(name) {
            return Arc::clone(host);
        }
        let now = Instant::now();
        let host = Arc::new(Host {
            name: name.into(),
            state: Mutex::new(HostState {
                tat: now,
                hold_until: now,
                throttles: 0,
                waiting: Vec::new(),
                next_seq: 0,
                served: HashMap::new(),
            }),
            changed: Notify::new(),
        });
        hosts.insert(Arc::clone(&host.name), Arc::clone(&host));
        host
    }

    /// Waits until a request of `org` to `host` may go, in `priority` order. Dropping the
    /// future gives up the place.
    pub async fn acquire(&self, host: &str, org: &Arc<str>, priority: Priority) {
        let host = self.host(host);
        let started = Instant::now();
        let seq = {
            let mut state = host.state.lock_unpoisoned();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.waiting.push(Waiter {
                seq,
                priority,
                org: Arc::clone(org),
            });
            seq
        };
        let queued = Queued { host: &host, seq };
        loop {
            let mut changed = pin!(host.changed.notified());
            changed.as_mut().enable();
            let now = Instant::now();
            let turn = {
                let mut state = host.state.lock_unpoisoned();
                if state.best() != Some(seq) {
                    None
                } else if state.hold_until > now {
                    Some(Err(state.hold_until - now))
                } else if self.store.is_some() {
                    Some(Ok(None))
                } else {
                    match gcra(&self.policy, state.tat, now) {
                        Ok(tat) => {
                            state.tat = tat;
                            Some(Ok(Some(())))
                        }
                        Err(wait) => Some(Err(wait)),
                    }
                }
            };
            let wait = match turn {
                // Another waiter goes first: wait for the queue to change.
                None => {
                    changed.await;
                    continue;
                }
                Some(Ok(Some(()))) => break,
                Some(Ok(None)) => match self.shared_take(&host, now).await {
                    Ok(()) => break,
                    Err(wait) => wait,
                },
                Some(Err(wait)) => wait,
            };
            // The bucket's next place, unless the queue changes first (a better waiter
            // came, or a hold): then this one looks again.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed => {}
            }
        }
        {
            let mut state = host.state.lock_unpoisoned();
            *state.served.entry(Arc::clone(org)).or_default() += 1;
        }
        drop(queued);
        let waited = started.elapsed();
        let i = priority as usize;
        self.waits[i].fetch_add(1, Ordering::Relaxed);
        self.waited_us[i].fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if waited > Duration::from_millis(100) {
            debug!(host = %host.name, priority = priority.name(), waited_ms = waited.as_millis(), "waited for the upstream budget");
        }
    }

    /// The cluster's bucket in the shared store; this process's own while the store does
    /// not answer (so an unreachable Redis never stops requests, and never lets them past
    /// the rate of one broker).
    async fn shared_take(&self, host: &Host, now: Instant) -> Result<(), Duration> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (interval, tolerance) = (self.policy.interval(), self.policy.tolerance());
        match store.budget_take(&host.name, interval, tolerance).await {
            Ok(answer) => answer,
            Err(e) => {
                debug!(host = %host.name, error = %e, "the shared upstream budget did not answer; using this replica's");
                let mut state = host.state.lock_unpoisoned();
                let taken = gcra(&self.policy, state.tat, now)?;
                state.tat = taken;
                Ok(())
            }
        }
    }

    /// The platform answered `host` with a 429: no request to it before `retry_after` (or
    /// a hold doubling from 1 s with each 429 in a row), on every replica with a shared
    /// store.
    pub async fn throttled(&self, host: &str, retry_after: Option<Duration>) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let host = self.host(host);
        let hold = {
            let mut state = host.state.lock_unpoisoned();
            state.throttles = state.throttles.saturating_add(1);
            let hold = retry_after.unwrap_or_else(|| throttle_hold(state.throttles));
            state.hold_until = state.hold_until.max(Instant::now() + hold);
            hold
        };
        host.changed.notify_waiters();
        warn!(host = %host.name, hold_ms = hold.as_millis(), "the platform throttled a request (429); holding every request to that host");
        if let Some(store) = &self.store
            && let Err(e) = store.budget_hold(&host.name, hold).await
        {
            debug!(host = %host.name, error = %e, "could not share the throttling hold");
        }
    }

    /// A request to `host` got an answer other than 429: the next 429 starts the
    /// doubling again.
    pub fn answered(&self, host: &str) {
        if let Some(host) = self.hosts.lock_unpoisoned().get(host) {
            host.state.lock_unpoisoned().throttles = 0;
        }
    }

    /// Whether any request waits for the budget now.
    pub fn anyone_waiting(&self) -> bool {
        self.hosts
            .lock_unpoisoned()
            .values()
            .any(|h| !h.state.lock_unpoisoned().waiting.is_empty())
    }

    pub fn stats(&self) -> BudgetStats {
        let now = Instant::now();
        let mut stats = BudgetStats {
            throttled: self.throttled.load(Ordering::Relaxed),
            ..BudgetStats::default()
        };
        for host in self.hosts.lock_unpoisoned().values() {
            let state = host.state.lock_unpoisoned();
            for w in &state.waiting {
                stats.waiting[w.priority as usize] += 1;
            }
            if state.hold_until > now {
                stats.holds += 1;
            }
        }
        for i in 0..4 {
            stats.waited_us[i] = self.waited_us[i].load(Ordering::Relaxed);
            stats.waits[i] = self.waits[i].load(Ordering::Relaxed);
        }
        stats
    }
}

/// The budget's key for a URL: its host and port.
pub fn host_of(url: &reqwest::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: BudgetPolicy = BudgetPolicy {
        per_second: 10.0,
        burst: 10,
    };

    #[tokio::test(start_paused = true)]
    async fn gcra_lets_a_burst_through_then_the_rate() {
        let start = Instant::now();
        let mut tat = start;
        for i in 0..10 {
            tat = gcra(&TEN, tat, start).unwrap_or_else(|_| panic!("request {i} of the burst"));
        }
        // The eleventh waits one interval.
        assert_eq!(gcra(&TEN, tat, start), Err(Duration::from_millis(100)));
        let later = start + Duration::from_millis(100);
        tat = gcra(&TEN, tat, later).expect("after one interval");
        assert!(gcra(&TEN, tat, later).is_err());
        // A quiet bucket refills to the burst, no further.
        let quiet = later + Duration::from_secs(60);
        let mut tat2 = tat;
        for _ in 0..10 {
            tat2 = gcra(&TEN, tat2, quiet).expect("a full burst again");
        }
        assert!(gcra(&TEN, tat2, quiet).is_err());
    }

    #[test]
    fn the_hold_without_retry_after_doubles_to_thirty_seconds() {
        assert_eq!(throttle_hold(1), Duration::from_secs(1));
        assert_eq!(throttle_hold(2), Duration::from_secs(2));
        assert_eq!(throttle_hold(5), Duration::from_secs(16));
        assert_eq!(throttle_hold(6), Duration::from_secs(30));
        assert_eq!(throttle_hold(u32::MAX), Duration::from_secs(30));
    }

    /// With the bucket empty, waiting requests go in priority order, and within one
    /// priority the org served least first.
    #[tokio::test(start_paused = true)]
    async fn waiters_go_by_priority_then_by_the_least_served_org() {
        let budget = Arc::new(Budget::new(
            BudgetPolicy {
                per_second: 10.0,
                burst: 1,
            },
            None,
        ));
        let (acme, globex): (Arc<str>, Arc<str>) = ("acme".into(), "globex".into());
        // Empties the bucket.
        budget.acquire("h:443", &acme, Priority::Caller).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, org, priority) in [
            ("acme-renewal", &acme, Priority::Renewal),
            ("acme-caller-1", &acme, Priority::Caller),
            ("acme-caller-2", &acme, Priority::Caller),
            ("globex-caller", &globex, Priority::Caller),
            ("acme-prefetch", &acme, Priority::Prefetch),
            ("acme-org", &acme, Priority::OrgCold),
        ] {
            let (budget, order, org) = (Arc::clone(&budget), Arc::clone(&order), Arc::clone(org));
            tasks.push(tokio::spawn(async move {
                budget.acquire("h:443", &org, priority).await;
                order.lock_unpoisoned().push(name);
            }));
            // Each queued before the next comes.
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.stats().waiting, [1, 3, 1, 1]);
        for task in tasks {
            task.await.expect("served");
        }
        assert_eq!(
            *order.lock_unpoisoned(),
            [
                "acme-org",
                // globex has sent nothing yet; acme two already.
                "globex-caller",
                "acme-caller-1",
                "acme-caller-2",
                "acme-renewal",
                "acme-prefetch"
            ]
        );
        // Six requests after the first, one every 100 ms.
        let stats = budget.stats();
        assert_eq!(stats.waits.iter().sum::<u64>(), 7);
        assert_eq!(stats.waiting, [0; 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_holds_every_request_to_the_host() {
        let budget = Budget::new(BudgetPolicy::default(), None);
        let acme: Arc<str> = "acme".into();
        budget.acquire("h:443", &acme, Priority::Caller).await;
        budget
            .throttled("h:443", Some(Duration::from_secs(5)))
            .await;
        assert_eq!(budget.stats().holds, 1);
        let started = Instant::now();
        budget.acquire("h:443", &acme, Priority::OrgCold).await;
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // Another host is not held.
        let started = Instant::now();
        budget.acquire("other:443", &acme, Priority::Caller).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(budget.stats().throttled, 1);
    }
}
