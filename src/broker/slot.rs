//! One key's slot: the current token (a watch channel: reading it is the cache hit, its
//! receivers are the watchers), and the lock that makes fetching and rotating single flight.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::{
    sync::{Mutex, OwnedMutexGuard, watch},
    time::Instant,
};

use super::{BrokerError, SharedToken, TokenKey};
use crate::secret::RefreshToken;

/// A key's current token and the machinery to replace it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub key: TokenKey,
    current: watch::Sender<Option<SharedToken>>,
    state: Arc<Mutex<FlightState>>,
    /// Flights finished so far. A caller that saw this change while it waited for the lock
    /// takes that flight's outcome instead of starting another: this is what turns a
    /// thousand concurrent callers into one upstream request chain, success or failure.
    flights: AtomicU64,
}

/// What only the flight holding the lock may touch.
#[derive(Debug, Default)]
pub(crate) struct FlightState {
    /// The refresh token for the current token. Taken out (never copied) by the one
    /// request that presents it.
    pub refresh_token: Option<RefreshToken>,
    /// The generation of the last token installed.
    pub generation: u64,
    /// The last flight's error, handed to the callers that waited on it.
    last_error: Option<BrokerError>,
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
    pub fn new(key: TokenKey, token: Option<SharedToken>) -> Self {
        let generation = token.as_ref().map_or(0, |t| t.generation);
        Self {
            key,
            current: watch::Sender::new(token),
            state: Arc::new(Mutex::new(FlightState {
                generation,
                ..FlightState::default()
            })),
            flights: AtomicU64::new(0),
        }
    }

    /// The current token, usable or not.
    pub fn current(&self) -> Option<SharedToken> {
        self.current.borrow().clone()
    }

    /// The current token if it may still be handed out at `now`: the cache hit.
    pub fn usable(&self, now: Instant) -> Option<SharedToken> {
        self.current
            .borrow()
            .as_ref()
            .filter(|t| t.is_usable(now))
            .cloned()
    }

    /// A receiver that sees every token installed from now on (latest value only).
    pub fn subscribe(&self) -> watch::Receiver<Option<SharedToken>> {
        self.current.subscribe()
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

    /// Ends the flight: installs its token (waking every watcher) or records its error for
    /// the callers that joined it, then releases the lock.
    pub fn land(mut self, outcome: &Result<SharedToken, BrokerError>) {
        match outcome {
            Ok(token) => {
                self.state.last_error = None;
                self.slot.current.send_replace(Some(Arc::clone(token)));
            }
            Err(e) => self.state.last_error = Some(e.clone()),
        }
        self.slot.flights.fetch_add(1, Ordering::Release);
    }
}
