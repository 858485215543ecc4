//! Turns the platform's HTTP answers into grants, codes or classified errors. Pure functions
//! of (status, headers, body), so any bytes the platform sends can be tested here. (Over
//! 400 lines: about 220 of code, the rest the tests and properties that pin each answer's
//! classification, kept beside it.)

use std::time::Duration;

use serde_json::Value;

use super::UpstreamError;
use crate::secret::{AccessToken, AuthCode, RefreshToken};

/// The longest token lifetime taken at face value; a larger `expires_in` is garbage.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(366 * 24 * 3600);
/// The longest token or code accepted, in bytes (JWTs with many claims run to tens of KiB).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// The longest granted scope kept.
const MAX_SCOPE_LEN: usize = 4096;
/// How much of the platform's `error_description` is kept in messages.
const MAX_DESCRIPTION_LEN: usize = 160;

/// What the token endpoint hands out: an access token and, usually, a refresh token.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: AccessToken,
    pub token_type: String,
    pub expires_in: Duration,
    pub refresh_token: Option<RefreshToken>,
    /// The scope the server granted, when it said (RFC 6749 §5.1).
    pub scope: Option<String>,
}

/// A token endpoint's answer as it came: `expires_in` is only RECOMMENDED, so it may be
/// missing (then the JWT's `exp`, or the configured default, says how long it lives).
#[derive(Debug, Clone)]
pub struct TokenAnswer {
    pub access_token: AccessToken,
    pub token_type: String,
    pub expires_in: Option<Duration>,
    pub refresh_token: Option<RefreshToken>,
    pub scope: Option<String>,
}

impl TokenAnswer {
    /// The grant, living `lifetime`.
    pub fn with_lifetime(self, lifetime: Duration) -> Grant {
        Grant {
            access_token: self.access_token,
            token_type: self.token_type,
            expires_in: lifetime,
            refresh_token: self.refresh_token,
            scope: self.scope,
        }
    }
}

/// How long an access token that is a JWT says it lives (its `exp` after `now`), read for
/// nothing else: the signature is not checked, and no other claim is trusted.
pub fn jwt_lifetime(token: &str, now: std::time::SystemTime) -> Option<Duration> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Value>(&json)
        .ok()?
        .get("exp")?
        .as_u64()?;
    let exp = std::time::UNIX_EPOCH + Duration::from_secs(exp);
    exp.duration_since(now)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_EXPIRES_IN)
}

/// A parsed HTTP answer, as the parsers below see it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Which endpoint answered: the same status means different things at each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    AuthorizationGrant,
}

/// Parses an answer of the token endpoint (any grant type).
pub fn token_answer(answer: Answer<'_>) -> Result<TokenAnswer, UpstreamError> {
    if !(200..300).contains(&answer.status) {
        return Err(classify(Endpoint::Token, answer));
    }
    let json = json_object(answer.body)?;
    let access_token = AccessToken::new(
        token_field(&json, "access_token")?
            .ok_or_else(|| malformed("the answer has no access_token"))?,
    );
    let refresh_token = token_field(&json, "refresh_token")?.map(RefreshToken::new);
    let token_type = match json.get("token_type") {
        None | Some(Value::Null) => "Bearer".to_owned(),
        // RFC 6749 §5.1: case-insensitive; callers get the one spelling.
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(Value::String(t))
            if !t.is_empty() && t.len() <= 64 && t.chars().all(|c| c.is_ascii_graphic()) =>
        {
            t.clone()
        }
        Some(_) => return Err(malformed("token_type is not a short word")),
    };
    let expires_in = expires_in(json.get("expires_in"))?;
    // Space-separated scope tokens (RFC 6749 §3.3): printable ASCII, kept if sane.
    let scope = json
        .get("scope")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_SCOPE_LEN)
        .filter(|s| s.chars().all(|c| c == ' ' || c.is_ascii_graphic()))
        .map(str::to_owned);
    Ok(TokenAnswer {
        access_token,
        token_type,
        expires_in,
        refresh_token,
        scope,
    })
}

/// Parses an answer of the authorization grant endpoint: `{"code": "..."}`.
pub fn grant_answer(answer: Answer<'_>) -> Result<AuthCode, UpstreamError> {
    if !(200..300).contains(&answer.status) {
        return Err(classify(Endpoint::AuthorizationGrant, answer));
    }
    let json = json_object(answer.body)?;
    token_field(&json, "code")?
        .map(AuthCode::new)
        .ok_or_else(|| malformed("the answer has no code"))
}

fn malformed(reason: impl Into<String>) -> UpstreamError {
    UpstreamError::Malformed {
        reason: reason.into(),
    }
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, UpstreamError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(malformed("the body is JSON but not an object")),
        Err(_) if looks_like_html(body) => {
            Err(malformed("the body is HTML, not JSON (a proxy's page?)"))
        }
        Err(_) if body.is_empty() => Err(malformed("the body is empty")),
        Err(_) => Err(malformed("the body is not JSON")),
    }
}

fn looks_like_html(body: &[u8]) -> bool {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    body[start..].first() == Some(&b'<')
}

/// A token-like string field: absent or empty is `None`; anything that could not travel in
/// an HTTP header is an error.
fn token_field(
    json: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, UpstreamError> {
    match json.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_TOKEN_LEN => Err(malformed(format!(
            "{name} is longer than {MAX_TOKEN_LEN} bytes"
        ))),
        Some(Value::String(s)) if !s.bytes().all(|b| b.is_ascii_graphic()) => Err(malformed(
            format!("{name} holds characters a token cannot have"),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(malformed(format!("{name} is not a string"))),
    }
}

/// `expires_in` as a number of seconds, or a numeric string (seen in the wild). Missing,
/// zero, negative, fractional garbage or more than a year is an error: guessing a lifetime
/// would risk handing out dead tokens.
fn expires_in(value: Option<&Value>) -> Result<Option<Duration>, UpstreamError> {
    let secs = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match secs {
        Some(s) if s > 0 && Duration::from_secs(s) <= MAX_EXPIRES_IN => {
            Ok(Some(Duration::from_secs(s)))
        }
        Some(s) => Err(malformed(format!(
            "expires_in {s} is out of range (1 s to 366 days)"
        ))),
        None => Err(malformed("expires_in is not a whole number of seconds")),
    }
}

/// RFC 6749 §5.2 error fields, if the body has them.
fn oauth_error(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(Value::Object(json)) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    let text = |name: &str| {
        json.get(name)
            .and_then(Value::as_str)
            .map(sanitize)
            .filter(|s| !s.is_empty())
    };
    (
        text("error"),
        text("error_description").or_else(|| text("message")),
    )
}

/// Keeps a short, printable prefix of the platform's text for messages.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION_LEN)
        .collect()
}

/// The longest `Retry-After` honoured: a larger one (a broken header, or a server that
/// means "never") is taken as an hour, so no hold overflows a clock.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` in seconds (the HTTP-date form is not used by token endpoints in practice;
/// it is ignored and the caller's own backoff applies), at most [`MAX_RETRY_AFTER`].
fn retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds = value?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

fn classify(endpoint: Endpoint, answer: Answer<'_>) -> UpstreamError {
    let status = answer.status;
    let (code, description) = oauth_error(answer.body);
    match (endpoint, status, code.as_deref()) {
        (_, 429, _) => UpstreamError::RateLimited {
            retry_after: retry_after(answer.retry_after),
        },
        (_, 500..=599, _) => UpstreamError::ServerError { status },
        (Endpoint::Token, _, Some(c @ "invalid_client")) => UpstreamError::CredentialsRejected {
            code: c.to_owned(),
            description,
            method: None,
        },
        (Endpoint::Token, _, Some("invalid_grant")) => UpstreamError::InvalidGrant { description },
        // What the client asked for is not allowed (a grant the client is not registered
        // for is `unauthorized_client`, or `invalid_request` at oidc-provider), or not
        // understood: asking again will not help.
        (
            Endpoint::Token,
            _,
            Some(
                c @ ("invalid_scope"
                | "invalid_target"
                | "unsupported_grant_type"
                | "unauthorized_client"
                | "invalid_request"),
            ),
        ) => UpstreamError::Refused {
            code: c.to_owned(),
            description,
        },
        // RFC 6749 §5.2: a 401 from the token endpoint means client authentication failed.
        (Endpoint::Token, 401, _) => UpstreamError::CredentialsRejected {
            code: code.unwrap_or_else(|| "HTTP 401".to_owned()),
            description,
            method: None,
        },
        (Endpoint::AuthorizationGrant, 401, _) => UpstreamError::BearerRejected,
        (Endpoint::AuthorizationGrant, 403, _) => UpstreamError::Forbidden,
        (Endpoint::AuthorizationGrant, 404, _) => UpstreamError::UnknownUser { status },
        (Endpoint::AuthorizationGrant, 400, _) if names_user(&code, &description) => {
            UpstreamError::UnknownUser { status }
        }
        _ => UpstreamError::Rejected { status, code },
    }
}

fn names_user(code: &Option<String>, description: &Option<String>) -> bool {
    [code, description]
        .into_iter()
        .flatten()
        .any(|t| t.to_ascii_lowercase().contains("user"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Answer<'_> {
        Answer {
            status: 200,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    fn status(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status,
            retry_after: None,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn parses_the_documented_answer() {
        let g = token_answer(ok(r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600,"refresh_token":"9MXOgvKAvB+tUSdCtML9u="}"#)).unwrap();
        assert_eq!(g.access_token.expose(), "abc");
        assert_eq!(g.token_type, "Bearer");
        // Any spelling of bearer is Bearer; a 64 KiB token is taken, one byte more is not.
        let lower = token_answer(ok(
            r#"{"access_token":"abc","token_type":"bearer","expires_in":60}"#,
        ))
        .unwrap();
        assert_eq!(lower.token_type, "Bearer");
        let big = "a".repeat(MAX_TOKEN_LEN);
        let body = format!(r#"{{"access_token":"{big}","expires_in":60}}"#);
        assert!(token_answer(ok(&body)).is_ok());
        let body = format!(r#"{{"access_token":"{big}b","expires_in":60}}"#);
        assert!(token_answer(ok(&body)).is_err());
        assert_eq!(g.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(g.refresh_token.unwrap().expose(), "9MXOgvKAvB+tUSdCtML9u=");
    }

    #[test]
    fn expires_in_may_be_a_numeric_string_but_not_garbage() {
        let g = token_answer(ok(r#"{"access_token":"a","expires_in":" 60 "}"#)).unwrap();
        assert_eq!(g.expires_in, Some(Duration::from_secs(60)));
        assert!(g.refresh_token.is_none());
        for bad in [r#""soon""#, "0", "-5", "1e12", "99999999999", "1.5", "[]"] {
            let body = format!(r#"{{"access_token":"a","expires_in":{bad}}}"#);
            assert!(
                matches!(
                    token_answer(ok(&body)),
                    Err(UpstreamError::Malformed { .. })
                ),
                "{bad}"
            );
        }
        // Missing or null: no error here (the JWT's exp or the configured default says).
        for missing in [
            r#"{"access_token":"a"}"#,
            r#"{"access_token":"a","expires_in":null}"#,
        ] {
            assert_eq!(token_answer(ok(missing)).unwrap().expires_in, None);
        }
    }

    #[test]
    fn bodies_that_are_not_token_json_are_malformed() {
        for body in [
            "",
            "<html>bad gateway</html>",
            "[1]",
            "{",
            r#"{"token":"x","expires_in":5}"#,
            r#"{"access_token":"has space","expires_in":5}"#,
            r#"{"access_token":7,"expires_in":5}"#,
        ] {
            assert!(
                matches!(token_answer(ok(body)), Err(UpstreamError::Malformed { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn token_endpoint_errors_are_classified() {
        let e = token_answer(status(
            401,
            r#"{"error":"invalid_client","error_description":"bad secret"}"#,
        ))
        .unwrap_err();
        assert_eq!(
            e,
            UpstreamError::CredentialsRejected {
                code: "invalid_client".into(),
                description: Some("bad secret".into()),
                method: None,
            }
        );
        assert!(matches!(
            token_answer(status(400, r#"{"error":"unauthorized_client"}"#)),
            Err(UpstreamError::Refused { .. })
        ));
        assert!(matches!(
            token_answer(status(401, "<html>")),
            Err(UpstreamError::CredentialsRejected { .. })
        ));
        assert!(matches!(
            token_answer(status(400, r#"{"error":"invalid_grant"}"#)),
            Err(UpstreamError::InvalidGrant { .. })
        ));
        assert_eq!(
            token_answer(status(503, "<html>")).unwrap_err(),
            UpstreamError::ServerError { status: 503 }
        );
        assert_eq!(
            token_answer(status(400, r#"{"error":"invalid_request"}"#)).unwrap_err(),
            UpstreamError::Refused {
                code: "invalid_request".into(),
                description: None,
            }
        );
        let limited = token_answer(Answer {
            status: 429,
            retry_after: Some("7"),
            body: b"",
        })
        .unwrap_err();
        assert_eq!(
            limited,
            UpstreamError::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn grant_endpoint_errors_are_classified() {
        assert_eq!(
            grant_answer(ok(r#"{"code":"38f9"}"#)).unwrap().expose(),
            "38f9"
        );
        assert_eq!(
            grant_answer(status(401, "")).unwrap_err(),
            UpstreamError::BearerRejected
        );
        assert_eq!(
            grant_answer(status(403, "")).unwrap_err(),
            UpstreamError::Forbidden
        );
        assert_eq!(
            grant_answer(status(404, "")).unwrap_err(),
            UpstreamError::UnknownUser { status: 404 }
        );
        assert_eq!(
            grant_answer(status(
                400,
                r#"{"error":"invalid_request","error_description":"No such User"}"#
            ))
            .unwrap_err(),
            UpstreamError::UnknownUser { status: 400 }
        );
        assert!(matches!(
            grant_answer(status(400, r#"{"error":"invalid_request"}"#)),
            Err(UpstreamError::Rejected { .. })
        ));
        assert!(matches!(
            grant_answer(ok("{}")),
            Err(UpstreamError::Malformed { .. })
        ));
    }

    #[test]
    fn descriptions_are_trimmed_and_printable() {
        let long = format!(
            r#"{{"error":"invalid_client","error_description":"a\u0007{}"}}"#,
            "x".repeat(1000)
        );
        let UpstreamError::CredentialsRejected {
            description: Some(d),
            ..
        } = token_answer(status(401, &long)).unwrap_err()
        else {
            panic!("not classified");
        };
        assert_eq!(d.len(), MAX_DESCRIPTION_LEN);
        assert!(!d.contains('\u{7}'));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Token-endpoint-like JSON: the right field names with values of any JSON type.
    fn tokenish_json() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            Just("null".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| if f.is_finite() {
                f.to_string()
            } else {
                "0".into()
            }),
            "\\PC{0,40}".prop_map(|s| serde_json::Value::String(s).to_string()),
            Just("[]".to_owned()),
            Just("{}".to_owned()),
        ];
        let field = prop_oneof![
            Just("access_token"),
            Just("expires_in"),
            Just("refresh_token"),
            Just("token_type"),
            Just("code"),
            Just("error")
        ];
        prop::collection::vec((field, value), 0..6).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_grant_or_a_classified_error(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..300), retry in prop::option::of("\\PC{0,12}")) {
            let answer = Answer { status, retry_after: retry.as_deref(), body: &body };
            let _ = token_answer(answer);
            let _ = grant_answer(answer);
        }

        #[test]
        fn tokenish_json_gives_a_usable_grant_or_an_error(status in prop_oneof![Just(200u16), Just(400), Just(401), Just(429), Just(503)], body in tokenish_json()) {
            let answer = Answer { status, retry_after: None, body: body.as_bytes() };
            match token_answer(answer) {
                Ok(grant) => {
                    prop_assert!(status == 200);
                    prop_assert!(!grant.access_token.expose().is_empty());
                    let lifetime = grant.expires_in.unwrap_or(Duration::from_secs(1));
                    prop_assert!(lifetime > Duration::ZERO && lifetime <= MAX_EXPIRES_IN);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            let _ = grant_answer(answer);
        }
    }

    #[test]
    fn a_jwt_says_how_long_it_lives_and_nothing_else_is_read() {
        use base64::Engine;
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let part = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        let jwt = |claims: &str| format!("{}.{}.sig", part(r#"{"alg":"RS256"}"#), part(claims));
        assert_eq!(
            jwt_lifetime(&jwt(r#"{"exp":1800000600,"sub":"x"}"#), now),
            Some(Duration::from_secs(600))
        );
        // Expired, absent, or not a JWT: nothing.
        assert_eq!(jwt_lifetime(&jwt(r#"{"exp":1700000000}"#), now), None);
        assert_eq!(jwt_lifetime(&jwt(r#"{"sub":"x"}"#), now), None);
        assert_eq!(jwt_lifetime("opaque-token", now), None);
        assert_eq!(jwt_lifetime("a.b.c.d", now), None);
        // A missing expires_in is no longer an error here: the caller settles it.
        let g = token_answer(Answer {
            status: 200,
            retry_after: None,
            body: br#"{"access_token":"abc"}"#,
        })
        .unwrap();
        assert_eq!(g.expires_in, None);
    }

    #[test]
    fn what_the_client_may_not_ask_for_is_refused_not_retried() {
        for code in [
            "invalid_scope",
            "invalid_target",
            "unsupported_grant_type",
            "unauthorized_client",
            "invalid_request",
        ] {
            let body = format!(r#"{{"error":"{code}","error_description":"scope 'x' unknown"}}"#);
            let e = token_answer(Answer {
                status: 400,
                retry_after: None,
                body: body.as_bytes(),
            })
            .unwrap_err();
            assert_eq!(
                e,
                UpstreamError::Refused {
                    code: code.into(),
                    description: Some("scope 'x' unknown".into()),
                }
            );
        }
    }

    #[test]
    fn a_huge_retry_after_is_an_hour() {
        assert_eq!(retry_after(Some(" 5 ")), Some(Duration::from_secs(5)));
        assert_eq!(
            retry_after(Some("18446744073709551615")),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
    }
}
