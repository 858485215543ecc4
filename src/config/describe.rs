//! What `tokenbroker check-config` prints: the effective configuration, defaults filled
//! in, every secret shown as `[redacted]`.

use super::*;

impl Config {
    /// The effective configuration as TOML, defaults filled in and every secret shown as
    /// `[redacted]`: what `tokenbroker check-config` prints.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
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
            let _ = writeln!(
                out,
                "\n[server.tls]\ncertificate = \"(loaded)\"\nkey = \"{}\"\nclient_ca = {}",
                tls.key_pem,
                if tls.client_ca_pem.is_some() {
                    "\"(loaded): mutual TLS\""
                } else {
                    "\"(none)\""
                }
            );
        }
        let _ = writeln!(
            out,
            "\n[upstream]\nrequest_timeout = {}\nmax_concurrent_flights = {}",
            d(self.request_timeout),
            self.limits.max_concurrent_flights
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
            "\n[renewal]\nfraction = {}\njitter = {}\nsafety_margin = {}\nbackoff_base = {}\nbackoff_max = {}\ncredentials_retry = {}",
            r.fraction,
            r.jitter,
            d(r.safety_margin),
            d(r.backoff_base),
            d(r.backoff_max),
            d(r.credentials_retry)
        );
        let _ = writeln!(
            out,
            "\n[cache]\nuser_idle_timeout = {}\nmax_user_tokens = {}\nprefetch_org_tokens = {}",
            d(self.cache.user_idle_timeout),
            self.cache.max_user_tokens,
            self.cache.prefetch_org_tokens
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
        }
        for org in &self.orgs {
            let _ = writeln!(
                out,
                "\n[orgs.{}]\ntoken_url = {:?}\nauthorization_grant_url = {:?}",
                org.name,
                org.client.token_url.as_str(),
                org.client.authorization_grant_url.as_str()
            );
            if let Some(id) = &org.client.client_id {
                let _ = writeln!(out, "client_id = {id:?}");
            }
            match &org.credentials {
                Credentials::Client { secrets, .. } => {
                    let shown: Vec<String> = secrets.iter().map(|s| format!("\"{s}\"")).collect();
                    let _ = writeln!(out, "client_secrets = [{}]", shown.join(", "));
                }
                Credentials::Static(token) => {
                    let _ = writeln!(out, "static_token = \"{token}\"");
                }
            }
        }
        for caller in &self.callers {
            let _ = writeln!(
                out,
                "\n[[callers]]\nname = {:?}\napi_key_sha256 = {} hash(es)\ntls_names = {:?}\nunix_uids = {:?}\norgs = {:?}\npermissions = {:?}",
                caller.name,
                caller.api_key_sha256.len(),
                caller.tls_names,
                caller.unix_uids,
                caller.orgs,
                caller
                    .permissions
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
            );
            if let Some(rate) = caller.rate_limit {
                let _ = writeln!(
                    out,
                    "rate_limit_per_second = {}\nrate_limit_burst = {}",
                    rate.per_second, rate.burst
                );
            }
        }
        out
    }
}
