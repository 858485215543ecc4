//! `[store]`: where tokens are kept across restarts (an encrypted file for one process, or
//! a Redis that several replicas share) and the keys that seal it.

use super::*;
use crate::{
    secret::{RedisUrl, StoreKey},
    store::{Backend, RedisSettings, RedisTarget, SentinelPrimary, StoreSettings},
};

/// The key prefix in Redis when `store.prefix` is not set.
const DEFAULT_PREFIX: &str = "tokenbroker";
/// How long a replica's claim to fly for a key lasts unless renewed (`store.lease`).
const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// How long a Redis command may take before the broker goes on without it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// `[store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    /// The store file; a relative path is taken from the config file's folder.
    pub(super) path: Option<PathBuf>,
    /// A Redis that every replica shares: `redis://host:port/db`, `rediss://` for TLS,
    /// `user:password@` for ACLs.
    pub(super) redis_url: Option<String>,
    /// A Redis found through Sentinel: `{ master = "mymaster", urls = ["redis://s1:26379"] }`.
    pub(super) redis_sentinel: Option<RawSentinel>,
    /// What every Redis key starts with (default "tokenbroker"), so that several brokers
    /// can share one Redis.
    pub(super) prefix: Option<String>,
    /// How long one replica's claim to fly for a key lasts unless renewed (default "5s").
    pub(super) lease: Option<String>,
    /// How long a Redis command may take (default "1s"); past it the broker goes on
    /// without the store, serving the tokens it holds.
    pub(super) timeout: Option<String>,
    /// Environment variables holding the keys (32 bytes, hex or base64), newest first.
    pub(super) encryption_key_env: Option<OneOrMany<String>>,
    /// Files holding the keys, newest first.
    pub(super) encryption_key_file: Option<OneOrMany<PathBuf>>,
}

/// `store.redis_sentinel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSentinel {
    /// The name the sentinels monitor the primary under.
    pub(super) master: String,
    /// The sentinels, `redis://host:port` each (a sentinel's own password in its URL).
    pub(super) urls: Vec<String>,
    /// The primary's database number (default 0).
    pub(super) db: Option<i64>,
    /// Connect to the primary over TLS (default false).
    pub(super) tls: Option<bool>,
    /// The primary's ACL user.
    pub(super) username: Option<String>,
    /// The environment variable holding the primary's password.
    pub(super) password_env: Option<String>,
}

/// Where one key is read from: an environment variable or a file.
type KeySource = (Option<String>, Option<PathBuf>);

/// The store `raw` describes, its keys read.
pub(super) fn store_settings(
    raw: RawStore,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<StoreSettings, ConfigError> {
    let backend = backend(&raw, env, base)?;
    let (key_setting, sources): (&'static str, Vec<KeySource>) = match (
        &raw.encryption_key_env,
        &raw.encryption_key_file,
    ) {
        (Some(envs), None) => (
            "store.encryption_key_env",
            envs.to_vec().into_iter().map(|v| (Some(v), None)).collect(),
        ),
        (None, Some(files)) => (
            "store.encryption_key_file",
            files
                .to_vec()
                .into_iter()
                .map(|f| (None, Some(f)))
                .collect(),
        ),
        (Some(_), Some(_)) => {
            return Err(error(
                "store",
                "set one of encryption_key_env and encryption_key_file, not both",
            ));
        }
        (None, None) => {
            return Err(error(
                "store.encryption_key_env",
                "is required with [store]: the variable holding the key that seals the stored tokens (make one with `tokenbroker gen-store-key`), or set store.encryption_key_file",
            ));
        }
    };
    if sources.is_empty() {
        return Err(error(key_setting, "lists no key"));
    }
    let mut keys = Vec::with_capacity(sources.len());
    for (var, file) in &sources {
        let text = read_secret(key_setting, var.as_deref(), file.as_deref(), env, base)?;
        let key = StoreKey::parse(&text).map_err(|problem| {
            let name = var
                .clone()
                .or_else(|| file.as_ref().map(|f| f.display().to_string()))
                .unwrap_or_default();
            error(key_setting, format!("the key in {name} {problem}"))
        })?;
        keys.push(key);
    }
    Ok(StoreSettings {
        backend,
        keys,
        key_setting,
    })
}

/// Where `raw` keeps the tokens: a file or a Redis, exactly one.
fn backend(
    raw: &RawStore,
    env: &dyn Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<Backend, ConfigError> {
    let redis_only = [
        ("store.prefix", raw.prefix.is_some()),
        ("store.lease", raw.lease.is_some()),
        ("store.timeout", raw.timeout.is_some()),
    ];
    let target = match (&raw.path, &raw.redis_url, &raw.redis_sentinel) {
        (Some(path), None, None) => {
            if let Some((key, _)) = redis_only.iter().find(|(_, set)| *set) {
                return Err(error(
                    *key,
                    "applies to a Redis store only (store.redis_url or store.redis_sentinel)",
                ));
            }
            return Ok(Backend::File {
                path: base.join(path),
            });
        }
        (None, Some(url), None) => RedisTarget::Url(redis_url("store.redis_url", url)?),
        (None, None, Some(sentinel)) => {
            if sentinel.master.is_empty() {
                return Err(error("store.redis_sentinel.master", "is empty"));
            }
            if sentinel.urls.is_empty() {
                return Err(error("store.redis_sentinel.urls", "lists no sentinel"));
            }
            let urls = sentinel
                .urls
                .iter()
                .map(|u| redis_url("store.redis_sentinel.urls", u))
                .collect::<Result<_, _>>()?;
            let password = sentinel
                .password_env
                .as_deref()
                .map(|var| {
                    read_secret(
                        "store.redis_sentinel.password_env",
                        Some(var),
                        None,
                        env,
                        base,
                    )
                    .map(RedisUrl::new)
                })
                .transpose()?;
            RedisTarget::Sentinel {
                master: sentinel.master.clone(),
                urls,
                primary: SentinelPrimary {
                    db: sentinel.db.unwrap_or(0),
                    tls: sentinel.tls.unwrap_or(false),
                    username: sentinel.username.clone(),
                    password,
                },
            }
        }
        (None, None, None) => {
            return Err(error(
                "store",
                "needs path (a file, for one broker process: e.g. \"/var/lib/tokenbroker/tokens.redb\"), or redis_url or redis_sentinel (a Redis that several replicas share); delete [store] to keep tokens in memory only",
            ));
        }
        _ => {
            return Err(error(
                "store",
                "set one of path, redis_url and redis_sentinel: a file is one process's store, a Redis is every replica's",
            ));
        }
    };
    let prefix = raw.prefix.clone().unwrap_or_else(|| DEFAULT_PREFIX.into());
    if prefix.is_empty()
        || prefix
            .chars()
            .any(|c| c.is_control() || " *?[]\\".contains(c))
    {
        return Err(error(
            "store.prefix",
            "must be non-empty, without spaces, control characters or the pattern characters * ? [ ] \\",
        ));
    }
    let duration = |key: &str, text: &Option<String>, default: Duration| {
        let value = text
            .as_deref()
            .map_or(Ok(default), |t| parse_duration(key, t))?;
        if value.is_zero() {
            return Err(error(key, "must be more than zero"));
        }
        Ok(value)
    };
    let lease = duration("store.lease", &raw.lease, DEFAULT_LEASE)?;
    let timeout = duration("store.timeout", &raw.timeout, DEFAULT_TIMEOUT)?;
    if lease < Duration::from_millis(300) {
        return Err(error(
            "store.lease",
            "must be at least 300ms: a lease is renewed every third of it",
        ));
    }
    if lease < timeout * 3 {
        return Err(error(
            "store.lease",
            format!(
                "must be at least three times store.timeout ({}ms): a lease is renewed every third of it, and a renewal may take that long",
                timeout.as_millis()
            ),
        ));
    }
    Ok(Backend::Redis(RedisSettings {
        target,
        prefix,
        lease,
        timeout,
    }))
}

/// A Redis URL as the settings keep it (its password, if any, never shown).
fn redis_url(key: &str, url: &str) -> Result<RedisUrl, ConfigError> {
    let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|s| url.starts_with(s));
    if !scheme_ok {
        return Err(error(
            key,
            "must start with redis:// (or rediss:// for TLS, unix:// for a socket)",
        ));
    }
    Ok(RedisUrl::new(url))
}

/// A URL as `describe` shows it: any password (before the host, or a `pass` or
/// `password` query parameter, as unix:// URLs carry it) replaced by `***`.
pub(super) fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // The host follows the last '@' (a raw '@' in a password stays in the user info).
    let mut out = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k == "pass" || k == "password" => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// `[store]` as TOML, its keys named by where they come from (never the keys).
pub(super) fn describe(raw: &RawStore) -> String {
    let list = |items: Vec<String>| {
        let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::from("\n[store]\n");
    if let Some(path) = &raw.path {
        out.push_str(&format!("path = {:?}\n", path.display().to_string()));
    }
    if let Some(url) = &raw.redis_url {
        out.push_str(&format!("redis_url = {:?}\n", without_password(url)));
    }
    if let Some(sentinel) = &raw.redis_sentinel {
        let urls = sentinel.urls.iter().map(|u| without_password(u)).collect();
        let mut fields = vec![
            format!("master = {:?}", sentinel.master),
            format!("urls = {}", list(urls)),
        ];
        if let Some(db) = sentinel.db {
            fields.push(format!("db = {db}"));
        }
        if let Some(tls) = sentinel.tls {
            fields.push(format!("tls = {tls}"));
        }
        if let Some(user) = &sentinel.username {
            fields.push(format!("username = {user:?}"));
        }
        if let Some(var) = &sentinel.password_env {
            fields.push(format!("password_env = {var:?}"));
        }
        out.push_str(&format!("redis_sentinel = {{ {} }}\n", fields.join(", ")));
    }
    for (key, value) in [
        ("prefix", &raw.prefix),
        ("lease", &raw.lease),
        ("timeout", &raw.timeout),
    ] {
        if let Some(value) = value {
            out.push_str(&format!("{key} = {value:?}\n"));
        }
    }
    if let Some(envs) = &raw.encryption_key_env {
        out.push_str(&format!("encryption_key_env = {}\n", list(envs.to_vec())));
    }
    if let Some(files) = &raw.encryption_key_file {
        let files = files
            .to_vec()
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        out.push_str(&format!("encryption_key_file = {}\n", list(files)));
    }
    out
}
