//! No secret reaches a log: the broker runs through its flows and faults with every log
//! level on, and everything it logged (and every error it answered) is searched for every
//! secret and token the sandbox issued, the client secret and the callers' API key.

mod common;

use common::{Capture, Harness, acme_toml, retry, sandbox_config, with_key};
use tokenbroker::{
    auth::api_key_hash,
    proto::{GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest, WatchTokensRequest},
    sandbox::{Fault, FaultRule, MalformedBody, Target},
};
use tonic::{Request, Status};

const KEY: &str = "audit-key-42bd";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_logged_or_answered_holds_a_secret() {
    let capture = Capture::install("trace");

    let callers = format!(
        "[upstream]\nrequest_timeout = \"300ms\"\n[renewal]\nbackoff_base = \"10ms\"\nbackoff_max = \"20ms\"\ncredentials_retry = \"20ms\"\n\
         [[callers]]\nname = \"payroll\"\napi_key_sha256 = [\"{}\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"user_token\", \"refresh\", \"watch\"]\n",
        api_key_hash(KEY)
    );
    let h = Harness::with(
        sandbox_config(),
        move |s| format!("{callers}\n{}", acme_toml(s)),
        |_| None,
    )
    .await;
    let mut c = h.client.clone();
    let mut answers: Vec<Status> = Vec::new();
    let mut note = |r: Result<(), Status>| {
        if let Err(status) = r {
            answers.push(status);
        }
    };
    let org = || GetOrgTokenRequest {
        org: "acme".into(),
        ..Default::default()
    };
    let user = |id: String| GetUserTokenRequest {
        org: "acme".into(),
        user_id: id,
        ..Default::default()
    };
    let refresh = |user: &str, stale: &str| RefreshRequest {
        org: "acme".into(),
        user_id: user.into(),
        stale_access_token: stale.into(),
    };
    // A rotation of the org token now, naming the one held as stale (a Refresh naming
    // none would be answered from the cache within renewal.min_rotation_interval).
    let rotating = c.clone();
    let rotate = async || {
        let current = rotating
            .clone()
            .get_org_token(with_key(org(), KEY))
            .await
            .ok()
            .and_then(|a| a.into_inner().token)
            .map(|t| t.access_token)
            .unwrap_or_default();
        rotating
            .clone()
            .refresh(with_key(refresh("", &current), KEY))
            .await
    };

    // The flows.
    let mut watch = c
        .watch_tokens(with_key(
            WatchTokensRequest {
                org: "acme".into(),
                user_ids: vec![h.user(1).person_id],
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap();
    let t = c
        .get_org_token(with_key(org(), KEY))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    for i in 1..=3 {
        c.get_user_token(with_key(user(h.user(i).external_id), KEY))
            .await
            .unwrap();
    }
    let u = c
        .get_user_token(with_key(user(h.user(1).person_id), KEY))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    c.refresh(with_key(refresh("", &t.access_token), KEY))
        .await
        .unwrap();
    c.refresh(with_key(refresh(&u.user_id, &u.access_token), KEY))
        .await
        .unwrap();
    watch.message().await.unwrap();

    // The faults.
    h.sandbox.inject(FaultRule::times(
        Fault::DropAfterCommit,
        Target::RefreshToken,
        1,
    ));
    note(rotate().await.map(drop));
    for body in [
        MalformedBody::Html,
        MalformedBody::Garbage,
        MalformedBody::MissingExpiresIn,
    ] {
        h.sandbox.inject(FaultRule::times(
            Fault::Malformed { body },
            Target::Token,
            1,
        ));
        let answer = h.through_the_faults(async || rotate().await).await;
        note(answer.map(drop));
    }
    h.sandbox.inject(FaultRule::times(
        Fault::Status { status: 503 },
        Target::AuthorizationGrant,
        1,
    ));
    note(
        c.get_user_token(with_key(user(h.user(9).person_id), KEY))
            .await
            .map(drop),
    );
    h.sandbox
        .inject(FaultRule::times(Fault::Hang, Target::Any, 1));
    let answer = h
        .through_the_faults(async || {
            let request = with_key(user(h.user(10).person_id), KEY);
            c.clone().get_user_token(request).await
        })
        .await;
    note(answer.map(drop));
    // Asked of the platform (not answered from a hold the hang left on the org token).
    let grants = h.sandbox.stats().authorization_grant;
    let answer = retry("the unknown user asked of the platform", async || {
        let request = with_key(user("no-such-user".into()), KEY);
        let answer = c.clone().get_user_token(request).await;
        if h.sandbox.stats().authorization_grant > grants {
            Ok(answer)
        } else {
            Err(answer)
        }
    })
    .await;
    note(answer.map(drop));
    note(c.get_org_token(Request::new(org())).await.map(drop));
    let mut wrong = with_key(org(), KEY);
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-key".parse().unwrap());
    note(c.get_org_token(wrong).await.map(drop));
    h.sandbox.revoke_client("acme-client");
    note(rotate().await.map(drop));
    common::wait_for("the revoked client's refusal logged", async || {
        capture.text().contains("invalid_client")
    })
    .await;
    // The refresh faults were absorbed (re-issued through client credentials); these were not.
    assert!(answers.len() >= 6, "{answers:?}");

    let mut secrets = h.sandbox.issued_secrets();
    assert!(
        secrets.len() > 20,
        "the run issued tokens, refresh tokens and codes"
    );
    secrets.push(h.sandbox.config().orgs[0].client_secret.clone());
    secrets.push(KEY.to_owned());
    let logged = capture.text();
    assert!(logged.len() > 10_000, "the run logged at every level");
    let answered: String = answers.iter().map(|s| format!("{s:?}\n")).collect();
    for secret in &secrets {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.as_str(), encoded.as_str()] {
            assert!(
                !logged.contains(form),
                "a secret was logged: {}…",
                &secret[..6]
            );
            assert!(
                !answered.contains(form),
                "a secret was answered: {}…",
                &secret[..6]
            );
        }
    }

    // One audit event per token handed out, with the fields that tell who got what.
    let audit: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("token handed out"))
        .collect();
    assert!(audit.len() >= 9, "{}", audit.len());
    for field in [
        "caller=\"payroll\"",
        "rpc=\"GetUserToken\"",
        "rpc=\"WatchTokens\"",
        // The rotation the watch stream carried: audited once, for the caller's one stream.
        "streams=1",
        "rpc=\"Refresh\"",
        "org=acme",
        "fingerprint=",
        "generation=2",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(field)),
            "no audit line with {field}"
        );
    }
}
