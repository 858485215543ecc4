//! The domain: token keys, the cache, single flight, background renewal and rotation
//! events. Knows nothing of tonic; reaches the platform only through [`crate::upstream`].
//!
//! Every key (an org, or one user of an org) owns a [`slot::Slot`]. Reading the slot's
//! token is the cache hit; a miss or a rotation goes to the single-flight engine
//! ([`flight`]), which makes one upstream request chain per key however many callers ask,
//! in its own task, so a caller that disconnects never cancels a request half-way (which
//! for a refresh token would leave the broker unsure whether it was spent). The requests
//! themselves, and the rule that a refresh token is presented at most once, are in
//! [`grant`]. One renewal timer ([`renew`], planned by [`plan`] on [`timer`]) replaces
//! every token ahead of expiry, so callers in steady state never wait on the platform.
//! The orgs ([`orgs`], each an [`org::Org`] with its users' slots in [`users`]) are the
//! state; this file is the entry to it.
//!
//! What each RPC does here, once `grpc::service` has admitted the caller and looked the org
//! up (once: the [`OrgRef`] it passes in):
//!
//! - **GetOrgToken**: [`Broker::cached_org_token`] reads the org's slot (the cache hit, no
//!   lock); on a miss [`Broker::org_token`] waits in `wait_for_token` for the engine's `usable`,
//!   which joins the flight in progress or starts one (`token` → `fly` in `flight.rs`);
//!   the flight's `Grants::obtain` (`grant.rs`) spends the refresh token if one is held,
//!   else asks for client credentials.
//! - **GetUserToken**: the same on the user's slot ([`Broker::cached_user_token`],
//!   [`Broker::user_token`]), made on first use (`user_slot`, which evicts at the cap). A
//!   user's primary grant is the authorization grant with the org token (itself from the
//!   org's slot, through the same engine), then the code exchange; the flight first waits
//!   for a place among `upstream.max_concurrent_flights`.
//! - **Refresh**: [`Broker::refresh`] asks the engine for `Want::Rotation`: under the
//!   slot's lock, if it already holds a token other than the caller's stale one, that one
//!   is the answer; otherwise this call flies (`fly` → `obtain`). The refresh token is
//!   taken out of the slot before it is sent (the single-use invariant, in `grant.rs`), so
//!   it is never presented twice, whatever happens to the answer.
//! - **WatchTokens**: [`Broker::watch`] subscribes to each key's watch channel before it
//!   fetches (`wait_for_token`), so no token installed in between is missed; the stream is
//!   [`TokenEvents`] (`watch_events.rs`).
//!
//! Every landed flight plans the slot's next look (`Planner::plan`) on the one timer:
//! renewal ahead of expiry, a retry after a failure, or the idle drop of a user key.
//!
//! (This file is over 400 lines because it keeps every public entry point of the domain
//! together, with the story above, so each RPC's path starts in one place.)

mod budget;
mod error;
mod flight;
mod grant;
mod key;
mod limits;
mod org;
mod orgs;
mod plan;
mod reload;
mod renew;
mod replicas;
mod restore;
mod schedule;
mod served;
mod slot;
mod spread;
mod stats;
mod timer;
mod token;
mod unknown;
mod users;
mod want;
mod watch_events;

use std::{sync::Arc, time::Duration};

use futures::future::try_join_all;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use budget::{BudgetPolicy, BudgetStats, Priority};
pub use error::BrokerError;
pub use key::{MAX_ID_LEN, TokenKey, check_id};
pub use limits::Limits;
pub use org::{Credentials, OrgRef, OrgSettings};
pub use reload::OrgChanges;
pub use schedule::RenewalPolicy;
pub use served::{KeyRef, Served};
pub use stats::BrokerStats;
pub use token::{
    Gone, GoneReason, Held, MAX_EXPIRY_MARGIN, Reason, SharedToken, Token, UnixTime, usable_until,
};
pub use watch_events::{TokenEvents, WatchEvent};

use flight::SingleFlight;
use org::Org;
use served::served;
use slot::Slot;
use want::Want;

use crate::{
    store::{Loaded, Store},
    upstream::Upstream,
};

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
    /// A user the platform does not know is answered `NOT_FOUND` from memory for this
    /// long, with no upstream request.
    pub unknown_user_ttl: Duration,
    /// The most unknown users remembered (the oldest goes first).
    pub max_unknown_users: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            renewal: RenewalPolicy::default(),
            user_idle_timeout: Duration::from_secs(15 * 60),
            max_user_tokens: 100_000,
            prefetch_org_tokens: true,
            unknown_user_ttl: Duration::from_secs(60),
            max_unknown_users: 10_000,
        }
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
    orgs: Arc<orgs::Orgs>,
    /// Every upstream request chain, and the renewal plans they leave.
    engine: Arc<SingleFlight>,
    stats: Arc<stats::Counters>,
    /// Callers waiting on the platform now (`Limits::max_waiting_callers`).
    waiting: limits::Waiting,
    /// `cache.max_user_tokens`, per org.
    max_user_tokens: usize,
    /// Stops the renewal timer: cancelled by [`Broker::shutdown`], or when the last clone
    /// of the broker is dropped.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
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
        Self::with_store(orgs, upstream, policy, limits, None)
    }

    /// [`Broker::new`], keeping every token in `store` (with what it held at start:
    /// installed with no upstream call while still usable).
    pub fn with_store(
        orgs: Vec<OrgSettings>,
        upstream: Upstream,
        policy: CachePolicy,
        limits: Limits,
        store: Option<(Arc<Store>, Vec<Loaded>)>,
    ) -> Self {
        let (store, loaded) = match store {
            Some((store, loaded)) => (Some(store), loaded),
            None => (None, Vec::new()),
        };
        let stats: Arc<stats::Counters> = Arc::default();
        let budget = Arc::new(budget::Budget::new(limits.upstream_budget, store.clone()));
        let engine = Arc::new(SingleFlight::new(
            upstream,
            store,
            &policy,
            &limits,
            Arc::clone(&stats),
            budget,
        ));
        let registry: Arc<orgs::Orgs> = Arc::default();
        let shutdown = CancellationToken::new();
        tokio::spawn(renew::run(
            Arc::downgrade(&engine),
            Arc::downgrade(&registry),
            shutdown.clone(),
        ));
        if let Some(events) = engine.store.as_ref().and_then(|s| s.events()) {
            tokio::spawn(replicas::listen(
                Arc::downgrade(&engine),
                Arc::downgrade(&registry),
                events,
                shutdown.clone(),
            ));
        }
        let broker = Self {
            inner: Arc::new(Inner {
                orgs: registry,
                engine,
                stats,
                waiting: limits::Waiting::new(limits.max_waiting_callers),
                max_user_tokens: policy.max_user_tokens,
                shutdown,
            }),
        };
        let mut loaded = restore::by_org(loaded);
        for settings in orgs {
            let stored = loaded.remove(&settings.name).unwrap_or_default();
            broker.start_org(settings, stored, &policy.renewal);
        }
        if let Some(store) = &broker.inner.engine.store {
            for org in loaded.keys() {
                if !store.is_shared() {
                    info!(org = %org, "removing the stored tokens of an org no longer configured");
                }
                store.remove_org(org);
            }
        }
        broker
    }

    /// Adds an org (replacing any of that name) and starts renewing its token.
    fn add_org(&self, settings: OrgSettings) {
        self.start_org(settings, Vec::new(), &self.inner.engine.renewal);
    }

    /// Adds an org with the tokens `stored` for it (each installed while still usable,
    /// renewed by `renewal`'s plan) and starts renewing them.
    fn start_org(&self, settings: OrgSettings, stored: Vec<Loaded>, renewal: &RenewalPolicy) {
        let store = self.inner.engine.store.as_deref();
        let max_users = self.inner.max_user_tokens;
        let renewals = &self.inner.engine.renewals;
        let (org, users) = restore::org(settings, stored, max_users, renewal, store, renewals);
        for slot in users.iter().chain([&org.slot]) {
            self.inner.engine.planner.plan(slot);
        }
        self.inner.orgs.insert(org);
    }

    /// Makes `orgs` the configured orgs: added orgs start, removed ones stop (their
    /// watchers are told), changed ones take their new endpoints and credentials.
    pub async fn reload_orgs(&self, orgs: Vec<OrgSettings>) -> OrgChanges {
        let store = self.inner.engine.store.as_ref();
        reload::apply(
            &self.inner.orgs,
            orgs,
            |settings| self.add_org(settings),
            |org| {
                if let Some(store) = store {
                    store.remove_org(org);
                }
            },
        )
        .await
    }

    /// Stops the background renewal. Tokens already held stay readable.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Whether some upstream request waits for the budget now (what a caller whose
    /// deadline came while it waited is told).
    pub fn waiting_for_budget(&self) -> bool {
        self.inner.engine.budget.anyone_waiting()
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
        self.inner.orgs.find(name, visible).map(OrgRef)
    }

    /// Each org and how long its token stays valid: `None` if none is held or it is
    /// long-lived (see [`Broker::is_ready`]).
    pub fn org_token_expiries(&self) -> Vec<(String, Option<Duration>)> {
        let now = Instant::now();
        let mut expiries: Vec<_> = self
            .inner
            .orgs
            .all()
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
        self.inner
            .orgs
            .all()
            .iter()
            .all(|org| org.slot.current().is_some_and(|t| t.is_valid(now)))
    }

    /// What the broker has done so far.
    pub fn stats(&self) -> BrokerStats {
        let (mut held, mut watchers) = (0, 0);
        for org in self.inner.orgs.all() {
            let (users, user_watchers) = org.users.count();
            held += users;
            watchers += org.slot.watchers() + user_watchers;
        }
        let mut stats = self.inner.stats.snapshot(held, watchers);
        stats.waiting_callers = self.inner.waiting.count();
        stats.flights_in_progress = self.inner.engine.in_progress();
        stats.unknown_users = self.inner.engine.unknown.len();
        stats.renewals_over_budget = self.inner.engine.renewals.over_budget();
        stats.budget = self.inner.engine.budget.stats();
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
        self.hit(&org.0, slot, min_valid_for)
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
        Ok(org.0.users.get(user).and_then(|slot| {
            let token = self.hit(&org.0, &slot, min_valid_for)?;
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
            Some(user) => org.0.users.get(user)?,
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
        let token = self.wait_for_token(org, &org.slot, min_valid_for).await?;
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
        user_tokens_configured(org)?;
        self.known(org, user)?;
        let slot = self.user_slot(org, user);
        let token = self.wait_for_token(org, &slot, min_valid_for).await?;
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
                user_tokens_configured(org)?;
                self.known(org, user)?;
                self.user_slot(org, user)
            }
        };
        self.touch(org, &slot, Instant::now());
        let _waiting = self.inner.waiting.enter()?;
        let seen = seen_generation(&slot, stale);
        let want = Want::Rotation { stale, seen };
        let token = self
            .inner
            .engine
            .token(org, &slot, want, Priority::Caller)
            .await?;
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
            user_tokens_configured(org)?;
            for user in users {
                self.known(org, user)?;
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
        try_join_all(slots.iter().map(|s| self.wait_for_token(org, s, None))).await?;
        let engine = &self.inner.engine;
        Ok(TokenEvents::new(
            slots,
            receivers,
            engine.planner.clone(),
            Arc::clone(&engine.stats),
        ))
    }

    /// Refuses a user the platform said lately it does not know, from memory: no slot,
    /// no upstream request (`cache.unknown_user_ttl`).
    fn known(&self, org: &Org, user: &str) -> Result<(), BrokerError> {
        if self
            .inner
            .engine
            .unknown
            .contains(&org.name, user, Instant::now())
        {
            self.inner.stats.unknown_user_hit();
            return Err(BrokerError::UnknownUser {
                org: org.name.to_string(),
                user: user.to_owned(),
            });
        }
        Ok(())
    }

    /// The slot of `user` in `org`, created on first use. At the cap, a long idle unwatched
    /// user token is dropped first (see `users.rs`).
    fn user_slot(&self, org: &Arc<Org>, user: &str) -> Arc<Slot> {
        let (slot, evicted) = org.user_slot(user);
        if let Some(evicted) = evicted {
            debug!(key = %evicted.key, "user token cache full; dropping a long idle token");
            self.inner.stats.eviction();
            if let Some(store) = &self.inner.engine.store {
                store.remove(&evicted.key.org, evicted.key.user.as_deref());
            }
        }
        slot
    }

    /// A caller's request for a slot's token: the cache hit, or a wait on the platform.
    async fn wait_for_token(
        &self,
        org: &Arc<Org>,
        slot: &Arc<Slot>,
        min_valid_for: Option<Duration>,
    ) -> Result<SharedToken, BrokerError> {
        if let Some(token) = self.hit(org, slot, min_valid_for) {
            return Ok(token);
        }
        self.inner.stats.miss();
        let _waiting = self.inner.waiting.enter()?;
        let token = self
            .inner
            .engine
            .usable(org, slot, Priority::Caller)
            .await?;
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
        let want = Want::Renewal { of: &token };
        let renewed = self
            .inner
            .engine
            .token(org, slot, want, Priority::Caller)
            .await?;
        if meets(&renewed, Instant::now(), Some(min)) {
            Ok(renewed)
        } else {
            Err(out_of_range(renewed.lifetime.unwrap_or_default()))
        }
    }

    /// The slot's token if it may be handed out now (and meets `min_valid_for`): the cache
    /// hit. Records the use either way.
    fn hit(
        &self,
        org: &Org,
        slot: &Arc<Slot>,
        min_valid_for: Option<Duration>,
    ) -> Option<SharedToken> {
        let now = Instant::now();
        self.touch(org, slot, now);
        let token = slot
            .usable(now)
            .filter(|token| meets(token, now, min_valid_for))?;
        self.inner.stats.hit();
        Some(token)
    }

    /// Records a caller's use of `slot`. A token restored from the store is renewed from
    /// its first use on: that use places its renewal on the calendar and plans it.
    fn touch(&self, org: &Org, slot: &Arc<Slot>, now: Instant) {
        if !slot.touch(now) {
            return;
        }
        let engine = &self.inner.engine;
        if let Some(token) = slot.current()
            && let Some(at) = engine.place_restored(org, &token, now)
        {
            slot.place_renewal(&token, at);
        }
        engine.planner.plan(slot);
    }
}

/// The generation of the token a Refresh names as stale, when the slot holds it now: a
/// token of a later generation answers the Refresh, even with the same bytes. Otherwise
/// (no stale token named, or not the one held: a replica that has not caught up, say)
/// only the bytes decide.
fn seen_generation(slot: &Slot, stale: Option<&str>) -> u64 {
    match (stale, slot.current()) {
        (Some(stale), Some(current)) if current.access_token.expose() == stale => {
            current.generation
        }
        _ => u64::MAX,
    }
}

/// Refuses user tokens for an org that has no authorization grant endpoint, before any
/// slot is made for them.
fn user_tokens_configured(org: &Org) -> Result<(), BrokerError> {
    let client = &org.config().client;
    if client.authorization_grant_url.is_none()
        && client.user_grant == crate::upstream::UserGrant::Findity
    {
        return Err(BrokerError::NoUserTokens {
            org: org.name.to_string(),
        });
    }
    Ok(())
}

/// Whether `token` satisfies a caller's `min_valid_for` at `now`.
fn meets(token: &Token, now: Instant, min_valid_for: Option<Duration>) -> bool {
    match (min_valid_for, token.valid_for(now)) {
        (None, _) | (Some(_), None) => true,
        (Some(min), Some(left)) => left >= min,
    }
}
