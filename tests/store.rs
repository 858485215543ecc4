//! Tokens that survive a restart: the broker binary with `[store]` on a real file, in front
//! of a sandbox that outlives it; killed with SIGKILL while a refresh is in flight, stopped
//! and started again holding 1,000 user tokens, its file searched for every secret, its keys
//! rotated, and each way it must refuse to start.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
};

use futures::{StreamExt, stream};
use tokenbroker::{
    proto::{
        GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest, Token,
        token_service_client::TokenServiceClient,
    },
    sandbox::{Fault, FaultRule, Sandbox, SandboxConfig, SandboxOrg, Target},
    secret::StoreKey,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

/// A folder with a broker config for the sandbox's org `demo`, its store in `tokens.redb`
/// beside it, sealed with the keys in the variables named.
struct Setup {
    dir: tempfile::TempDir,
    /// Seeded users at the sandbox.
    users: u32,
    sandbox: Sandbox,
    key_a: String,
    key_b: String,
}

impl Setup {
    async fn new(users: u32) -> Self {
        Self::with_lifetime(users, SandboxConfig::demo().token_lifetime).await
    }

    /// [`Setup::new`], the sandbox issuing tokens of `lifetime`.
    async fn with_lifetime(users: u32, lifetime: std::time::Duration) -> Self {
        let mut config = SandboxConfig::demo();
        config.token_lifetime = lifetime;
        config.orgs = vec![SandboxOrg {
            users,
            ..config.orgs[0].clone()
        }];
        let sandbox = Sandbox::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap())
            .await
            .unwrap();
        Self {
            dir: tempfile::tempdir().unwrap(),
            users,
            sandbox,
            key_a: StoreKey::generate().to_hex(),
            key_b: StoreKey::generate().to_hex(),
        }
    }

    fn store_file(&self) -> PathBuf {
        self.dir.path().join("state/tokens.redb")
    }

    /// Writes the config, sealing with the keys in `keys` (variable names, newest first),
    /// with the tables in `more`. (A drain of a second: the test's idle client connection
    /// would hold the default's ten at every stop.)
    fn config(&self, keys: &[&str], more: &str) -> PathBuf {
        let names: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        // A thousand users' tokens at the default 10/s would take minutes to fill: these
        // tests count requests, not their pace.
        let budget = if self.users > 100 { common::VOLUME } else { "" };
        let extra = format!(
            "{budget}{more}\n[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"\n[store]\npath = \"state/tokens.redb\"\nencryption_key_env = [{}]\n",
            names.join(", ")
        );
        let path = self.dir.path().join("broker.toml");
        std::fs::write(&path, common::demo_toml(&self.sandbox, &extra)).unwrap();
        path
    }

    fn command(&self, keys: &[&str], more: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["--config", self.config(keys, more).to_str().unwrap()])
            .env("RUST_LOG", "info,tokenbroker::broker::renew=debug")
            .env("DEMO_SECRET", "demo-secret")
            .env("KEY_A", &self.key_a)
            .env("KEY_B", &self.key_b)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// A broker with the store sealed by `keys`, once it listens.
    async fn start(&self, keys: &[&str]) -> Running {
        self.start_with(keys, "").await
    }

    /// [`Setup::start`] with the config tables in `more`.
    async fn start_with(&self, keys: &[&str], more: &str) -> Running {
        let mut child = self.command(keys, more).spawn().unwrap();
        let log = common::stderr_lines(&mut child);
        let lines = common::read_until(&log, "tokenbroker listening");
        let addr = common::listening_addr(&lines);
        let client = TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Running {
            addr,
            child,
            log,
            lines,
            client: Some(client),
        }
    }

    /// A broker that must refuse to start: its exit code and what it wrote.
    fn refused(&self, keys: &[&str]) -> (Option<i32>, String) {
        let out = self.command(keys, "").output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn upstream_requests(&self) -> u64 {
        self.sandbox.stats().upstream_requests()
    }
}

struct Running {
    addr: String,
    child: Child,
    /// The log past listening, read on by a thread (so the pipe never fills).
    log: mpsc::Receiver<String>,
    /// What it logged up to listening.
    lines: Vec<String>,
    /// Taken at `stop`: a connection left open would hold the drain for its timeout.
    client: Option<TokenServiceClient<Channel>>,
}

impl Running {
    fn client(&self) -> TokenServiceClient<Channel> {
        self.client.clone().expect("running")
    }

    async fn org_token(&self) -> Token {
        let request = GetOrgTokenRequest::default();
        let answer = self.client().get_org_token(request).await.unwrap();
        answer.into_inner().token.unwrap()
    }

    async fn user_token(&self, user: &str) -> Token {
        let request = GetUserTokenRequest {
            user_id: user.into(),
            ..Default::default()
        };
        let answer = self.client().get_user_token(request).await.unwrap();
        answer.into_inner().token.unwrap()
    }

    /// Rotates the key whose token `stale` is (the evidence that makes a Refresh rotate
    /// at once, within `renewal.min_rotation_interval` of the last rotation too).
    async fn refresh(&self, user: &str, stale: &str) -> Token {
        let request = RefreshRequest {
            user_id: user.into(),
            stale_access_token: stale.into(),
            ..Default::default()
        };
        let answer = self.client().refresh(request).await.unwrap();
        answer.into_inner().token.unwrap()
    }

    /// The tokens of `users`, 32 calls at a time.
    async fn user_tokens(&self, users: &[String]) -> Vec<Token> {
        stream::iter(users)
            .map(|u| self.user_token(u))
            .buffered(32)
            .collect()
            .await
    }

    /// SIGTERM, and the exit once it has drained.
    fn stop(mut self) {
        self.client = None;
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        assert!(self.child.wait().unwrap().success());
    }

    /// SIGKILL: no chance to write anything more.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn users(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("EMP-{i:05}")).collect()
}

fn access_tokens(tokens: &[Token]) -> Vec<&str> {
    tokens.iter().map(|t| t.access_token.as_str()).collect()
}

#[tokio::test]
async fn a_broker_killed_mid_refresh_never_presents_that_refresh_token_again() {
    let s = Setup::new(10).await;
    let broker = s.start(&["KEY_A"]).await;
    let first = broker.org_token().await;
    assert_eq!(first.generation, 1);
    // The refresh request reaches the platform and is held there; the broker dies with it.
    s.sandbox.inject(FaultRule::times(
        Fault::Latency { millis: 3_000 },
        Target::RefreshToken,
        1,
    ));
    let mut client = broker.client();
    let stale = first.access_token.clone();
    let in_flight = tokio::spawn(async move {
        let request = RefreshRequest {
            stale_access_token: stale,
            ..Default::default()
        };
        client.refresh(request).await
    });
    common::wait_for("the refresh at the platform", async || {
        s.sandbox.faults_left() == 0
    })
    .await;
    broker.kill();
    assert!(
        in_flight.await.unwrap().is_err(),
        "the caller saw the broker die"
    );
    // (The platform counts the request once it has waited; the broker's death ended it.)
    let presented = s.sandbox.stats().refresh_token;

    let broker = s.start(&["KEY_A"]).await;
    // The stored token is served as it was, with no upstream call ...
    let requests = s.upstream_requests();
    let again = broker.org_token().await;
    assert_eq!(again.access_token, first.access_token);
    assert_eq!(s.upstream_requests(), requests);
    // ... and its rotation uses client credentials: the refresh token left the store
    // before it was sent, so the restarted broker has none to present.
    let rotated = broker.refresh("", &again.access_token).await;
    assert_eq!(rotated.generation, 2);
    let stats = s.sandbox.stats();
    assert_eq!(
        stats.refresh_token, presented,
        "no refresh token presented after the restart"
    );
    assert_eq!((stats.refresh_token_reuse, stats.code_reuse), (0, 0));
    // It serves again, and its new refresh token works.
    let third = broker.refresh("", &rotated.access_token).await;
    assert_eq!(third.generation, 3);
    assert_eq!(s.sandbox.stats().refresh_token, presented + 1);
    assert_eq!(s.sandbox.stats().refresh_token_reuse, 0);
    broker.stop();
}

#[tokio::test]
async fn a_restart_with_a_thousand_user_tokens_costs_no_upstream_request_and_the_file_holds_no_secret()
 {
    let s = Setup::new(1_000).await;
    let users = users(1_000);
    let broker = s.start(&["KEY_A"]).await;
    let before = broker.user_tokens(&users).await;
    let org = broker.org_token().await;
    broker.stop();

    let requests = s.upstream_requests();
    let broker = s.start(&["KEY_A"]).await;
    assert!(
        broker
            .lines
            .iter()
            .any(|l| l.contains("tokens restored from the store") && l.contains("tokens=1001")),
        "{:#?}",
        broker.lines
    );
    // Ready at once: the org token came from the store.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let readiness = tonic_health::pb::HealthCheckRequest {
        service: "tokenbroker.v1.TokenService".into(),
    };
    let status = health.check(readiness).await.unwrap().into_inner().status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let after = broker.user_tokens(&users).await;
    assert_eq!(access_tokens(&after), access_tokens(&before));
    assert_eq!(broker.org_token().await.access_token, org.access_token);
    assert_eq!(s.upstream_requests(), requests, "answered from the store");
    broker.stop();

    // Nothing secret in the file: no access token, refresh token, code or client secret.
    let bytes = std::fs::read(s.store_file()).unwrap();
    let mut secrets = s.sandbox.issued_secrets();
    assert!(secrets.len() > 2_000, "tokens, refresh tokens and codes");
    secrets.push("demo-secret".into());
    secrets.push(s.key_a.clone());
    for secret in &secrets {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret in clear in the store: {}…",
            &secret[..6]
        );
    }
    assert_eq!(s.sandbox.stats().refresh_token_reuse, 0);
}

/// A restart renews only the stored tokens someone uses again: the others are served as
/// they are while they last and dropped when idle, so a restart with many stored tokens
/// is no burst of renewals.
#[tokio::test]
async fn after_a_restart_only_the_stored_tokens_used_again_are_renewed() {
    use std::time::Duration;
    // Tokens of 30 s: renewed from about 15 s, by 24 s (the safety margin: a fifth).
    let s = Setup::with_lifetime(8, Duration::from_secs(30)).await;
    let users = users(8);
    let broker = s.start(&["KEY_A"]).await;
    let before = broker.user_tokens(&users).await;
    broker.stop();
    // Past every token's planned renewal, still in its usable life.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let requests = s.sandbox.stats();

    let broker = s.start(&["KEY_A"]).await;
    // One user comes back: its token is the stored one, and it is renewed.
    let used = broker.user_token(&users[0]).await;
    assert_eq!(used.access_token, before[0].access_token);
    let mut renewed = false;
    for _ in 0..100 {
        if broker.user_token(&users[0]).await.access_token != before[0].access_token {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        renewed,
        "the used token was renewed before its safety margin"
    );
    let after = s.sandbox.stats();
    // That user's refresh, and at most the org token's: not the other seven.
    let refreshes = after.refresh_token - requests.refresh_token;
    assert!((1..=2).contains(&refreshes), "{refreshes} refreshes");
    assert_eq!(after.authorization_grant, requests.authorization_grant);
    // Another user, back now, still gets its stored token.
    let other = broker.user_token(&users[1]).await;
    assert_eq!(other.access_token, before[1].access_token);
    broker.stop();
    assert_eq!(s.sandbox.stats().refresh_token_reuse, 0);
}

#[tokio::test]
async fn keys_rotate_without_downtime() {
    let s = Setup::new(10).await;
    let users = users(3);
    let broker = s.start(&["KEY_A"]).await;
    let org = broker.org_token().await;
    let first = broker.user_tokens(&users).await;
    broker.stop();

    // The new key first, the old one after: everything still opens.
    let requests = s.upstream_requests();
    let broker = s.start(&["KEY_B", "KEY_A"]).await;
    assert_eq!(broker.org_token().await.access_token, org.access_token);
    assert_eq!(
        access_tokens(&broker.user_tokens(&users).await),
        access_tokens(&first)
    );
    assert_eq!(s.upstream_requests(), requests);
    // Each key's next rotation is sealed with the new key.
    let mut rotated = vec![broker.refresh("", &org.access_token).await];
    for (user, token) in users.iter().zip(&first) {
        rotated.push(broker.refresh(user, &token.access_token).await);
    }
    broker.stop();

    // The old key can go.
    let requests = s.upstream_requests();
    let broker = s.start(&["KEY_B"]).await;
    let mut now = vec![broker.org_token().await];
    now.extend(broker.user_tokens(&users).await);
    assert_eq!(access_tokens(&now), access_tokens(&rotated));
    assert_eq!(s.upstream_requests(), requests);
    broker.stop();
}

#[tokio::test]
async fn a_wrong_key_a_second_process_and_an_unusable_folder_refuse_to_start_naming_the_setting() {
    let s = Setup::new(10).await;
    let broker = s.start(&["KEY_A"]).await;
    broker.org_token().await;

    // A second broker on the same file, while the first runs.
    let (code, said) = s.refused(&["KEY_A"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("held by another tokenbroker process"),
        "{said}"
    );
    assert!(said.contains("store.path"), "{said}");
    broker.stop();

    // A key that opens none of its records.
    let (code, said) = s.refused(&["KEY_B"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("store.encryption_key_env"), "{said}");
    // No key in the environment.
    let (code, said) = s.refused(&["NO_SUCH_KEY"]);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("NO_SUCH_KEY"), "{said}");
    // The refusals lost nothing: the right key still opens the store.
    let broker = s.start(&["KEY_A"]).await;
    broker.stop();

    // A folder that cannot be made (a file is in the way).
    let blocked = s.dir.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let text = std::fs::read_to_string(s.config(&["KEY_A"], ""))
        .unwrap()
        .replace(
            "path = \"state/tokens.redb\"",
            "path = \"blocked/tokens.redb\"",
        );
    let config = s.dir.path().join("blocked.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["--config", config.to_str().unwrap()])
        .env("DEMO_SECRET", "demo-secret")
        .env("KEY_A", &s.key_a)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("store.path"), "{said}");
}

/// Writes `bytes` as the record of `user` of org demo, as a damaged disk or a bug would.
fn damage_record(file: &Path, user: &str, bytes: &[u8]) {
    let tokens: redb::TableDefinition<(&str, &str), &[u8]> = redb::TableDefinition::new("tokens");
    let db = redb::Database::create(file).unwrap();
    let write = db.begin_write().unwrap();
    write
        .open_table(tokens)
        .unwrap()
        .insert(("demo", user), bytes)
        .unwrap();
    write.commit().unwrap();
}

#[tokio::test]
async fn a_corrupt_record_is_logged_by_key_and_issued_anew_while_the_rest_load() {
    let s = Setup::new(10).await;
    let users = users(3);
    let broker = s.start(&["KEY_A"]).await;
    let before = broker.user_tokens(&users).await;
    broker.stop();
    damage_record(&s.store_file(), "EMP-00002", b"\x08\x07not a record at all");

    let grants = s.sandbox.stats().authorization_grant;
    let broker = s.start(&["KEY_A"]).await;
    let unreadable: Vec<&String> = broker
        .lines
        .iter()
        .filter(|l| l.contains("cannot be read"))
        .collect();
    assert!(
        unreadable.len() == 1 && unreadable[0].contains("EMP-00002"),
        "{:#?}",
        broker.lines
    );
    let after = broker.user_tokens(&users).await;
    assert_eq!(after[0].access_token, before[0].access_token);
    assert_eq!(after[2].access_token, before[2].access_token);
    assert_ne!(after[1].access_token, before[1].access_token, "issued anew");
    assert_eq!(s.sandbox.stats().authorization_grant, grants + 1);
    broker.stop();
}

#[tokio::test]
async fn a_user_dropped_as_idle_leaves_the_store_too() {
    let s = Setup::new(10).await;
    let idle = "[cache]\nuser_idle_timeout = \"1s\"\n";
    let broker = s.start_with(&["KEY_A"], idle).await;
    broker.user_token("EMP-00001").await;
    // Idle for its second: dropped from memory, and from the file.
    common::read_until(&broker.log, "user token idle; dropped");
    broker.stop();

    let grants = s.sandbox.stats().authorization_grant;
    let broker = s.start(&["KEY_A"]).await;
    broker.user_token("EMP-00001").await;
    assert_eq!(
        s.sandbox.stats().authorization_grant,
        grants + 1,
        "issued anew, not restored"
    );
    broker.stop();
}

#[tokio::test]
async fn store_operations_are_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let key = StoreKey::generate().to_hex();
    let store = format!(
        "[store]\npath = \"{}\"\nencryption_key_env = \"STORE_KEY\"\n",
        dir.path().join("tokens.redb").display()
    );
    let h = common::Harness::with(
        common::sandbox_config(),
        move |s| format!("{store}\n{}", common::acme_toml(s)),
        move |name| (name == "STORE_KEY").then(|| key.clone()),
    )
    .await;
    let first = h.org_token().await.unwrap();
    h.refresh("", &first.access_token).await.unwrap();
    let text = tokenbroker::metrics::render(&h.registry);
    for line in [
        "tokenbroker_store_operations_total{operation=\"put\",outcome=\"ok\"} 2",
        "tokenbroker_store_operations_total{operation=\"take\",outcome=\"ok\"} 1",
        "tokenbroker_store_operation_duration_seconds_count{operation=\"put\"} 2",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    h.stop().await;
}
