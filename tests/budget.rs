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
    // 1,000 grant requests at the default 10/s would take 100 s; this counts them.
    let h = Harness::with_extra(common::sandbox_config(), common::VOLUME).await;
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

/// The sandbox throttling like the platform (15/s, burst 20): a burst of cold users at
/// the default budget (10/s, burst 10) is all answered, and the platform answers no 429.
/// Without the budget the same burst is throttled.
#[tokio::test]
async fn a_cold_burst_under_a_throttling_platform_meets_no_429() {
    use tokenbroker::sandbox::{Fault, FaultRule, Target};
    let throttle = FaultRule::always(
        Fault::Throttle {
            per_second: 15,
            burst: 20,
        },
        Target::Any,
    );
    let h = Harness::start().await;
    h.sandbox.inject(throttle.clone());
    let users: Vec<String> = (1..=40).map(|i| h.user(i).person_id).collect();
    common::assert_all_ok(&h.user_tokens(users.clone()).await);
    let stats = h.sandbox.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_eq!(
        (
            stats.client_credentials,
            stats.authorization_grant,
            stats.authorization_code
        ),
        (1, 40, 40)
    );
    let budget = h.broker.stats().budget;
    assert_eq!(budget.waits.iter().sum::<u64>(), 81);
    assert_eq!(budget.waits[0], 1, "the org token, first in line");
    assert_eq!(budget.throttled, 0);
    drop(h);

    // The same burst with no budget to speak of: the platform throttles it.
    let h = Harness::with_extra(common::sandbox_config(), common::VOLUME).await;
    h.sandbox.inject(throttle);
    let _ = h.user_tokens(users).await;
    assert!(h.sandbox.stats().throttled > 0);
}

/// A caller whose deadline comes while its request waits for the budget is told so
/// (UNAVAILABLE naming the setting), and the request goes on: asked again later, the
/// token is there.
#[tokio::test]
async fn a_deadline_passed_waiting_for_the_budget_names_it() {
    let h = Harness::with_extra(
        common::sandbox_config(),
        "upstream.max_requests_per_second = 2.0\nupstream.burst = 1\n",
    )
    .await;
    h.org_token().await.unwrap();
    let mut request = tonic::Request::new(common::user_request("EMP-00001"));
    request.set_timeout(std::time::Duration::from_millis(200));
    let e = h.client.clone().get_user_token(request).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("upstream.max_requests_per_second"),
        "{}",
        e.message()
    );
    common::wait_for("the flight that went on", async || {
        h.sandbox.stats().authorization_code == 1
    })
    .await;
    let requests = h.sandbox.stats().upstream_requests();
    h.user_token("EMP-00001").await.unwrap();
    assert_eq!(h.sandbox.stats().upstream_requests(), requests);
}
