//! What `tokenbroker check-config` prints: the effective configuration as TOML the broker
//! itself accepts, defaults filled in. Secrets never appear: an org's secret is shown by
//! where it comes from (the variable or file its TOML named), as the TLS key is.

use std::fmt::Write;

use super::*;
use crate::auth::OrgScope;

/// The TOML lines naming where `org`'s secret comes from, as its config wrote them.
/// What an org's token requests carry beyond the grant, as TOML.
fn describe_extras(out: &mut String, client: &crate::upstream::Client) {
    let e = &client.extras;
    for (key, value) in [
        ("scope", &e.scope),
        ("audience", &e.audience),
        ("redirect_uri", &e.redirect_uri),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value:?}");
        }
    }
    if !e.resources.is_empty() {
        let _ = writeln!(out, "resource = {:?}", e.resources);
    }
    let table = |pairs: Vec<(String, String)>| {
        let items: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        format!("{{ {} }}", items.join(", "))
    };
    if !e.params.is_empty() {
        let _ = writeln!(out, "extra_params = {}", table(e.params.clone()));
    }
    if !e.headers.is_empty() {
        let headers = e
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let _ = writeln!(out, "extra_headers = {}", table(headers));
    }
    if let Some(key) = &client.key {
        // What the operator registers at the server (its JWKS for this client).
        let _ = writeln!(
            out,
            "# private_key_jwt signs {}; its public key (JWK): {}",
            key.alg(),
            key.public_jwk()
        );
    }
    if let crate::upstream::UserGrant::TokenExchange { subject_type } = &client.user_grant {
        let _ = writeln!(
            out,
            "user_grant = \"token_exchange\"\ntoken_exchange_subject_type = {subject_type:?}"
        );
    }
}

pub(super) fn secret_source(org: &RawOrg) -> String {
    let strings = |v: &[String]| {
        format!(
            "[{}]",
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut out = String::new();
    if let Some(env) = &org.client_secret_env {
        let _ = writeln!(out, "client_secret_env = {}", strings(&env.to_vec()));
    }
    if let Some(files) = &org.client_secret_file {
        let files: Vec<String> = files
            .to_vec()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let _ = writeln!(out, "client_secret_file = {}", strings(&files));
    }
    if let Some(env) = &org.static_token_env {
        let _ = writeln!(out, "static_token_env = {env:?}");
    }
    if let Some(env) = &org.client_key_env {
        let _ = writeln!(out, "client_key_env = {env:?}");
    }
    if let Some(file) = &org.client_key_file {
        let _ = writeln!(out, "client_key_file = {:?}", file.display().to_string());
    }
    for (key, value) in [
        ("client_key_id", &org.client_key_id),
        ("client_assertion_audience", &org.client_assertion_audience),
    ] {
        if let Some(value) = value {
            let _ = writeln!(out, "{key} = {value:?}");
        }
    }
    if let Some(lifetime) = &org.default_token_lifetime {
        let _ = writeln!(out, "default_token_lifetime = {lifetime:?}");
    }
    if let Some(file) = &org.ca_file {
        let _ = writeln!(out, "ca_file = {:?}", file.display().to_string());
    }
    if let Some(file) = &org.static_token_file {
        let _ = writeln!(out, "static_token_file = {:?}", file.display().to_string());
    }
    out
}

impl Config {
    /// The effective configuration as TOML that loads back as the same config (with the
    /// same environment and files), defaults filled in and no secret in it: what
    /// `tokenbroker check-config` prints.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let d = |d: Duration| format!("{:?}", humantime::format_duration(d).to_string());
        let _ = writeln!(
            out,
            "[server]\nlisten = {:?}\ndrain_timeout = {}\nkeepalive_interval = {}\nkeepalive_timeout = {}\nhandshake_timeout = {}",
            self.listen.to_string(),
            d(self.drain_timeout),
            d(self.keepalive_interval),
            d(self.keepalive_timeout),
            d(self.handshake_timeout)
        );
        match self.max_connections {
            Some(n) => {
                let _ = writeln!(out, "max_connections = {n}");
            }
            None => out.push_str(
                "# max_connections: three quarters of the open-file limit, read at start\n",
            ),
        }
        let _ = writeln!(
            out,
            "allow_unauthenticated = {}\nmax_waiting_callers = {}\nmax_request_bytes = {}",
            self.allow_unauthenticated, self.limits.max_waiting_callers, self.max_request_bytes
        );
        if let Some(tls) = &self.tls {
            out.push_str("\n[server.tls]\n");
            for (key, path) in ["cert_file", "key_file", "client_ca_file"]
                .iter()
                .zip(&tls.paths)
            {
                if let Some(path) = path {
                    let _ = writeln!(out, "{key} = {path:?}");
                }
            }
        }
        let _ = writeln!(
            out,
            "\n[upstream]\nrequest_timeout = {}\nmax_concurrent_flights = {}\nmax_requests_per_second = {:?}\nburst = {}",
            d(self.request_timeout),
            self.limits.max_concurrent_flights,
            self.limits.upstream_budget.per_second,
            self.limits.upstream_budget.burst
        );
        let _ = writeln!(
            out,
            "\n[audit]\nsummary_interval = {}\nevery_call = {}",
            d(self.audit.summary_interval),
            self.audit.every_call
        );
        let r = &self.cache.renewal;
        let _ = writeln!(
            out,
            "\n[renewal]\nfraction = {}\njitter = {}\nsafety_margin = {}\nbackoff_base = {}\nbackoff_max = {}\ncredentials_retry = {}\nmin_rotation_interval = {}",
            r.fraction,
            r.jitter,
            d(r.safety_margin),
            d(r.backoff_base),
            d(r.backoff_max),
            d(r.credentials_retry),
            d(r.min_rotation_interval)
        );
        let _ = writeln!(
            out,
            "\n[cache]\nuser_idle_timeout = {}\nmax_user_tokens = {}\nprefetch_org_tokens = {}\nunknown_user_ttl = {}\nmax_unknown_users = {}",
            d(self.cache.user_idle_timeout),
            self.cache.max_user_tokens,
            self.cache.prefetch_org_tokens,
            d(self.cache.unknown_user_ttl),
            self.cache.max_unknown_users
        );
        let _ = writeln!(
            out,
            "\n[watch]\nmax_keys_per_stream = {}\nmax_streams_per_connection = {}\nmax_streams = {}\nmax_watched_keys = {}\nmax_health_streams_per_connection = {}\nmax_health_streams = {}",
            self.watch.max_keys_per_stream,
            self.watch.max_streams_per_connection,
            self.watch.max_streams,
            self.watch.max_watched_keys,
            self.watch.max_health_streams_per_connection,
            self.watch.max_health_streams
        );
        if let Some(addr) = self.metrics_listen {
            let _ = writeln!(out, "\n[metrics]\nlisten = \"{addr}\"");
            if !addr.ip().is_loopback() {
                // It loaded, so it was allowed.
                out.push_str("allow_public = true\n");
            }
        }
        if let Some(proxy) = &self.proxy {
            let l = &proxy.limits;
            let _ = writeln!(
                out,
                "\n[proxy]\nlisten = {:?}\nmax_retry_body_bytes = {}\nmax_request_bytes = {}\nmax_response_bytes = {}\nrequest_timeout = {}\nmax_concurrent_requests = {}",
                proxy.listen.to_string(),
                l.max_retry_body_bytes,
                l.max_request_bytes,
                l.max_response_bytes,
                d(l.request_timeout),
                l.max_concurrent_requests
            );
            if let Some(tls) = &proxy.tls {
                out.push_str("\n[proxy.tls]\n");
                for (key, path) in ["cert_file", "key_file", "client_ca_file"]
                    .iter()
                    .zip(&tls.paths)
                {
                    if let Some(path) = path {
                        let _ = writeln!(out, "{key} = {path:?}");
                    }
                }
            }
        }
        for org in &self.orgs {
            match &org.client.discovery {
                Some(d) => {
                    let _ = writeln!(
                        out,
                        "\n[orgs.{}]\nissuer = {:?}",
                        org.name,
                        d.issuer.as_str()
                    );
                    if d.auth_explicit {
                        let _ = writeln!(out, "client_auth = {:?}", org.client.auth.name());
                    }
                }
                None => {
                    let _ = writeln!(
                        out,
                        "\n[orgs.{}]\ntoken_url = {:?}\nclient_auth = {:?}",
                        org.name,
                        org.client.token_url.as_str(),
                        org.client.auth.name()
                    );
                }
            }
            if let Some(url) = &org.client.authorization_grant_url {
                let _ = writeln!(out, "authorization_grant_url = {:?}", url.as_str());
            }
            if let Some(url) = self
                .proxy
                .as_ref()
                .and_then(|p| p.api_urls.get(org.name.as_ref() as &str))
            {
                let _ = writeln!(out, "api_url = {:?}", url.as_str());
            }
            describe_extras(&mut out, &org.client);
            if let Some(id) = &org.client.client_id {
                let _ = writeln!(out, "client_id = {id:?}");
            }
            if let Some(source) = self.secret_sources.get(org.name.as_ref() as &str) {
                out.push_str(source);
            }
        }
        for caller in &self.callers {
            let hashes: Vec<String> = caller.api_key_sha256.iter().map(hex::encode).collect();
            let orgs = match &caller.orgs {
                OrgScope::All => vec!["*".to_owned()],
                OrgScope::Only(orgs) => orgs.clone(),
            };
            let permissions: Vec<&str> = caller.permissions.iter().map(|p| p.name()).collect();
            let _ = writeln!(
                out,
                "\n[[callers]]\nname = {:?}\napi_key_sha256 = {hashes:?}\ntls_names = {:?}\nunix_uids = {:?}\norgs = {orgs:?}\npermissions = {permissions:?}",
                caller.name, caller.tls_names, caller.unix_uids,
            );
            if let Some(rate) = caller.rate_limit {
                let _ = writeln!(
                    out,
                    "rate_limit_per_second = {}\nrate_limit_burst = {}",
                    rate.per_second, rate.burst
                );
            }
        }
        if let Some(store) = &self.store_source {
            out.push_str(store);
        }
        out
    }
}
