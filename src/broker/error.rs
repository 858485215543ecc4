//! The broker's one error type. Each variant says what went wrong and what to do about it;
//! the gRPC layer maps it to a status in exactly one place.

use std::time::Duration;

use super::TokenKey;
use crate::upstream::UpstreamError;

/// Why the broker could not hand out a token. Messages never hold a secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// A request field is missing or malformed.
    #[error("{field} {problem}")]
    InvalidArgument {
        field: &'static str,
        problem: String,
    },
    /// The organization is not in the broker's configuration.
    #[error("org {org:?} is not configured; configured orgs: {known}")]
    UnknownOrg { org: String, known: String },
    /// The platform does not know the user.
    #[error(
        "the platform does not know user {user:?} in org {org}: check the person id or ExternalSourceID"
    )]
    UnknownUser { org: String, user: String },
    /// The platform rejects the broker's own credentials for the org; retrying will not help
    /// until the configuration changes.
    #[error("org {org}: {cause}; check the org's credentials in the broker's configuration")]
    CredentialsRejected {
        org: String,
        #[source]
        cause: UpstreamError,
    },
    /// The server refuses what the org's configuration asks for, or answers in a way the
    /// configuration must settle (no lifetime, an untrusted certificate): retrying will
    /// not help until `fix` is done.
    #[error("{key}: {cause}; {fix}")]
    Misconfigured {
        key: String,
        #[source]
        cause: UpstreamError,
        /// What to change, naming the setting.
        fix: String,
    },
    /// The org has no authorization grant endpoint, so it hands out no user tokens.
    #[error(
        "org {org} hands out no user tokens: it has no authorization_grant_url; set orgs.{org}.authorization_grant_url (or environment) for user tokens"
    )]
    NoUserTokens { org: String },
    /// The key holds a long-lived token or API key, which the platform cannot rotate.
    #[error(
        "org {org} uses a long-lived token, which cannot be rotated; replace it in the broker's configuration"
    )]
    NotRotatable { org: String },
    /// The platform is unreachable or failing, and no valid token is held for the key.
    #[error("{key}: no valid token and the platform failed: {cause}; try again shortly")]
    Unavailable {
        key: String,
        /// What the platform did (its 429 `Retry-After`, if it sent one, included).
        #[source]
        cause: UpstreamError,
    },
    /// The broker failed itself (a fetch's task ended without an outcome): a bug, reported
    /// as unavailable so the caller retries.
    #[error("{key}: no valid token: {detail}; try again shortly")]
    Internal { key: String, detail: &'static str },
    /// Another replica's flight for the key failed, and every replica holds off the
    /// platform for the key until it may try again.
    #[error("{message} (every replica holds off {key} for {}s more)", .left.as_secs().max(1))]
    Held {
        key: String,
        kind: crate::store::HoldKind,
        /// What the replica that failed told its callers.
        message: String,
        left: Duration,
    },
    /// The shared token store did not answer, and the broker holds no valid token it could
    /// hand out meanwhile (it never presents a refresh token the store did not give it).
    #[error("{key}: the token store is unreachable ({detail}); try again shortly")]
    StoreUnavailable { key: String, detail: String },
    /// So many callers wait on the platform already that one more would not fit the
    /// memory bound (`server.max_waiting_callers`).
    #[error(
        "{limit} callers are already waiting on the platform (server.max_waiting_callers); retry shortly"
    )]
    TooManyWaiting { limit: usize },
    /// The caller asked for a token valid longer than the platform's tokens live.
    #[error(
        "min_valid_for {}s cannot be met: the platform's tokens for {key} live {}s; ask for less",
        .requested.as_secs(), .lifetime.as_secs()
    )]
    OutOfRange {
        key: String,
        requested: Duration,
        lifetime: Duration,
    },
}

/// What an operator changes for a permanent upstream refusal `e` of `org`.
fn fix_for(org: &str, e: &UpstreamError) -> String {
    match e {
        UpstreamError::Refused { code, .. } if code == "invalid_scope" => {
            format!("check orgs.{org}.scope against what the server allows the client")
        }
        UpstreamError::Refused { code, .. } if code == "invalid_target" => {
            format!("check orgs.{org}.resource and orgs.{org}.audience")
        }
        UpstreamError::Refused { code, .. } if code == "invalid_request" => format!(
            "the server calls the request invalid: check orgs.{org} (client_auth, extra_params) and the client's registration there (its grant types)"
        ),
        UpstreamError::Refused { code, .. } if code == "client_assertion" => {
            format!("check orgs.{org}.client_key_file (or client_key_env)")
        }
        UpstreamError::Refused { .. } => format!(
            "the server does not allow the client of orgs.{org}.client_id this grant; enable it there"
        ),
        UpstreamError::NoLifetime => {
            format!("set orgs.{org}.default_token_lifetime to how long the server's tokens live")
        }
        UpstreamError::UntrustedCertificate { .. } => format!(
            "trust the server's CA with orgs.{org}.ca_file (or SSL_CERT_FILE for every org)"
        ),
        _ => format!("check orgs.{org} in the broker's configuration"),
    }
}

impl BrokerError {
    /// Maps an upstream failure met while working for `key`.
    pub(crate) fn upstream(key: &TokenKey, e: &UpstreamError) -> Self {
        match (e, &key.user) {
            (
                UpstreamError::CredentialsRejected { .. }
                | UpstreamError::Forbidden
                | UpstreamError::BearerRejected,
                _,
            ) => Self::CredentialsRejected {
                org: key.org.to_string(),
                cause: e.clone(),
            },
            (UpstreamError::UnknownUser { .. }, Some(user)) => Self::UnknownUser {
                org: key.org.to_string(),
                user: user.to_string(),
            },
            (
                UpstreamError::Refused { .. }
                | UpstreamError::NoLifetime
                | UpstreamError::UntrustedCertificate { .. },
                _,
            ) => Self::Misconfigured {
                key: key.to_string(),
                cause: e.clone(),
                fix: fix_for(&key.org, e),
            },
            _ => Self::Unavailable {
                key: key.to_string(),
                cause: e.clone(),
            },
        }
    }

    /// Whether only a change of configuration can end it (a hold of
    /// `renewal.credentials_retry`, not a backoff).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::CredentialsRejected { .. } | Self::Misconfigured { .. }
        )
    }

    /// How long the platform asked the broker to wait (a 429's `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable {
                cause: UpstreamError::RateLimited { retry_after },
                ..
            } => *retry_after,
            _ => None,
        }
    }
}
