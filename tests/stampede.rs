//! A stampede is the job: with the default config (nothing but the org), thousands of
//! concurrent callers of cold keys are all answered, over real sockets, and the platform
//! sees one request chain per key.

mod common;

use std::time::Duration;

use common::{Harness, acme_toml};
use futures::future::join_all;
use tokenbroker::{
    proto::{GetOrgTokenRequest, GetUserTokenRequest},
    sandbox::{Fault, FaultRule, SandboxOrg, Target},
};

/// The test sandbox with `users` users whose every answer takes `latency`, so that all the
/// callers arrive while the first flight is still in the air.
async fn start(users: u32, latency: Duration) -> Harness {
    let mut config = common::sandbox_config();
    config.orgs = vec![SandboxOrg {
        users,
        ..config.orgs[0].clone()
    }];
    // A thousand users' requests at the default 10/s would take minutes: those tests
    // count requests, not their pace (tests/budget.rs checks the pace).
    let budget = if users > 100 { common::VOLUME } else { "" };
    let h = Harness::with(config, |s| format!("{budget}{}", acme_toml(s)), |_| None).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Latency {
            millis: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
        },
        Target::Any,
    ));
    h
}

/// `n` clients, each on its own HTTP/2 connection.
async fn clients(
    h: &Harness,
    n: usize,
) -> Vec<tokenbroker::proto::token_service_client::TokenServiceClient<tonic::transport::Channel>> {
    join_all((0..n).map(|_| h.new_client())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_callers_of_a_cold_org_token_cost_one_request() {
    let h = start(1, Duration::from_millis(300)).await;
    let clients = clients(&h, 8).await;
    let calls = (0..10_000).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        async move {
            c.get_org_token(GetOrgTokenRequest {
                org: "acme".into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().token.map(|t| t.access_token))
        }
    });
    let answers = join_all(calls).await;
    common::assert_all_ok(&answers);
    let first = answers[0].as_ref().ok().cloned().flatten();
    assert!(first.is_some());
    assert!(answers.iter().all(|a| a.as_ref().ok() == Some(&first)));
    let stats = h.sandbox.stats();
    assert_eq!(stats.client_credentials, 1, "{stats:?}");
    assert_eq!(stats.upstream_requests(), 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_users_times_ten_callers_cost_a_grant_and_an_exchange_each() {
    let users = 1_000;
    let h = start(users, Duration::from_millis(50)).await;
    let ids: Vec<String> = h.sandbox.config().orgs[0]
        .users()
        .into_iter()
        .map(|u| u.person_id)
        .collect();
    let clients = clients(&h, 8).await;
    let calls = (0..10 * ids.len()).map(|i| {
        let mut c = clients[i % clients.len()].clone();
        let user = ids[i % ids.len()].clone();
        async move {
            c.get_user_token(GetUserTokenRequest {
                org: "acme".into(),
                user_id: user.clone(),
                ..Default::default()
            })
            .await
            .map(|r| (user, r.into_inner().token.map(|t| t.user_id)))
        }
    });
    let answers = join_all(calls).await;
    common::assert_all_ok(&answers);
    assert!(answers.iter().all(|a| {
        a.as_ref()
            .is_ok_and(|(user, got)| got.as_deref() == Some(user.as_str()))
    }));
    let stats = h.sandbox.stats();
    assert_eq!(stats.authorization_grant, u64::from(users), "{stats:?}");
    assert_eq!(stats.authorization_code, u64::from(users), "{stats:?}");
    assert_eq!(stats.client_credentials, 1, "{stats:?}");
    assert_eq!(stats.refresh_token, 0, "{stats:?}");
}

/// Past `upstream.max_concurrent_flights`, user-token fetches wait their turn instead of
/// being refused: every caller is answered, and the broker never has more fetches in
/// progress than the limit (its own gauge, sampled while the calls wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_fetches_past_the_flight_limit_wait_their_turn() {
    let mut config = common::sandbox_config();
    config.orgs[0].users = 12;
    let h = Harness::with(
        config,
        |s| format!("[upstream]\nmax_concurrent_flights = 2\n{}", acme_toml(s)),
        |_| None,
    )
    .await;
    // The org token first, so that only user fetches are in the air below.
    h.client
        .clone()
        .get_org_token(GetOrgTokenRequest::default())
        .await
        .unwrap();
    h.sandbox.inject(FaultRule::always(
        Fault::Latency { millis: 100 },
        Target::Any,
    ));
    let calls = h.user_tokens((1..=12).map(|i| h.user(i).person_id));
    let broker = h.broker.clone();
    let sample = async move {
        let (mut most_flights, mut most_waiting) = (0, 0);
        for _ in 0..400 {
            let stats = broker.stats();
            most_flights = most_flights.max(stats.flights_in_progress);
            most_waiting = most_waiting.max(stats.waiting_callers);
            if stats.user_tokens == 12 && stats.waiting_callers == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (most_flights, most_waiting)
    };
    let (answers, (most_flights, most_waiting)) = tokio::join!(calls, sample);
    common::assert_all_ok(&answers);
    assert_eq!(most_flights, 2, "at most the limit, and the limit is used");
    assert!(
        most_waiting > 2,
        "the callers past it waited: {most_waiting}"
    );
    assert_eq!(h.sandbox.stats().authorization_grant, 12);
}

/// While every limit is full — callers waiting on a slow platform up to
/// `server.max_waiting_callers`, fetches up to `upstream.max_concurrent_flights` — a cached
/// answer is never refused: another client's cached calls all succeed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_answers_are_never_refused_while_the_limits_are_full() {
    let h = Harness::with(
        common::sandbox_config(),
        |s| format!("[server]\nmax_waiting_callers = 1000\n{}", acme_toml(s)),
        |_| None,
    )
    .await;
    let cached_user = h.user(1).person_id;
    let warm = h.user_tokens([cached_user.clone()]).await;
    common::assert_all_ok(&warm);
    h.sandbox.inject(FaultRule::always(
        Fault::Latency { millis: 30_000 },
        Target::Any,
    ));
    // 1,100 calls on ids nobody has: 1,000 wait on the platform, the rest are refused.
    let held = clients(&h, 4).await;
    let (tx, mut refused) = tokio::sync::mpsc::unbounded_channel();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1_100 {
        let mut c = held[i % held.len()].clone();
        let tx = tx.clone();
        calls.spawn(async move {
            let answer = c
                .get_user_token(GetUserTokenRequest {
                    org: "acme".into(),
                    user_id: format!("EMP-9{i:05}"),
                    ..Default::default()
                })
                .await;
            let _ = tx.send(answer.map(|_| ()));
        });
    }
    common::wait_for("the waiting callers' limit full", async || {
        h.broker.stats().waiting_callers == 1_000
    })
    .await;
    assert_eq!(
        h.broker.stats().flights_in_progress,
        64,
        "so is the flight limit"
    );
    // Another client, cached keys: every call answered.
    let mut other = h.new_client().await;
    for _ in 0..200 {
        other
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .expect("a cached org token");
    }
    let again = h.user_tokens((0..200).map(|_| cached_user.clone())).await;
    common::assert_all_ok(&again);
    // The only answers so far: the 100 callers past the waiting limit, refused.
    let mut answers = Vec::new();
    while let Ok(answer) = refused.try_recv() {
        answers.push(answer);
    }
    assert_eq!(answers.len(), 100, "{answers:?}");
    assert!(answers.iter().all(|a| {
        a.as_ref()
            .is_err_and(|s| s.code() == tonic::Code::ResourceExhausted)
    }));
    calls.abort_all();
}
