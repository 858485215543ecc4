//! The test harness: the sandbox and the broker on 127.0.0.1:0, a real tonic client, and a
//! check at the end of every test that the sandbox saw no refresh token or code used twice.
#![allow(dead_code)]

use std::{
    io::Write,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokenbroker::{
    broker::Broker,
    config::Config,
    proto::token_service_client::TokenServiceClient,
    sandbox::{Sandbox, SandboxConfig, SandboxOrg, SandboxUser},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tracing_subscriber::fmt::MakeWriter;

/// Real OAuth servers (oidc-provider, authlib) as child processes.
pub mod oauth_server;
/// Real Redis (server, replica, sentinels) and a relay to cut a client off it.
pub mod redis;

pub const SECRET_ENV: &str = "ACME_SECRET";

/// For tests that need something beyond Rust (a Debian package, a PyPI or npm package):
/// `missing` is absent, so the test is skipped, saying `how` to run it, unless the
/// variable `required_var` is `required` (as CI sets), which makes the absence a failure.
/// Always false, so that `if !available() { return }` reads as it should.
pub fn skip_unless_required(required_var: &str, missing: &str, how: &str) -> bool {
    assert!(
        std::env::var(required_var).as_deref() != Ok("required"),
        "{missing}: {how}"
    );
    eprintln!("skipped: {missing} ({how} runs these tests)");
    false
}

/// A budget no test reaches (`upstream.max_requests_per_second`, not the default 10/s),
/// for the tests that count a thousand cold keys' requests rather than their pace (they
/// would take minutes at the default): the first lines of their TOML.
pub const VOLUME: &str = "upstream.max_requests_per_second = 100000.0\nupstream.burst = 100000\n";

/// The sandbox the tests run against: org `acme` with 60 users, one-hour tokens.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        orgs: vec![SandboxOrg {
            name: "acme".into(),
            client_id: "acme-client".into(),
            client_secret: "acme-secret-Zq8+".into(),
            users: 60,
        }],
        token_lifetime: Duration::from_secs(3600),
        code_lifetime: Duration::from_secs(30),
        strict_client_auth: false,
        omit_expires_in: false,
        scopes: Vec::new(),
        client_keys: Default::default(),
    }
}

/// [`sandbox_config`] with tokens that live `secs` seconds.
pub fn lifetime(secs: u64) -> SandboxConfig {
    let mut config = sandbox_config();
    config.token_lifetime = Duration::from_secs(secs);
    config
}

/// Asserts that no call in `answers` failed, naming the first failure and how many.
pub fn assert_all_ok<T, E: std::fmt::Debug>(answers: &[Result<T, E>]) {
    let failed: Vec<&E> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
}

/// A request carrying `key` as `authorization: Bearer` metadata.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ASCII key"),
    );
    request
}

/// The broker config for org `demo` against `sandbox` (the sandbox's demo org, secret
/// from `DEMO_SECRET`), after `extra` lines.
pub fn demo_toml(sandbox: &Sandbox, extra: &str) -> String {
    format!(
        "{extra}\n[orgs.demo]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"demo-client\"\nclient_secret_env = \"DEMO_SECRET\"\n",
        sandbox.token_url(),
        sandbox.authorization_grant_url()
    )
}

/// The broker config for one org `acme` against `sandbox`, secret from `ACME_SECRET`.
pub fn acme_toml(sandbox: &Sandbox) -> String {
    format!(
        "[orgs.acme]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{SECRET_ENV}\"\n",
        sandbox.token_url(),
        sandbox.authorization_grant_url()
    )
}

/// GetOrgToken of `org`.
pub fn org_request(org: &str) -> tokenbroker::proto::GetOrgTokenRequest {
    tokenbroker::proto::GetOrgTokenRequest {
        org: org.into(),
        ..Default::default()
    }
}

/// GetUserToken of `user` in org `acme`.
pub fn user_request(user: &str) -> tokenbroker::proto::GetUserTokenRequest {
    tokenbroker::proto::GetUserTokenRequest {
        org: "acme".into(),
        user_id: user.into(),
        ..Default::default()
    }
}

/// Refresh of `user`'s token in org `acme` (the org token with an empty user), naming
/// `stale` as the token the caller saw rejected.
pub fn refresh_request(user: &str, stale: &str) -> tokenbroker::proto::RefreshRequest {
    tokenbroker::proto::RefreshRequest {
        org: "acme".into(),
        user_id: user.into(),
        stale_access_token: stale.into(),
    }
}

pub struct Harness {
    pub sandbox: Sandbox,
    pub broker: Broker,
    pub reloader: tokenbroker::Reloader,
    /// What a scrape of the broker's `/metrics` renders (`tokenbroker::metrics::render`).
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub addr: SocketAddr,
    /// The token-injecting proxy's address, when the config has `[proxy]`.
    pub proxy: Option<SocketAddr>,
    pub client: TokenServiceClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tokenbroker::Error>>>,
}

impl Harness {
    /// Sandbox with [`sandbox_config`], broker with [`acme_toml`].
    pub async fn start() -> Self {
        Self::with(sandbox_config(), acme_toml, |_| None).await
    }

    /// A sandbox with `sandbox_config`, and a broker whose TOML `toml` writes for it, with
    /// secrets from `env` (the real `acme-secret-Zq8+` for `ACME_SECRET` unless `env` says).
    pub async fn with(
        sandbox_config: SandboxConfig,
        toml: impl Fn(&Sandbox) -> String,
        env: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let sandbox = Sandbox::start(
            sandbox_config,
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        let text = toml(&sandbox);
        Self::on(sandbox, &text, env).await
    }

    /// A broker configured by `text` in front of a running `sandbox`.
    pub async fn on(sandbox: Sandbox, text: &str, env: impl Fn(&str) -> Option<String>) -> Self {
        let secret = sandbox.config().orgs[0].client_secret.clone();
        let lookup =
            |name: &str| env(name).or_else(|| (name == SECRET_ENV).then(|| secret.clone()));
        let mut config =
            Config::parse(text, &lookup, Path::new(".")).expect("test config is valid");
        // Tests count upstream requests from a cold start, unless they ask for prefetching.
        if !text.contains("prefetch_org_tokens") {
            config.cache.prefetch_org_tokens = false;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // A proxy on 127.0.0.1:0 is bound here, to learn its port; others bind their own.
        let has_proxy = config.proxy.as_ref().is_some_and(
            |p| matches!(p.listen, tokenbroker::config::Listen::Tcp(addr) if addr.port() == 0),
        );
        let mut server = tokenbroker::Server::new(config).await.unwrap();
        let mut proxy = None;
        if has_proxy {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            proxy = Some(listener.local_addr().unwrap());
            server = server.with_proxy_listener(listener);
        }
        let broker = server.broker().clone();
        let reloader = server.reloader();
        let registry = Arc::new(server.registry());
        let server = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        let client = TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Self {
            sandbox,
            broker,
            reloader,
            registry,
            addr,
            proxy,
            client,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// An org token straight from the sandbox, as a service without the broker gets one.
    pub async fn direct_org_token(sandbox: &Sandbox) -> String {
        let org = &sandbox.config().orgs[0];
        let response: serde_json::Value = reqwest::Client::new()
            .post(sandbox.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &org.client_id),
                ("client_secret", &org.client_secret),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        response["access_token"].as_str().unwrap().to_owned()
    }

    /// A sandbox with `sandbox_config`, and a broker for org `acme` whose TOML starts with
    /// `extra_toml`.
    pub async fn with_extra(sandbox_config: SandboxConfig, extra_toml: &'static str) -> Self {
        Self::with(
            sandbox_config,
            move |s| format!("{extra_toml}\n{}", acme_toml(s)),
            |_| None,
        )
        .await
    }

    /// Another client on its own connection.
    pub async fn new_client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// The org token of `acme`, on the harness's connection.
    pub async fn org_token(&self) -> Result<tokenbroker::proto::Token, tonic::Status> {
        let request = tokenbroker::proto::GetOrgTokenRequest {
            org: "acme".into(),
            ..Default::default()
        };
        let answer = self.client.clone().get_org_token(request).await?;
        Ok(answer
            .into_inner()
            .token
            .expect("an OK answer carries a token"))
    }

    /// `user`'s token in `acme`, on the harness's connection.
    pub async fn user_token(&self, user: &str) -> Result<tokenbroker::proto::Token, tonic::Status> {
        let answer = self
            .client
            .clone()
            .get_user_token(user_request(user))
            .await?;
        Ok(answer
            .into_inner()
            .token
            .expect("an OK answer carries a token"))
    }

    /// A Refresh of `user`'s token (see [`refresh_request`]), on the harness's connection.
    pub async fn refresh(
        &self,
        user: &str,
        stale: &str,
    ) -> Result<tokenbroker::proto::Token, tonic::Status> {
        let answer = self
            .client
            .clone()
            .refresh(refresh_request(user, stale))
            .await?;
        Ok(answer
            .into_inner()
            .token
            .expect("an OK answer carries a token"))
    }

    /// Concurrent GetUserToken calls of org `acme`, one for each of `users` (ids), each on
    /// the harness's connection.
    pub async fn user_tokens(
        &self,
        users: impl IntoIterator<Item = String>,
    ) -> Vec<Result<tonic::Response<tokenbroker::proto::GetUserTokenResponse>, tonic::Status>> {
        futures::future::join_all(users.into_iter().map(|user| {
            let mut c = self.client.clone();
            async move {
                c.get_user_token(tokenbroker::proto::GetUserTokenRequest {
                    org: "acme".into(),
                    user_id: user,
                    ..Default::default()
                })
                .await
            }
        }))
        .await
    }

    /// The i-th seeded user of the sandbox's first org (1-based).
    pub fn user(&self, i: usize) -> SandboxUser {
        self.sandbox.config().orgs[0].users()[i - 1].clone()
    }

    /// Calls the platform's API with `token`: `/api/v1/expense/me` for a user token,
    /// `/api/v1/admin/organization` for an org token. Returns the status and JSON body.
    pub async fn call_api(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.sandbox.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Asserts that the platform accepts `token` as a user token acting as `user` (its
    /// person id, or its ExternalSourceID when `user` is one).
    pub async fn assert_acts_as(&self, token: &str, user: &str) {
        let (status, me) = self.call_api("/api/v1/expense/me", token).await;
        assert_eq!(status, 200, "the platform refused the user token: {me}");
        let field = if user.starts_with("EMP-") {
            "externalSourceId"
        } else {
            "personId"
        };
        assert_eq!(me[field].as_str(), Some(user), "{me}");
    }

    /// Stops the broker gracefully and waits for it; returns the sandbox's harness so
    /// its final check still runs.
    pub async fn stop_and_keep(mut self) -> Self {
        self.shut_down().await;
        self
    }

    /// Stops the broker gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shut_down().await;
    }

    /// Stops the server and waits until it has drained and returned (once).
    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let stats = self.sandbox.stats();
        assert_eq!(
            stats.refresh_token_reuse, 0,
            "a refresh token was presented twice: {stats:?}"
        );
        assert_eq!(
            stats.code_reuse, 0,
            "an authorization code was presented twice: {stats:?}"
        );
    }
}

/// Everything logged, in memory: install it with `with_writer` as the global subscriber's
/// writer, then read what the run logged.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// A capture installed as the global subscriber, logging at `filter` (`"info"`):
    /// once per test binary.
    pub fn install(filter: &str) -> Self {
        let capture = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        capture
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// The stderr lines of `child` (spawned with `Stdio::piped()` stderr), as they come.
pub fn stderr_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads lines until one contains `needle` (waiting up to 30 s for each); returns every
/// line read.
/// The address in the `addr=` field of the last of `lines` (a broker's "listening" line).
pub fn listening_addr(lines: &[String]) -> String {
    lines
        .last()
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .unwrap_or_else(|| panic!("no addr in {lines:#?}"))
        .to_owned()
}

/// WatchTokens of `users` in org `acme` (its org token when empty).
pub fn watch_request(users: &[String]) -> tokenbroker::proto::WatchTokensRequest {
    tokenbroker::proto::WatchTokensRequest {
        org: "acme".into(),
        user_ids: users.to_vec(),
    }
}

/// A WatchTokens stream of `users` in `acme` (its org token when empty).
pub async fn watch(
    client: &TokenServiceClient<Channel>,
    users: &[String],
) -> tonic::Streaming<tokenbroker::proto::WatchTokensResponse> {
    client
        .clone()
        .watch_tokens(watch_request(users))
        .await
        .unwrap()
        .into_inner()
}

/// The stream's next message, within 10 s.
pub async fn next(
    stream: &mut tonic::Streaming<tokenbroker::proto::WatchTokensResponse>,
) -> tokenbroker::proto::WatchTokensResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is open")
}

pub fn read_until(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {needle:?} in {lines:#?}"));
        let done = line.contains(needle);
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// The sandbox with its demo org, on 127.0.0.1:0.
pub async fn demo_sandbox() -> Sandbox {
    Sandbox::start(
        SandboxConfig::demo(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap()
}

/// Makes a FIFO at `path`: a file whose open blocks until a writer comes.
pub fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// How long a test waits for what it expects before it fails.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits for the event `what` names: until `happened` answers true, asked every 10 ms for
/// up to [`PATIENCE`] (then the test fails, naming it). A wait on the event, not a fixed
/// sleep: a fast run waits only as long as the event takes.
pub async fn wait_for(what: &str, mut happened: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !happened().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `call` until it succeeds (as [`wait_for`] asks), and returns its value.
pub async fn retry<T, E: std::fmt::Debug>(
    what: &str,
    mut call: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; the last answer: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Seconds from now until `token` expires (negative once expired).
pub fn seconds_left(token: &tokenbroker::proto::Token) -> f64 {
    let expires = token.expires_at.expect("a token with an expiry");
    let expires = std::time::SystemTime::UNIX_EPOCH
        + Duration::new(expires.seconds as u64, expires.nanos as u32);
    match expires.duration_since(std::time::SystemTime::now()) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

/// Waits until `token` has `secs` seconds left (negative: until that long after it
/// expired): the moment is read from the token, not guessed.
pub async fn until_left(token: &tokenbroker::proto::Token, secs: f64) {
    let wait = seconds_left(token) - secs;
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

impl Harness {
    /// Makes `call` until one of them has met every fault injected into the sandbox (none
    /// is left), however long the broker holds off after the last failure; that call's
    /// answer. The wait is on the fault being used, not on a guess at the hold.
    pub async fn through_the_faults<T: std::fmt::Debug>(
        &self,
        mut call: impl AsyncFnMut() -> T,
    ) -> T {
        retry("a call that meets the injected faults", async || {
            let answer = call().await;
            if self.sandbox.faults_left() == 0 {
                Ok(answer)
            } else {
                Err(answer)
            }
        })
        .await
    }
}

/// A private CA of the test's own and a certificate for 127.0.0.1 it signed, also written
/// as PEM files (`ca.pem`, `leaf.pem`, `leaf-key.pem`) in a folder removed with it: what
/// the TLS tests serve, and trust through `ca_file` or `SSL_CERT_FILE`.
pub struct TestPki {
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let key = KeyPair::generate().unwrap();
        let leaf = params.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("leaf.pem", leaf.pem()),
            ("leaf-key.pem", key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Self {
            leaf_der: leaf.der().to_vec(),
            leaf_key_der: key.serialize_der(),
            dir,
        }
    }

    /// The path of one of its files, as text for a config.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}
