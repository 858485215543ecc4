//! The `tokenbroker` binary as a user runs it: demo mode with no config, a real SIGTERM,
//! and a broken config refused with the key at fault.

mod common;

use std::{
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::read_until;
use tokenbroker::{
    proto::{GetOrgTokenRequest, GetUserTokenRequest, token_service_client::TokenServiceClient},
    sandbox::SandboxConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

/// Starts the binary and returns it with a receiver of its stderr lines.
fn spawn(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("TOKENBROKER_CONFIG")
        .env("RUST_LOG", "info")
        // The sandbox's published demo secret, for configs that name it.
        .env("DEMO_SECRET", "demo-secret")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rx = common::stderr_lines(&mut child);
    (child, rx)
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn demo_mode_serves_tokens_with_no_config_and_stops_cleanly_on_sigterm() {
    let (mut child, rx) = spawn(&["demo", "--listen", "127.0.0.1:0"]);
    let lines = read_until(&rx, "tokenbroker listening");
    let all = lines.join("\n");
    assert!(
        all.contains("demo mode") && all.contains("grpcurl -plaintext"),
        "{all}"
    );
    let listening = lines.last().unwrap();
    let addr = listening
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr in {listening}"));

    let mut client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let org = client
        .get_org_token(GetOrgTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!((org.org.as_str(), org.generation), ("demo", 1));
    let user = SandboxConfig::demo().orgs[0].users()[0].clone();
    let request = GetUserTokenRequest {
        org: String::new(),
        user_id: user.external_id.clone(),
        ..Default::default()
    };
    let token = client
        .get_user_token(request)
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.user_id, user.external_id);
    // The proxy the usage names adds the org's token to a plain HTTP request.
    let proxied = all
        .split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/api/v1/admin/organization"))
        .unwrap_or_else(|| panic!("no proxy URL in {all}"));
    let answer: serde_json::Value = reqwest::get(proxied).await.unwrap().json().await.unwrap();
    assert_eq!(answer["organization"], "demo", "{answer}");

    // An idle client closes its connection when the server says it is going away.
    drop(client);
    sigterm(&child);
    // Wait off the runtime's thread, so the client's connection can close meanwhile.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    let log = format!("{all}\n{}", rest.join("\n"));
    assert!(log.contains("SIGTERM"), "{log}");
    // Tokens are logged only by fingerprint.
    assert!(!log.contains(&org.access_token) && !log.contains(&token.access_token));
    assert!(log.contains("fingerprint="), "{log}");
}

#[test]
fn a_broken_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "[orgs.acme]\nenvironment = \"production\"\nclient_id = \"x\"\nclient_secret = \"hunter2\"\n").unwrap();
    let output = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("orgs.acme.client_secret") && stderr.contains("client_secret_env"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let missing = Command::new(BIN)
        .env("TOKENBROKER_CONFIG", dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read config file"));

    // check-config on a secret file that is a FIFO (whose open would block forever): an
    // answer at once, naming the key.
    let fifo = dir.path().join("secret");
    common::mkfifo(&fifo);
    std::fs::write(&path, "[orgs.acme]\nenvironment = \"production\"\nclient_id = \"x\"\nclient_secret_file = \"secret\"\n").unwrap();
    let mut check = Command::new(BIN)
        .args(["check-config", "--config", path.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = check.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = check.kill();
            panic!("check-config hangs on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut check.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("orgs.acme.client_secret_file") && stderr.contains("not a regular file"),
        "{stderr}"
    );
}

#[test]
fn help_explains_demo_mode_and_the_sandbox() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        help.contains("tokenbroker demo") && help.contains("--config") && help.contains("sandbox"),
        "{help}"
    );
}

/// Demo mode is asked for by name: with no config the broker refuses to start, rather than
/// come up healthy against its fake platform.
#[test]
fn without_a_config_the_broker_exits_2_naming_config_and_demo() {
    let output = Command::new(BIN)
        .env_remove("TOKENBROKER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--config FILE") && stderr.contains("tokenbroker demo"),
        "{stderr}"
    );
    // The same with only a listen address.
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("TOKENBROKER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// The address a broker logged in its "listening" line.
fn listening_addr(lines: &[String]) -> String {
    let line = lines.last().unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .or_else(|| {
            // JSON: "addr":"127.0.0.1:PORT"
            line.split("\"addr\":\"").nth(1)?.split('"').next()
        });
    addr.unwrap_or_else(|| panic!("no addr in {line}"))
        .to_owned()
}

async fn org_tokens(addr: &str, n: usize) {
    let mut client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    for _ in 0..n {
        client
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .unwrap();
    }
}

/// Stops the broker with SIGTERM and returns the rest of its log.
async fn stop(mut child: Child, rx: &mpsc::Receiver<String>) -> Vec<String> {
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    // Everything it wrote before it exited, to the end of the pipe.
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    rest
}

#[tokio::test]
async fn audit_lines_come_out_in_json_and_repeats_are_written_at_shutdown() {
    let (child, rx) = spawn(&["demo", "--listen", "127.0.0.1:0", "--log-format", "json"]);
    let lines = read_until(&rx, "tokenbroker listening");
    org_tokens(&listening_addr(&lines), 3).await;
    let log = stop(child, &rx).await;
    let audit: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "tokenbroker::audit")
        .collect();
    assert_eq!(audit.len(), 2, "{log:#?}");
    let (first, summary) = (&audit[0]["fields"], &audit[1]["fields"]);
    assert_eq!(first["message"], "token handed out");
    assert_eq!(
        (&first["rpc"], &first["peer"], &first["generation"]),
        (&"GetOrgToken".into(), &"127.0.0.1".into(), &1.into())
    );
    assert_eq!(summary["message"], "token handed out again");
    assert_eq!(summary["count"], 2, "written at shutdown: {summary}");
    assert_eq!(summary["fingerprint"], first["fingerprint"]);
}

#[tokio::test]
async fn every_call_logs_one_audit_line_per_hand_out_and_none_is_lost() {
    let sandbox = common::demo_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(
        &path,
        common::demo_toml(&sandbox, "[audit]\nevery_call = true"),
    )
    .unwrap();
    let (child, rx) = spawn(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let lines = read_until(&rx, "tokenbroker listening");
    // Many lines at once: none is dropped, and all are written before the process exits.
    org_tokens(&listening_addr(&lines), 3_000).await;
    let log = stop(child, &rx).await;
    let audit: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("tokenbroker::audit"))
        .collect();
    assert_eq!(audit.len(), 3_000);
    assert!(
        audit
            .iter()
            .all(|l| l.contains("token handed out") && !l.contains("again"))
    );
}

#[test]
fn gen_store_key_prints_a_fresh_key_the_config_accepts() {
    let key = || {
        let out = Command::new(BIN).arg("gen-store-key").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (a, b) = (key(), key());
    assert_eq!(a.len(), 64, "{a}");
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
    assert_ne!(a, b, "a fresh key each time");
    assert!(tokenbroker::secret::StoreKey::parse(&a).is_ok());
}

/// `tokenbroker sandbox` plays a standard server on request: client authentication
/// demanded everywhere, a fixed set of scopes, and private_key_jwt with the key given.
#[tokio::test]
async fn the_sandbox_command_plays_a_strict_server_with_scopes_and_a_client_key() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("client.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let public = public.display().to_string();
    let (mut child, rx) = spawn(&[
        "sandbox",
        "--listen",
        "127.0.0.1:0",
        "--strict-client-auth",
        "--scope",
        "invoices.read",
        "--client-public-key",
        &public,
    ]);
    let lines = read_until(&rx, "sandbox listening");
    let token_url = common::listening_addr(&lines);
    let token_url = format!("http://{token_url}/oauth/token");
    let http = reqwest::Client::new();
    let post = |form: Vec<(&'static str, String)>| {
        let request = http.post(&token_url).form(&form);
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<serde_json::Value>().await.unwrap())
        }
    };
    let signer =
        tokenbroker::upstream::ClientKey::from_pem(key.serialize_pem().as_bytes(), None).unwrap();
    let assertion = || {
        signer
            .assertion("demo-client", &token_url, std::time::SystemTime::now())
            .unwrap()
    };
    let by_key = |grant: Vec<(&'static str, String)>| {
        let mut form = grant;
        form.push((
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
        ));
        form.push(("client_assertion", assertion()));
        form
    };
    let (status, body) = post(by_key(vec![
        ("grant_type", "client_credentials".into()),
        ("scope", "invoices.read".into()),
    ]))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "invoices.read");
    let refresh_token = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, body) = post(by_key(vec![
        ("grant_type", "client_credentials".into()),
        ("scope", "invoices.write".into()),
    ]))
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    // Strict: a refresh with the client id alone is refused; with an assertion it works.
    let (status, body) = post(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh_token.clone()),
        ("client_id", "demo-client".into()),
    ])
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = post(by_key(vec![
        ("grant_type", "refresh_token".into()),
        ("refresh_token", refresh_token),
    ]))
    .await;
    assert_eq!(status, 200, "{body}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}
