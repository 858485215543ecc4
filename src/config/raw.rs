//! The config file as serde reads it: every section and key, `deny_unknown_fields`
//! everywhere, durations as text (parsed by hand so that an error names the dotted key, not
//! a line and column).

use super::*;

/// The platform's environments, which fill in the endpoint URLs.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    pub(super) fn urls(self) -> (&'static str, &'static str) {
        match self {
            Self::Production => (
                "https://expense.findity.com/api/oauth/token/",
                "https://expense.findity.com/api/oauth/authorization-grant",
            ),
            Self::Sandbox => (
                "https://stage-api.findity.com/oauth/token",
                "https://stage-api.findity.com/oauth/authorization-grant",
            ),
        }
    }

    /// The base of the platform's HTTP API, which the proxy forwards to.
    pub(super) fn api_url(self) -> &'static str {
        match self {
            Self::Production => "https://expense.findity.com",
            Self::Sandbox => "https://stage-api.findity.com",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    #[serde(default)]
    pub(super) renewal: RawRenewal,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) watch: RawWatch,
    #[serde(default)]
    pub(super) callers: Vec<callers::RawCaller>,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) audit: RawAudit,
    #[serde(default)]
    pub(super) orgs: BTreeMap<String, RawOrg>,
    pub(super) store: Option<store::RawStore>,
    pub(super) proxy: Option<proxy::RawProxy>,
}

/// `[audit]`: the audit lines of tokens handed out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    /// How often repeated hand-outs are written as one summary line each. Default "60s".
    pub(super) summary_interval: Option<String>,
    /// One line for every token handed out, instead of first hand-outs and summaries.
    /// Default false.
    pub(super) every_call: Option<bool>,
}

/// `[renewal]`: when tokens are renewed ahead of expiry, and how failures back off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRenewal {
    /// Renew at this fraction of a token's lifetime, 0 < f <= 1. Default 0.5.
    pub(super) fraction: Option<f64>,
    /// ± this fraction of the planned renewal time, 0 to 0.5. Default 0.1.
    pub(super) jitter: Option<f64>,
    /// Never start a renewal later than this before expiry. Default "60s".
    pub(super) safety_margin: Option<String>,
    /// First wait after a failure; doubles per failure (full jitter). Default "500ms".
    pub(super) backoff_base: Option<String>,
    /// Longest wait between attempts. Default "30s".
    pub(super) backoff_max: Option<String>,
    /// Wait after the platform rejected the broker's credentials. Default "60s".
    pub(super) credentials_retry: Option<String>,
    /// A `Refresh` naming no stale token, for a key rotated less than this long ago, gets
    /// the current token with no upstream request. Default "1s".
    pub(super) min_rotation_interval: Option<String>,
}

/// `[cache]`: how many user tokens are held, and for how long without use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    /// Drop a user token neither watched nor used for this long. Default "15m".
    pub(super) user_idle_timeout: Option<String>,
    /// The most user tokens held; at the cap the idlest unwatched of 32 sampled goes. Default 100000.
    pub(super) max_user_tokens: Option<usize>,
    /// How long a user the platform does not know is answered `NOT_FOUND` from memory,
    /// with no upstream request. Default "60s".
    pub(super) unknown_user_ttl: Option<String>,
    /// The most unknown users remembered; the oldest goes first. Default 10000.
    pub(super) max_unknown_users: Option<usize>,
    /// Fetch every org token at start and keep trying until it is had. Default true.
    pub(super) prefetch_org_tokens: Option<bool>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    /// The gRPC listen address, `IP:PORT`. Default `127.0.0.1:50051`.
    pub(super) listen: Option<String>,
    /// How long a shutdown waits for open calls to finish, e.g. `"10s"`. Default 10 s.
    pub(super) drain_timeout: Option<String>,
    /// HTTP/2 ping interval on idle connections. Default "30s".
    pub(super) keepalive_interval: Option<String>,
    /// How long a ping may go unanswered before the connection is closed. Default "10s".
    pub(super) keepalive_timeout: Option<String>,
    /// Allow a non-local listen address with no `[[callers]]`. Default false.
    pub(super) allow_unauthenticated: Option<bool>,
    /// The most connections open at once; more wait in the listen backlog. Default:
    /// three quarters of the open-file limit.
    pub(super) max_connections: Option<usize>,
    /// How long a new connection has to finish TLS and send its first bytes. Default "10s".
    pub(super) handshake_timeout: Option<String>,
    /// Callers waiting on the platform at once (cache misses); more answer
    /// RESOURCE_EXHAUSTED. Default 100000.
    pub(super) max_waiting_callers: Option<usize>,
    /// Replaced by `max_waiting_callers` and `upstream.max_concurrent_flights`: refused
    /// with a message that says so.
    pub(super) max_concurrent_requests: Option<toml::Value>,
    /// The largest request message accepted, in bytes. Default 65536.
    pub(super) max_request_bytes: Option<usize>,
    /// `[server.tls]`
    pub(super) tls: Option<callers::RawTls>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// `IP:PORT` of the Prometheus `/metrics` listener. Unset: no metrics listener.
    pub(super) listen: Option<String>,
    /// Serve metrics on an address other machines reach. Default false.
    pub(super) allow_public: Option<bool>,
}

/// `[watch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    /// The most keys one WatchTokens stream may watch. Default 1000.
    pub(super) max_keys_per_stream: Option<usize>,
    /// The most open WatchTokens streams per connection. Default 1000.
    pub(super) max_streams_per_connection: Option<usize>,
    /// The most open WatchTokens streams in all. Default 20000.
    pub(super) max_streams: Option<usize>,
    /// The most keys watched by all streams together. Default 200000.
    pub(super) max_watched_keys: Option<usize>,
    /// The most open health `Watch` streams per connection. Default 16.
    pub(super) max_health_streams_per_connection: Option<usize>,
    /// The most open health `Watch` streams in all. Default 10000.
    pub(super) max_health_streams: Option<usize>,
}

/// `[upstream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// Timeout of each request to the platform, e.g. `"10s"`. Default 10 s.
    pub(super) request_timeout: Option<String>,
    /// User-token fetches in progress at once; more wait their turn. Default 64.
    pub(super) max_concurrent_flights: Option<usize>,
    /// Requests per second to one platform host, from every org on it (cluster-wide with
    /// the Redis store). Default 10.
    pub(super) max_requests_per_second: Option<f64>,
    /// Requests that may go at once after a quiet spell. Default 10.
    pub(super) burst: Option<u32>,
}

/// A value or a list of values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub(super) fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[orgs.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrg {
    /// `"production"` or `"sandbox"`: fills in `token_url` and `authorization_grant_url`.
    pub(super) environment: Option<Environment>,
    /// The platform's token endpoint.
    pub(super) token_url: Option<String>,
    /// The base of the platform's HTTP API, where `[proxy]` forwards this org's requests.
    /// Default from `environment`.
    pub(super) api_url: Option<String>,
    /// An OAuth server's issuer: its metadata (OIDC / RFC 8414 discovery) gives the token
    /// endpoint and the client authentication methods, at start.
    pub(super) issuer: Option<String>,
    /// The platform's authorization grant endpoint.
    pub(super) authorization_grant_url: Option<String>,
    /// The OAuth client id.
    pub(super) client_id: Option<String>,
    /// How the broker authenticates at the token endpoint: `client_secret_post` (default),
    /// `client_secret_basic`, `private_key_jwt`, `none`, or `findity` (the platform's page
    /// to the letter).
    pub(super) client_auth: Option<String>,
    /// Name of the environment variable holding the PEM key that `private_key_jwt` signs
    /// with (PKCS#8: EC P-256 for ES256, or RSA for RS256).
    pub(super) client_key_env: Option<String>,
    /// Path of a file holding that PEM key.
    pub(super) client_key_file: Option<PathBuf>,
    /// The `kid` in the client assertions' header (the key's id in the server's JWKS).
    pub(super) client_key_id: Option<String>,
    /// The `aud` of the client assertions; default: the token endpoint's URL.
    pub(super) client_assertion_audience: Option<String>,
    /// How long a token lives when the server's answer has no `expires_in` and the token
    /// is no JWT with an `exp`, e.g. "1h". No default: the broker refuses such a token.
    pub(super) default_token_lifetime: Option<String>,
    /// A PEM file of CA certificates to trust for this org's endpoints (a private CA),
    /// beside the system's roots (and `SSL_CERT_FILE`).
    pub(super) ca_file: Option<PathBuf>,
    /// The scope asked for on client credentials: a string (space-separated) or a list.
    pub(super) scope: Option<OneOrMany<String>>,
    /// `audience` on client credentials.
    pub(super) audience: Option<String>,
    /// `resource` (RFC 8707) on every token request: a URI or a list.
    pub(super) resource: Option<OneOrMany<String>>,
    /// More form parameters on every token request.
    pub(super) extra_params: Option<BTreeMap<String, String>>,
    /// More headers on every token request.
    pub(super) extra_headers: Option<BTreeMap<String, String>>,
    /// `redirect_uri` on the code exchange.
    pub(super) redirect_uri: Option<String>,
    /// How user tokens are had: `findity` (the platform's grant endpoint; default) or
    /// `token_exchange` (RFC 8693 at the token endpoint).
    pub(super) user_grant: Option<String>,
    /// The `subject_token_type` of a token exchange (default
    /// `urn:tokenbroker:params:oauth:token-type:user-id`).
    pub(super) token_exchange_subject_type: Option<String>,
    /// Name of the environment variable holding the client secret, or a list of names:
    /// several secrets are tried in order (for rotating a secret without downtime).
    pub(super) client_secret_env: Option<OneOrMany<String>>,
    /// Path of a file holding the client secret, or a list of paths, tried in order.
    pub(super) client_secret_file: Option<OneOrMany<PathBuf>>,
    /// Name of the environment variable holding a long-lived token or API key.
    pub(super) static_token_env: Option<String>,
    /// Path of a file holding a long-lived token or API key.
    pub(super) static_token_file: Option<PathBuf>,
    /// Refused: secrets never go in the TOML.
    pub(super) client_secret: Option<toml::Value>,
    /// Refused: secrets never go in the TOML.
    pub(super) static_token: Option<toml::Value>,
}
