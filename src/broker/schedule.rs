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
    /// A `Refresh` that names no stale token, for a key rotated less than this long ago,
    /// is answered with the current token: a caller looping on Refresh costs at most one
    /// rotation per interval.
    pub min_rotation_interval: Duration,
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
            min_rotation_interval: Duration::from_secs(1),
        }
    }
}

/// When a token may be renewed, counted from when it was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its planned renewal (the lifetime's `fraction`, ± `jitter`).
    pub earliest: Duration,
    /// The last moment the safety margin allows.
    pub latest: Duration,
}

impl RenewalPolicy {
    /// How long after a token of `lifetime` was requested to renew it. `draw` is uniform in
    /// [0, 1): `fraction` of the lifetime, ± `jitter` of that, clamped to start at least the
    /// safety margin before expiry.
    pub fn renew_after(&self, lifetime: Duration, draw: f64) -> Duration {
        let factor = self.fraction * (1.0 + self.jitter * (2.0 * draw - 1.0));
        let planned = lifetime.mul_f64(factor.clamp(0.0, 1.0));
        planned.min(self.latest_renewal(lifetime))
    }

    /// When a token of `lifetime` may be renewed, counted from its request: from its
    /// planned time ([`Self::renew_after`], from `draw`) to the last moment the safety
    /// margin allows. [`super::spread`] places the renewal within it.
    pub fn window(&self, lifetime: Duration, draw: f64) -> Window {
        Window {
            earliest: self.renew_after(lifetime, draw),
            latest: self.latest_renewal(lifetime),
        }
    }

    /// The window of a token of `lifetime` found in the store at start, `elapsed` after it
    /// was requested, with `usable_left` of its usable life to go: as [`Self::window`] if
    /// its planned time is still ahead; else from now over the first half of what is
    /// left, so that a broker restarted after a long stop does not renew every overdue
    /// token at once, and a failed renewal still has time for its retries.
    pub fn window_after_restart(
        &self,
        lifetime: Duration,
        elapsed: Duration,
        usable_left: Duration,
        draw: f64,
    ) -> Window {
        let window = self.window(lifetime, draw);
        if window.earliest > elapsed {
            window
        } else {
            Window {
                earliest: elapsed,
                latest: elapsed + usable_left / 2,
            }
        }
    }

    /// The latest a renewal of a token of `lifetime` starts: the safety margin before its
    /// expiry (a fifth of the lifetime, if that is less).
    fn latest_renewal(&self, lifetime: Duration) -> Duration {
        lifetime.saturating_sub(self.safety_margin.min(lifetime / 5))
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

    #[test]
    fn a_stored_token_renews_as_planned_or_spread_when_overdue() {
        let p = RenewalPolicy::default();
        let hour = Duration::from_secs(3600);
        // Planned at half the lifetime (± 10 %) up to the safety margin: still ahead 10
        // minutes in.
        let ahead = p.window_after_restart(hour, Duration::from_secs(600), hour, 0.5);
        assert_eq!(ahead, p.window(hour, 0.5));
        assert_eq!(ahead.earliest, Duration::from_secs(1800));
        assert_eq!(ahead.latest, Duration::from_secs(3540));
        // 50 minutes in, with 4 of its usable life left: within the next 2 minutes.
        let elapsed = Duration::from_secs(3000);
        let left = Duration::from_secs(240);
        let overdue = p.window_after_restart(hour, elapsed, left, 0.5);
        assert_eq!(overdue.earliest, elapsed);
        assert_eq!(overdue.latest, elapsed + Duration::from_secs(120));
    }

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
