//! The proxy's listener: connections accepted as the gRPC listener's are (a bounded
//! number, TLS and the first bytes within the handshake timeout), each served HTTP/1.1 or
//! HTTP/2 by axum, with who is on the other end (address, certificate names, uid) handed to
//! every request; and the shutdown that stops accepting and drains.

use std::{future::Future, net::IpAddr, sync::Arc, time::Duration};

use axum::{Router, extract::connect_info::Connected, serve::IncomingStream};
use futures::{Stream, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{Proxy, forward};
use crate::{
    Listener,
    gate::certificate_names,
    incoming::{self, Accept, ConnectionLimits, Guarded},
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

/// The accepted connections as axum takes them.
struct Connections<S> {
    accepted: std::pin::Pin<Box<S>>,
}

impl<S, IO> axum::serve::Listener for Connections<S>
where
    S: Stream<Item = std::io::Result<Guarded<IO>>> + Send + 'static,
    IO: PeerOf + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = Guarded<IO>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Peer) {
        loop {
            match self.accepted.next().await {
                Some(Ok(io)) => {
                    let peer = io.get_ref().peer();
                    return (io, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "proxy: a connection failed"),
                // The accept loop ended (it does not while the listener lives).
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::default())
    }
}

impl<S> Connected<IncomingStream<'_, Connections<S>>> for Peer
where
    Connections<S>: axum::serve::Listener<Addr = Peer>,
{
    fn connect_info(stream: IncomingStream<'_, Connections<S>>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Serves `proxy` on `listener` (TLS with `tls`) until `shutdown`; then stops accepting
/// and gives open requests up to `drain_timeout` to finish.
pub async fn serve(
    proxy: Arc<Proxy>,
    listener: Listener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    drain_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new().fallback(forward::handle).with_state(proxy);
    let signalled = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&signalled);
    let shutdown = async move {
        shutdown.await;
        notify.notify_one();
    };
    let served = async move {
        match (listener, tls) {
            (Listener::Tcp(listener), None) => {
                on(
                    listener,
                    limits,
                    app,
                    shutdown,
                    |io: TcpStream| async move {
                        let _ = io.set_nodelay(true);
                        Ok(io)
                    },
                )
                .await
            }
            (Listener::Tcp(listener), Some(tls)) => {
                on(listener, limits, app, shutdown, move |io: TcpStream| {
                    let _ = io.set_nodelay(true);
                    tls.accept(io)
                })
                .await
            }
            (Listener::Unix(listener), _) => {
                on(
                    listener,
                    limits,
                    app,
                    shutdown,
                    |io: UnixStream| async move { Ok(io) },
                )
                .await
            }
        }
    };
    let drain = async {
        signalled.notified().await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        () = served => {}
        () = drain => tracing::warn!(?drain_timeout, "proxy requests still open after the drain timeout; closing them"),
    }
}

/// [`serve`] on one kind of listener, each connection through `handshake`.
async fn on<L, H, F, IO>(
    listener: L,
    limits: ConnectionLimits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) where
    L: Accept,
    H: Fn(L::Io) -> F + Send + 'static,
    F: Future<Output = std::io::Result<IO>> + Send + 'static,
    IO: PeerOf + tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connections = Connections {
        accepted: Box::pin(incoming::connections(listener, limits, handshake)),
    };
    let service = app.into_make_service_with_connect_info::<Peer>();
    if let Err(e) = axum::serve(connections, service)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the proxy stopped serving");
    }
}
