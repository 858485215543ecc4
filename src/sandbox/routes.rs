//! The sandbox's HTTP surface: the platform's token and grant endpoints, two API calls to
//! check a token with, and the counters for tests.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use axum::{
    Json, Router,
    extract::{FromRequest, Request, State as Shared},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use super::state::{OauthError, State, Subject};

type AppState = Arc<Mutex<State>>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/oauth/token", post(token))
        .route("/oauth/authorization-grant", post(authorization_grant))
        .route("/api/v1/expense/me", get(me))
        .route("/api/v1/admin/organization", get(organization))
        .route("/sandbox/stats", get(stats))
        .with_state(state)
}

fn lock(state: &AppState) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
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

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Counts an error answer, whatever the endpoint.
fn answer<T: IntoResponse>(state: &AppState, result: Result<T, OauthError>) -> Response {
    match result {
        Ok(ok) => ok.into_response(),
        Err(e) => {
            lock(state).stats.errors += 1;
            e.into_response()
        }
    }
}

async fn token(Shared(state): Shared<AppState>, request: Request) -> Response {
    let result = match form(request).await {
        Err(e) => Err(e),
        Ok(f) => {
            let field = |name: &str| f.get(name).map(String::as_str);
            let mut s = lock(&state);
            match field("grant_type") {
                Some("client_credentials") => {
                    s.client_credentials(field("client_id"), field("client_secret"))
                }
                Some("refresh_token") => s.refresh(field("client_id"), field("refresh_token")),
                Some("authorization_code") => s.exchange_code(field("client_id"), field("code")),
                _ => Err(OauthError {
                    status: 400,
                    error: "unsupported_grant_type",
                    description:
                        "grant_type must be client_credentials, refresh_token or authorization_code"
                            .into(),
                }),
            }
        }
    };
    answer(&state, result.map(Json))
}

async fn authorization_grant(
    Shared(state): Shared<AppState>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    let result = match form(request).await {
        Err(e) => {
            lock(&state).stats.authorization_grant += 1;
            Err(e)
        }
        Ok(f) => lock(&state)
            .authorization_grant(bearer(&headers), f.get("user_id").map(String::as_str))
            .map(|code| Json(json!({ "code": code }))),
    };
    answer(&state, result)
}

/// The Expense API's first call: who the user token acts as.
async fn me(Shared(state): Shared<AppState>, headers: HeaderMap) -> Response {
    let result = {
        let mut s = lock(&state);
        s.stats.api += 1;
        match s.authenticate(bearer(&headers)) {
            Some(Subject::User { org, user }) => Ok(Json(json!({
                "personId": user.person_id,
                "externalSourceId": user.external_id,
                "name": user.name,
                "organization": &*org,
            }))),
            Some(Subject::Org { .. }) => Err(OauthError {
                status: 403,
                error: "insufficient_scope",
                description: "the Expense API needs a user token".into(),
            }),
            None => Err(unauthorized()),
        }
    };
    answer(&state, result)
}

/// An admin API call: which organization the org token belongs to.
async fn organization(Shared(state): Shared<AppState>, headers: HeaderMap) -> Response {
    let result = {
        let mut s = lock(&state);
        s.stats.api += 1;
        match s.authenticate(bearer(&headers)) {
            Some(Subject::Org { org }) => Ok(Json(json!({ "organization": &*org }))),
            Some(Subject::User { .. }) => Err(OauthError {
                status: 403,
                error: "insufficient_scope",
                description: "the admin API needs an org token or API key".into(),
            }),
            None => Err(unauthorized()),
        }
    };
    answer(&state, result)
}

fn unauthorized() -> OauthError {
    OauthError {
        status: 401,
        error: "invalid_token",
        description: "missing, unknown or expired access token".into(),
    }
}

async fn stats(Shared(state): Shared<AppState>) -> Response {
    Json(lock(&state).stats.clone()).into_response()
}
