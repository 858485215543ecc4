//! The thin tonic adapter: the TokenService implementation, proto conversion, the one
//! error-to-status mapping, and the server assembly (TokenService, grpc.health.v1 and
//! server reflection v1 and v1alpha).

mod authority;
mod budget;
mod coalesce;
mod convert;
mod deadline;
mod gate;
mod health;
mod service;
mod status;
mod watch;

/// The `tokenbroker.v1` messages and server as the broker serves them: the same bytes on
/// the wire as [`crate::proto`], with the answers' token boxed (see `build.rs`).
#[allow(clippy::all, missing_docs)]
pub(crate) mod wire {
    include!(concat!(env!("OUT_DIR"), "/server/tokenbroker.v1.rs"));
}

use std::{future::Future, sync::Arc, time::Duration};

use coalesce::Coalesced;
use watch::ConnectionStreams;

pub use crate::incoming::{ConnectionLimits, default_max_connections, open_file_limit};
#[doc(hidden)]
/// The `grpc-timeout` parser, for the fuzz target (`fuzz/`).
pub use deadline::parse as parse_grpc_timeout;
pub use service::{ServiceOptions, TokenServiceImpl};

use crate::{Listener, broker::Broker, config::TlsFiles};

/// The encoded descriptor set of `proto/`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tokenbroker_descriptor.bin"));

/// Transport settings of the server.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Ping idle connections this often, to find dead clients.
    pub keepalive_interval: Duration,
    /// Close a connection whose ping is not answered within this.
    pub keepalive_timeout: Duration,
    /// Concurrent streams (calls and watches) per connection.
    pub max_concurrent_streams: u32,
    /// The largest request message accepted.
    pub max_request_bytes: usize,
    /// Connections open at once, and the deadline for each one's handshake.
    pub connections: ConnectionLimits,
    /// Server TLS, and mutual TLS when it names a client CA.
    pub tls: Option<TlsFiles>,
}

/// Serves the broker's gRPC API on `listener` until `shutdown` completes.
pub async fn serve(
    broker: Broker,
    options: ServiceOptions,
    settings: ServerSettings,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), crate::Error> {
    // "" is liveness: serving while the process serves. The service's name is readiness.
    let health_reporter = tonic_health::server::HealthReporter::new();
    let health_service =
        tonic_health::pb::health_server::HealthServer::new(health::BoundedHealth::new(
            health_reporter.clone(),
            options.limits.max_health_streams_per_connection,
            options.limits.max_health_streams,
        ));
    tokio::spawn(track_readiness(
        broker.clone(),
        health_reporter,
        options.shutdown.clone(),
    ));
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

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(settings.keepalive_interval))
        .http2_keepalive_timeout(Some(settings.keepalive_timeout))
        .max_concurrent_streams(Some(settings.max_concurrent_streams));
    let tls = settings
        .tls
        .as_ref()
        .map(|files| crate::tls::acceptor(files, "server.tls", &[b"h2"]))
        .transpose()
        .map_err(crate::Error::Tls)?;
    let watch_streams = Arc::new(ConnectionStreams::default());
    let token_service = wire::token_service_server::TokenServiceServer::new(TokenServiceImpl::new(
        broker,
        options,
        Arc::clone(&watch_streams),
    ))
    .max_decoding_message_size(settings.max_request_bytes);
    let router = builder
        .add_service(token_service)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    // Accepted connections (see `incoming`): TCP without Nagle's delay (answers are small
    // and wanted at once: with it, a call could wait 40 ms for a delayed acknowledgement),
    // and the writes of a connection that pushes WatchTokens messages consolidated (see
    // `coalesce`). Unix connections pass a filter for the `:authority` standard clients send
    // there (see `authority`).
    let limits = settings.connections;
    match (listener, tls) {
        (Listener::Tcp(listener), None) => {
            let incoming = crate::incoming::connections(listener, limits, move |io| {
                let streams = tcp_setup(&io, &watch_streams);
                async move { Ok(Coalesced::new(io, streams)) }
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        (Listener::Tcp(listener), Some(tls)) => {
            let incoming = crate::incoming::connections(listener, limits, move |io| {
                let streams = tcp_setup(&io, &watch_streams);
                let accept = tls.accept(io);
                async move { Ok(Coalesced::new(accept.await?, streams)) }
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        (Listener::Unix(listener), _) => {
            let incoming = crate::incoming::connections(listener, limits, |io| {
                std::future::ready(Ok(authority::Lenient::new(io)))
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
    .map_err(crate::Error::Serve)
}

/// Readies an accepted TCP connection: Nagle's delay off, and the count of its
/// WatchTokens streams that its writer consults.
fn tcp_setup(
    io: &tokio::net::TcpStream,
    watch_streams: &ConnectionStreams,
) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
    if let Err(e) = io.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot turn Nagle's delay off");
    }
    io.peer_addr().ok().map(|p| watch_streams.connection(p))
}

/// The health service name that reports readiness.
pub const READINESS_SERVICE: &str = "tokenbroker.v1.TokenService";

/// Keeps readiness current: SERVING while every configured org holds a valid token (a
/// long-lived one counts), NOT_SERVING otherwise and once the server shuts down.
async fn track_readiness(
    broker: Broker,
    reporter: tonic_health::server::HealthReporter,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use tonic_health::ServingStatus;
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ready = broker.is_ready();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(ready, "readiness changed");
            reporter.set_service_status(READINESS_SERVICE, status).await;
            last = Some(ready);
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                reporter.set_service_status(READINESS_SERVICE, ServingStatus::NotServing).await;
                return;
            }
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_skip_nagle_and_see_their_watch_streams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let watch_streams = ConnectionStreams::default();
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (conn, _) = listener.accept().await.expect("accepted");
        let streams = tcp_setup(&conn, &watch_streams);
        let conn = Coalesced::new(conn, streams);
        assert!(conn.get_ref().nodelay().expect("nodelay"), "Nagle is off");
        assert!(!conn.pushes());
        // A WatchTokens stream of this connection (named by the client's address).
        let peer = client.local_addr().expect("client address");
        let permit = watch_streams.acquire(Some(peer), 10).expect("a place");
        assert!(conn.pushes(), "the writer sees the connection's stream");
        drop(permit);
        assert!(!conn.pushes());
    }
}
