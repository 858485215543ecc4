//! The token-injecting HTTP proxy for the platform's API: a caller sends plain HTTP to the
//! broker, which authenticates it as it does gRPC callers, adds the bearer of the org's or
//! user's current token, forwards to the org's `api_url`, streams the answer back, and on
//! a 401 rotates the token once for all who saw it and sends again.

mod body;
mod forward;
pub mod headers;
mod reply;
mod serve;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use url::Url;

use crate::{
    audit::Audit,
    broker::Broker,
    config::{Listen, TlsFiles},
    gate::Gate,
    metrics::ProxyMetrics,
    sync::RwLockUnpoisoned,
};

pub use serve::{Serving, serve};

/// `[proxy]`: where the proxy listens, its bounds, and where each org's requests go.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `proxy.listen`: `IP:PORT` or `unix:///path`.
    pub listen: Listen,
    /// `[proxy.tls]`, for a TCP listener.
    pub tls: Option<TlsFiles>,
    pub limits: ProxyLimits,
    /// Each org's `api_url`, by org name.
    pub api_urls: BTreeMap<String, Url>,
}

/// What bounds the proxy's requests (`[proxy]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// A request body up to this is kept for a second send after a 401
    /// (`proxy.max_retry_body_bytes`).
    pub max_retry_body_bytes: u64,
    /// The largest request body (`proxy.max_request_bytes`): 413 past it.
    pub max_request_bytes: u64,
    /// The largest answer body (`proxy.max_response_bytes`).
    pub max_response_bytes: u64,
    /// The longest silence of either side (`proxy.request_timeout`): the platform taking
    /// no chunk of the body, or not answering once it has it, is 504; the caller sending
    /// no chunk of its body is 408; mid-answer, either side's silence ends the answer; an
    /// HTTP/1.1 request's headers, and a keep-alive connection's wait for the next, get
    /// no longer.
    pub request_timeout: Duration,
    /// Requests in progress at once, their answers' bodies included
    /// (`proxy.max_concurrent_requests`): 503 past it.
    pub max_concurrent_requests: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_retry_body_bytes: 1024 * 1024,
            max_request_bytes: 64 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1024,
        }
    }
}

/// The running proxy: what every request it forwards uses.
#[derive(Debug)]
pub struct Proxy {
    broker: Broker,
    gate: Arc<Gate>,
    audit: Arc<Audit>,
    metrics: ProxyMetrics,
    /// The platform's API client: its own pool, no redirects followed, no overall timeout
    /// (a slow upload or answer streams for as long as it keeps moving).
    client: reqwest::Client,
    limits: ProxyLimits,
    /// Swapped whole by a reload.
    api_urls: RwLock<Arc<BTreeMap<String, Url>>>,
    /// One permit per request in progress.
    in_progress: Arc<Semaphore>,
    /// Body bytes to the platform and back to callers (looked up once).
    sent: Counter,
    received: Counter,
    /// `renewal.min_rotation_interval`: a token rotated for a caller this recently is not
    /// rotated again on a 401.
    min_rotation_interval: Duration,
}

impl Proxy {
    /// The proxy for `settings`, using the server's broker, gate (callers) and audit.
    pub fn new(
        settings: &ProxySettings,
        broker: Broker,
        gate: Arc<Gate>,
        audit: Arc<Audit>,
        metrics: ProxyMetrics,
        min_rotation_interval: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.limits.request_timeout)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            broker,
            gate,
            audit,
            sent: metrics.bytes("request"),
            received: metrics.bytes("response"),
            metrics,
            client,
            limits: settings.limits,
            api_urls: RwLock::new(Arc::new(settings.api_urls.clone())),
            in_progress: Arc::new(Semaphore::new(settings.limits.max_concurrent_requests)),
            min_rotation_interval,
        })
    }

    /// Replaces the orgs' `api_url`s (a reload); requests in flight go where they went.
    pub fn set_api_urls(&self, urls: BTreeMap<String, Url>) {
        *self.api_urls.write_unpoisoned() = Arc::new(urls);
    }

    fn api_url(&self, org: &str) -> Option<Url> {
        self.api_urls.read_unpoisoned().get(org).cloned()
    }
}
