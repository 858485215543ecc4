//! What a source says when it has no token to give: the broker's status, or the event that
//! emptied it. One enum, so a caller matches on it rather than parsing messages.

use std::fmt;

/// Why a [`TokenSource`](crate::TokenSource) or the reqwest helper has no token for you.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused or could not be reached: its gRPC status and message
    /// (`NOT_FOUND` for an unknown org or user, `UNAVAILABLE` when the broker or the
    /// platform is down, `UNAUTHENTICATED` without a valid API key, `DEADLINE_EXCEEDED`
    /// when no token came within the timeout, ...).
    #[error("tokenbroker: {}: {message}", code_name(*code))]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The broker's message, for people.
        message: String,
    },
    /// A `REVOKED` or `UNAVAILABLE` event emptied the source; it holds no token until the
    /// broker sends the next one.
    #[error("tokenbroker: {reason}: {detail}")]
    Event {
        /// Which event.
        reason: Gone,
        /// What the platform said, as the broker passed it on.
        detail: String,
    },
    /// The target could not be used (not `host:port`, `http(s)://host:port` or
    /// `unix:///path`), or its TLS settings are invalid.
    #[error("tokenbroker target {target:?}: {why}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP request itself failed (connection, body, ...), not the token.
    #[cfg(feature = "reqwest")]
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The two events that leave a key without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The token expired and the platform refused to renew it (the user was removed, or
    /// the broker's credentials were revoked).
    Revoked,
    /// The token expired while the platform was unreachable; the broker keeps trying.
    Unavailable,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gone::Revoked => "REVOKED",
            Gone::Unavailable => "UNAVAILABLE",
        })
    }
}

impl Error {
    /// The error's code as the Python and Node clients name it: the gRPC status
    /// (`"NOT_FOUND"`, `"UNAVAILABLE"`, ...) or the event (`"REVOKED"`, `"UNAVAILABLE"`).
    pub fn code(&self) -> String {
        match self {
            Error::Status { code, .. } => code_name(*code).to_owned(),
            Error::Event { reason, .. } => reason.to_string(),
            Error::Target { .. } => "INVALID_ARGUMENT".to_owned(),
            #[cfg(feature = "reqwest")]
            Error::Http(_) => "HTTP".to_owned(),
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// The canonical name of a gRPC status code, as in the gRPC spec.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_in_the_other_clients() {
        let status = Error::from(tonic::Status::not_found("no user \"x\" in org \"demo\""));
        assert_eq!(status.code(), "NOT_FOUND");
        assert_eq!(
            status.to_string(),
            "tokenbroker: NOT_FOUND: no user \"x\" in org \"demo\""
        );
        let event = Error::Event {
            reason: Gone::Revoked,
            detail: "invalid_grant".into(),
        };
        assert_eq!(event.code(), "REVOKED");
    }
}
