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

/// 10,000 calls for 1,000 distinct ids the platform does not know cost one grant request
/// per id; the repeats are answered NOT_FOUND from memory, and no slot is left behind.
#[tokio::test]
async fn unknown_users_are_remembered_and_hold_no_slots() {
    let h = Harness::start().await;
    let ghosts: Vec<String> = (0..1000).map(|i| format!("GHOST-{i:04}")).collect();
    for round in 0..10 {
        let answers = h.user_tokens(ghosts.iter().cloned()).await;
        for answer in answers {
            let e = answer.expect_err("an unknown user");
            assert_eq!(e.code(), tonic::Code::NotFound, "round {round}: {e:?}");
        }
    }
    let stats = h.sandbox.stats();
    assert_eq!(stats.authorization_grant, 1000, "{stats:?}");
    let broker = h.broker.stats();
    assert_eq!(broker.user_tokens, 0, "no slot held for an unknown user");
    assert_eq!(broker.unknown_users, 1000);
    assert_eq!(broker.unknown_user_hits, 9000);
    // A known user is still fetched as ever.
    h.user_token("EMP-00001").await.unwrap();
}
