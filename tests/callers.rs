//! Who may ask: API keys, mutual TLS with real certificates, a real Unix socket, per-caller
//! policy, rate limits and the waiting-callers limit, the request size limit, and no followed redirects.

mod common;

use std::{os::unix::fs::MetadataExt, path::Path};

use common::{Harness, acme_toml, org_request, sandbox_config, with_key};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tokenbroker::{
    Listener,
    auth::api_key_hash,
    config::{Config, Listen},
    proto::{GetOrgTokenRequest, GetUserTokenRequest, token_service_client::TokenServiceClient},
    sandbox::{Fault, FaultRule, Sandbox, Target},
};
use tokio::net::{TcpListener, UnixStream};
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

const KEY: &str = "payroll-key-7f3a";

fn callers_toml(extra: &str) -> String {
    format!(
        "[[callers]]\nname = \"payroll\"\napi_key_sha256 = [\"{}\"]\norgs = [\"acme\"]\npermissions = [\"org_token\", \"watch\"]\n{extra}\n",
        api_key_hash(KEY)
    )
}

async fn start(toml: String) -> Harness {
    Harness::with(
        sandbox_config(),
        move |s| format!("{toml}\n{}", acme_toml(s)),
        |_| None,
    )
    .await
}

/// The payroll caller (org `acme` only) and a second org, `other`, it may not use.
async fn with_org_other() -> Harness {
    Harness::with(
        sandbox_config(),
        |s| {
            format!(
                "{}\n{}\n[orgs.other]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"ACME_SECRET\"\n",
                callers_toml(""),
                acme_toml(s),
                s.token_url(),
                s.authorization_grant_url()
            )
        },
        |_| None,
    )
    .await
}

#[tokio::test]
async fn an_api_key_names_the_caller_and_anything_else_is_unauthenticated() {
    let h = start(callers_toml("")).await;
    let mut c = h.client.clone();
    let token = c
        .get_org_token(with_key(org_request("acme"), KEY))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(token.org, "acme");

    for request in [
        Request::new(org_request("acme")),
        with_key(org_request("acme"), "wrong-key"),
    ] {
        let status = c.get_org_token(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let status = c
        .get_org_token(Request::new(org_request("acme")))
        .await
        .unwrap_err();
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );
    // Health and reflection stay open.
    let channel = Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert!(health.check(check).await.is_ok());
}

/// An address that keeps failing to authenticate is throttled: past 20 failures in 10 s
/// its calls are refused without a look at the key they present, and both kinds of
/// refusal are counted in the metrics.
#[tokio::test]
async fn failed_authentications_are_throttled_per_address_and_counted() {
    let h = start(callers_toml("")).await;
    let mut c = h.client.clone();
    for i in 0..20 {
        let status = c
            .get_org_token(with_key(org_request("acme"), &format!("guess-{i}")))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "attempt {i}: {status:?}"
        );
    }
    // The 21st failure: the address is throttled from now on.
    let status = c
        .get_org_token(with_key(org_request("acme"), "guess-20"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Even the right key is not looked at for the rest of the window.
    let status = c
        .get_org_token(with_key(org_request("acme"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("failed authentications from 127.0.0.1"),
        "{}",
        status.message()
    );
    let scrape = tokenbroker::metrics::render(&h.registry);
    let count = |outcome: &str| {
        scrape
            .lines()
            .find(|l| {
                l.starts_with("tokenbroker_authentication_failures_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("refused"), Some(21), "{scrape}");
    assert_eq!(count("throttled"), Some(1), "{scrape}");
}

#[tokio::test]
async fn policy_denies_what_a_caller_was_not_given_and_names_it() {
    let h = with_org_other().await;
    let mut c = h.client.clone();
    let user = GetUserTokenRequest {
        org: "acme".into(),
        user_id: h.user(1).person_id,
        ..Default::default()
    };
    let status = c.get_user_token(with_key(user, KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("user_token") && status.message().contains("payroll"),
        "{}",
        status.message()
    );
    let other = GetOrgTokenRequest {
        org: "other".into(),
        ..Default::default()
    };
    let status = c.get_org_token(with_key(other, KEY)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("org other"),
        "{}",
        status.message()
    );
    assert_eq!(
        h.sandbox.stats().upstream_requests(),
        0,
        "denied calls cost no upstream request"
    );
}

/// An unknown or missing org is answered with the orgs this caller may use, never the
/// names of others'.
#[tokio::test]
async fn org_errors_list_only_the_callers_own_orgs() {
    let h = with_org_other().await;
    let mut c = h.client.clone();
    for name in ["nope", ""] {
        let status = c
            .get_org_token(with_key(
                GetOrgTokenRequest {
                    org: name.into(),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .unwrap_err();
        let message = status.message();
        assert!(
            message.contains("acme") && !message.contains("other"),
            "{name:?}: {message}"
        );
    }
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_is_resource_exhausted() {
    let h = start(callers_toml(
        "rate_limit_per_second = 1\nrate_limit_burst = 3",
    ))
    .await;
    let mut c = h.client.clone();
    for _ in 0..3 {
        c.get_org_token(with_key(org_request("acme"), KEY))
            .await
            .unwrap();
    }
    let status = c
        .get_org_token(with_key(org_request("acme"), KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );
}

/// Past `server.max_waiting_callers` a cache miss is refused, naming the setting; callers
/// answered from the cache are never counted, however many there are at once.
#[tokio::test]
async fn waiting_callers_beyond_the_limit_are_resource_exhausted_cached_ones_never() {
    let h = start("[server]\nmax_waiting_callers = 2\n".into()).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Latency { millis: 500 },
        Target::Any,
    ));
    let results = h.user_tokens((1..=6).map(|i| h.user(i).person_id)).await;
    let exhausted: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .filter(|s| s.code() == Code::ResourceExhausted)
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!((ok, exhausted.len()), (2, 4), "{results:?}");
    assert!(
        exhausted[0]
            .message()
            .contains("server.max_waiting_callers"),
        "{}",
        exhausted[0].message()
    );
    // The two held users, 200 callers at once: all answered from the cache.
    h.sandbox.clear_faults();
    let held: Vec<usize> = (1..=6).filter(|&i| results[i - 1].is_ok()).collect();
    let cached = h
        .user_tokens((0..200).map(|n| h.user(held[n % held.len()]).person_id))
        .await;
    common::assert_all_ok(&cached);
}

#[tokio::test]
async fn an_oversized_request_is_refused() {
    let h = start("[server]\nmax_request_bytes = 1024\n".into()).await;
    let huge = GetUserTokenRequest {
        org: "acme".into(),
        user_id: "x".repeat(4096),
        ..Default::default()
    };
    let status = h.client.clone().get_user_token(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        h.client
            .clone()
            .get_org_token(org_request("acme"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let elsewhere = Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let h = start(String::new()).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Redirect {
            location: elsewhere.token_url(),
        },
        Target::Any,
    ));
    let status = h
        .client
        .clone()
        .get_org_token(org_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("307"), "{}", status.message());
    assert_eq!(
        elsewhere.stats().upstream_requests(),
        0,
        "the credentials went nowhere else"
    );
}

/// A CA, a server certificate for localhost, and client certificates it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// (certificate PEM, key PEM) for `names` (DNS names, or URIs when they hold "://").
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = names
            .iter()
            .map(|n| {
                if n.contains("://") {
                    SanType::URI((*n).try_into().unwrap())
                } else {
                    SanType::DnsName((*n).try_into().unwrap())
                }
            })
            .collect();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<TokenServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(TokenServiceClient::new(channel))
}

#[tokio::test]
async fn mutual_tls_names_the_caller_by_its_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (server_cert, server_key) = pki.leaf(&["localhost"]);
    std::fs::write(dir.path().join("server.pem"), &server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &server_key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), pki.ca.pem()).unwrap();
    let sandbox = Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let toml = format!(
        "[server]\nlisten = \"0.0.0.0:0\"\n[server.tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\nclient_ca_file = \"ca.pem\"\n\
         [[callers]]\nname = \"erp\"\ntls_names = [\"spiffe://acme.example/erp\"]\norgs = [\"*\"]\npermissions = [\"org_token\"]\n{}\n{}",
        callers_toml(""),
        acme_toml(&sandbox)
    );
    let secret = sandbox.config().orgs[0].client_secret.clone();
    let config = Config::parse(
        &toml,
        &|n| (n == "ACME_SECRET").then(|| secret.clone()),
        dir.path(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tokenbroker::run(config, listener, std::future::pending()));
    let ca = pki.ca.pem();

    let erp = pki.leaf(&["spiffe://acme.example/erp"]);
    let mut client = tls_client(addr, &ca, Some(&erp)).await.unwrap();
    assert_eq!(
        client
            .get_org_token(org_request("acme"))
            .await
            .unwrap()
            .into_inner()
            .token
            .unwrap()
            .org,
        "acme"
    );

    // A certificate from the CA that names no caller.
    let stranger = pki.leaf(&["spiffe://acme.example/stranger"]);
    let status = tls_client(addr, &ca, Some(&stranger))
        .await
        .unwrap()
        .get_org_token(org_request("acme"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("spiffe://acme.example/stranger"),
        "{}",
        status.message()
    );

    // No client certificate: an API key over TLS works, nothing at all does not.
    let mut anonymous = tls_client(addr, &ca, None).await.unwrap();
    assert!(
        anonymous
            .get_org_token(with_key(org_request("acme"), KEY))
            .await
            .is_ok()
    );
    assert_eq!(
        anonymous
            .get_org_token(org_request("acme"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // A certificate from another CA does not get through the handshake.
    let rogue = Pki::new().leaf(&["spiffe://acme.example/erp"]);
    let refused = match tls_client(addr, &ca, Some(&rogue)).await {
        Err(_) => true,
        Ok(mut c) => c
            .get_org_token(org_request("acme"))
            .await
            .is_err_and(|s| s.code() != Code::Ok),
    };
    assert!(refused);
    // Plain text to the TLS port fails.
    let plain = TokenServiceClient::connect(format!("http://{addr}")).await;
    assert!(match plain {
        Err(_) => true,
        Ok(mut c) => c
            .get_org_token(with_key(org_request("acme"), KEY))
            .await
            .is_err(),
    });
}

async fn unix_client(path: &Path) -> TokenServiceClient<Channel> {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    TokenServiceClient::new(channel)
}

#[tokio::test]
async fn a_unix_socket_names_the_caller_by_its_uid() {
    let dir = tempfile::tempdir().unwrap();
    let uid = std::fs::metadata(dir.path()).unwrap().uid();
    let sandbox = Sandbox::start(
        sandbox_config(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let secret = sandbox.config().orgs[0].client_secret.clone();
    for (allowed_uid, socket) in [(uid, "ok.sock"), (uid + 1, "other.sock")] {
        let path = dir.path().join(socket);
        let toml = format!(
            "[server]\nlisten = \"unix://{}\"\n[[callers]]\nname = \"cards\"\nunix_uids = [{allowed_uid}]\norgs = [\"acme\"]\npermissions = [\"org_token\"]\n{}",
            path.display(),
            acme_toml(&sandbox)
        );
        let config = Config::parse(
            &toml,
            &|n| (n == "ACME_SECRET").then(|| secret.clone()),
            dir.path(),
        )
        .unwrap();
        assert_eq!(config.listen, Listen::Unix(path.clone()));
        let listener = Listener::bind(&config.listen).await.unwrap();
        tokio::spawn(tokenbroker::run(config, listener, std::future::pending()));
        let result = unix_client(&path)
            .await
            .get_org_token(org_request("acme"))
            .await;
        if allowed_uid == uid {
            assert_eq!(result.unwrap().into_inner().token.unwrap().org, "acme");
            // A malformed credential is refused, not passed over for the uid.
            let mut basic = Request::new(org_request("acme"));
            basic
                .metadata_mut()
                .insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
            let status = unix_client(&path)
                .await
                .get_org_token(basic)
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(status.message().contains("Bearer"), "{}", status.message());
        } else {
            let status = result.unwrap_err();
            assert_eq!(status.code(), Code::Unauthenticated);
            assert!(
                status.message().contains(&format!("uid {uid}")),
                "{}",
                status.message()
            );
        }
    }
}

/// A Unix socket path a live process listens on is refused; a stale socket file (no one
/// listening) is replaced.
#[tokio::test]
async fn a_live_unix_socket_is_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.sock");
    let listen = Listen::Unix(path.clone());
    let live = Listener::bind(&listen).await.unwrap();
    let Err(e) = Listener::bind(&listen).await else {
        panic!("a second listener took the live socket");
    };
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    drop(live);
    assert!(path.exists(), "the socket file stays behind");
    assert!(
        Listener::bind(&listen).await.is_ok(),
        "a stale one is replaced"
    );
}

#[test]
fn without_callers_only_local_listeners_are_allowed() {
    let org =
        "[orgs.acme]\nenvironment = \"production\"\nclient_id = \"x\"\nclient_secret_env = \"S\"\n";
    let env = |_: &str| Some("secret".to_owned());
    let parse =
        |server: &str| Config::parse(&format!("[server]\n{server}\n{org}"), &env, Path::new("."));
    let e = parse("listen = \"0.0.0.0:50051\"").unwrap_err();
    assert_eq!(e.key, "server.listen");
    assert!(e.message.contains("allow_unauthenticated"), "{e}");
    assert!(parse("listen = \"0.0.0.0:50051\"\nallow_unauthenticated = true").is_ok());
    assert!(parse("listen = \"127.0.0.1:50051\"").is_ok());
    assert!(parse("listen = \"unix:///tmp/tb.sock\"").is_ok());
    let with_callers = format!(
        "[server]\nlisten = \"0.0.0.0:50051\"\n{}\n{org}",
        callers_toml("")
    );
    assert!(Config::parse(&with_callers, &env, Path::new(".")).is_ok());
    // The --listen flag is checked the same way.
    let local = parse("listen = \"127.0.0.1:50051\"").unwrap();
    assert_eq!(
        local
            .with_listen("0.0.0.0:1".parse().unwrap())
            .unwrap_err()
            .key,
        "server.listen"
    );
    // Keys themselves never go in the config.
    let e = Config::parse(&format!("[[callers]]\nname = \"x\"\napi_key = \"k\"\norgs = [\"*\"]\npermissions = [\"watch\"]\n{org}"), &env, Path::new(".")).unwrap_err();
    assert_eq!(e.key, "callers[0].api_key");
}

#[test]
fn hash_key_prints_the_value_for_the_config() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokenbroker"))
        .arg("hash-key")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(KEY.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        api_key_hash(KEY)
    );
}
