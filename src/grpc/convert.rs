//! Domain tokens to protobuf messages.

use std::time::SystemTime;

use prost_types::Timestamp;

use crate::{
    broker::{Reason, Token},
    proto,
};

fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

impl From<&Token> for proto::Token {
    fn from(t: &Token) -> Self {
        Self {
            access_token: t.access_token.expose().to_owned(),
            token_type: t.token_type().to_owned(),
            expires_at: t.expires_at().map(timestamp),
            issued_at: Some(timestamp(t.issued_at)),
            org: t.key.org.to_string(),
            user_id: t.key.user.as_deref().unwrap_or_default().to_owned(),
            generation: t.generation,
        }
    }
}

impl From<Reason> for proto::TokenEventReason {
    fn from(r: Reason) -> Self {
        match r {
            Reason::Issued => Self::Issued,
            Reason::Renewed => Self::Renewed,
            Reason::Forced => Self::Forced,
            Reason::Reissued => Self::Reissued,
        }
    }
}
