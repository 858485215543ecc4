//! The thin tonic adapter: the TokenService implementation, proto conversion, the one
//! error-to-status mapping, and the server assembly (TokenService, grpc.health.v1 and
//! server reflection v1 and v1alpha).

mod convert;
mod deadline;
mod service;
mod status;
mod watch;

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use service::{ServiceOptions, TokenServiceImpl};

use crate::{broker::Broker, proto};

/// The encoded descriptor set of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenbroker_descriptor.bin"));

/// HTTP/2 settings of the server.
#[derive(Debug, Clone)]
pub struct Http2 {
    /// Ping idle connections this often, to find dead clients.
    pub keepalive_interval: Duration,
    /// Close a connection whose ping is not answered within this.
    pub keepalive_timeout: Duration,
    /// Concurrent streams (calls and watches) per connection.
    pub max_concurrent_streams: u32,
}

/// Serves the broker's gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    broker: Broker,
    options: ServiceOptions,
    http2: Http2,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::Error> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::token_service_server::TokenServiceServer<TokenServiceImpl>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(crate::Error::Reflection)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(crate::Error::Reflection)?;

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(http2.keepalive_interval))
        .http2_keepalive_timeout(Some(http2.keepalive_timeout))
        .max_concurrent_streams(Some(http2.max_concurrent_streams))
        .tcp_nodelay(true)
        .add_service(proto::token_service_server::TokenServiceServer::new(
            TokenServiceImpl::new(broker, options),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(crate::Error::Serve)
}
