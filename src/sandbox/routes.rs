//! The sandbox's HTTP surface: the platform's token and grant endpoints (with any injected
//! faults), API calls to check a token with (who it acts as, an upload, a slow export),
//! and the counters and fault controls for tests.

use crate::sync::LockUnpoisoned;
use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{FromRequest, Request, State as Shared},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{
    faults::{Fault, FaultRule, RequestKind, malformed_body},
    state::{OauthError, State, Subject},
};

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Clone)]
struct App {
    state: Arc<Mutex<State>>,
    /// Cancelled when the sandbox stops: ends hanging requests.
    stop: CancellationToken,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }
}

pub fn router(state: Arc<Mutex<State>>, stop: CancellationToken) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/authorization-grant", post(authorization_grant))
        .route("/api/v1/expense/me", get(me))
        .route("/api/v1/admin/organization", get(organization))
        .route(
            "/api/v1/expense/receipts",
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/api/v1/expense/export", get(export))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/sandbox/stats", get(stats))
        .route("/sandbox/faults", post(inject).delete(clear))
        .route("/sandbox/revoke", post(revoke))
        .route("/sandbox/remove-user", post(remove_user))
        .with_state(App { state, stop })
}

impl IntoResponse for OauthError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = Json(json!({"error": self.error, "error_description": self.description}));
        (status, body).into_response()
    }
}

/// A form body as the platform takes it; anything else is `invalid_request`.
async fn form(request: Request) -> Result<HashMap<String, String>, OauthError> {
    axum::Form::<HashMap<String, String>>::from_request(request, &())
        .await
        .map(|axum::Form(f)| f)
        .map_err(|e| OauthError {
            status: 400,
            error: "invalid_request",
            description: format!("expected an application/x-www-form-urlencoded body: {e}"),
        })
}

/// `Authorization: Basic` credentials: the client id and secret, each form-urlencoded
/// (RFC 6749 §2.3.1).
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let encoded = headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((unescape(id)?, unescape(secret)?))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Turns a result into a response, counting errors.
fn answer(app: &App, result: Result<Value, OauthError>) -> Response {
    match result {
        Ok(ok) => Json(ok).into_response(),
        Err(e) => {
            app.lock().stats.errors += 1;
            e.into_response()
        }
    }
}

/// A fault that answers before any work is done, or `None` to go on (after any latency).
async fn before(app: &App, fault: &Option<Fault>, kind: RequestKind) -> Option<Response> {
    let fault = fault.as_ref()?;
    if let Some(delay) = fault.latency() {
        tokio::time::sleep(delay).await;
        return None;
    }
    let response = match fault {
        Fault::Throttle { per_second, burst } => {
            let now = tokio::time::Instant::now();
            if app.lock().passes_throttle(*per_second, *burst, now) {
                return None;
            }
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                Json(json!({"error": "rate_limited", "error_description": "too many requests"})),
            )
                .into_response()
        }
        Fault::Status { status } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let page = format!("<html><body><h1>{status}</h1></body></html>");
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        Fault::RateLimit { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            Json(json!({"error": "rate_limited", "error_description": "too many requests"})),
        )
            .into_response(),
        Fault::Redirect { location } => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location.clone())],
            "",
        )
            .into_response(),
        Fault::Hang => {
            app.stop.cancelled().await;
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        _ => return None,
    };
    let mut state = app.lock();
    state.count(kind);
    state.stats.errors += 1;
    Some(response)
}

/// A fault that strikes after the work is done: a broken body, or no answer at all.
fn after(fault: &Option<Fault>, response: Result<Value, OauthError>, app: &App) -> Response {
    match (fault, response) {
        (Some(Fault::Malformed { body }), Ok(json)) => {
            let (content_type, text) = malformed_body(*body, &json);
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], text).into_response()
        }
        (Some(Fault::DropAfterCommit), _) => {
            // Headers go out, then the body fails: the connection is cut mid-answer.
            let lost = futures::stream::once(async {
                Err::<Bytes, _>(io::Error::other("answer dropped by fault"))
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(lost),
            )
                .into_response()
        }
        (_, result) => answer(app, result),
    }
}

/// OpenID Connect discovery (the same fields as RFC 8414's metadata), its issuer the
/// address the request was sent to.
async fn discovery(headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let issuer = format!("http://{host}");
    Json(json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/oauth/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "grant_types_supported": ["client_credentials", "refresh_token", "authorization_code"],
    }))
    .into_response()
}

async fn token(Shared(app): Shared<App>, request: Request) -> Response {
    let basic = basic_auth(request.headers());
    // A client assertion's `aud`: this endpoint's URL, or the issuer.
    let issuer = format!(
        "http://{}",
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1")
    );
    let audiences = [format!("{issuer}/oauth/token"), issuer];
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::AUTHORIZATION)
        .map(|(name, value)| {
            (
                format!("header:{name}"),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let f = match form(request).await {
        Ok(f) => f,
        Err(e) => return answer(&app, Err(e)),
    };
    let field = |name: &str| f.get(name).map(String::as_str);
    // The client authenticates in the body (client_secret_post), by HTTP Basic
    // (client_secret_basic) or by a signed assertion (private_key_jwt), only one of them
    // (RFC 6749 §2.3).
    let assertion = match (field("client_assertion_type"), field("client_assertion")) {
        (Some(ASSERTION_TYPE), Some(jwt)) => Some(jwt),
        (None, None) => None,
        _ => {
            let e = OauthError {
                status: 400,
                error: "invalid_request",
                description: format!(
                    "client_assertion needs client_assertion_type {ASSERTION_TYPE}"
                ),
            };
            return answer(&app, Err(e));
        }
    };
    let refused = |description: String| OauthError {
        status: 400,
        error: "invalid_request",
        description,
    };
    let methods = [
        basic.is_some(),
        field("client_secret").is_some(),
        assertion.is_some(),
    ];
    if methods.iter().filter(|m| **m).count() > 1 {
        let e = refused("more than one client authentication method".into());
        return answer(&app, Err(e));
    }
    let (client_id, secret) = match (assertion, basic) {
        (Some(jwt), _) => {
            let proved = app.lock().assertion_client(jwt, &audiences);
            let (id, secret) = match proved {
                Ok(pair) => pair,
                Err(e) => return answer(&app, Err(e)),
            };
            if field("client_id").is_some_and(|given| given != id) {
                let e = refused("client_id is not the assertion's client".into());
                return answer(&app, Err(e));
            }
            (Some(id), Some(secret))
        }
        (None, Some((id, secret))) => (Some(id), Some(secret)),
        (None, None) => (
            field("client_id").map(str::to_owned),
            field("client_secret").map(str::to_owned),
        ),
    };
    let (client_id, secret) = (client_id.as_deref(), secret.as_deref());
    {
        let mut recorded: Vec<(String, String)> = f
            .iter()
            .map(|(k, v)| {
                let hidden = ["client_secret", "client_assertion", "refresh_token", "code"]
                    .contains(&k.as_str());
                (k.clone(), if hidden { "***".into() } else { v.clone() })
            })
            .collect();
        recorded.sort();
        recorded.extend(headers);
        app.lock().last_token_request = recorded;
    }
    let kind = match field("grant_type") {
        Some("client_credentials") => RequestKind::ClientCredentials,
        Some("refresh_token") => RequestKind::RefreshToken,
        Some("authorization_code") => RequestKind::AuthorizationCode,
        _ => RequestKind::OtherToken,
    };
    let fault = app.lock().fault_for(kind);
    if let Some(response) = before(&app, &fault, kind).await {
        return response;
    }
    let result = {
        let mut s = app.lock();
        let pair = match kind {
            RequestKind::ClientCredentials => s.grant_scope(field("scope")).and_then(|scope| {
                let mut pair = s.client_credentials(client_id, secret)?;
                pair.scope = scope;
                Ok(pair)
            }),
            RequestKind::RefreshToken => s.refresh(client_id, secret, field("refresh_token")),
            RequestKind::AuthorizationCode => s.exchange_code(client_id, secret, field("code")),
            RequestKind::OtherToken
                if field("grant_type")
                    == Some("urn:ietf:params:oauth:grant-type:token-exchange") =>
            {
                s.token_exchange(
                    client_id,
                    secret,
                    field("subject_token"),
                    field("subject_token_type"),
                    field("actor_token"),
                )
            }
            _ => Err(OauthError {
                status: 400,
                error: "unsupported_grant_type",
                description:
                    "grant_type must be client_credentials, refresh_token or authorization_code"
                        .into(),
            }),
        };
        pair.map(|p| serde_json::to_value(p).unwrap_or(Value::Null))
    };
    after(&fault, result, &app)
}

async fn authorization_grant(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let kind = RequestKind::AuthorizationGrant;
    let fault = app.lock().fault_for(kind);
    if let Some(response) = before(&app, &fault, kind).await {
        return response;
    }
    let result = match form(request).await {
        Err(e) => {
            app.lock().count(kind);
            Err(e)
        }
        Ok(f) => app
            .lock()
            .authorization_grant(bearer(&headers), f.get("user_id").map(String::as_str))
            .map(|code| json!({ "code": code })),
    };
    after(&fault, result, &app)
}

/// The Expense API's first call: who the user token acts as.
async fn me(Shared(app): Shared<App>, headers: HeaderMap) -> Response {
    let result = {
        let mut s = app.lock();
        s.stats.api += 1;
        match s.authenticate(bearer(&headers)) {
            Some(Subject::User { org, user }) => Ok(json!({
                "personId": user.person_id,
                "externalSourceId": user.external_id,
                "name": user.name,
                "organization": &*org,
            })),
            Some(Subject::Org { .. }) => Err(OauthError {
                status: 403,
                error: "insufficient_scope",
                description: "the Expense API needs a user token".into(),
            }),
            None => Err(unauthorized()),
        }
    };
    answer(&app, result)
}

/// An admin API call: which organization the org token belongs to.
async fn organization(Shared(app): Shared<App>, headers: HeaderMap) -> Response {
    let result = {
        let mut s = app.lock();
        s.stats.api += 1;
        match s.authenticate(bearer(&headers)) {
            Some(Subject::Org { org }) => Ok(json!({ "organization": &*org })),
            Some(Subject::User { .. }) => Err(OauthError {
                status: 403,
                error: "insufficient_scope",
                description: "the admin API needs an org token or API key".into(),
            }),
            None => Err(unauthorized()),
        }
    };
    answer(&app, result)
}

/// Counts an API call and names who its bearer token acts as: `"org"` or the user's
/// person id.
fn api_subject(app: &App, headers: &HeaderMap) -> Result<String, OauthError> {
    let mut s = app.lock();
    s.stats.api += 1;
    match s.authenticate(bearer(headers)) {
        Some(Subject::Org { .. }) => Ok("org".into()),
        Some(Subject::User { user, .. }) => Ok(user.person_id.clone()),
        None => {
            s.stats.errors += 1;
            Err(unauthorized())
        }
    }
}

/// An upload (a receipt image, say), read as it streams in: how many bytes came, their
/// SHA-256, and who sent them. Any token of the org may upload.
async fn upload(Shared(app): Shared<App>, headers: HeaderMap, body: Body) -> Response {
    use futures::StreamExt;
    use sha2::Digest;
    let subject = match api_subject(&app, &headers) {
        Ok(subject) => subject,
        Err(e) => return e.into_response(),
    };
    let mut stream = body.into_data_stream();
    let (mut bytes, mut digest) = (0u64, sha2::Sha256::new());
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                digest.update(&chunk);
                app.lock().stats.upload_bytes += chunk.len() as u64;
            }
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    Json(json!({
        "bytes": bytes,
        "sha256": hex::encode(digest.finalize()),
        "subject": subject,
    }))
    .into_response()
}

/// `GET /api/v1/expense/export?chunks=N&interval_ms=M`: an answer that streams `N` lines
/// (default 5, at most 1000), one every `M` ms (default 100, at most 10000), as a slow
/// report export does.
async fn export(
    Shared(app): Shared<App>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, u64>>,
) -> Response {
    if let Err(e) = api_subject(&app, &headers) {
        return e.into_response();
    }
    let chunks = query.get("chunks").copied().unwrap_or(5).min(1000);
    let interval = std::time::Duration::from_millis(
        query.get("interval_ms").copied().unwrap_or(100).min(10_000),
    );
    let lines = futures::stream::unfold(0u64, move |i| async move {
        if i == chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Some((
            Ok::<_, io::Error>(Bytes::from(format!("{{\"line\":{i}}}\n"))),
            i + 1,
        ))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

fn unauthorized() -> OauthError {
    OauthError {
        status: 401,
        error: "invalid_token",
        description: "missing, unknown or expired access token".into(),
    }
}

async fn stats(Shared(app): Shared<App>) -> Response {
    Json(app.lock().stats.clone()).into_response()
}

/// `POST /sandbox/faults` with a JSON [`FaultRule`], e.g.
/// `{"kind": "status", "status": 503, "target": "refresh_token", "times": 1}`.
async fn inject(Shared(app): Shared<App>, Json(rule): Json<FaultRule>) -> StatusCode {
    app.lock().inject(rule);
    StatusCode::NO_CONTENT
}

/// `POST /sandbox/revoke` with `{"access_token": "..."}`: that token answers 401 from now
/// on (its refresh token still works). 204, or 404 if the sandbox never issued it.
async fn revoke(Shared(app): Shared<App>, Json(body): Json<Revoke>) -> StatusCode {
    if app.lock().revoke_access_token(&body.access_token) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(serde::Deserialize)]
struct Revoke {
    access_token: String,
}

/// `POST /sandbox/remove-user` with `{"org": "demo", "user_id": "EMP-00001"}` (a person id
/// or an ExternalSourceID): the user is gone, as when an administrator removes them; its
/// tokens and refresh tokens stop working and it gets no new codes. 204, or 404 if there
/// is no such user.
async fn remove_user(Shared(app): Shared<App>, Json(body): Json<RemoveUser>) -> StatusCode {
    if app.lock().remove_user(&body.org, &body.user_id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

#[derive(serde::Deserialize)]
struct RemoveUser {
    org: String,
    user_id: String,
}

/// `DELETE /sandbox/faults`: behave again.
async fn clear(Shared(app): Shared<App>) -> StatusCode {
    app.lock().clear_faults();
    StatusCode::NO_CONTENT
}
