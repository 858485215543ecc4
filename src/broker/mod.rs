//! The domain: token keys, the cache, single flight, and rotation events. Knows nothing of
//! tonic; reaches the platform only through [`crate::upstream`].
//!
//! Every key (an org, or one user of an org) owns a [`slot::Slot`]. Reading the slot's
//! watch channel is the cache hit; a miss or a rotation takes the slot's lock, and callers
//! that queued behind a flight take its outcome rather than flying again. Flights run in
//! their own task, so a caller that disconnects never cancels a request half-way (which for
//! a refresh token would leave the broker unsure whether it was spent).

mod error;
mod key;
mod slot;
mod token;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use futures::future::{BoxFuture, try_join_all};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

pub use error::BrokerError;
pub use key::{MAX_ID_LEN, TokenKey, check_id};
use slot::{Flight, Slot, Turn};
pub use token::{MAX_EXPIRY_MARGIN, Reason, SharedToken, Token, usable_until};

use crate::{
    secret::{AccessToken, AuthCode, ClientSecret},
    upstream::{self, Grant, Upstream, UpstreamError},
};

/// How the broker proves itself to the platform for one org.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// OAuth client credentials: tokens are issued and rotated.
    Client {
        client_id: String,
        secret: ClientSecret,
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

/// A receiver of one key's tokens: the current one, then every new one.
pub type TokenWatch = watch::Receiver<Option<SharedToken>>;

/// The token broker. Cheap to clone: clones share one cache.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    orgs: HashMap<Arc<str>, Arc<Org>>,
    upstream: Upstream,
}

#[derive(Debug)]
struct Org {
    name: Arc<str>,
    client: upstream::Client,
    credentials: Credentials,
    slot: Arc<Slot>,
    users: RwLock<HashMap<Arc<str>, Arc<Slot>>>,
}

/// What a caller wants from a slot.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    /// A token that may be handed out now.
    Usable,
    /// A new token; with the token the caller saw rejected, none if the broker already
    /// holds another.
    Rotation { stale: Option<&'a str> },
}

impl Broker {
    /// A broker for `orgs`, talking to the platform through `upstream`. Nothing is fetched
    /// until asked for.
    pub fn new(orgs: Vec<OrgSettings>, upstream: Upstream) -> Self {
        let orgs = orgs
            .into_iter()
            .map(|settings| {
                let name: Arc<str> = settings.name.into();
                let key = TokenKey {
                    org: Arc::clone(&name),
                    user: None,
                };
                let initial = match &settings.credentials {
                    Credentials::Static(token) => Some(Arc::new(Token::new(
                        key.clone(),
                        token.clone(),
                        "Bearer".into(),
                        (Instant::now(), SystemTime::now()),
                        None,
                        1,
                        Reason::Issued,
                    ))),
                    Credentials::Client { .. } => None,
                };
                let org = Org {
                    name: Arc::clone(&name),
                    client: settings.client,
                    credentials: settings.credentials,
                    slot: Arc::new(Slot::new(key, initial)),
                    users: RwLock::default(),
                };
                (name, Arc::new(org))
            })
            .collect();
        Self {
            inner: Arc::new(Inner { orgs, upstream }),
        }
    }

    /// The configured org names, sorted.
    pub fn org_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.orgs.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    /// The org's token: from cache while usable, else fetched (one flight however many ask).
    pub async fn org_token(&self, org: &str) -> Result<SharedToken, BrokerError> {
        let org = self.org(org)?;
        self.token(&org, &org.slot, Want::Usable).await
    }

    /// A token acting as `user` (a person id or ExternalSourceID) of `org`.
    pub async fn user_token(&self, org: &str, user: &str) -> Result<SharedToken, BrokerError> {
        let org = self.org(org)?;
        check_id("user_id", user)?;
        let slot = org.user_slot(user);
        self.token(&org, &slot, Want::Usable).await
    }

    /// Rotates the org token (`user` `None`) or a user's token and returns the new one.
    /// With `stale` (the token the caller saw rejected): if the broker already holds a
    /// different token, that one is returned without an upstream call.
    pub async fn refresh(
        &self,
        org: &str,
        user: Option<&str>,
        stale: Option<&str>,
    ) -> Result<SharedToken, BrokerError> {
        let org = self.org(org)?;
        let slot = match user {
            None => {
                if let Credentials::Static(_) = org.credentials {
                    return Err(BrokerError::NotRotatable {
                        org: org.name.to_string(),
                    });
                }
                Arc::clone(&org.slot)
            }
            Some(user) => {
                check_id("user_id", user)?;
                org.user_slot(user)
            }
        };
        self.token(&org, &slot, Want::Rotation { stale }).await
    }

    /// Receivers for the org token (`users` empty) or for each user's token, each already
    /// holding a usable token (fetched if needed). A receiver sees every later token.
    pub async fn watch(&self, org: &str, users: &[String]) -> Result<Vec<TokenWatch>, BrokerError> {
        let org = self.org(org)?;
        let slots = if users.is_empty() {
            vec![Arc::clone(&org.slot)]
        } else {
            let mut slots = Vec::with_capacity(users.len());
            for user in users {
                check_id("user_ids", user)?;
                let slot = org.user_slot(user);
                if !slots.iter().any(|s| Arc::ptr_eq(s, &slot)) {
                    slots.push(slot);
                }
            }
            slots
        };
        // Subscribe before fetching, so no token installed in between is missed.
        let watches = slots.iter().map(|s| s.subscribe()).collect();
        try_join_all(slots.iter().map(|s| self.token(&org, s, Want::Usable))).await?;
        Ok(watches)
    }

    fn org(&self, name: &str) -> Result<Arc<Org>, BrokerError> {
        let orgs = &self.inner.orgs;
        if name.is_empty()
            && orgs.len() == 1
            && let Some(org) = orgs.values().next()
        {
            return Ok(Arc::clone(org));
        }
        if name.is_empty() {
            return Err(BrokerError::InvalidArgument {
                field: "org",
                problem: format!(
                    "is required when several orgs are configured ({})",
                    self.org_names().join(", ")
                ),
            });
        }
        check_id("org", name)?;
        orgs.get(name)
            .cloned()
            .ok_or_else(|| BrokerError::UnknownOrg {
                org: name.to_owned(),
                known: self.org_names().join(", "),
            })
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
        let current = slot.current();
        let reason = match (want, &current) {
            (Want::Usable, Some(t)) if t.is_usable(Instant::now()) => return Ok(Arc::clone(t)),
            (Want::Usable, Some(_)) => Reason::Renewed,
            (Want::Usable, None) => Reason::Issued,
            (Want::Rotation { stale: Some(stale) }, Some(t))
                if t.access_token.expose() != stale =>
            {
                debug!(key = %slot.key, fingerprint = %t.access_token.fingerprint(), "refresh names an already replaced token; returning the current one");
                return Ok(Arc::clone(t));
            }
            (Want::Rotation { .. }, Some(_)) => Reason::Forced,
            (Want::Rotation { .. }, None) => Reason::Issued,
        };
        let broker = self.clone();
        let org = Arc::clone(org);
        // The flight owns the lock and runs to the end even if every caller goes away.
        tokio::spawn(async move { broker.fly(&org, flight, reason).await })
            .await
            .unwrap_or_else(|e| {
                Err(BrokerError::Unavailable {
                    key: slot.key.to_string(),
                    detail: format!("the upstream request task failed: {e}"),
                })
            })
    }

    /// One upstream request chain for a slot, holding its lock; lands the outcome.
    async fn fly(
        &self,
        org: &Arc<Org>,
        mut flight: Flight,
        reason: Reason,
    ) -> Result<SharedToken, BrokerError> {
        let slot = Arc::clone(flight.slot());
        let requested = (Instant::now(), SystemTime::now());
        let outcome = match self.obtain(org, &slot.key, &mut flight, reason).await {
            Ok((grant, reason)) => {
                flight.state.generation += 1;
                flight.state.refresh_token = grant.refresh_token;
                let token = Token::new(
                    slot.key.clone(),
                    grant.access_token,
                    grant.token_type,
                    requested,
                    Some(grant.expires_in),
                    flight.state.generation,
                    reason,
                );
                info!(
                    key = %slot.key,
                    generation = token.generation,
                    fingerprint = %token.access_token.fingerprint(),
                    expires_in_s = grant.expires_in.as_secs(),
                    ?reason,
                    "new token"
                );
                Ok(Arc::new(token))
            }
            Err(e) => {
                warn!(key = %slot.key, error = %e, "could not obtain a token");
                Err(e)
            }
        };
        flight.land(&outcome);
        outcome
    }

    /// Gets a grant for the slot's key: through the refresh token when one is held, else
    /// (or when it fails) through the primary grant. Returns the reason to record.
    async fn obtain(
        &self,
        org: &Arc<Org>,
        key: &TokenKey,
        flight: &mut Flight,
        reason: Reason,
    ) -> Result<(Grant, Reason), BrokerError> {
        // INVARIANT: a refresh token is presented at most once, ever. It is moved out of
        // the slot before it is sent, so whatever happens to the answer (success, an error,
        // a timeout, a reset connection) it can never be sent again: on any failure the
        // token is re-issued through the primary grant instead.
        let Some(refresh_token) = flight.state.refresh_token.take() else {
            return Ok((self.primary_grant(org, key).await?, reason));
        };
        match self
            .inner
            .upstream
            .refresh(&org.client, refresh_token)
            .await
        {
            Ok(grant) => return Ok((grant, reason)),
            Err(e @ UpstreamError::CredentialsRejected { .. }) => {
                return Err(BrokerError::upstream(key, &e));
            }
            Err(e) => {
                warn!(key = %key, error = %e, "refresh token not usable; re-issuing through the primary grant");
            }
        }
        Ok((self.primary_grant(org, key).await?, Reason::Reissued))
    }

    /// Client credentials for the org token; authorization grant then code exchange for a
    /// user token.
    async fn primary_grant(&self, org: &Arc<Org>, key: &TokenKey) -> Result<Grant, BrokerError> {
        let upstream = &self.inner.upstream;
        let fail = |e: UpstreamError| BrokerError::upstream(key, &e);
        match (&key.user, &org.credentials) {
            (None, Credentials::Client { client_id, secret }) => upstream
                .client_credentials(&org.client, client_id, secret)
                .await
                .map_err(fail),
            // A static org's slot always holds its token; nothing can issue another.
            (None, Credentials::Static(_)) => Err(BrokerError::NotRotatable {
                org: org.name.to_string(),
            }),
            (Some(user), _) => {
                let code = self.authorization_grant(org, key, user).await?;
                upstream
                    .exchange_code(&org.client, code)
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
    ) -> Result<AuthCode, BrokerError> {
        let upstream = &self.inner.upstream;
        let bearer = self.org_slot_token(org, Want::Usable).await?;
        let answer = match upstream
            .authorization_grant(&org.client, &bearer.access_token, user)
            .await
        {
            Err(UpstreamError::BearerRejected)
                if matches!(org.credentials, Credentials::Client { .. }) =>
            {
                info!(org = %org.name, "the grant endpoint rejected the org token; rotating it once");
                let stale = Some(bearer.access_token.expose());
                let bearer = self.org_slot_token(org, Want::Rotation { stale }).await?;
                upstream
                    .authorization_grant(&org.client, &bearer.access_token, user)
                    .await
            }
            other => other,
        };
        answer.map_err(|e| BrokerError::upstream(key, &e))
    }

    /// The org token, from inside a user flight. Boxed: a user flight may start an org
    /// flight, and the recursion needs a future of known size.
    fn org_slot_token<'a>(
        &'a self,
        org: &'a Arc<Org>,
        want: Want<'a>,
    ) -> BoxFuture<'a, Result<SharedToken, BrokerError>> {
        Box::pin(self.token(org, &org.slot, want))
    }
}

impl Org {
    fn user_slot(&self, user: &str) -> Arc<Slot> {
        if let Some(slot) = self
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return Arc::clone(slot);
        }
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        let user: Arc<str> = user.into();
        Arc::clone(users.entry(Arc::clone(&user)).or_insert_with(|| {
            Arc::new(Slot::new(
                TokenKey {
                    org: Arc::clone(&self.name),
                    user: Some(user),
                },
                None,
            ))
        }))
    }
}
