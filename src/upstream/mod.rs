//! The platform's HTTP endpoints: the calls of the OAuth flows (client credentials,
//! refresh, authorization grant, code exchange, token exchange), authenticated as each org
//! says, sent with reqwest and classified. Knows nothing of gRPC or caching. (Over 400
//! lines: each call, and the one place a token request is authenticated and sent, kept
//! together so that what goes on the wire reads in one file.)

mod assertion;
mod client;
mod discovery;
mod error;
pub mod response;

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url, header};

pub use assertion::{ClientKey, KeyError};
pub use client::{Client, ClientAuth, RequestExtras, USER_ID_TOKEN_TYPE, UserGrant};
pub use discovery::{Discovery, DiscoveryError};
pub use error::UpstreamError;
use response::Answer;
pub use response::Grant;

use crate::secret::{AccessToken, AuthCode, ClientSecret, RefreshToken};

/// What the client reports of each request it makes. The metrics at the top of the crate
/// implement it, so that this layer names no metrics type.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One request of `grant` type (`client_credentials`, `refresh_token`,
    /// `authorization_grant`, `authorization_code`) ended in `outcome` after `elapsed`.
    fn request(&self, grant: &'static str, outcome: &'static str, elapsed: Duration);
}

/// An observer that reports nowhere (tests, tools).
#[derive(Debug)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn request(&self, _: &'static str, _: &'static str, _: Duration) {}
}

/// The largest answer body read: the platform's JSON answers are a few hundred bytes, but
/// another server's may carry a 64 KiB access token beside a refresh token and an ID token.
const MAX_BODY: usize = 256 * 1024;
/// Idle connections kept per platform host.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// RFC 8693 §3: an access token.
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Who a token request authenticates as.
struct Who<'a> {
    client_id: Option<&'a str>,
    secret: Option<&'a ClientSecret>,
    /// The org's primary grant (client credentials), where even the platform's page asks
    /// for the secret.
    primary: bool,
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 §2.3.1 asks (so a
/// secret with ':' or non-ASCII travels intact).
fn basic_credentials(id: &str, secret: &str) -> String {
    use base64::Engine;
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(id), encode(secret));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// An HTTP client for the platform. Cheap to clone; shares one connection pool (one more
/// for each distinct `ca_file`).
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    /// Clients that also trust an org's `ca_file`, by its PEM.
    with_ca: Arc<std::sync::Mutex<std::collections::HashMap<Arc<[u8]>, reqwest::Client>>>,
    timeout: Duration,
    observer: Arc<dyn Observer>,
}

/// The HTTP client every org shares, trusting also `extra` CA certificates.
fn http_client(
    timeout: Duration,
    extra: Vec<reqwest::Certificate>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("tokenbroker/", env!("CARGO_PKG_VERSION")))
        // A burst of cold keys opens many connections; the broker's steady traffic
        // needs few, so only a handful are kept idle (each holds buffers).
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS);
    for cert in extra {
        builder = builder.add_root_certificate(cert);
    }
    builder.build()
}

impl Upstream {
    /// A client whose every request gives up after `timeout`. Redirects are never followed,
    /// so credentials go only to the configured URLs.
    pub fn new(timeout: Duration, observer: Arc<dyn Observer>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: http_client(timeout, Vec::new())?,
            with_ca: Arc::default(),
            timeout,
            observer,
        })
    }

    /// Fetches a plain GET answer (status, body) from `url`, trusting `client`'s CA.
    async fn get(&self, client: &Client, url: Url) -> Result<(u16, Vec<u8>), UpstreamError> {
        let request = self.http(client)?.get(url);
        let (status, _, body) = self.send(request).await?;
        Ok((status.as_u16(), body))
    }

    /// The HTTP client for `client`'s endpoints: the shared one, or one that also trusts
    /// its `ca_file` (made once per distinct file's content).
    fn http(&self, client: &Client) -> Result<reqwest::Client, UpstreamError> {
        let Some(pem) = &client.ca else {
            return Ok(self.http.clone());
        };
        let mut made = self
            .with_ca
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(http) = made.get(pem) {
            return Ok(http.clone());
        }
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            UpstreamError::UntrustedCertificate {
                reason: format!("the ca_file cannot be read: {e}"),
            }
        })?;
        let http = http_client(self.timeout, certs).map_err(|e| UpstreamError::Connection {
            reason: e.to_string(),
        })?;
        made.insert(Arc::clone(pem), http.clone());
        Ok(http)
    }

    /// Client credentials grant: the organization's token.
    pub async fn client_credentials(
        &self,
        client: &Client,
        client_id: &str,
        secret: Option<&ClientSecret>,
    ) -> Result<Grant, UpstreamError> {
        let mut form = vec![("grant_type", "client_credentials")];
        let extras = &client.extras;
        if let Some(scope) = &extras.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &extras.audience {
            form.push(("audience", audience));
        }
        let who = Who {
            client_id: Some(client_id),
            secret,
            primary: true,
        };
        self.token_request("client_credentials", client, form, who)
            .await
    }

    /// Refresh grant, authenticated with `secret` (the org's client secret in use, if it
    /// has one). Takes the refresh token by value: once sent it is spent, whatever becomes
    /// of the answer.
    pub async fn refresh(
        &self,
        client: &Client,
        refresh_token: RefreshToken,
        secret: Option<&ClientSecret>,
    ) -> Result<Grant, UpstreamError> {
        let form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        let who = Who {
            client_id: client.client_id.as_deref(),
            secret,
            primary: false,
        };
        self.token_request("refresh_token", client, form, who).await
    }

    /// Authorization grant: a single-use code that acts as `user_id` (a person id or an
    /// ExternalSourceID), asked for with the org's token as bearer.
    pub async fn authorization_grant(
        &self,
        client: &Client,
        bearer: &AccessToken,
        user_id: &str,
    ) -> Result<AuthCode, UpstreamError> {
        let Some(url) = &client.authorization_grant_url else {
            // The broker refuses user tokens for such an org before it gets here.
            return Err(UpstreamError::Rejected {
                status: 0,
                code: Some("no authorization grant endpoint configured".into()),
            });
        };
        let request = self
            .http(client)?
            .post(url.clone())
            .bearer_auth(bearer.expose())
            .form(&[("user_id", user_id)]);
        let started = std::time::Instant::now();
        let answer = self
            .send(request)
            .await
            .and_then(|(status, retry_after, body)| {
                response::grant_answer(Answer {
                    status: status.as_u16(),
                    retry_after: retry_after.as_deref(),
                    body: &body,
                })
            });
        self.observe("authorization_grant", &answer, started);
        answer
    }

    /// RFC 8693 token exchange: a token acting as `user_id` (the subject, of
    /// `subject_type`), asked for with the org's token as the actor, authenticated with
    /// `secret` as [`Upstream::refresh`] is.
    pub async fn token_exchange(
        &self,
        client: &Client,
        subject_type: &str,
        actor: &AccessToken,
        user_id: &str,
        secret: Option<&ClientSecret>,
    ) -> Result<Grant, UpstreamError> {
        let form = vec![
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", user_id),
            ("subject_token_type", subject_type),
            ("actor_token", actor.expose()),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
        ];
        let who = Who {
            client_id: client.client_id.as_deref(),
            secret,
            primary: false,
        };
        let answer = self
            .token_request("token_exchange", client, form, who)
            .await;
        // An invalid_grant that names the subject is the server not knowing the user.
        match answer {
            Err(UpstreamError::InvalidGrant {
                description: Some(d),
            }) if d.contains("user") || d.contains("subject") => {
                Err(UpstreamError::UnknownUser { status: 400 })
            }
            other => other,
        }
    }

    /// Code exchange: the user's token for a code from `authorization_grant`,
    /// authenticated with `secret` as [`Upstream::refresh`] is.
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: AuthCode,
        secret: Option<&ClientSecret>,
    ) -> Result<Grant, UpstreamError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
        ];
        if let Some(uri) = &client.extras.redirect_uri {
            form.push(("redirect_uri", uri));
        }
        let who = Who {
            client_id: client.client_id.as_deref(),
            secret,
            primary: false,
        };
        self.token_request("authorization_code", client, form, who)
            .await
    }

    fn observe<T>(
        &self,
        grant: &'static str,
        answer: &Result<T, UpstreamError>,
        started: std::time::Instant,
    ) {
        let outcome = answer.as_ref().map_or_else(UpstreamError::kind, |_| "ok");
        self.observer.request(grant, outcome, started.elapsed());
    }

    async fn token_request(
        &self,
        grant: &'static str,
        client: &Client,
        mut form: Vec<(&str, &str)>,
        who: Who<'_>,
    ) -> Result<Grant, UpstreamError> {
        let secret = who.secret.map(ClientSecret::expose);
        for resource in &client.extras.resources {
            form.push(("resource", resource));
        }
        for (name, value) in &client.extras.params {
            form.push((name, value));
        }
        let in_body = match client.auth {
            ClientAuth::SecretPost => true,
            ClientAuth::Findity => who.primary,
            ClientAuth::SecretBasic | ClientAuth::None | ClientAuth::PrivateKeyJwt => false,
        };
        let assertion = match (client.auth, &client.key, who.client_id) {
            (ClientAuth::PrivateKeyJwt, Some(key), Some(id)) => {
                let audience = client
                    .assertion_audience
                    .clone()
                    .unwrap_or_else(|| client.token_url.to_string());
                Some(
                    key.assertion(id, &audience, std::time::SystemTime::now())
                        // Only a failing system RNG stops a parsed key from signing.
                        .map_err(|e| UpstreamError::Refused {
                            code: "client_assertion".into(),
                            description: Some(e.to_string()),
                        })?,
                )
            }
            _ => None,
        };
        if let Some(assertion) = &assertion {
            form.push(("client_assertion_type", assertion::ASSERTION_TYPE));
            form.push(("client_assertion", assertion));
        }
        let mut basic = None;
        match (who.client_id, secret) {
            (Some(id), Some(secret)) if client.auth == ClientAuth::SecretBasic => {
                basic = Some((id, secret));
            }
            (Some(id), Some(secret)) if in_body => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
            }
            (Some(id), _) => form.push(("client_id", id)),
            (None, _) => {}
        }
        // `form` percent-encodes every value: refresh tokens hold `+`, which sent raw would
        // arrive as a space.
        let mut request = self
            .http(client)?
            .post(client.token_url.clone())
            .form(&form);
        for (name, value) in &client.extras.headers {
            request = request.header(name, value);
        }
        if let Some((id, secret)) = basic {
            request = request.header(header::AUTHORIZATION, basic_credentials(id, secret));
        }
        let started = std::time::Instant::now();
        let answer = self
            .send(request)
            .await
            .and_then(|(status, retry_after, body)| {
                response::token_answer(Answer {
                    status: status.as_u16(),
                    retry_after: retry_after.as_deref(),
                    body: &body,
                })
            })
            .map_err(|e| match e {
                UpstreamError::CredentialsRejected {
                    code, description, ..
                } => UpstreamError::CredentialsRejected {
                    code,
                    description,
                    method: Some(client.auth.name()),
                },
                other => other,
            })
            .and_then(|answer| {
                let lifetime = answer
                    .expires_in
                    .or_else(|| {
                        response::jwt_lifetime(
                            answer.access_token.expose(),
                            std::time::SystemTime::now(),
                        )
                    })
                    .or(client.default_lifetime)
                    .ok_or(UpstreamError::NoLifetime)?;
                Ok(answer.with_lifetime(lifetime))
            });
        self.observe(grant, &answer, started);
        answer
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>), UpstreamError> {
        let mut response = request
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(UpstreamError::Malformed {
                    reason: format!("the answer is larger than {} KiB", MAX_BODY / 1024),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, body))
    }

    fn transport_error(&self, e: reqwest::Error) -> UpstreamError {
        if e.is_timeout() {
            return UpstreamError::Timeout {
                after: self.timeout,
            };
        }
        let reason = error_reason(e);
        // rustls says "invalid peer certificate: UnknownIssuer" (or names another
        // certificate problem): waiting will not fix it.
        if reason.contains("invalid peer certificate") || reason.contains("UnknownIssuer") {
            return UpstreamError::UntrustedCertificate { reason };
        }
        UpstreamError::Connection { reason }
    }
}

/// Why an HTTP request failed, with the whole source chain ("connection refused", "reset by
/// peer"; reqwest's own text alone is only "error sending request") and without the URL,
/// whose query may carry personal data.
pub fn error_reason(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}
