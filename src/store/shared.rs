//! What a store that several replicas share answers before and after a flight: the claim
//! (fly, take the newer token, honour a hold, or wait), the install's outcome, and the
//! holds one replica's failure leaves for all.

use std::time::Duration;

use super::{Lease, StoredToken};

/// A key's record as another replica left it: its generation, and its token if that one
/// can be read (else the key is fetched anew, at the next generation).
#[derive(Debug)]
pub struct Stored {
    pub generation: u64,
    pub token: Option<StoredToken>,
}

/// What a replica may do about a key before it asks the platform ([`Store::claim`]).
#[derive(Debug)]
pub enum Claim {
    /// Fly: this replica holds the key's lease (renewed while it lives, released when
    /// dropped), or no lease is needed (a file has one process).
    Fly(Option<Lease>),
    /// The store holds a newer generation than the one the replica knows: take it.
    Newer(Stored),
    /// Every replica holds off the key for a while after a failure.
    Held(Hold),
    /// Another replica flies for the key now; its lease lapses within `within` unless
    /// renewed.
    Flying { within: Duration },
}

/// What [`Store::install`] did.
#[derive(Debug)]
pub enum Installed {
    /// The new token is the key's record now.
    Done,
    /// Another replica installed a newer one first: it stays (and the new token's refresh
    /// token was not stored, so it is never presented).
    Newer(Stored),
}

/// A failure one replica saw that holds every replica off a key for a while: a backoff, a 429's `Retry-After`, rejected credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// How long from now.
    pub left: Duration,
    pub kind: HoldKind,
    /// What the replica that saw it told its callers (never a secret).
    pub message: String,
}

/// The kind of failure behind a [`Hold`], so every replica answers it with the same status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldKind {
    /// The platform rejected the org's credentials.
    Credentials,
    /// The platform does not know the user.
    UnknownUser,
    /// The platform failed or throttled.
    Unavailable,
}

impl HoldKind {
    pub(super) fn code(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::UnknownUser => "unknown-user",
            Self::Unavailable => "unavailable",
        }
    }

    pub(super) fn from_code(code: &str) -> Self {
        match code {
            "credentials" => Self::Credentials,
            "unknown-user" => Self::UnknownUser,
            _ => Self::Unavailable,
        }
    }
}
