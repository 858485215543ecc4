//! Domain tokens to protobuf messages.

use prost_types::Timestamp;

use super::wire;
use crate::broker::{Reason, Token, UnixTime};

fn timestamp(t: UnixTime) -> Timestamp {
    Timestamp {
        seconds: t.seconds,
        // Below 10^9 by construction.
        nanos: i32::try_from(t.nanos).unwrap_or(0),
    }
}

/// The message of `t`, the token of `org` (and of `user`, for a user token).
pub fn token_message(org: &str, user: Option<&str>, t: &Token) -> wire::Token {
    wire::Token {
        access_token: t.access_token.expose().to_owned(),
        token_type: t.token_type().to_owned(),
        expires_at: t.expires_at().map(timestamp),
        issued_at: Some(timestamp(t.issued_at())),
        org: org.to_owned(),
        user_id: user.unwrap_or_default().to_owned(),
        generation: t.generation,
        scope: t.scope().unwrap_or_default().to_owned(),
    }
}

impl From<Reason> for wire::TokenEventReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Issued => Self::Issued,
            Reason::Renewed => Self::Renewed,
            Reason::Forced => Self::Forced,
            Reason::Reissued => Self::Reissued,
        }
    }
}
