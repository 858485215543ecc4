//! Token lifecycle against the sandbox over real sockets: renewal ahead of expiry, the
//! user-token cache's bounds, min_valid_for, and every platform fault the sandbox can inject.

mod common;

use std::time::Duration;

use common::{
    Harness, acme_toml, lifetime, retry, sandbox_config, seconds_left, until_left, user_request,
    wait_for,
};
use tokenbroker::{
    proto::{GetOrgTokenRequest, RefreshRequest, TokenEventReason, WatchTokensRequest},
    sandbox::{Fault, FaultRule, MalformedBody, Target},
};
use tonic::{Code, Request};

/// Short holds after failures, so tests see recovery quickly.
const FAST_BACKOFF: &str = "[renewal]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n";

fn org_request(min_valid_for: Option<Duration>) -> GetOrgTokenRequest {
    GetOrgTokenRequest {
        org: "acme".into(),
        min_valid_for: min_valid_for.map(|d| d.try_into().unwrap()),
    }
}

#[tokio::test]
async fn with_two_second_tokens_for_twenty_seconds_no_caller_waits_and_every_token_works() {
    let h = Harness::with_extra(lifetime(2), "").await;
    let users: Vec<String> = (1..=3).map(|i| h.user(i).person_id).collect();
    let mut watch = h
        .client
        .clone()
        .watch_tokens(WatchTokensRequest {
            org: "acme".into(),
            user_ids: vec![users[0].clone()],
        })
        .await
        .unwrap()
        .into_inner();
    h.org_token().await.unwrap();
    for user in &users {
        h.user_token(user).await.unwrap();
    }
    let cold = h.broker.stats().cache_misses;

    let started = std::time::Instant::now();
    let mut handed_out = 0;
    let mut checked = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let mut tokens = vec![h.org_token().await.unwrap()];
        for user in &users {
            tokens.push(h.user_token(user).await.unwrap());
        }
        for token in &tokens {
            assert!(
                seconds_left(token) > 0.0,
                "handed out an expired token: {token:?}"
            );
        }
        handed_out += tokens.len();
        // The platform accepts every token handed out.
        let (status, _) = h
            .call_api("/api/v1/admin/organization", &tokens[0].access_token)
            .await;
        assert_eq!(status, 200);
        for (token, user) in tokens[1..].iter().zip(&users) {
            h.assert_acts_as(&token.access_token, user).await;
        }
        checked += tokens.len();
        // The callers' pace over the twenty seconds, not a wait for an event.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = h.broker.stats();
    assert_eq!(
        stats.cache_misses, cold,
        "no caller waited on the platform after the first fetch: {stats:?}"
    );
    assert_eq!(stats.failed_renewals, 0, "{stats:?}");
    // About one renewal per key per second: four keys over twenty seconds.
    assert!(stats.renewals >= 40, "{stats:?}");
    assert!(
        checked == handed_out && handed_out >= 400,
        "{checked} {handed_out}"
    );
    let sandbox = h.sandbox.stats();
    assert_eq!(
        sandbox.refresh_token, stats.renewals,
        "every renewal used its refresh token once"
    );
    assert_eq!(
        (sandbox.client_credentials, sandbox.authorization_grant),
        (1, 3)
    );

    // The watcher saw every rotation of its key, in order.
    let mut last = 0;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(100), watch.message())
        .await
        .unwrap_or(Ok(None))
    {
        let reason = message.reason();
        let token = message.token.unwrap();
        assert!(token.generation > last);
        if last > 0 {
            assert_eq!(reason, TokenEventReason::Renewed);
        }
        last = token.generation;
    }
    assert!(last >= 10, "watcher saw generation {last}");
}

#[tokio::test]
async fn idle_user_tokens_are_dropped_and_the_cap_drops_the_longest_idle_first() {
    let h = Harness::with_extra(
        sandbox_config(),
        "[cache]\nuser_idle_timeout = \"1s\"\nmax_user_tokens = 3\n",
    )
    .await;
    let user = |i| h.user(i).person_id;
    for i in [1, 2, 3] {
        h.user_token(&user(i)).await.unwrap();
        // Uses a few milliseconds apart: a slot records its last use to the millisecond.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.user_token(&user(1)).await.unwrap(); // user 2 is now the longest idle
    h.user_token(&user(4)).await.unwrap();
    let stats = h.broker.stats();
    assert_eq!((stats.user_tokens, stats.evictions), (3, 1));
    let grants = h.sandbox.stats().authorization_grant;
    h.user_token(&user(1)).await.unwrap();
    assert_eq!(
        h.sandbox.stats().authorization_grant,
        grants,
        "user 1 was kept"
    );
    h.user_token(&user(2)).await.unwrap();
    assert_eq!(
        h.sandbox.stats().authorization_grant,
        grants + 1,
        "user 2 was dropped"
    );

    // A watched user stays; the rest go once idle for a second.
    let _watch = h
        .client
        .clone()
        .watch_tokens(WatchTokensRequest {
            org: "acme".into(),
            user_ids: vec![user(4)],
        })
        .await
        .unwrap();
    wait_for("the unwatched users dropped once idle", async || {
        h.broker.stats().user_tokens == 1
    })
    .await;
    let grants = h.sandbox.stats().authorization_grant;
    h.user_token(&user(4)).await.unwrap();
    assert_eq!(h.sandbox.stats().authorization_grant, grants);
}

#[tokio::test]
async fn min_valid_for_renews_first_or_says_what_the_platform_allows() {
    let h = Harness::with_extra(lifetime(10), "").await;
    let mut c = h.client.clone();
    let first = c
        .get_org_token(org_request(Some(Duration::from_secs(5))))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(first.generation, 1);

    let status = c
        .get_org_token(org_request(Some(Duration::from_secs(20))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("live 10s"),
        "{}",
        status.message()
    );
    let negative = GetOrgTokenRequest {
        org: "acme".into(),
        min_valid_for: Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
    };
    assert_eq!(
        c.get_org_token(negative).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    until_left(&first, 9.4).await;
    // 9.4 s are left of the first token, less than asked: a new one is fetched first.
    let second = c
        .get_org_token(org_request(Some(Duration::from_millis(9_600))))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(second.generation, 2);
    assert!(seconds_left(&second) >= 9.0);
    // Without min_valid_for, the cached token is fine.
    assert_eq!(h.org_token().await.unwrap(), second);
    assert_eq!(h.sandbox.stats().refresh_token, 1);

    let user = h.user(1).person_id;
    let mut request = user_request(&user);
    request.min_valid_for = Some(Duration::from_secs(11).try_into().unwrap());
    assert_eq!(
        c.get_user_token(request).await.unwrap_err().code(),
        Code::OutOfRange
    );
}

#[tokio::test]
async fn server_errors_are_unavailable_and_the_broker_recovers() {
    let h = Harness::with_extra(sandbox_config(), FAST_BACKOFF).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Status { status: 503 },
        Target::Any,
    ));
    let status = h.org_token().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("HTTP 503"),
        "{}",
        status.message()
    );
    h.sandbox.clear_faults();
    let token = retry("an org token", async || h.org_token().await).await;
    assert_eq!(token.generation, 1);
}

#[tokio::test]
async fn throttling_is_honoured_no_request_before_retry_after() {
    let h = Harness::with_extra(sandbox_config(), FAST_BACKOFF).await;
    h.sandbox.inject(FaultRule::times(
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        Target::ClientCredentials,
        1,
    ));
    let started = std::time::Instant::now();
    let status = h.org_token().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("429"), "{}", status.message());
    // Within the Retry-After window callers get the same answer without a request.
    for _ in 0..5 {
        assert_eq!(h.org_token().await.unwrap_err().code(), Code::Unavailable);
    }
    if started.elapsed() < Duration::from_secs(1) {
        assert_eq!(h.sandbox.stats().client_credentials, 1);
    }
    let token = retry("an org token", async || h.org_token().await).await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(token.generation, 1);
    assert_eq!(h.sandbox.stats().client_credentials, 2);
}

/// A 429 on a refresh: the refresh token is spent (never presented again) and the primary
/// grant waits out the same `Retry-After` instead of following at once.
#[tokio::test]
async fn a_throttled_refresh_holds_the_primary_grant_too() {
    let h = Harness::with_extra(sandbox_config(), FAST_BACKOFF).await;
    let first = h.org_token().await.unwrap();
    h.sandbox.inject(FaultRule::times(
        Fault::RateLimit {
            retry_after_secs: 1,
        },
        Target::RefreshToken,
        1,
    ));
    let started = std::time::Instant::now();
    let refresh = |stale: String| {
        let mut c = h.client.clone();
        async move {
            c.refresh(tokenbroker::proto::RefreshRequest {
                org: "acme".into(),
                stale_access_token: stale,
                ..Default::default()
            })
            .await
        }
    };
    let status = refresh(first.access_token.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("429"), "{}", status.message());
    if started.elapsed() < Duration::from_secs(1) {
        let stats = h.sandbox.stats();
        assert_eq!(
            (stats.refresh_token, stats.client_credentials),
            (1, 1),
            "no primary grant inside the Retry-After: {stats:?}"
        );
    }
    // Once it has passed: a new token through the primary grant.
    let renewed = retry("a new token", async || {
        Ok::<_, tonic::Status>(
            refresh(first.access_token.clone())
                .await?
                .into_inner()
                .token
                .unwrap(),
        )
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(renewed.generation, 2);
    let stats = h.sandbox.stats();
    assert_eq!((stats.refresh_token, stats.client_credentials), (1, 2));
}

/// In a token's last tenth of life a caller waits on its renewal; when the platform hangs
/// and the caller's deadline comes first, it gets the still valid token, not an error.
#[tokio::test]
async fn a_caller_whose_deadline_comes_during_a_renewal_gets_the_still_valid_token() {
    let h = Harness::with_extra(lifetime(10), "").await;
    let token = h.org_token().await.unwrap();
    h.sandbox
        .inject(FaultRule::always(Fault::Hang, Target::Token));
    // Past the point where it is handed out without a renewal (9 s of 10), still valid.
    until_left(&token, 0.7).await;
    let mut request = tonic::Request::new(org_request(None));
    request.set_timeout(Duration::from_millis(300));
    let got = h
        .client
        .clone()
        .get_org_token(request)
        .await
        .expect("the still valid token, not UNAVAILABLE")
        .into_inner()
        .token
        .unwrap();
    assert_eq!(got.access_token, token.access_token);
    assert!(seconds_left(&got) > 0.0);
}

#[tokio::test]
async fn a_slow_platform_is_waited_for() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    h.sandbox.inject(FaultRule::always(
        Fault::Latency { millis: 300 },
        Target::Any,
    ));
    let user = h.user(2).external_id;
    assert_eq!(h.user_token(&user).await.unwrap().user_id, user);
}

#[tokio::test]
async fn a_hanging_platform_answers_unavailable_within_the_callers_deadline() {
    let h = Harness::with_extra(sandbox_config(), "[upstream]\nrequest_timeout = \"400ms\"\n[renewal]\nbackoff_base = \"10ms\"\nbackoff_max = \"10ms\"\n").await;
    h.sandbox
        .inject(FaultRule::always(Fault::Hang, Target::Any));
    // The broker's own request timeout.
    let status = h.org_token().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("did not answer within 0.4s"),
        "{}",
        status.message()
    );
    // The broker itself stays healthy.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert_eq!(health.check(check).await.unwrap().into_inner().status, 1);
    // A caller deadline shorter than that: UNAVAILABLE before the deadline, not CANCELLED.
    // (After the configured 10 ms hold, during which a call gets the last error at once.)
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut request = Request::new(user_request(&h.user(1).person_id));
    request.set_timeout(Duration::from_millis(200));
    let status = h.client.clone().get_user_token(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("deadline"),
        "{}",
        status.message()
    );
    h.sandbox.clear_faults();
    retry("an org token", async || h.org_token().await).await;
}

#[tokio::test]
async fn malformed_answers_are_unavailable_and_a_numeric_string_lifetime_is_fine() {
    let h = Harness::with_extra(sandbox_config(), FAST_BACKOFF).await;
    for body in [
        MalformedBody::Html,
        MalformedBody::Garbage,
        // (A missing expires_in is not garbage: legal, and settled by the token's JWT exp
        // or orgs.NAME.default_token_lifetime; tests/oauth.rs.)
        MalformedBody::AbsurdExpiresIn,
    ] {
        h.sandbox.inject(FaultRule::times(
            Fault::Malformed { body },
            Target::ClientCredentials,
            1,
        ));
        let status = h
            .through_the_faults(async || h.org_token().await)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{body:?}");
        assert!(
            status.message().contains("could not be used"),
            "{body:?}: {}",
            status.message()
        );
    }
    h.sandbox.inject(FaultRule::times(
        Fault::Malformed {
            body: MalformedBody::StringExpiresIn,
        },
        Target::ClientCredentials,
        1,
    ));
    let token = retry("an org token", async || h.org_token().await).await;
    assert!((3500.0..=3600.0).contains(&seconds_left(&token)));
    // Garbage from the grant endpoint too.
    h.sandbox.inject(FaultRule::times(
        Fault::Malformed {
            body: MalformedBody::Html,
        },
        Target::AuthorizationGrant,
        1,
    ));
    let user = h.user(1).person_id;
    assert_eq!(
        h.user_token(&user).await.unwrap_err().code(),
        Code::Unavailable
    );
    retry("a user token", async || h.user_token(&user).await).await;
}

#[tokio::test]
async fn an_answer_lost_after_the_platform_spent_the_refresh_token_is_never_retried_with_it() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    let user = h.user(1).person_id;
    let org1 = h.org_token().await.unwrap();
    let user1 = h.user_token(&user).await.unwrap();
    h.sandbox.inject(FaultRule::times(
        Fault::DropAfterCommit,
        Target::RefreshToken,
        2,
    ));

    let refresh = |user: &str, stale: &str| RefreshRequest {
        org: "acme".into(),
        user_id: user.into(),
        stale_access_token: stale.into(),
    };
    let org2 = h
        .client
        .clone()
        .refresh(refresh("", &org1.access_token))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let user2 = h
        .client
        .clone()
        .refresh(refresh(&user, &user1.access_token))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!((org2.generation, user2.generation), (2, 2));
    h.assert_acts_as(&user2.access_token, &user).await;

    let stats = h.sandbox.stats();
    // Each refresh token was spent by the platform, its answer lost, and never sent again:
    // the broker went back to client credentials and to a new authorization grant.
    assert_eq!(stats.refresh_token, 2);
    assert_eq!(stats.refresh_token_reuse, 0);
    assert_eq!(
        (stats.client_credentials, stats.authorization_grant),
        (2, 2)
    );
    // The new tokens carry new refresh tokens, which work.
    let org3 = h
        .client
        .clone()
        .refresh(refresh("", &org2.access_token))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(org3.generation, 3);
    assert_eq!(h.sandbox.stats().refresh_token, 3);
}

#[tokio::test]
async fn rejected_credentials_are_not_hammered() {
    let h = Harness::with(sandbox_config(), acme_toml, |name| {
        (name == "ACME_SECRET").then(|| "wrong".to_owned())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            h.org_token().await.unwrap_err().code(),
            Code::FailedPrecondition
        );
    }
    assert_eq!(h.sandbox.stats().client_credentials, 1);
}

#[tokio::test]
async fn during_an_outage_callers_get_the_valid_token_until_it_expires() {
    let h = Harness::with_extra(lifetime(3), FAST_BACKOFF).await;
    let token = h.org_token().await.unwrap();
    h.sandbox.inject(FaultRule::always(
        Fault::Status { status: 502 },
        Target::Any,
    ));
    let mut served = 0;
    while seconds_left(&token) > 0.05 {
        let now = h
            .org_token()
            .await
            .unwrap_or_else(|e| panic!("caller error while a valid token is held: {e:?}"));
        assert_eq!(now.access_token, token.access_token);
        served += 1;
        // The callers' pace until the token expires.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 20);
    until_left(&token, -0.1).await;
    assert_eq!(h.org_token().await.unwrap_err().code(), Code::Unavailable);
    let stats = h.broker.stats();
    assert!(
        stats.failed_renewals > 0 && stats.served_during_outage > 0,
        "{stats:?}"
    );

    h.sandbox.clear_faults();
    let renewed = retry("an org token", async || h.org_token().await).await;
    assert_eq!(renewed.generation, 2);
    assert!(seconds_left(&renewed) > 1.0);
}
