//! Demo mode: with no configuration, the broker runs the built-in sandbox on an ephemeral
//! loopback port and configures one org, `demo`, against it, with the token-injecting
//! proxy in front of its API, so grpcurl and curl work at once.

use std::io;

use tokio::net::TcpListener;

use crate::{
    audit::AuditPolicy,
    broker::{CachePolicy, Credentials, Limits, OrgSettings},
    config::{
        Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
        DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, Listen, WatchLimits,
    },
    proxy::{ProxyLimits, ProxySettings},
    sandbox::{Sandbox, SandboxConfig},
    secret::ClientSecret,
    upstream,
};

/// Starts the demo sandbox and returns it with a config whose one org points at it. Keep
/// the sandbox alive as long as the broker runs.
pub async fn start(listen: Listen) -> io::Result<(Config, Sandbox)> {
    let sandbox = Sandbox::start(
        SandboxConfig::demo(),
        TcpListener::bind("127.0.0.1:0").await?,
    )
    .await?;
    let org = &sandbox.config().orgs[0];
    let url = |u: String| u.parse().map_err(io::Error::other);
    let settings = OrgSettings {
        name: org.name.clone(),
        client: upstream::Client {
            auth: upstream::ClientAuth::default(),
            key: None,
            assertion_audience: None,
            default_lifetime: None,
            ca: None,
            extras: Default::default(),
            discovery: None,
            user_grant: Default::default(),
            token_url: url(sandbox.token_url())?,
            authorization_grant_url: Some(url(sandbox.authorization_grant_url())?),
            client_id: Some(org.client_id.clone()),
        },
        credentials: Credentials::Client {
            client_id: org.client_id.clone(),
            // The sandbox's published demo secret, not a real one.
            secrets: vec![ClientSecret::new(org.client_secret.clone())],
        },
    };
    let config = Config {
        listen,
        tls: None,
        allow_unauthenticated: false,
        callers: vec![],
        limits: Limits::default(),
        audit: AuditPolicy::default(),
        max_request_bytes: 64 * 1024,
        metrics_listen: None,
        drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        max_connections: None,
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        watch: WatchLimits::default(),
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        cache: CachePolicy::default(),
        orgs: vec![settings],
        secret_sources: Default::default(),
        store: None,
        store_source: None,
        // The proxy on a loopback port `main` binds (and names in the usage).
        proxy: Some(ProxySettings {
            listen: Listen::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            tls: None,
            limits: ProxyLimits::default(),
            api_urls: [(org.name.clone(), url(sandbox.base_url())?)].into(),
        }),
    };
    Ok((config, sandbox))
}

/// What to type to try the demo broker listening on `addr`, its proxy on `proxy`.
pub fn usage(addr: &str, proxy: &str, sandbox: &Sandbox) -> String {
    let addr = match addr.strip_prefix("unix://") {
        Some(path) => format!("-unix {path}"),
        None => addr.to_owned(),
    };
    let users = sandbox.config().orgs[0].users();
    let (person, external) = users
        .first()
        .map(|u| (u.person_id.clone(), u.external_id.clone()))
        .unwrap_or_default();
    format!(
        "demo mode: the broker runs against its built-in sandbox at {base} (org \"demo\", {n} users).\n\
         Try:\n  \
         grpcurl -plaintext {addr} list\n  \
         grpcurl -plaintext -d '{{}}' {addr} tokenbroker.v1.TokenService/GetOrgToken\n  \
         grpcurl -plaintext -d '{{\"user_id\": \"{person}\"}}' {addr} tokenbroker.v1.TokenService/GetUserToken\n  \
         grpcurl -plaintext -d '{{\"user_id\": \"{external}\"}}' {addr} tokenbroker.v1.TokenService/GetUserToken\n  \
         grpcurl -plaintext -d '{{}}' {addr} tokenbroker.v1.TokenService/Refresh\n  \
         grpcurl -plaintext -d '{{}}' {addr} tokenbroker.v1.TokenService/WatchTokens\n         The proxy adds the token itself:\n           curl http://{proxy}/api/v1/admin/organization\n           curl -H 'Tokenbroker-User: {external}' http://{proxy}/api/v1/expense/me",
        base = sandbox.base_url(),
        n = users.len(),
    )
}
