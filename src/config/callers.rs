//! `[[callers]]` and `[server.tls]`: who may ask and how the broker proves itself to them.

use std::{num::NonZeroU32, path::Path};

use serde::Deserialize;

use super::{ConfigError, error};
use crate::{
    auth::{Caller, OrgScope, Permission, RateLimit},
    secret::PrivateKey,
};

/// `[[callers]]`: one service that may ask for tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    /// The caller's name, for audit logs and messages.
    name: String,
    /// SHA-256 (64 hex digits) of each API key it may send as `authorization: Bearer`.
    #[serde(default)]
    api_key_sha256: Vec<String>,
    /// DNS or URI names (e.g. a SPIFFE ID) its client certificate may carry.
    #[serde(default)]
    tls_names: Vec<String>,
    /// Uids it may connect to the Unix socket as.
    #[serde(default)]
    unix_uids: Vec<u32>,
    /// The orgs it may use; `["*"]` for all.
    orgs: Vec<String>,
    /// Of `org_token`, `user_token`, `refresh`, `watch`.
    permissions: Vec<String>,
    /// Sustained requests per second (token bucket); unset: unlimited.
    rate_limit_per_second: Option<u32>,
    /// Requests allowed at once above the sustained rate. Default: the per-second rate.
    rate_limit_burst: Option<u32>,
    /// Refused: only the key's hash goes in the config.
    api_key: Option<toml::Value>,
}

pub(super) fn callers(
    raw: Vec<RawCaller>,
    org_names: &[String],
) -> Result<Vec<Caller>, ConfigError> {
    let mut callers: Vec<Caller> = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("callers[{i}].{field}");
        if c.api_key.is_some() {
            return Err(error(
                key("api_key"),
                "API keys are not accepted in the config file; put their SHA-256 in api_key_sha256 (`tokenbroker hash-key` prints it)",
            ));
        }
        if c.name.trim().is_empty() || callers.iter().any(|other| other.name == c.name) {
            return Err(error(
                key("name"),
                format!("{:?} is empty or names another caller too", c.name),
            ));
        }
        if c.api_key_sha256.is_empty() && c.tls_names.is_empty() && c.unix_uids.is_empty() {
            return Err(error(
                format!("callers[{i}]"),
                "names no way to recognise the caller; set api_key_sha256, tls_names or unix_uids",
            ));
        }
        let api_key_sha256 = c
            .api_key_sha256
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h.trim(), &mut out)
                    .map(|()| out)
                    .map_err(|_| error(key("api_key_sha256"), "each entry is 64 hex digits: the SHA-256 of a key (`tokenbroker hash-key` prints it)"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let orgs = if c.orgs.iter().any(|o| o == "*") {
            OrgScope::All
        } else {
            if let Some(unknown) = c.orgs.iter().find(|o| !org_names.contains(o)) {
                return Err(error(
                    key("orgs"),
                    format!(
                        "org {unknown:?} is not configured; configured: {}",
                        org_names.join(", ")
                    ),
                ));
            }
            OrgScope::Only(c.orgs.clone())
        };
        if matches!(&orgs, OrgScope::Only(o) if o.is_empty()) {
            return Err(error(
                key("orgs"),
                "is empty; list the orgs it may use, or [\"*\"] for all",
            ));
        }
        let permissions = c
            .permissions
            .iter()
            .map(|p| {
                Permission::parse(p).ok_or_else(|| {
                    error(
                        key("permissions"),
                        format!("{p:?} is not one of org_token, user_token, refresh, watch"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if permissions.is_empty() {
            return Err(error(
                key("permissions"),
                "is empty; list what the caller may do: org_token, user_token, refresh, watch",
            ));
        }
        let rate_limit = match (c.rate_limit_per_second, c.rate_limit_burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(error(
                    key("rate_limit_burst"),
                    "needs rate_limit_per_second",
                ));
            }
            (Some(rate), burst) => {
                let per_second = NonZeroU32::new(rate)
                    .ok_or_else(|| error(key("rate_limit_per_second"), "must be at least 1"))?;
                let burst = NonZeroU32::new(burst.unwrap_or(rate))
                    .ok_or_else(|| error(key("rate_limit_burst"), "must be at least 1"))?;
                Some(RateLimit { per_second, burst })
            }
        };
        callers.push(Caller {
            name: c.name,
            api_key_sha256,
            tls_names: c.tls_names,
            unix_uids: c.unix_uids,
            orgs,
            permissions,
            rate_limit,
        });
    }
    Ok(callers)
}

/// `[server.tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// The server's certificate chain, PEM.
    cert_file: String,
    /// The server's private key, PEM.
    key_file: String,
    /// CA certificates (PEM) that sign callers' client certificates; enables mutual TLS.
    client_ca_file: Option<String>,
}

/// Server TLS material, read at start.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_pem: String,
    /// The private key, kept as a secret.
    pub key_pem: PrivateKey,
    /// Set for mutual TLS: client certificates are verified against it.
    pub client_ca_pem: Option<String>,
    /// The three files as the TOML named them (`cert_file`, `key_file`, `client_ca_file`).
    pub paths: [Option<String>; 3],
}

/// The TLS files `raw` names (configured at `table`, e.g. `server.tls`), read and checked.
pub(super) fn tls(raw: RawTls, base: &Path, table: &str) -> Result<TlsFiles, ConfigError> {
    // Certificate chains and keys are kilobytes; a megabyte is far beyond any.
    let read = |field: &str, path: &str| {
        super::read_small_file(&format!("{table}.{field}"), &base.join(path), 1024 * 1024)
    };
    let cert_pem = read("cert_file", &raw.cert_file)?;
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(error(
            format!("{table}.cert_file"),
            "holds no PEM certificate",
        ));
    }
    let key_pem = read("key_file", &raw.key_file)?;
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(error(
            format!("{table}.key_file"),
            "holds no PEM private key",
        ));
    }
    let client_ca_pem = raw
        .client_ca_file
        .as_deref()
        .map(|p| read("client_ca_file", p))
        .transpose()?;
    if client_ca_pem
        .as_ref()
        .is_some_and(|p| !p.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(error(
            format!("{table}.client_ca_file"),
            "holds no PEM certificate",
        ));
    }
    Ok(TlsFiles {
        cert_pem,
        key_pem: PrivateKey::new(key_pem),
        client_ca_pem,
        paths: [
            Some(raw.cert_file.clone()),
            Some(raw.key_file.clone()),
            raw.client_ca_file.clone(),
        ],
    })
}
