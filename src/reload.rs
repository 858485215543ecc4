//! A config applied to the running server: orgs and callers change at once; the settings
//! that need a restart are named in the log and kept as they were.

use std::sync::Arc;

use crate::{auth, broker::Broker, config::Config, sync::LockUnpoisoned};

/// Applies a new config to a running server: orgs (added, removed, new endpoints or
/// secrets) and callers change at once; what needs a restart is named and kept.
#[derive(Clone)]
pub struct Reloader {
    /// For the discovery of orgs configured by `issuer`.
    pub(crate) upstream: crate::upstream::Upstream,
    pub(crate) broker: Broker,
    pub(crate) gate: Arc<crate::gate::Gate>,
    /// The running proxy, whose orgs' `api_url`s follow the config.
    pub(crate) proxy: Option<Arc<crate::proxy::Proxy>>,
    pub(crate) running: Arc<std::sync::Mutex<Config>>,
}

impl Reloader {
    /// Applies `new`; returns the settings that changed but need a restart.
    pub async fn apply(&self, new: Config) -> Vec<&'static str> {
        let mut orgs = new.orgs.clone();
        for org in &mut orgs {
            if let Err(e) = self.upstream.discover(&org.name, &mut org.client).await {
                tracing::error!(error = %e, "the new config is refused; the running one stays");
                return Vec::new();
            }
        }
        let changes = self.broker.reload_orgs(orgs).await;
        self.gate
            .set_callers(auth::Callers::new(new.callers.clone()));
        if let (Some(proxy), Some(settings)) = (&self.proxy, &new.proxy) {
            proxy.set_api_urls(settings.api_urls.clone());
        }
        let mut running = self.running.lock_unpoisoned();
        let old = &*running;
        let mut restart = Vec::new();
        let proxy_settings = |c: &Config| {
            c.proxy.as_ref().map(|p| {
                (
                    p.listen.clone(),
                    p.limits,
                    p.tls.as_ref().map(|t| t.cert_pem.clone()),
                )
            })
        };
        let checks: [(&'static str, bool); 13] = [
            (
                "[proxy] (but the orgs' api_url)",
                proxy_settings(old) != proxy_settings(&new),
            ),
            ("server.listen", old.listen != new.listen),
            (
                "server.tls",
                old.tls.as_ref().map(|t| &t.cert_pem) != new.tls.as_ref().map(|t| &t.cert_pem),
            ),
            (
                "server.keepalive_*",
                (old.keepalive_interval, old.keepalive_timeout)
                    != (new.keepalive_interval, new.keepalive_timeout),
            ),
            (
                "server.max_waiting_callers and upstream.max_concurrent_flights",
                old.limits != new.limits,
            ),
            ("[audit]", old.audit != new.audit),
            (
                "server.max_request_bytes",
                old.max_request_bytes != new.max_request_bytes,
            ),
            (
                "upstream.request_timeout",
                old.request_timeout != new.request_timeout,
            ),
            ("[renewal] and [cache]", old.cache != new.cache),
            ("[watch]", old.watch != new.watch),
            ("metrics.listen", old.metrics_listen != new.metrics_listen),
            ("[store]", old.store_source != new.store_source),
            (
                "server.max_connections and server.handshake_timeout",
                (old.max_connections, old.handshake_timeout)
                    != (new.max_connections, new.handshake_timeout),
            ),
        ];
        for (key, changed) in checks {
            if changed {
                restart.push(key);
            }
        }
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these settings changed but take effect only after a restart");
        }
        tracing::info!(
            added = ?changes.added,
            removed = ?changes.removed,
            updated = ?changes.updated,
            callers = new.callers.len(),
            "config reloaded"
        );
        *running = new;
        restart
    }
}
