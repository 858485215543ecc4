//! After an org-token outage, user keys come back with the org: an attempt blocked on the
//! org token is not the user key's own failure, so its backoff does not grow while the org
//! is down, and it retries (jittered) as soon as the org may.

mod common;

use std::time::{Duration, Instant};

use common::{Capture, Harness};
use tokenbroker::{
    proto::{GetOrgTokenRequest, GetUserTokenRequest},
    sandbox::{Fault, FaultRule, Target},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_keys_blocked_on_the_org_token_do_not_back_off_and_recover_with_it() {
    let capture = Capture::install("info");
    let h = Harness::start().await;
    let user = h.user(2).person_id;
    let mut client = h.client.clone();
    let ask = move |mut c: tokenbroker::proto::token_service_client::TokenServiceClient<_>,
                    user: String| async move {
        c.get_user_token(GetUserTokenRequest {
            user_id: user,
            ..Default::default()
        })
        .await
    };
    // The org token the broker holds is revoked, and no new one can be had.
    h.sandbox.revoke_access_tokens();
    h.sandbox.inject(FaultRule::always(
        Fault::Status { status: 503 },
        Target::ClientCredentials,
    ));
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        let answer = ask(client.clone(), user.clone()).await;
        assert_eq!(
            answer.expect_err("no org token").code(),
            tonic::Code::Unavailable
        );
        // The callers' pace during the outage.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = capture.text();
    let key = format!("user \"{user}\" of org acme");
    let user_lines: Vec<&str> = log.lines().filter(|l| l.contains(&key)).collect();
    assert!(
        user_lines
            .iter()
            .any(|l| l.contains("waiting for the org token")),
        "{user_lines:#?}"
    );
    assert!(
        !user_lines
            .iter()
            .any(|l| l.contains("could not obtain a token")),
        "a blocked attempt is not counted as the user's failure: {user_lines:#?}"
    );
    // The platform is back: once the org token is, the user's is within its jitter.
    h.sandbox.clear_faults();
    let back = Instant::now();
    while client
        .get_org_token(GetOrgTokenRequest::default())
        .await
        .is_err()
    {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "the org token never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let org_back = Instant::now();
    loop {
        match ask(client.clone(), user.clone()).await {
            Ok(_) => break,
            Err(e) => assert!(
                org_back.elapsed() < Duration::from_secs(2),
                "the user token still fails {:?} after the org token came back: {e}",
                org_back.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}
