//! The one place broker errors become gRPC statuses.

use tonic::{Code, Status};

use crate::broker::BrokerError;

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Self {
        let code = match &e {
            BrokerError::InvalidArgument { .. } => Code::InvalidArgument,
            BrokerError::UnknownOrg { .. } | BrokerError::UnknownUser { .. } => Code::NotFound,
            BrokerError::CredentialsRejected { .. } | BrokerError::NotRotatable { .. } => {
                Code::FailedPrecondition
            }
            BrokerError::Unavailable { .. } => Code::Unavailable,
            BrokerError::OutOfRange { .. } => Code::OutOfRange,
        };
        Status::new(code, e.to_string())
    }
}
