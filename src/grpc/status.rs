//! The one place broker errors become gRPC statuses.

use tonic::{Code, Status};

use crate::{auth::AuthError, broker::BrokerError, store::HoldKind};

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::InvalidArgument { .. } => Code::InvalidArgument,
            BrokerError::UnknownOrg { .. } | BrokerError::UnknownUser { .. } => Code::NotFound,
            BrokerError::CredentialsRejected { .. }
            | BrokerError::NotRotatable { .. }
            | BrokerError::NoUserTokens { .. }
            | BrokerError::Misconfigured { .. } => Code::FailedPrecondition,
            BrokerError::Unavailable { .. }
            | BrokerError::Internal { .. }
            | BrokerError::StoreUnavailable { .. } => Code::Unavailable,
            BrokerError::Held { kind, .. } => match kind {
                HoldKind::Credentials => Code::FailedPrecondition,
                HoldKind::UnknownUser => Code::NotFound,
                HoldKind::Unavailable => Code::Unavailable,
            },
            BrokerError::OutOfRange { .. } => Code::OutOfRange,
            BrokerError::TooManyWaiting { .. } => Code::ResourceExhausted,
        };
        Status::new(code, e.to_string())
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Unauthenticated(_) => Code::Unauthenticated,
            AuthError::PermissionDenied(_) => Code::PermissionDenied,
            AuthError::RateLimited(_) => Code::ResourceExhausted,
        };
        Status::new(code, e.to_string())
    }
}
