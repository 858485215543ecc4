//! Polite to the platform: a blind `Refresh` loop costs at most one rotation per
//! `renewal.min_rotation_interval`, unknown users are remembered, and every upstream
//! request waits for the budget (`upstream.max_requests_per_second`) in priority order.

mod common;

use std::time::Instant;

use common::Harness;

/// 2,000 sequential `Refresh` calls naming no stale token: one rotation per second at
/// most (it was one upstream refresh per call), each answered with the current token.
#[tokio::test]
async fn a_blind_refresh_loop_rotates_at_most_once_per_interval() {
    let h = Harness::start().await;
    let first = h.org_token().await.unwrap();
    let started = Instant::now();
    let mut last = first.generation;
    for _ in 0..2000 {
        let token = h.refresh("", "").await.unwrap();
        assert!(token.generation >= last);
        last = token.generation;
    }
    let seconds = started.elapsed().as_secs();
    let stats = h.sandbox.stats();
    assert!(
        stats.refresh_token <= seconds + 1,
        "{} rotations in {seconds} s",
        stats.refresh_token
    );
    assert_eq!(last - first.generation, stats.refresh_token);
}
