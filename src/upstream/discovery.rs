//! OIDC / RFC 8414 discovery: an org configured with `issuer` gets its token URL and a
//! client authentication method the server supports from the server's metadata, at start
//! (and at each reload), or the broker refuses, naming the setting.

use reqwest::Url;
use serde_json::Value;

use super::{Client, ClientAuth, Upstream, UpstreamError};

/// What an org's discovery starts from (`orgs.NAME.issuer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The issuer identifier: its metadata must name exactly this one.
    pub issuer: Url,
    /// Whether `client_auth` was set in the config (then the server must support it);
    /// otherwise the first of the broker's methods the server supports is taken.
    pub auth_explicit: bool,
}

/// Why discovery failed: a setting to fix (or a server to reach) before the org can work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("orgs.{org}.issuer: {problem}")]
pub struct DiscoveryError {
    pub org: String,
    pub problem: String,
}

/// The metadata the broker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub token_endpoint: Url,
    pub auth_methods: Vec<String>,
}

/// Parses metadata `body` of `issuer` (RFC 8414 §2, §3.3: the issuer must match).
pub fn metadata(issuer: &Url, body: &[u8]) -> Result<Metadata, String> {
    let json: Value =
        serde_json::from_slice(body).map_err(|_| "the metadata is not JSON".to_owned())?;
    let named = json
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
        return Err(format!(
            "the metadata names issuer {named:?}, not {:?}",
            issuer.as_str()
        ));
    }
    let token_endpoint = json
        .get("token_endpoint")
        .and_then(Value::as_str)
        .ok_or("the metadata has no token_endpoint")?;
    let token_endpoint = Url::parse(token_endpoint)
        .map_err(|e| format!("its token_endpoint {token_endpoint:?} is not a URL: {e}"))?;
    let loopback = matches!(
        token_endpoint.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]")
    );
    if token_endpoint.scheme() != "https" && !(token_endpoint.scheme() == "http" && loopback) {
        return Err(format!(
            "its token_endpoint {:?} is not https://",
            token_endpoint.as_str()
        ));
    }
    // RFC 8414 §2: absent means client_secret_basic.
    let auth_methods = match json.get("token_endpoint_auth_methods_supported") {
        Some(Value::Array(methods)) => methods
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec!["client_secret_basic".to_owned()],
    };
    Ok(Metadata {
        token_endpoint,
        auth_methods,
    })
}

/// The method to use: the configured one if the server supports it (`explicit`), else the
/// first of the broker's it supports.
pub fn choose(
    current: ClientAuth,
    explicit: bool,
    supported: &[String],
) -> Result<ClientAuth, String> {
    let supports = |m: ClientAuth| {
        let name = match m {
            // The platform's form is client_secret_post where it sends a secret.
            ClientAuth::Findity => "client_secret_post",
            other => other.name(),
        };
        supported.iter().any(|s| s == name)
    };
    if explicit {
        return if supports(current) {
            Ok(current)
        } else {
            Err(format!(
                "the server supports client authentication by {supported:?}, not client_auth = {}; set orgs.NAME.client_auth to one of them",
                current.name()
            ))
        };
    }
    [
        ClientAuth::SecretPost,
        ClientAuth::SecretBasic,
        ClientAuth::None,
    ]
    .into_iter()
    .find(|m| supports(*m))
    .ok_or_else(|| {
        format!(
            "the server supports none of the broker's client authentication methods ({supported:?})"
        )
    })
}

impl Upstream {
    /// Fills `client`'s token URL and auth method from its issuer's metadata
    /// (`/.well-known/openid-configuration`, else `/.well-known/oauth-authorization-server`).
    /// Nothing to do without `issuer`.
    pub async fn discover(&self, org: &str, client: &mut Client) -> Result<(), DiscoveryError> {
        let Some(discovery) = client.discovery.clone() else {
            return Ok(());
        };
        let fail = |problem: String| DiscoveryError {
            org: org.to_owned(),
            problem,
        };
        let base = discovery.issuer.as_str().trim_end_matches('/');
        let mut found = None;
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let url = Url::parse(&format!("{base}{path}")).map_err(|e| fail(e.to_string()))?;
            match self.get(client, url).await {
                Ok((200, body)) => {
                    found = Some(body);
                    break;
                }
                Ok((404, _)) => {}
                Ok((status, _)) => {
                    return Err(fail(format!("{base}{path} answered HTTP {status}")));
                }
                Err(e @ UpstreamError::UntrustedCertificate { .. }) => {
                    return Err(fail(format!("{e}; trust its CA with orgs.{org}.ca_file")));
                }
                Err(e) => return Err(fail(format!("{base}{path}: {e}"))),
            }
        }
        let body = found.ok_or_else(|| fail(format!("{base} serves no OAuth metadata")))?;
        let meta = metadata(&discovery.issuer, &body).map_err(fail)?;
        client.auth = choose(client.auth, discovery.auth_explicit, &meta.auth_methods)
            .map_err(|p| fail(p.replace("orgs.NAME", &format!("orgs.{org}"))))?;
        client.token_url = meta.token_endpoint;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_name_its_issuer_and_a_usable_token_endpoint() {
        let issuer = Url::parse("https://idp.example").unwrap();
        let ok = br#"{"issuer":"https://idp.example/","token_endpoint":"https://idp.example/token","token_endpoint_auth_methods_supported":["private_key_jwt","client_secret_basic"]}"#;
        let meta = metadata(&issuer, ok).unwrap();
        assert_eq!(meta.token_endpoint.as_str(), "https://idp.example/token");
        assert_eq!(
            choose(ClientAuth::SecretPost, false, &meta.auth_methods),
            Ok(ClientAuth::SecretBasic)
        );
        assert!(choose(ClientAuth::SecretPost, true, &meta.auth_methods).is_err());
        let other =
            br#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/t"}"#;
        assert!(metadata(&issuer, other).unwrap_err().contains("evil"));
        let plain = br#"{"issuer":"https://idp.example","token_endpoint":"http://idp.example/t"}"#;
        assert!(metadata(&issuer, plain).unwrap_err().contains("https"));
        // Absent methods mean client_secret_basic (RFC 8414 §2).
        let bare = br#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/t"}"#;
        let meta = metadata(&issuer, bare).unwrap();
        assert_eq!(meta.auth_methods, vec!["client_secret_basic".to_owned()]);
    }
}
