//! The proxy's listener: connections accepted as the gRPC listener's are (places shared
//! with it within `server.max_connections`, TLS and the first bytes within the handshake
//! timeout), each served HTTP/1.1 or HTTP/2 by hyper with timers on (an HTTP/1.1 request's
//! headers, and a keep-alive connection's idle wait, within `proxy.request_timeout`; HTTP/2
//! pings as on the gRPC listener), with who is on the other end (address, certificate
//! names, uid) handed to every request; and the shutdown that stops accepting and drains.

use std::{future::Future, net::IpAddr, sync::Arc, time::Duration};

use axum::{Extension, Router};
use futures::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{Proxy, forward};
use crate::{
    Listener,
    gate::certificate_names,
    incoming::{self, Accept, ConnectionLimits},
};

/// Who is on the other end of a connection, as each of its requests sees it.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The caller's address; `None` over a Unix socket.
    pub ip: Option<IpAddr>,
    /// The names in its client certificate (mutual TLS).
    pub tls_names: Arc<[String]>,
    /// Its uid, over a Unix socket.
    pub uid: Option<u32>,
}

/// A connection that can say who is on its other end.
pub trait PeerOf {
    fn peer(&self) -> Peer;
}

impl PeerOf for TcpStream {
    fn peer(&self) -> Peer {
        Peer {
            ip: self.peer_addr().ok().map(|a| a.ip()),
            ..Peer::default()
        }
    }
}

impl PeerOf for TlsStream<TcpStream> {
    fn peer(&self) -> Peer {
        let (tcp, session) = self.get_ref();
        let tls_names = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| certificate_names(leaf.as_ref()))
            .unwrap_or_default();
        Peer {
            tls_names: tls_names.into(),
            ..tcp.peer()
        }
    }
}

impl PeerOf for UnixStream {
    fn peer(&self) -> Peer {
        Peer {
            uid: self.peer_cred().ok().map(|c| c.uid()),
            ..Peer::default()
        }
    }
}

/// How the proxy's listener serves: TLS, the connection places it shares with the gRPC
/// listener, HTTP/2 pings, and the drain at shutdown.
pub struct Serving {
    /// `[proxy.tls]`, built.
    pub tls: Option<TlsAcceptor>,
    pub connections: ConnectionLimits,
    /// `server.keepalive_interval` and `server.keepalive_timeout`, for HTTP/2 callers.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `server.drain_timeout`: how long open requests may finish after the shutdown signal.
    pub drain_timeout: Duration,
}

/// Serves `proxy` on `listener` until `shutdown`; then stops accepting and gives open
/// requests up to the drain timeout to finish.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: Listener,
    serving: Serving,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(proxy.limits.request_timeout);
    http.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(serving.keepalive_interval))
        .keep_alive_timeout(serving.keepalive_timeout);
    let app = Router::new().fallback(forward::handle).with_state(proxy);
    let (limits, drain) = (serving.connections, serving.drain_timeout);
    match (listener, serving.tls) {
        (Listener::Tcp(listener), None) => {
            on(
                listener,
                limits,
                app,
                http,
                drain,
                shutdown,
                |io: TcpStream| async move {
                    let _ = io.set_nodelay(true);
                    Ok(io)
                },
            )
            .await
        }
        (Listener::Tcp(listener), Some(tls)) => {
            on(
                listener,
                limits,
                app,
                http,
                drain,
                shutdown,
                move |io: TcpStream| {
                    let _ = io.set_nodelay(true);
                    tls.accept(io)
                },
            )
            .await
        }
        (Listener::Unix(listener), _) => {
            on(
                listener,
                limits,
                app,
                http,
                drain,
                shutdown,
                |io: UnixStream| async move { Ok(io) },
            )
            .await
        }
    }
}

/// [`serve`] on one kind of listener, each connection through `handshake`.
async fn on<L, H, F, IO>(
    listener: L,
    limits: ConnectionLimits,
    app: Router,
    http: auto::Builder<TokioExecutor>,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) where
    L: Accept,
    H: Fn(L::Io) -> F + Send + 'static,
    F: Future<Output = std::io::Result<IO>> + Send + 'static,
    IO: PeerOf + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut accepted = Box::pin(incoming::connections(listener, limits, handshake));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            () = &mut shutdown => break,
            next = accepted.next() => match next {
                Some(Ok(io)) => io,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "proxy: a connection failed");
                    continue;
                }
                None => break,
            },
        };
        // Each request of the connection carries who sent it.
        let service = TowerToHyperService::new(app.clone().layer(Extension(io.get_ref().peer())));
        let connection = http
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "proxy: a connection ended with an error");
            }
        });
    }
    // Stop accepting (the listener closes with the accept loop), then drain.
    drop(accepted);
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain_timeout,
            "proxy requests still open after the drain timeout; closing them"
        );
    }
}
