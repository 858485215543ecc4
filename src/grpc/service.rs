//! `tokenbroker.v1.TokenService`: unpacks requests, calls the broker, packs answers.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    budget::Budget,
    convert::token_message,
    deadline, gate,
    watch::{ConnectionStreams, RotationAudits, WatchResponses},
};
use crate::{
    audit::{Audit, HandOut},
    auth::Permission,
    broker::{Broker, OrgRef, Served},
    config::WatchLimits,
    gate::{Admitted, Gate},
    grpc::wire::{
        GetOrgTokenRequest, GetOrgTokenResponse, GetUserTokenRequest, GetUserTokenResponse,
        RefreshRequest, RefreshResponse, WatchTokensRequest, token_service_server::TokenService,
    },
    metrics::{Metrics, RpcMetrics},
};

/// The gRPC face of a [`Broker`].
#[derive(Debug, Clone)]
pub struct TokenServiceImpl {
    broker: Broker,
    options: ServiceOptions,
    streams: Arc<ConnectionStreams>,
    /// Open WatchTokens streams, and the keys they watch, in the whole server.
    open_streams: Arc<Budget>,
    watched_keys: Arc<Budget>,
    rotation_audits: Arc<RotationAudits>,
    rpcs: Arc<Rpcs>,
}

/// The metrics of each method.
#[derive(Debug)]
struct Rpcs {
    org_token: RpcMetrics,
    user_token: RpcMetrics,
    refresh: RpcMetrics,
    watch: RpcMetrics,
}

/// What the service needs besides the broker.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub limits: WatchLimits,
    /// Authentication and policy.
    pub gate: Arc<Gate>,
    /// Where the service counts its calls.
    pub metrics: Arc<Metrics>,
    /// The audit of tokens handed out.
    pub audit: Arc<Audit>,
    /// Cancelled when the server shuts down: every watch stream ends with UNAVAILABLE.
    pub shutdown: CancellationToken,
}

impl TokenServiceImpl {
    /// The service; `streams` counts each connection's WatchTokens streams.
    pub fn new(broker: Broker, options: ServiceOptions, streams: Arc<ConnectionStreams>) -> Self {
        let metrics = &options.metrics;
        let rpcs = Arc::new(Rpcs {
            org_token: metrics.rpc("GetOrgToken"),
            user_token: metrics.rpc("GetUserToken"),
            refresh: metrics.rpc("Refresh"),
            watch: metrics.rpc("WatchTokens"),
        });
        Self {
            open_streams: Budget::new(options.limits.max_streams),
            watched_keys: Budget::new(options.limits.max_watched_keys),
            broker,
            options,
            streams,
            rotation_audits: Arc::default(),
            rpcs,
        }
    }
}

/// A status code's name, as metrics label it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
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

impl TokenServiceImpl {
    /// Runs one RPC and records its status code and latency.
    async fn observed<T>(
        rpc: &RpcMetrics,
        call: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let started = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        rpc.answered(code_name(code), started.elapsed());
        result
    }
}

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    async fn get_org_token(
        &self,
        request: Request<GetOrgTokenRequest>,
    ) -> Result<Response<GetOrgTokenResponse>, Status> {
        Self::observed(&self.rpcs.org_token, self.org_token_call(request)).await
    }

    async fn get_user_token(
        &self,
        request: Request<GetUserTokenRequest>,
    ) -> Result<Response<GetUserTokenResponse>, Status> {
        Self::observed(&self.rpcs.user_token, self.user_token_call(request)).await
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        Self::observed(&self.rpcs.refresh, self.refresh_call(request)).await
    }

    type WatchTokensStream = WatchResponses;

    async fn watch_tokens(
        &self,
        request: Request<WatchTokensRequest>,
    ) -> Result<Response<Self::WatchTokensStream>, Status> {
        Self::observed(&self.rpcs.watch, self.watch_call(request)).await
    }
}

impl TokenServiceImpl {
    /// The org a request names (the only one, if it names none), once the caller may use
    /// `permission` on it.
    fn authorized_org(
        &self,
        admitted: &Admitted,
        permission: Permission,
        org: &str,
    ) -> Result<OrgRef, Status> {
        // Errors name only the orgs this caller may use for this RPC.
        let may_use = |name: &str| admitted.authorize(permission, name).is_ok();
        let org = self.broker.find_org(org, &may_use)?;
        admitted.authorize(permission, org.name())?;
        Ok(org)
    }

    /// Audits a token handed out by `rpc` to the admitted caller.
    fn audit(&self, admitted: &Admitted, rpc: &'static str, served: &Served) {
        self.options.audit.handed_out(HandOut {
            caller: &admitted.caller,
            peer: admitted.peer,
            rpc,
            key: &served.key,
            token: &served.token,
            proxied: None,
        });
    }

    async fn org_token_call(
        &self,
        request: Request<GetOrgTokenRequest>,
    ) -> Result<Response<GetOrgTokenResponse>, Status> {
        let admitted = gate::admit(&self.options.gate, &request)?;
        let (metadata, _, r) = request.into_parts();
        let org = self.authorized_org(&admitted, Permission::OrgToken, &r.org)?;
        let min_valid_for = min_valid_for(r.min_valid_for)?;
        // The cache hit answers at once; only a miss builds the (larger) waiting future.
        let served = match self.broker.cached_org_token(&org, min_valid_for) {
            Some(served) => served,
            // The caller's deadline matters only to a call that waits.
            None => {
                Box::pin(deadline::within_or(
                    deadline::of(&metadata),
                    async { Ok(self.broker.org_token(&org, min_valid_for).await?) },
                    || self.broker.still_valid(&org, None, min_valid_for),
                    || self.broker.waiting_for_budget(),
                ))
                .await?
            }
        };
        self.audit(&admitted, "GetOrgToken", &served);
        Ok(Response::new(GetOrgTokenResponse {
            token: Some(Box::new(token_message(org.name(), None, &served.token))),
        }))
    }

    async fn user_token_call(
        &self,
        request: Request<GetUserTokenRequest>,
    ) -> Result<Response<GetUserTokenResponse>, Status> {
        let admitted = gate::admit(&self.options.gate, &request)?;
        let (metadata, _, r) = request.into_parts();
        let org = self.authorized_org(&admitted, Permission::UserToken, &r.org)?;
        let min_valid_for = min_valid_for(r.min_valid_for)?;
        let cached = self
            .broker
            .cached_user_token(&org, &r.user_id, min_valid_for)?;
        let served = match cached {
            Some(served) => served,
            None => {
                Box::pin(deadline::within_or(
                    deadline::of(&metadata),
                    async {
                        Ok(self
                            .broker
                            .user_token(&org, &r.user_id, min_valid_for)
                            .await?)
                    },
                    || {
                        self.broker
                            .still_valid(&org, Some(&r.user_id), min_valid_for)
                    },
                    || self.broker.waiting_for_budget(),
                ))
                .await?
            }
        };
        self.audit(&admitted, "GetUserToken", &served);
        Ok(Response::new(GetUserTokenResponse {
            token: Some(Box::new(token_message(
                org.name(),
                Some(r.user_id.as_str()),
                &served.token,
            ))),
        }))
    }

    async fn refresh_call(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let admitted = gate::admit(&self.options.gate, &request)?;
        let deadline = deadline::of(request.metadata());
        let r = request.into_inner();
        let org_ref = self.authorized_org(&admitted, Permission::Refresh, &r.org)?;
        let org = org_ref.name();
        let user = (!r.user_id.is_empty()).then_some(r.user_id.as_str());
        let stale = (!r.stale_access_token.is_empty()).then_some(r.stale_access_token.as_str());
        let served = deadline::within(
            deadline,
            async { Ok(self.broker.refresh(&org_ref, user, stale).await?) },
            || self.broker.waiting_for_budget(),
        )
        .await?;
        self.audit(&admitted, "Refresh", &served);
        Ok(Response::new(RefreshResponse {
            token: Some(Box::new(token_message(org, user, &served.token))),
        }))
    }

    async fn watch_call(
        &self,
        request: Request<WatchTokensRequest>,
    ) -> Result<Response<WatchResponses>, Status> {
        let admitted = gate::admit(&self.options.gate, &request)?;
        let deadline = deadline::of(request.metadata());
        let peer = request.remote_addr();
        let r = request.into_inner();
        let org = self.authorized_org(&admitted, Permission::Watch, &r.org)?;
        let limits = &self.options.limits;
        if r.user_ids.len() > limits.max_keys_per_stream {
            return Err(Status::resource_exhausted(format!(
                "{} user_ids in one stream; the limit is {} (watch.max_keys_per_stream): split them over several streams",
                r.user_ids.len(),
                limits.max_keys_per_stream
            )));
        }
        let permit = self
            .streams
            .acquire(peer, limits.max_streams_per_connection)
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "this connection already has {} open WatchTokens streams (watch.max_streams_per_connection): close some, or open another connection",
                    limits.max_streams_per_connection
                ))
            })?;
        let stream = self.open_streams.take(1).ok_or_else(|| {
            Status::resource_exhausted(format!(
                "{} WatchTokens streams are open (watch.max_streams); retry later, or ask an operator to raise it",
                limits.max_streams
            ))
        })?;
        let keys = self
            .watched_keys
            .take(r.user_ids.len().max(1))
            .ok_or_else(|| {
                Status::resource_exhausted(format!(
                    "{} of at most {} keys are watched already (watch.max_watched_keys); watch fewer, or retry later",
                    self.watched_keys.used(),
                    limits.max_watched_keys
                ))
            })?;
        let events = deadline::within(
            deadline,
            async { Ok(self.broker.watch(&org, &r.user_ids).await?) },
            || self.broker.waiting_for_budget(),
        )
        .await?;
        // The stream outlives the call's place among the calls in flight; its caller's
        // name goes on, for the audit line of every token it sends.
        let caller = admitted.caller.name().to_owned();
        Ok(Response::new(WatchResponses::new(
            events,
            self.options.shutdown.clone(),
            (permit, stream, keys),
            caller,
            Arc::clone(&self.rotation_audits),
        )))
    }
}
