//! The proxy's own answers: every way a request can fail before (or instead of) the
//! platform's answer, as one enum with one mapping to an HTTP status and a short JSON body
//! `{"error": code, "message": text}`. A `Tokenbroker-Error` header carries the code, so a
//! caller can tell the broker's refusals from the platform's.

use std::time::Duration;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};

use crate::{auth::AuthError, broker::BrokerError, store::HoldKind};

/// The header naming the proxy's own error code on its answers.
pub const ERROR_HEADER: &str = "tokenbroker-error";

/// Why the proxy answered itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The gate refused the caller: no credentials, or ones that name no caller (407); a
    /// caller without the `proxy` permission or the org (403); over its rate limit, or its
    /// address failed too often (429).
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// `proxy.max_concurrent_requests` requests are in progress: 503.
    #[error(
        "{limit} requests are in progress through the proxy (proxy.max_concurrent_requests); retry shortly"
    )]
    Busy { limit: usize },
    /// The broker could not name or give the token (an unknown org or user, the platform
    /// refusing the broker): by kind.
    #[error("{0}")]
    Broker(BrokerError),
    /// `CONNECT` (a client configured with the broker as `HTTPS_PROXY`): 405. The proxy
    /// reads and forwards plain HTTP; it speaks TLS to the platform itself.
    #[error(
        "the proxy forwards plain HTTP and speaks TLS to the platform itself: send http:// URLs (HTTP_PROXY, not HTTPS_PROXY), or requests to the proxy's own address"
    )]
    Connect,
    /// A path that climbs out of the org's `api_url` prefix: 400.
    #[error("the path leaves the org's api_url (dot segments climb out of its prefix)")]
    OutsideApi,
    /// A `Tokenbroker-*` header that is not text: 400.
    #[error("the {name} header must be visible ASCII text")]
    BadHeader { name: &'static str },
    /// The org has no `api_url` (a reload removed it in between): 502.
    #[error("org {org} has no api_url; set orgs.{org}.api_url in the broker's config")]
    NoApiUrl { org: String },
    /// The request body is larger than `proxy.max_request_bytes`: 413.
    #[error("the request body is larger than {limit} bytes (proxy.max_request_bytes)")]
    RequestTooLarge { limit: u64 },
    /// The caller went silent while sending its body: 408.
    #[error("the request body stopped for {after:?} (proxy.request_timeout)")]
    RequestBodyTimeout { after: Duration },
    /// The caller's body could not be read (its connection broke): 400.
    #[error("the request body could not be read: {0}")]
    RequestBody(String),
    /// No token within `proxy.request_timeout` (the platform's token endpoint is slow, or
    /// the broker waits on its upstream budget): 504.
    #[error("no token for this request within {after:?} (proxy.request_timeout)")]
    TokenTimeout { after: Duration },
    /// The platform did not start its answer within `proxy.request_timeout`: 504.
    #[error("the platform did not answer within {after:?} (proxy.request_timeout)")]
    UpstreamTimeout { after: Duration },
    /// The platform could not be reached, or broke the connection: 502.
    #[error("the platform could not be reached: {0}")]
    Upstream(String),
    /// The platform declared an answer larger than `proxy.max_response_bytes`: 502.
    #[error(
        "the platform's answer is {declared} bytes, more than {limit} (proxy.max_response_bytes)"
    )]
    ResponseTooLarge { declared: u64, limit: u64 },
    /// The platform gave a token that cannot be a header value: 502.
    #[error("the platform's token is not a valid header value")]
    InvalidToken,
}

impl From<BrokerError> for ProxyError {
    fn from(e: BrokerError) -> Self {
        Self::Broker(e)
    }
}

/// The gate's words for a gRPC caller, as a proxy caller sends them.
fn proxy_words(message: &str) -> String {
    message.replace(
        "send `authorization: Bearer <API key>`",
        "send `Proxy-Authorization: Bearer <API key>`",
    )
}

impl ProxyError {
    /// The HTTP status and the code in the JSON body.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Auth(AuthError::Unauthenticated(_)) => {
                (StatusCode::PROXY_AUTHENTICATION_REQUIRED, "unauthenticated")
            }
            Self::Auth(AuthError::PermissionDenied(_)) => {
                (StatusCode::FORBIDDEN, "permission_denied")
            }
            Self::Auth(AuthError::RateLimited(_)) => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
            }
            Self::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            Self::Connect => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Broker(e) => broker_status(e),
            Self::BadHeader { .. } | Self::RequestBody(_) | Self::OutsideApi => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Self::NoApiUrl { .. } => (StatusCode::BAD_GATEWAY, "no_api_url"),
            Self::RequestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Self::RequestBodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::TokenTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "token_timeout"),
            Self::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Self::ResponseTooLarge { .. } => (StatusCode::BAD_GATEWAY, "response_too_large"),
            Self::InvalidToken => (StatusCode::BAD_GATEWAY, "invalid_token"),
        }
    }

    /// The message, with the broker's field names as the proxy's headers.
    fn message(&self) -> String {
        match self {
            Self::Broker(BrokerError::InvalidArgument { field, problem }) => {
                let header = match *field {
                    "org" => "the Tokenbroker-Org header",
                    "user_id" => "the Tokenbroker-User header",
                    other => other,
                };
                format!("{header} {problem}")
            }
            Self::Auth(AuthError::Unauthenticated(m)) => proxy_words(m),
            other => other.to_string(),
        }
    }
}

/// A broker error as the proxy answers it: the caller's mistake 400/404, the broker unable
/// to get a token from the platform 502, the broker or the platform busy or away 503.
fn broker_status(e: &BrokerError) -> (StatusCode, &'static str) {
    match e {
        BrokerError::InvalidArgument { .. } | BrokerError::OutOfRange { .. } => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        BrokerError::UnknownOrg { .. } => (StatusCode::NOT_FOUND, "unknown_org"),
        BrokerError::UnknownUser { .. } => (StatusCode::NOT_FOUND, "unknown_user"),
        BrokerError::CredentialsRejected { .. }
        | BrokerError::NotRotatable { .. }
        | BrokerError::NoUserTokens { .. }
        | BrokerError::Misconfigured { .. } => (StatusCode::BAD_GATEWAY, "no_token"),
        BrokerError::Unavailable { .. }
        | BrokerError::Internal { .. }
        | BrokerError::StoreUnavailable { .. }
        | BrokerError::TooManyWaiting { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable")
        }
        BrokerError::Held { kind, .. } => match kind {
            HoldKind::Credentials => (StatusCode::BAD_GATEWAY, "no_token"),
            HoldKind::UnknownUser => (StatusCode::NOT_FOUND, "unknown_user"),
            HoldKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable"),
        },
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let body = serde_json::json!({ "error": code, "message": self.message() });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
        match status {
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tokenbroker\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_status_and_names_the_header() {
        let cases: [(ProxyError, u16); 5] = [
            (AuthError::Unauthenticated("no".into()).into(), 407),
            (AuthError::PermissionDenied("no".into()).into(), 403),
            (ProxyError::Busy { limit: 1 }, 503),
            (ProxyError::RequestTooLarge { limit: 1 }, 413),
            (
                ProxyError::UpstreamTimeout {
                    after: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().0.as_u16(), status, "{error}");
        }
        let missing = ProxyError::Broker(BrokerError::InvalidArgument {
            field: "org",
            problem: "is required when several orgs are configured (a, b)".into(),
        });
        assert_eq!(missing.status().0, StatusCode::BAD_REQUEST);
        assert_eq!(
            missing.message(),
            "the Tokenbroker-Org header is required when several orgs are configured (a, b)"
        );
        let response = ProxyError::from(AuthError::Unauthenticated("x".into())).into_response();
        assert_eq!(response.headers()[ERROR_HEADER], "unauthenticated");
        assert!(response.headers().contains_key(header::PROXY_AUTHENTICATE));
    }
}
