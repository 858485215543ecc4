//! TokenService end to end: the sandbox platform and the broker over real sockets, driven
//! by a real tonic client.

mod common;

use std::collections::HashSet;

use common::{Harness, acme_toml, org_request, refresh_request, sandbox_config, user_request};
use futures::future::join_all;
use tokenbroker::proto::{TokenEventReason, WatchTokensRequest};
use tokenbroker::sandbox::Sandbox;
use tokio::net::TcpListener;
use tonic::Code;

#[tokio::test]
async fn org_token_is_fetched_once_cached_and_accepted_by_the_platform() {
    let h = Harness::start().await;
    let first = h.org_token().await.unwrap();
    assert_eq!(first.org, "acme");
    assert_eq!(first.user_id, "");
    assert_eq!(first.generation, 1);
    assert_eq!(first.token_type, "Bearer");
    let (issued, expires) = (first.issued_at.unwrap(), first.expires_at.unwrap());
    assert_eq!(expires.seconds - issued.seconds, 3600);
    // The empty org names the only one configured.
    let again = h
        .client
        .clone()
        .get_org_token(org_request(""))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(again, first);
    let stats = h.sandbox.stats();
    assert_eq!(
        (stats.client_credentials, stats.upstream_requests()),
        (1, 1)
    );

    let (status, body) = h
        .call_api("/api/v1/admin/organization", &first.access_token)
        .await;
    assert_eq!((status, body["organization"].as_str()), (200, Some("acme")));
    h.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_cold_calls_make_one_upstream_request() {
    let h = Harness::start().await;
    let clients = [
        h.client.clone(),
        h.new_client().await,
        h.new_client().await,
        h.new_client().await,
    ];
    let calls = (0..1000).map(|i| {
        let mut client = clients[i % clients.len()].clone();
        async move {
            client
                .get_org_token(org_request("acme"))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
        }
    });
    let tokens = join_all(calls).await;
    let distinct: HashSet<_> = tokens.iter().map(|t| t.access_token.clone()).collect();
    assert_eq!(distinct.len(), 1);
    assert_eq!(h.sandbox.stats().upstream_requests(), 1);
}

#[tokio::test]
async fn user_tokens_act_as_the_user_by_person_id_or_external_source_id() {
    let h = Harness::start().await;
    let user = h.user(7);
    let by_person = h.user_token(&user.person_id).await.unwrap();
    assert_eq!(
        (
            by_person.org.as_str(),
            by_person.user_id.as_str(),
            by_person.generation
        ),
        ("acme", user.person_id.as_str(), 1)
    );
    let (status, me) = h
        .call_api("/api/v1/expense/me", &by_person.access_token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["personId"], user.person_id.as_str());

    let by_external = h.user_token(&user.external_id).await.unwrap();
    assert_eq!(by_external.user_id, user.external_id);
    let (_, me) = h
        .call_api("/api/v1/expense/me", &by_external.access_token)
        .await;
    assert_eq!(me["externalSourceId"], user.external_id.as_str());
    assert_eq!(me["personId"], user.person_id.as_str());

    // The org token is not a user token: the Expense API refuses it.
    let (status, _) = h
        .call_api(
            "/api/v1/expense/me",
            &h.org_token().await.unwrap().access_token,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn many_callers_over_fifty_users_cost_fifty_grants_and_fifty_exchanges() {
    let h = Harness::start().await;
    let users: Vec<String> = (1..=50).map(|i| h.user(i).person_id).collect();
    let clients = [h.client.clone(), h.new_client().await];
    let calls = (0..1000).map(|i| {
        let mut client = clients[i % 2].clone();
        let user = users[i % users.len()].clone();
        async move {
            let token = client
                .get_user_token(user_request(&user))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap();
            assert_eq!(token.user_id, user);
            token
        }
    });
    let tokens = join_all(calls).await;
    let distinct: HashSet<_> = tokens.iter().map(|t| t.access_token.clone()).collect();
    assert_eq!(distinct.len(), 50);
    let stats = h.sandbox.stats();
    assert_eq!(
        (
            stats.client_credentials,
            stats.authorization_grant,
            stats.authorization_code
        ),
        (1, 50, 50)
    );
    for token in tokens.iter().step_by(97) {
        h.assert_acts_as(&token.access_token, &token.user_id).await;
    }
}

#[tokio::test]
async fn refresh_rotates_through_the_refresh_token_and_bumps_the_generation() {
    let h = Harness::start().await;
    let first = h.org_token().await.unwrap();
    let second = h.refresh("", &first.access_token).await.unwrap();
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.generation, 2);
    assert_eq!(
        h.org_token().await.unwrap(),
        second,
        "the rotated token is the cached one"
    );
    let stats = h.sandbox.stats();
    assert_eq!((stats.client_credentials, stats.refresh_token), (1, 1));

    let user = h.user(3).external_id;
    let u1 = h.user_token(&user).await.unwrap();
    let u2 = h.refresh(&user, &u1.access_token).await.unwrap();
    assert_ne!(u2.access_token, u1.access_token);
    assert_eq!((u2.generation, u2.user_id.as_str()), (2, user.as_str()));
    h.assert_acts_as(&u2.access_token, &user).await;
    let stats = h.sandbox.stats();
    assert_eq!((stats.refresh_token, stats.authorization_grant), (2, 1));
}

#[tokio::test]
async fn three_hundred_concurrent_refreshes_of_one_stale_token_cost_one_rotation() {
    let h = Harness::start().await;
    let stale = h.org_token().await.unwrap();
    let clients = [h.client.clone(), h.new_client().await, h.new_client().await];
    let calls = (0..300).map(|i| {
        let mut client = clients[i % 3].clone();
        let stale = stale.access_token.clone();
        async move {
            client
                .refresh(refresh_request("", &stale))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
        }
    });
    let tokens = join_all(calls).await;
    assert!(
        tokens.iter().all(|t| t == &tokens[0] && t.generation == 2),
        "every caller gets the one new token"
    );
    assert_ne!(tokens[0].access_token, stale.access_token);
    let stats = h.sandbox.stats();
    assert_eq!((stats.client_credentials, stats.refresh_token), (1, 1));
}

#[tokio::test]
async fn refresh_naming_an_already_replaced_token_costs_no_upstream_call() {
    let h = Harness::start().await;
    let old = h.org_token().await.unwrap();
    let new = h.refresh("", &old.access_token).await.unwrap();
    let before = h.sandbox.stats().upstream_requests();
    let late = h.refresh("", &old.access_token).await.unwrap();
    assert_eq!(late, new);
    assert_eq!(h.sandbox.stats().upstream_requests(), before);
}

#[tokio::test]
async fn a_rejected_refresh_token_is_replaced_through_the_primary_grant() {
    let h = Harness::start().await;
    let user = h.user(1).person_id;
    let org1 = h.org_token().await.unwrap();
    let user1 = h.user_token(&user).await.unwrap();
    h.sandbox.revoke_refresh_tokens();

    let org2 = h.refresh("", &org1.access_token).await.unwrap();
    assert_eq!(org2.generation, 2);
    let user2 = h.refresh(&user, &user1.access_token).await.unwrap();
    assert_eq!(user2.generation, 2);
    h.assert_acts_as(&user2.access_token, &user).await;

    let stats = h.sandbox.stats();
    // One refresh attempt each (refused), then client credentials again for the org and a
    // new authorization grant for the user.
    assert_eq!(stats.refresh_token, 2);
    assert_eq!(stats.client_credentials, 2);
    assert_eq!(
        (stats.authorization_grant, stats.authorization_code),
        (2, 2)
    );
}

#[tokio::test]
async fn a_revoked_org_token_is_rotated_once_when_the_grant_endpoint_answers_401() {
    let h = Harness::start().await;
    let org1 = h.org_token().await.unwrap();
    h.sandbox.revoke_access_tokens();
    let users: Vec<String> = (1..=20).map(|i| h.user(i).person_id).collect();
    let calls = users.iter().map(|u| {
        let mut client = h.client.clone();
        let u = u.clone();
        async move {
            client
                .get_user_token(user_request(&u))
                .await
                .unwrap()
                .into_inner()
                .token
                .unwrap()
        }
    });
    let tokens = join_all(calls).await;
    assert_eq!(tokens.len(), 20);
    let org2 = h.org_token().await.unwrap();
    assert_ne!(org2.access_token, org1.access_token);
    assert_eq!(org2.generation, 2);
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.refresh_token, 1,
        "twenty users saw the dead org token; it was rotated once"
    );
    assert_eq!(stats.authorization_code, 20);
}

#[tokio::test]
async fn watch_sends_the_current_token_then_every_rotation() {
    let h = Harness::start().await;
    let mut stream = h
        .client
        .clone()
        .watch_tokens(WatchTokensRequest {
            org: "acme".into(),
            user_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let initial = stream.message().await.unwrap().unwrap();
    assert_eq!(initial.reason(), TokenEventReason::Initial);
    let t1 = initial.token.unwrap();
    assert_eq!(t1.generation, 1);

    let t2 = h.refresh("", &t1.access_token).await.unwrap();
    let rotated = stream.message().await.unwrap().unwrap();
    assert_eq!(rotated.reason(), TokenEventReason::Forced);
    assert_eq!(rotated.token.unwrap(), t2);

    h.sandbox.revoke_refresh_tokens();
    let t3 = h.refresh("", &t2.access_token).await.unwrap();
    let reissued = stream.message().await.unwrap().unwrap();
    assert_eq!(reissued.reason(), TokenEventReason::Reissued);
    assert_eq!(reissued.token.unwrap(), t3);
    assert_eq!(t3.generation, 3);
}

#[tokio::test]
async fn watch_of_users_sends_one_initial_token_per_user() {
    let h = Harness::start().await;
    let (a, b) = (h.user(1).person_id, h.user(2).external_id);
    let mut stream = h
        .client
        .clone()
        .watch_tokens(WatchTokensRequest {
            org: String::new(),
            user_ids: vec![a.clone(), b.clone(), a.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..2 {
        let m = stream.message().await.unwrap().unwrap();
        assert_eq!(m.reason(), TokenEventReason::Initial);
        let token = m.token.unwrap();
        seen.insert(token.user_id.clone(), token);
    }
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        HashSet::from([a.clone(), b.clone()])
    );
    let stats = h.sandbox.stats();
    assert_eq!(
        stats.authorization_code, 2,
        "a user listed twice is watched once"
    );

    let rotated = h.refresh(&b, &seen[&b].access_token).await.unwrap();
    let m = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (m.reason(), m.token.unwrap()),
        (TokenEventReason::Forced, rotated)
    );
}

async fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("expected an error");
    (status.code(), status.message().to_owned())
}

#[tokio::test]
async fn bad_arguments_are_invalid_argument_or_not_found() {
    let h = Harness::start().await;
    let mut c = h.client.clone();
    let (code, message) = code_of(c.get_org_token(org_request("globex")).await).await;
    assert_eq!(code, Code::NotFound);
    assert!(
        message.contains("globex") && message.contains("acme"),
        "{message}"
    );

    let (code, message) = code_of(c.get_user_token(user_request("")).await).await;
    assert_eq!(
        (code, message.as_str()),
        (Code::InvalidArgument, "user_id is required")
    );
    let (code, message) = code_of(c.get_user_token(user_request(&"u".repeat(257))).await).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("256"), "{message}");
    assert!(
        c.get_user_token(user_request(&"u".repeat(256)))
            .await
            .is_err_and(|s| s.code() == Code::NotFound)
    );
    let (code, _) = code_of(c.get_user_token(user_request("bad\u{1}id")).await).await;
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(c.get_org_token(org_request(&"o".repeat(300))).await).await;
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(
        c.watch_tokens(WatchTokensRequest {
            org: "acme".into(),
            user_ids: vec!["ok".into(), String::new()],
        })
        .await,
    )
    .await;
    assert_eq!(code, Code::InvalidArgument);

    let (code, message) = code_of(c.get_user_token(user_request("no-such-user")).await).await;
    assert_eq!(code, Code::NotFound);
    assert!(
        message.contains("no-such-user") && message.contains("ExternalSourceID"),
        "{message}"
    );
    let (code, _) = code_of(c.refresh(refresh_request("no-such-user", "")).await).await;
    assert_eq!(code, Code::NotFound);
    // The service keeps serving after every refusal.
    assert_eq!(h.org_token().await.unwrap().generation, 1);
}

#[tokio::test]
async fn an_empty_org_is_refused_when_several_are_configured() {
    let h = Harness::with(
        sandbox_config(),
        |s| format!("{}\n[orgs.other]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"x\"\nclient_secret_env = \"ACME_SECRET\"\n", acme_toml(s), s.token_url(), s.authorization_grant_url()),
        |_| None,
    )
    .await;
    let (code, message) = code_of(h.client.clone().get_org_token(org_request("")).await).await;
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("acme, other"), "{message}");
    assert_eq!(h.org_token().await.unwrap().org, "acme");
}

#[tokio::test]
async fn rejected_credentials_are_failed_precondition_and_never_leak_the_secret() {
    let h = Harness::with(sandbox_config(), acme_toml, |name| {
        (name == "ACME_SECRET").then(|| "wrong-secret-4711".to_owned())
    })
    .await;
    let mut c = h.client.clone();
    let (code, message) = code_of(c.get_org_token(org_request("acme")).await).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("invalid_client") && message.contains("credentials"),
        "{message}"
    );
    assert!(!message.contains("wrong-secret-4711"));
    let (code, _) = code_of(c.get_user_token(user_request(&h.user(1).person_id)).await).await;
    assert_eq!(code, Code::FailedPrecondition);
}

#[tokio::test]
async fn an_unreachable_platform_is_unavailable() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = Harness::with(
        sandbox_config(),
        move |_| format!("[orgs.acme]\ntoken_url = \"http://{closed}/oauth/token\"\nauthorization_grant_url = \"http://{closed}/oauth/authorization-grant\"\nclient_id = \"acme-client\"\nclient_secret_env = \"ACME_SECRET\"\n"),
        |_| None,
    )
    .await;
    let (code, message) = code_of(h.client.clone().get_org_token(org_request("acme")).await).await;
    assert_eq!(code, Code::Unavailable);
    assert!(
        message.contains("could not reach the platform"),
        "{message}"
    );
}

fn static_toml(sandbox: &tokenbroker::sandbox::Sandbox) -> String {
    format!(
        "[orgs.acme]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nstatic_token_env = \"ACME_KEY\"\n",
        sandbox.token_url(),
        sandbox.authorization_grant_url()
    )
}

#[tokio::test]
async fn a_long_lived_token_is_handed_out_as_is_and_is_the_bearer_of_user_grants() {
    let sandbox = Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    // The long-lived token: an org token the platform issued, as an API key would be.
    let key = Harness::direct_org_token(&sandbox).await;
    let text = static_toml(&sandbox);
    let h = Harness::on(sandbox, &text, move |name| {
        (name == "ACME_KEY").then(|| key.clone())
    })
    .await;
    let token = h.org_token().await.unwrap();
    assert!(token.expires_at.is_none());
    assert_eq!(token.generation, 1);
    let (code, message) = code_of(h.client.clone().refresh(refresh_request("", "")).await).await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("long-lived"), "{message}");

    let user = h.user(5);
    let u = h.user_token(&user.person_id).await.unwrap();
    h.assert_acts_as(&u.access_token, &user.person_id).await;
    let stats = h.sandbox.stats();
    assert_eq!(
        (stats.client_credentials, stats.refresh_token),
        (1, 0),
        "only the test itself used client credentials"
    );
}

#[tokio::test]
async fn a_long_lived_token_the_platform_refuses_is_failed_precondition() {
    let sandbox = Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let text = static_toml(&sandbox);
    let h = Harness::on(sandbox, &text, |name| {
        (name == "ACME_KEY").then(|| "revoked-api-key".to_owned())
    })
    .await;
    let (code, message) = code_of(
        h.client
            .clone()
            .get_user_token(user_request(&h.user(1).person_id))
            .await,
    )
    .await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(
        message.contains("401") && !message.contains("revoked-api-key"),
        "{message}"
    );
    assert_eq!(
        h.sandbox.stats().authorization_grant,
        1,
        "a long-lived token is not rotated and retried"
    );
}
