//! What a platform team operates: liveness and readiness for Kubernetes probes, Prometheus
//! metrics, several client secrets for rotation, `check-config`, and JSON logs.

mod common;

use std::{process::Command, time::Duration};

use common::{Harness, acme_toml, org_request, sandbox_config, wait_for, with_key};
use tokenbroker::{
    proto::{GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest, WatchTokensRequest},
    sandbox::{Fault, FaultRule, Target},
};
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

async fn health(h: &Harness, service: &str) -> ServingStatus {
    let channel = Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

async fn until_health(h: &Harness, service: &str, want: ServingStatus) {
    let what = format!("{service:?} to become {want:?}");
    wait_for(&what, async || health(h, service).await == want).await;
}

#[tokio::test]
async fn readiness_waits_for_every_org_token_and_liveness_does_not() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    assert_eq!(health(&h, "").await, ServingStatus::Serving);
    assert_eq!(h.sandbox.stats().upstream_requests(), 0, "nothing fetched");
    assert_eq!(
        health(&h, "tokenbroker.v1.TokenService").await,
        ServingStatus::NotServing,
        "no org token yet"
    );
    h.client
        .clone()
        .get_org_token(org_request("acme"))
        .await
        .unwrap();
    until_health(&h, "tokenbroker.v1.TokenService", ServingStatus::Serving).await;
}

#[tokio::test]
async fn prefetching_makes_the_broker_ready_without_a_call_and_readiness_flips_when_a_token_is_lost()
 {
    let mut sandbox = sandbox_config();
    sandbox.token_lifetime = Duration::from_secs(2);
    let h = Harness::with_extra(sandbox, "[cache]\nprefetch_org_tokens = true\n[renewal]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n").await;
    until_health(&h, "tokenbroker.v1.TokenService", ServingStatus::Serving).await;
    assert_eq!(
        h.sandbox.stats().client_credentials,
        1,
        "fetched at start, not on a call"
    );
    h.sandbox.inject(FaultRule::always(
        Fault::Status { status: 503 },
        Target::Any,
    ));
    until_health(&h, "tokenbroker.v1.TokenService", ServingStatus::NotServing).await;
    assert_eq!(
        health(&h, "").await,
        ServingStatus::Serving,
        "alive all along"
    );
    h.sandbox.clear_faults();
    until_health(&h, "tokenbroker.v1.TokenService", ServingStatus::Serving).await;
}

#[tokio::test]
async fn metrics_count_calls_cache_upstream_rotations_streams_and_expiry() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokenbroker::serve_metrics(
        std::sync::Arc::clone(&h.registry),
        listener,
        std::future::pending(),
    ));
    let mut c = h.client.clone();
    let org = c.get_org_token(org_request("acme")).await.unwrap();
    let org = org.into_inner().token.unwrap();
    c.get_org_token(org_request("acme")).await.unwrap();
    c.get_user_token(GetUserTokenRequest {
        org: "acme".into(),
        user_id: h.user(1).person_id,
        ..Default::default()
    })
    .await
    .unwrap();
    c.refresh(RefreshRequest {
        org: "acme".into(),
        stale_access_token: org.access_token,
        ..Default::default()
    })
    .await
    .unwrap();
    c.get_org_token(GetOrgTokenRequest {
        org: "nope".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    let _watch = c
        .watch_tokens(WatchTokensRequest {
            org: "acme".into(),
            user_ids: vec![],
        })
        .await
        .unwrap();

    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tokenbroker_rpc_requests_total{method=\"GetOrgToken\",code=\"Ok\"} 2",
        "tokenbroker_rpc_requests_total{method=\"GetOrgToken\",code=\"NotFound\"} 1",
        "tokenbroker_rpc_requests_total{method=\"Refresh\",code=\"Ok\"} 1",
        "tokenbroker_upstream_requests_total{grant=\"client_credentials\",outcome=\"ok\"} 1",
        "tokenbroker_upstream_requests_total{grant=\"authorization_grant\",outcome=\"ok\"} 1",
        "tokenbroker_upstream_requests_total{grant=\"refresh_token\",outcome=\"ok\"} 1",
        "tokenbroker_rotations_total{reason=\"forced\"} 1",
        "tokenbroker_rotations_total{reason=\"issued\"} 2",
        "tokenbroker_cache_hits_total 2",
        "tokenbroker_watch_streams 1",
        "tokenbroker_user_tokens_held 1",
        "tokenbroker_rpc_duration_seconds_count{method=\"GetUserToken\"} 1",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    let expiry = text
        .lines()
        .find(|l| l.starts_with("tokenbroker_org_token_expiry_seconds{org=\"acme\"}"))
        .expect("org expiry gauge");
    let seconds: f64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((3500.0..=3600.0).contains(&seconds), "{expiry}");
}

#[tokio::test]
async fn several_client_secrets_are_tried_in_order_and_the_working_one_is_kept() {
    let h = Harness::with(
        sandbox_config(),
        |s| {
            acme_toml(s).replace(
                "client_secret_env = \"ACME_SECRET\"",
                "client_secret_env = [\"OLD_SECRET\", \"ACME_SECRET\"]",
            )
        },
        |name| (name == "OLD_SECRET").then(|| "retired-secret".to_owned()),
    )
    .await;
    let mut c = h.client.clone();
    let first = c.get_org_token(org_request("acme")).await.unwrap();
    let first = first.into_inner().token.unwrap();
    assert_eq!(
        h.sandbox.stats().client_credentials,
        2,
        "the first secret was refused, the second worked"
    );
    // The next primary grant starts with the secret that worked.
    h.sandbox.revoke_refresh_tokens();
    c.refresh(RefreshRequest {
        org: "acme".into(),
        stale_access_token: first.access_token,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(h.sandbox.stats().client_credentials, 3);
}

/// check-config prints TOML the broker accepts: fed back to check-config, the same text
/// comes out, and no secret is in it (an org's secret is shown by the file or variable
/// it comes from).
#[test]
fn check_config_prints_the_effective_config_as_toml_that_loads_back_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "very-secret-value\n").unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(
        &path,
        "[metrics]\nlisten = \"127.0.0.1:9090\"\n\
         [[callers]]\nname = \"payroll\"\napi_key_sha256 = [\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\norgs = [\"acme\"]\npermissions = [\"org_token\", \"watch\"]\nrate_limit_per_second = 5\n\
         [orgs.acme]\nenvironment = \"production\"\nclient_id = \"acme-id\"\nclient_secret_file = \"secret\"\n\
         [orgs.globex]\nenvironment = \"sandbox\"\nclient_id = \"globex-id\"\nclient_secret_env = [\"GLOBEX_NEW\", \"GLOBEX_OLD\"]\n",
    )
    .unwrap();
    let check = |path: &std::path::Path| {
        let output = Command::new(BIN)
            .args(["check-config", "--config", path.to_str().unwrap()])
            .env("GLOBEX_NEW", "new-secret-value")
            .env("GLOBEX_OLD", "old-secret-value")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let shown = check(&path);
    assert!(
        shown.contains("[orgs.acme]")
            && shown.contains("client_secret_file = [\"secret\"]")
            && shown.contains("client_secret_env = [\"GLOBEX_NEW\", \"GLOBEX_OLD\"]"),
        "{shown}"
    );
    assert!(
        shown.contains("request_timeout = \"10s\"") && shown.contains("max_user_tokens = 100000"),
        "{shown}"
    );
    assert!(!shown.contains("secret-value"), "{shown}");
    // Fed back (beside the same secret file), it loads as the same config.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &shown).unwrap();
    assert_eq!(check(&again), shown);

    std::fs::write(&path, "[orgs.acme]\nenvironment = \"staging\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("environment"));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let done = json["fields"]["message"] == "tokenbroker listening";
        seen.push(json);
        if done {
            break;
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    assert!(
        seen.iter()
            .all(|j| j["level"].is_string() && j["timestamp"].is_string())
    );
}

fn with_caller(
    key: &str,
    sandbox: &tokenbroker::sandbox::Sandbox,
    extra_org: Option<&str>,
) -> String {
    let mut toml = format!(
        "[[callers]]\nname = \"svc\"\napi_key_sha256 = [\"{}\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"refresh\", \"watch\"]\n{}",
        tokenbroker::auth::api_key_hash(key),
        acme_toml(sandbox)
    );
    if let Some(name) = extra_org {
        toml.push_str(&format!(
            "[orgs.{name}]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = [\"RETIRED\", \"ACME_SECRET\"]\n",
            sandbox.token_url(),
            sandbox.authorization_grant_url()
        ));
    }
    toml
}

#[tokio::test]
async fn a_reload_adds_and_removes_orgs_and_swaps_callers_while_streams_of_kept_orgs_stay_open() {
    let h = Harness::with(
        sandbox_config(),
        |s| with_caller("key-one", s, None),
        |_| None,
    )
    .await;
    let mut c = h.client.clone();
    let mut acme_watch = c
        .watch_tokens(with_key(
            WatchTokensRequest {
                org: "acme".into(),
                user_ids: vec![],
            },
            "key-one",
        ))
        .await
        .unwrap()
        .into_inner();
    let first = acme_watch.message().await.unwrap().unwrap().token.unwrap();

    let env = |n: &str| match n {
        "ACME_SECRET" => Some(h.sandbox.config().orgs[0].client_secret.clone()),
        "RETIRED" => Some("retired".to_owned()),
        _ => None,
    };
    let parse = |text: String| {
        let mut config =
            tokenbroker::config::Config::parse(&text, &env, std::path::Path::new(".")).unwrap();
        config.cache.prefetch_org_tokens = false; // as the harness started it
        config
    };
    let restart = h
        .reloader
        .apply(parse(with_caller("key-two", &h.sandbox, Some("globex"))))
        .await;
    assert!(restart.is_empty(), "{restart:?}");

    assert_eq!(
        c.get_org_token(with_key(org_request("acme"), "key-one"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
    let globex = GetOrgTokenRequest {
        org: "globex".into(),
        ..Default::default()
    };
    assert_eq!(
        c.get_org_token(with_key(globex.clone(), "key-two"))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap()
            .org,
        "globex"
    );
    let mut globex_watch = c
        .watch_tokens(with_key(
            WatchTokensRequest {
                org: "globex".into(),
                user_ids: vec![],
            },
            "key-two",
        ))
        .await
        .unwrap()
        .into_inner();
    globex_watch.message().await.unwrap();

    // The acme stream opened before the reload is still there and still gets rotations.
    c.refresh(with_key(
        RefreshRequest {
            org: "acme".into(),
            stale_access_token: first.access_token,
            ..Default::default()
        },
        "key-two",
    ))
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), acme_watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.token.unwrap().generation, 2);

    // Removing globex tells its watchers and refuses it from then on.
    h.reloader
        .apply(parse(with_caller("key-two", &h.sandbox, None)))
        .await;
    let m = tokio::time::timeout(Duration::from_secs(5), globex_watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.reason(), tokenbroker::proto::TokenEventReason::Revoked);
    assert!(m.detail.contains("removed"), "{}", m.detail);
    assert_eq!(
        c.get_org_token(with_key(globex, "key-two"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
}

#[tokio::test]
async fn sighup_and_a_changed_file_reload_the_config_and_a_bad_one_is_refused() {
    let sandbox = tokenbroker::sandbox::Sandbox::start(
        sandbox_config(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("secret"),
        &sandbox.config().orgs[0].client_secret,
    )
    .unwrap();
    let org_toml = |name: &str| {
        format!(
            "[orgs.{name}]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_file = \"secret\"\n",
            sandbox.token_url(),
            sandbox.authorization_grant_url()
        )
    };
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, org_toml("acme")).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    let line = wait_for("tokenbroker listening");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .to_owned();
    let mut c = tokenbroker::proto::token_service_client::TokenServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    .unwrap();
    let ask = |org: &str| GetOrgTokenRequest {
        org: org.into(),
        ..Default::default()
    };
    assert!(c.get_org_token(ask("acme")).await.is_ok());
    assert_eq!(
        c.get_org_token(ask("globex")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    std::fs::write(
        &path,
        format!("{}\n{}", org_toml("acme"), org_toml("globex")),
    )
    .unwrap();
    let hup = |child: &std::process::Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    hup(&child);
    wait_for("config reloaded");
    assert_eq!(
        c.get_org_token(ask("globex"))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap()
            .org,
        "globex"
    );

    std::fs::write(&path, "[orgs.acme]\nenvironment = \"nowhere\"\n").unwrap();
    hup(&child);
    wait_for("config reload refused");
    assert!(
        c.get_org_token(ask("globex")).await.is_ok(),
        "the running config stays"
    );

    // A secret path that is a FIFO (opening it would block forever): refused, nothing
    // freezes, the running config stays.
    let fifo = dir.path().join("fifo");
    common::mkfifo(&fifo);
    std::fs::write(
        &path,
        format!(
            "{}
{}",
            org_toml("acme"),
            org_toml("globex")
        )
        .replacen(
            "client_secret_file = \"secret\"",
            "client_secret_file = \"fifo\"",
            1,
        ),
    )
    .unwrap();
    hup(&child);
    let refused = wait_for("config reload refused");
    assert!(refused.contains("not a regular file"), "{refused}");
    assert!(c.get_org_token(ask("globex")).await.is_ok());

    // Without a signal: the file's change is noticed.
    std::fs::write(&path, org_toml("acme")).unwrap();
    wait_for("config reloaded");
    assert_eq!(
        c.get_org_token(ask("globex")).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    drop(c);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
