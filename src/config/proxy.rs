//! `[proxy]`: the token-injecting HTTP proxy's listener and bounds, and each org's
//! `api_url` it forwards to.

use super::*;
use crate::proxy::{ProxyLimits, ProxySettings};

/// `[proxy]`: plain HTTP in, the platform's API out with the bearer added.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    /// `IP:PORT` or `unix:///path`. Required: the proxy runs only when `[proxy]` is set.
    pub(super) listen: String,
    /// `[proxy.tls]`: as `[server.tls]` (a client CA enables client certificates).
    pub(super) tls: Option<callers::RawTls>,
    /// A request body up to this is kept, so that a request the platform answers 401 is
    /// sent again with the rotated token. Default 1048576 (1 MiB).
    pub(super) max_retry_body_bytes: Option<u64>,
    /// The largest request body; larger is 413. Default 67108864 (64 MiB).
    pub(super) max_request_bytes: Option<u64>,
    /// The largest answer body; a larger declared length is 502, and a longer stream is
    /// cut off. Default 67108864 (64 MiB).
    pub(super) max_response_bytes: Option<u64>,
    /// How long the platform may take to start its answer (504 past it), and the longest
    /// silence within either body. Default "30s".
    pub(super) request_timeout: Option<String>,
    /// Requests in progress at once; more are answered 503 at once. Default 1024.
    pub(super) max_concurrent_requests: Option<usize>,
}

/// `api_url` of every org, from the key or the org's `environment`.
pub(super) fn api_urls(
    orgs: &BTreeMap<String, RawOrg>,
) -> Result<BTreeMap<String, Url>, ConfigError> {
    let mut urls = BTreeMap::new();
    for (name, org) in orgs {
        let key = format!("orgs.{name}.api_url");
        let text = org
            .api_url
            .as_deref()
            .or_else(|| org.environment.map(Environment::api_url));
        let Some(text) = text else {
            return Err(error(
                key,
                "is missing, and [proxy] forwards this org's requests there; give the platform's API address (e.g. \"https://expense.findity.com\"), or set environment",
            ));
        };
        let url = orgs::endpoint(&key, Some(text))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(error(
                key,
                "must be a scheme, host and optional path prefix, without ?query or #fragment",
            ));
        }
        urls.insert(name.clone(), url);
    }
    Ok(urls)
}

/// The proxy's settings from `[proxy]`, or an error naming the key at fault.
pub(super) fn proxy_settings(
    raw: RawProxy,
    orgs: &BTreeMap<String, RawOrg>,
    base: &Path,
) -> Result<ProxySettings, ConfigError> {
    let listen: Listen = raw
        .listen
        .parse()
        .map_err(|e: String| error("proxy.listen", e))?;
    let defaults = ProxyLimits::default();
    let request_timeout = match raw.request_timeout.as_deref() {
        None => defaults.request_timeout,
        Some(text) => parse_duration("proxy.request_timeout", text)?,
    };
    let limits = ProxyLimits {
        max_retry_body_bytes: raw
            .max_retry_body_bytes
            .unwrap_or(defaults.max_retry_body_bytes),
        max_request_bytes: raw.max_request_bytes.unwrap_or(defaults.max_request_bytes),
        max_response_bytes: raw
            .max_response_bytes
            .unwrap_or(defaults.max_response_bytes),
        request_timeout,
        max_concurrent_requests: raw
            .max_concurrent_requests
            .unwrap_or(defaults.max_concurrent_requests),
    };
    if limits.max_retry_body_bytes > limits.max_request_bytes {
        return Err(error(
            "proxy.max_retry_body_bytes",
            format!(
                "{} is more than proxy.max_request_bytes ({}); a body is kept only up to the largest accepted",
                limits.max_retry_body_bytes, limits.max_request_bytes
            ),
        ));
    }
    if !(1..=1_000_000).contains(&limits.max_concurrent_requests) {
        return Err(error(
            "proxy.max_concurrent_requests",
            "must be 1 to 1000000",
        ));
    }
    let tls = raw
        .tls
        .map(|t| callers::tls(t, base, "proxy.tls"))
        .transpose()?;
    if tls.is_some() && matches!(listen, Listen::Unix(_)) {
        return Err(error(
            "proxy.tls",
            "applies to TCP listeners; a Unix socket names callers by uid",
        ));
    }
    Ok(ProxySettings {
        listen,
        tls,
        limits,
        api_urls: api_urls(orgs)?,
    })
}
