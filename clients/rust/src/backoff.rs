//! How long a source waits before it opens its stream again: jittered exponential backoff,
//! as a pure function of the failures in a row and a random draw.

use std::time::Duration;

/// The first wait after a stream ends.
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest wait, however many failures in a row.
pub const MAX: Duration = Duration::from_secs(30);

/// The wait before attempt `failures + 1`: [`FIRST`] doubling with each failure in a row up
/// to [`MAX`], scaled by `draw` (in `[0, 1)`) to between half and all of that, so that the
/// clients of a restarted broker do not come back in step.
pub fn delay(failures: u32, draw: f64) -> Duration {
    let ceiling = FIRST
        .checked_mul(1u32.checked_shl(failures).unwrap_or(u32::MAX))
        .map_or(MAX, |d| d.min(MAX));
    ceiling.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100_ms_to_30_s() {
        assert_eq!(delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(delay(1, 1.0), Duration::from_millis(200));
        assert_eq!(delay(5, 1.0), Duration::from_millis(3200));
        assert_eq!(delay(9, 1.0), MAX);
        assert_eq!(delay(40, 1.0), MAX, "no overflow after many failures");
        assert_eq!(delay(u32::MAX, 1.0), MAX);
    }

    #[test]
    fn the_draw_spreads_each_wait_over_its_upper_half() {
        assert_eq!(delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(delay(3, 0.5), Duration::from_millis(600));
        assert_eq!(delay(20, 0.0), MAX / 2);
        assert_eq!(delay(2, 7.0), Duration::from_millis(400), "clamped");
    }
}
