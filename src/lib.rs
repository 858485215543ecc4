//! tokenbroker: one gRPC service that holds an expense platform's OAuth credentials and
//! hands out fresh tokens, so that no other process holds a client secret or races on a
//! single-use refresh token.
//!
//! The map: a request flows one way, [`grpc`] (validate, convert) -> [`broker`] (cache hit,
//! or one single-flight fetch per key) -> [`upstream`] (the platform's HTTP endpoints), and
//! rotations flow back from [`broker`] through watch channels to [`grpc`] streams.
//! [`config`] turns TOML and secrets into a validated [`config::Config`]; [`secret`] keeps
//! secrets out of logs; [`sandbox`] is the built-in stand-in for the platform that demo
//! mode and the tests run against.
#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
pub mod demo;
pub mod grpc;
pub mod sandbox;
pub mod secret;
pub mod upstream;

/// The generated `tokenbroker.v1` messages, server and client.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("tokenbroker.v1");
}

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{broker::Broker, config::Config, upstream::Upstream};

/// Why the broker could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client for the platform could not be built.
    #[error("{0}")]
    Upstream(#[from] upstream::UpstreamError),
    /// Server reflection could not load the descriptors (a build problem).
    #[error("server reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(tonic::transport::Error),
}

/// Runs the broker for `config` on `listener` until `shutdown` completes. Tests bind
/// `127.0.0.1:0` and call this as `main` does.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let broker = broker(&config)?;
    serve(broker, config, listener, shutdown).await
}

/// The broker `config` describes. Must be called within a Tokio runtime.
pub fn broker(config: &Config) -> Result<Broker, Error> {
    let upstream = Upstream::new(config.request_timeout)?;
    Ok(Broker::new(
        config.orgs.clone(),
        upstream,
        config.cache.clone(),
    ))
}

/// Serves `broker` on `listener` with `config`'s server settings until `shutdown`
/// completes. Then every watch stream ends with UNAVAILABLE, open calls get up to
/// `drain_timeout` to finish, and the broker's background renewal stops.
pub async fn serve(
    broker: Broker,
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, orgs = %broker.org_names().join(","), "tokenbroker listening");
    let drain_timeout = config.drain_timeout;
    let signalled = Arc::new(Notify::new());
    let notify = Arc::clone(&signalled);
    let streams_end = CancellationToken::new();
    let options = grpc::ServiceOptions {
        limits: config.watch.clone(),
        shutdown: streams_end.clone(),
    };
    let http2 = grpc::Http2 {
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        // Room for every watch stream a connection may hold, plus calls beside them.
        max_concurrent_streams: u32::try_from(config.watch.max_streams_per_connection + 256)
            .unwrap_or(u32::MAX),
    };
    let server = grpc::serve(broker.clone(), options, http2, listener, async move {
        shutdown.await;
        tracing::info!("shutting down: ending watch streams, draining calls");
        streams_end.cancel();
        notify.notify_one();
    });
    // After the shutdown signal the server stops accepting and waits for open connections
    // to finish; a client that keeps its connection open gets `drain_timeout`, no more.
    let drain = async {
        signalled.notified().await;
        tokio::time::sleep(drain_timeout).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = drain => {
            tracing::warn!(?drain_timeout, "connections still open after the drain timeout; closing them");
            Ok(())
        }
    };
    broker.shutdown();
    result
}
