//! A token as the broker holds and hands it out, and when it is still good to hand out.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::Instant;

use super::TokenKey;
use crate::secret::{AccessToken, Fingerprint};

/// The most a token's usable life is cut short before its expiry, so that a caller has
/// time to use what it was handed.
pub const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A wall-clock time as seconds and nanoseconds since the Unix epoch (the epoch itself for
/// a clock set before it): what a protobuf `Timestamp` holds, in 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime {
    pub seconds: i64,
    pub nanos: u32,
}

impl UnixTime {
    /// `d` later.
    pub fn after(self, d: Duration) -> Self {
        let nanos = self.nanos + d.subsec_nanos();
        let carry = i64::from(nanos >= 1_000_000_000);
        let seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Self {
            seconds: self.seconds.saturating_add(seconds).saturating_add(carry),
            nanos: nanos % 1_000_000_000,
        }
    }
}

impl From<SystemTime> for UnixTime {
    fn from(t: SystemTime) -> Self {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos(),
        }
    }
}

impl From<UnixTime> for SystemTime {
    fn from(t: UnixTime) -> Self {
        let seconds = u64::try_from(t.seconds).unwrap_or_default();
        UNIX_EPOCH + Duration::new(seconds, t.nanos.min(999_999_999))
    }
}

/// The rarely set parts of a [`Token`].
#[derive(Debug)]
struct Extra {
    token_type: Option<Box<str>>,
    scope: Option<Box<str>>,
}

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

impl Reason {
    /// Every reason, in the order of their counts in [`super::BrokerStats::rotations`].
    pub const ALL: [Self; 4] = [Self::Issued, Self::Renewed, Self::Forced, Self::Reissued];

    /// The reason named `name` (as [`Reason::name`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// A short name, for metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Renewed => "renewed",
            Self::Forced => "forced",
            Self::Reissued => "reissued",
        }
    }
}

/// One access token for one key (the slot holding it, or the caller asking for it, knows
/// which). Kept small: a broker holds one per user token.
#[derive(Debug)]
pub struct Token {
    pub access_token: AccessToken,
    /// The access token's fingerprint, computed once: every audit line names it.
    pub fingerprint: Fingerprint,
    pub reason: Reason,
    /// What is rarely there: a token type other than "Bearer", the scope the server
    /// granted (one pointer, so the usual token carries 8 bytes for both).
    extra: Option<Box<Extra>>,
    /// When the broker asked the platform for it (wall clock, for callers), kept as the
    /// answers carry it, so that no call converts it: seconds since the Unix epoch, and
    /// nanoseconds (apart, so that they pack with the other small fields).
    issued_s: i64,
    issued_nanos: u32,
    /// When it was asked for (monotonic): its expiry is counted from here, a conservative
    /// start, as the platform began counting no earlier.
    requested: Instant,
    /// The lifetime the platform gave it; `None` for a long-lived token.
    pub lifetime: Option<Duration>,
    /// When the background renewal replaces it, in milliseconds after `requested` (4 bytes
    /// where an `Option<Instant>` takes 16: the token fits jemalloc's 112-byte class).
    renew_after_ms: u32,
    /// 1 for a key's first token, one more for every token after it.
    pub generation: u64,
}

impl Token {
    /// A token from the platform, asked for at `requested`, living `lifetime`, to be renewed
    /// `renew_after` after it was asked for.
    pub(crate) fn issued(
        access_token: AccessToken,
        token_type: String,
        requested: (Instant, SystemTime),
        lifetime: Duration,
        renew_after: Duration,
    ) -> Self {
        let (mono, wall) = requested;
        let issued = UnixTime::from(wall);
        Self {
            fingerprint: access_token.fingerprint(),
            access_token,
            reason: Reason::Issued,
            extra: (token_type != "Bearer").then(|| {
                Box::new(Extra {
                    token_type: Some(token_type.into_boxed_str()),
                    scope: None,
                })
            }),
            issued_s: issued.seconds,
            issued_nanos: issued.nanos,
            requested: mono,
            lifetime: Some(lifetime),
            // Past 49 days, sooner than planned: a platform does not issue such tokens.
            renew_after_ms: u32::try_from(renew_after.as_millis()).unwrap_or(u32::MAX),
            generation: 0,
        }
    }

    /// A long-lived token or API key from the configuration: never expires or renews.
    pub(crate) fn long_lived(access_token: AccessToken) -> Self {
        let issued = UnixTime::from(SystemTime::now());
        Self {
            fingerprint: access_token.fingerprint(),
            access_token,
            reason: Reason::Issued,
            extra: None,
            issued_s: issued.seconds,
            issued_nanos: issued.nanos,
            requested: Instant::now(),
            lifetime: None,
            renew_after_ms: 0,
            generation: 1,
        }
    }

    /// The token type, as the platform gave it ("Bearer").
    pub fn token_type(&self) -> &str {
        self.extra
            .as_ref()
            .and_then(|e| e.token_type.as_deref())
            .unwrap_or("Bearer")
    }

    /// The scope the server granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.scope.as_deref())
    }

    /// This token with the scope the server granted.
    pub(crate) fn with_scope(mut self, scope: Option<String>) -> Self {
        if let Some(scope) = scope.filter(|s| !s.is_empty()) {
            let extra = self.extra.get_or_insert_with(|| {
                Box::new(Extra {
                    token_type: None,
                    scope: None,
                })
            });
            extra.scope = Some(scope.into_boxed_str());
        }
        self
    }

    /// When the broker asked for it (wall clock).
    pub fn issued_at(&self) -> UnixTime {
        UnixTime {
            seconds: self.issued_s,
            nanos: self.issued_nanos,
        }
    }

    /// When the broker asked the platform for it (monotonic).
    pub fn requested(&self) -> Instant {
        self.requested
    }

    /// When the background renewal replaces it; `None` for a long-lived token.
    pub fn renew_at(&self) -> Option<Instant> {
        self.lifetime
            .map(|_| self.requested + Duration::from_millis(self.renew_after_ms.into()))
    }

    /// When the platform stops accepting it (wall clock); `None` for a long-lived token.
    pub fn expires_at(&self) -> Option<UnixTime> {
        self.lifetime.map(|l| self.issued_at().after(l))
    }

    /// Monotonic expiry; `None` for a long-lived token.
    pub fn expires(&self) -> Option<Instant> {
        self.lifetime.map(|l| self.requested + l)
    }

    /// Monotonic deadline after which it is no longer handed out while a renewal can
    /// succeed (see [`usable_until`]).
    pub fn usable_until(&self) -> Option<Instant> {
        self.lifetime.map(|l| usable_until(self.requested, l))
    }

    /// Whether the token may be handed out at `now` in normal operation.
    pub fn is_usable(&self, now: Instant) -> bool {
        self.usable_until().is_none_or(|until| now < until)
    }

    /// Whether the platform still accepts it at `now` (an outage may hand it out until then).
    pub fn is_valid(&self, now: Instant) -> bool {
        self.expires().is_none_or(|e| now < e)
    }

    /// How long it stays valid from `now`; `None` for ever.
    pub fn valid_for(&self, now: Instant) -> Option<Duration> {
        self.expires().map(|e| e.saturating_duration_since(now))
    }
}

/// The end of a token's usable life: its expiry less a margin of a tenth of its lifetime,
/// at most [`MAX_EXPIRY_MARGIN`].
pub fn usable_until(requested: Instant, lifetime: Duration) -> Instant {
    requested + lifetime - (lifetime / 10).min(MAX_EXPIRY_MARGIN)
}

/// A shared, immutable token: what the cache holds and callers receive.
pub type SharedToken = Arc<Token>;

/// What a key's channel holds: what its watchers see.
#[derive(Debug, Clone, Default)]
pub enum Held {
    /// No token yet.
    #[default]
    Empty,
    /// The current token.
    Token(SharedToken),
    /// The token expired and could not be renewed.
    Gone(Arc<Gone>),
}

impl Held {
    /// The token, if one is held.
    pub fn token(&self) -> Option<&SharedToken> {
        match self {
            Self::Token(token) => Some(token),
            Self::Empty | Self::Gone(_) => None,
        }
    }
}

/// A key whose token expired while it could not be renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub key: TokenKey,
    pub reason: GoneReason,
    /// The last renewal's error, for people.
    pub detail: String,
    /// The generation of the token that expired.
    pub generation: u64,
}

/// Why a key has no token any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// The platform refused: the user was removed, or the broker's credentials were revoked.
    Revoked,
    /// The platform was unreachable or failing until the token expired.
    Unavailable,
}

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
        let whole_second = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let requested = (Instant::now(), whole_second);
        let hundred = Duration::from_secs(100);
        let t = Token::issued(
            AccessToken::new("a"),
            "Bearer".into(),
            requested,
            hundred,
            hundred / 2,
        );
        assert_eq!(t.renew_at(), Some(requested.0 + hundred / 2));
        assert!(t.is_usable(Instant::now()));
        tokio::time::advance(Duration::from_secs(89)).await;
        assert!(t.is_usable(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!t.is_usable(Instant::now()) && t.is_valid(Instant::now()));
        assert_eq!(t.valid_for(Instant::now()), Some(Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!t.is_valid(Instant::now()));
        // The wall clock as answers carry it.
        let late = Token::issued(
            AccessToken::new("c"),
            "Bearer".into(),
            (Instant::now(), whole_second + Duration::from_millis(400)),
            hundred + Duration::from_millis(700),
            hundred / 2,
        );
        let at = |seconds, nanos| UnixTime { seconds, nanos };
        assert_eq!(late.issued_at(), at(1_800_000_000, 400_000_000));
        assert_eq!(late.expires_at(), Some(at(1_800_000_101, 100_000_000)));
        let forever = Token::long_lived(AccessToken::new("b"));
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(forever.is_usable(Instant::now()) && forever.is_valid(Instant::now()));
        assert!(forever.expires_at().is_none() && forever.valid_for(Instant::now()).is_none());
    }
}
