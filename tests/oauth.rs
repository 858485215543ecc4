//! Any standard OAuth 2.0 server, not only the platform: client authentication on every
//! token request (`client_auth`), against the sandbox as a strict server (one that demands
//! it on refresh and code exchange, as RFC 6749 §6 and §4.1.3 say) and as the platform (its
//! page asks only `client_id` there); an org with no user-token endpoint.

mod common;

use common::{Harness, acme_toml, sandbox_config};
use tokenbroker::sandbox::{Sandbox, SandboxConfig};
use tonic::Code;

/// The sandbox as a strict server.
fn strict() -> SandboxConfig {
    SandboxConfig {
        strict_client_auth: true,
        ..sandbox_config()
    }
}

/// Org `acme` with `client_auth = method`.
fn with_auth(method: &'static str) -> impl Fn(&Sandbox) -> String {
    move |sandbox| format!("{}client_auth = \"{method}\"\n", acme_toml(sandbox))
}

#[tokio::test]
async fn a_strict_server_gets_client_authentication_on_every_token_request() {
    for method in ["client_secret_post", "client_secret_basic"] {
        let h = Harness::with(strict(), with_auth(method), |_| None).await;
        let first = h.org_token().await.unwrap();
        let rotated = h.refresh("", &first.access_token).await.unwrap();
        assert_eq!(rotated.generation, 2, "{method}");
        let user = h.user_token("EMP-00001").await.unwrap();
        h.assert_acts_as(&user.access_token, "EMP-00001").await;
        let again = h.refresh("EMP-00001", &user.access_token).await.unwrap();
        assert_ne!(again.access_token, user.access_token);
        let stats = h.sandbox.stats();
        assert_eq!(
            (
                stats.client_credentials,
                stats.refresh_token,
                stats.authorization_code
            ),
            (1, 2, 1),
            "{method}: refreshes through refresh tokens, not new grants: {stats:?}"
        );
    }
}

#[tokio::test]
async fn the_default_sends_the_secret_which_the_platform_accepts_too() {
    let h = Harness::with(sandbox_config(), acme_toml, |_| None).await;
    let first = h.org_token().await.unwrap();
    h.refresh("", &first.access_token).await.unwrap();
    let user = h.user_token("EMP-00002").await.unwrap();
    h.refresh("EMP-00002", &user.access_token).await.unwrap();
    let stats = h.sandbox.stats();
    assert_eq!((stats.client_credentials, stats.refresh_token), (1, 2));
}

#[tokio::test]
async fn the_platforms_exact_form_works_there_and_falls_back_once_where_refused() {
    // On the platform: client_id alone on refresh, as its page shows.
    let h = Harness::with(sandbox_config(), with_auth("findity"), |_| None).await;
    let first = h.org_token().await.unwrap();
    h.refresh("", &first.access_token).await.unwrap();
    assert_eq!(h.sandbox.stats().refresh_token, 1);
    drop(h);

    // On a strict server the refresh is refused (invalid_client): the org is re-issued
    // through client credentials at once, not held, and readiness stays.
    let h = Harness::with(strict(), with_auth("findity"), |_| None).await;
    let first = h.org_token().await.unwrap();
    let rotated = h.refresh("", &first.access_token).await.unwrap();
    assert_eq!(rotated.generation, 2);
    let stats = h.sandbox.stats();
    assert_eq!(
        (stats.client_credentials, stats.refresh_token),
        (2, 1),
        "{stats:?}"
    );
    assert!(h.broker.is_ready());
    // The code exchange is refused too, and the error names the method.
    let e = h.user_token("EMP-00001").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("client_auth = findity"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_wrong_secret_names_the_method_it_was_sent_with() {
    let h = Harness::with(sandbox_config(), with_auth("client_secret_basic"), |name| {
        (name == common::SECRET_ENV).then(|| "not-the-secret".to_owned())
    })
    .await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("client_auth = client_secret_basic"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn an_org_without_a_grant_endpoint_hands_out_org_tokens_only() {
    let toml = |sandbox: &Sandbox| {
        format!(
            "[orgs.acme]\ntoken_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{}\"\n",
            sandbox.token_url(),
            common::SECRET_ENV
        )
    };
    let h = Harness::with(sandbox_config(), toml, |_| None).await;
    h.org_token().await.unwrap();
    let e = h.user_token("EMP-00001").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("orgs.acme.authorization_grant_url"),
        "{}",
        e.message()
    );
    assert_eq!(h.sandbox.stats().authorization_grant, 0);
}

/// A server that leaves `expires_in` out (it is only RECOMMENDED): without a JWT `exp`
/// and without `default_token_lifetime`, a clear refusal naming the setting (not "try
/// again shortly" forever); with it, tokens of that life.
#[tokio::test]
async fn a_missing_expires_in_takes_the_configured_default_or_names_it() {
    let omitting = || SandboxConfig {
        omit_expires_in: true,
        ..sandbox_config()
    };
    let h = Harness::with(omitting(), acme_toml, |_| None).await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("orgs.acme.default_token_lifetime"),
        "{}",
        e.message()
    );
    // Held like rejected credentials: the server is not asked again at once.
    let asked = h.sandbox.stats().client_credentials;
    assert!(h.org_token().await.is_err());
    assert_eq!(h.sandbox.stats().client_credentials, asked);
    drop(h);

    let toml = |s: &Sandbox| format!("{}default_token_lifetime = \"30m\"\n", acme_toml(s));
    let h = Harness::with(omitting(), toml, |_| None).await;
    let token = h.org_token().await.unwrap();
    let left = common::seconds_left(&token);
    assert!((1700.0..=1800.0).contains(&left), "{left}");
}

/// A token URL behind a private CA: untrusted, it is a clear refusal naming `ca_file`;
/// with `ca_file`, it works.
#[tokio::test]
async fn a_private_ca_is_trusted_through_ca_file() {
    use tokio_rustls::{
        TlsAcceptor,
        rustls::{
            ServerConfig,
            pki_types::{CertificateDer, PrivateKeyDer},
        },
    };
    let sandbox = Sandbox::start(
        sandbox_config(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    // A TLS front for the sandbox, its certificate from a CA of the test's own.
    let pki = common::TestPki::new();
    let config = ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(pki.leaf_der.clone())],
        PrivateKeyDer::try_from(pki.leaf_key_der.clone()).unwrap(),
    )
    .unwrap();
    let acceptor = TlsAcceptor::from(std::sync::Arc::new(config));
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    let backend = sandbox.addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = front.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut plain)) = (
                    acceptor.accept(tcp).await,
                    tokio::net::TcpStream::connect(backend).await,
                ) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    let ca_file = pki.path("ca.pem");
    let toml = |extra: &str| {
        format!(
            "[orgs.acme]\ntoken_url = \"https://{front_addr}/oauth/token\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{}\"\n{extra}",
            common::SECRET_ENV
        )
    };

    let h = Harness::on(sandbox.handle(), &toml(""), |_| None).await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("orgs.acme.ca_file"), "{}", e.message());
    drop(h);

    let trusted = format!("ca_file = {ca_file:?}");
    let h = Harness::on(sandbox.handle(), &toml(&trusted), |_| None).await;
    h.org_token().await.expect("trusted through ca_file");
}

/// What a standard server may need beyond the grant: scope, audience, resource, more form
/// parameters and headers, a redirect URI on the code exchange; the granted scope comes
/// back in the Token message.
#[tokio::test]
async fn scope_audience_resource_and_extras_are_sent_and_the_granted_scope_returned() {
    let toml = |s: &Sandbox| {
        format!(
            "{}scope = [\"read\", \"write\"]\naudience = \"https://api.example\"\nresource = \"https://api.example/v1\"\nredirect_uri = \"https://app.example/cb\"\nextra_params = {{ tenant = \"t1\" }}\nextra_headers = {{ \"X-Tenant\" = \"t1\" }}\n",
            acme_toml(s)
        )
    };
    let h = Harness::with(sandbox_config(), toml, |_| None).await;
    let token = h.org_token().await.unwrap();
    assert_eq!(token.scope, "read write");
    let sent = h.sandbox.last_token_request();
    let has = |k: &str, v: &str| sent.iter().any(|(a, b)| a == k && b == v);
    for (k, v) in [
        ("grant_type", "client_credentials"),
        ("scope", "read write"),
        ("audience", "https://api.example"),
        ("resource", "https://api.example/v1"),
        ("tenant", "t1"),
        ("header:x-tenant", "t1"),
        ("client_secret", "***"),
    ] {
        assert!(has(k, v), "{k}={v} not in {sent:?}");
    }
    // The code exchange names the redirect URI, and the resource; not the scope.
    h.user_token("EMP-00001").await.unwrap();
    let sent = h.sandbox.last_token_request();
    let has = |k: &str, v: &str| sent.iter().any(|(a, b)| a == k && b == v);
    assert!(has("grant_type", "authorization_code"), "{sent:?}");
    assert!(has("redirect_uri", "https://app.example/cb"), "{sent:?}");
    assert!(has("resource", "https://api.example/v1"), "{sent:?}");
    assert!(!sent.iter().any(|(k, _)| k == "scope"), "{sent:?}");
}

#[tokio::test]
async fn a_scope_the_server_refuses_is_a_precondition_naming_the_setting() {
    let server = SandboxConfig {
        scopes: vec!["read".into()],
        ..sandbox_config()
    };
    let toml = |s: &Sandbox| format!("{}scope = \"read admin\"\n", acme_toml(s));
    let h = Harness::with(server, toml, |_| None).await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("invalid_scope"), "{}", e.message());
    assert!(
        e.message().contains("\"admin\""),
        "the server's description: {}",
        e.message()
    );
    assert!(e.message().contains("orgs.acme.scope"), "{}", e.message());
}

/// `issuer`: the token URL and a supported auth method come from the server's metadata at
/// start; a configured method the server does not support refuses the start, naming it.
#[tokio::test]
async fn discovery_fills_the_token_url_and_refuses_an_unsupported_method() {
    let toml = |extra: &'static str| {
        move |s: &Sandbox| {
            format!(
                "[orgs.acme]\nissuer = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{}\"\n{extra}",
                s.base_url(),
                common::SECRET_ENV
            )
        }
    };
    let h = Harness::with(strict(), toml(""), |_| None).await;
    let token = h.org_token().await.unwrap();
    // Refresh authenticates as the server supports (strict: it would refuse otherwise).
    h.refresh("", &token.access_token).await.unwrap();
    assert_eq!(h.sandbox.stats().refresh_token, 1);
    drop(h);

    // The sandbox supports client_secret_basic and client_secret_post, not none.
    let sandbox = Sandbox::start(
        sandbox_config(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let text = toml("client_auth = \"none\"")(&sandbox);
    let secret = sandbox.config().orgs[0].client_secret.clone();
    let env = move |name: &str| (name == common::SECRET_ENV).then(|| secret.clone());
    let config = tokenbroker::config::Config::parse(&text, &env, std::path::Path::new("."))
        .expect("the config itself is valid");
    let Err(e) = tokenbroker::Server::new(config).await else {
        panic!("an unsupported method must refuse the start");
    };
    let said = e.to_string();
    assert!(said.contains("orgs.acme.client_auth"), "{said}");
    assert!(said.contains("client_secret_basic"), "{said}");
}

/// RFC 8693 token exchange for user tokens (`user_grant = "token_exchange"`): the user id
/// as the subject, the org token as the actor, at the token endpoint; no grant endpoint.
#[tokio::test]
async fn user_tokens_through_token_exchange() {
    let toml = |s: &Sandbox| {
        format!(
            "[orgs.acme]\ntoken_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{}\"\nuser_grant = \"token_exchange\"\n",
            s.token_url(),
            common::SECRET_ENV
        )
    };
    let h = Harness::with(strict(), toml, |_| None).await;
    let user = h.user_token("EMP-00003").await.unwrap();
    h.assert_acts_as(&user.access_token, "EMP-00003").await;
    // Its refresh token rotates it, once.
    let again = h.refresh("EMP-00003", &user.access_token).await.unwrap();
    h.assert_acts_as(&again.access_token, "EMP-00003").await;
    let stats = h.sandbox.stats();
    assert_eq!(
        (
            stats.token_exchange,
            stats.authorization_grant,
            stats.refresh_token,
            stats.client_credentials
        ),
        (1, 0, 1, 1),
        "{stats:?}"
    );
    let sent = h.sandbox.last_token_request();
    assert!(
        sent.iter()
            .any(|(k, v)| k == "grant_type" && v == "refresh_token")
    );
    // A user the server does not know: NOT_FOUND.
    let e = h.user_token("EMP-99999").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

/// `private_key_jwt` (RFC 7523): every token request carries a fresh assertion signed by
/// the org's key and no secret; the sandbox, as a strict server, verifies each (and
/// refuses a reused one). A key the server does not know is refused naming the method.
#[tokio::test]
async fn private_key_jwt_signs_every_token_request_and_sends_no_secret() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pem = key.serialize_pem();
    let mut server = strict();
    server
        .client_keys
        .insert("acme-client".into(), key.public_key_raw().to_vec());
    let toml = |s: &Sandbox| {
        format!(
            "[orgs.acme]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_auth = \"private_key_jwt\"\nclient_key_env = \"ACME_KEY\"\nclient_key_id = \"acme-2026\"\n",
            s.token_url(),
            s.authorization_grant_url()
        )
    };
    let env = |name: &str| (name == "ACME_KEY").then(|| pem.clone());
    let h = Harness::with(server.clone(), toml, env).await;
    let first = h.org_token().await.unwrap();
    let sent = h.sandbox.last_token_request();
    let field = |sent: &[(String, String)], name: &str| {
        sent.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    assert_eq!(
        field(&sent, "client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        "{sent:?}"
    );
    assert_eq!(field(&sent, "client_secret"), None, "no secret: {sent:?}");
    h.refresh("", &first.access_token).await.unwrap();
    let user = h.user_token("EMP-00001").await.unwrap();
    h.assert_acts_as(&user.access_token, "EMP-00001").await;
    h.refresh("EMP-00001", &user.access_token).await.unwrap();
    let stats = h.sandbox.stats();
    assert_eq!(
        (
            stats.client_credentials,
            stats.refresh_token,
            stats.authorization_code,
            stats.errors
        ),
        (1, 2, 1, 0),
        "each request proved by its own assertion: {stats:?}"
    );
    drop(h);

    // Another key than the one the server holds for the client.
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let h = Harness::with(server, toml, |name| {
        (name == "ACME_KEY").then(|| other.clone())
    })
    .await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("client_auth = private_key_jwt"),
        "{}",
        e.message()
    );
}
