//! Faults the sandbox can inject, so tests (ours and users') can show what a broker does
//! when the platform misbehaves: error statuses, throttling, latency, hangs, broken bodies,
//! and an answer lost after the platform already spent a refresh token or code.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer this HTTP status with an HTML body, before doing anything.
    Status { status: u16 },
    /// Answer 429 with `Retry-After: retry_after_secs`, before doing anything.
    RateLimit { retry_after_secs: u64 },
    /// Answer normally after this many milliseconds.
    Latency { millis: u64 },
    /// Never answer (until the sandbox stops).
    Hang,
    /// Do the work, then answer 200 with a broken body.
    Malformed { body: MalformedBody },
    /// Do the work (spending a refresh token or code), then drop the connection without an
    /// answer.
    DropAfterCommit,
    /// Answer `307 Temporary Redirect` to `location`, before doing anything. A client that
    /// follows it would send its credentials there.
    Redirect { location: String },
    /// Throttle like the platform: beyond `burst` requests at once, or `per_second` in
    /// steady state (over every request the rule targets), answer 429 with
    /// `Retry-After: 1`; answer normally otherwise.
    Throttle { per_second: u32, burst: u32 },
}

/// The broken bodies a [`Fault::Malformed`] can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedBody {
    /// A proxy's HTML error page.
    Html,
    /// Truncated JSON.
    Garbage,
    /// A token answer without `expires_in`.
    MissingExpiresIn,
    /// A token answer whose `expires_in` is ten thousand years.
    AbsurdExpiresIn,
    /// A token answer whose `expires_in` is a numeric string: seen in the wild, and valid.
    StringExpiresIn,
}

/// Which requests a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The token and the grant endpoints.
    #[default]
    Any,
    /// The token endpoint, any grant type.
    Token,
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
    /// The authorization grant endpoint.
    AuthorizationGrant,
}

/// A fault, what it hits, and how many times (`None`: until cleared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub fault: Fault,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub times: Option<u32>,
}

impl FaultRule {
    /// `fault` on every request `target` names, until cleared.
    pub fn always(fault: Fault, target: Target) -> Self {
        Self {
            fault,
            target,
            times: None,
        }
    }

    /// `fault` on the next `times` requests `target` names.
    pub fn times(fault: Fault, target: Target, times: u32) -> Self {
        Self {
            fault,
            target,
            times: Some(times),
        }
    }
}

/// The kind of a request, as faults see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    ClientCredentials,
    RefreshToken,
    AuthorizationCode,
    OtherToken,
    AuthorizationGrant,
}

impl Target {
    pub fn hits(self, kind: RequestKind) -> bool {
        use RequestKind as K;
        match self {
            Self::Any => true,
            Self::Token => kind != K::AuthorizationGrant,
            Self::ClientCredentials => kind == K::ClientCredentials,
            Self::RefreshToken => kind == K::RefreshToken,
            Self::AuthorizationCode => kind == K::AuthorizationCode,
            Self::AuthorizationGrant => kind == K::AuthorizationGrant,
        }
    }
}

impl Fault {
    /// The delay before answering, for [`Fault::Latency`].
    pub fn latency(&self) -> Option<Duration> {
        match self {
            Self::Latency { millis } => Some(Duration::from_millis(*millis)),
            _ => None,
        }
    }
}

/// The body a [`Fault::Malformed`] sends in place of `answer` (the real JSON answer).
pub fn malformed_body(kind: MalformedBody, answer: &Value) -> (&'static str, String) {
    let mut json = answer.clone();
    let with = |json: &mut Value, value: Option<Value>| {
        if let Some(map) = json.as_object_mut() {
            match value {
                Some(v) => map.insert("expires_in".into(), v),
                None => map.remove("expires_in"),
            };
        }
    };
    match kind {
        MalformedBody::Html => (
            "text/html",
            "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        ),
        MalformedBody::Garbage => (
            "application/json",
            "{\"access_token\": \"abc\", \"expires_in\": ".into(),
        ),
        MalformedBody::MissingExpiresIn => {
            with(&mut json, None);
            ("application/json", json.to_string())
        }
        MalformedBody::AbsurdExpiresIn => {
            with(&mut json, Some(json!(315_360_000_000u64)));
            ("application/json", json.to_string())
        }
        MalformedBody::StringExpiresIn => {
            let seconds = json
                .get("expires_in")
                .map(|v| v.to_string())
                .unwrap_or_default();
            with(&mut json, Some(Value::String(seconds)));
            ("application/json", json.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_from_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"kind":"status","status":503,"target":"refresh_token","times":2}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            FaultRule::times(Fault::Status { status: 503 }, Target::RefreshToken, 2)
        );
        let rule: FaultRule =
            serde_json::from_str(r#"{"kind":"malformed","body":"html"}"#).unwrap();
        assert_eq!(
            rule,
            FaultRule::always(
                Fault::Malformed {
                    body: MalformedBody::Html
                },
                Target::Any
            )
        );
    }

    #[test]
    fn bodies_are_broken_as_named() {
        let answer = json!({"access_token": "a", "expires_in": 60});
        assert!(
            !malformed_body(MalformedBody::MissingExpiresIn, &answer)
                .1
                .contains("expires_in")
        );
        assert!(
            malformed_body(MalformedBody::StringExpiresIn, &answer)
                .1
                .contains(r#""expires_in":"60""#)
        );
        assert!(
            serde_json::from_str::<Value>(&malformed_body(MalformedBody::Garbage, &answer).1)
                .is_err()
        );
    }
}
