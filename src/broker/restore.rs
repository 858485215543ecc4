//! Tokens found in the store at start, put back into slots: each keeps its generation, a
//! token still usable is installed as it was (no upstream call) with its renewal planned
//! as usual or, if overdue, spread out; a token no longer usable is left out, while its
//! refresh token stays in the store for the key's next flight.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;
use tracing::info;

use super::{
    Credentials, OrgSettings, Reason, RenewalPolicy, SharedToken, Token, budget::host_of, org::Org,
    schedule::Window, slot::Slot, spread::Renewals, token::usable_until,
};
use crate::store::{Loaded, Store, StoredToken};

/// The stored tokens by org.
pub(super) fn by_org(loaded: Vec<Loaded>) -> HashMap<String, Vec<Loaded>> {
    let mut by_org: HashMap<String, Vec<Loaded>> = HashMap::new();
    for l in loaded {
        by_org.entry(l.org.clone()).or_default().push(l);
    }
    by_org
}

/// The org `settings` describes, with the tokens `stored` for it put back (at most
/// `max_users` user tokens; the rest, and a stored token of an org now configured with a
/// long-lived one, leave `store`), and the user slots made: all to be planned.
pub(super) fn org(
    settings: OrgSettings,
    stored: Vec<Loaded>,
    max_users: usize,
    renewal: &RenewalPolicy,
    store: Option<&Store>,
    renewals: &Renewals,
) -> (Arc<Org>, Vec<Arc<Slot>>) {
    let now = (Instant::now(), SystemTime::now());
    let host = host_of(&settings.client.token_url);
    // The org token's renewal goes on the calendar now; a user token's once it is used
    // again (`SingleFlight::place_restored`): until then it is not renewed at all.
    let placed = |requested, window| renewals.place(&host, requested, window, rand::random());
    let unplaced = |_, window: Window| window.earliest;
    let restore_user = |token| restore(token, renewal, now, rand::random(), unplaced);
    let (mut org_token, mut users) = (None, Vec::new());
    for loaded in stored {
        match loaded.user {
            None => org_token = Some(restore(loaded.token, renewal, now, rand::random(), placed)),
            Some(user) => users.push((user, loaded.token)),
        }
    }
    let is_static = matches!(settings.credentials, Credentials::Static(_));
    if is_static
        && org_token.take().is_some()
        && let Some(store) = store
    {
        // A long-lived token comes from the config; a stored one is of a former setup.
        store.remove(&settings.name, None);
    }
    let org = Org::new(settings, max_users, org_token.unwrap_or_default());
    let mut restored = usize::from(org.slot.current().is_some() && !is_static);
    let mut slots = Vec::with_capacity(users.len());
    for (user, token) in users {
        match org.restore_user(&user, restore_user(token)) {
            Some(slot) => {
                restored += usize::from(slot.current().is_some());
                slots.push(slot);
            }
            // Past the cache's cap: as the broker would hold it in memory.
            None => {
                if let Some(store) = store {
                    store.remove(&org.name, Some(&user));
                }
            }
        }
    }
    if restored > 0 {
        info!(org = %org.name, tokens = restored, "tokens restored from the store");
    }
    (org, slots)
}

/// What a key's slot starts with.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// The stored token, if it may still be handed out.
    pub token: Option<SharedToken>,
    /// The stored generation: the next token is one more.
    pub generation: u64,
}

/// `stored` as a slot's start, at `now` (monotonic and wall clock): its renewal window
/// drawn with `draw` (uniform in [0, 1)), the renewal placed in it by `place` (given the
/// token's request time and window, it answers how long after the request to renew).
pub(super) fn restore(
    stored: StoredToken,
    policy: &RenewalPolicy,
    now: (Instant, SystemTime),
    draw: f64,
    place: impl FnOnce(Instant, Window) -> Duration,
) -> Restored {
    let (mono, wall) = now;
    let generation = stored.generation;
    let elapsed = wall.duration_since(stored.issued).unwrap_or(Duration::ZERO);
    let token = mono.checked_sub(elapsed).and_then(|requested| {
        let until = usable_until(requested, stored.lifetime);
        let usable_left = until.checked_duration_since(mono)?;
        let window = policy.window_after_restart(stored.lifetime, elapsed, usable_left, draw);
        let renew_after = place(requested, window);
        let mut token = Token::issued(
            stored.access_token,
            stored.token_type,
            (requested, stored.issued),
            stored.lifetime,
            renew_after,
        );
        token = token.with_scope(stored.scope);
        token.generation = generation;
        token.reason = Reason::from_name(&stored.reason).unwrap_or(Reason::Issued);
        Some(SharedToken::new(token))
    });
    Restored { token, generation }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;

    fn stored(issued_ago: Duration) -> StoredToken {
        StoredToken {
            generation: 7,
            access_token: AccessToken::new("at"),
            token_type: "Bearer".into(),
            issued: SystemTime::now() - issued_ago,
            lifetime: Duration::from_secs(3600),
            reason: "renewed".into(),
            scope: Some("read write".into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_usable_token_comes_back_as_it_was_and_an_unusable_one_keeps_its_generation() {
        tokio::time::advance(Duration::from_secs(7200)).await;
        let policy = RenewalPolicy::default();
        let now = (Instant::now(), SystemTime::now());
        let earliest = |_, w: Window| w.earliest;
        let fresh = restore(
            stored(Duration::from_secs(600)),
            &policy,
            now,
            0.5,
            earliest,
        );
        let token = fresh.token.expect("still usable");
        assert_eq!((token.generation, fresh.generation), (7, 7));
        assert_eq!(token.reason, Reason::Renewed);
        assert_eq!(
            token.scope(),
            Some("read write"),
            "the granted scope comes back too"
        );
        assert!(token.is_usable(now.0));
        let left = token.valid_for(now.0).unwrap().as_secs();
        assert!((2990..=3000).contains(&left), "{left}");
        // Renewed at its planned time, half its lifetime after it was asked for.
        let renew_in = token.renew_at().unwrap() - now.0;
        assert_eq!(renew_in.as_secs(), 1200);

        // Past its usable life (the last tenth, at most 10 s, before expiry): left out.
        let old = restore(
            stored(Duration::from_secs(3595)),
            &policy,
            now,
            0.5,
            earliest,
        );
        assert!(old.token.is_none());
        assert_eq!(old.generation, 7);
    }
}
