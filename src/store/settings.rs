//! Where the store keeps its records (a file, or a Redis every replica shares) and the keys
//! that seal them: what `[store]` becomes once the config is read.

use std::{path::PathBuf, time::Duration};

use crate::secret::{RedisUrl, StoreKey};

/// Where the tokens are kept and how they are sealed (`[store]`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// A file or a Redis.
    pub backend: Backend,
    /// The keys (`store.encryption_key_env` or `store.encryption_key_file`): the first
    /// seals, any opens.
    pub keys: Vec<StoreKey>,
    /// The setting the keys came from, for errors: `store.encryption_key_env`.
    pub key_setting: &'static str,
}

/// Where the records live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One process's file (`store.path`).
    File { path: PathBuf },
    /// A Redis every replica shares (`store.redis_url` or `store.redis_sentinel`).
    Redis(RedisSettings),
}

/// A Redis store (`[store]` with `redis_url` or `redis_sentinel`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub target: RedisTarget,
    /// What every key starts with (`store.prefix`).
    pub prefix: String,
    /// How long one replica's claim to fly for a key lasts unless renewed (`store.lease`).
    pub lease: Duration,
    /// How long one command may take (`store.timeout`).
    pub timeout: Duration,
}

/// How the Redis primary is found.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// At one URL (`store.redis_url`).
    Url(RedisUrl),
    /// Through Sentinel (`store.redis_sentinel`): the primary of `master`, as the sentinels
    /// at `urls` name it, reached as `primary` says.
    Sentinel {
        master: String,
        urls: Vec<RedisUrl>,
        primary: SentinelPrimary,
    },
}

/// How the primary a sentinel names is reached (`store.redis_sentinel.*`).
#[derive(Debug, Clone, Default)]
pub struct SentinelPrimary {
    /// The database number.
    pub db: i64,
    /// Over TLS (the system's roots).
    pub tls: bool,
    /// An ACL user.
    pub username: Option<String>,
    /// Its password (`password_env`), never shown.
    pub password: Option<RedisUrl>,
}
