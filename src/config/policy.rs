//! The limits, the audit and the renewal and cache policies from their sections, and the
//! duration syntax they share.

use super::*;

pub(super) fn limits(server: &RawServer, upstream: &RawUpstream) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let limits = Limits {
        max_waiting_callers: server
            .max_waiting_callers
            .unwrap_or(defaults.max_waiting_callers),
        max_concurrent_flights: upstream
            .max_concurrent_flights
            .unwrap_or(defaults.max_concurrent_flights),
        upstream_budget: BudgetPolicy {
            per_second: upstream
                .max_requests_per_second
                .unwrap_or(defaults.upstream_budget.per_second),
            burst: upstream.burst.unwrap_or(defaults.upstream_budget.burst),
        },
    };
    let budget = limits.upstream_budget;
    if !(budget.per_second >= 0.01 && budget.per_second <= 100_000.0) {
        return Err(error(
            "upstream.max_requests_per_second",
            format!(
                "{} is out of range; write 0.01 to 100000 (the platform was seen to throttle past about 15 quick requests)",
                budget.per_second
            ),
        ));
    }
    if budget.burst == 0 || budget.burst > 100_000 {
        return Err(error(
            "upstream.burst",
            format!("{} is out of range; write 1 to 100000", budget.burst),
        ));
    }
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

pub(super) fn audit_policy(audit: &RawAudit) -> Result<AuditPolicy, ConfigError> {
    let defaults = AuditPolicy::default();
    Ok(AuditPolicy {
        summary_interval: match audit.summary_interval.as_deref() {
            None => defaults.summary_interval,
            Some(text) => parse_duration("audit.summary_interval", text)?,
        },
        every_call: audit.every_call.unwrap_or(defaults.every_call),
    })
}

pub(super) fn cache_policy(
    renewal: &RawRenewal,
    cache: &RawCache,
) -> Result<CachePolicy, ConfigError> {
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
        min_rotation_interval: duration(
            "renewal.min_rotation_interval",
            &renewal.min_rotation_interval,
            d.min_rotation_interval,
        )?,
    };
    let max_user_tokens = cache.max_user_tokens.unwrap_or(defaults.max_user_tokens);
    if max_user_tokens == 0 {
        return Err(error("cache.max_user_tokens", "must be at least 1"));
    }
    let max_unknown_users = cache
        .max_unknown_users
        .unwrap_or(defaults.max_unknown_users);
    if max_unknown_users == 0 {
        return Err(error("cache.max_unknown_users", "must be at least 1"));
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
        unknown_user_ttl: duration(
            "cache.unknown_user_ttl",
            &cache.unknown_user_ttl,
            defaults.unknown_user_ttl,
        )?,
        max_unknown_users,
    })
}

pub(super) fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(error(
            key,
            format!("{text:?} is not a positive duration; write e.g. \"10s\" or \"500ms\""),
        )),
    }
}
