//! `tokenbroker.v1.TokenService`: unpacks requests, calls the broker, packs answers.

use std::pin::Pin;

use futures::Stream;
use tokio_stream::{StreamExt, StreamMap, wrappers::WatchStream};
use tonic::{Request, Response, Status};

use super::deadline;
use crate::{
    broker::Broker,
    proto::{
        GetOrgTokenRequest, GetOrgTokenResponse, GetUserTokenRequest, GetUserTokenResponse,
        RefreshRequest, RefreshResponse, TokenEventReason, WatchTokensRequest, WatchTokensResponse,
        token_service_server::TokenService,
    },
};

/// The gRPC face of a [`Broker`].
#[derive(Debug, Clone)]
pub struct TokenServiceImpl {
    broker: Broker,
}

impl TokenServiceImpl {
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

/// `min_valid_for` as a duration; negative or malformed is INVALID_ARGUMENT.
fn min_valid_for(
    value: Option<prost_types::Duration>,
) -> Result<Option<std::time::Duration>, Status> {
    value
        .map(|d| {
            std::time::Duration::try_from(d).map_err(|_| {
                Status::invalid_argument(
                    "min_valid_for must be a non-negative duration, e.g. \"300s\"",
                )
            })
        })
        .transpose()
}

type WatchTokensStream = Pin<Box<dyn Stream<Item = Result<WatchTokensResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    async fn get_org_token(
        &self,
        request: Request<GetOrgTokenRequest>,
    ) -> Result<Response<GetOrgTokenResponse>, Status> {
        let deadline = deadline::of(request.metadata());
        let r = request.into_inner();
        let min_valid_for = min_valid_for(r.min_valid_for)?;
        let token = deadline::within(deadline, async {
            Ok(self.broker.org_token(&r.org, min_valid_for).await?)
        })
        .await?;
        Ok(Response::new(GetOrgTokenResponse {
            token: Some(token.as_ref().into()),
        }))
    }

    async fn get_user_token(
        &self,
        request: Request<GetUserTokenRequest>,
    ) -> Result<Response<GetUserTokenResponse>, Status> {
        let deadline = deadline::of(request.metadata());
        let r = request.into_inner();
        let min_valid_for = min_valid_for(r.min_valid_for)?;
        let token = deadline::within(deadline, async {
            Ok(self
                .broker
                .user_token(&r.org, &r.user_id, min_valid_for)
                .await?)
        })
        .await?;
        Ok(Response::new(GetUserTokenResponse {
            token: Some(token.as_ref().into()),
        }))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let deadline = deadline::of(request.metadata());
        let r = request.into_inner();
        let user = (!r.user_id.is_empty()).then_some(r.user_id.as_str());
        let stale = (!r.stale_access_token.is_empty()).then_some(r.stale_access_token.as_str());
        let token = deadline::within(deadline, async {
            Ok(self.broker.refresh(&r.org, user, stale).await?)
        })
        .await?;
        Ok(Response::new(RefreshResponse {
            token: Some(token.as_ref().into()),
        }))
    }

    type WatchTokensStream = WatchTokensStream;

    async fn watch_tokens(
        &self,
        request: Request<WatchTokensRequest>,
    ) -> Result<Response<Self::WatchTokensStream>, Status> {
        let deadline = deadline::of(request.metadata());
        let r = request.into_inner();
        let watches = deadline::within(deadline, async {
            Ok(self.broker.watch(&r.org, &r.user_ids).await?)
        })
        .await?;
        let mut initial = Vec::with_capacity(watches.len());
        let mut changes = StreamMap::new();
        for (i, mut watch) in watches.into_iter().enumerate() {
            // The newest token at this instant; every later one arrives as a change.
            if let Some(token) = watch.borrow_and_update().clone() {
                initial.push(Ok(WatchTokensResponse {
                    token: Some(token.as_ref().into()),
                    reason: TokenEventReason::Initial.into(),
                }));
            }
            changes.insert(i, WatchStream::from_changes(watch));
        }
        let changes = changes.filter_map(|(_, token)| {
            let token = token?;
            Some(Ok(WatchTokensResponse {
                reason: TokenEventReason::from(token.reason).into(),
                token: Some(token.as_ref().into()),
            }))
        });
        let stream = tokio_stream::iter(initial).chain(changes);
        Ok(Response::new(Box::pin(stream)))
    }
}
