//! What a source holds and when it may replace it: pure functions of the held state, what
//! arrived and the time, so the ordering rules are tested without a broker.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

use zeroize::Zeroizing;

use crate::error::Gone;

/// A token counts as expired this long before its `expires_at`, so that it does not die on
/// its way to the platform.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// An access token as the broker handed it out. Cheap to clone; the text is wiped from
/// memory when the last clone goes, and `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<Zeroizing<String>>,
    expires_at: Option<SystemTime>,
    generation: u64,
}

impl AccessToken {
    /// A token of `generation` whose text is `secret`, expiring at `expires_at` (`None`
    /// for a long-lived token).
    pub fn new(secret: String, expires_at: Option<SystemTime>, generation: u64) -> Self {
        Self {
            secret: Arc::new(Zeroizing::new(secret)),
            expires_at,
            generation,
        }
    }

    /// The token's text: send it as `Authorization: Bearer <secret>`.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the platform stops accepting it; `None` for a long-lived token.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The key's generation: each new token of a key has a higher one, on one broker (or
    /// one shared store).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether it is still worth sending at `now`: more than [`EXPIRY_MARGIN`] left.
    pub fn usable_at(&self, now: SystemTime) -> bool {
        self.expires_at
            .is_none_or(|at| now.checked_add(EXPIRY_MARGIN).is_some_and(|t| t < at))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish()
    }
}

/// What a source holds.
#[derive(Clone, Debug, Default)]
pub enum Held {
    /// No token has arrived yet.
    #[default]
    Nothing,
    /// The newest token received.
    Token(AccessToken),
    /// A `REVOKED` or `UNAVAILABLE` event emptied the source.
    Gone {
        /// Which event.
        reason: Gone,
        /// Its detail, for the error.
        detail: String,
    },
}

/// Something that may replace what a source holds.
#[derive(Debug)]
pub enum Arrival {
    /// The first message of a new stream: the broker's current state, held whatever came
    /// before (a restarted broker without a store starts its generations again).
    Initial(AccessToken),
    /// A later message of the same stream: the broker sends a key's tokens in order, but
    /// one the source fetched itself in between may already be newer.
    Update(AccessToken),
    /// A `REVOKED` or `UNAVAILABLE` event.
    Gone {
        /// Which event.
        reason: Gone,
        /// Its detail.
        detail: String,
    },
    /// A token from a call the source made itself (`Get*Token`, or `Refresh` naming the
    /// token in `stale`).
    Called {
        /// The token.
        token: AccessToken,
        /// The token the caller saw rejected, for a `Refresh`.
        stale: Option<String>,
    },
}

/// The source's whole state, shared between its stream task and its callers.
#[derive(Debug, Default)]
pub struct State {
    /// What it holds.
    pub held: Held,
    /// The stream's last failure, until its next message.
    pub stream_error: Option<tonic::Status>,
    /// `close()` was called: no more tokens.
    pub closed: bool,
}

impl State {
    /// Applies `arrival` at `now`.
    pub fn apply(&mut self, arrival: Arrival, now: SystemTime) {
        let replace = match (&self.held, &arrival) {
            (_, Arrival::Initial(_) | Arrival::Gone { .. }) => true,
            (Held::Token(held), Arrival::Update(new)) => new.generation >= held.generation,
            (Held::Token(held), Arrival::Called { token, stale }) => {
                token.generation > held.generation
                    || !held.usable_at(now)
                    || stale.as_deref() == Some(held.secret())
            }
            (Held::Nothing | Held::Gone { .. }, _) => true,
        };
        if !replace {
            return;
        }
        self.held = match arrival {
            Arrival::Initial(token) | Arrival::Update(token) | Arrival::Called { token, .. } => {
                Held::Token(token)
            }
            Arrival::Gone { reason, detail } => Held::Gone { reason, detail },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str, generation: u64, expires_in: u64) -> AccessToken {
        let at = NOW + Duration::from_secs(expires_in);
        AccessToken::new(text.into(), Some(at), generation)
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn held(state: &State) -> &str {
        match &state.held {
            Held::Token(t) => t.secret(),
            Held::Nothing => "nothing",
            Held::Gone { .. } => "gone",
        }
    }

    #[test]
    fn a_token_is_expired_five_seconds_early() {
        assert!(token("a", 1, 6).usable_at(NOW));
        assert!(!token("a", 1, 5).usable_at(NOW));
        assert!(!token("a", 1, 0).usable_at(NOW));
        assert!(
            AccessToken::new("a".into(), None, 1).usable_at(NOW),
            "long-lived"
        );
    }

    #[test]
    fn initial_replaces_even_a_higher_generation() {
        let mut state = State::default();
        state.apply(Arrival::Initial(token("old", 7, 3600)), NOW);
        state.apply(Arrival::Initial(token("restarted", 1, 3600)), NOW);
        assert_eq!(held(&state), "restarted");
    }

    #[test]
    fn a_stream_update_never_goes_back_behind_a_fetched_token() {
        let mut state = State::default();
        state.apply(Arrival::Initial(token("g1", 1, 3600)), NOW);
        let refreshed = token("g3", 3, 3600);
        let stale = Some("g1".to_owned());
        state.apply(
            Arrival::Called {
                token: refreshed,
                stale,
            },
            NOW,
        );
        state.apply(Arrival::Update(token("g2", 2, 3600)), NOW);
        assert_eq!(held(&state), "g3", "the older stream message is not held");
        state.apply(Arrival::Update(token("g3-again", 3, 3600)), NOW);
        state.apply(Arrival::Update(token("g4", 4, 3600)), NOW);
        assert_eq!(held(&state), "g4");
    }

    #[test]
    fn a_fetched_token_replaces_only_a_newer_expired_or_rejected_one() {
        let mut state = State::default();
        state.apply(Arrival::Initial(token("g5", 5, 3600)), NOW);
        let older = token("g1", 1, 3600);
        state.apply(
            Arrival::Called {
                token: older.clone(),
                stale: None,
            },
            NOW,
        );
        assert_eq!(held(&state), "g5", "an older generation");
        let stale = Some("g5".to_owned());
        state.apply(
            Arrival::Called {
                token: older,
                stale,
            },
            NOW,
        );
        assert_eq!(held(&state), "g1", "the held one was seen rejected");
        state.apply(Arrival::Initial(token("g9", 9, 2)), NOW);
        state.apply(
            Arrival::Called {
                token: token("g2", 2, 3600),
                stale: None,
            },
            NOW,
        );
        assert_eq!(held(&state), "g2", "the held one expired");
    }

    #[test]
    fn an_event_empties_the_source_until_the_next_token() {
        let mut state = State::default();
        state.apply(Arrival::Initial(token("g1", 1, 3600)), NOW);
        let detail = "invalid_grant".to_owned();
        state.apply(
            Arrival::Gone {
                reason: Gone::Revoked,
                detail,
            },
            NOW,
        );
        assert_eq!(held(&state), "gone");
        state.apply(Arrival::Update(token("g2", 2, 3600)), NOW);
        assert_eq!(held(&state), "g2");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let text = format!("{:?}", token("s3cr3t-token", 1, 60));
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
