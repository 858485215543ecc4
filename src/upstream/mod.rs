//! The platform's HTTP endpoints: the four calls of the OAuth flows (client credentials,
//! refresh, authorization grant, code exchange), sent with reqwest and classified. Knows
//! nothing of gRPC or caching.

mod error;
pub mod response;

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, Url, header};

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

/// The largest answer body read; the platform's JSON answers are a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;
/// Idle connections kept per platform host.
const MAX_IDLE_CONNECTIONS: usize = 8;

/// Where one organization's flows go, and who the broker is there.
#[derive(Debug, Clone)]
pub struct Client {
    /// The token endpoint (all grant types).
    pub token_url: Url,
    /// The authorization grant endpoint (codes that act as a user).
    pub authorization_grant_url: Url,
    /// The OAuth client id; `None` for an org that holds only a long-lived token.
    pub client_id: Option<String>,
}

/// An HTTP client for the platform. Cheap to clone; shares one connection pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    http: reqwest::Client,
    timeout: Duration,
    observer: Arc<dyn Observer>,
}

impl Upstream {
    /// A client whose every request gives up after `timeout`. Redirects are never followed,
    /// so credentials go only to the configured URLs.
    pub fn new(timeout: Duration, observer: Arc<dyn Observer>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("tokenbroker/", env!("CARGO_PKG_VERSION")))
            // A burst of cold keys opens many connections; the broker's steady traffic
            // needs few, so only a handful are kept idle (each holds buffers).
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build()?;
        Ok(Self {
            http,
            timeout,
            observer,
        })
    }

    /// Client credentials grant: the organization's token.
    pub async fn client_credentials(
        &self,
        client: &Client,
        client_id: &str,
        secret: &ClientSecret,
    ) -> Result<Grant, UpstreamError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret.expose()),
        ];
        self.token_request("client_credentials", client, &form)
            .await
    }

    /// Refresh grant. Takes the refresh token by value: once sent it is spent, whatever
    /// becomes of the answer.
    pub async fn refresh(
        &self,
        client: &Client,
        refresh_token: RefreshToken,
    ) -> Result<Grant, UpstreamError> {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ];
        if let Some(id) = &client.client_id {
            form.push(("client_id", id));
        }
        self.token_request("refresh_token", client, &form).await
    }

    /// Authorization grant: a single-use code that acts as `user_id` (a person id or an
    /// ExternalSourceID), asked for with the org's token as bearer.
    pub async fn authorization_grant(
        &self,
        client: &Client,
        bearer: &AccessToken,
        user_id: &str,
    ) -> Result<AuthCode, UpstreamError> {
        let request = self
            .http
            .post(client.authorization_grant_url.clone())
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

    /// Code exchange: the user's token for a code from `authorization_grant`.
    pub async fn exchange_code(
        &self,
        client: &Client,
        code: AuthCode,
    ) -> Result<Grant, UpstreamError> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
        ];
        if let Some(id) = &client.client_id {
            form.push(("client_id", id));
        }
        self.token_request("authorization_code", client, &form)
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
        form: &[(&str, &str)],
    ) -> Result<Grant, UpstreamError> {
        // `form` percent-encodes every value: refresh tokens hold `+`, which sent raw would
        // arrive as a space.
        let request = self.http.post(client.token_url.clone()).form(form);
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
        // The whole source chain says why ("connection refused", "reset by peer"); reqwest's
        // own text alone is only "error sending request".
        let e = e.without_url();
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        UpstreamError::Connection { reason }
    }
}
