//! A token as the broker holds and hands it out, and when it is still good to hand out.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use super::TokenKey;
use crate::secret::AccessToken;

/// The most a token's usable life is cut short before its expiry, so that a caller has
/// time to use what it was handed.
pub const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// Why a token was minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The first token for a key the broker held none for.
    Issued,
    /// A new token replacing one that expired or was about to.
    Renewed,
    /// A rotation asked for by a Refresh call.
    Forced,
    /// The refresh token could not be used, so the token was issued through the primary grant.
    Reissued,
}

/// One access token for one key.
#[derive(Debug)]
pub struct Token {
    pub key: TokenKey,
    pub access_token: AccessToken,
    pub token_type: String,
    /// When the broker asked the platform for it (wall clock, for callers).
    pub issued_at: SystemTime,
    /// When the platform stops accepting it (wall clock); `None` for a long-lived token.
    pub expires_at: Option<SystemTime>,
    /// Monotonic deadline after which the broker no longer hands it out.
    pub usable_until: Option<Instant>,
    /// 1 for a key's first token, one more for every token after it.
    pub generation: u64,
    pub reason: Reason,
}

impl Token {
    /// A token of `lifetime`, asked for at `requested` (a conservative start: the platform
    /// began counting no earlier than that).
    pub(crate) fn new(
        key: TokenKey,
        access_token: AccessToken,
        token_type: String,
        requested: (Instant, SystemTime),
        lifetime: Option<Duration>,
        generation: u64,
        reason: Reason,
    ) -> Self {
        let (mono, wall) = requested;
        Self {
            key,
            access_token,
            token_type,
            issued_at: wall,
            expires_at: lifetime.map(|l| wall + l),
            usable_until: lifetime.map(|l| usable_until(mono, l)),
            generation,
            reason,
        }
    }

    /// Whether the token may still be handed out at `now`.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }
}

/// The end of a token's usable life: its expiry less a margin of a tenth of its lifetime,
/// at most [`MAX_EXPIRY_MARGIN`].
pub fn usable_until(requested: Instant, lifetime: Duration) -> Instant {
    requested + lifetime - (lifetime / 10).min(MAX_EXPIRY_MARGIN)
}

/// A shared, immutable token: what the cache holds and callers receive.
pub type SharedToken = Arc<Token>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_a_tenth_of_the_lifetime_capped_at_ten_seconds() {
        let t0 = Instant::now();
        assert_eq!(
            usable_until(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(3590)
        );
        assert_eq!(
            usable_until(t0, Duration::from_secs(2)),
            t0 + Duration::from_millis(1800)
        );
        assert_eq!(
            usable_until(t0, Duration::from_secs(60)),
            t0 + Duration::from_secs(54)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_stop_being_usable_before_they_expire() {
        let key = TokenKey {
            org: "acme".into(),
            user: None,
        };
        let now = || (Instant::now(), SystemTime::now());
        let t = Token::new(
            key.clone(),
            AccessToken::new("a"),
            "Bearer".into(),
            now(),
            Some(Duration::from_secs(100)),
            1,
            Reason::Issued,
        );
        assert!(t.is_usable(Instant::now()));
        tokio::time::advance(Duration::from_secs(89)).await;
        assert!(t.is_usable(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!t.is_usable(Instant::now()));
        let forever = Token::new(
            key,
            AccessToken::new("b"),
            "Bearer".into(),
            now(),
            None,
            1,
            Reason::Issued,
        );
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(forever.is_usable(Instant::now()) && forever.expires_at.is_none());
    }
}
