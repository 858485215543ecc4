//! The domain: token keys, the cache, single flight, background renewal and rotation
//! events. Knows nothing of tonic; reaches the platform only through [`crate::upstream`].
//!
//! Every key (an org, or one user of an org) owns a [`slot::Slot`]. Reading the slot's
//! watch channel is the cache hit; a miss or a rotation takes the slot's lock, and callers
//! that queued behind a flight take its outcome rather than flying again. Flights run in
//! their own task, so a caller that disconnects never cancels a request half-way (which for
//! a refresh token would leave the broker unsure whether it was spent). One renewal timer
//! ([`renew`], [`timer`]) replaces every token ahead of expiry, so callers in steady state
//! never wait on the platform.
//!
//! What each RPC does here, once `grpc::service` has admitted the caller and looked the org
//! up (once: the [`OrgRef`] it passes in):
//!
//! - **GetOrgToken**: [`Broker::cached_org_token`] reads the org's slot (the cache hit, no
//!   lock); on a miss [`Broker::org_token`] waits in `serve` → `token`: it joins the flight
//!   in progress or starts one (`fly`), which runs `obtain` in its own task: the refresh
//!   token if one is held, else client credentials (`primary_grant`).
//! - **GetUserToken**: the same on the user's slot ([`Broker::cached_user_token`],
//!   [`Broker::user_token`]), made on first use (`user_slot` in `renew.rs`, which evicts at
//!   the cap). A user's primary grant is `authorization_grant` with the org token (itself
//!   from the org's slot, fetched if needed), then the code exchange; waiting for a place
//!   among `upstream.max_concurrent_flights` comes first (`limits.rs`).
//! - **Refresh**: [`Broker::refresh`] takes the slot's turn with `Want::Rotation`: if the
//!   slot already holds a token other than the caller's stale one, that one is the answer;
//!   otherwise this call flies (`fly` → `obtain`). The refresh token is taken out of the
//!   slot before it is sent (the single-use invariant, in `obtain`), so it is never
//!   presented twice, whatever happens to the answer.
//! - **WatchTokens**: [`Broker::watch`] subscribes to each key's watch channel before it
//!   fetches (`serve`), so no token installed in between is missed; the stream is
//!   [`TokenEvents`] (`watch_events.rs`).
//!
//! Every landed flight schedules the slot's next look (`plan`, in `renew.rs`) on the one
//! timer: renewal ahead of expiry, a retry after a failure, or the idle drop of a user key.

mod error;
mod key;
mod limits;
mod orgs;
mod reload;
mod renew;
mod schedule;
mod slot;
mod stats;
mod timer;
mod token;
mod users;
mod watch_events;

use crate::sync::RwLockUnpoisoned;
use std::{
    sync::{
        Arc, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use futures::future::{BoxFuture, try_join_all};
use rand::Rng;
use tokio::{
    sync::{Semaphore, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use error::BrokerError;
pub use key::{MAX_ID_LEN, TokenKey, check_id};
pub use limits::Limits;
pub use reload::OrgChanges;
pub use schedule::RenewalPolicy;
use slot::{Flight, Landing, Slot, Turn};
pub use stats::BrokerStats;
pub use token::{
    Gone, GoneReason, Held, MAX_EXPIRY_MARGIN, Reason, SharedToken, Token, UnixTime, usable_until,
};
use users::UserSlots;
pub use watch_events::{TokenEvents, WatchEvent};

use crate::{
    secret::{AccessToken, AuthCode, ClientSecret},
    upstream::{self, Grant, Upstream, UpstreamError},
};

/// How the broker proves itself to the platform for one org.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// OAuth client credentials: tokens are issued and rotated. Several secrets are tried
    /// in order (the last one that worked first), so a secret can be rotated at the
    /// platform without downtime.
    Client {
        client_id: String,
        secrets: Vec<ClientSecret>,
    },
    /// A long-lived access token or API key: handed out as the org token, never rotated.
    Static(AccessToken),
}

/// One configured organization.
#[derive(Debug, Clone)]
pub struct OrgSettings {
    pub name: String,
    pub client: upstream::Client,
    pub credentials: Credentials,
}

/// How the broker keeps tokens: renewal timing and the user-token cache's bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    pub renewal: RenewalPolicy,
    /// A user token neither watched nor used for this long is dropped.
    pub user_idle_timeout: Duration,
    /// The most user tokens held; beyond it the longest idle unwatched one is dropped.
    pub max_user_tokens: usize,
    /// Fetch every org token at start (and keep trying), rather than on first use.
    pub prefetch_org_tokens: bool,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            renewal: RenewalPolicy::default(),
            user_idle_timeout: Duration::from_secs(15 * 60),
            max_user_tokens: 100_000,
            prefetch_org_tokens: true,
        }
    }
}

/// A token handed to a caller, and the key it was handed out for.
#[derive(Debug, Clone)]
pub struct Served {
    pub token: SharedToken,
    pub key: KeyRef,
}

/// The key a token was served for, by the slot that holds it: its org and user, and an
/// identity that stays the same for as long as the broker holds the key (for the audit,
/// which counts hand-outs per key without copying its ids).
#[derive(Clone)]
pub struct KeyRef(Arc<Slot>);

impl KeyRef {
    /// The org and user.
    pub fn key(&self) -> &TokenKey {
        &self.0.key
    }

    /// Whether both name the same slot.
    pub fn same(&self, other: &KeyRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A number that names the slot while it is held (its address).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl std::fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRef({})", self.0.key)
    }
}

/// A receiver of one key's tokens: the current one, then every new one.
pub type TokenWatch = watch::Receiver<Held>;

/// The token broker. Cheap to clone: clones share one cache.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    orgs: orgs::Orgs,
    upstream: Upstream,
    policy: CachePolicy,
    stats: Arc<stats::Counters>,
    /// Callers waiting on the platform now (`Limits::max_waiting_callers`).
    waiting: limits::Waiting,
    /// Places for user-token flights in progress (`Limits::max_concurrent_flights`).
    flights: Arc<Semaphore>,
    max_flights: usize,
    /// When each slot is next looked at by the renewal timer.
    timer: Arc<timer::Timer<Slot>>,
    /// Stops the renewal timer: cancelled by [`Broker::shutdown`], or when the last clone
    /// of the broker is dropped.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug)]
struct Org {
    name: Arc<str>,
    /// Where and how to ask the platform; swapped whole by a reload.
    config: RwLock<Arc<OrgConfig>>,
    slot: Arc<Slot>,
    users: RwLock<UserSlots>,
    /// Index of the client secret that worked last.
    secret_in_use: AtomicUsize,
}

/// A configured org, as a call found it: its name, and its cache for the fast paths
/// ([`Broker::cached_org_token`], [`Broker::cached_user_token`]).
#[derive(Debug, Clone)]
pub struct OrgRef(Arc<Org>);

impl OrgRef {
    /// The org's configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }
}

/// An org's endpoints and credentials.
#[derive(Debug)]
struct OrgConfig {
    client: upstream::Client,
    credentials: Credentials,
}

impl Org {
    /// The org's current endpoints and credentials.
    fn config(&self) -> Arc<OrgConfig> {
        Arc::clone(&self.config.read_unpoisoned())
    }

    /// The slot of `user`, if one is held.
    fn user_slot_if_held(&self, user: &str) -> Option<Arc<Slot>> {
        self.users.read_unpoisoned().get(user).cloned()
    }

    fn is_static(&self) -> bool {
        matches!(self.config().credentials, Credentials::Static(_))
    }
}

/// What a caller wants from a slot.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// A token that may be handed out now.
    Usable,
    /// A new token, because a caller asked (Refresh); with the token the caller saw
    /// rejected, none if the broker already holds another.
    Rotation { stale: Option<&'a str> },
    /// A new token ahead of expiry, unless `of` was replaced already.
    Renewal { of: &'a SharedToken },
}

impl Broker {
    /// A broker for `orgs`, talking to the platform through `upstream`. Nothing is fetched
    /// until asked for; from then on tokens are renewed in the background. Must be called
    /// within a Tokio runtime.
    pub fn new(
        orgs: Vec<OrgSettings>,
        upstream: Upstream,
        policy: CachePolicy,
        limits: Limits,
    ) -> Self {
        let max_flights = limits
            .max_concurrent_flights
            .clamp(1, Semaphore::MAX_PERMITS);
        let broker = Self {
            inner: Arc::new(Inner {
                orgs: orgs::Orgs::default(),
                upstream,
                policy,
                stats: Arc::default(),
                waiting: limits::Waiting::new(limits.max_waiting_callers),
                flights: Arc::new(Semaphore::new(max_flights)),
                max_flights,
                timer: Arc::default(),
                shutdown: CancellationToken::new(),
            }),
        };
        tokio::spawn(Self::run_timer(
            Arc::downgrade(&broker.inner),
            Arc::clone(&broker.inner.timer),
            broker.inner.shutdown.clone(),
        ));
        for settings in orgs {
            broker.add_org(settings);
        }
        broker
    }

    /// Adds an org (replacing any of that name) and starts renewing its token.
    fn add_org(&self, settings: OrgSettings) -> Arc<Org> {
        let name: Arc<str> = settings.name.into();
        let key = TokenKey {
            org: Arc::clone(&name),
            user: None,
        };
        let initial = match &settings.credentials {
            Credentials::Static(token) => Some(Arc::new(Token::long_lived(token.clone()))),
            Credentials::Client { .. } => None,
        };
        let org = Arc::new_cyclic(|me: &Weak<Org>| Org {
            name: Arc::clone(&name),
            config: RwLock::new(Arc::new(OrgConfig {
                client: settings.client,
                credentials: settings.credentials,
            })),
            slot: Arc::new(Slot::new(key, initial, me.clone())),
            users: RwLock::default(),
            secret_in_use: AtomicUsize::new(0),
        });
        self.inner.orgs.insert(Arc::clone(&org));
        self.plan(&org.slot);
        org
    }

    /// Every org now configured.
    fn all_orgs(&self) -> Vec<Arc<Org>> {
        self.inner.orgs.all()
    }

    /// Stops the background renewal. Tokens already held stay readable.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The configured org names, sorted.
    pub fn org_names(&self) -> Vec<String> {
        self.inner.orgs.names()
    }

    /// The configured org `name` refers to (the only org, when `name` is empty), found
    /// once for a call's checks and its cache lookup. An error lists the orgs for which
    /// `visible` is true (those the caller may use), never the others.
    pub fn find_org(
        &self,
        name: &str,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<OrgRef, BrokerError> {
        self.org_listing(name, visible).map(OrgRef)
    }

    /// Each org and how long its token stays valid: `None` if none is held or it is
    /// long-lived (see [`Broker::is_ready`]).
    pub fn org_token_expiries(&self) -> Vec<(String, Option<Duration>)> {
        let now = Instant::now();
        let mut expiries: Vec<_> = self
            .all_orgs()
            .iter()
            .map(|org| {
                (
                    org.name.to_string(),
                    org.slot.current().and_then(|t| t.valid_for(now)),
                )
            })
            .collect();
        expiries.sort();
        expiries
    }

    /// Whether every configured org holds a valid token (a long-lived one counts).
    pub fn is_ready(&self) -> bool {
        let now = Instant::now();
        self.all_orgs()
            .iter()
            .all(|org| org.slot.current().is_some_and(|t| t.is_valid(now)))
    }

    /// What the broker has done so far.
    pub fn stats(&self) -> BrokerStats {
        let (mut held, mut watchers) = (0, 0);
        for org in self.all_orgs() {
            let users = org.users.read_unpoisoned();
            held += users.len();
            watchers += org.slot.watchers() + users.slots().map(|s| s.watchers()).sum::<usize>();
        }
        let mut stats = self.inner.stats.snapshot(held, watchers);
        stats.waiting_callers = self.inner.waiting.count();
        stats.flights_in_progress = self.inner.max_flights - self.inner.flights.available_permits();
        stats
    }

    /// The org's token if the cache holds one that may be handed out now, without waiting:
    /// the fast path of [`Broker::org_token`], which callers try first.
    pub fn cached_org_token(
        &self,
        org: &OrgRef,
        min_valid_for: Option<Duration>,
    ) -> Option<Served> {
        let slot = &org.0.slot;
        self.hit(slot, min_valid_for)
            .map(|token| served(Arc::clone(slot), token))
    }

    /// A user's token if the cache holds one that may be handed out now, without waiting:
    /// the fast path of [`Broker::user_token`], which callers try first.
    pub fn cached_user_token(
        &self,
        org: &OrgRef,
        user: &str,
        min_valid_for: Option<Duration>,
    ) -> Result<Option<Served>, BrokerError> {
        check_id("user_id", user)?;
        Ok(org.0.user_slot_if_held(user).and_then(|slot| {
            let token = self.hit(&slot, min_valid_for)?;
            Some(served(slot, token))
        }))
    }

    /// The key's token if it is still valid (though past the point where it is handed out
    /// without renewing first) and meets `min_valid_for`: what a caller whose deadline
    /// comes while it waits on the renewal gets rather than an error.
    pub fn still_valid(
        &self,
        org: &OrgRef,
        user: Option<&str>,
        min_valid_for: Option<Duration>,
    ) -> Option<Served> {
        let slot = match user {
            None => Arc::clone(&org.0.slot),
            Some(user) => org.0.user_slot_if_held(user)?,
        };
        let now = Instant::now();
        let token = slot
            .current()
            .filter(|t| t.is_valid(now) && meets(t, now, min_valid_for))?;
        self.inner.stats.served_stale();
        Some(served(slot, token))
    }

    /// The org's token: from cache while usable, else fetched (one flight however many ask).
    /// With `min_valid_for`, the token returned stays valid at least that long.
    pub async fn org_token(
        &self,
        org: &OrgRef,
        min_valid_for: Option<Duration>,
    ) -> Result<Served, BrokerError> {
        let org = &org.0;
        let token = self.serve(org, &org.slot, min_valid_for).await?;
        Ok(served(Arc::clone(&org.slot), token))
    }

    /// A token acting as `user` (a person id or ExternalSourceID) of `org`.
    pub async fn user_token(
        &self,
        org: &OrgRef,
        user: &str,
        min_valid_for: Option<Duration>,
    ) -> Result<Served, BrokerError> {
        let org = &org.0;
        check_id("user_id", user)?;
        let slot = self.user_slot(org, user);
        let token = self.serve(org, &slot, min_valid_for).await?;
        Ok(served(slot, token))
    }

    /// Rotates the org token (`user` `None`) or a user's token and returns the new one.
    /// With `stale` (the token the caller saw rejected): if the broker already holds a
    /// different token, that one is returned without an upstream call.
    pub async fn refresh(
        &self,
        org: &OrgRef,
        user: Option<&str>,
        stale: Option<&str>,
    ) -> Result<Served, BrokerError> {
        let org = &org.0;
        let slot = match user {
            None => {
                if org.is_static() {
                    return Err(BrokerError::NotRotatable {
                        org: org.name.to_string(),
                    });
                }
                Arc::clone(&org.slot)
            }
            Some(user) => {
                check_id("user_id", user)?;
                self.user_slot(org, user)
            }
        };
        slot.touch(Instant::now());
        let _waiting = self.inner.waiting.enter()?;
        let token = self.token(org, &slot, Want::Rotation { stale }).await?;
        Ok(served(slot, token))
    }

    /// The events of the org token (`users` empty) or of each user's token: first each
    /// key's current token (fetched if needed), then every new token and every loss.
    pub async fn watch(&self, org: &OrgRef, users: &[String]) -> Result<TokenEvents, BrokerError> {
        let org = &org.0;
        let slots = if users.is_empty() {
            vec![Arc::clone(&org.slot)]
        } else {
            for user in users {
                check_id("user_ids", user)?;
            }
            let mut slots: Vec<Arc<Slot>> = Vec::with_capacity(users.len());
            for user in users {
                let slot = self.user_slot(org, user);
                if !slots.iter().any(|s| Arc::ptr_eq(s, &slot)) {
                    slots.push(slot);
                }
            }
            slots
        };
        // Subscribe before fetching, so no token installed in between is missed.
        let receivers = slots.iter().map(|s| s.subscribe()).collect();
        try_join_all(slots.iter().map(|s| self.serve(org, s, None))).await?;
        Ok(TokenEvents::new(slots, receivers, self.clone()))
    }

    fn org(&self, name: &str) -> Result<Arc<Org>, BrokerError> {
        self.org_listing(name, &|_| true)
    }

    /// [`Broker::org`], its errors listing only the orgs `visible` lets through.
    fn org_listing(
        &self,
        name: &str,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<Org>, BrokerError> {
        self.inner.orgs.find(name, visible)
    }

    /// A caller's request for a slot's token: the cache hit, or a wait on the platform.
    async fn serve(
        &self,
        org: &Arc<Org>,
        slot: &Arc<Slot>,
        min_valid_for: Option<Duration>,
    ) -> Result<SharedToken, BrokerError> {
        if let Some(token) = self.hit(slot, min_valid_for) {
            return Ok(token);
        }
        self.inner.stats.miss();
        let _waiting = self.inner.waiting.enter()?;
        let token = self.usable(org, slot).await?;
        let Some(min) = min_valid_for else {
            return Ok(token);
        };
        if meets(&token, Instant::now(), Some(min)) {
            return Ok(token);
        }
        let out_of_range = |lifetime| BrokerError::OutOfRange {
            key: slot.key.to_string(),
            requested: min,
            lifetime,
        };
        let lifetime = token.lifetime.unwrap_or_default();
        if min >= lifetime {
            return Err(out_of_range(lifetime));
        }
        let renewed = self.token(org, slot, Want::Renewal { of: &token }).await?;
        if meets(&renewed, Instant::now(), Some(min)) {
            Ok(renewed)
        } else {
            Err(out_of_range(renewed.lifetime.unwrap_or_default()))
        }
    }

    /// The slot's token if it may be handed out now (and meets `min_valid_for`): the cache
    /// hit. Records the use either way.
    fn hit(&self, slot: &Slot, min_valid_for: Option<Duration>) -> Option<SharedToken> {
        let now = Instant::now();
        slot.touch(now);
        let token = slot
            .usable(now)
            .filter(|token| meets(token, now, min_valid_for))?;
        self.inner.stats.hit();
        Some(token)
    }

    /// A token that may be handed out: usable, or, when the platform fails, one it still
    /// accepts (during an outage callers keep getting the token until it actually expires).
    async fn usable(&self, org: &Arc<Org>, slot: &Arc<Slot>) -> Result<SharedToken, BrokerError> {
        match self.token(org, slot, Want::Usable).await {
            Err(e @ (BrokerError::Unavailable { .. } | BrokerError::Internal { .. })) => {
                match slot.current() {
                    Some(token) if token.is_valid(Instant::now()) => {
                        debug!(key = %slot.key, error = %e, "platform failing; handing out the still valid token");
                        self.inner.stats.served_stale();
                        Ok(token)
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// The heart of the cache: a usable token at once, or one flight per key.
    async fn token(
        &self,
        org: &Arc<Org>,
        slot: &Arc<Slot>,
        want: Want<'_>,
    ) -> Result<SharedToken, BrokerError> {
        if let Want::Usable = want
            && let Some(token) = slot.usable(Instant::now())
        {
            return Ok(token);
        }
        let flight = match slot.turn().await {
            Turn::Joined(Ok(token)) if token.is_usable(Instant::now()) => return Ok(token),
            Turn::Joined(Ok(_)) => match slot.turn().await {
                Turn::Joined(outcome) => return outcome,
                Turn::Mine(flight) => flight,
            },
            Turn::Joined(Err(e)) => return Err(e),
            Turn::Mine(flight) => flight,
        };
        // Under the lock, look again: the decision to fly is made by one caller at a time.
        let now = Instant::now();
        let current = slot.current();
        let reason = match (want, &current) {
            (Want::Usable, Some(t)) if t.is_usable(now) => return Ok(Arc::clone(t)),
            (Want::Usable, Some(_)) => Reason::Renewed,
            (Want::Usable, None) => Reason::Issued,
            (Want::Rotation { stale: Some(stale) }, Some(t))
                if t.access_token.expose() != stale =>
            {
                debug!(key = %slot.key, fingerprint = %t.fingerprint, "refresh names an already replaced token; returning the current one");
                return Ok(Arc::clone(t));
            }
            (Want::Rotation { .. }, Some(_)) => Reason::Forced,
            (Want::Renewal { of }, Some(t)) if !Arc::ptr_eq(of, t) => return Ok(Arc::clone(t)),
            (Want::Renewal { .. }, Some(_)) => Reason::Renewed,
            (Want::Rotation { .. } | Want::Renewal { .. }, None) => Reason::Issued,
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
        let broker = self.clone();
        let org = Arc::clone(org);
        // A user-token flight waits for its place among the flights in progress; an org
        // token's never does (a user flight in progress may be what needs it).
        let places = slot
            .key
            .user
            .is_some()
            .then(|| Arc::clone(&self.inner.flights));
        // The flight owns the lock and runs to the end even if every caller goes away.
        tokio::spawn(async move {
            let _place = match places {
                // Never closed: acquiring fails only if it were.
                Some(places) => places.acquire_owned().await.ok(),
                None => None,
            };
            broker.fly(&org, flight, reason).await
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

    /// One upstream request chain for a slot, holding its lock; lands the outcome.
    async fn fly(
        &self,
        org: &Arc<Org>,
        flight: Flight,
        reason: Reason,
    ) -> Result<SharedToken, BrokerError> {
        let slot = Arc::clone(flight.slot());
        self.inner.stats.flight();
        let requested = (Instant::now(), SystemTime::now());
        let (outcome, hold) = match self.obtain(org, &slot.key, &flight, reason).await {
            Ok((grant, reason)) => {
                let generation = {
                    let mut state = flight.state();
                    state.generation += 1;
                    state.refresh_token = grant.refresh_token;
                    state.generation
                };
                let renew_after = self
                    .inner
                    .policy
                    .renewal
                    .renew_after(grant.expires_in, rand::rng().random());
                let mut token = Token::issued(
                    grant.access_token,
                    grant.token_type,
                    requested,
                    grant.expires_in,
                    renew_after,
                );
                token.generation = generation;
                token.reason = reason;
                self.inner.stats.rotation(reason);
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
                (Err(e), Some(Landing::Failed { hold }))
            }
            Err(Miss::Blocked(e)) => {
                // Not this key's failure: its backoff stays where it was, and it tries
                // again (jittered, so that a crowd of users does not all at once) as soon
                // as the org may.
                let org_retry = org.slot.state().retry_at().map_or(Duration::ZERO, |at| {
                    at.saturating_duration_since(Instant::now())
                });
                let jitter = self.inner.policy.renewal.backoff(1, rand::rng().random());
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
        self.plan(&slot);
        outcome
    }

    /// How long to keep the platform unasked after `e`, the `failures`-th failure in a row:
    /// rejected credentials are permanent until the configuration changes, a 429 names its
    /// own wait, anything else backs off exponentially with full jitter (so that neither
    /// callers nor the renewal timer hammer the platform, even about an unknown user).
    fn hold_after(&self, e: &BrokerError, failures: u32) -> Duration {
        let policy = &self.inner.policy.renewal;
        let backoff = policy.backoff(failures, rand::rng().random());
        match (e, e.retry_after()) {
            (BrokerError::CredentialsRejected { .. }, _) => policy.credentials_retry,
            (_, Some(wait)) => backoff.max(wait),
            _ => backoff,
        }
    }

    /// Gets a grant for the slot's key: through the refresh token when one is held, else
    /// (or when it fails) through the primary grant. Returns the reason to record.
    async fn obtain(
        &self,
        org: &Arc<Org>,
        key: &TokenKey,
        flight: &Flight,
        reason: Reason,
    ) -> Result<(Grant, Reason), Miss> {
        // INVARIANT: a refresh token is presented at most once, ever. It is moved out of
        // the slot before it is sent, so whatever happens to the answer (success, an error,
        // a timeout, a reset connection, a 5xx after the platform spent it) it can never be
        // sent again: on any failure the token is re-issued through the primary grant.
        let taken = flight.state().refresh_token.take();
        let Some(refresh_token) = taken else {
            return Ok((self.primary_grant(org, key).await?, reason));
        };
        match self
            .inner
            .upstream
            .refresh(&org.config().client, refresh_token)
            .await
        {
            Ok(grant) => return Ok((grant, reason)),
            // Rejected credentials fail the primary grant too; a 429 holds every request
            // to the platform, the primary grant's included, until its `Retry-After` (the
            // refresh token stays spent: the next flight uses the primary grant).
            Err(
                e @ (UpstreamError::CredentialsRejected { .. } | UpstreamError::RateLimited { .. }),
            ) => {
                return Err(Miss::Failed(BrokerError::upstream(key, &e)));
            }
            Err(e) => {
                warn!(key = %key, error = %e, "refresh token spent without a usable answer; re-issuing through the primary grant");
            }
        }
        Ok((self.primary_grant(org, key).await?, Reason::Reissued))
    }

    /// Client credentials for the org token; authorization grant then code exchange for a
    /// user token.
    async fn primary_grant(&self, org: &Arc<Org>, key: &TokenKey) -> Result<Grant, Miss> {
        let upstream = &self.inner.upstream;
        let fail = |e: UpstreamError| Miss::Failed(BrokerError::upstream(key, &e));
        let config = org.config();
        match (&key.user, &config.credentials) {
            (None, Credentials::Client { client_id, secrets }) => {
                // The secret that worked last goes first; a rejected one passes to the next.
                let first = org.secret_in_use.load(Ordering::Relaxed);
                let mut last_error = None;
                for i in (0..secrets.len()).map(|k| (first + k) % secrets.len()) {
                    match upstream
                        .client_credentials(&config.client, client_id, &secrets[i])
                        .await
                    {
                        Ok(grant) => {
                            if i != first {
                                info!(org = %org.name, secret = i + 1, "switched to the next configured client secret");
                            }
                            org.secret_in_use.store(i, Ordering::Relaxed);
                            return Ok(grant);
                        }
                        Err(e @ UpstreamError::CredentialsRejected { .. }) => last_error = Some(e),
                        Err(e) => return Err(fail(e)),
                    }
                }
                Err(last_error.map_or_else(
                    || {
                        Miss::Failed(BrokerError::NotRotatable {
                            org: org.name.to_string(),
                        })
                    },
                    fail,
                ))
            }
            // A static org's slot always holds its token; nothing can issue another.
            (None, Credentials::Static(_)) => Err(Miss::Failed(BrokerError::NotRotatable {
                org: org.name.to_string(),
            })),
            (Some(user), _) => {
                let code = self.authorization_grant(org, key, user).await?;
                upstream
                    .exchange_code(&config.client, code)
                    .await
                    .map_err(fail)
            }
        }
    }

    /// Asks for a code acting as `user`, with the org token as bearer. A 401 means the org
    /// token expired or was revoked: rotate it once (coalesced with any other flight that
    /// saw the same) and try again.
    async fn authorization_grant(
        &self,
        org: &Arc<Org>,
        key: &TokenKey,
        user: &str,
    ) -> Result<AuthCode, Miss> {
        let upstream = &self.inner.upstream;
        let config = org.config();
        let bearer = self
            .org_slot_token(org, Want::Usable)
            .await
            .map_err(Miss::Blocked)?;
        let answer = match upstream
            .authorization_grant(&config.client, &bearer.access_token, user)
            .await
        {
            Err(UpstreamError::BearerRejected)
                if matches!(config.credentials, Credentials::Client { .. }) =>
            {
                info!(org = %org.name, "the grant endpoint rejected the org token; rotating it once");
                let stale = Some(bearer.access_token.expose());
                let bearer = self
                    .org_slot_token(org, Want::Rotation { stale })
                    .await
                    .map_err(Miss::Blocked)?;
                upstream
                    .authorization_grant(&config.client, &bearer.access_token, user)
                    .await
            }
            other => other,
        };
        answer.map_err(|e| Miss::Failed(BrokerError::upstream(key, &e)))
    }

    /// The org token, from inside a user flight. Boxed: a user flight may start an org
    /// flight, and the recursion needs a future of known size.
    fn org_slot_token<'a>(
        &'a self,
        org: &'a Arc<Org>,
        want: Want<'a>,
    ) -> BoxFuture<'a, Result<SharedToken, BrokerError>> {
        Box::pin(async move {
            match want {
                Want::Usable => self.usable(org, &org.slot).await,
                _ => self.token(org, &org.slot, want).await,
            }
        })
    }
}

/// Why a flight got no grant.
enum Miss {
    /// Its own request chain failed: one more failure in a row for its key.
    Failed(BrokerError),
    /// A user key's flight could not get the org token it needs: not the key's failure.
    Blocked(BrokerError),
}

/// `token`, served from `slot`.
fn served(slot: Arc<Slot>, token: SharedToken) -> Served {
    Served {
        token,
        key: KeyRef(slot),
    }
}

/// Whether `token` satisfies a caller's `min_valid_for` at `now`.
fn meets(token: &Token, now: Instant, min_valid_for: Option<Duration>) -> bool {
    match (min_valid_for, token.valid_for(now)) {
        (None, _) | (Some(_), None) => true,
        (Some(min), Some(left)) => left >= min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renewal timer holds no broker while it waits: dropping the last clone ends it,
    /// and `shutdown` ends it too.
    #[tokio::test]
    async fn the_renewal_timer_ends_with_its_broker() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let new_broker = || {
            let upstream = Upstream::new(Duration::from_secs(1), Arc::new(upstream::Unobserved))
                .expect("an HTTP client");
            Broker::new(vec![], upstream, CachePolicy::default(), Limits::default())
        };
        let wait_for = |n: usize| async move {
            for _ in 0..200 {
                if alive() == n {
                    return true;
                }
                tokio::task::yield_now().await;
            }
            false
        };
        let broker = new_broker();
        assert_eq!(alive(), before + 1, "one timer task");
        let clone = broker.clone();
        drop(broker);
        tokio::task::yield_now().await;
        assert_eq!(alive(), before + 1, "a clone keeps it");
        drop(clone);
        assert!(wait_for(before).await, "dropping the last clone ends it");
        let broker = new_broker();
        broker.shutdown();
        assert!(wait_for(before).await, "shutdown ends it");
    }
}
