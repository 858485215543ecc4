//! What makes several replicas one broker when they share a store (Redis): before a flight,
//! the claim that elects one replica per key (the others wait for its rotation, or take
//! the newer token it left); holds one replica saw, honoured by all; and the listener that
//! puts every rotation another replica made into this replica's slots (waking their
//! watchers), re-reading every key held after a reconnect and on a periodic pass, and
//! writing back what this replica holds when the store lost it. None of it decides whether
//! a refresh token may be presented: only the store's take does (`grant.rs`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    BrokerError, SharedToken, TokenKey,
    flight::SingleFlight,
    org::Org,
    orgs::Orgs,
    restore::restore,
    slot::{Flight, Slot, Turn},
};
use crate::{
    store::{Claim, Event, Hold, HoldKind, Lease, NewToken, Store, StoreError, Stored},
    sync::LockUnpoisoned,
};

/// How often every key held is compared with the store, whatever messages arrived: bounds
/// how long a lost rotation message leaves a replica behind.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How many times a resync is tried while the store does not answer (about 13 s of
/// backoff, plus the commands' own time).
const RESYNC_TRIES: u32 = 10;

/// The most keys asked about in one round trip of a resync.
const RESYNC_BATCH: usize = 1_000;

/// What the claim before a flight decided.
pub(super) enum Claimed {
    /// Fly, with the key's lease if the store has leases.
    Fly(Option<Lease>),
    /// The slot changed (a newer token, or another replica's flight ended): decide again.
    Again,
    /// Another replica's failure holds the key for `hold`.
    Held { error: BrokerError, hold: Duration },
    /// The store did not answer.
    Down(StoreError),
}

/// The flights of this replica that wait for another replica's, by key: woken by the
/// rotation (or release) message for their key.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    by_key: Mutex<HashMap<TokenKey, Arc<Notify>>>,
}

/// A flight's place among the waiters; leaves when dropped.
struct Waiting<'a> {
    waiters: &'a Waiters,
    key: &'a TokenKey,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Only its own entry: another slot of the same key (a user dropped and asked for
        // again) may wait too.
        let mut by_key = self.waiters.by_key.lock_unpoisoned();
        if by_key
            .get(self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            by_key.remove(self.key);
        }
    }
}

impl Waiters {
    /// Registers before the claim, so that a message arriving between the claim and the
    /// wait is not lost (`Notify` keeps one wake-up).
    fn enter<'a>(&'a self, key: &'a TokenKey) -> Waiting<'a> {
        let notify = Arc::clone(
            self.by_key
                .lock_unpoisoned()
                .entry(key.clone())
                .or_default(),
        );
        Waiting {
            waiters: self,
            key,
            notify,
        }
    }

    fn wake(&self, key: &TokenKey) {
        if let Some(notify) = self.by_key.lock_unpoisoned().get(key) {
            notify.notify_one();
        }
    }
}

/// The error every replica answers while `hold` holds `key`.
pub(super) fn held_error(key: &TokenKey, hold: &Hold) -> BrokerError {
    BrokerError::Held {
        key: key.to_string(),
        kind: hold.kind,
        message: hold.message.clone(),
        left: hold.left,
    }
}

/// The hold a failure `e` leaves for every replica, for `left`.
pub(super) fn hold_for(e: &BrokerError, left: Duration) -> Option<Hold> {
    let kind = match e {
        BrokerError::CredentialsRejected { .. } | BrokerError::Misconfigured { .. } => {
            HoldKind::Credentials
        }
        BrokerError::UnknownUser { .. } => HoldKind::UnknownUser,
        BrokerError::Unavailable { .. } => HoldKind::Unavailable,
        // Not the platform's answer: nothing to share.
        _ => return None,
    };
    Some(Hold {
        left,
        kind,
        message: e.to_string(),
    })
}

impl SingleFlight {
    /// Before flying for the flight's key: with a shared store, takes the key's lease, or
    /// the newer token another replica made, or that replica's hold, or waits (at most a
    /// lease period, less if its rotation arrives) for the replica flying now.
    pub(super) async fn claim(&self, org: &Org, flight: &Flight) -> Claimed {
        let Some(store) = self.store.as_ref().filter(|s| s.is_shared()) else {
            return Claimed::Fly(None);
        };
        let slot = flight.slot();
        let key = &slot.key;
        let waiting = self.waiters.enter(key);
        let known = flight.state().generation;
        match store.claim(&key.org, key.user.as_deref(), known).await {
            Ok(Claim::Fly(lease)) => Claimed::Fly(lease),
            Ok(Claim::Newer(stored)) => {
                let generation = stored.generation;
                if flight.state().generation >= generation {
                    // Not newer after all (a record this broker cannot read as a number):
                    // asking again would loop.
                    return Claimed::Down(StoreError::Protocol(format!(
                        "the store's generation {generation} is not newer than {known}"
                    )));
                }
                self.adopt(org, flight, stored);
                Claimed::Again
            }
            Ok(Claim::Held(hold)) => Claimed::Held {
                error: held_error(key, &hold),
                hold: hold.left,
            },
            Ok(Claim::Flying { within }) => {
                debug!(key = %key, "another replica is fetching this key; waiting for its token");
                let wait = within + Duration::from_millis(50);
                let _ = tokio::time::timeout(wait, waiting.notify.notified()).await;
                Claimed::Again
            }
            Err(e) => Claimed::Down(e),
        }
    }

    /// Installs `stored` (newer than what the slot holds) in the flight's slot of `org`:
    /// the token if it is still usable (its renewal placed as a new token's), its
    /// generation in any case.
    pub(super) fn adopt(&self, org: &Org, flight: &Flight, stored: Stored) -> Option<SharedToken> {
        let now = (Instant::now(), SystemTime::now());
        let host = org.token_host();
        let place = |requested, window| {
            self.renewals
                .place(&host, requested, window, rand::random())
        };
        let token = stored
            .token
            .and_then(|t| restore(t, &self.renewal, now, rand::random(), place).token);
        if flight.adopt(token.clone(), stored.generation) {
            debug!(key = %flight.slot().key, generation = stored.generation, "took the token another replica made");
            self.stats.adopted();
            self.planner.plan(flight.slot());
        }
        token
    }

    /// Shares a failure's hold with every replica (with a shared store).
    pub(super) async fn share_hold(&self, key: &TokenKey, e: &BrokerError, left: Duration) {
        let (Some(store), Some(hold)) = (
            self.store.as_ref().filter(|s| s.is_shared()),
            hold_for(e, left),
        ) else {
            return;
        };
        if let Err(e) = store.hold(&key.org, key.user.as_deref(), &hold).await {
            warn!(key = %key, error = %e, "could not share the hold with the other replicas");
        }
    }
}

/// The listener's task: every rotation another replica makes reaches this replica's slots
/// (and their watchers); after each (re)subscription, and every [`RESYNC_EVERY`], every
/// key held is compared with the store. Ends with `stop`, the broker, or the store's
/// messages.
pub(super) async fn listen(
    engine: Weak<SingleFlight>,
    orgs: Weak<Orgs>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    stop: CancellationToken,
) {
    let mut pass = tokio::time::interval(RESYNC_EVERY);
    pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pass.tick().await;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = pass.tick() => Event::Resync,
        };
        let (Some(engine), Some(orgs)) = (engine.upgrade(), orgs.upgrade()) else {
            return;
        };
        match event {
            Event::Rotated {
                org,
                user,
                generation,
            } => {
                let key = TokenKey {
                    org: org.into(),
                    user: user.map(Into::into),
                };
                engine.waiters.wake(&key);
                if let Some((org, slot)) = find(&orgs, &key)
                    && slot.state().generation < generation
                {
                    tokio::spawn(catch_up(engine, org, slot, generation));
                }
            }
            Event::Released { org, user } => {
                let key = TokenKey {
                    org: org.into(),
                    user: user.map(Into::into),
                };
                engine.waiters.wake(&key);
            }
            Event::Resync => {
                tokio::spawn(async move { resync_until_answered(&engine, &orgs).await });
            }
        }
    }
}

/// The slot held for `key` and its org, if this replica holds one.
fn find(orgs: &Orgs, key: &TokenKey) -> Option<(Arc<Org>, Arc<Slot>)> {
    let org = orgs.get(&key.org)?;
    let slot = match &key.user {
        None => Some(Arc::clone(&org.slot)),
        Some(user) => org.users.get(user),
    }?;
    Some((org, slot))
}

/// Brings `slot` up to `generation` from the store, under its lock (after any flight of
/// this replica, which may have brought it there already, or failed: then it looks again).
async fn catch_up(engine: Arc<SingleFlight>, org: Arc<Org>, slot: Arc<Slot>, generation: u64) {
    let Some(store) = engine.store.clone() else {
        return;
    };
    let flight = loop {
        match slot.turn().await {
            Turn::Mine(flight) => break flight,
            Turn::Joined(_) if slot.state().generation >= generation => return,
            Turn::Joined(_) => {}
        }
    };
    if flight.state().generation >= generation {
        return;
    }
    let key = &slot.key;
    match store.read(&key.org, key.user.as_deref()).await {
        Ok(Some(stored)) if stored.generation > flight.state().generation => {
            engine.adopt(&org, &flight, stored);
        }
        Ok(_) => {}
        Err(e) => debug!(key = %key, error = %e, "could not read another replica's token"),
    }
}

/// [`resync`], again after a backoff while the store does not answer (a connection that
/// just came back may fail its first commands while it reconnects), a few times.
async fn resync_until_answered(engine: &Arc<SingleFlight>, orgs: &Orgs) {
    let mut backoff = Duration::from_millis(100);
    for _ in 0..RESYNC_TRIES {
        if resync(engine, orgs).await {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Compares every key held with the store: takes what is newer there, and writes back
/// (without a refresh token, which this replica does not hold) a valid token the store
/// lost or holds an older generation of, as after a Redis that restarted empty. Whether
/// the store answered.
async fn resync(engine: &Arc<SingleFlight>, orgs: &Orgs) -> bool {
    let Some(store) = engine.store.clone().filter(|s| s.is_shared()) else {
        return true;
    };
    let mut slots = Vec::new();
    for org in orgs.all() {
        if !org.is_static() {
            slots.push((Arc::clone(&org), Arc::clone(&org.slot)));
        }
        slots.extend(org.users.all().into_iter().map(|s| (Arc::clone(&org), s)));
    }
    let (mut newer, mut written) = (0, 0);
    for batch in slots.chunks(RESYNC_BATCH) {
        let keys: Vec<_> = batch
            .iter()
            .map(|(_, s)| (&*s.key.org, s.key.user.as_deref()))
            .collect();
        let generations = match store.generations(&keys).await {
            Ok(generations) => generations,
            Err(e) => {
                debug!(error = %e, "could not compare the tokens held with the store");
                return false;
            }
        };
        for ((org, slot), stored) in batch.iter().zip(generations) {
            let ours = slot.state().generation;
            if stored > ours {
                newer += 1;
                tokio::spawn(catch_up(
                    Arc::clone(engine),
                    Arc::clone(org),
                    Arc::clone(slot),
                    stored,
                ));
            } else if stored < ours && write_back(&store, slot).await {
                written += 1;
            }
        }
    }
    if newer + written > 0 {
        info!(
            newer,
            written, "compared the tokens held with the shared store"
        );
    }
    true
}

/// Writes the valid token `slot` holds to the store, which holds an older generation of
/// the key or none, under the slot's lock. A refresh token this replica holds in memory
/// (one that came while the store did not answer, so never stored) moves into the store
/// with it: taken out of the slot first, so that it is in one place or, if the write
/// fails, none. Whether it was written.
async fn write_back(store: &Store, slot: &Arc<Slot>) -> bool {
    let Turn::Mine(flight) = slot.turn().await else {
        return false;
    };
    let Some(token) = slot.current() else {
        return false;
    };
    let Some(lifetime) = token.lifetime.filter(|_| token.is_valid(Instant::now())) else {
        return false;
    };
    let refresh_token = {
        let mut state = flight.state();
        if state.generation != token.generation {
            return false;
        }
        state.refresh_token.take()
    };
    let key = &slot.key;
    let new = NewToken {
        generation: token.generation,
        access_token: &token.access_token,
        token_type: token.token_type(),
        issued: token.issued_at().into(),
        lifetime,
        reason: token.reason.name(),
        scope: token.scope(),
        refresh_token: refresh_token.as_ref(),
    };
    match store.install(&key.org, key.user.as_deref(), new).await {
        Ok(crate::store::Installed::Done) => true,
        Ok(crate::store::Installed::Newer(_)) => false,
        Err(e) => {
            debug!(key = %key, error = %e, "could not write a held token back to the store");
            false
        }
    }
}
