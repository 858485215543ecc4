//! The sandbox is as strict as the platform: a broker bug must show up here, not in
//! production. Plain HTTP requests, no broker.

mod common;

use common::{Harness, sandbox_config};
use serde_json::Value;
use tokenbroker::sandbox::Sandbox;
use tokio::net::TcpListener;

async fn start() -> Sandbox {
    Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap()
}

async fn post(url: &str, form: &[(&str, &str)], bearer: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).form(form);
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn client_credentials(s: &Sandbox) -> Value {
    let (status, body) = post(
        &s.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "acme-client"),
            ("client_secret", "acme-secret-Zq8+"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn client_secrets_are_checked() {
    let s = start().await;
    let (status, body) = post(
        &s.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "acme-client"),
            ("client_secret", "nope"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let body = client_credentials(&s).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["access_token"].as_str().unwrap().len(), 128);
    let refresh = body["refresh_token"].as_str().unwrap();
    assert!(
        refresh.contains('+') && refresh.contains('/') && refresh.contains('='),
        "{refresh}"
    );
    let stats = s.stats();
    assert_eq!((stats.client_credentials, stats.errors), (2, 1));
}

#[tokio::test]
async fn a_refresh_token_works_once_and_a_second_use_revokes_the_family() {
    let s = start().await;
    let first = client_credentials(&s).await;
    let rt = first["refresh_token"].as_str().unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", "acme-client"),
        ("refresh_token", rt),
    ];
    let (status, second) = post(&s.token_url(), &form, None).await;
    assert_eq!(status, 200, "{second}");
    let (status, again) = post(&s.token_url(), &form, None).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(s.stats().refresh_token_reuse, 1);
    // The whole family is gone: the token from the honest refresh no longer works either.
    let (status, _) = post(
        &s.authorization_grant_url(),
        &[("user_id", "EMP-00001")],
        second["access_token"].as_str(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_refresh_token_sent_unencoded_fails_as_on_the_platform() {
    let s = start().await;
    let rt = client_credentials(&s).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // A client that pastes the token into the body raw: its `+` arrives as a space.
    let raw = format!("grant_type=refresh_token&client_id=acme-client&refresh_token={rt}");
    let response = reqwest::Client::new()
        .post(s.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Sent properly encoded, the same token still works: the raw attempt did not spend it.
    let (status, _) = post(
        &s.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "acme-client"),
            ("refresh_token", &rt),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.stats().refresh_token_reuse, 0);
}

#[tokio::test]
async fn codes_need_a_live_org_token_and_work_once() {
    let s = start().await;
    let org = client_credentials(&s).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = post(
        &s.authorization_grant_url(),
        &[("user_id", "EMP-00002")],
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &s.authorization_grant_url(),
        &[("user_id", "EMP-99999")],
        Some(&org),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = post(
        &s.authorization_grant_url(),
        &[("user_id", "EMP-00002")],
        Some(&org),
    )
    .await;
    assert_eq!(status, 200);
    let code = body["code"].as_str().unwrap();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", "acme-client"),
    ];
    let (status, user) = post(&s.token_url(), &form, None).await;
    assert_eq!(status, 200);
    let (status, _) = post(&s.token_url(), &form, None).await;
    assert_eq!(status, 400);
    assert_eq!(s.stats().code_reuse, 1);
    // A user token cannot ask for codes.
    let (status, _) = post(
        &s.authorization_grant_url(),
        &[("user_id", "EMP-00002")],
        user["access_token"].as_str(),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn one_access_token_can_be_revoked_over_http_and_its_refresh_token_still_works() {
    let s = start().await;
    let first = client_credentials(&s).await;
    let other = client_credentials(&s).await;
    let token = first["access_token"].as_str().unwrap();
    let organization = format!("{}/api/v1/admin/organization", s.base_url());
    let call = |token: String| {
        let url = organization.clone();
        async move {
            let answer = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    assert_eq!(call(token.into()).await, 200);
    let revoke = |token: String| {
        let url = format!("{}/sandbox/revoke", s.base_url());
        async move {
            let answer = reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({ "access_token": token }))
                .send()
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    assert_eq!(revoke(token.into()).await, 204);
    assert_eq!(call(token.into()).await, 401, "the revoked token");
    let other = other["access_token"].as_str().unwrap();
    assert_eq!(call(other.into()).await, 200, "only that token");
    assert_eq!(revoke("never-issued".into()).await, 404);
    let (status, _) = post(
        &s.token_url(),
        &[
            ("grant_type", "refresh_token"),
            ("client_id", "acme-client"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "its refresh token still works");
}

#[tokio::test]
async fn a_user_can_be_removed_over_http() {
    let s = start().await;
    let remove = |user: &str| {
        let url = format!("{}/sandbox/remove-user", s.base_url());
        let body = serde_json::json!({ "org": "acme", "user_id": user });
        async move {
            let answer = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            answer.status().as_u16()
        }
    };
    let org = client_credentials(&s).await;
    let org = org["access_token"].as_str().unwrap();
    let url = s.authorization_grant_url();
    let form = [("user_id", "EMP-00003")];
    assert_eq!(post(&url, &form, Some(org)).await.0, 200);
    assert_eq!(remove("EMP-00003").await, 204);
    let (status, _) = post(&url, &form, Some(org)).await;
    assert_eq!(status, 404, "no new codes for a removed user");
    assert_eq!(remove("EMP-00003").await, 404, "already gone");
}

#[tokio::test]
async fn counters_are_served_for_users_own_tests() {
    let s = start().await;
    client_credentials(&s).await;
    let stats: Value = reqwest::get(format!("{}/sandbox/stats", s.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["client_credentials"], 1);
    assert_eq!(stats["refresh_token_reuse"], 0);
    let _ = Harness::direct_org_token(&s).await;
    assert_eq!(s.stats().client_credentials, 2);
}

#[tokio::test]
async fn faults_can_be_switched_over_http() {
    let s = start().await;
    let http = reqwest::Client::new();
    let faults = format!("{}/sandbox/faults", s.base_url());
    let rule = serde_json::json!({"kind": "status", "status": 503, "target": "client_credentials", "times": 1});
    assert_eq!(
        http.post(&faults)
            .json(&rule)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        204
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "acme-client"),
        ("client_secret", "acme-secret-Zq8+"),
    ];
    assert_eq!(post(&s.token_url(), &form, None).await.0, 503);
    assert_eq!(
        post(&s.token_url(), &form, None).await.0,
        200,
        "the rule was for one request"
    );
    let rule = serde_json::json!({"kind": "rate_limit", "retry_after_secs": 9});
    http.post(&faults).json(&rule).send().await.unwrap();
    let response = http.post(s.token_url()).form(&form).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "9");
    assert_eq!(
        http.delete(&faults).send().await.unwrap().status().as_u16(),
        204
    );
    assert_eq!(post(&s.token_url(), &form, None).await.0, 200);
}
