//! Renewals spread out: tokens fetched in one burst (or found in the store at start) would
//! all come due in the same few minutes, and the upstream budget would then decide which
//! of them expire. Each platform host keeps a calendar of the renewals planned on it; a
//! renewal goes at its planned time while that second holds fewer than its share of the
//! budget, else in the first second after it with room, up to its safety margin. Only
//! when the whole window is full at that rate is it placed at random in the window, and
//! counted as over budget (the broker says so: no schedule can renew that many).
//!
//! [`Calendar`] is a pure structure of instants and counts, tested with paused time.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tracing::warn;

use super::schedule::Window;
use crate::sync::LockUnpoisoned;

/// The share of a host's upstream budget that planned renewals may take in any second:
/// the rest stays free for callers, cold keys and retries.
pub const RENEWAL_SHARE: f64 = 0.5;

/// Where a renewal was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub at: Instant,
    /// The window was full at the renewal share of the budget.
    pub over_budget: bool,
}

/// The renewals planned on one host, by second.
#[derive(Debug)]
pub struct Calendar {
    start: Instant,
    per_second: u32,
    seconds: BTreeMap<u64, Second>,
}

#[derive(Debug, Clone, Copy)]
struct Second {
    planned: u32,
    /// Every second from this one up to `next` (excluded) is full: where a search for
    /// room goes on (path-compressed, so a burst placed in a run of full seconds costs
    /// little more than one look each).
    next: u64,
}

impl Calendar {
    /// A calendar from `start` for a host whose budget is `budget_per_second` requests a
    /// second: renewals may take [`RENEWAL_SHARE`] of it (at least one a second).
    pub fn new(start: Instant, budget_per_second: f64) -> Self {
        let share = (budget_per_second * RENEWAL_SHARE).floor();
        Self {
            start,
            // Truncation intended: a share beyond u32 is no limit at all.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            per_second: share.clamp(1.0, f64::from(u32::MAX)) as u32,
            seconds: BTreeMap::new(),
        }
    }

    /// Renewals placed per second before one goes elsewhere.
    #[cfg(test)]
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Places a renewal that may start at `earliest` and must start by `latest`, at `now`:
    /// at `earliest` if its second has room; else in the first second after it with room
    /// (`draw`, uniform in [0, 1), picks the point within that second); else, the window
    /// being full, at a point of the window `draw` picks, over budget.
    pub fn place(&mut self, now: Instant, earliest: Instant, latest: Instant, draw: f64) -> Placed {
        self.forget_before(now);
        let draw = draw.clamp(0.0, 1.0);
        let earliest = earliest.max(now);
        let latest = latest.max(earliest);
        let (first, last) = (self.index(earliest), self.index(latest));
        let (at, over_budget) = match self.first_with_room(first, last) {
            Some(i) if i == first => (earliest, false),
            Some(i) => {
                let second = self.start + Duration::from_secs(i);
                ((second + Duration::from_secs_f64(draw)).min(latest), false)
            }
            None => (earliest + (latest - earliest).mul_f64(draw), true),
        };
        let i = self.index(at);
        self.seconds
            .entry(i)
            .or_insert(Second {
                planned: 0,
                next: i + 1,
            })
            .planned += 1;
        Placed { at, over_budget }
    }

    /// Renewals planned in the second that holds `at`.
    #[cfg(test)]
    pub fn planned_at(&self, at: Instant) -> u32 {
        self.seconds.get(&self.index(at)).map_or(0, |s| s.planned)
    }

    /// Seconds with a renewal planned (the calendar's size).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.seconds.len()
    }

    fn index(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    /// The first second in `from..=to` with fewer than `per_second` renewals planned.
    fn first_with_room(&mut self, from: u64, to: u64) -> Option<u64> {
        let mut i = from;
        let mut full = Vec::new();
        while i <= to {
            match self.seconds.get(&i) {
                Some(s) if s.planned >= self.per_second => {
                    full.push(i);
                    i = s.next.max(i + 1);
                }
                _ => break,
            }
        }
        for f in full {
            if let Some(s) = self.seconds.get_mut(&f) {
                s.next = s.next.max(i);
            }
        }
        (i <= to).then_some(i)
    }

    /// Drops the seconds before `now`'s: renewals planned there have happened.
    fn forget_before(&mut self, now: Instant) {
        let cut = self.index(now);
        if self
            .seconds
            .first_key_value()
            .is_some_and(|(&k, _)| k < cut)
        {
            self.seconds = self.seconds.split_off(&cut);
        }
    }
}

/// The calendars of every host the broker renews on, and how many renewals could not be
/// placed within the budget.
#[derive(Debug)]
pub struct Renewals {
    budget_per_second: f64,
    hosts: Mutex<HashMap<String, Calendar>>,
    over_budget: AtomicU64,
}

impl Renewals {
    /// Calendars for hosts whose budget is `budget_per_second` each.
    pub fn new(budget_per_second: f64) -> Self {
        Self {
            budget_per_second,
            hosts: Mutex::default(),
            over_budget: AtomicU64::new(0),
        }
    }

    /// When to renew a token requested at `requested` from `host`, renewable in `window`:
    /// how long after `requested` ([`Calendar::place`]).
    pub fn place(&self, host: &str, requested: Instant, window: Window, draw: f64) -> Duration {
        let now = Instant::now();
        let placed = {
            let mut hosts = self.hosts.lock_unpoisoned();
            let calendar = match hosts.get_mut(host) {
                Some(calendar) => calendar,
                None => hosts
                    .entry(host.to_owned())
                    .or_insert_with(|| Calendar::new(now, self.budget_per_second)),
            };
            calendar.place(
                now,
                requested + window.earliest,
                requested + window.latest,
                draw,
            )
        };
        if placed.over_budget {
            let n = self.over_budget.fetch_add(1, Ordering::Relaxed) + 1;
            // Once, then at every thousandth: a burst of them is one problem.
            if n == 1 || n.is_multiple_of(1000) {
                warn!(
                    host,
                    over_budget = n,
                    "more renewals come due than upstream.max_requests_per_second can renew \
                     before their safety margin; raise it, or hold fewer tokens \
                     (cache.max_user_tokens, cache.user_idle_timeout)"
                );
            }
        }
        placed.at.saturating_duration_since(requested)
    }

    /// Renewals placed over budget since start.
    pub fn over_budget(&self) -> u64 {
        self.over_budget.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::RenewalPolicy;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_renewal_keeps_its_planned_time_while_its_second_has_room() {
        let now = Instant::now();
        let mut c = Calendar::new(now, 10.0);
        assert_eq!(c.per_second(), 5, "half the budget");
        let at = now + Duration::from_millis(1_800_300);
        let latest = now + Duration::from_secs(3540);
        for _ in 0..5 {
            assert_eq!(c.place(now, at, latest, 0.5).at, at);
        }
        // The sixth goes to the next second, at the point its draw picks.
        let sixth = c.place(now, at, latest, 0.25);
        assert_eq!(sixth.at, now + Duration::from_millis(1_801_250));
        assert!(!sixth.over_budget);
        assert_eq!(c.planned_at(sixth.at), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_window_places_at_random_in_it_and_says_so() {
        let now = Instant::now();
        let mut c = Calendar::new(now, 2.0);
        let (earliest, latest) = (now + Duration::from_secs(10), now + Duration::from_secs(12));
        for _ in 0..3 {
            assert!(!c.place(now, earliest, latest, 0.0).over_budget);
        }
        let over = c.place(now, earliest, latest, 0.5);
        assert!(over.over_budget);
        assert_eq!(over.at, now + Duration::from_secs(11));
        // A window in the past starts now; the seconds gone are forgotten.
        tokio::time::advance(Duration::from_secs(20)).await;
        let later = Instant::now();
        let placed = c.place(later, earliest, latest, 0.5);
        assert_eq!(placed.at, later);
        assert_eq!(c.len(), 1);
    }

    /// The case: 100,000 tokens fetched at once. Today's ±10 % jitter alone would
    /// renew them all within six minutes; placed on the calendar, no second takes more
    /// than its share of the budget, and every renewal stays in its window.
    fn schedule(lifetime: Duration, tokens: usize, budget: f64) -> (Vec<Duration>, usize) {
        let policy = RenewalPolicy::default();
        let t0 = Instant::now();
        let mut calendar = Calendar::new(t0, budget);
        let mut over = 0;
        let mut at = Vec::with_capacity(tokens);
        // A fixed sequence of draws (xorshift), so the test is repeatable.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next_draw = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..tokens {
            let window = policy.window(lifetime, next_draw());
            let placed = calendar.place(t0, t0 + window.earliest, t0 + window.latest, next_draw());
            assert!(placed.at >= t0 + window.earliest && placed.at <= t0 + window.latest);
            over += usize::from(placed.over_budget);
            at.push(placed.at - t0);
        }
        (at, over)
    }

    fn busiest_second(at: &[Duration]) -> usize {
        let mut per: HashMap<u64, usize> = HashMap::new();
        for a in at {
            *per.entry(a.as_secs()).or_default() += 1;
        }
        per.into_values().max().unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hundred_thousand_tokens_fetched_at_once_renew_within_the_budget() {
        // Tokens of a day at the default budget (10/s): 100,000 renewals need 20,000 s at
        // the renewal share, and their windows (from about 11 h to 23 h 59) hold them.
        let (at, over) = schedule(24 * HOUR, 100_000, 10.0);
        assert_eq!(over, 0, "every renewal within the budget's share");
        assert_eq!(busiest_second(&at), 5, "never more than half the budget");
        let first = at.iter().min().copied().unwrap_or_default();
        let last = at.iter().max().copied().unwrap_or_default();
        assert!(first >= (24 * HOUR).mul_f64(0.45), "{first:?}");
        assert!(last < 24 * HOUR - Duration::from_secs(60), "{last:?}");
        // The spread is the budget's: 20,000 seconds, give or take the jitter's span.
        let span = (last - first).as_secs();
        assert!((19_900..=20_100).contains(&span), "{span}");
    }

    #[tokio::test(start_paused = true)]
    async fn more_renewals_than_any_schedule_can_hold_are_spread_over_the_window() {
        // The platform's one-hour tokens: from 27 minutes to 59, 100,000 renewals at 10/s
        // cannot all be made (that needs 10,000 s), so the calendar fills its share and
        // spreads the rest evenly, and counts them.
        let (at, over) = schedule(HOUR, 100_000, 10.0);
        assert!(over > 85_000, "{over}");
        let window = (HOUR - Duration::from_secs(60)).as_secs() - (HOUR.as_secs() * 45 / 100);
        // Evenly: about 100,000 / 1,920 s, nowhere near the ±10 % jitter's 280 a second.
        let busiest = busiest_second(&at);
        assert!(
            busiest < 100,
            "{busiest} in one second over a {window} s window"
        );
        let policy = RenewalPolicy::default();
        let jitter_only: Vec<_> = (0..100_000)
            .map(|i| policy.renew_after(HOUR, f64::from(i) / 100_000.0))
            .collect();
        assert!(busiest_second(&jitter_only) > 250);
    }
}
