//! The configuration: a TOML file plus secrets from the environment or files, turned into a
//! validated [`Config`]. Every error names the key at fault and how to fix it. Secrets are
//! never accepted in the TOML itself or on the command line.

mod callers;
mod listen;

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use callers::TlsFiles;
pub use listen::Listen;

use reqwest::Url;
use serde::Deserialize;

use crate::{
    audit::AuditPolicy,
    auth::Caller,
    broker::{CachePolicy, Credentials, Limits, OrgSettings, RenewalPolicy},
    secret::{AccessToken, ClientSecret},
    upstream,
};

/// Where the broker listens when the config does not say.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// The default per-request timeout for calls to the platform.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a shutdown waits for open calls and connections by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on WatchTokens (`[watch]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLimits {
    /// The most keys one stream may watch (`watch.max_keys_per_stream`).
    pub max_keys_per_stream: usize,
    /// The most open streams per connection (`watch.max_streams_per_connection`).
    pub max_streams_per_connection: usize,
    /// The most open streams in the whole server (`watch.max_streams`).
    pub max_streams: usize,
    /// The most keys watched by all open streams together (`watch.max_watched_keys`): a
    /// stream counts each of its keys, or one for its org's.
    pub max_watched_keys: usize,
    /// The most open grpc.health.v1 `Watch` streams per connection
    /// (`watch.max_health_streams_per_connection`).
    pub max_health_streams_per_connection: usize,
    /// The most open grpc.health.v1 `Watch` streams in the whole server
    /// (`watch.max_health_streams`).
    pub max_health_streams: usize,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            max_keys_per_stream: 1000,
            max_streams_per_connection: 1000,
            max_streams: 20_000,
            max_watched_keys: 200_000,
            max_health_streams_per_connection: 16,
            max_health_streams: 10_000,
        }
    }
}

/// The default HTTP/2 ping interval on idle connections.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// The default wait for a ping's answer.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a new connection has to finish TLS and send the HTTP/2 preface.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The gRPC listen address (`server.listen`): `IP:PORT` or `unix:///path`.
    pub listen: Listen,
    /// Server TLS (`[server.tls]`), for TCP listeners.
    pub tls: Option<TlsFiles>,
    /// Serve a non-local address with no callers configured (`server.allow_unauthenticated`).
    pub allow_unauthenticated: bool,
    /// Who may ask (`[[callers]]`); empty: anyone who can reach a local listener.
    pub callers: Vec<Caller>,
    /// Callers waiting on the platform at once (`server.max_waiting_callers`) and
    /// user-token fetches in progress (`upstream.max_concurrent_flights`).
    pub limits: Limits,
    /// How tokens handed out are audited (`[audit]`).
    pub audit: AuditPolicy,
    /// The largest request message accepted, in bytes (`server.max_request_bytes`).
    pub max_request_bytes: usize,
    /// Where Prometheus metrics are served (`metrics.listen`); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long a shutdown waits for open calls to finish (`server.drain_timeout`).
    pub drain_timeout: Duration,
    /// HTTP/2 pings to idle connections, to find dead clients (`server.keepalive_interval`).
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this is closed (`server.keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// The most connections open at once (`server.max_connections`); `None`: three
    /// quarters of the open-file limit, read at start.
    pub max_connections: Option<usize>,
    /// A connection must finish TLS and send the HTTP/2 preface within this
    /// (`server.handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Bounds on WatchTokens (`[watch]`).
    pub watch: WatchLimits,
    /// Timeout of each request to the platform (`upstream.request_timeout`).
    pub request_timeout: Duration,
    /// Renewal timing and the user-token cache's bounds (`[renewal]`, `[cache]`).
    pub cache: CachePolicy,
    /// The organizations, sorted by name.
    pub orgs: Vec<OrgSettings>,
}

/// A configuration error: the key at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key (`orgs.acme.token_url`), or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// The platform's environments, which fill in the endpoint URLs.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Environment {
    Production,
    Sandbox,
}

impl Environment {
    fn urls(self) -> (&'static str, &'static str) {
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    #[serde(default)]
    renewal: RawRenewal,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    watch: RawWatch,
    #[serde(default)]
    callers: Vec<callers::RawCaller>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    orgs: BTreeMap<String, RawOrg>,
}

/// `[audit]`: the audit lines of tokens handed out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// How often repeated hand-outs are written as one summary line each. Default "60s".
    summary_interval: Option<String>,
    /// One line for every token handed out, instead of first hand-outs and summaries.
    /// Default false.
    every_call: Option<bool>,
}

/// `[renewal]`: when tokens are renewed ahead of expiry, and how failures back off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRenewal {
    /// Renew at this fraction of a token's lifetime, 0 < f <= 1. Default 0.5.
    fraction: Option<f64>,
    /// ± this fraction of the planned renewal time, 0 to 0.5. Default 0.1.
    jitter: Option<f64>,
    /// Never start a renewal later than this before expiry. Default "60s".
    safety_margin: Option<String>,
    /// First wait after a failure; doubles per failure (full jitter). Default "500ms".
    backoff_base: Option<String>,
    /// Longest wait between attempts. Default "30s".
    backoff_max: Option<String>,
    /// Wait after the platform rejected the broker's credentials. Default "60s".
    credentials_retry: Option<String>,
}

/// `[cache]`: how many user tokens are held, and for how long without use.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    /// Drop a user token neither watched nor used for this long. Default "15m".
    user_idle_timeout: Option<String>,
    /// The most user tokens held; at the cap the idlest unwatched of 32 sampled goes. Default 100000.
    max_user_tokens: Option<usize>,
    /// Fetch every org token at start and keep trying until it is had. Default true.
    prefetch_org_tokens: Option<bool>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    /// The gRPC listen address, `IP:PORT`. Default `127.0.0.1:50051`.
    listen: Option<String>,
    /// How long a shutdown waits for open calls to finish, e.g. `"10s"`. Default 10 s.
    drain_timeout: Option<String>,
    /// HTTP/2 ping interval on idle connections. Default "30s".
    keepalive_interval: Option<String>,
    /// How long a ping may go unanswered before the connection is closed. Default "10s".
    keepalive_timeout: Option<String>,
    /// Allow a non-local listen address with no `[[callers]]`. Default false.
    allow_unauthenticated: Option<bool>,
    /// The most connections open at once; more wait in the listen backlog. Default:
    /// three quarters of the open-file limit.
    max_connections: Option<usize>,
    /// How long a new connection has to finish TLS and send the HTTP/2 preface. Default "10s".
    handshake_timeout: Option<String>,
    /// Callers waiting on the platform at once (cache misses); more answer
    /// RESOURCE_EXHAUSTED. Default 100000.
    max_waiting_callers: Option<usize>,
    /// Replaced by `max_waiting_callers` and `upstream.max_concurrent_flights`: refused
    /// with a message that says so.
    max_concurrent_requests: Option<toml::Value>,
    /// The largest request message accepted, in bytes. Default 65536.
    max_request_bytes: Option<usize>,
    /// `[server.tls]`
    tls: Option<callers::RawTls>,
}

/// `[metrics]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `IP:PORT` of the Prometheus `/metrics` listener. Unset: no metrics listener.
    listen: Option<String>,
    /// Serve metrics on an address other machines reach. Default false.
    allow_public: Option<bool>,
}

/// `[watch]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    /// The most keys one WatchTokens stream may watch. Default 1000.
    max_keys_per_stream: Option<usize>,
    /// The most open WatchTokens streams per connection. Default 1000.
    max_streams_per_connection: Option<usize>,
    /// The most open WatchTokens streams in all. Default 20000.
    max_streams: Option<usize>,
    /// The most keys watched by all streams together. Default 200000.
    max_watched_keys: Option<usize>,
    /// The most open health `Watch` streams per connection. Default 16.
    max_health_streams_per_connection: Option<usize>,
    /// The most open health `Watch` streams in all. Default 10000.
    max_health_streams: Option<usize>,
}

/// `[upstream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// Timeout of each request to the platform, e.g. `"10s"`. Default 10 s.
    request_timeout: Option<String>,
    /// User-token fetches in progress at once; more wait their turn. Default 64.
    max_concurrent_flights: Option<usize>,
}

/// A value or a list of values.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

/// `[orgs.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrg {
    /// `"production"` or `"sandbox"`: fills in `token_url` and `authorization_grant_url`.
    environment: Option<Environment>,
    /// The platform's token endpoint.
    token_url: Option<String>,
    /// The platform's authorization grant endpoint.
    authorization_grant_url: Option<String>,
    /// The OAuth client id.
    client_id: Option<String>,
    /// Name of the environment variable holding the client secret, or a list of names:
    /// several secrets are tried in order (for rotating a secret without downtime).
    client_secret_env: Option<OneOrMany<String>>,
    /// Path of a file holding the client secret, or a list of paths, tried in order.
    client_secret_file: Option<OneOrMany<PathBuf>>,
    /// Name of the environment variable holding a long-lived token or API key.
    static_token_env: Option<String>,
    /// Path of a file holding a long-lived token or API key.
    static_token_file: Option<PathBuf>,
    /// Refused: secrets never go in the TOML.
    client_secret: Option<toml::Value>,
    /// Refused: secrets never go in the TOML.
    static_token: Option<toml::Value>,
}

impl Config {
    /// Reads and validates the file at `path`; secrets come from the process environment
    /// and from files (relative paths are taken from the config file's folder).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_small_file("", path, 1024 * 1024).map_err(|e| {
            error(
                "",
                e.message
                    .replacen("cannot read ", "cannot read config file ", 1),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &|name| std::env::var(name).ok(), base)
    }

    /// Validates TOML `text`, reading secrets with `env` and from files under `base`.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| error("", format!("invalid TOML: {}", e.to_string().trim_end())))?;
        let listen: Listen = raw
            .server
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse()
            .map_err(|e: String| error("server.listen", e))?;
        let drain_timeout = match raw.server.drain_timeout.as_deref() {
            None => DEFAULT_DRAIN_TIMEOUT,
            Some(text) => parse_duration("server.drain_timeout", text)?,
        };
        let keepalive_interval = match raw.server.keepalive_interval.as_deref() {
            None => DEFAULT_KEEPALIVE_INTERVAL,
            Some(text) => parse_duration("server.keepalive_interval", text)?,
        };
        let keepalive_timeout = match raw.server.keepalive_timeout.as_deref() {
            None => DEFAULT_KEEPALIVE_TIMEOUT,
            Some(text) => parse_duration("server.keepalive_timeout", text)?,
        };
        let handshake_timeout = match raw.server.handshake_timeout.as_deref() {
            None => DEFAULT_HANDSHAKE_TIMEOUT,
            Some(text) => parse_duration("server.handshake_timeout", text)?,
        };
        if raw.server.max_connections == Some(0) {
            return Err(error(
                "server.max_connections",
                "0 would accept no one; write at least 1, or delete the key for three quarters of the open-file limit",
            ));
        }
        let defaults = WatchLimits::default();
        let watch = WatchLimits {
            max_keys_per_stream: raw
                .watch
                .max_keys_per_stream
                .unwrap_or(defaults.max_keys_per_stream),
            max_streams_per_connection: raw
                .watch
                .max_streams_per_connection
                .unwrap_or(defaults.max_streams_per_connection),
            max_streams: raw.watch.max_streams.unwrap_or(defaults.max_streams),
            max_watched_keys: raw
                .watch
                .max_watched_keys
                .unwrap_or(defaults.max_watched_keys),
            max_health_streams_per_connection: raw
                .watch
                .max_health_streams_per_connection
                .unwrap_or(defaults.max_health_streams_per_connection),
            max_health_streams: raw
                .watch
                .max_health_streams
                .unwrap_or(defaults.max_health_streams),
        };
        for (key, value, most) in [
            (
                "watch.max_keys_per_stream",
                watch.max_keys_per_stream,
                100_000,
            ),
            (
                "watch.max_streams_per_connection",
                watch.max_streams_per_connection,
                100_000,
            ),
            ("watch.max_streams", watch.max_streams, 1_000_000),
            ("watch.max_watched_keys", watch.max_watched_keys, 10_000_000),
            (
                "watch.max_health_streams_per_connection",
                watch.max_health_streams_per_connection,
                100_000,
            ),
            (
                "watch.max_health_streams",
                watch.max_health_streams,
                1_000_000,
            ),
        ] {
            if value == 0 || value > most {
                return Err(error(
                    key,
                    format!("{value} is out of range; write 1 to {most}"),
                ));
            }
        }
        let request_timeout = match raw.upstream.request_timeout.as_deref() {
            None => DEFAULT_REQUEST_TIMEOUT,
            Some(text) => parse_duration("upstream.request_timeout", text)?,
        };
        if raw.server.max_concurrent_requests.is_some() {
            return Err(error(
                "server.max_concurrent_requests",
                "was replaced: callers answered from the cache or joining a fetch in progress are no longer limited; bound the callers waiting on the platform with server.max_waiting_callers (default 100000) and the fetches in progress with upstream.max_concurrent_flights (default 64), or delete the key",
            ));
        }
        let limits = limits(&raw.server, &raw.upstream)?;
        let audit = audit_policy(&raw.audit)?;
        let cache = cache_policy(&raw.renewal, &raw.cache)?;
        if raw.orgs.is_empty() {
            return Err(error(
                "orgs",
                "no organization is configured; add an [orgs.NAME] table (see the README)",
            ));
        }
        let org_names: Vec<String> = raw.orgs.keys().cloned().collect();
        let orgs = raw
            .orgs
            .into_iter()
            .map(|(name, org)| org_settings(name, org, env, base))
            .collect::<Result<_, _>>()?;
        let callers = callers::callers(raw.callers, &org_names)?;
        let tls = raw.server.tls.map(|t| callers::tls(t, base)).transpose()?;
        let metrics_listen: Option<std::net::SocketAddr> = raw
            .metrics
            .listen
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| {
                    error(
                        "metrics.listen",
                        format!("{text:?} is not IP:PORT; write e.g. \"127.0.0.1:9090\""),
                    )
                })
            })
            .transpose()?;
        if let Some(addr) = metrics_listen
            && !addr.ip().is_loopback()
            && !raw.metrics.allow_public.unwrap_or(false)
        {
            return Err(error(
                "metrics.listen",
                format!(
                    "{addr} is reachable from other machines, and the metrics name orgs and callers; listen on loopback (e.g. \"127.0.0.1:9090\"), or set metrics.allow_public = true"
                ),
            ));
        }
        let max_request_bytes = raw.server.max_request_bytes.unwrap_or(64 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&max_request_bytes) {
            return Err(error(
                "server.max_request_bytes",
                "must be 1024 to 16777216",
            ));
        }
        Self {
            listen,
            tls,
            allow_unauthenticated: raw.server.allow_unauthenticated.unwrap_or(false),
            callers,
            limits,
            audit,
            max_request_bytes,
            metrics_listen,
            drain_timeout,
            keepalive_interval,
            keepalive_timeout,
            max_connections: raw.server.max_connections,
            handshake_timeout,
            watch,
            request_timeout,
            cache,
            orgs,
        }
        .checked()
    }

    /// The effective configuration as TOML, defaults filled in and every secret shown as
    /// `[redacted]`: what `tokenbroker check-config` prints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let d = |d: Duration| format!("{:?}", humantime::format_duration(d).to_string());
        let _ = writeln!(
            out,
            "[server]\nlisten = {:?}\ndrain_timeout = {}\nkeepalive_interval = {}\nkeepalive_timeout = {}\nhandshake_timeout = {}",
            self.listen.to_string(),
            d(self.drain_timeout),
            d(self.keepalive_interval),
            d(self.keepalive_timeout),
            d(self.handshake_timeout)
        );
        match self.max_connections {
            Some(n) => {
                let _ = writeln!(out, "max_connections = {n}");
            }
            None => out.push_str(
                "# max_connections: three quarters of the open-file limit, read at start\n",
            ),
        }
        let _ = writeln!(
            out,
            "allow_unauthenticated = {}\nmax_waiting_callers = {}\nmax_request_bytes = {}",
            self.allow_unauthenticated, self.limits.max_waiting_callers, self.max_request_bytes
        );
        if let Some(tls) = &self.tls {
            let _ = writeln!(
                out,
                "\n[server.tls]\ncertificate = \"(loaded)\"\nkey = \"{}\"\nclient_ca = {}",
                tls.key_pem,
                if tls.client_ca_pem.is_some() {
                    "\"(loaded): mutual TLS\""
                } else {
                    "\"(none)\""
                }
            );
        }
        let _ = writeln!(
            out,
            "\n[upstream]\nrequest_timeout = {}\nmax_concurrent_flights = {}",
            d(self.request_timeout),
            self.limits.max_concurrent_flights
        );
        let _ = writeln!(
            out,
            "\n[audit]\nsummary_interval = {}\nevery_call = {}",
            d(self.audit.summary_interval),
            self.audit.every_call
        );
        let r = &self.cache.renewal;
        let _ = writeln!(
            out,
            "\n[renewal]\nfraction = {}\njitter = {}\nsafety_margin = {}\nbackoff_base = {}\nbackoff_max = {}\ncredentials_retry = {}",
            r.fraction,
            r.jitter,
            d(r.safety_margin),
            d(r.backoff_base),
            d(r.backoff_max),
            d(r.credentials_retry)
        );
        let _ = writeln!(
            out,
            "\n[cache]\nuser_idle_timeout = {}\nmax_user_tokens = {}\nprefetch_org_tokens = {}",
            d(self.cache.user_idle_timeout),
            self.cache.max_user_tokens,
            self.cache.prefetch_org_tokens
        );
        let _ = writeln!(
            out,
            "\n[watch]\nmax_keys_per_stream = {}\nmax_streams_per_connection = {}\nmax_streams = {}\nmax_watched_keys = {}\nmax_health_streams_per_connection = {}\nmax_health_streams = {}",
            self.watch.max_keys_per_stream,
            self.watch.max_streams_per_connection,
            self.watch.max_streams,
            self.watch.max_watched_keys,
            self.watch.max_health_streams_per_connection,
            self.watch.max_health_streams
        );
        if let Some(addr) = self.metrics_listen {
            let _ = writeln!(out, "\n[metrics]\nlisten = \"{addr}\"");
        }
        for org in &self.orgs {
            let _ = writeln!(
                out,
                "\n[orgs.{}]\ntoken_url = {:?}\nauthorization_grant_url = {:?}",
                org.name,
                org.client.token_url.as_str(),
                org.client.authorization_grant_url.as_str()
            );
            if let Some(id) = &org.client.client_id {
                let _ = writeln!(out, "client_id = {id:?}");
            }
            match &org.credentials {
                Credentials::Client { secrets, .. } => {
                    let shown: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
                    let _ = writeln!(out, "client_secrets = [{}]", shown.join(", "));
                }
                Credentials::Static(token) => {
                    let _ = writeln!(out, "static_token = \"{token}\"");
                }
            }
        }
        for caller in &self.callers {
            let _ = writeln!(
                out,
                "\n[[callers]]\nname = {:?}\napi_key_sha256 = {} hash(es)\ntls_names = {:?}\nunix_uids = {:?}\norgs = {:?}\npermissions = {:?}",
                caller.name,
                caller.api_key_sha256.len(),
                caller.tls_names,
                caller.unix_uids,
                caller.orgs,
                caller
                    .permissions
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
            );
            if let Some(rate) = caller.rate_limit {
                let _ = writeln!(
                    out,
                    "rate_limit_per_second = {}\nrate_limit_burst = {}",
                    rate.per_second, rate.burst
                );
            }
        }
        out
    }

    /// The same config listening on `listen` (the `--listen` flag), checked again.
    pub fn with_listen(mut self, listen: Listen) -> Result<Self, ConfigError> {
        self.listen = listen;
        self.checked()
    }

    /// Refuses what would be unsafe: tokens for anyone on the network, TLS on a Unix socket.
    fn checked(self) -> Result<Self, ConfigError> {
        if self.callers.is_empty() && !self.listen.is_local() && !self.allow_unauthenticated {
            return Err(error(
                "server.listen",
                format!(
                    "{} is reachable from other machines and no [[callers]] are configured, so anyone who reaches it would get tokens; add [[callers]] (see the README), listen on loopback or a Unix socket, or set server.allow_unauthenticated = true",
                    self.listen
                ),
            ));
        }
        if self.tls.is_some() && matches!(self.listen, Listen::Unix(_)) {
            return Err(error(
                "server.tls",
                "applies to TCP listeners; a Unix socket names callers by uid",
            ));
        }
        Ok(self)
    }
}

fn limits(server: &RawServer, upstream: &RawUpstream) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let limits = Limits {
        max_waiting_callers: server
            .max_waiting_callers
            .unwrap_or(defaults.max_waiting_callers),
        max_concurrent_flights: upstream
            .max_concurrent_flights
            .unwrap_or(defaults.max_concurrent_flights),
    };
    for (key, value, max) in [
        (
            "server.max_waiting_callers",
            limits.max_waiting_callers,
            10_000_000,
        ),
        (
            "upstream.max_concurrent_flights",
            limits.max_concurrent_flights,
            10_000,
        ),
    ] {
        if value == 0 || value > max {
            return Err(error(
                key,
                format!("{value} is out of range; write 1 to {max}"),
            ));
        }
    }
    Ok(limits)
}

fn audit_policy(audit: &RawAudit) -> Result<AuditPolicy, ConfigError> {
    let defaults = AuditPolicy::default();
    Ok(AuditPolicy {
        summary_interval: match audit.summary_interval.as_deref() {
            None => defaults.summary_interval,
            Some(text) => parse_duration("audit.summary_interval", text)?,
        },
        every_call: audit.every_call.unwrap_or(defaults.every_call),
    })
}

fn cache_policy(renewal: &RawRenewal, cache: &RawCache) -> Result<CachePolicy, ConfigError> {
    let defaults = CachePolicy::default();
    let duration = |key: &str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => parse_duration(key, text),
    };
    let d = &defaults.renewal;
    let fraction = renewal.fraction.unwrap_or(d.fraction);
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(error(
            "renewal.fraction",
            format!(
                "{fraction} is out of range; write a fraction of the lifetime above 0 and at most 1, e.g. 0.5"
            ),
        ));
    }
    let jitter = renewal.jitter.unwrap_or(d.jitter);
    if !(0.0..=0.5).contains(&jitter) {
        return Err(error(
            "renewal.jitter",
            format!("{jitter} is out of range; write 0 to 0.5, e.g. 0.1"),
        ));
    }
    let policy = RenewalPolicy {
        fraction,
        jitter,
        safety_margin: duration(
            "renewal.safety_margin",
            &renewal.safety_margin,
            d.safety_margin,
        )?,
        backoff_base: duration(
            "renewal.backoff_base",
            &renewal.backoff_base,
            d.backoff_base,
        )?,
        backoff_max: duration("renewal.backoff_max", &renewal.backoff_max, d.backoff_max)?,
        credentials_retry: duration(
            "renewal.credentials_retry",
            &renewal.credentials_retry,
            d.credentials_retry,
        )?,
    };
    let max_user_tokens = cache.max_user_tokens.unwrap_or(defaults.max_user_tokens);
    if max_user_tokens == 0 {
        return Err(error("cache.max_user_tokens", "must be at least 1"));
    }
    Ok(CachePolicy {
        renewal: policy,
        user_idle_timeout: duration(
            "cache.user_idle_timeout",
            &cache.user_idle_timeout,
            defaults.user_idle_timeout,
        )?,
        max_user_tokens,
        prefetch_org_tokens: cache
            .prefetch_org_tokens
            .unwrap_or(defaults.prefetch_org_tokens),
    })
}

fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(error(
            key,
            format!("{text:?} is not a positive duration; write e.g. \"10s\" or \"500ms\""),
        )),
    }
}

fn org_settings(
    name: String,
    org: RawOrg,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<OrgSettings, ConfigError> {
    let key = |field: &str| format!("orgs.{name}.{field}");
    let name_ok = !name.is_empty()
        && name.len() <= crate::broker::MAX_ID_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(error(
            format!("orgs.{name}"),
            "an org name is 1 to 256 letters, digits, '-', '_' or '.'",
        ));
    }
    for (field, value) in [
        ("client_secret", &org.client_secret),
        ("static_token", &org.static_token),
    ] {
        if value.is_some() {
            return Err(error(
                key(field),
                format!(
                    "secrets are not accepted in the config file; use {field}_env (an environment variable) or {field}_file (a file) instead"
                ),
            ));
        }
    }
    let defaults = org.environment.map(Environment::urls);
    let token_url = endpoint(
        &key("token_url"),
        org.token_url.as_deref().or(defaults.map(|d| d.0)),
    )?;
    let authorization_grant_url = endpoint(
        &key("authorization_grant_url"),
        org.authorization_grant_url
            .as_deref()
            .or(defaults.map(|d| d.1)),
    )?;

    let sources = [
        ("client_secret_env", org.client_secret_env.is_some()),
        ("client_secret_file", org.client_secret_file.is_some()),
        ("static_token_env", org.static_token_env.is_some()),
        ("static_token_file", org.static_token_file.is_some()),
    ];
    let given: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
    if given.len() != 1 {
        let problem = if given.is_empty() {
            "none is set".to_owned()
        } else {
            format!("{} are all set", given.join(" and "))
        };
        return Err(error(
            format!("orgs.{name}"),
            format!(
                "set exactly one of client_secret_env, client_secret_file (OAuth client credentials), static_token_env or static_token_file (a long-lived token or API key); {problem}"
            ),
        ));
    }
    let client_id = org.client_id.filter(|id| !id.trim().is_empty());
    let credentials = match given[0] {
        "client_secret_env" | "client_secret_file" => {
            let envs = org
                .client_secret_env
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default();
            let files = org
                .client_secret_file
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default();
            let mut secrets = Vec::new();
            for var in &envs {
                secrets.push(ClientSecret::new(read_secret(
                    &key(given[0]),
                    Some(var),
                    None,
                    env,
                    base,
                )?));
            }
            for file in &files {
                secrets.push(ClientSecret::new(read_secret(
                    &key(given[0]),
                    None,
                    Some(file),
                    env,
                    base,
                )?));
            }
            if secrets.is_empty() {
                return Err(error(key(given[0]), "lists no secret"));
            }
            let Some(client_id) = client_id.clone() else {
                return Err(error(
                    key("client_id"),
                    "is required with a client secret; copy it from the platform's API settings",
                ));
            };
            Credentials::Client { client_id, secrets }
        }
        _ => {
            let token = read_secret(
                &key(given[0]),
                org.static_token_env.as_deref(),
                org.static_token_file.as_deref(),
                env,
                base,
            )?;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(error(
                    key(given[0]),
                    "the token holds spaces or control characters; it must be the bare token",
                ));
            }
            Credentials::Static(AccessToken::new(token))
        }
    };
    Ok(OrgSettings {
        name,
        client: upstream::Client {
            token_url,
            authorization_grant_url,
            client_id,
        },
        credentials,
    })
}

/// An upstream URL: HTTPS, or plain HTTP to a loopback host only (the sandbox).
fn endpoint(key: &str, value: Option<&str>) -> Result<Url, ConfigError> {
    let Some(text) = value else {
        return Err(error(
            key,
            "is missing; set environment = \"production\" (or \"sandbox\") or give the URL",
        ));
    };
    let url = Url::parse(text).map_err(|e| error(key, format!("{text:?} is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(error(
            key,
            "must not hold credentials; use client_secret_env or client_secret_file",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(error(
            key,
            format!(
                "{text:?} is plain HTTP to a non-loopback host; secrets travel only over https://"
            ),
        )),
        other => Err(error(
            key,
            format!("scheme {other:?} is not supported; use https://"),
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

fn read_secret(
    key: &str,
    env_name: Option<&str>,
    file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<String, ConfigError> {
    let value = match (env_name, file) {
        (Some(var), _) => env(var).ok_or_else(|| {
            error(
                key,
                format!(
                    "environment variable {var} is not set; export it before starting the broker"
                ),
            )
        })?,
        (None, Some(path)) => read_small_file(key, &base.join(path), MAX_SECRET_FILE_BYTES)?,
        (None, None) => return Err(error(key, "is not set")),
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(error(key, "the secret is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(error(
            key,
            "the secret holds control characters (a NUL byte, a line break inside it...); write it on one line",
        ));
    }
    Ok(value)
}

/// The largest secret file read (a client secret, a token or an API key is far smaller).
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 16 * 1024;

/// Reads the regular file (or symlink to one) at `path`, of at most `max` bytes, as text.
/// Anything else is refused before it is opened: a FIFO or a device would block or never
/// end, and a huge file would be read into memory whole.
///
/// The read runs on a thread of its own and is given up after [`READ_TIMEOUT`]: a file on
/// a hung network mount blocks even its `stat`, and a start-up, a `check-config` or a
/// reload must say so rather than hang with it. (The stuck thread is left behind.)
pub(crate) fn read_small_file(key: &str, path: &Path, max: u64) -> Result<String, ConfigError> {
    let (key, path) = (key.to_owned(), path.to_owned());
    within(READ_TIMEOUT, &key.clone(), &path.clone(), move || {
        read_small_file_now(&key, &path, max)
    })
}

/// How long reading one config or secret file may take.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `read` on a thread of its own; past `timeout`, an error naming `key` and `path`.
fn within(
    timeout: Duration,
    key: &str,
    path: &Path,
    read: impl FnOnce() -> Result<String, ConfigError> + Send + 'static,
) -> Result<String, ConfigError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("config-read".into())
        .spawn(move || {
            let _ = tx.send(read());
        });
    if let Err(e) = spawned {
        return Err(error(key, format!("cannot read {}: {e}", path.display())));
    }
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(error(
            key,
            format!(
                "cannot read {}: no answer within {}s (a hung network mount?)",
                path.display(),
                timeout.as_secs()
            ),
        ))
    })
}

fn read_small_file_now(key: &str, path: &Path, max: u64) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot = |why: String| error(key, format!("cannot read {}: {why}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| cannot(e.to_string()))?;
    if !meta.is_file() {
        return Err(cannot("not a regular file".into()));
    }
    if meta.len() > max {
        return Err(cannot(format!("{} bytes; the limit is {max}", meta.len())));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| cannot(e.to_string()))?;
    if text.len() as u64 > max {
        return Err(cannot(format!("more than {max} bytes")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_blocks_is_given_up_naming_the_key_and_the_file() {
        // A FIFO with no writer blocks its open, as a hung mount blocks a stat.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("secret");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let path = fifo.clone();
        let started = std::time::Instant::now();
        let e = within(
            Duration::from_millis(200),
            "orgs.acme.client_secret_file",
            &fifo,
            move || std::fs::read_to_string(&path).map_err(|e| error("", e.to_string())),
        )
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(e.key, "orgs.acme.client_secret_file");
        assert!(e.message.contains("no answer within"), "{}", e.message);
        // And the config loader refuses the FIFO outright, unopened.
        let e = read_small_file("orgs.acme.client_secret_file", &fifo, 100).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let e = Config::load(&fifo).unwrap_err();
        assert!(
            e.message.contains("cannot read config file"),
            "{}",
            e.message
        );
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "ACME_SECRET" => Some("s3cret\n".into()),
            "EMPTY" => Some(" ".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &env, Path::new("."))
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:6000"
        [orgs.acme]
        environment = "production"
        client_id = "acme-id"
        client_secret_env = "ACME_SECRET"
    "#;

    #[test]
    fn a_good_config_fills_in_the_environment_urls() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6000");
        assert_eq!(c.request_timeout, DEFAULT_REQUEST_TIMEOUT);
        let org = &c.orgs[0];
        assert_eq!(org.name, "acme");
        assert_eq!(
            org.client.token_url.as_str(),
            "https://expense.findity.com/api/oauth/token/"
        );
        let Credentials::Client { client_id, secrets } = &org.credentials else {
            panic!()
        };
        assert_eq!(
            (client_id.as_str(), secrets[0].expose()),
            ("acme-id", "s3cret")
        );
        let two = parse(&GOOD.replace(
            "client_secret_env = \"ACME_SECRET\"",
            "client_secret_env = [\"ACME_SECRET\", \"OTHER\"]",
        ))
        .unwrap_err();
        assert!(two.message.contains("OTHER"), "{two}");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.cache, CachePolicy::default());
        let tuned = parse(&format!("{GOOD}\n[renewal]\nfraction = 0.8\nsafety_margin = '5m'\n[cache]\nuser_idle_timeout = '1h'\nmax_user_tokens = 10\n")).unwrap();
        assert_eq!(tuned.cache.renewal.fraction, 0.8);
        assert_eq!(tuned.cache.renewal.safety_margin, Duration::from_secs(300));
        assert_eq!(
            (tuned.cache.user_idle_timeout, tuned.cache.max_user_tokens),
            (Duration::from_secs(3600), 10)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret='abc'",
                "orgs.a.client_secret",
            ),
            (
                "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='NOPE'",
                "orgs.a.client_secret_env",
            ),
            (
                "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='EMPTY'",
                "orgs.a.client_secret_env",
            ),
            (
                "[orgs.a]\nenvironment='production'\nclient_secret_env='ACME_SECRET'",
                "orgs.a.client_id",
            ),
            (
                "[orgs.a]\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "orgs.a.token_url",
            ),
            (
                "[orgs.a]\nenvironment='production'\nclient_id='x'",
                "orgs.a",
            ),
            (
                "[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'\nstatic_token_env='ACME_SECRET'",
                "orgs.a",
            ),
            (
                "[orgs.a]\ntoken_url='http://example.com/t'\nauthorization_grant_url='https://example.com/g'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "orgs.a.token_url",
            ),
            (
                "[orgs.a]\ntoken_url='ftp://example.com/t'\nauthorization_grant_url='https://example.com/g'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "orgs.a.token_url",
            ),
            (
                "[server]\nlisten='localhost'\n[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "server.listen",
            ),
            (
                "[upstream]\nrequest_timeout='soon'\n[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "upstream.request_timeout",
            ),
            (
                "[orgs.'a b']\nenvironment='production'\nclient_id='x'\nclient_secret_env='ACME_SECRET'",
                "orgs.a b",
            ),
            ("[server]\nlisten='127.0.0.1:1'", "orgs"),
            ("[renewal]\nfraction=1.5", "renewal.fraction"),
            ("[renewal]\njitter=-0.1", "renewal.jitter"),
            ("[renewal]\nbackoff_max='0s'", "renewal.backoff_max"),
            ("[cache]\nmax_user_tokens=0", "cache.max_user_tokens"),
            (
                "[watch]\nmax_keys_per_stream=0",
                "watch.max_keys_per_stream",
            ),
            (
                "[server]\nkeepalive_timeout='x'",
                "server.keepalive_timeout",
            ),
            (
                "[cache]\nuser_idle_timeout='later'",
                "cache.user_idle_timeout",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let e = parse("[orgs.a]\nenvironment='production'\nclient_id='x'\nclient_secret='abc'")
            .unwrap_err();
        assert!(
            e.message.contains("client_secret_env") && !e.message.contains("abc"),
            "{e}"
        );
    }

    #[test]
    fn limits_and_audit_have_defaults_and_the_old_concurrency_key_names_its_replacements() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_waiting_callers, 100_000);
        assert_eq!(c.audit, AuditPolicy::default());
        assert_eq!(c.audit.summary_interval, Duration::from_secs(60));
        let tuned = parse(&GOOD.replace(
            "[server]",
            "[upstream]\nmax_concurrent_flights = 3\n[audit]\nsummary_interval = '5s'\nevery_call = true\n[server]\nmax_waiting_callers = 10",
        ))
        .unwrap();
        assert_eq!(
            tuned.limits,
            Limits {
                max_waiting_callers: 10,
                max_concurrent_flights: 3
            }
        );
        assert!(tuned.audit.every_call);
        assert_eq!(tuned.audit.summary_interval, Duration::from_secs(5));
        let old = parse(&GOOD.replace("[server]", "[server]\nmax_concurrent_requests = 1024"))
            .unwrap_err();
        assert_eq!(old.key, "server.max_concurrent_requests");
        for replacement in [
            "server.max_waiting_callers",
            "upstream.max_concurrent_flights",
        ] {
            assert!(old.message.contains(replacement), "{old}");
        }
        for (text, key) in [
            (
                "[server]\nmax_waiting_callers = 0",
                "server.max_waiting_callers",
            ),
            (
                "[upstream]\nmax_concurrent_flights = 0",
                "upstream.max_concurrent_flights",
            ),
            ("[audit]\nsummary_interval = '0s'", "audit.summary_interval"),
        ] {
            let text = format!(
                "{text}\n[orgs.acme]\nenvironment = 'production'\nclient_id = 'x'\nclient_secret_env = 'ACME_SECRET'"
            );
            assert_eq!(parse(&text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn a_public_metrics_listener_must_be_allowed() {
        let with =
            |metrics: &str| parse(&GOOD.replace("[server]", &format!("{metrics}\n[server]")));
        let e = with("[metrics]\nlisten = '0.0.0.0:9090'").unwrap_err();
        assert_eq!(e.key, "metrics.listen");
        assert!(e.message.contains("metrics.allow_public"), "{e}");
        assert!(with("[metrics]\nlisten = '0.0.0.0:9090'\nallow_public = true").is_ok());
        assert!(with("[metrics]\nlisten = '127.0.0.1:9090'").is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_refused() {
        let e = parse("[orgs.a]\nenvironmnet='production'").unwrap_err();
        assert!(
            e.message.contains("unknown field") && e.message.contains("environmnet"),
            "{e}"
        );
        assert!(
            parse("[orgs.a\n")
                .unwrap_err()
                .message
                .starts_with("invalid TOML")
        );
    }

    /// Secret files are regular files of a few KiB holding one line: a FIFO (which would
    /// block the reader), a 1 GB sparse file, NUL bytes are refused before anything is
    /// held, naming the key and the file.
    #[test]
    fn secret_files_must_be_small_regular_files_of_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = |file: &str| {
            format!("[orgs.a]\nenvironment='sandbox'\nclient_id='x'\nclient_secret_file='{file}'")
        };
        let refused = |file: &str| Config::parse(&config(file), &env, dir.path()).unwrap_err();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = refused("fifo");
        assert_eq!(e.key, "orgs.a.client_secret_file");
        assert!(
            e.message.contains("not a regular file") && e.message.contains("fifo"),
            "{e}"
        );
        let huge = std::fs::File::create(dir.path().join("huge")).unwrap();
        huge.set_len(1 << 30).unwrap();
        let e = refused("huge");
        assert!(
            e.message.contains("1073741824 bytes; the limit is 16384"),
            "{e}"
        );
        std::fs::write(dir.path().join("nul"), b"abc\0def\n").unwrap();
        assert!(refused("nul").message.contains("control characters"));
        std::fs::write(dir.path().join("two"), "abc\ndef\n").unwrap();
        assert!(refused("two").message.contains("control characters"));
        std::fs::write(dir.path().join("good"), "s3cret\n").unwrap();
        std::os::unix::fs::symlink(dir.path().join("good"), dir.path().join("link")).unwrap();
        let c = Config::parse(&config("link"), &env, dir.path()).unwrap();
        let Credentials::Client { secrets, .. } = &c.orgs[0].credentials else {
            panic!()
        };
        assert_eq!(
            secrets[0].expose(),
            "s3cret",
            "a symlink to a regular file is read"
        );
    }

    #[test]
    fn loopback_http_is_allowed_and_static_tokens_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "api-key-123\n").unwrap();
        let text = "[orgs.a]\ntoken_url='http://127.0.0.1:9/t'\nauthorization_grant_url='http://localhost:9/g'\nstatic_token_file='key'";
        let c = Config::parse(text, &env, dir.path()).unwrap();
        let Credentials::Static(token) = &c.orgs[0].credentials else {
            panic!()
        };
        assert_eq!(token.expose(), "api-key-123");
        assert!(c.orgs[0].client.client_id.is_none());
        let missing = "[orgs.a]\nenvironment='sandbox'\nstatic_token_file='nope'";
        assert_eq!(
            Config::parse(missing, &env, dir.path()).unwrap_err().key,
            "orgs.a.static_token_file"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Lines that look like this config: its keys, any values, any tables.
    fn configish() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("listen"),
            Just("environment"),
            Just("token_url"),
            Just("authorization_grant_url"),
            Just("client_id"),
            Just("client_secret_env"),
            Just("client_secret_file"),
            Just("static_token_env"),
            Just("request_timeout"),
            Just("fraction"),
            Just("max_user_tokens"),
            Just("name"),
            Just("orgs"),
            Just("permissions"),
            Just("api_key_sha256"),
            Just("unix_uids"),
            Just("drain_timeout"),
        ];
        let value = prop_oneof![
            "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() {
                format!("{f:?}")
            } else {
                "1.0".into()
            }),
            Just("[\"*\"]".to_owned()),
            Just("\"https://example.com/t\"".to_owned()),
            Just("\"http://10.0.0.1/t\"".to_owned()),
        ];
        let table = prop_oneof![
            Just("[server]"),
            Just("[orgs.acme]"),
            Just("[orgs.\"b c\"]"),
            Just("[renewal]"),
            Just("[cache]"),
            Just("[[callers]]"),
            Just("[server.tls]"),
            Just("[upstream]"),
            Just("[watch]"),
        ];
        let line = prop_oneof![
            table.prop_map(str::to_owned),
            (key, value).prop_map(|(k, v)| format!("{k} = {v}"))
        ];
        prop::collection::vec(line, 0..14).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #[test]
        fn any_text_gives_a_config_or_an_error_naming_what_is_wrong(text in "\\PC{0,200}") {
            if let Err(e) = Config::parse(&text, &|_| Some("s".into()), Path::new("/nonexistent")) {
                prop_assert!(!e.message.is_empty());
            }
        }

        #[test]
        fn configish_text_gives_a_config_or_an_error_naming_what_is_wrong(text in configish()) {
            match Config::parse(&text, &|_| Some("s".into()), Path::new("/nonexistent")) {
                Ok(config) => prop_assert!(!config.orgs.is_empty()),
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }
}
