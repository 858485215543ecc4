//! The grant calls: how a flight gets a new grant for its key, and where the single-use
//! invariant of refresh tokens lives. A held refresh token is taken out of the slot before
//! it is sent; without one (or after it failed) the key's primary grant is used: client
//! credentials for an org (trying each configured secret), an authorization grant and a
//! code exchange for a user, with the org token as the grant's bearer.

use std::sync::Arc;

use futures::future::BoxFuture;
use tracing::{info, warn};

use super::{
    BrokerError, Credentials, Reason, SharedToken, TokenKey,
    budget::{Budget, Priority, host_of},
    org::Org,
    slot::Flight,
};
use crate::{
    secret::{AuthCode, RefreshToken},
    store::Store,
    upstream::{Grant, Upstream, UpstreamError, UserGrant},
};

/// Where a user's flight gets the org token it presents to the grant endpoint: the single
/// flight engine, so that the org token too is fetched once however many users need it.
pub(super) trait OrgBearer: Sync {
    /// The org's token that may be handed out now; with `stale`, a new one replacing
    /// `stale` (which the grant endpoint rejected), unless another already replaced it.
    fn org_token<'a>(
        &'a self,
        org: &'a Arc<Org>,
        stale: Option<&'a str>,
    ) -> BoxFuture<'a, Result<SharedToken, BrokerError>>;
}

/// Why a flight got no grant.
pub(super) enum Miss {
    /// Its own request chain failed: one more failure in a row for its key.
    Failed(BrokerError),
    /// A user key's flight could not get the org token it needs: not the key's failure.
    Blocked(BrokerError),
}

/// The requests that get grants from the platform.
#[derive(Debug)]
pub(super) struct Grants {
    upstream: Upstream,
    /// Where refresh tokens are kept between flights, when a store is configured.
    store: Option<Arc<Store>>,
    /// What every request waits for.
    budget: Arc<Budget>,
}

impl Grants {
    pub fn new(upstream: Upstream, store: Option<Arc<Store>>, budget: Arc<Budget>) -> Self {
        Self {
            upstream,
            store,
            budget,
        }
    }

    /// `call`, a request of `org` to `url`, sent once the upstream budget lets it go at
    /// `priority`. A 429 holds every request to that host.
    async fn budgeted<T>(
        &self,
        url: &reqwest::Url,
        org: &Arc<str>,
        priority: Priority,
        call: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let host = host_of(url);
        self.budget.acquire(&host, org, priority).await;
        let answer = call.await;
        match &answer {
            Err(UpstreamError::RateLimited { retry_after }) => {
                self.budget.throttled(&host, *retry_after).await;
            }
            _ => self.budget.answered(&host),
        }
        answer
    }

    /// The refresh token to present for the flight's key, taken so that it can never be
    /// taken again: from the slot (no store, or the store could not take the last one),
    /// else out of the store at the slot's generation, committed before it is returned.
    /// `offline`: the shared store did not answer the claim; it is not asked again.
    async fn take_refresh_token(
        &self,
        key: &TokenKey,
        flight: &Flight,
        offline: bool,
    ) -> Option<RefreshToken> {
        let (held, generation) = {
            let mut state = flight.state();
            (state.refresh_token.take(), state.generation)
        };
        // Generation 0: the key never had a token, so the store has nothing for it.
        if held.is_some() || generation == 0 || offline {
            return held;
        }
        let store = self.store.as_ref()?;
        match store
            .take_refresh(&key.org, key.user.as_deref(), generation)
            .await
        {
            Ok(taken) => taken,
            // Not taken, so never sent: the primary grant instead.
            Err(e) => {
                warn!(key = %key, error = %e, "could not take the refresh token from the store; using the primary grant");
                None
            }
        }
    }

    /// Gets a grant for the flight's key: through the refresh token when one is held, else
    /// (or when it fails) through the primary grant. Returns the reason to record.
    /// `offline`: the store did not answer, so no refresh token is taken from it.
    pub async fn obtain(
        &self,
        org: &Arc<Org>,
        flight: &Flight,
        reason: Reason,
        bearer: &dyn OrgBearer,
        offline: bool,
        priority: Priority,
    ) -> Result<(Grant, Reason), Miss> {
        // INVARIANT: a refresh token is presented at most once, ever. It is moved out of
        // the slot, or out of the store in a committed transaction, before it is sent, so
        // whatever happens to the answer (success, an error, a timeout, a reset
        // connection, a 5xx after the platform spent it, a crash of the broker) it can
        // never be sent again: on any failure the token is re-issued through the primary
        // grant.
        let key = &flight.slot().key;
        let taken = self.take_refresh_token(key, flight, offline).await;
        let Some(refresh_token) = taken else {
            return Ok((
                self.primary_grant(org, key, bearer, priority).await?,
                reason,
            ));
        };
        let config = org.config();
        let secret = org.secret();
        let refreshed = self
            .upstream
            .refresh(&config.client, refresh_token, secret.as_ref());
        match self
            .budgeted(&config.client.token_url, &org.name, priority, refreshed)
            .await
        {
            Ok(grant) => return Ok((grant, reason)),
            // A 429 holds every request to the platform, the primary grant's included,
            // until its `Retry-After` (the refresh token stays spent: the next flight uses
            // the primary grant).
            Err(e @ UpstreamError::RateLimited { .. }) => {
                return Err(Miss::Failed(BrokerError::upstream(key, &e)));
            }
            // Some servers refuse the refresh (invalid_client) where the primary grant
            // works: it is tried once before the org is held.
            Err(e @ UpstreamError::CredentialsRejected { .. }) => {
                warn!(key = %key, error = %e, "the server refused the refresh with these credentials; trying the primary grant once");
            }
            Err(e) => {
                warn!(key = %key, error = %e, "refresh token spent without a usable answer; re-issuing through the primary grant");
            }
        }
        Ok((
            self.primary_grant(org, key, bearer, priority).await?,
            Reason::Reissued,
        ))
    }

    /// Client credentials for the org token; authorization grant then code exchange for a
    /// user token.
    async fn primary_grant(
        &self,
        org: &Arc<Org>,
        key: &TokenKey,
        bearer: &dyn OrgBearer,
        priority: Priority,
    ) -> Result<Grant, Miss> {
        let fail = |e: UpstreamError| Miss::Failed(BrokerError::upstream(key, &e));
        let config = org.config();
        let token_url = &config.client.token_url;
        match (&key.user, &config.credentials) {
            (None, Credentials::Client { client_id, secrets }) => {
                // The secret that worked last goes first; a rejected one passes to the next.
                // An org without secrets (private_key_jwt) makes one request.
                let first = org.secret_in_use();
                let tries = secrets.len().max(1);
                let mut last_error = None;
                for i in (0..tries).map(|k| (first + k) % tries) {
                    let issued =
                        self.upstream
                            .client_credentials(&config.client, client_id, secrets.get(i));
                    match self.budgeted(token_url, &org.name, priority, issued).await {
                        Ok(grant) => {
                            if i != first {
                                info!(org = %org.name, secret = i + 1, "switched to the next configured client secret");
                            }
                            org.use_secret(i);
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
                if let UserGrant::TokenExchange { subject_type } = &config.client.user_grant {
                    let token = bearer.org_token(org, None).await.map_err(Miss::Blocked)?;
                    let secret = org.secret();
                    let exchanged = self.upstream.token_exchange(
                        &config.client,
                        subject_type,
                        &token.access_token,
                        user,
                        secret.as_ref(),
                    );
                    return self
                        .budgeted(token_url, &org.name, priority, exchanged)
                        .await
                        .map_err(fail);
                }
                let code = self
                    .authorization_grant(org, key, user, bearer, priority)
                    .await?;
                let secret = org.secret();
                let exchanged = self
                    .upstream
                    .exchange_code(&config.client, code, secret.as_ref());
                self.budgeted(token_url, &org.name, priority, exchanged)
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
        bearer: &dyn OrgBearer,
        priority: Priority,
    ) -> Result<AuthCode, Miss> {
        let config = org.config();
        // The org's own requests (client credentials, refresh) go to the token URL; a user
        // grant without a grant URL is refused before a flight.
        let url = config
            .client
            .authorization_grant_url
            .as_ref()
            .unwrap_or(&config.client.token_url);
        let token = bearer.org_token(org, None).await.map_err(Miss::Blocked)?;
        let asked = self
            .upstream
            .authorization_grant(&config.client, &token.access_token, user);
        let answer = match self.budgeted(url, &org.name, priority, asked).await {
            Err(UpstreamError::BearerRejected)
                if matches!(config.credentials, Credentials::Client { .. }) =>
            {
                info!(org = %org.name, "the grant endpoint rejected the org token; rotating it once");
                let stale = Some(token.access_token.expose());
                let token = bearer.org_token(org, stale).await.map_err(Miss::Blocked)?;
                let asked =
                    self.upstream
                        .authorization_grant(&config.client, &token.access_token, user);
                self.budgeted(url, &org.name, priority, asked).await
            }
            other => other,
        };
        answer.map_err(|e| Miss::Failed(BrokerError::upstream(key, &e)))
    }
}
