//! When to renew a token and how long to wait after a failure: pure functions of a
//! lifetime, an attempt count and a random draw, so every rule is tested without a clock.

use std::time::Duration;

/// How far ahead of expiry tokens are renewed (`[renewal]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    /// Renew at this fraction of the token's lifetime (SPIRE renews at one half).
    pub fraction: f64,
    /// ± this fraction of the planned time, so that many keys do not renew together.
    pub jitter: f64,
    /// A renewal never starts later than this before expiry (for short tokens: a fifth of
    /// the lifetime, if that is less).
    pub safety_margin: Duration,
    /// The first wait after a failed renewal; it doubles with every failure.
    pub backoff_base: Duration,
    /// The longest wait between renewal attempts.
    pub backoff_max: Duration,
    /// How long after the platform rejected the broker's credentials it is asked again.
    pub credentials_retry: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            jitter: 0.1,
            safety_margin: Duration::from_secs(60),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            credentials_retry: Duration::from_secs(60),
        }
    }
}

impl RenewalPolicy {
    /// How long after a token of `lifetime` was requested to renew it. `draw` is uniform in
    /// [0, 1): `fraction` of the lifetime, ± `jitter` of that, clamped to start at least the
    /// safety margin before expiry.
    pub fn renew_after(&self, lifetime: Duration, draw: f64) -> Duration {
        let factor = self.fraction * (1.0 + self.jitter * (2.0 * draw - 1.0));
        let planned = lifetime.mul_f64(factor.clamp(0.0, 1.0));
        let latest = lifetime.saturating_sub(self.safety_margin.min(lifetime / 5));
        planned.min(latest)
    }

    /// The wait before attempt `failures + 1` after `failures` failures in a row: "full
    /// jitter", uniform in [0, min(max, base · 2^(failures-1))), so that retries spread out.
    pub fn backoff(&self, failures: u32, draw: f64) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.backoff_max);
        ceiling.mul_f64(draw.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn renews_at_half_life_within_ten_percent() {
        let p = RenewalPolicy::default();
        assert_eq!(p.renew_after(HOUR, 0.5), Duration::from_secs(1800));
        assert_eq!(p.renew_after(HOUR, 0.0), Duration::from_secs(1620));
        assert!(p.renew_after(HOUR, 0.999_999) <= Duration::from_secs(1980));
        assert!(p.renew_after(HOUR, 0.999_999) > Duration::from_secs(1979));
        let two = Duration::from_secs(2);
        assert_eq!(p.renew_after(two, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn a_late_fraction_is_clamped_to_the_safety_margin() {
        let p = RenewalPolicy {
            fraction: 0.99,
            ..RenewalPolicy::default()
        };
        assert_eq!(p.renew_after(HOUR, 0.9), HOUR - Duration::from_secs(60));
        // A short token: a fifth of its lifetime is the margin.
        assert_eq!(
            p.renew_after(Duration::from_secs(10), 0.9),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn backoff_doubles_with_full_jitter_up_to_the_cap() {
        let p = RenewalPolicy::default();
        assert_eq!(p.backoff(1, 0.999_999).as_millis(), 499);
        assert_eq!(p.backoff(2, 0.5), Duration::from_millis(500));
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(1));
        assert_eq!(p.backoff(40, 0.5), Duration::from_secs(15));
        assert_eq!(p.backoff(5, 0.0), Duration::ZERO);
        assert!(p.backoff(u32::MAX, 0.999) <= p.backoff_max);
    }
}
