//! One proxied request, start to end: admit the caller, find the org and the token, keep
//! or stream the body, send it to the org's `api_url` with the bearer, and on a 401 rotate
//! the token (one rotation for every caller that saw it) and send once more.

use std::{sync::Arc, time::Instant};

use axum::{
    Extension,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tokio::sync::OwnedSemaphorePermit;
use url::Url;

use super::{
    Proxy,
    body::{self, Outgoing, Progress},
    headers,
    reply::ProxyError,
    serve::Peer,
};
use crate::{
    audit::{HandOut, Proxied},
    auth::{AuthError, Permission, Presented},
    broker::{BrokerError, OrgRef, Reason, Served},
    gate::Admitted,
};

/// The header naming the org whose token a request carries (optional while one org is
/// configured).
pub const ORG_HEADER: &str = "tokenbroker-org";
/// The header naming the user (person id or ExternalSourceID) whose token a request
/// carries; without it, the org's.
pub const USER_HEADER: &str = "tokenbroker-user";
/// Set on an answer after the broker rotated the token the platform refused.
pub const ROTATED_HEADER: &str = "tokenbroker-token-rotated";

/// The proxy's one handler: every method and path.
pub async fn handle(
    State(proxy): State<Arc<Proxy>>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let response = match proxy.forward(&peer, request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = %e, "proxy refused a request");
            e.into_response()
        }
    };
    proxy
        .metrics
        .answered(response.status().as_u16(), started.elapsed());
    response
}

/// What one send needs to know of the request.
struct Outbound<'a> {
    admitted: &'a Admitted,
    method: &'a Method,
    path: &'a str,
    url: &'a Url,
    headers: &'a HeaderMap,
    progress: &'a Progress,
}

impl Proxy {
    async fn forward(&self, peer: &Peer, request: Request) -> Result<Response, ProxyError> {
        let permit = Arc::clone(&self.in_progress)
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy {
                limit: self.limits.max_concurrent_requests,
            })?;
        let (parts, body) = request.into_parts();
        let admitted = self
            .gate
            .admit(peer.ip, || presented(&parts.headers, peer))?;
        if parts.method == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        let org_name = header_text(&parts.headers, ORG_HEADER, "Tokenbroker-Org")?;
        let user = header_text(&parts.headers, USER_HEADER, "Tokenbroker-User")?;
        let may_use = |name: &str| admitted.authorize(Permission::Proxy, name).is_ok();
        let org = self.broker.find_org(org_name.unwrap_or(""), &may_use)?;
        admitted.authorize(Permission::Proxy, org.name())?;
        let base = self
            .api_url(org.name())
            .ok_or_else(|| ProxyError::NoApiUrl {
                org: org.name().to_string(),
            })?;
        let url = target(&base, &parts.uri)?;
        let progress = Arc::new(Progress::default());
        let body = body::outgoing(
            body,
            content_length(&parts.headers),
            &self.limits,
            self.sent.clone(),
            Arc::clone(&progress),
        )
        .await?;
        let served = self.token(&org, user).await?;
        let out = Outbound {
            admitted: &admitted,
            method: &parts.method,
            path: url.path(),
            url: &url,
            headers: &parts.headers,
            progress: &progress,
        };
        let (first, kept) = match body {
            Outgoing::Kept(bytes) => (reqwest::Body::from(bytes.clone()), Some(bytes)),
            Outgoing::Streamed(body) => (body, None),
        };
        let answer = self.send(&out, &served, first).await?;
        if answer.status() != StatusCode::UNAUTHORIZED {
            return self.respond(answer, permit, false).await;
        }
        // A token the broker rotated for a caller moments ago is not rotated again: a 401
        // on it is about something else (a path the token may not use), and each would
        // cost a grant (at most one per `renewal.min_rotation_interval` per key).
        if served.token.reason == Reason::Forced
            && served.token.requested().elapsed() < self.min_rotation_interval
        {
            return self.respond(answer, permit, false).await;
        }
        let stale = served.token.access_token.expose();
        let rotated = match tokio::time::timeout(
            self.limits.request_timeout,
            self.broker.refresh(&org, user, Some(stale)),
        )
        .await
        {
            Ok(Ok(rotated)) => rotated,
            // A long-lived token: the platform's 401 is the answer.
            Ok(Err(BrokerError::NotRotatable { .. })) => {
                return self.respond(answer, permit, false).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(org = %org.name(), error = %e, "the platform refused a token and the broker could not rotate it");
                return self.respond(answer, permit, false).await;
            }
            Err(_) => {
                tracing::warn!(org = %org.name(), "the platform refused a token and its rotation did not finish within proxy.request_timeout");
                return self.respond(answer, permit, false).await;
            }
        };
        let Some(kept) = kept else {
            // The body streamed and is gone: the caller sends again, with the new token.
            return self.respond(answer, permit, true).await;
        };
        drop(answer);
        let again = self.send(&out, &rotated, reqwest::Body::from(kept)).await?;
        self.respond(again, permit, true).await
    }

    /// The org's token, or `user`'s, from the cache or fetched within the request timeout.
    async fn token(&self, org: &OrgRef, user: Option<&str>) -> Result<Served, ProxyError> {
        let cached = match user {
            None => self.broker.cached_org_token(org, None),
            Some(user) => self.broker.cached_user_token(org, user, None)?,
        };
        if let Some(served) = cached {
            return Ok(served);
        }
        let fetch = async {
            match user {
                None => self.broker.org_token(org, None).await,
                Some(user) => self.broker.user_token(org, user, None).await,
            }
        };
        match tokio::time::timeout(self.limits.request_timeout, fetch).await {
            Ok(served) => Ok(served?),
            Err(_) => Err(ProxyError::TokenTimeout {
                after: self.limits.request_timeout,
            }),
        }
    }

    /// Sends the request with `served`'s token and `body`, and audits the token's use with
    /// the status it got (the platform's, or the proxy's own when it got none).
    async fn send(
        &self,
        out: &Outbound<'_>,
        served: &Served,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, ProxyError> {
        let result = self.send_once(out, served, body).await;
        let status = match &result {
            Ok(answer) => answer.status().as_u16(),
            Err(e) => e.status().0.as_u16(),
        };
        self.audit.handed_out(HandOut {
            caller: &out.admitted.caller,
            peer: out.admitted.peer,
            rpc: "Proxy",
            key: &served.key,
            token: &served.token,
            proxied: Some(Proxied {
                method: out.method.as_str(),
                path: out.path,
                status,
            }),
        });
        result
    }

    async fn send_once(
        &self,
        out: &Outbound<'_>,
        served: &Served,
        body: reqwest::Body,
    ) -> Result<reqwest::Response, ProxyError> {
        let mut headers = headers::to_platform(out.headers, served.token.access_token.expose())
            .map_err(|_| ProxyError::InvalidToken)?;
        // The body is read (or streamed) by the proxy: the platform gets it at once, and
        // a kept body's length is the HTTP client's to write.
        headers.remove(header::EXPECT);
        if !out.headers.contains_key(header::CONTENT_LENGTH)
            || out.headers.contains_key(header::TRANSFER_ENCODING)
        {
            headers.remove(header::CONTENT_LENGTH);
        }
        let request = self
            .client
            .request(out.method.clone(), out.url.clone())
            .headers(headers)
            .body(body);
        out.progress.moved();
        let timeout = self.limits.request_timeout;
        // The platform's silence: no chunk of the body taken, or no answer after its end,
        // for the timeout (the caller's own silence is the body's to time).
        let platform_silent = async {
            loop {
                let deadline = match out.progress.platform_silent_since() {
                    Some(since) if since + timeout <= tokio::time::Instant::now() => return,
                    Some(since) => since + timeout,
                    None => tokio::time::Instant::now() + timeout,
                };
                tokio::time::sleep_until(deadline).await;
            }
        };
        let sent = tokio::select! {
            sent = request.send() => sent,
            () = platform_silent => return Err(ProxyError::UpstreamTimeout { after: timeout }),
        };
        sent.map_err(|e| {
            if let Some(caller_side) = out.progress.error(&self.limits) {
                return caller_side;
            }
            // Without the URL: its query may carry personal data.
            let reason = crate::upstream::error_reason(e);
            tracing::warn!(origin = %out.url.origin().ascii_serialization(), error = %reason, "proxy: the platform could not be reached");
            ProxyError::Upstream(reason)
        })
    }

    /// The platform's answer as the caller gets it: its status, its headers less the
    /// hop-by-hop ones, its body (within `proxy.max_response_bytes`): read whole when it
    /// declares at most [`body::SMALL_ANSWER`], else streaming as it comes.
    async fn respond(
        &self,
        answer: reqwest::Response,
        permit: OwnedSemaphorePermit,
        rotated: bool,
    ) -> Result<Response, ProxyError> {
        let max = self.limits.max_response_bytes;
        if let Some(declared) = answer.content_length()
            && declared > max
        {
            return Err(ProxyError::ResponseTooLarge {
                declared,
                limit: max,
            });
        }
        let status = answer.status();
        let mut headers = headers::to_caller(answer.headers());
        if rotated {
            headers.insert(ROTATED_HEADER, HeaderValue::from_static("true"));
        }
        let timeout = self.limits.request_timeout;
        let body = match answer.content_length() {
            // A small answer (the usual JSON) is read whole and the place given back: no
            // task of its own (BENCHMARKS.md).
            Some(declared) if declared <= body::SMALL_ANSWER => {
                let whole = body::whole(answer, timeout).await?;
                self.received.inc_by(whole.len() as u64);
                drop(permit);
                axum::body::Body::from(whole)
            }
            _ => body::incoming(answer, max, timeout, self.received.clone(), permit),
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// What the request presents to the gate: `Proxy-Authorization: Bearer <API key>`, the
/// connection's client certificate names, its Unix peer uid.
fn presented<'a>(headers: &'a HeaderMap, peer: &'a Peer) -> Result<Presented<'a>, AuthError> {
    let api_key = crate::auth::sent_key(
        headers
            .get(header::PROXY_AUTHORIZATION)
            .map(|v| v.to_str().ok()),
        "Proxy-Authorization header",
    )?;
    Ok(Presented {
        api_key,
        tls_names: peer.tls_names.to_vec(),
        unix_uid: peer.uid,
    })
}

/// A broker header's value, if sent; `shown` is its name in messages.
fn header_text<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    shown: &'static str,
) -> Result<Option<&'a str>, ProxyError> {
    headers
        .get(name)
        .map(|v| v.to_str().map(str::trim))
        .transpose()
        .map_err(|_| ProxyError::BadHeader { name: shown })
}

/// The caller's declared body length, if it declared one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return None;
    }
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `base` (scheme, host, optional path prefix) followed by the request's path and query.
/// Only the path is taken from a request in absolute form (`GET http://any/path`, as
/// clients configured with the proxy as `HTTP_PROXY` send): the org decides the host. A
/// path that climbs out of the prefix (`/../`, `%2e%2e`) is refused.
pub fn target(base: &Url, uri: &Uri) -> Result<Url, ProxyError> {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{}", uri.path()));
    url.set_query(uri.query());
    let path = url.path();
    let within = path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'));
    if !within {
        return Err(ProxyError::OutsideApi);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_and_query_go_under_the_orgs_api_url() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        let base = Url::parse("https://expense.example").unwrap();
        assert_eq!(
            target(&base, &uri("/api/v1/expense/me?x=1&y=%20"))
                .unwrap()
                .as_str(),
            "https://expense.example/api/v1/expense/me?x=1&y=%20"
        );
        let prefixed = Url::parse("http://127.0.0.1:9/base/").unwrap();
        assert_eq!(
            target(&prefixed, &uri("/api/v1/x")).unwrap().as_str(),
            "http://127.0.0.1:9/base/api/v1/x"
        );
        assert_eq!(
            target(&base, &uri("http://elsewhere.example/api/v1/x?q"))
                .unwrap()
                .as_str(),
            "https://expense.example/api/v1/x?q",
            "the org decides the host"
        );
        for climbing in ["/../billing/x", "/%2e%2e/billing/x", "/a/../../billing"] {
            assert!(
                matches!(
                    target(&prefixed, &uri(climbing)),
                    Err(ProxyError::OutsideApi)
                ),
                "{climbing}"
            );
        }
        assert_eq!(
            target(&base, &uri("/a/../b")).unwrap().path(),
            "/b",
            "without a prefix, dot segments stay on the host"
        );
    }
}
