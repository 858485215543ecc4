//! Tokens found in the store at start, put back into slots: each keeps its generation, a
//! token still usable is installed as it was (no upstream call) with its renewal planned
//! as usual or, if overdue, spread out; a token no longer usable is left out, while its
//! refresh token stays in the store for the key's next flight.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Reason, RenewalPolicy, SharedToken, Token, token::usable_until};
use crate::store::StoredToken;

/// What a key's slot starts with.
#[derive(Debug, Default)]
pub(super) struct Restored {
    /// The stored token, if it may still be handed out.
    pub token: Option<SharedToken>,
    /// The stored generation: the next token is one more.
    pub generation: u64,
}

/// `stored` as a slot's start, at `now` (monotonic and wall clock), its renewal drawn with
/// `draw` (uniform in [0, 1)).
pub(super) fn restore(
    stored: StoredToken,
    policy: &RenewalPolicy,
    now: (Instant, SystemTime),
    draw: f64,
) -> Restored {
    let (mono, wall) = now;
    let generation = stored.generation;
    let elapsed = wall.duration_since(stored.issued).unwrap_or(Duration::ZERO);
    let token = mono.checked_sub(elapsed).and_then(|requested| {
        let until = usable_until(requested, stored.lifetime);
        let usable_left = until.checked_duration_since(mono)?;
        let renew_after = policy.renew_after_restart(stored.lifetime, elapsed, usable_left, draw);
        let mut token = Token::issued(
            stored.access_token,
            stored.token_type,
            (requested, stored.issued),
            stored.lifetime,
            renew_after,
        );
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
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_usable_token_comes_back_as_it_was_and_an_unusable_one_keeps_its_generation() {
        tokio::time::advance(Duration::from_secs(7200)).await;
        let policy = RenewalPolicy::default();
        let now = (Instant::now(), SystemTime::now());
        let fresh = restore(stored(Duration::from_secs(600)), &policy, now, 0.5);
        let token = fresh.token.expect("still usable");
        assert_eq!((token.generation, fresh.generation), (7, 7));
        assert_eq!(token.reason, Reason::Renewed);
        assert!(token.is_usable(now.0));
        let left = token.valid_for(now.0).unwrap().as_secs();
        assert!((2990..=3000).contains(&left), "{left}");
        // Renewed at its planned time, half its lifetime after it was asked for.
        let renew_in = token.renew_at().unwrap() - now.0;
        assert_eq!(renew_in.as_secs(), 1200);

        // Past its usable life (the last tenth, at most 10 s, before expiry): left out.
        let old = restore(stored(Duration::from_secs(3595)), &policy, now, 0.5);
        assert!(old.token.is_none());
        assert_eq!(old.generation, 7);
    }
}
