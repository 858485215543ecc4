//! The broker's memory outside the process: every key's current token and refresh token,
//! sealed, in one file that outlives restarts (`[store] path`). It knows nothing of the
//! broker's slots or of tonic: it stores records and answers a handful of operations, each
//! durable (committed) before it returns. Without `[store]` the broker keeps tokens in
//! memory only, as the demo does.
//!
//! The one operation that matters most is [`Store::take_refresh`]: a refresh token leaves
//! the file in a committed transaction before the broker sends it, so a crash at any moment
//! never leads to a second presentation after the restart.

mod file;
mod record;
mod seal;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prost::Message;
use tracing::warn;

use crate::secret::{AccessToken, RefreshToken, StoreKey};
use record::Record;
use seal::{Binding, OpenError, Sealer};

/// Where the tokens are kept and how they are sealed (`[store]`).
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The store file (`store.path`).
    pub path: PathBuf,
    /// The keys (`store.encryption_key_env` or `store.encryption_key_file`): the first
    /// seals, any opens.
    pub keys: Vec<StoreKey>,
    /// The setting the keys came from, for errors: `store.encryption_key_env`.
    pub key_setting: &'static str,
}

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
}

/// Counts the store's operations (the metrics at the top of the crate implement it).
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// One `operation` (`put`, `take`) ended in `outcome` (`ok`, `error`) after `elapsed`.
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
    file: file::FileStore,
    sealer: Sealer,
    observer: Arc<dyn Observer>,
}

fn key(org: &str, user: Option<&str>) -> file::Key {
    (org.to_owned(), user.unwrap_or_default().to_owned())
}

impl Store {
    /// Opens the store `settings` names and reads every record in it. Records that do not
    /// open or parse are logged by key and removed (their keys are issued anew); if there
    /// are records and none opens, the keys are wrong and the store is not opened.
    pub fn open(
        settings: &StoreSettings,
        observer: Arc<dyn Observer>,
    ) -> Result<(Self, Vec<Loaded>), StoreError> {
        let (file, records) = file::FileStore::open(&settings.path)?;
        let store = Self {
            file,
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
            store.file.remove(key(&org, user.as_deref()));
        }
        Ok((store, loaded))
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
        })
    }

    /// Writes `token` (with its refresh token, if any) as the key's record, replacing what
    /// was there; returns once it is committed.
    pub async fn put(
        &self,
        org: &str,
        user: Option<&str>,
        token: NewToken<'_>,
    ) -> Result<(), StoreError> {
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
            refresh_token: token.refresh_token.map(|r| {
                self.sealer
                    .seal(bind("refresh_token"), r.expose().as_bytes())
            }),
            reason: token.reason.to_owned(),
        };
        let started = Instant::now();
        let outcome = self.file.put(key(org, user), record.encode_to_vec()).await;
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
        let outcome = self.file.take(key(org, user), generation).await;
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

    /// Removes the key's record (its user was dropped from the cache).
    pub fn remove(&self, org: &str, user: Option<&str>) {
        self.file.remove(key(org, user));
    }

    /// Removes every record of `org` (it left the configuration).
    pub fn remove_org(&self, org: &str) {
        self.file.remove_org(org.to_owned());
    }

    /// A store whose every write fails (its writer is gone), for the tests of what the
    /// broker does then.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        Self {
            file: file::FileStore::stopped(),
            sealer: Sealer::new(&[StoreKey::generate()]),
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
