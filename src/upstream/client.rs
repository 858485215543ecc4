//! Who the broker is at one org's endpoints, and what its requests carry: the URLs, the
//! client id and how it authenticates (`client_auth`), the extras of `scope`, `audience`,
//! `resource` and the like, how user tokens are had (`user_grant`), and what the config
//! leaves to discovery.

use std::{sync::Arc, time::Duration};

use reqwest::{Url, header};

use super::{ClientKey, Discovery};

/// Where one organization's flows go, and who the broker is there.
#[derive(Debug, Clone)]
pub struct Client {
    /// The token endpoint (all grant types).
    pub token_url: Url,
    /// The authorization grant endpoint (codes that act as a user); `None` for an org that
    /// never needs user tokens.
    pub authorization_grant_url: Option<Url>,
    /// The OAuth client id; `None` for an org that holds only a long-lived token.
    pub client_id: Option<String>,
    /// How the broker authenticates at the token endpoint.
    pub auth: ClientAuth,
    /// The key `private_key_jwt` signs with (`orgs.NAME.client_key_env` or
    /// `client_key_file`); `None` for every other method.
    pub key: Option<Arc<ClientKey>>,
    /// The `aud` of the client assertions (`orgs.NAME.client_assertion_audience`); `None`:
    /// the token endpoint's URL, as RFC 7523 §3 suggests.
    pub assertion_audience: Option<String>,
    /// The lifetime of a token whose answer has no `expires_in` and that is no JWT with
    /// an `exp` (`orgs.NAME.default_token_lifetime`).
    pub default_lifetime: Option<Duration>,
    /// More CA certificates (PEM) to trust for this org's endpoints (`orgs.NAME.ca_file`),
    /// beside the system's and webpki's roots.
    pub ca: Option<Arc<[u8]>>,
    /// What the token requests ask for and carry beyond the grant itself.
    pub extras: Arc<RequestExtras>,
    /// Where the token URL and the auth method come from when `orgs.NAME.issuer` is set:
    /// filled in by [`Upstream::discover`] before the org is used.
    pub discovery: Option<Discovery>,
    /// How a user token is had (`orgs.NAME.user_grant`).
    pub user_grant: UserGrant,
}

/// How an org gets a user's token (`orgs.NAME.user_grant`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UserGrant {
    /// The platform's authorization grant endpoint, then a code exchange (`findity`).
    #[default]
    Findity,
    /// RFC 8693 token exchange at the token endpoint (`token_exchange`): the user id as
    /// the subject (of `subject_type`), the org's token as the actor.
    TokenExchange { subject_type: String },
}

/// The default `subject_token_type` of a token exchange whose subject is a user id.
pub const USER_ID_TOKEN_TYPE: &str = "urn:tokenbroker:params:oauth:token-type:user-id";

/// What an org's token requests carry beyond the grant (`orgs.NAME.scope`, `audience`,
/// `resource`, `extra_params`, `extra_headers`, `redirect_uri`).
#[derive(Debug, Clone, Default)]
pub struct RequestExtras {
    /// `scope` on client credentials (space-separated).
    pub scope: Option<String>,
    /// `audience` on client credentials (as several servers name the API).
    pub audience: Option<String>,
    /// `resource` (RFC 8707), each on every token request.
    pub resources: Vec<String>,
    /// More form parameters on every token request.
    pub params: Vec<(String, String)>,
    /// More headers on every token request.
    pub headers: Vec<(header::HeaderName, header::HeaderValue)>,
    /// `redirect_uri` on the code exchange (RFC 6749 §4.1.3, when the grant had one).
    pub redirect_uri: Option<String>,
}

/// How the broker authenticates to the token endpoint (`orgs.NAME.client_auth`), on every
/// token request: client credentials, refresh and code exchange (RFC 6749 §2.3, §6,
/// §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    #[default]
    SecretPost,
    /// HTTP Basic with the form-urlencoded id and secret (`client_secret_basic`).
    SecretBasic,
    /// A JWT signed with the org's key (`private_key_jwt`, RFC 7523 §2.2): no secret
    /// crosses the wire.
    PrivateKeyJwt,
    /// `client_id` alone: a public client (`none`).
    None,
    /// The platform's page to the letter (`findity`): the secret in the body for client
    /// credentials, `client_id` alone on refresh and code exchange.
    Findity,
}

impl ClientAuth {
    /// The name the config and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Self::SecretPost => "client_secret_post",
            Self::SecretBasic => "client_secret_basic",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::None => "none",
            Self::Findity => "findity",
        }
    }
}
