//! One key's slot: the current token (reading it is the cache hit), the lock that makes
//! fetching and rotating single flight, what the renewal timer needs (when it was last
//! used, when to try again, when it is due), and a watch channel made only once someone
//! watches the key. A slot is small on purpose: a broker holds one per user token, and
//! 100,000 of them must fit in tens of megabytes (BENCHMARKS.md).

use crate::sync::{LockUnpoisoned, RwLockUnpoisoned};
use std::sync::{
    Arc, Mutex, MutexGuard, RwLock,
    atomic::{AtomicU64, Ordering},
};

use once_cell::race::OnceBox;
use tokio::{
    sync::{Semaphore, watch},
    time::{Duration, Instant},
};

use super::{
    BrokerError, Gone, Held, SharedToken, Token, TokenKey,
    timer::{Timed, WakeAt},
};
use crate::secret::RefreshToken;

/// A key's current token and the machinery to replace it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub key: TokenKey,
    current: RwLock<Held>,
    /// The watch channel, made on the first subscription and kept from then on.
    watch: OnceBox<watch::Sender<Held>>,
    /// One permit: the flight lock.
    lock: Semaphore,
    /// Flights finished so far. A caller that saw this change while it waited for the lock
    /// takes that flight's outcome instead of starting another: this is what turns a
    /// thousand concurrent callers into one upstream request chain, success or failure.
    flights: AtomicU64,
    state: Mutex<SlotState>,
    created: Instant,
    /// One more than the milliseconds after `created` of the last caller's use; 0 for a
    /// slot no caller has used yet (one restored from the store).
    last_used_ms: AtomicU64,
    /// A restored token's renewal, placed on the calendar at its first use: one more than
    /// its milliseconds after `created`; 0 for none. Cleared when the slot's token changes
    /// (a newer token plans its own).
    placed_ms: AtomicU64,
}

/// What flights and the renewal timer share. The refresh token is taken only by the flight
/// holding the lock; the rest is read by anyone, briefly.
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// The refresh token for the current token. Taken out (never copied) by the one
    /// request that presents it.
    pub refresh_token: Option<RefreshToken>,
    /// The generation of the last token installed.
    pub generation: u64,
    /// The failed flights since the last token; `None` (8 bytes, nothing allocated) in
    /// the usual case that the last flight succeeded.
    pub failure: Option<Box<Failure>>,
    /// When the renewal timer next looks at this slot.
    pub wake: Option<WakeAt>,
    /// Dropped from the cache (evicted, idle, or its org removed): never renewed again.
    pub retired: bool,
}

impl Timed for Slot {
    fn set_wake(&self, at: Option<WakeAt>) -> bool {
        let mut state = self.state();
        if state.wake == at {
            return false;
        }
        state.wake = at;
        true
    }

    fn take_wake(&self, at: WakeAt) -> bool {
        let mut state = self.state();
        let due = state.wake == Some(at) && !state.retired;
        if due {
            state.wake = None;
        }
        due
    }
}

/// A key's failed flights in a row.
#[derive(Debug)]
pub(crate) struct Failure {
    /// How many in a row.
    pub count: u32,
    /// The last one's error, handed to the callers that waited on it and to callers that
    /// arrive before `retry_at`.
    pub error: BrokerError,
    /// No new flight starts before this instant (no hammering).
    pub retry_at: Option<Instant>,
}

impl SlotState {
    /// Failed flights in a row.
    pub fn failures(&self) -> u32 {
        self.failure.as_ref().map_or(0, |f| f.count)
    }

    /// The last flight's error, while no token has replaced it since.
    pub fn last_error(&self) -> Option<&BrokerError> {
        self.failure.as_ref().map(|f| &f.error)
    }

    /// After a failure, when a new flight may start.
    pub fn retry_at(&self) -> Option<Instant> {
        self.failure.as_ref().and_then(|f| f.retry_at)
    }
}

/// How a failed flight lands: after a failure of its own (counted, held for `hold`), or
/// blocked on something it needs (the org token for a user key: not counted).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Landing {
    Failed { hold: Duration },
    Blocked { hold: Duration },
}

/// The lock on a slot, held for one upstream flight; released when dropped.
pub(crate) struct Flight {
    slot: Arc<Slot>,
}

/// What a caller found after waiting for a slot's lock.
pub(crate) enum Turn {
    /// Another flight finished while this caller waited; this is its outcome.
    Joined(Result<SharedToken, BrokerError>),
    /// This caller holds the lock and decides whether to fly.
    Mine(Flight),
}

impl Slot {
    pub fn new(key: TokenKey, token: Option<SharedToken>) -> Self {
        let generation = token.as_ref().map_or(0, |t| t.generation);
        Self::at_generation(key, token, generation)
    }

    /// A slot whose last token was `generation` (found in the store), holding `token` if
    /// that one is still usable.
    pub fn at_generation(key: TokenKey, token: Option<SharedToken>, generation: u64) -> Self {
        Self {
            key,
            current: RwLock::new(token.map_or(Held::Empty, Held::Token)),
            watch: OnceBox::new(),
            lock: Semaphore::new(1),
            flights: AtomicU64::new(0),
            state: Mutex::new(SlotState {
                generation,
                ..SlotState::default()
            }),
            created: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            placed_ms: AtomicU64::new(0),
        }
    }

    /// What the key holds now.
    pub fn held(&self) -> Held {
        self.current.read_unpoisoned().clone()
    }

    /// The current token, usable or not.
    pub fn current(&self) -> Option<SharedToken> {
        self.current.read_unpoisoned().token().cloned()
    }

    /// The current token if it may be handed out at `now`: the cache hit.
    pub fn usable(&self, now: Instant) -> Option<SharedToken> {
        self.current
            .read_unpoisoned()
            .token()
            .filter(|t| t.is_usable(now))
            .cloned()
    }

    /// The flight and renewal state, locked briefly (never across an await).
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock_unpoisoned()
    }

    /// A receiver that sees every token installed from now on (latest value only).
    pub fn subscribe(&self) -> watch::Receiver<Held> {
        // Under the read lock: an install (which holds the write lock) happens wholly
        // before or wholly after, so the receiver misses nothing.
        let current = self.current.read_unpoisoned();
        self.watch
            .get_or_init(|| Box::new(watch::Sender::new(current.clone())))
            .subscribe()
    }

    /// Replaces what the key holds and tells its watchers.
    fn install(&self, held: Held) {
        let mut current = self.current.write_unpoisoned();
        self.placed_ms.store(0, Ordering::Relaxed);
        if let Some(watch) = self.watch.get() {
            watch.send_replace(held.clone());
        }
        *current = held;
    }

    /// Announces that `expired` could not be renewed, unless a newer token replaced it.
    pub fn announce_gone(&self, expired: &SharedToken, gone: Gone) -> bool {
        let mut current = self.current.write_unpoisoned();
        if !matches!(&*current, Held::Token(t) if Arc::ptr_eq(t, expired)) {
            return false;
        }
        self.placed_ms.store(0, Ordering::Relaxed);
        let held = Held::Gone(Arc::new(gone));
        if let Some(watch) = self.watch.get() {
            watch.send_replace(held.clone());
        }
        *current = held;
        true
    }

    /// The WatchTokens streams watching this key.
    pub fn watchers(&self) -> usize {
        self.watch.get().map_or(0, watch::Sender::receiver_count)
    }

    /// Records a caller's use at `now`, to the millisecond (so callers of a hot key write
    /// its cache line at most once a millisecond). True for the slot's first use.
    pub fn touch(&self, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.created).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1);
        let last = self.last_used_ms.load(Ordering::Relaxed);
        if ms > last {
            self.last_used_ms.store(ms, Ordering::Relaxed);
        }
        last == 0
    }

    /// When a caller last used the slot (its creation, if never).
    pub fn last_used(&self) -> Instant {
        let ms = self.last_used_ms.load(Ordering::Relaxed).saturating_sub(1);
        self.created + Duration::from_millis(ms)
    }

    /// Sets the renewal of `token` to `at`, in place of its own, if it is still the one
    /// held.
    pub fn place_renewal(&self, token: &SharedToken, at: Instant) {
        let current = self.current.read_unpoisoned();
        if matches!(&*current, Held::Token(t) if Arc::ptr_eq(t, token)) {
            let ms = at.saturating_duration_since(self.created).as_millis();
            let ms = u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1;
            self.placed_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// When the held `token` is renewed: as placed at its first use, else its own plan.
    pub fn renew_at(&self, token: &Token) -> Option<Instant> {
        match self.placed_ms.load(Ordering::Relaxed) {
            0 => token.renew_at(),
            ms => Some(self.created + Duration::from_millis(ms - 1)),
        }
    }

    /// Whether any caller or stream has used the slot since it was made: a token restored
    /// from the store is renewed only once someone uses it again.
    pub fn used(&self) -> bool {
        self.last_used_ms.load(Ordering::Relaxed) != 0
    }

    /// Takes the slot out of service: the renewal timer forgets it.
    pub fn retire(&self) {
        self.state().retired = true;
    }

    pub fn is_retired(&self) -> bool {
        self.state().retired
    }

    /// Waits for the slot's lock. If a flight finished meanwhile, returns its outcome.
    pub async fn turn(self: &Arc<Self>) -> Turn {
        let seen = self.flights.load(Ordering::Acquire);
        // The semaphore is never closed; the permit is given back when the flight drops.
        if let Ok(permit) = self.lock.acquire().await {
            permit.forget();
        }
        let flight = Flight {
            slot: Arc::clone(self),
        };
        if self.flights.load(Ordering::Acquire) != seen {
            let last_error = self.state().last_error().cloned();
            let outcome = match (last_error, self.current()) {
                (Some(e), _) => Err(e),
                (None, Some(token)) => Ok(token),
                (None, None) => Err(BrokerError::Internal {
                    key: self.key.to_string(),
                    detail: "the flight this call joined produced no token",
                }),
            };
            return Turn::Joined(outcome);
        }
        Turn::Mine(flight)
    }
}

impl Flight {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The slot's state, which the flight may change.
    pub fn state(&self) -> MutexGuard<'_, SlotState> {
        self.slot.state()
    }

    /// Takes a token another replica made, found in the store at `generation`: the slot
    /// goes to that generation (its refresh token, of an older one, is dropped) and holds
    /// `token` if it is still usable, waking every watcher. Nothing happens unless
    /// `generation` is newer than the slot's: generations never go backwards.
    pub fn adopt(&self, token: Option<SharedToken>, generation: u64) -> bool {
        let mut state = self.slot.state();
        if generation <= state.generation {
            return false;
        }
        state.generation = generation;
        state.refresh_token = None;
        if let Some(token) = token {
            state.failure = None;
            self.slot.install(Held::Token(token));
        }
        true
    }

    /// Ends the flight: installs its token (waking every watcher) or records its error
    /// and how long to hold off (one more failure in a row unless it was blocked), then
    /// releases the lock.
    pub fn land(self, outcome: &Result<SharedToken, BrokerError>, landing: Option<Landing>) {
        {
            let mut state = self.slot.state();
            match outcome {
                Ok(token) => {
                    state.failure = None;
                    self.slot.install(Held::Token(Arc::clone(token)));
                }
                Err(e) => {
                    let (count, hold) = match landing {
                        Some(Landing::Failed { hold }) => {
                            (state.failures().saturating_add(1), Some(hold))
                        }
                        Some(Landing::Blocked { hold }) => (state.failures(), Some(hold)),
                        None => (state.failures().saturating_add(1), None),
                    };
                    state.failure = Some(Box::new(Failure {
                        count,
                        error: e.clone(),
                        retry_at: hold.map(|h| Instant::now() + h),
                    }));
                }
            }
        }
        self.slot.flights.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.slot.lock.add_permits(1);
    }
}

#[cfg(test)]
impl Slot {
    /// A slot for `user` of org "acme" that belongs to no broker: for the tests of the
    /// structures that hold slots.
    pub fn detached_user(user: &str) -> Arc<Self> {
        let key = TokenKey {
            org: "acme".into(),
            user: Some(user.into()),
        };
        Arc::new(Self::new(key, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Token;

    /// A broker holds one slot and one token per user token; 100,000 of them have a memory
    /// budget (BENCHMARKS.md). Growing either type is a decision, not an accident. Each
    /// lives in an `Arc` (16 bytes more) that jemalloc rounds up to its size classes
    /// (..., 96, 112, 128, 160, 192, 224, 256): 208 and 96 are the largest that fit 224 and
    /// 112. (The user id is an `Arc<str>` of its own, 32 bytes for the usual id: an inline
    /// id made the slot 256 bytes with nothing beside it, the same memory and, by
    /// callgrind, the same instructions per call.) The token keeps its renewal time as a
    /// 4-byte offset, which as an `Option<Instant>` took it to the 128 class.
    #[test]
    fn a_slot_and_a_token_stay_within_their_budget() {
        assert!(
            size_of::<Slot>() <= 208,
            "Slot is {} bytes",
            size_of::<Slot>()
        );
        assert!(
            size_of::<Token>() <= 96,
            "Token is {} bytes",
            size_of::<Token>()
        );
    }
}
