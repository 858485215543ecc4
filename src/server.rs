//! The server assembled from a config: the broker, the gate and the gRPC service on one
//! listener, the metrics listener beside it, and the shutdown that ends streams, drains
//! calls and flushes the audit.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    Listener, Reloader, audit, auth,
    broker::Broker,
    config::Config,
    grpc,
    metrics::{self, Metrics},
    proxy::Proxy,
    upstream::Upstream,
};

/// Why the broker could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP client for the platform could not be built (its TLS roots, say).
    #[error("could not build the HTTP client for the platform: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// Server reflection could not load the descriptors (a build problem).
    #[error("server reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(tonic::transport::Error),
    /// The server's TLS certificate or key could not be used.
    #[error("{0}")]
    Tls(String),
    /// An org's issuer could not be discovered, or supports none of what the config asks:
    /// a setting to fix, so `main` exits 2.
    #[error("{0}")]
    Discovery(#[source] crate::upstream::DiscoveryError),
    /// The token store could not be opened (held by another process, a wrong key, an
    /// unreadable folder): a setting to fix, so `main` exits 2.
    #[error("{0}")]
    Store(#[source] crate::store::StoreError),
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Serves `registry` ([`Server::registry`]) in the Prometheus text format at `/metrics` on
/// `listener` until `shutdown`.
pub async fn serve_metrics(
    registry: Arc<prometheus_client::registry::Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = Arc::clone(&registry);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics::render(&registry),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Runs the broker for `config` on `listener` until `shutdown` completes. Tests bind
/// `127.0.0.1:0` and call this as `main` does.
pub async fn run(
    config: Config,
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    Server::new(config).await?.serve(listener, shutdown).await
}

/// A broker ready to serve: its cache, its gate (callers and limits), its config.
pub struct Server {
    broker: Broker,
    /// The audit of tokens handed out (and used by the proxy).
    audit: Arc<audit::Audit>,
    /// The token-injecting proxy, when `[proxy]` is configured.
    proxy: Option<Arc<Proxy>>,
    /// Where the proxy listens, when the caller bound it (tests); else `proxy.listen`.
    proxy_listener: Option<Listener>,
    /// The platform's HTTP client, kept for the discovery of orgs at each reload.
    upstream: Upstream,
    gate: Arc<crate::gate::Gate>,
    /// What the server's components count (the broker's own state is read at scrape).
    metrics: Arc<Metrics>,
    config: Config,
}

impl Server {
    /// The broker `config` describes, its store opened (and every stored token read).
    /// Must be called within a Tokio runtime.
    pub async fn new(config: Config) -> Result<Self, Error> {
        let metrics = Arc::new(Metrics::default());
        let upstream = Upstream::new(config.request_timeout, Arc::clone(&metrics) as _)
            .map_err(Error::HttpClient)?;
        let store = match &config.store {
            Some(settings) => {
                let (store, loaded) =
                    crate::store::Store::open(settings, Arc::clone(&metrics) as _)
                        .await
                        .map_err(Error::Store)?;
                Some((Arc::new(store), loaded))
            }
            None => None,
        };
        let mut orgs = config.orgs.clone();
        for org in &mut orgs {
            upstream
                .discover(&org.name, &mut org.client)
                .await
                .map_err(Error::Discovery)?;
        }
        let broker = Broker::with_store(
            orgs,
            upstream.clone(),
            config.cache.clone(),
            config.limits,
            store,
        );
        let gate = Arc::new(crate::gate::Gate::new(
            auth::Callers::new(config.callers.clone()),
            Arc::clone(&metrics),
        ));
        let audit = Arc::new(audit::Audit::new(config.audit));
        let proxy = config
            .proxy
            .as_ref()
            .map(|settings| {
                Proxy::new(
                    settings,
                    broker.clone(),
                    Arc::clone(&gate),
                    Arc::clone(&audit),
                    metrics.proxy(),
                    config.cache.renewal.min_rotation_interval,
                )
                .map(Arc::new)
            })
            .transpose()
            .map_err(Error::HttpClient)?;
        Ok(Self {
            broker,
            audit,
            proxy,
            proxy_listener: None,
            upstream,
            gate,
            metrics,
            config,
        })
    }

    /// The proxy listens on `listener` rather than binding `proxy.listen` (tests bind
    /// `127.0.0.1:0` and learn the port first).
    pub fn with_proxy_listener(mut self, listener: impl Into<Listener>) -> Self {
        self.proxy_listener = Some(listener.into());
        self
    }

    /// The broker behind the server.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The registry a scrape of this server's `/metrics` renders.
    pub fn registry(&self) -> prometheus_client::registry::Registry {
        metrics::registry(&self.broker, &self.metrics)
    }

    /// A handle that applies new configs to the running server.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            upstream: self.upstream.clone(),
            broker: self.broker.clone(),
            gate: Arc::clone(&self.gate),
            proxy: self.proxy.clone(),
            running: Arc::new(std::sync::Mutex::new(self.config.clone())),
        }
    }

    /// Serves on `listener` until `shutdown` completes; see [`serve`].
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let proxy = match (self.proxy, &self.config.proxy) {
            (Some(proxy), Some(settings)) => {
                let listener =
                    match self.proxy_listener {
                        Some(listener) => listener,
                        None => Listener::bind(&settings.listen).await.map_err(|source| {
                            Error::Listen {
                                addr: settings.listen.to_string(),
                                source,
                            }
                        })?,
                    };
                Some((proxy, listener))
            }
            _ => None,
        };
        serve(
            Parts {
                broker: self.broker,
                gate: self.gate,
                metrics: self.metrics,
                audit: self.audit,
                proxy,
            },
            self.config,
            listener,
            shutdown,
        )
        .await
    }
}

/// The connection limit `config` sets, or three quarters of the open-file limit, for the
/// gRPC listener and the proxy's together; logged,
/// with a warning when the setting leaves too few descriptors for the rest.
fn connection_limits(config: &Config) -> grpc::ConnectionLimits {
    let open_files = grpc::open_file_limit();
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| grpc::default_max_connections(open_files));
    let open_files_text = open_files.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    tracing::info!(
        max_connections,
        open_file_limit = %open_files_text,
        handshake_timeout = ?config.handshake_timeout,
        "connection limits"
    );
    if let Some(limit) = open_files
        && max_connections as u64 + 32 > limit
    {
        tracing::warn!(
            max_connections,
            open_file_limit = limit,
            "server.max_connections leaves fewer than 32 of the open-file limit for the platform's connections and files; at the limit, accepts back off"
        );
    }
    grpc::ConnectionLimits::new(max_connections, config.handshake_timeout)
}

/// What [`serve`] runs.
struct Parts {
    broker: Broker,
    gate: Arc<crate::gate::Gate>,
    metrics: Arc<Metrics>,
    audit: Arc<audit::Audit>,
    /// The proxy and its bound listener, when configured.
    proxy: Option<(Arc<Proxy>, Listener)>,
}

/// Serves the broker on `listener` (and the proxy on its own) with `config`'s server
/// settings until `shutdown` completes. Then every watch stream ends with UNAVAILABLE,
/// open calls and proxied requests get up to `drain_timeout` to finish, and the broker's
/// background renewal stops.
async fn serve(
    parts: Parts,
    config: Config,
    listener: impl Into<Listener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let Parts {
        broker,
        gate,
        metrics,
        audit,
        proxy,
    } = parts;
    let listener = listener.into();
    let addr = listener.local_addr();
    if !config.callers.is_empty() && config.tls.is_none() && !config.listen.is_local() {
        tracing::warn!(
            "callers' API keys travel in clear text: configure [server.tls] when listening beyond loopback"
        );
    }
    tracing::info!(%addr, orgs = %broker.org_names().join(","), "tokenbroker listening");
    let drain_timeout = config.drain_timeout;
    let signalled = Arc::new(Notify::new());
    let notify = Arc::clone(&signalled);
    let streams_end = CancellationToken::new();
    tokio::spawn(Arc::clone(&audit).run(streams_end.clone()));
    let connections = connection_limits(&config);
    let proxy_task = match (proxy, &config.proxy) {
        (Some((proxy, proxy_listener)), Some(settings)) => {
            let tls = settings
                .tls
                .as_ref()
                .map(|files| crate::tls::acceptor(files, "proxy.tls", &[b"h2", b"http/1.1"]))
                .transpose()
                .map_err(Error::Tls)?;
            if !config.callers.is_empty() && tls.is_none() && !settings.listen.is_local() {
                tracing::warn!(
                    "callers' API keys travel to the proxy in clear text: configure [proxy.tls] when listening beyond loopback"
                );
            }
            tracing::info!(addr = %proxy_listener.local_addr(), "token-injecting proxy listening");
            let stop = streams_end.clone();
            let serving = crate::proxy::Serving {
                tls,
                connections: connections.clone(),
                keepalive_interval: config.keepalive_interval,
                keepalive_timeout: config.keepalive_timeout,
                drain_timeout,
            };
            Some(tokio::spawn(crate::proxy::serve(
                proxy,
                proxy_listener,
                serving,
                async move { stop.cancelled().await },
            )))
        }
        _ => None,
    };
    let options = grpc::ServiceOptions {
        limits: config.watch.clone(),
        gate,
        metrics: Arc::clone(&metrics),
        audit: Arc::clone(&audit),
        shutdown: streams_end.clone(),
    };
    let settings = grpc::ServerSettings {
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        // Room for every watch stream a connection may hold, plus calls beside them.
        max_concurrent_streams: u32::try_from(config.watch.max_streams_per_connection + 256)
            .unwrap_or(u32::MAX),
        max_request_bytes: config.max_request_bytes,
        connections,
        tls: config.tls.clone(),
    };
    if let Some(addr) = config.metrics_listen {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                addr: addr.to_string(),
                source,
            })?;
        tracing::info!(%addr, "metrics at /metrics");
        let stop = streams_end.clone();
        tokio::spawn(serve_metrics(
            Arc::new(metrics::registry(&broker, &metrics)),
            metrics_listener,
            async move { stop.cancelled().await },
        ));
    }
    let server = grpc::serve(broker.clone(), options, settings, listener, async move {
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
    if let Some(task) = proxy_task {
        let _ = task.await;
    }
    broker.shutdown();
    // The calls have drained: every repeat counted since the last summary is written.
    audit.flush(audit::Flush::All);
    result
}
