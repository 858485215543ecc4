//! What can go wrong talking to the platform, classified so the broker can decide between
//! giving up, re-issuing, and trying again later.

use std::time::Duration;

/// One failed upstream call. Messages carry the platform's error code and a trimmed
/// description, never a request body, a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The platform rejected the broker's client credentials (`invalid_client`, or a 401
    /// from the token endpoint). Permanent until the
    /// configuration changes.
    #[error("the platform rejected the client credentials ({code}{}){}", describe(.description), match .method { Some(m) => format!(", sent as client_auth = {m}"), None => String::new() })]
    CredentialsRejected {
        code: String,
        description: Option<String>,
        /// How they were sent (`orgs.NAME.client_auth`), when a token request was refused.
        method: Option<&'static str>,
    },
    /// The refresh token or authorization code is not, or no longer, valid (`invalid_grant`).
    #[error("the platform answered invalid_grant{}", describe(.description))]
    InvalidGrant { description: Option<String> },
    /// The grant endpoint did not accept the bearer token (401): the org token expired or
    /// was revoked.
    #[error("the authorization grant endpoint rejected the org token (401)")]
    BearerRejected,
    /// The grant endpoint does not know the user (404, or a 400 naming the user).
    #[error("the platform does not know this user ({status})")]
    UnknownUser { status: u16 },
    /// The credential may not act as users (403 from the grant endpoint).
    #[error(
        "the platform refused to act as users with this credential (403): it needs the role that may generate user authorization codes"
    )]
    Forbidden,
    /// The platform is throttling the broker (429).
    #[error("the platform is throttling requests (429{})", match .retry_after { Some(d) => format!(", retry after {}s", d.as_secs()), None => String::new() })]
    RateLimited { retry_after: Option<Duration> },
    /// The platform failed (5xx).
    #[error("the platform answered HTTP {status}")]
    ServerError { status: u16 },
    /// Any other refusal the broker has no specific handling for.
    #[error("the platform answered HTTP {status}{}", match .code { Some(c) => format!(" ({c})"), None => String::new() })]
    Rejected { status: u16, code: Option<String> },
    /// The server refused what the client asks for (`invalid_scope`, `invalid_target`,
    /// `unsupported_grant_type`, `unauthorized_client`, `invalid_request`): permanent
    /// until the configuration changes.
    #[error("the server refused the request ({code}{})", describe(.description))]
    Refused {
        code: String,
        description: Option<String>,
    },
    /// The answer has no `expires_in`, the access token is no JWT with an `exp`, and no
    /// default lifetime is configured: a token of unknown life cannot be handed out.
    #[error(
        "the server's answer has no expires_in and its access token is not a JWT with an exp claim"
    )]
    NoLifetime,
    /// The server's TLS certificate is not trusted (a private CA?).
    #[error("the server's TLS certificate is not trusted: {reason}")]
    UntrustedCertificate { reason: String },
    /// A success status with a body the broker cannot use.
    #[error("the platform's answer could not be used: {reason}")]
    Malformed { reason: String },
    /// No answer within the request timeout.
    #[error("the platform did not answer within {}s", .after.as_secs_f32())]
    Timeout { after: Duration },
    /// Connecting or talking to the platform failed.
    #[error("could not reach the platform: {reason}")]
    Connection { reason: String },
}

fn describe(description: &Option<String>) -> String {
    match description {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

impl UpstreamError {
    /// A short name of the kind of failure, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CredentialsRejected { .. } => "credentials_rejected",
            Self::InvalidGrant { .. } => "invalid_grant",
            Self::BearerRejected => "bearer_rejected",
            Self::UnknownUser { .. } => "unknown_user",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::ServerError { .. } => "server_error",
            Self::Rejected { .. } => "rejected",
            Self::Malformed { .. } => "malformed",
            Self::Refused { .. } => "refused",
            Self::NoLifetime => "no_lifetime",
            Self::UntrustedCertificate { .. } => "untrusted_certificate",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
        }
    }
}
