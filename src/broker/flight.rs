//! The single-flight engine: a usable token at once, or one upstream request chain per key
//! however many callers ask. A caller takes the slot's turn ([`super::slot`]); one that
//! queued behind a flight takes its outcome, and the one holding the lock decides, looking
//! again, whether to fly at all. A flight runs in its own task, so a caller that goes away
//! never cancels it half-way, and it lands its outcome on the slot: the new token (with
//! its next renewal planned) or the error and how long to hold off. With a store that
//! several replicas share, the one deciding to fly first claims the key there
//! ([`super::replicas`]): one replica flies per key, the others take its token. (Over 400
//! lines with its test: the decision to fly and the flight's landing stay in one file.)

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use rand::Rng;
use tokio::{sync::Semaphore, time::Instant};
use tracing::{debug, info, warn};

use super::{
    BrokerError, CachePolicy, Limits, Reason, RenewalPolicy, SharedToken, Token, TokenKey,
    budget::{Budget, Priority},
    grant::{Grants, Miss, OrgBearer},
    org::Org,
    plan::Planner,
    replicas::{Claimed, Waiters},
    slot::{Flight, Landing, Slot, Turn},
    spread::Renewals,
    stats::Counters,
    unknown::UnknownUsers,
    want::Want,
    want::{Decision, decide},
};
use crate::{
    secret::RefreshToken,
    store::{Installed, Lease, NewToken, Store, Stored},
    upstream::Upstream,
};

/// Flies for every key of a broker.
#[derive(Debug)]
pub(super) struct SingleFlight {
    grants: Grants,
    pub renewal: RenewalPolicy,
    pub planner: Planner,
    pub stats: Arc<Counters>,
    /// Where every new token is written before it is handed out, when configured.
    pub store: Option<Arc<Store>>,
    /// Places for user-token flights in progress (`Limits::max_concurrent_flights`).
    places: Arc<Semaphore>,
    max_places: usize,
    /// Flights waiting for another replica's (with a shared store).
    pub waiters: Waiters,
    /// Users the platform said lately it does not know.
    pub unknown: UnknownUsers,
    /// Every upstream request waits here (`upstream.max_requests_per_second`).
    pub budget: Arc<Budget>,
    /// Where each token's renewal is placed, so that a burst's renewals spread out.
    pub renewals: Renewals,
}

impl SingleFlight {
    /// The engine of a broker with `policy` and `limits`, its every upstream request
    /// waiting for `budget`.
    pub fn new(
        upstream: Upstream,
        store: Option<Arc<Store>>,
        policy: &CachePolicy,
        limits: &Limits,
        stats: Arc<Counters>,
        budget: Arc<Budget>,
    ) -> Self {
        let max_places = limits
            .max_concurrent_flights
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            grants: Grants::new(upstream, store.clone(), Arc::clone(&budget)),
            renewals: Renewals::new(limits.upstream_budget.per_second),
            budget,
            store,
            renewal: policy.renewal.clone(),
            planner: Planner::new(policy),
            stats,
            places: Arc::new(Semaphore::new(max_places)),
            max_places,
            waiters: Waiters::default(),
            unknown: UnknownUsers::new(policy.unknown_user_ttl, policy.max_unknown_users),
        }
    }

    /// When a token restored from the store is renewed, placed on its host's calendar at
    /// its first use (`now`): its window as found at start
    /// ([`RenewalPolicy::window_after_restart`]) from now on. `None` for a long-lived one,
    /// and for one past its usable life (the caller's flight replaces it, and the new
    /// token is placed as any).
    pub fn place_restored(&self, org: &Org, token: &Token, now: Instant) -> Option<Instant> {
        let (lifetime, until) = (token.lifetime?, token.usable_until()?);
        if now >= until {
            return None;
        }
        let requested = token.requested();
        let window = self.renewal.window_after_restart(
            lifetime,
            now.saturating_duration_since(requested),
            until.saturating_duration_since(now),
            rand::rng().random(),
        );
        let host = org.token_host();
        Some(
            requested
                + self
                    .renewals
                    .place(&host, requested, window, rand::rng().random()),
        )
    }

    /// User-token flights holding a place now.
    pub fn in_progress(&self) -> usize {
        self.max_places - self.places.available_permits()
    }

    /// A token that may be handed out: the one held if usable, else a new one, or, when the
    /// platform fails, one it still accepts (during an outage callers keep getting the
    /// token until it actually expires).
    pub async fn usable(
        self: &Arc<Self>,
        org: &Arc<Org>,
        slot: &Arc<Slot>,
        priority: Priority,
    ) -> Result<SharedToken, BrokerError> {
        if let Some(token) = slot.usable(Instant::now()) {
            return Ok(token);
        }
        match self.token(org, slot, Want::Usable, priority).await {
            Err(
                e @ (BrokerError::Unavailable { .. }
                | BrokerError::Internal { .. }
                | BrokerError::StoreUnavailable { .. }
                | BrokerError::Held { .. }),
            ) => match slot.current() {
                Some(token) if token.is_valid(Instant::now()) => {
                    debug!(key = %slot.key, error = %e, "platform failing; handing out the still valid token");
                    self.stats.served_stale();
                    Ok(token)
                }
                _ => Err(e),
            },
            other => other,
        }
    }

    /// The heart of the cache: what `want` asks of the slot, with one flight per key. Takes
    /// the slot's turn: joins the flight in progress, or decides under the lock whether to
    /// fly. A flight's requests wait for the upstream budget at `priority` (an org token
    /// with no valid token held goes first, whoever asks).
    pub async fn token(
        self: &Arc<Self>,
        org: &Arc<Org>,
        slot: &Arc<Slot>,
        want: Want<'_>,
        priority: Priority,
    ) -> Result<SharedToken, BrokerError> {
        let flight = match slot.turn().await {
            Turn::Joined(Ok(token)) if token.is_usable(Instant::now()) => return Ok(token),
            Turn::Joined(Ok(_)) => match slot.turn().await {
                Turn::Joined(outcome) => return outcome,
                Turn::Mine(flight) => flight,
            },
            Turn::Joined(Err(e)) => return Err(e),
            Turn::Mine(flight) => flight,
        };
        // A user-token flight waits for its place among the flights in progress; an org
        // token's never does (a user flight in progress may be what needs it). With a
        // shared store, before the claim: a lease is not held while the flight queues.
        let needs_place = slot.key.user.is_some();
        let shared = self.store.as_ref().is_some_and(|s| s.is_shared());
        let mut place = None;
        // Under the lock, look again: the decision to fly is made by one caller at a time;
        // with a shared store, after the claim that makes it one replica at a time.
        let (reason, lease, offline) = loop {
            let now = Instant::now();
            let min_rotation = self.renewal.min_rotation_interval;
            let reason = match decide(want, slot.current(), now, &slot.key, min_rotation) {
                Decision::Done(token) => return Ok(token),
                Decision::Fly(reason) => reason,
            };
            // After a failure, wait before asking the platform again: callers get the error.
            {
                let state = flight.state();
                if state.retry_at().is_some_and(|at| now < at)
                    && let Some(e) = state.last_error()
                {
                    return Err(BrokerError::clone(e));
                }
            }
            if needs_place && shared && place.is_none() {
                // Never closed: acquiring fails only if it were.
                place = Arc::clone(&self.places).acquire_owned().await.ok();
            }
            // Boxed: the miss path only, and it keeps the callers' futures small.
            match Box::pin(self.claim(org, &flight)).await {
                Claimed::Fly(lease) => break (reason, lease, false),
                Claimed::Again => {}
                Claimed::Held { error, hold } => {
                    flight.land(&Err(error.clone()), Some(Landing::Blocked { hold }));
                    self.planner.plan(slot);
                    return Err(error);
                }
                Claimed::Down(e) => {
                    // A valid token held is served until the store answers again (and
                    // renewed then); only a key with none, or one a caller saw rejected,
                    // is fetched without the store: through its primary grant, as no
                    // refresh token can be taken.
                    let valid = slot.current().is_some_and(|t| t.is_valid(now));
                    if !valid || matches!(want, Want::Rotation { .. }) {
                        warn!(key = %slot.key, error = %e, "the shared store is unreachable; fetching this key without it");
                        break (reason, None, true);
                    }
                    let error = BrokerError::StoreUnavailable {
                        key: slot.key.to_string(),
                        detail: e.to_string(),
                    };
                    let failures = flight.state().failures().saturating_add(1);
                    let hold = self.renewal.backoff(failures, rand::rng().random());
                    flight.land(&Err(error.clone()), Some(Landing::Failed { hold }));
                    self.planner.plan(slot);
                    return Err(error);
                }
            }
        };
        let priority = if slot.key.user.is_none()
            && !slot.current().is_some_and(|t| t.is_valid(Instant::now()))
        {
            Priority::OrgCold
        } else {
            priority
        };
        let engine = Arc::clone(self);
        let org = Arc::clone(org);
        let places = (needs_place && place.is_none()).then(|| Arc::clone(&self.places));
        // The flight owns the lock and runs to the end even if every caller goes away.
        tokio::spawn(async move {
            let _place = match places {
                // Never closed: acquiring fails only if it were.
                Some(places) => places.acquire_owned().await.ok(),
                None => place,
            };
            engine
                .fly(&org, flight, reason, lease, offline, priority)
                .await
        })
        .await
        .unwrap_or_else(|e| {
            warn!(key = %slot.key, error = %e, "the upstream request task failed");
            Err(BrokerError::Internal {
                key: slot.key.to_string(),
                detail: "the upstream request task failed",
            })
        })
    }

    /// One upstream request chain for a slot, holding its lock (and, with a shared store,
    /// the key's `lease`, released once the outcome is in the store); lands the outcome.
    /// `offline`: the shared store did not answer the claim, so this flight does without
    /// it (no take, no install, no shared hold) rather than wait for each to time out.
    async fn fly(
        self: &Arc<Self>,
        org: &Arc<Org>,
        flight: Flight,
        reason: Reason,
        lease: Option<Lease>,
        offline: bool,
        priority: Priority,
    ) -> Result<SharedToken, BrokerError> {
        let slot = Arc::clone(flight.slot());
        self.stats.flight();
        let requested = (Instant::now(), SystemTime::now());
        let obtained = self
            .grants
            .obtain(org, &flight, reason, self, offline, priority)
            .await;
        let (outcome, hold) = match obtained {
            Ok((grant, reason)) => {
                let generation = flight.state().generation + 1;
                let window = self.renewal.window(grant.expires_in, rand::rng().random());
                let renew_after = self.renewals.place(
                    &org.token_host(),
                    requested.0,
                    window,
                    rand::rng().random(),
                );
                let mut token = Token::issued(
                    grant.access_token,
                    grant.token_type,
                    requested,
                    grant.expires_in,
                    renew_after,
                )
                .with_scope(grant.scope);
                token.generation = generation;
                token.reason = reason;
                // Kept before it is handed out; the refresh token stays in memory only if
                // the store could not keep it.
                let kept = if offline {
                    // Never in the store: this process alone holds its refresh token.
                    Kept::InMemory(grant.refresh_token)
                } else {
                    self.keep(&slot.key, &token, requested.1, grant.refresh_token)
                        .await
                };
                let unstored = match kept {
                    Kept::Newer(stored) => {
                        // Another replica rotated the key meanwhile (its lease lapsed): its
                        // token stays, and this one's refresh token was never stored.
                        warn!(key = %slot.key, "another replica installed a newer token first; using it");
                        if let Some(adopted) = self.adopt(org, &flight, stored) {
                            let outcome = Ok(adopted);
                            flight.land(&outcome, None);
                            self.planner.plan(&slot);
                            return outcome;
                        }
                        // Its token cannot be read here: this one is served from memory,
                        // without its refresh token, at the store's generation.
                        None
                    }
                    Kept::Stored => None,
                    Kept::InMemory(refresh) => refresh,
                };
                {
                    let mut state = flight.state();
                    state.generation = state.generation.max(generation);
                    token.generation = state.generation;
                    state.refresh_token = unstored;
                }
                self.stats.rotation(reason);
                info!(
                    key = %slot.key,
                    generation = token.generation,
                    fingerprint = %token.fingerprint,
                    expires_in_s = grant.expires_in.as_secs(),
                    ?reason,
                    "new token"
                );
                (Ok(Arc::new(token)), None)
            }
            Err(Miss::Failed(e)) => {
                // This one included: `land` records it.
                let failures = flight.state().failures().saturating_add(1);
                warn!(key = %slot.key, failures, error = %e, "could not obtain a token");
                let hold = self.hold_after(&e, failures);
                if !offline {
                    self.share_hold(&slot.key, &e, hold).await;
                }
                (Err(e), Some(Landing::Failed { hold }))
            }
            Err(Miss::Blocked(e)) => {
                // Not this key's failure: its backoff stays where it was, and it tries
                // again (jittered, so that a crowd of users does not all at once) as soon
                // as the org may.
                let org_retry = org.slot.state().retry_at().map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                let jitter = self.renewal.backoff(1, rand::rng().random());
                info!(key = %slot.key, error = %e, "waiting for the org token");
                (
                    Err(e),
                    Some(Landing::Blocked {
                        hold: org_retry + jitter,
                    }),
                )
            }
        };
        flight.land(&outcome, hold);
        if let (Err(BrokerError::UnknownUser { .. }), Some(user)) = (&outcome, &slot.key.user) {
            // Remembered, and the slot goes unless a stream watches it (its watchers are
            // told REVOKED when its token expires): a burst of ids that do not exist
            // leaves nothing behind once the memory of them expires.
            self.unknown.remember(&org.name, user, Instant::now());
            if slot.watchers() == 0 && org.users.remove(&slot) {
                slot.retire();
            }
        }
        self.planner.plan(&slot);
        drop(lease);
        outcome
    }

    /// Writes `token` (and `refresh_token`) to the store, if there is one, unless another
    /// replica installed a newer one first.
    async fn keep(
        &self,
        key: &TokenKey,
        token: &Token,
        issued: SystemTime,
        refresh_token: Option<RefreshToken>,
    ) -> Kept {
        let (Some(store), Some(lifetime)) = (&self.store, token.lifetime) else {
            return Kept::InMemory(refresh_token);
        };
        let written = store
            .install(
                &key.org,
                key.user.as_deref(),
                NewToken {
                    generation: token.generation,
                    access_token: &token.access_token,
                    token_type: token.token_type(),
                    issued,
                    lifetime,
                    reason: token.reason.name(),
                    scope: token.scope(),
                    refresh_token: refresh_token.as_ref(),
                },
            )
            .await;
        match written {
            Ok(Installed::Done) => Kept::Stored,
            Ok(Installed::Newer(stored)) => Kept::Newer(stored),
            // A shared store that did not answer may still apply the write: its refresh
            // token could then be taken by another replica, so this one never presents it
            // (the next flight takes it from the store, or uses the primary grant).
            Err(e) if store.is_shared() => {
                warn!(key = %key, error = %e, "could not write the new token to the shared store; serving it from memory, without its refresh token");
                Kept::InMemory(None)
            }
            Err(e) => {
                warn!(key = %key, error = %e, "could not write the new token to the store; serving it from memory");
                Kept::InMemory(refresh_token)
            }
        }
    }

    /// How long to keep the platform unasked after `e`, the `failures`-th failure in a row:
    /// rejected credentials are permanent until the configuration changes, a 429 names its
    /// own wait, anything else backs off exponentially with full jitter (so that neither
    /// callers nor the renewal timer hammer the platform, even about an unknown user).
    fn hold_after(&self, e: &BrokerError, failures: u32) -> Duration {
        let backoff = self.renewal.backoff(failures, rand::rng().random());
        match (e, e.retry_after()) {
            (e, _) if e.is_permanent() => self.renewal.credentials_retry,
            (_, Some(wait)) => backoff.max(wait),
            _ => backoff,
        }
    }
}

/// Where a new token went.
enum Kept {
    /// Into the store, with its refresh token.
    Stored,
    /// Nowhere but memory; with its refresh token if this process alone may present it.
    InMemory(Option<RefreshToken>),
    /// Nowhere: another replica's newer token is the key's.
    Newer(Stored),
}

/// A user flight gets its org token through the same engine: one org flight however many
/// user flights need it. Boxed: a user flight may start an org flight, and the recursion
/// needs a future of known size.
impl OrgBearer for Arc<SingleFlight> {
    fn org_token<'a>(
        &'a self,
        org: &'a Arc<Org>,
        stale: Option<&'a str>,
    ) -> BoxFuture<'a, Result<SharedToken, BrokerError>> {
        Box::pin(async move {
            match stale {
                None => self.usable(org, &org.slot, Priority::Caller).await,
                Some(stale) => {
                    let seen = org.slot.current().map_or(u64::MAX, |t| {
                        if t.access_token.expose() == stale {
                            t.generation
                        } else {
                            // Replaced already: the bytes say so.
                            u64::MAX
                        }
                    });
                    let want = Want::Rotation {
                        stale: Some(stale),
                        seen,
                    };
                    // The org token was refused: every user flight of the org waits on its
                    // replacement, so it goes before them.
                    self.token(org, &org.slot, want, Priority::OrgCold).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        broker::{Broker, CachePolicy, Limits},
        config::Listen,
        upstream::{self, Upstream},
    };

    /// A store that cannot write costs no caller its token: it is served from memory, and
    /// its refresh token, which the store does not hold, is kept in memory for the next
    /// rotation (a refresh grant, not a new client-credentials grant).
    #[tokio::test]
    async fn a_token_the_store_cannot_keep_is_served_from_memory_with_its_refresh_token() {
        let listen = Listen::Tcp("127.0.0.1:0".parse().expect("an address"));
        let (config, sandbox) = crate::demo::start(listen).await.expect("the demo sandbox");
        let upstream = Upstream::new(Duration::from_secs(5), Arc::new(upstream::Unobserved))
            .expect("an HTTP client");
        let policy = CachePolicy {
            prefetch_org_tokens: false,
            ..CachePolicy::default()
        };
        let store = Some((Arc::new(Store::failing()), Vec::new()));
        let broker = Broker::with_store(config.orgs, upstream, policy, Limits::default(), store);
        let org = broker.find_org("", &|_| true).expect("the demo org");
        let first = broker
            .org_token(&org, None)
            .await
            .expect("served from memory");
        let second = broker
            .refresh(&org, None, Some(first.token.access_token.expose()))
            .await
            .expect("rotated");
        assert_eq!(second.token.generation, 2);
        let stats = sandbox.stats();
        assert_eq!(
            (stats.client_credentials, stats.refresh_token),
            (1, 1),
            "the second through the refresh token kept in memory"
        );
        assert_eq!(second.token.reason, Reason::Forced);
    }
}
