//! What a caller wants from a slot, and the decision, under the slot's lock, whether that
//! needs a flight: a pure function of the want and the token the slot holds.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::debug;

use super::{Reason, SharedToken, TokenKey};

/// What a caller wants from a slot.
#[derive(Debug, Clone, Copy)]
pub(super) enum Want<'a> {
    /// A token that may be handed out now.
    Usable,
    /// A new token, because a caller asked (Refresh); with the token the caller saw
    /// rejected, none if the broker already holds another.
    Rotation { stale: Option<&'a str> },
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
/// token at `now`.
pub(super) fn decide(
    want: Want<'_>,
    current: Option<SharedToken>,
    now: Instant,
    key: &TokenKey,
) -> Decision {
    let reason = match (want, current) {
        (Want::Usable, Some(t)) if t.is_usable(now) => return Decision::Done(t),
        (Want::Usable, Some(_)) => Reason::Renewed,
        (Want::Usable, None) => Reason::Issued,
        (Want::Rotation { stale: Some(stale) }, Some(t)) if t.access_token.expose() != stale => {
            debug!(key = %key, fingerprint = %t.fingerprint, "refresh names an already replaced token; returning the current one");
            return Decision::Done(t);
        }
        (Want::Rotation { .. }, Some(_)) => Reason::Forced,
        (Want::Renewal { of }, Some(t)) if !Arc::ptr_eq(of, &t) => return Decision::Done(t),
        (Want::Renewal { .. }, Some(_)) => Reason::Renewed,
        (Want::Rotation { .. } | Want::Renewal { .. }, None) => Reason::Issued,
    };
    Decision::Fly(reason)
}
