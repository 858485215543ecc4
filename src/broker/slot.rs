//! One key's slot: the current token (a watch channel: reading it is the cache hit, its
//! receivers are the watchers), the lock that makes fetching and rotating single flight, and
//! what the background renewal needs (when it was last used, when to try again).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio::{
    sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard, watch},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

use super::{BrokerError, Gone, Held, SharedToken, TokenKey};
use crate::secret::RefreshToken;

/// A key's current token and the machinery to replace it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub key: TokenKey,
    current: watch::Sender<Held>,
    state: Arc<AsyncMutex<FlightState>>,
    /// Flights finished so far. A caller that saw this change while it waited for the lock
    /// takes that flight's outcome instead of starting another: this is what turns a
    /// thousand concurrent callers into one upstream request chain, success or failure.
    flights: AtomicU64,
    /// After a failure, no new flight starts before this instant (no hammering).
    retry_at: Mutex<Option<Instant>>,
    created: Instant,
    /// Milliseconds after `created` of the last caller's use.
    last_used_ms: AtomicU64,
    /// Stops this slot's background renewal.
    pub renewal: CancellationToken,
    /// Wakes the renewal task when a watcher leaves (the idle countdown starts then).
    pub unwatched: Notify,
}

/// What only the flight holding the lock may touch.
#[derive(Debug, Default)]
pub(crate) struct FlightState {
    /// The refresh token for the current token. Taken out (never copied) by the one
    /// request that presents it.
    pub refresh_token: Option<RefreshToken>,
    /// The generation of the last token installed.
    pub generation: u64,
    /// Failed flights in a row.
    pub failures: u32,
    /// The last flight's error, handed to the callers that waited on it and to callers
    /// that arrive before `retry_at`.
    pub last_error: Option<BrokerError>,
}

/// The lock on a slot, held for one upstream flight.
pub(crate) struct Flight {
    slot: Arc<Slot>,
    pub state: OwnedMutexGuard<FlightState>,
}

/// What a caller found after waiting for a slot's lock.
pub(crate) enum Turn {
    /// Another flight finished while this caller waited; this is its outcome.
    Joined(Result<SharedToken, BrokerError>),
    /// This caller holds the lock and decides whether to fly.
    Mine(Flight),
}

impl Slot {
    pub fn new(key: TokenKey, token: Option<SharedToken>, renewal: CancellationToken) -> Self {
        let generation = token.as_ref().map_or(0, |t| t.generation);
        Self {
            key,
            current: watch::Sender::new(token.map_or(Held::Empty, Held::Token)),
            state: Arc::new(AsyncMutex::new(FlightState {
                generation,
                ..FlightState::default()
            })),
            flights: AtomicU64::new(0),
            retry_at: Mutex::new(None),
            created: Instant::now(),
            last_used_ms: AtomicU64::new(0),
            renewal,
            unwatched: Notify::new(),
        }
    }

    /// The current token, usable or not.
    pub fn current(&self) -> Option<SharedToken> {
        self.current.borrow().token().cloned()
    }

    /// The current token if it may be handed out at `now`: the cache hit.
    pub fn usable(&self, now: Instant) -> Option<SharedToken> {
        self.current
            .borrow()
            .token()
            .filter(|t| t.is_usable(now))
            .cloned()
    }

    /// A receiver that sees every token installed from now on (latest value only).
    pub fn subscribe(&self) -> watch::Receiver<Held> {
        self.current.subscribe()
    }

    /// Announces that `expired` could not be renewed, unless a newer token replaced it.
    pub fn announce_gone(&self, expired: &SharedToken, gone: Gone) -> bool {
        self.current.send_if_modified(|held| match held {
            Held::Token(t) if Arc::ptr_eq(t, expired) => {
                *held = Held::Gone(Arc::new(gone));
                true
            }
            _ => false,
        })
    }

    /// A watcher left: the idle countdown starts now.
    pub fn unwatch(&self) {
        self.touch(Instant::now());
        self.unwatched.notify_one();
    }

    /// Receivers other than the slot's own renewal task: the WatchTokens streams.
    pub fn watchers(&self) -> usize {
        self.current.receiver_count().saturating_sub(1)
    }

    /// Records a caller's use at `now`.
    pub fn touch(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.created).as_millis();
        self.last_used_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When a caller last used the slot (its creation, if never).
    pub fn last_used(&self) -> Instant {
        self.created + Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed))
    }

    /// The instant before which no new flight may start, if a failure set one.
    pub fn retry_at(&self) -> Option<Instant> {
        *self.retry_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the slot's lock. If a flight finished meanwhile, returns its outcome.
    pub async fn turn(self: &Arc<Self>) -> Turn {
        let seen = self.flights.load(Ordering::Acquire);
        let state = Arc::clone(&self.state).lock_owned().await;
        if self.flights.load(Ordering::Acquire) != seen {
            let outcome = match (&state.last_error, self.current()) {
                (Some(e), _) => Err(e.clone()),
                (None, Some(token)) => Ok(token),
                (None, None) => Err(BrokerError::Unavailable {
                    key: self.key.to_string(),
                    detail: "the flight this call joined produced no token".into(),
                    retry_after: None,
                }),
            };
            return Turn::Joined(outcome);
        }
        Turn::Mine(Flight {
            slot: Arc::clone(self),
            state,
        })
    }
}

impl Flight {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Ends the flight: installs its token (waking every watcher) or records its error and
    /// how long to hold off (`hold`), then releases the lock.
    pub fn land(mut self, outcome: &Result<SharedToken, BrokerError>, hold: Option<Duration>) {
        let retry_at = match outcome {
            Ok(token) => {
                self.state.last_error = None;
                self.state.failures = 0;
                self.slot
                    .current
                    .send_replace(Held::Token(Arc::clone(token)));
                None
            }
            Err(e) => {
                self.state.last_error = Some(e.clone());
                hold.map(|h| Instant::now() + h)
            }
        };
        *self.slot.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = retry_at;
        self.slot.flights.fetch_add(1, Ordering::Release);
    }
}
