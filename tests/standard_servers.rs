//! The broker against two authorization servers nobody here wrote: `oidc-provider` (npm,
//! OpenID-certified) and `authlib` (PyPI), started by each test on loopback. Org and user
//! tokens with each client authentication method, rotation with single-use refresh tokens,
//! coalescing, scope, resource indicators, discovery, a private CA, a missing `expires_in`,
//! and each permanent refusal with its status and message. Skipped (saying so) where the
//! servers' packages are missing, unless `TOKENBROKER_OAUTH_SERVER_TESTS=required` (CI).

mod common;

use common::{
    Harness,
    oauth_server::{Kind, OAuthServer},
    sandbox_config, seconds_left,
};
use serde_json::{Value, json};
use tonic::Code;

/// The secret of every confidential test client: `+` and `%`-worthy characters, so the
/// form and Basic encodings are exercised (it is the sandbox's, which the harness hands
/// out for `ACME_SECRET`).
const SECRET: &str = "acme-secret-Zq8+";
const SCOPES: &str = "invoices.read invoices.write";
const RESOURCE: &str = "https://billing.example.com";
const REDIRECT: &str = "http://127.0.0.1/callback";
const ALL_GRANTS: [&str; 3] = ["client_credentials", "authorization_code", "refresh_token"];

/// The org's signing key for `private_key_jwt`, and its public JWK for the server.
struct Key {
    pem: String,
    jwk: Value,
}

fn key() -> Key {
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let jwk = tokenbroker::upstream::ClientKey::from_pem(pem.as_bytes(), Some("acme-1".into()))
        .unwrap()
        .public_jwk();
    Key { pem, jwk }
}

/// The server's config: a client per auth method, one with a narrow scope, one without
/// client credentials; two users.
fn server_config(kind: Kind, key: &Key, extra: Value) -> Value {
    let client = |id: &str, method: &str, scope: &str, grants: &[&str]| {
        let mut c = json!({
            "client_id": id,
            "auth_method": method,
            "scope": scope,
            "grant_types": grants,
        });
        if method == "private_key_jwt" {
            c["jwks"] = json!({ "keys": [key.jwk] });
        } else if method != "none" {
            c["client_secret"] = SECRET.into();
        }
        c
    };
    let mut config = json!({
        "token_lifetime": 3600,
        "clients": [
            client("basic-client", "client_secret_basic", SCOPES, &ALL_GRANTS),
            client("post-client", "client_secret_post", SCOPES, &ALL_GRANTS),
            client("jwt-client", "private_key_jwt", SCOPES, &ALL_GRANTS),
            client("narrow-client", "client_secret_basic", "invoices.read", &ALL_GRANTS),
            client("code-only-client", "client_secret_basic", SCOPES, &["authorization_code", "refresh_token"]),
            client("public-client", "none", SCOPES, &ALL_GRANTS),
        ],
        "users": ["EMP-00001", "EMP-00002"],
    });
    if kind == Kind::OidcProvider {
        // RFC 8707 resource servers: oidc-provider's JWT access tokens for an audience.
        config["resources"] = json!({ RESOURCE: { "scope": SCOPES } });
    }
    if let (Some(config), Some(extra)) = (config.as_object_mut(), extra.as_object()) {
        config.extend(extra.clone());
    }
    config
}

/// Starts `kind`, or says why not (and the test passes as skipped).
fn start(kind: Kind, key: &Key, extra: Value) -> Option<OAuthServer> {
    kind.available()
        .then(|| OAuthServer::start(kind, &server_config(kind, key, extra)))
}

/// Org `acme` at `server` as `client_id` authenticating by `method`, with `extra` lines.
fn org_toml(server: &OAuthServer, client_id: &str, method: &str, extra: &str) -> String {
    let credential = if method == "private_key_jwt" {
        "client_key_env = \"ACME_KEY\"\nclient_key_id = \"acme-1\""
    } else if method == "none" {
        // A public client holds no secret.
        ""
    } else {
        "client_secret_env = \"ACME_SECRET\""
    };
    format!(
        "[orgs.acme]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nredirect_uri = \"{REDIRECT}\"\nclient_id = \"{client_id}\"\nclient_auth = \"{method}\"\n{credential}\n{extra}\n",
        server.token_url(),
        server.grant_url()
    )
}

/// A broker (and an idle sandbox the harness wants) configured by `toml`.
async fn broker(key: &Key, toml: String) -> Harness {
    let pem = key.pem.clone();
    Harness::with(
        sandbox_config(),
        move |_| toml.clone(),
        move |name| (name == "ACME_KEY").then(|| pem.clone()),
    )
    .await
}

/// The claims of a JWT access token (not verified: the test only reads them).
fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

async fn assert_no_reuse(server: &OAuthServer) {
    let stats = server.stats().await;
    assert_eq!(stats["refresh_reused"], 0, "{:?}: {stats}", server.kind);
}

async fn every_client_auth_method_gets_org_and_user_tokens_and_rotates(kind: Kind) {
    let key = key();
    let Some(server) = start(kind, &key, json!({})) else {
        return;
    };
    for (client, method) in [
        ("basic-client", "client_secret_basic"),
        ("post-client", "client_secret_post"),
        ("jwt-client", "private_key_jwt"),
        ("public-client", "none"),
    ] {
        let before = server.stats().await;
        let h = broker(&key, org_toml(&server, client, method, "")).await;
        let org = h
            .org_token()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} {method}: {e:?}"));
        assert_eq!(org.token_type, "Bearer");
        // A user token: the wrapper's grant endpoint, then the server's own code exchange,
        // authenticated as `method`.
        let user = h
            .user_token("EMP-00001")
            .await
            .unwrap_or_else(|e| panic!("{kind:?} {method}: {e:?}"));
        assert_ne!(user.access_token, org.access_token);
        // Rotation through the server's single-use refresh token; 50 callers reporting the
        // same stale token cost one rotation.
        let stale = user.access_token.clone();
        let answers =
            futures::future::join_all((0..50).map(|_| h.refresh("EMP-00001", &stale))).await;
        let rotated: Vec<_> = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| panic!("{kind:?} {method}: {e:?}")))
            .collect();
        assert!(
            rotated
                .iter()
                .all(|t| t.access_token == rotated[0].access_token)
        );
        assert_ne!(rotated[0].access_token, stale);
        assert_eq!(rotated[0].generation, user.generation + 1);
        // And again, from the rotated token: the new refresh token works once more.
        let again = h
            .refresh("EMP-00001", &rotated[0].access_token)
            .await
            .unwrap();
        assert_eq!(again.generation, user.generation + 2);
        let after = server.stats().await;
        let count = |stats: &Value, grant: &str| stats["by_grant"][grant].as_u64().unwrap_or(0);
        let sent: Vec<u64> = ["client_credentials", "authorization_code", "refresh_token"]
            .iter()
            .map(|g| count(&after, g) - count(&before, g))
            .collect();
        assert_eq!(sent, [1, 1, 2], "{kind:?} {method}: {after}");
        assert_no_reuse(&server).await;
    }
}

async fn discovery_finds_the_endpoint_and_a_supported_method(kind: Kind) {
    let key = key();
    let Some(server) = start(kind, &key, json!({})) else {
        return;
    };
    // No client_auth: discovery picks one the server supports (client_secret_post, the
    // broker's first choice, which the post client is registered for).
    let toml = format!(
        "[orgs.acme]\nissuer = \"{}\"\nclient_id = \"post-client\"\nclient_secret_env = \"ACME_SECRET\"\n",
        server.issuer
    );
    let h = broker(&key, toml).await;
    h.org_token()
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
    drop(h);
    // Explicitly, with the key: the discovered endpoint is the assertion's audience.
    let toml = format!(
        "[orgs.acme]\nissuer = \"{}\"\nclient_id = \"jwt-client\"\nclient_auth = \"private_key_jwt\"\nclient_key_env = \"ACME_KEY\"\n",
        server.issuer
    );
    let h = broker(&key, toml).await;
    h.org_token()
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
}

async fn scope_is_granted_and_a_refused_one_names_the_setting(kind: Kind) {
    let key = key();
    let Some(server) = start(kind, &key, json!({})) else {
        return;
    };
    let h = broker(
        &key,
        org_toml(
            &server,
            "narrow-client",
            "client_secret_basic",
            "scope = \"invoices.read\"",
        ),
    )
    .await;
    let token = h
        .org_token()
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
    assert_eq!(token.scope, "invoices.read", "{kind:?}");
    drop(h);
    // A scope the server knows but this client may not have.
    let h = broker(
        &key,
        org_toml(
            &server,
            "narrow-client",
            "client_secret_basic",
            "scope = \"invoices.write\"",
        ),
    )
    .await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
    assert!(
        e.message().contains("invalid_scope"),
        "{kind:?}: {}",
        e.message()
    );
    assert!(
        e.message().contains("orgs.acme.scope"),
        "{kind:?}: {}",
        e.message()
    );
    // Held, not retried: a second call costs no request.
    let before = server.stats().await["token_requests"].as_u64();
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(server.stats().await["token_requests"].as_u64(), before);
}

async fn refusals_are_preconditions_naming_what_to_fix(kind: Kind) {
    let key = key();
    let Some(server) = start(kind, &key, json!({})) else {
        return;
    };
    let precondition = |e: tonic::Status, says: &[&str]| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
        for s in says {
            assert!(
                e.message().contains(s),
                "{kind:?}: {s:?} not in {}",
                e.message()
            );
        }
    };
    // A wrong secret names the method it went with.
    let h = Harness::with(
        sandbox_config(),
        {
            let toml = org_toml(&server, "basic-client", "client_secret_basic", "");
            move |_| toml.clone()
        },
        |name| (name == "ACME_SECRET").then(|| "not-the-secret".to_owned()),
    )
    .await;
    precondition(
        h.org_token().await.unwrap_err(),
        &["client_auth = client_secret_basic"],
    );
    drop(h);
    // A client the server does not allow client credentials.
    let h = broker(
        &key,
        org_toml(&server, "code-only-client", "client_secret_basic", ""),
    )
    .await;
    precondition(h.org_token().await.unwrap_err(), &["orgs.acme", "grant"]);
    drop(h);
    // Token exchange at a server without it: unsupported_grant_type.
    let h = broker(
        &key,
        format!(
            "[orgs.acme]\ntoken_url = \"{}\"\nclient_id = \"basic-client\"\nclient_auth = \"client_secret_basic\"\nclient_secret_env = \"ACME_SECRET\"\nuser_grant = \"token_exchange\"\n",
            server.token_url()
        ),
    )
    .await;
    h.org_token().await.unwrap();
    precondition(
        h.user_token("EMP-00001").await.unwrap_err(),
        &["unsupported_grant_type"],
    );
    drop(h);
    // A user the server does not know.
    let h = broker(
        &key,
        org_toml(&server, "basic-client", "client_secret_basic", ""),
    )
    .await;
    let e = h.user_token("EMP-99999").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{kind:?}: {e:?}");
    assert_no_reuse(&server).await;
}

async fn a_private_ca_is_trusted_through_ca_file(kind: Kind) {
    if !kind.available() {
        return;
    }
    let pki = common::TestPki::new();
    let path = |name: &str| pki.path(name);
    let key = key();
    let server = OAuthServer::start(
        kind,
        &server_config(
            kind,
            &key,
            json!({ "tls": { "cert": path("leaf.pem"), "key": path("leaf-key.pem") } }),
        ),
    );
    assert!(server.issuer.starts_with("https://"), "{}", server.issuer);
    let h = broker(
        &key,
        org_toml(&server, "basic-client", "client_secret_basic", ""),
    )
    .await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{kind:?}: {e:?}");
    assert!(e.message().contains("orgs.acme.ca_file"), "{}", e.message());
    drop(h);
    let trusted = format!("ca_file = {:?}", path("ca.pem"));
    let h = broker(
        &key,
        org_toml(&server, "basic-client", "client_secret_basic", &trusted),
    )
    .await;
    h.org_token()
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
    h.user_token("EMP-00002")
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod oidc_provider {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::OidcProvider).await;
            })*
        }
        mod authlib {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Kind::Authlib).await;
            })*
        }
    };
}

on_both!(
    every_client_auth_method_gets_org_and_user_tokens_and_rotates,
    discovery_finds_the_endpoint_and_a_supported_method,
    scope_is_granted_and_a_refused_one_names_the_setting,
    refusals_are_preconditions_naming_what_to_fix,
    a_private_ca_is_trusted_through_ca_file,
);

/// RFC 8707: with `resource`, oidc-provider issues JWT access tokens for that audience,
/// the org's and the users' alike.
#[tokio::test]
async fn oidc_provider_resource_indicators_give_tokens_for_the_audience() {
    let key = key();
    let Some(server) = start(Kind::OidcProvider, &key, json!({})) else {
        return;
    };
    let extra = format!("resource = \"{RESOURCE}\"\nscope = \"invoices.read\"");
    let h = broker(
        &key,
        org_toml(&server, "basic-client", "client_secret_basic", &extra),
    )
    .await;
    let org = h.org_token().await.unwrap();
    assert_eq!(claims(&org.access_token)["aud"], RESOURCE);
    let user = h.user_token("EMP-00001").await.unwrap();
    assert_eq!(claims(&user.access_token)["aud"], RESOURCE);
    assert_eq!(claims(&user.access_token)["sub"], "EMP-00001");
    let rotated = h.refresh("EMP-00001", &user.access_token).await.unwrap();
    assert_eq!(claims(&rotated.access_token)["aud"], RESOURCE);
    assert_no_reuse(&server).await;
}

/// authlib can issue refresh tokens on client credentials: the org token then rotates
/// through its refresh token (authenticated), not through a new grant.
#[tokio::test]
async fn authlib_org_tokens_rotate_through_their_refresh_token() {
    let key = key();
    let Some(server) = start(
        Kind::Authlib,
        &key,
        json!({ "refresh_on_client_credentials": true }),
    ) else {
        return;
    };
    for (client, method) in [
        ("basic-client", "client_secret_basic"),
        ("jwt-client", "private_key_jwt"),
    ] {
        let before = server.requests("refresh_token").await;
        let h = broker(&key, org_toml(&server, client, method, "")).await;
        let org = h.org_token().await.unwrap();
        let rotated = h.refresh("", &org.access_token).await.unwrap();
        assert_eq!(rotated.generation, org.generation + 1, "{method}");
        assert_eq!(
            server.requests("refresh_token").await - before,
            1,
            "{method}"
        );
    }
    assert_eq!(server.requests("client_credentials").await, 2);

    // The platform's exact form (client_id alone on refresh): authlib refuses the refresh
    // with invalid_client, and the broker re-issues through client credentials once
    // instead of holding the org.
    let h = broker(&key, org_toml(&server, "post-client", "findity", "")).await;
    let org = h.org_token().await.unwrap();
    let rotated = h.refresh("", &org.access_token).await.unwrap();
    assert_eq!(rotated.generation, org.generation + 1);
    assert_eq!(server.requests("client_credentials").await, 4);
    assert_eq!(server.stats().await["errors"]["invalid_client"], 1);
    assert!(h.broker.is_ready());
    assert_no_reuse(&server).await;
}

/// authlib leaving `expires_in` out: a JWT access token's `exp` gives the lifetime; an
/// opaque one needs `default_token_lifetime`, and without it the refusal names it.
#[tokio::test]
async fn authlib_without_expires_in_uses_the_jwt_exp_or_the_configured_default() {
    let key = key();
    let Some(jwt) = start(
        Kind::Authlib,
        &key,
        json!({ "omit_expires_in": true, "jwt_access_tokens": true, "token_lifetime": 900 }),
    ) else {
        return;
    };
    let h = broker(
        &key,
        org_toml(&jwt, "basic-client", "client_secret_basic", ""),
    )
    .await;
    let token = h.org_token().await.unwrap();
    let left = seconds_left(&token);
    assert!(
        (880.0..=900.0).contains(&left),
        "from the JWT's exp: {left}"
    );
    drop(h);

    let opaque = OAuthServer::start(
        Kind::Authlib,
        &server_config(
            Kind::Authlib,
            &key,
            json!({ "omit_expires_in": true, "token_lifetime": 900 }),
        ),
    );
    let h = broker(
        &key,
        org_toml(&opaque, "basic-client", "client_secret_basic", ""),
    )
    .await;
    let e = h.org_token().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("orgs.acme.default_token_lifetime"),
        "{}",
        e.message()
    );
    drop(h);
    let h = broker(
        &key,
        org_toml(
            &opaque,
            "basic-client",
            "client_secret_basic",
            "default_token_lifetime = \"10m\"",
        ),
    )
    .await;
    let token = h.org_token().await.unwrap();
    let left = seconds_left(&token);
    assert!(
        (580.0..=600.0).contains(&left),
        "the configured default: {left}"
    );
}
