//! The configuration: a TOML file plus secrets from the environment or files, turned into a
//! validated [`Config`]. Every error names the key at fault and how to fix it. Secrets are
//! never accepted in the TOML itself or on the command line.

mod callers;
mod describe;
mod files;
mod listen;
mod orgs;
mod policy;
mod proxy;
mod raw;
mod store;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

pub use callers::TlsFiles;
pub use listen::Listen;

use files::read_secret;
pub(crate) use files::read_small_file;
use orgs::org_settings;
use policy::{audit_policy, cache_policy, limits, parse_duration};
use raw::*;

use reqwest::Url;
use serde::Deserialize;

use crate::{
    audit::AuditPolicy,
    auth::Caller,
    broker::{BudgetPolicy, CachePolicy, Credentials, Limits, OrgSettings, RenewalPolicy},
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
/// The default time a new connection has to finish TLS and send its first bytes (the HTTP/2
/// preface, or an HTTP/1 request line).
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
    /// A connection must finish TLS and send its first bytes within this
    /// (`server.handshake_timeout`); the proxy's listener keeps it too.
    pub handshake_timeout: Duration,
    /// Bounds on WatchTokens (`[watch]`).
    pub watch: WatchLimits,
    /// Timeout of each request to the platform (`upstream.request_timeout`).
    pub request_timeout: Duration,
    /// Renewal timing and the user-token cache's bounds (`[renewal]`, `[cache]`).
    pub cache: CachePolicy,
    /// The organizations, sorted by name.
    pub orgs: Vec<OrgSettings>,
    /// Where each org's secret comes from, as its TOML said (variable names and paths,
    /// never a secret): for [`Config::describe`].
    pub secret_sources: BTreeMap<String, String>,
    /// Where tokens are kept across restarts (`[store]`); `None`: in memory only.
    pub store: Option<crate::store::StoreSettings>,
    /// `[store]` as TOML for [`Config::describe`] (its keys named, never shown).
    pub store_source: Option<String>,
    /// The token-injecting HTTP proxy (`[proxy]`); `None`: off.
    pub proxy: Option<crate::proxy::ProxySettings>,
}

/// A configuration error: the key at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if .key.is_empty() { String::new() } else { format!("{}: ", .key) })]
pub struct ConfigError {
    /// The dotted key (`orgs.acme.token_url`), or empty for the file as a whole.
    pub key: String,
    pub message: String,
}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
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
        let proxy = raw
            .proxy
            .map(|p| proxy::proxy_settings(p, &raw.orgs, base))
            .transpose()?;
        let secret_sources = raw
            .orgs
            .iter()
            .map(|(name, org)| (name.clone(), describe::secret_source(org)))
            .collect();
        let orgs = raw
            .orgs
            .into_iter()
            .map(|(name, org)| org_settings(name, org, env, base))
            .collect::<Result<_, _>>()?;
        let store_source = raw.store.as_ref().map(store::describe);
        let store = raw
            .store
            .map(|s| store::store_settings(s, env, base))
            .transpose()?;
        let callers = callers::callers(raw.callers, &org_names)?;
        let tls = raw
            .server
            .tls
            .map(|t| callers::tls(t, base, "server.tls"))
            .transpose()?;
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
        // Room for a Refresh that names a 64 KiB access token.
        let max_request_bytes = raw.server.max_request_bytes.unwrap_or(128 * 1024);
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
            secret_sources,
            store,
            store_source,
            proxy,
        }
        .checked()
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
        if let Some(proxy) = &self.proxy {
            if self.callers.is_empty() && !proxy.listen.is_local() && !self.allow_unauthenticated {
                return Err(error(
                    "proxy.listen",
                    format!(
                        "{} is reachable from other machines and no [[callers]] are configured, so anyone who reaches it could call the platform as your orgs; add [[callers]] with the proxy permission, listen on loopback or a Unix socket, or set server.allow_unauthenticated = true",
                        proxy.listen
                    ),
                ));
            }
            let any_port = matches!(proxy.listen, Listen::Tcp(addr) if addr.port() == 0);
            if proxy.listen == self.listen && !any_port {
                return Err(error(
                    "proxy.listen",
                    format!(
                        "{} is server.listen already; give the proxy its own address",
                        proxy.listen
                    ),
                ));
            }
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
