//! The Rust client against the real broker and sandbox, both in this process on loopback:
//! a source follows rotations, restarts, revocations and outages, and the reqwest helper
//! heals a 401 with one `Refresh`.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokenbroker::{
    config::Config,
    sandbox::{Sandbox, SandboxConfig},
};
use tokenbroker_client::{
    Connection, Error, Gone, RequestBuilderExt, TokenSource,
    proto::{GetUserTokenRequest, RefreshRequest, token_service_client::TokenServiceClient},
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::oneshot,
    task::JoinHandle,
};

const USER: &str = "EMP-00001";

/// A broker in front of a sandbox, both in this process; the broker can be stopped and
/// started again on the same address.
struct Rig {
    sandbox: Sandbox,
    addr: SocketAddr,
    toml: String,
    broker: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Rig {
    /// A sandbox whose tokens live `lifetime`, and a broker on 127.0.0.1:0 with `extra`
    /// config lines.
    async fn start(lifetime: Duration, extra: &str) -> Self {
        let mut config = SandboxConfig::demo();
        config.token_lifetime = lifetime;
        let sandbox = Sandbox::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap())
            .await
            .unwrap();
        let toml = format!(
            "{extra}\n[orgs.demo]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"demo-client\"\nclient_secret_env = \"DEMO_SECRET\"\n",
            sandbox.token_url(),
            sandbox.authorization_grant_url()
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rig = Self {
            sandbox,
            addr,
            toml,
            broker: None,
        };
        rig.serve(tokenbroker::Listener::Tcp(listener)).await;
        rig
    }

    async fn serve(&mut self, listener: tokenbroker::Listener) {
        let secret = |name: &str| (name == "DEMO_SECRET").then(|| "demo-secret".to_owned());
        let config = Config::parse(&self.toml, &secret, Path::new(".")).unwrap();
        let server = tokenbroker::Server::new(config).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            server.serve(listener, shutdown).await.unwrap();
        });
        self.broker = Some((stop, task));
    }

    /// Stops the broker gracefully (its streams end with UNAVAILABLE) and waits for it.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.broker.take() {
            let _ = stop.send(());
            task.await.unwrap();
        }
    }

    /// Starts the broker again on the same address.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(tokenbroker::Listener::Tcp(listener)).await;
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }

    /// A plain generated client, as another service would hold.
    async fn raw(&self) -> TokenServiceClient<tonic::transport::Channel> {
        TokenServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.sandbox.base_url())
    }
}

/// Waits until `source` hands out a token other than `not` (up to 20 s), and returns it.
async fn next_token(source: &TokenSource, not: &str) -> String {
    for _ in 0..400 {
        if let Ok(token) = source.token().await
            && token.secret() != not
        {
            return token.secret().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the source kept its token");
}

#[tokio::test]
async fn a_source_follows_a_forced_rotation() {
    let rig = Rig::start(Duration::from_secs(3600), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    let first = source.token().await.unwrap();
    let rotated = rig
        .raw()
        .await
        .refresh(RefreshRequest {
            org: "demo".into(),
            user_id: USER.into(),
            stale_access_token: first.secret().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_ne!(rotated.access_token, first.secret());
    assert_eq!(
        next_token(&source, first.secret()).await,
        rotated.access_token
    );
    assert!(source.token().await.unwrap().generation() > first.generation());
    source.close();
    assert_eq!(source.token().await.unwrap_err().code(), "CANCELLED");
}

#[tokio::test]
async fn a_source_survives_a_broker_restart() {
    let mut rig = Rig::start(Duration::from_secs(3600), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    let before = source.token().await.unwrap();
    rig.stop().await;
    assert_eq!(
        source.token().await.unwrap().secret(),
        before.secret(),
        "the held token serves while the broker is down"
    );
    rig.restart().await;
    let after = next_token(&source, before.secret()).await;
    let current = rig
        .raw()
        .await
        .get_user_token(GetUserTokenRequest {
            org: "demo".into(),
            user_id: USER.into(),
            min_valid_for: None,
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(after, current.access_token, "the new broker's token");
}

#[tokio::test]
async fn the_reqwest_helper_heals_a_revoked_token_with_one_refresh_and_one_retry() {
    let rig = Rig::start(Duration::from_secs(3600), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    let http = reqwest::Client::new();
    let me = |http: &reqwest::Client| http.get(rig.url("/api/v1/expense/me"));
    let answer = me(&http).send_with_token(&source).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["externalSourceId"], USER);

    let token = source.token().await.unwrap();
    assert!(rig.sandbox.revoke_access_token(token.secret()));
    let before = rig.sandbox.stats();
    let answer = me(&http).send_with_token(&source).await.unwrap();
    assert_eq!(answer.status(), 200, "healed");
    let after = rig.sandbox.stats();
    assert_eq!(
        after.refresh_token - before.refresh_token,
        1,
        "one rotation"
    );
    assert_eq!(after.api - before.api, 2, "the 401 and the retry");
    assert_ne!(source.token().await.unwrap().secret(), token.secret());
}

/// What a platform that always answers 401 saw: each request's bearer.
type Seen = Arc<Mutex<Vec<String>>>;

async fn always_401() -> (String, Seen) {
    let seen = Seen::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let log = log.clone();
        async move {
            let bearer = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            log.lock().unwrap().push(bearer);
            axum::http::StatusCode::UNAUTHORIZED
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn a_second_401_is_returned_as_is_and_a_stream_body_is_not_sent_twice() {
    let rig = Rig::start(Duration::from_secs(3600), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    let (url, seen) = always_401().await;
    let http = reqwest::Client::new();
    let answer = http
        .post(&url)
        .body("replayable")
        .send_with_token(&source)
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let bearers = seen.lock().unwrap().clone();
    assert_eq!(bearers.len(), 2, "one retry, then the 401 as is");
    assert_ne!(
        bearers[0], bearers[1],
        "the retry carries the rotated token"
    );
    assert!(bearers.iter().all(|b| b.starts_with("Bearer ")));

    seen.lock().unwrap().clear();
    let chunks = futures_stream(["not ", "replayable"]);
    let answer = http
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .send_with_token(&source)
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(seen.lock().unwrap().len(), 1, "a stream body is sent once");
}

/// A body that can only be read once.
fn futures_stream(
    chunks: [&'static str; 2],
) -> impl futures_core::Stream<Item = Result<&'static str, std::io::Error>> + Send + 'static {
    tokio_stream::iter(chunks.map(Ok))
}

#[tokio::test]
async fn a_revoked_event_empties_the_source() {
    let rig = Rig::start(Duration::from_secs(10), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    source.token().await.unwrap();
    assert!(rig.sandbox.remove_user("demo", USER));
    // The broker cannot renew it; once the token is too close to expiry to hand out, the
    // source's own GetUserToken fails too, until the REVOKED event comes at expiry.
    for _ in 0..400 {
        match source.token().await {
            Err(Error::Event { reason, detail }) => {
                assert_eq!(reason, Gone::Revoked);
                assert!(!detail.is_empty());
                return;
            }
            Ok(token) => assert!(token.expires_at().unwrap() > SystemTime::now()),
            Err(Error::Status { .. }) => {}
            Err(other) => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no REVOKED event");
}

#[tokio::test]
async fn an_unknown_user_is_not_found_with_the_brokers_message() {
    let rig = Rig::start(Duration::from_secs(3600), "").await;
    let connection = Connection::lazy(&rig.target()).unwrap();
    let source = TokenSource::user(&connection, "demo", "no-such-user");
    let error = source.token().await.unwrap_err();
    assert_eq!(error.code(), "NOT_FOUND", "{error}");
    assert!(error.to_string().contains("no-such-user"), "{error}");
}

#[tokio::test]
async fn an_expired_token_is_never_handed_out() {
    let mut rig = Rig::start(Duration::from_secs(8), "").await;
    let source = TokenSource::user(&Connection::lazy(&rig.target()).unwrap(), "demo", USER);
    let held = source.token().await.unwrap();
    rig.stop().await;
    while held.usable_at(SystemTime::now()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = source.token().await.unwrap_err();
    assert_eq!(error.code(), "UNAVAILABLE", "{error}");
}

#[tokio::test]
async fn an_api_key_is_sent_on_every_call() {
    use sha2::Digest;
    let key = "client-test-key-0123456789";
    let hash = hex::encode(sha2::Sha256::digest(key));
    let callers = format!(
        "[[callers]]\nname = \"tests\"\napi_key_sha256 = [\"{hash}\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"user_token\", \"refresh\", \"watch\"]\n"
    );
    let rig = Rig::start(Duration::from_secs(3600), &callers).await;
    let with_key = Connection::builder(&rig.target())
        .api_key(key)
        .build()
        .unwrap();
    let org = TokenSource::org(&with_key, "demo").token().await.unwrap();
    let answer = reqwest::Client::new()
        .get(rig.url("/api/v1/admin/organization"))
        .bearer_auth(org.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let without = Connection::lazy(&rig.target()).unwrap();
    let error = TokenSource::org(&without, "demo")
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.code(), "UNAUTHENTICATED", "{error}");
}

#[tokio::test]
async fn a_unix_socket_target_works() {
    let mut rig = Rig::start(Duration::from_secs(3600), "").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tb.sock");
    rig.stop().await;
    rig.serve(tokenbroker::Listener::Unix(
        UnixListener::bind(&path).unwrap(),
    ))
    .await;
    let connection = Connection::lazy(&format!("unix://{}", path.display())).unwrap();
    let token = TokenSource::user(&connection, "demo", USER)
        .token()
        .await
        .unwrap();
    assert!(token.usable_at(SystemTime::now()));
}

#[tokio::test]
async fn sources_on_one_connection_each_follow_their_own_key() {
    let rig = Rig::start(Duration::from_secs(3600), "").await;
    let connection = Connection::lazy(&rig.target()).unwrap();
    let users = ["EMP-00002", "EMP-00003", "EMP-00004"];
    let sources: Vec<_> = users
        .iter()
        .map(|user| TokenSource::user(&connection, "demo", *user))
        .collect();
    let org = TokenSource::org(&connection, "demo");
    let http = reqwest::Client::new();
    for (user, source) in users.iter().zip(&sources) {
        let answer = http
            .get(rig.url("/api/v1/expense/me"))
            .send_with_token(source)
            .await
            .unwrap();
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["externalSourceId"], *user);
    }
    let answer = http
        .get(rig.url("/api/v1/admin/organization"))
        .send_with_token(&org)
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// A CA and a certificate it signed for `name`, as (CA PEM, certificate PEM, key PEM).
fn certificates(
    name: &str,
) -> (
    rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    String,
    String,
) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let (cert, key) = leaf(&ca, name);
    (ca, cert, key)
}

fn leaf(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, name: &str) -> (String, String) {
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn mutual_tls_names_the_caller_by_its_certificate() {
    let (ca, server_cert, server_key) = certificates("localhost");
    let (client_cert, client_key) = leaf(&ca, "client.example");
    let dir = tempfile::tempdir().unwrap();
    for (name, pem) in [
        ("server.pem", &server_cert),
        ("server.key", &server_key),
        ("ca.pem", &ca.pem()),
    ] {
        std::fs::write(dir.path().join(name), pem).unwrap();
    }
    let file = |name: &str| dir.path().join(name).display().to_string();
    let extra = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n[[callers]]\nname = \"tests\"\ntls_names = [\"client.example\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"user_token\", \"refresh\", \"watch\"]\n",
        file("server.pem"),
        file("server.key"),
        file("ca.pem")
    );
    let rig = Rig::start(Duration::from_secs(3600), &extra).await;
    let tls = || {
        Connection::builder(&rig.target())
            .ca_certificate(ca.pem())
            .domain_name("localhost")
    };
    let with_certificate = tls().identity(client_cert, client_key).build().unwrap();
    let token = TokenSource::user(&with_certificate, "demo", USER);
    assert!(token.token().await.unwrap().usable_at(SystemTime::now()));
    let anonymous = tls().build().unwrap();
    let error = TokenSource::user(&anonymous, "demo", USER)
        .token()
        .await
        .unwrap_err();
    assert_eq!(error.code(), "UNAUTHENTICATED", "{error}");
    // Plain text to the TLS port gets no token (tonic says UNKNOWN: transport error).
    let plain = Connection::lazy(&rig.target()).unwrap();
    let error = TokenSource::org(&plain, "demo").token().await.unwrap_err();
    assert!(matches!(error, Error::Status { .. }), "{error}");
}
