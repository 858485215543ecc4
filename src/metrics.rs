//! Prometheus metrics: counters and histograms the broker updates as it works, and the
//! state (cache, streams, tokens held, org token expiry) read from the broker at each
//! scrape. One registry per broker, no global state, so tests can run many brokers.

use std::time::Duration;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::broker::Broker;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    grant: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabels {
    grant: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs to about 26 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 19))
}

/// What the broker counts as it works.
#[derive(Debug, Clone)]
pub struct Metrics {
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Histograms<MethodLabels>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_seconds: Histograms<GrantLabels>,
    auth_failures: Family<OutcomeLabels, Counter>,
    store_operations: Family<StoreLabels, Counter>,
    store_seconds: Histograms<OperationLabels>,
    proxy: ProxyMetrics,
}

/// What the token-injecting proxy counts: requests by the status answered, the time to
/// the answer's headers, and the body bytes each way.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: Family<StatusLabels, Counter>,
    seconds: Histogram,
    bytes: Family<DirectionLabels, Counter>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            seconds: latency_histogram(),
            bytes: Family::default(),
        }
    }
}

impl ProxyMetrics {
    /// One request answered with `status` (the platform's, or the proxy's own) after
    /// `elapsed` (to the answer's headers).
    pub fn answered(&self, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&StatusLabels { status }).inc();
        self.seconds.observe(elapsed.as_secs_f64());
    }

    /// The counter of body bytes passed `direction`: `request` (to the platform) or
    /// `response` (back to callers).
    pub fn bytes(&self, direction: &'static str) -> Counter {
        self.bytes
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            rpc_requests: Family::default(),
            rpc_seconds: Family::new_with_constructor(latency_histogram),
            upstream_requests: Family::default(),
            upstream_seconds: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
            store_operations: Family::default(),
            store_seconds: Family::new_with_constructor(latency_histogram),
            proxy: ProxyMetrics::default(),
        }
    }
}

/// One RPC method's metrics, looked up once rather than by label on every call: its
/// count of OK answers and its latency histogram.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    method: &'static str,
    ok: Counter,
    seconds: Histogram,
    requests: Family<RpcLabels, Counter>,
}

impl RpcMetrics {
    /// One call answered with `code` (the gRPC status code's name) after `elapsed`.
    pub fn answered(&self, code: &'static str, elapsed: Duration) {
        if code == "Ok" {
            self.ok.inc();
        } else {
            self.requests
                .get_or_create(&RpcLabels {
                    method: self.method,
                    code,
                })
                .inc();
        }
        self.seconds.observe(elapsed.as_secs_f64());
    }
}

impl Metrics {
    /// The metrics of RPC `method` (its OK count starts at 0 on the scrape page).
    pub fn rpc(&self, method: &'static str) -> RpcMetrics {
        RpcMetrics {
            method,
            ok: self
                .rpc_requests
                .get_or_create(&RpcLabels { method, code: "Ok" })
                .clone(),
            seconds: self
                .rpc_seconds
                .get_or_create(&MethodLabels { method })
                .clone(),
            requests: self.rpc_requests.clone(),
        }
    }

    /// The proxy's metrics.
    pub fn proxy(&self) -> ProxyMetrics {
        self.proxy.clone()
    }

    /// One call refused for its credentials (`refused`), or refused unlooked-at because its
    /// address failed too often (`throttled`).
    pub fn auth_failure(&self, outcome: &'static str) {
        self.auth_failures
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

impl crate::store::Observer for Metrics {
    fn operation(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.store_operations
            .get_or_create(&StoreLabels { operation, outcome })
            .inc();
        self.store_seconds
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }
}

impl crate::upstream::Observer for Metrics {
    fn request(&self, grant: &'static str, outcome: &'static str, elapsed: Duration) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels { grant, outcome })
            .inc();
        self.upstream_seconds
            .get_or_create(&GrantLabels { grant })
            .observe(elapsed.as_secs_f64());
    }
}

/// The registry to scrape: what the server's components counted into `metrics`, and the
/// broker's state read at each scrape.
pub fn registry(broker: &Broker, metrics: &Metrics) -> Registry {
    let mut registry = Registry::with_prefix("tokenbroker");
    registry.register(
        "rpc_requests",
        "gRPC calls answered, by method and status code",
        metrics.rpc_requests.clone(),
    );
    registry.register(
        "rpc_duration_seconds",
        "gRPC call latency, by method",
        metrics.rpc_seconds.clone(),
    );
    registry.register(
        "upstream_requests",
        "Requests to the platform, by grant and outcome",
        metrics.upstream_requests.clone(),
    );
    registry.register(
        "upstream_duration_seconds",
        "Platform request latency, by grant",
        metrics.upstream_seconds.clone(),
    );
    registry.register(
        "proxy_requests",
        "Requests through the token-injecting proxy, by the status answered",
        metrics.proxy.requests.clone(),
    );
    registry.register(
        "proxy_duration_seconds",
        "Time from a proxied request to its answer's headers",
        metrics.proxy.seconds.clone(),
    );
    registry.register(
        "proxy_body_bytes",
        "Body bytes through the proxy, by direction (request: to the platform; response: back to callers)",
        metrics.proxy.bytes.clone(),
    );
    registry.register(
        "authentication_failures",
        "Calls refused as unauthenticated (refused), or without a look at their credentials because their address failed too often (throttled)",
        metrics.auth_failures.clone(),
    );
    registry.register(
        "store_operations",
        "Token store operations (put: a new token written; take: a refresh token taken out before it is sent; claim: a shared store asked before a flight), by outcome",
        metrics.store_operations.clone(),
    );
    registry.register(
        "store_operation_duration_seconds",
        "Token store operation latency (including the commit's sync), by operation",
        metrics.store_seconds.clone(),
    );
    registry.register_collector(Box::new(State {
        broker: broker.clone(),
    }));
    registry
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// The broker's state, read at each scrape.
#[derive(Debug)]
struct State {
    broker: Broker,
}

impl Collector for State {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.broker.stats();
        let counters = [
            (
                "cache_hits",
                "Caller requests answered from the cache",
                stats.cache_hits,
            ),
            (
                "cache_misses",
                "Caller requests that waited on the platform",
                stats.cache_misses,
            ),
            (
                "renewals",
                "Tokens renewed ahead of expiry in the background",
                stats.renewals,
            ),
            (
                "renewals_failed",
                "Background renewals that failed (each is retried)",
                stats.failed_renewals,
            ),
            (
                "served_during_outage",
                "Still valid tokens handed out while the platform failed",
                stats.served_during_outage,
            ),
            (
                "user_tokens_dropped",
                "User tokens dropped for idleness or the cap",
                stats.evictions,
            ),
            (
                "unknown_user_answers",
                "Calls answered NOT_FOUND from the memory of users the platform does not know, with no upstream request",
                stats.unknown_user_hits,
            ),
            (
                "renewals_over_budget",
                "Renewals planned beyond half of upstream.max_requests_per_second: more tokens come due than the budget renews before their safety margin",
                stats.renewals_over_budget,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "watch_streams",
                "Open WatchTokens streams",
                stats.watch_streams as i64,
            ),
            (
                "watched_keys",
                "Subscriptions over all keys (one per key per stream)",
                stats.watchers as i64,
            ),
            (
                "user_tokens_held",
                "User token slots held",
                stats.user_tokens as i64,
            ),
            (
                "waiting_callers",
                "Callers waiting on the platform (bounded by server.max_waiting_callers)",
                stats.waiting_callers as i64,
            ),
            (
                "unknown_users",
                "Users the platform said it does not know, remembered (bounded by cache.max_unknown_users)",
                stats.unknown_users as i64,
            ),
            (
                "upstream_flights_in_progress",
                "User-token fetches in progress (bounded by upstream.max_concurrent_flights)",
                stats.flights_in_progress as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        {
            let mut rotations = encoder.encode_descriptor(
                "rotations",
                "New tokens, by reason",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, count) in crate::broker::Reason::ALL.iter().zip(stats.rotations) {
                let labels = [("reason", reason.name())];
                ConstCounter::new(count).encode(rotations.encode_family(&labels)?)?;
            }
        }
        {
            let budget = &stats.budget;
            let by_priority = [
                (
                    "upstream_budget_waiting",
                    "Requests waiting for the upstream budget now, by priority",
                    prometheus_client::metrics::MetricType::Gauge,
                    budget.waiting.map(|n| n as f64),
                ),
                (
                    "upstream_budget_wait_seconds",
                    "Time requests waited for the upstream budget, by priority",
                    prometheus_client::metrics::MetricType::Counter,
                    budget.waited_us.map(|us| us as f64 / 1e6),
                ),
                (
                    "upstream_budget_requests",
                    "Requests that went through the upstream budget, by priority",
                    prometheus_client::metrics::MetricType::Counter,
                    budget.waits.map(|n| n as f64),
                ),
            ];
            for (name, help, kind, values) in by_priority {
                let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                for (priority, value) in crate::broker::Priority::ALL.iter().zip(values) {
                    let labels = [("priority", priority.name())];
                    if kind == prometheus_client::metrics::MetricType::Counter {
                        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                    } else {
                        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            let throttled = ConstCounter::new(budget.throttled);
            throttled.encode(encoder.encode_descriptor(
                "upstream_throttled",
                "429 answers from the platform (each holds every request to its host)",
                None,
                throttled.metric_type(),
            )?)?;
            let holds = ConstGauge::new(budget.holds as i64);
            holds.encode(encoder.encode_descriptor(
                "upstream_holds",
                "Platform hosts held by a 429 now",
                None,
                holds.metric_type(),
            )?)?;
        }
        let expiries = self.broker.org_token_expiries();
        let mut family = encoder.encode_descriptor(
            "org_token_expiry_seconds",
            "Seconds until each org token expires (absent: none held, or long-lived)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (org, left) in expiries {
            let Some(left) = left else { continue };
            let labels = [("org", org)];
            ConstGauge::new(left.as_secs_f64()).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_methods_handle_counts_into_the_families_the_registry_renders() {
        let metrics = Metrics::default();
        let count = |method, code| {
            metrics
                .rpc_requests
                .get_or_create(&RpcLabels { method, code })
                .get()
        };
        let org = metrics.rpc("GetOrgToken");
        assert_eq!(count("GetOrgToken", "Ok"), 0, "made by the lookup, at 0");
        org.answered("Ok", Duration::from_micros(80));
        org.clone().answered("Ok", Duration::from_micros(90));
        org.answered("NotFound", Duration::from_micros(70));
        metrics
            .rpc("Refresh")
            .answered("Ok", Duration::from_millis(3));
        assert_eq!(count("GetOrgToken", "Ok"), 2);
        assert_eq!(count("GetOrgToken", "NotFound"), 1);
        assert_eq!(count("Refresh", "Ok"), 1);
        let mut registry = Registry::default();
        registry.register("rpc_duration", "", metrics.rpc_seconds.clone());
        let text = render(&registry);
        assert!(
            text.contains("rpc_duration_count{method=\"GetOrgToken\"} 3"),
            "{text}"
        );
    }
}
