//! `[orgs.NAME]`: each org's endpoints (from its environment or its own URLs, `https://`
//! unless loopback) and its credentials.

use super::*;

pub(super) fn org_settings(
    name: String,
    org: RawOrg,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<OrgSettings, ConfigError> {
    let key = |field: &str| format!("orgs.{name}.{field}");
    let name_ok = !name.is_empty()
        && name.len() <= crate::broker::MAX_ID_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(error(
            format!("orgs.{name}"),
            "an org name is 1 to 256 letters, digits, '-', '_' or '.'",
        ));
    }
    for (field, value) in [
        ("client_secret", &org.client_secret),
        ("static_token", &org.static_token),
    ] {
        if value.is_some() {
            return Err(error(
                key(field),
                format!(
                    "secrets are not accepted in the config file; use {field}_env (an environment variable) or {field}_file (a file) instead"
                ),
            ));
        }
    }
    let defaults = org.environment.map(Environment::urls);
    // `environment` fills in both of the platform's URLs. Beside one URL set by hand, it
    // would point the other at the platform's host: a token from another server sent there.
    if org.environment.is_some()
        && (org.token_url.is_some() != org.authorization_grant_url.is_some())
    {
        let (set, other) = if org.token_url.is_some() {
            ("token_url", "authorization_grant_url")
        } else {
            ("authorization_grant_url", "token_url")
        };
        return Err(error(
            key("environment"),
            format!(
                "is set beside {set}, so it would fill {other} with the platform's own URL; give {other} too, or drop environment (another OAuth server: set token_url, and authorization_grant_url only if user tokens come from the platform's grant endpoint)"
            ),
        ));
    }
    let issuer = match (&org.issuer, &org.token_url, org.environment) {
        (None, _, _) => None,
        (Some(issuer), None, None) => Some(endpoint(&key("issuer"), Some(issuer))?),
        (Some(_), _, _) => {
            return Err(error(
                key("issuer"),
                "fills in token_url from the server's metadata; set issuer, or token_url (or environment), not both",
            ));
        }
    };
    // With an issuer the token URL is its own until discovery at start replaces it.
    let token_url = match &issuer {
        Some(issuer) => issuer.clone(),
        None => endpoint(
            &key("token_url"),
            org.token_url.as_deref().or(defaults.map(|d| d.0)),
        )?,
    };
    // Optional: an org without it hands out org tokens only.
    let authorization_grant_url = org
        .authorization_grant_url
        .as_deref()
        .or(defaults.map(|d| d.1))
        .map(|url| endpoint(&key("authorization_grant_url"), Some(url)))
        .transpose()?;
    let default_lifetime = org
        .default_token_lifetime
        .as_deref()
        .map(|t| parse_duration(&key("default_token_lifetime"), t))
        .transpose()?;
    if default_lifetime.is_some_and(|d| d.is_zero() || d > upstream::response::MAX_EXPIRES_IN) {
        return Err(error(
            key("default_token_lifetime"),
            "must be between 1s and 366 days",
        ));
    }
    let ca = match &org.ca_file {
        None => None,
        Some(file) => {
            let pem = read_small_file(&key("ca_file"), &base.join(file), 1024 * 1024)?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(error(
                    key("ca_file"),
                    format!("{} holds no PEM certificate", file.display()),
                ));
            }
            Some(std::sync::Arc::<[u8]>::from(pem.into_bytes()))
        }
    };
    let extras = request_extras(&name, &org)?;
    let user_grant = match (org.user_grant.as_deref(), &org.token_exchange_subject_type) {
        (None | Some("findity"), None) => upstream::UserGrant::Findity,
        (Some("token_exchange"), subject_type) => upstream::UserGrant::TokenExchange {
            subject_type: subject_type
                .clone()
                .unwrap_or_else(|| upstream::USER_ID_TOKEN_TYPE.to_owned()),
        },
        (None | Some("findity"), Some(_)) => {
            return Err(error(
                key("token_exchange_subject_type"),
                "applies with user_grant = \"token_exchange\" only",
            ));
        }
        (Some(other), _) => {
            return Err(error(
                key("user_grant"),
                format!(
                    "{other:?} is not a user grant; use findity (the default) or token_exchange"
                ),
            ));
        }
    };
    let auth = match org.client_auth.as_deref() {
        None | Some("client_secret_post") => upstream::ClientAuth::SecretPost,
        Some("client_secret_basic") => upstream::ClientAuth::SecretBasic,
        Some("none") => upstream::ClientAuth::None,
        Some("private_key_jwt") => upstream::ClientAuth::PrivateKeyJwt,
        Some("findity") => upstream::ClientAuth::Findity,
        Some(other) => {
            return Err(error(
                key("client_auth"),
                format!(
                    "{other:?} is not a client authentication method; use client_secret_post (the default), client_secret_basic, private_key_jwt, none or findity"
                ),
            ));
        }
    };
    let client_key = client_key(&key, &org, auth, env, base)?;

    let sources = [
        ("client_secret_env", org.client_secret_env.is_some()),
        ("client_secret_file", org.client_secret_file.is_some()),
        ("static_token_env", org.static_token_env.is_some()),
        ("static_token_file", org.static_token_file.is_some()),
    ];
    let given: Vec<&str> = sources.iter().filter(|s| s.1).map(|s| s.0).collect();
    if client_key.is_some() {
        if let Some(field) = given.first() {
            return Err(error(
                key(field),
                "is not used with client_auth = \"private_key_jwt\", which signs with client_key_file (or client_key_env) instead; drop it",
            ));
        }
    } else if given.is_empty() && auth == upstream::ClientAuth::None {
        // A public client: the client id alone, no secret to hold.
    } else if given.len() != 1 {
        let problem = if given.is_empty() {
            "none is set".to_owned()
        } else {
            format!("{} are all set", given.join(" and "))
        };
        return Err(error(
            format!("orgs.{name}"),
            format!(
                "set exactly one of client_secret_env, client_secret_file (OAuth client credentials), static_token_env or static_token_file (a long-lived token or API key); {problem}"
            ),
        ));
    }
    let client_id = org.client_id.filter(|id| !id.trim().is_empty());
    let credentials = match given.first().copied() {
        // private_key_jwt (the key in `client` proves the client) or a public client
        // (`none`): no secret.
        None => {
            let Some(client_id) = client_id.clone() else {
                return Err(error(
                    key("client_id"),
                    format!(
                        "is required with client_auth = {:?}: it names the client",
                        auth.name()
                    ),
                ));
            };
            Credentials::Client {
                client_id,
                secrets: Vec::new(),
            }
        }
        Some(source @ ("client_secret_env" | "client_secret_file")) => {
            let envs = org
                .client_secret_env
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default();
            let files = org
                .client_secret_file
                .as_ref()
                .map(OneOrMany::to_vec)
                .unwrap_or_default();
            let mut secrets = Vec::new();
            for var in &envs {
                secrets.push(ClientSecret::new(read_secret(
                    &key(source),
                    Some(var),
                    None,
                    env,
                    base,
                )?));
            }
            for file in &files {
                secrets.push(ClientSecret::new(read_secret(
                    &key(source),
                    None,
                    Some(file),
                    env,
                    base,
                )?));
            }
            if secrets.is_empty() {
                return Err(error(key(source), "lists no secret"));
            }
            let Some(client_id) = client_id.clone() else {
                return Err(error(
                    key("client_id"),
                    "is required with a client secret; copy it from the platform's API settings",
                ));
            };
            Credentials::Client { client_id, secrets }
        }
        Some(source) => {
            let token = read_secret(
                &key(source),
                org.static_token_env.as_deref(),
                org.static_token_file.as_deref(),
                env,
                base,
            )?;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(error(
                    key(source),
                    "the token holds spaces or control characters; it must be the bare token",
                ));
            }
            Credentials::Static(AccessToken::new(token))
        }
    };
    Ok(OrgSettings {
        name,
        client: upstream::Client {
            token_url,
            authorization_grant_url,
            client_id,
            auth,
            key: client_key,
            assertion_audience: org.client_assertion_audience.clone(),
            default_lifetime,
            ca,
            extras: std::sync::Arc::new(extras),
            user_grant,
            discovery: issuer.map(|issuer| upstream::Discovery {
                issuer,
                auth_explicit: org.client_auth.is_some(),
            }),
        },
        credentials,
    })
}

/// The key `private_key_jwt` signs with: required by that method, refused beside any
/// other.
fn client_key(
    key: &dyn Fn(&str) -> String,
    org: &RawOrg,
    auth: upstream::ClientAuth,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<Option<std::sync::Arc<upstream::ClientKey>>, ConfigError> {
    if auth != upstream::ClientAuth::PrivateKeyJwt {
        let set = [
            ("client_key_env", org.client_key_env.is_some()),
            ("client_key_file", org.client_key_file.is_some()),
            ("client_key_id", org.client_key_id.is_some()),
            (
                "client_assertion_audience",
                org.client_assertion_audience.is_some(),
            ),
        ];
        if let Some((field, _)) = set.iter().find(|s| s.1) {
            return Err(error(
                key(field),
                "applies with client_auth = \"private_key_jwt\" only",
            ));
        }
        return Ok(None);
    }
    let (field, pem) = match (&org.client_key_env, &org.client_key_file) {
        (Some(var), None) => (
            "client_key_env",
            zeroize::Zeroizing::new(env(var).ok_or_else(|| {
                error(
                    key("client_key_env"),
                    format!(
                        "environment variable {var} is not set; export it before starting the broker"
                    ),
                )
            })?),
        ),
        (None, Some(file)) => (
            "client_key_file",
            zeroize::Zeroizing::new(read_small_file(
                &key("client_key_file"),
                &base.join(file),
                64 * 1024,
            )?),
        ),
        (Some(_), Some(_)) => {
            return Err(error(
                key("client_key_env"),
                "set client_key_env or client_key_file, not both",
            ));
        }
        (None, None) => {
            return Err(error(
                key("client_auth"),
                "private_key_jwt signs with the client's key: set client_key_file (or client_key_env) to its PEM",
            ));
        }
    };
    for (field, value) in [
        ("client_key_id", &org.client_key_id),
        ("client_assertion_audience", &org.client_assertion_audience),
    ] {
        if value
            .as_deref()
            .is_some_and(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(error(key(field), "must be printable text without spaces"));
        }
    }
    upstream::ClientKey::from_pem(pem.as_bytes(), org.client_key_id.clone())
        .map(|k| Some(std::sync::Arc::new(k)))
        .map_err(|e| error(key(field), e.to_string()))
}

/// Parameters the grant names itself, which `extra_params` may not set.
const GRANT_PARAMS: [&str; 11] = [
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "refresh_token",
    "code",
    "scope",
    "audience",
    "resource",
    "redirect_uri",
];

/// Headers the request sets itself, which `extra_headers` may not set.
const OWN_HEADERS: [&str; 5] = [
    "authorization",
    "content-type",
    "content-length",
    "host",
    "accept",
];

/// What `org`'s token requests carry beyond the grant.
fn request_extras(name: &str, org: &RawOrg) -> Result<upstream::RequestExtras, ConfigError> {
    let key = |field: &str| format!("orgs.{name}.{field}");
    let printable = |field: &str, value: &str| {
        if value.is_empty() || value.chars().any(char::is_control) {
            Err(error(
                key(field),
                "must be non-empty, without control characters",
            ))
        } else {
            Ok(value.to_owned())
        }
    };
    let scope = match &org.scope {
        None => None,
        // One string may hold several scopes, space-separated.
        Some(OneOrMany::One(scope)) => Some(printable("scope", scope.trim())?),
        Some(OneOrMany::Many(scopes)) => {
            if scopes
                .iter()
                .any(|s| s.is_empty() || s.contains(char::is_whitespace))
            {
                return Err(error(
                    key("scope"),
                    "lists an empty scope or one with spaces; give a list of scopes, or one string of scopes separated by spaces",
                ));
            }
            Some(scopes.join(" "))
        }
    };
    let audience = org
        .audience
        .as_deref()
        .map(|a| printable("audience", a))
        .transpose()?;
    let mut resources = Vec::new();
    for resource in org
        .resource
        .as_ref()
        .map(OneOrMany::to_vec)
        .unwrap_or_default()
    {
        // RFC 8707 §2: an absolute URI without a fragment.
        let url = Url::parse(&resource).map_err(|e| {
            error(
                key("resource"),
                format!("{resource:?} is not an absolute URI: {e}"),
            )
        })?;
        if url.fragment().is_some() {
            return Err(error(
                key("resource"),
                format!("{resource:?} has a fragment"),
            ));
        }
        resources.push(resource);
    }
    let mut params = Vec::new();
    for (param, value) in org.extra_params.iter().flatten() {
        if GRANT_PARAMS.contains(&param.as_str()) {
            return Err(error(
                key("extra_params"),
                format!("{param:?} is set by the broker itself (or by its own setting); remove it"),
            ));
        }
        params.push((printable("extra_params", param)?, value.clone()));
    }
    let mut headers = Vec::new();
    for (header, value) in org.extra_headers.iter().flatten() {
        let name = reqwest::header::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            error(
                key("extra_headers"),
                format!("{header:?} is not a header name"),
            )
        })?;
        if OWN_HEADERS.contains(&name.as_str()) {
            return Err(error(
                key("extra_headers"),
                format!("{header:?} is set by the broker itself; remove it"),
            ));
        }
        let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
            error(
                key("extra_headers"),
                format!("the value of {header:?} is not a header value"),
            )
        })?;
        headers.push((name, value));
    }
    let redirect_uri = org
        .redirect_uri
        .as_deref()
        .map(|u| printable("redirect_uri", u))
        .transpose()?;
    Ok(upstream::RequestExtras {
        scope,
        audience,
        resources,
        params,
        headers,
        redirect_uri,
    })
}

/// An upstream URL: HTTPS, or plain HTTP to a loopback host only (the sandbox).
pub(super) fn endpoint(key: &str, value: Option<&str>) -> Result<Url, ConfigError> {
    let Some(text) = value else {
        return Err(error(
            key,
            "is missing; set environment = \"production\" (or \"sandbox\") or give the URL",
        ));
    };
    let url = Url::parse(text).map_err(|e| error(key, format!("{text:?} is not a URL: {e}")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(error(
            key,
            "must not hold credentials; use client_secret_env or client_secret_file",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(error(
            key,
            format!(
                "{text:?} is plain HTTP to a non-loopback host; secrets travel only over https://"
            ),
        )),
        other => Err(error(
            key,
            format!("scheme {other:?} is not supported; use https://"),
        )),
    }
}

pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}
