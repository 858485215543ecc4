//! What a caller wants from a slot, and the decision, under the slot's lock, whether that
//! needs a flight: a pure function of the want and the token the slot holds.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tracing::debug;

use super::{Reason, SharedToken, TokenKey};

/// What a caller wants from a slot.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want<'a> {
    /// A token that may be handed out now.
    Usable,
    /// A new token, because a caller asked (Refresh); with the token the caller saw
    /// rejected, none if the broker already holds another. `seen`: the generation of that
    /// stale token when the slot held it as the caller asked (`u64::MAX` if not known): a
    /// token of a later generation answers it, even one with the same bytes (some servers
    /// mint byte-identical tokens within a second).
    Rotation { stale: Option<&'a str>, seen: u64 },
    /// A new token ahead of expiry, unless `of` was replaced already.
    Renewal { of: &'a SharedToken },
}

/// What a caller's want, and the slot's token, call for.
pub(super) enum Decision {
    /// This token answers it.
    Done(SharedToken),
    /// A flight, for this reason.
    Fly(Reason),
}

/// Decides under the slot's lock whether `want` needs a flight, given the slot's `current`
/// token at `now`. A Rotation naming no stale token within `min_rotation` of the current
/// token's request gets that token (`renewal.min_rotation_interval`).
pub(super) fn decide(
    want: Want<'_>,
    current: Option<SharedToken>,
    now: Instant,
    key: &TokenKey,
    min_rotation: Duration,
) -> Decision {
    let reason = match (want, current) {
        (Want::Usable, Some(t)) if t.is_usable(now) => return Decision::Done(t),
        (Want::Usable, Some(_)) => Reason::Renewed,
        (Want::Usable, None) => Reason::Issued,
        (Want::Rotation { seen, .. }, Some(t)) if t.generation > seen => {
            debug!(key = %key, generation = t.generation, "rotated since the refresh was asked for; returning the current token");
            return Decision::Done(t);
        }
        (
            Want::Rotation {
                stale: Some(stale), ..
            },
            Some(t),
        ) if t.access_token.expose() != stale => {
            debug!(key = %key, fingerprint = %t.fingerprint, "refresh names an already replaced token; returning the current one");
            return Decision::Done(t);
        }
        (Want::Rotation { stale: None, .. }, Some(t))
            if t.is_valid(now) && now.saturating_duration_since(t.requested()) < min_rotation =>
        {
            debug!(key = %key, "rotated less than renewal.min_rotation_interval ago; returning the current token");
            return Decision::Done(t);
        }
        (Want::Rotation { .. }, Some(_)) => Reason::Forced,
        (Want::Renewal { of }, Some(t)) if !Arc::ptr_eq(of, &t) => return Decision::Done(t),
        (Want::Renewal { .. }, Some(_)) => Reason::Renewed,
        (Want::Rotation { .. } | Want::Renewal { .. }, None) => Reason::Issued,
    };
    Decision::Fly(reason)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{broker::Token, secret::AccessToken};

    const SECOND: Duration = Duration::from_secs(1);

    fn token(bytes: &str, generation: u64) -> SharedToken {
        let now = (Instant::now(), SystemTime::now());
        let hour = Duration::from_secs(3600);
        let mut token = Token::issued(AccessToken::new(bytes), "Bearer".into(), now, hour, hour);
        token.generation = generation;
        Arc::new(token)
    }

    /// Some servers mint byte-identical tokens within a second: a refresh that names the
    /// current bytes is answered by any token of a generation after the one it saw.
    #[tokio::test(start_paused = true)]
    async fn a_rotation_is_answered_by_a_later_generation_even_with_the_same_bytes() {
        let key = TokenKey {
            org: "acme".into(),
            user: None,
        };
        let now = Instant::now();
        let current = token("same-bytes", 5);
        let asked = |seen| Want::Rotation {
            stale: Some("same-bytes"),
            seen,
        };
        assert!(matches!(
            decide(asked(4), Some(Arc::clone(&current)), now, &key, SECOND),
            Decision::Done(t) if t.generation == 5
        ));
        assert!(matches!(
            decide(asked(5), Some(Arc::clone(&current)), now, &key, SECOND),
            Decision::Fly(Reason::Forced)
        ));
        // Other bytes than the stale ones: replaced already, whatever the generation.
        let other = Want::Rotation {
            stale: Some("older"),
            seen: 5,
        };
        assert!(matches!(
            decide(other, Some(current), now, &key, SECOND),
            Decision::Done(_)
        ));
    }

    /// A Refresh naming no stale token rotates at most once per
    /// `renewal.min_rotation_interval`: within it the current token answers.
    #[tokio::test(start_paused = true)]
    async fn a_blind_rotation_within_the_interval_gets_the_current_token() {
        let key = TokenKey {
            org: "acme".into(),
            user: Some("EMP-1".into()),
        };
        let current = token("t", 3);
        let blind = Want::Rotation {
            stale: None,
            seen: u64::MAX,
        };
        let now = Instant::now();
        assert!(matches!(
            decide(blind, Some(Arc::clone(&current)), now, &key, SECOND),
            Decision::Done(t) if t.generation == 3
        ));
        tokio::time::advance(SECOND).await;
        assert!(matches!(
            decide(
                blind,
                Some(Arc::clone(&current)),
                Instant::now(),
                &key,
                SECOND
            ),
            Decision::Fly(Reason::Forced)
        ));
        // A stale token named is the caller's evidence: it rotates at once.
        let named = Want::Rotation {
            stale: Some("t"),
            seen: 3,
        };
        assert!(matches!(
            decide(named, Some(current), now, &key, SECOND),
            Decision::Fly(Reason::Forced)
        ));
    }
}
