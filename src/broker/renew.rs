//! Keeping tokens fresh: one background task per held key renews its token ahead of expiry
//! (at the time [`super::RenewalPolicy`] chose when it was issued), backs off after
//! failures, announces a token that expired unrenewed to its watchers, and drops user
//! tokens that nobody watches or used within the idle window.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use super::{
    Broker, BrokerError, Gone, GoneReason, Held, Org, SharedToken, Slot, TokenKey, TokenWatch, Want,
};

impl Broker {
    /// The slot of `user` in `org`, created (with its renewal task) on first use. At the
    /// cap, the longest idle unwatched user token is dropped first.
    pub(super) fn user_slot(&self, org: &Arc<Org>, user: &str) -> Arc<Slot> {
        if let Some(slot) = org
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            return Arc::clone(slot);
        }
        let mut users = org.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = users.get(user) {
            return Arc::clone(slot);
        }
        if users.len() >= self.inner.policy.max_user_tokens {
            let victim = users
                .iter()
                .filter(|(_, s)| s.watchers() == 0)
                .min_by_key(|(_, s)| s.last_used())
                .map(|(name, _)| Arc::clone(name));
            if let Some(slot) = victim.and_then(|name| users.remove(&name)) {
                debug!(key = %slot.key, "user token cache full; dropping the longest idle token");
                slot.renewal.cancel();
                self.inner.stats.eviction();
            }
        }
        let user: Arc<str> = user.into();
        let key = TokenKey {
            org: Arc::clone(&org.name),
            user: Some(Arc::clone(&user)),
        };
        let slot = Arc::new(Slot::new(key, None, self.inner.shutdown.child_token()));
        slot.touch(Instant::now());
        users.insert(user, Arc::clone(&slot));
        drop(users);
        self.start_renewal(org, &slot);
        slot
    }

    pub(super) fn start_renewal(&self, org: &Arc<Org>, slot: &Arc<Slot>) {
        let broker = self.clone();
        let (org, slot) = (Arc::clone(org), Arc::clone(slot));
        // Subscribed here, not in the task, so `watchers()` is right from the start.
        let changes = slot.subscribe();
        tokio::spawn(async move { broker.renew(org, slot, changes).await });
    }

    /// The renewal loop of one slot, until it is cancelled or its user token is dropped.
    async fn renew(self, org: Arc<Org>, slot: Arc<Slot>, mut changes: TokenWatch) {
        let idle_timeout = self.inner.policy.user_idle_timeout;
        let is_user = slot.key.user.is_some();
        // The last renewal's error, while the current token is not renewed.
        let mut failure: Option<BrokerError> = None;
        loop {
            let held = changes.borrow_and_update().clone();
            let retry_at = slot.retry_at();
            let due = match &held {
                // The token's planned renewal, but not before a failure's hold ends.
                Held::Token(t) => t.renew_at.map(|at| retry_at.map_or(at, |r| r.max(at))),
                // A lost token of a key someone needs is asked for again, at the failures' pace.
                Held::Gone(_) if !is_user || slot.watchers() > 0 => {
                    Some(retry_at.unwrap_or_else(Instant::now))
                }
                // An org token is fetched at start, and again until it is had.
                Held::Empty if !is_user && self.inner.policy.prefetch_org_tokens => {
                    Some(retry_at.unwrap_or_else(Instant::now))
                }
                Held::Gone(_) | Held::Empty => None,
            };
            let expiry = match (&held, &failure) {
                (Held::Token(t), Some(_)) => t.expires,
                _ => None,
            };
            let idle_at =
                (is_user && slot.watchers() == 0).then(|| slot.last_used() + idle_timeout);
            let wake = [due, expiry, idle_at].into_iter().flatten().min();
            tokio::select! {
                () = slot.renewal.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if let Held::Token(_) = *changes.borrow() {
                        failure = None;
                    }
                    continue;
                }
                () = slot.unwatched.notified() => continue,
                () = sleep_until_or_forever(wake) => {}
            }
            let now = Instant::now();
            if is_user && slot.watchers() == 0 && now >= slot.last_used() + idle_timeout {
                self.drop_user_slot(&org, &slot);
                return;
            }
            if let (Held::Token(token), Some(e)) = (&held, &failure)
                && !token.is_valid(now)
            {
                announce_gone(&slot, token, e);
                continue;
            }
            if due.is_none_or(|d| now < d) {
                continue;
            }
            let renewed = match &held {
                Held::Token(token) => {
                    Box::pin(self.token(&org, &slot, Want::Renewal { of: token })).await
                }
                Held::Gone(_) | Held::Empty => {
                    Box::pin(self.token(&org, &slot, Want::Usable)).await
                }
            };
            self.inner.stats.renewal(renewed.is_ok());
            match renewed {
                Ok(_) => failure = None,
                Err(e) => {
                    warn!(key = %slot.key, error = %e, "background renewal failed; will retry");
                    if let Held::Token(token) = &held
                        && !token.is_valid(Instant::now())
                    {
                        announce_gone(&slot, token, &e);
                    }
                    failure = Some(e);
                }
            }
        }
    }

    fn drop_user_slot(&self, org: &Org, slot: &Arc<Slot>) {
        let mut users = org.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(user) = &slot.key.user
            && users.get(user).is_some_and(|s| Arc::ptr_eq(s, slot))
        {
            users.remove(user);
            debug!(key = %slot.key, "user token idle; dropped");
            self.inner.stats.eviction();
        }
        slot.renewal.cancel();
    }
}

/// Tells the key's watchers that `expired` is gone and why.
fn announce_gone(slot: &Slot, expired: &SharedToken, error: &BrokerError) {
    let reason = match error {
        BrokerError::UnknownUser { .. }
        | BrokerError::CredentialsRejected { .. }
        | BrokerError::NotRotatable { .. } => GoneReason::Revoked,
        _ => GoneReason::Unavailable,
    };
    let gone = Gone {
        key: slot.key.clone(),
        reason,
        detail: error.to_string(),
        generation: expired.generation,
    };
    if slot.announce_gone(expired, gone) {
        warn!(key = %slot.key, ?reason, error = %error, "token expired and could not be renewed");
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
