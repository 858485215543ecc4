//! The broker's memory outside the process: every key's current token and refresh token,
//! sealed, in one file that outlives restarts (`[store] path`, [`file`]) or in a Redis that
//! several replicas share (`[store] redis_url`, [`redis`]). It knows nothing of the
//! broker's slots or of tonic: it stores records and answers a handful of operations, each
//! durable (committed, or applied by the Redis primary) before it returns. Without
//! `[store]` the broker keeps tokens in memory only, as the demo does.
//!
//! The one operation that matters most is [`Store::take_refresh`]: a refresh token leaves
//! the store (a committed transaction, or one atomic script on the Redis primary) before
//! the broker sends it, so neither a crash nor a second replica ever leads to a second
//! presentation. Everything else a shared store adds (leases, holds, rotation messages) is
//! for efficiency: one upstream request chain per key across replicas, and every rotation
//! pushed to every replica.
//!
//! (Over 400 lines: each operation of the store is here once, for both backends, with the
//! sealing and unsealing of what it moves.)

mod file;
mod record;
mod redis;
mod seal;
mod settings;
mod shared;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tracing::warn;

use crate::secret::{AccessToken, RefreshToken};
use record::Record;
use seal::{Binding, OpenError, Sealer};

pub use redis::{Event, Lease};
pub use settings::{Backend, RedisSettings, RedisTarget, SentinelPrimary, StoreSettings};
pub use shared::{Claim, Hold, HoldKind, Installed, Stored};

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the file.
    #[error(
        "the token store {path} is held by another tokenbroker process; stop it, or give this one its own file with store.path"
    )]
    Locked { path: String },
    /// The file or its folder could not be opened or created.
    #[error("cannot open the token store {path} (store.path): {detail}")]
    Open { path: String, detail: String },
    /// The store holds records, and none opens with the configured keys.
    #[error(
        "none of the {records} records in the token store opens with the configured key; set {setting} to the key it was written with (a list, new key first, rotates keys)"
    )]
    WrongKey {
        records: usize,
        setting: &'static str,
    },
    /// A write did not commit.
    #[error("the token store could not commit: {0}")]
    Write(String),
    /// More operations wait for the writer than it holds (the disk is far behind).
    #[error("the token store is behind: too many writes waiting")]
    Busy,
    /// The writer thread is gone.
    #[error("the token store has stopped")]
    Stopped,
    /// The Redis cannot be used as configured: a URL it cannot parse, or a refused user or
    /// password. A setting to change, not a moment to wait out.
    #[error("the Redis token store cannot be used: {0}")]
    Redis(String),
    /// The Redis could not be reached or did not answer in time (`store.timeout`).
    #[error("the Redis token store is unreachable: {0}")]
    Unreachable(String),
    /// The Redis answered something the broker did not ask for or cannot read.
    #[error("the Redis token store answered unexpectedly: {0}")]
    Protocol(String),
}

/// Counts the store's operations (the metrics at the top of the crate implement it).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One `operation` (`put`, `take`, `claim`) ended in `outcome` (`ok`, `error`) after
    /// `elapsed`.
    fn operation(&self, operation: &'static str, outcome: &'static str, elapsed: Duration);
}

/// An observer that reports nowhere (tests, tools).
#[derive(Debug)]
pub struct Unobserved;

impl Observer for Unobserved {
    fn operation(&self, _: &'static str, _: &'static str, _: Duration) {}
}

/// A key's token as the store keeps it.
#[derive(Debug)]
pub struct StoredToken {
    pub generation: u64,
    pub access_token: AccessToken,
    pub token_type: String,
    /// When the broker asked the platform for it.
    pub issued: SystemTime,
    pub lifetime: Duration,
    /// Why it was minted (`issued`, `renewed`, `forced`, `reissued`).
    pub reason: String,
    /// The scope the server granted, if it said.
    pub scope: Option<String>,
}

/// A key's new token, as the broker writes it.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    pub generation: u64,
    pub access_token: &'a AccessToken,
    pub token_type: &'a str,
    /// When the broker asked the platform for it.
    pub issued: SystemTime,
    pub lifetime: Duration,
    pub reason: &'static str,
    /// The scope the server granted, if it said.
    pub scope: Option<&'a str>,
    /// The refresh token that came with it, if any.
    pub refresh_token: Option<&'a RefreshToken>,
}

/// A record read at start.
#[derive(Debug)]
pub struct Loaded {
    pub org: String,
    pub user: Option<String>,
    pub token: StoredToken,
}

/// The token store.
#[derive(Debug)]
pub struct Store {
    backend: Records,
    sealer: Sealer,
    observer: Arc<dyn Observer>,
}

/// Where the records are.
#[derive(Debug)]
enum Records {
    File(file::FileStore),
    Redis(redis::RedisStore),
}

fn key(org: &str, user: Option<&str>) -> file::Key {
    (org.to_owned(), user.unwrap_or_default().to_owned())
}

impl Store {
    /// Opens the store `settings` names and reads every record in it. Records that do not
    /// open or parse are logged by key and removed (their keys are issued anew); if there
    /// are records and none opens, the keys are wrong and the store is not opened.
    pub async fn open(
        settings: &StoreSettings,
        observer: Arc<dyn Observer>,
    ) -> Result<(Self, Vec<Loaded>), StoreError> {
        let (backend, records) = match &settings.backend {
            Backend::File { path } => {
                let (file, records) = file::FileStore::open(path)?;
                (Records::File(file), records)
            }
            Backend::Redis(redis) => {
                let (redis, records) = redis::RedisStore::open(redis).await?;
                (Records::Redis(redis), records)
            }
        };
        let store = Self {
            backend,
            sealer: Sealer::new(&settings.keys),
            observer,
        };
        let total = records.len();
        let mut loaded = Vec::with_capacity(total);
        let mut unreadable = Vec::new();
        let mut unknown_key = 0;
        for ((org, user), bytes) in records {
            let user = (!user.is_empty()).then_some(user);
            match store.decode(&org, user.as_deref(), &bytes) {
                Ok(token) => loaded.push(Loaded { org, user, token }),
                Err(e) => {
                    if matches!(e, Unreadable::Sealed(OpenError::UnknownKey)) {
                        unknown_key += 1;
                    }
                    unreadable.push((org, user, e));
                }
            }
        }
        // Every record sealed with a key not given: the keys are wrong, and the file is
        // left as it is.
        if total > 0 && loaded.is_empty() && unknown_key > 0 {
            return Err(StoreError::WrongKey {
                records: total,
                setting: settings.key_setting,
            });
        }
        for (org, user, problem) in unreadable {
            warn!(org = %org, user = ?user, %problem, "a stored token cannot be read; it will be issued anew");
            // In a shared store, its generation stays: the next token is one more.
            if let Records::File(file) = &store.backend {
                file.remove(key(&org, user.as_deref()));
            }
        }
        Ok((store, loaded))
    }

    /// Whether several replicas share this store (Redis): only then do claims, holds and
    /// rotation messages mean anything.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Records::Redis(_))
    }

    /// The rotations other replicas make (and the moments to re-read every key), once:
    /// `None` for a file, or if taken already.
    pub fn events(&self) -> Option<tokio::sync::mpsc::Receiver<Event>> {
        match &self.backend {
            Records::File(_) => None,
            Records::Redis(redis) => redis.events(),
        }
    }

    /// Before a replica asks the platform for a key it knows at generation `known`: fly
    /// (holding the key's lease), take the newer token another replica made, honour a
    /// hold, or wait for another replica's flight.
    pub async fn claim(
        &self,
        org: &str,
        user: Option<&str>,
        known: u64,
    ) -> Result<Claim, StoreError> {
        let Records::Redis(redis) = &self.backend else {
            return Ok(Claim::Fly(None));
        };
        let started = Instant::now();
        let outcome = redis.claim(org, user, known).await;
        self.observe("claim", outcome.is_ok(), started);
        Ok(match outcome? {
            redis::Claimed::Fly(lease) => Claim::Fly(Some(lease)),
            redis::Claimed::Newer(generation, record) => {
                Claim::Newer(self.stored(org, user, generation, record.as_deref()))
            }
            redis::Claimed::Held(code, message, left) => Claim::Held(Hold {
                left,
                kind: HoldKind::from_code(&code),
                message,
            }),
            redis::Claimed::Flying(within) => Claim::Flying { within },
        })
    }

    /// The key's record as the store holds it now (`None`: no record).
    pub async fn read(&self, org: &str, user: Option<&str>) -> Result<Option<Stored>, StoreError> {
        let Records::Redis(redis) = &self.backend else {
            return Ok(None);
        };
        let found = redis.read(org, user).await?;
        Ok(found.map(|(generation, record)| self.stored(org, user, generation, Some(&record))))
    }

    /// The generation the store holds for each key (0: none), in order.
    pub async fn generations(&self, keys: &[(&str, Option<&str>)]) -> Result<Vec<u64>, StoreError> {
        match &self.backend {
            Records::File(_) => Ok(vec![0; keys.len()]),
            Records::Redis(redis) => redis.generations(keys).await,
        }
    }

    /// One place in the cluster's upstream budget for `host` (a shared store only; a file
    /// store answers at once, the process's own bucket deciding): `Ok(())` to go now, or
    /// how long to wait.
    pub async fn budget_take(
        &self,
        host: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Result<(), Duration>, StoreError> {
        match &self.backend {
            Records::File(_) => Ok(Ok(())),
            Records::Redis(redis) => redis.budget_take(host, interval, tolerance).await,
        }
    }

    /// Holds every replica's requests to `host` for `hold` (a 429 one of them saw).
    pub async fn budget_hold(&self, host: &str, hold: Duration) -> Result<(), StoreError> {
        match &self.backend {
            Records::File(_) => Ok(()),
            Records::Redis(redis) => redis.budget_hold(host, hold).await,
        }
    }

    /// Holds every replica off the key (the org's token when `user` is `None`) for
    /// `hold.left`. Nothing to do for a file: the one process holds the key itself.
    pub async fn hold(&self, org: &str, user: Option<&str>, hold: &Hold) -> Result<(), StoreError> {
        let Records::Redis(redis) = &self.backend else {
            return Ok(());
        };
        redis
            .hold(org, user, hold.kind.code(), &hold.message, hold.left)
            .await
    }

    fn stored(
        &self,
        org: &str,
        user: Option<&str>,
        generation: u64,
        record: Option<&[u8]>,
    ) -> Stored {
        let token = record.and_then(|bytes| match self.decode(org, user, bytes) {
            Ok(token) if token.generation == generation => Some(token),
            Ok(_) => None,
            Err(problem) => {
                warn!(org = %org, user = ?user, %problem, "a stored token cannot be read; it will be issued anew");
                None
            }
        });
        Stored { generation, token }
    }

    fn decode(
        &self,
        org: &str,
        user: Option<&str>,
        bytes: &[u8],
    ) -> Result<StoredToken, Unreadable> {
        let record = Record::decode(bytes).map_err(|_| Unreadable::Format)?;
        let binding = Binding {
            org,
            user,
            field: "access_token",
            generation: record.generation,
        };
        let access = self
            .sealer
            .open(binding, &record.access_token)
            .map_err(Unreadable::Sealed)?;
        let access = String::from_utf8(access.to_vec()).map_err(|_| Unreadable::Format)?;
        Ok(StoredToken {
            generation: record.generation,
            access_token: AccessToken::new(access),
            token_type: record.token_type,
            issued: UNIX_EPOCH
                + Duration::new(
                    u64::try_from(record.issued_seconds).unwrap_or_default(),
                    record.issued_nanos.min(999_999_999),
                ),
            lifetime: Duration::from_millis(record.lifetime_ms),
            reason: record.reason,
            scope: record.scope,
        })
    }

    /// Writes `token` (with its refresh token, if any) as the key's record, if the record
    /// is still at generation `token.generation - 1` or older (or gone): generations never
    /// go backwards, and of two replicas that rotated the same key the first to install
    /// wins. Returns once it is committed.
    pub async fn install(
        &self,
        org: &str,
        user: Option<&str>,
        token: NewToken<'_>,
    ) -> Result<Installed, StoreError> {
        let bind = |field| Binding {
            org,
            user,
            field,
            generation: token.generation,
        };
        let issued = token.issued.duration_since(UNIX_EPOCH).unwrap_or_default();
        let record = Record {
            generation: token.generation,
            access_token: self
                .sealer
                .seal(bind("access_token"), token.access_token.expose().as_bytes()),
            token_type: token.token_type.to_owned(),
            issued_seconds: i64::try_from(issued.as_secs()).unwrap_or(i64::MAX),
            issued_nanos: issued.subsec_nanos(),
            lifetime_ms: u64::try_from(token.lifetime.as_millis()).unwrap_or(u64::MAX),
            refresh_token: None,
            reason: token.reason.to_owned(),
            scope: token.scope.map(str::to_owned),
        };
        let refresh = token.refresh_token.map(|r| {
            self.sealer
                .seal(bind("refresh_token"), r.expose().as_bytes())
        });
        let started = Instant::now();
        let outcome = match &self.backend {
            Records::File(file) => {
                let record = Record {
                    refresh_token: refresh,
                    ..record
                };
                let written = file.put(key(org, user), record.encode_to_vec()).await;
                written.map(|()| Installed::Done)
            }
            Records::Redis(redis) => redis
                .install(
                    org,
                    user,
                    token.generation,
                    &record.encode_to_vec(),
                    refresh.as_deref(),
                )
                .await
                .map(|installed| match installed {
                    redis::Installed::Done => Installed::Done,
                    redis::Installed::Newer(generation, record) => {
                        Installed::Newer(self.stored(org, user, generation, record.as_deref()))
                    }
                }),
        };
        self.observe("put", outcome.is_ok(), started);
        outcome
    }

    /// Takes the key's refresh token out of the store, if its record is at `generation`:
    /// returns it once its removal is committed. `None`: there is none to present (taken
    /// already, never stored, or unreadable), so the key goes to its primary grant.
    pub async fn take_refresh(
        &self,
        org: &str,
        user: Option<&str>,
        generation: u64,
    ) -> Result<Option<RefreshToken>, StoreError> {
        let started = Instant::now();
        let outcome = match &self.backend {
            Records::File(file) => file.take(key(org, user), generation).await,
            Records::Redis(redis) => {
                let ids = self.sealer.key_ids();
                redis.take(org, user, generation, &ids).await
            }
        };
        self.observe("take", outcome.is_ok(), started);
        let Some(sealed) = outcome? else {
            return Ok(None);
        };
        let binding = Binding {
            org,
            user,
            field: "refresh_token",
            generation,
        };
        match self.sealer.open(binding, &sealed) {
            Ok(plain) => Ok(String::from_utf8(plain.to_vec())
                .ok()
                .map(RefreshToken::new)),
            Err(e) => {
                warn!(org = %org, user = ?user, problem = %e, "a stored refresh token cannot be read; using the primary grant");
                Ok(None)
            }
        }
    }

    /// Removes the key's record (its user was dropped from this process's cache). A
    /// shared store keeps it, as other replicas may hold the user: its records expire on
    /// their own.
    pub fn remove(&self, org: &str, user: Option<&str>) {
        if let Records::File(file) = &self.backend {
            file.remove(key(org, user));
        }
    }

    /// Removes every record of `org` (it left this process's configuration). A shared
    /// store keeps them: other replicas may not have reloaded (or may run a newer
    /// configuration that has the org); its records expire on their own.
    pub fn remove_org(&self, org: &str) {
        if let Records::File(file) = &self.backend {
            file.remove_org(org.to_owned());
        }
    }

    /// A store whose every write fails (its writer is gone), for the tests of what the
    /// broker does then.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        Self {
            backend: Records::File(file::FileStore::stopped()),
            sealer: Sealer::new(&[crate::secret::StoreKey::generate()]),
            observer: Arc::new(Unobserved),
        }
    }

    fn observe(&self, operation: &'static str, ok: bool, started: Instant) {
        let outcome = if ok { "ok" } else { "error" };
        self.observer
            .operation(operation, outcome, started.elapsed());
    }
}

/// Why a record was not loaded.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error("not a token record")]
    Format,
    #[error("its access token is {0}")]
    Sealed(OpenError),
}

#[cfg(test)]
mod tests;
