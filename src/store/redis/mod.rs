//! The shared backend: one Redis (standalone, or its primary found through Sentinel) that
//! every replica uses. Each operation that must be atomic is one Lua script on the primary:
//! the claim before a flight (newer token, hold, or the key's lease), the install that never
//! lets a generation go backwards, and the take that removes a refresh token at its
//! generation before it is sent. Every install publishes `rotated` on one channel; a lease
//! released publishes `released`. Messages are hints (pub/sub is at most once): after each
//! (re)subscription the broker re-reads every key it holds.
//!
//! Layout, under `store.prefix` (`P`): `P:token:ORG[:USER]` a hash (`gen`, `rec` the sealed
//! record, `rt` the sealed refresh token until taken, `epoch` the primary's replication id
//! with Sentinel), `P:lease:…` and `P:hold:…` plain keys with a time to live, and the
//! channel `P:rotations`.

mod lease;
mod messages;
mod primary;
mod scripts;

pub use lease::Lease;
pub use messages::Event;

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use redis::{
    AsyncCommands, Client, IntoConnectionInfo, RedisConnectionInfo, RedisError, Script, TlsMode,
    Value,
    aio::ConnectionManagerConfig,
    io::tcp::TcpSettings,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{RedisSettings, RedisTarget, StoreError, file::Key};
use crate::sync::LockUnpoisoned;
use messages::{message, subscribe};
use primary::{Primary, Target, unreachable};
use scripts::{
    BUDGET, BUDGET_HOLD, CLAIM, INSTALL, RELEASE, RENEW, REPLID, TAKE, bytes, millis, number, text,
};

/// How long a record lives after its last install: a key nobody asked for in this long
/// is fetched anew. (A shared record is never removed because one replica dropped it.)
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The messages waiting for the broker; past it they are dropped and a resync is asked.
const EVENTS_QUEUED: usize = 4096;

/// What the install script answered.
pub(super) enum Installed {
    Done,
    /// The generation the store holds (that one or newer) and its sealed record.
    Newer(u64, Option<Vec<u8>>),
}

/// What the claim script answered.
pub(super) enum Claimed {
    Fly(Lease),
    /// The generation in the store and its sealed record.
    Newer(u64, Option<Vec<u8>>),
    /// A hold's kind, message and time left.
    Held(String, String, Duration),
    /// Another replica's lease, and the time it has left.
    Flying(Duration),
}

/// The Redis store.
#[derive(Debug)]
pub(super) struct RedisStore {
    shared: Arc<Shared>,
    events: Mutex<Option<mpsc::Receiver<Event>>>,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// What the store's operations, its leases' renewers and its subscriber share.
#[derive(Debug)]
struct Shared {
    primary: Primary,
    prefix: String,
    lease: Duration,
    timeout: Duration,
    scripts: Scripts,
}

#[derive(Debug)]
struct Scripts {
    claim: Script,
    install: Script,
    take: Script,
    renew: Script,
    release: Script,
    budget: Script,
    budget_hold: Script,
}

impl RedisStore {
    /// Connects to the Redis `settings` names, starts the subscriber and reads every
    /// record. A Redis that does not answer does not stop the broker: it starts with no
    /// stored tokens and uses the store once it answers. A refused password does.
    pub async fn open(settings: &RedisSettings) -> Result<(Self, Vec<(Key, Vec<u8>)>), StoreError> {
        let invalid = |e: RedisError| StoreError::Redis(e.to_string());
        // Small messages, one at a time: no Nagle delay on any of them.
        let tcp = || TcpSettings::default().set_nodelay(true);
        let target = match &settings.target {
            RedisTarget::Url(url) => {
                let info = url
                    .expose()
                    .into_connection_info()
                    .map_err(invalid)?
                    .set_tcp_settings(tcp());
                Target::Url(Client::open(info).map_err(invalid)?)
            }
            RedisTarget::Sentinel {
                master,
                urls,
                primary,
            } => {
                let urls: Vec<&str> = urls.iter().map(|u| u.expose()).collect();
                let mut info = RedisConnectionInfo::default().set_db(primary.db);
                if let Some(user) = &primary.username {
                    info = info.set_username(user);
                }
                if let Some(password) = &primary.password {
                    info = info.set_password(password.expose());
                }
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_tcp_settings(tcp())
                    .set_redis_connection_info(info);
                if primary.tls {
                    node = node.set_tls_mode(TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    urls,
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(invalid)?;
                Target::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let shared = Arc::new(Shared {
            primary: Primary {
                target,
                current: RwLock::new(None),
                connecting: tokio::sync::Mutex::new(None),
                config,
            },
            prefix: settings.prefix.clone(),
            lease: settings.lease,
            timeout: settings.timeout,
            scripts: Scripts {
                claim: Script::new(CLAIM),
                install: Script::new(&format!("{REPLID}{INSTALL}")),
                take: Script::new(&format!("{REPLID}{TAKE}")),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                budget: Script::new(BUDGET),
                budget_hold: Script::new(BUDGET_HOLD),
            },
        });
        let records = match shared.load().await {
            Ok(records) => records,
            Err(e @ StoreError::Redis(_)) => return Err(e),
            Err(e) => {
                warn!(error = %e, "the Redis store does not answer; starting without stored tokens, and using it once it answers");
                Vec::new()
            }
        };
        let (events, receiver) = mpsc::channel(EVENTS_QUEUED);
        let subscriber = tokio::spawn(subscribe(Arc::clone(&shared), events));
        Ok((
            Self {
                shared,
                events: Mutex::new(Some(receiver)),
                subscriber,
            },
            records,
        ))
    }

    pub fn events(&self) -> Option<mpsc::Receiver<Event>> {
        self.events.lock_unpoisoned().take()
    }

    pub async fn claim(
        &self,
        org: &str,
        user: Option<&str>,
        known: u64,
    ) -> Result<Claimed, StoreError> {
        let s = &self.shared;
        let id = format!("{:032x}", rand::random::<u128>());
        let mut script = s.scripts.claim.prepare_invoke();
        script
            .key(s.key("token", org, user))
            .key(s.key("hold", org, user))
            .key(s.key("lease", org, user))
            .arg(known)
            .arg(&id)
            .arg(millis(s.lease));
        let answer: Vec<Value> = s.invoke(&script).await?;
        let kind = answer.first().and_then(text).unwrap_or_default();
        match kind.as_str() {
            "newer" => {
                let generation = answer.get(1).and_then(number).unwrap_or_default();
                Ok(Claimed::Newer(generation, answer.get(2).and_then(bytes)))
            }
            "held" => {
                let hold = answer.get(1).and_then(text).unwrap_or_default();
                let (code, message) = hold.split_once('\n').unwrap_or(("", &hold));
                let left = answer.get(2).and_then(number).unwrap_or_default();
                Ok(Claimed::Held(
                    code.to_owned(),
                    message.to_owned(),
                    Duration::from_millis(left),
                ))
            }
            "fly" => Ok(Claimed::Fly(Lease::held(&self.shared, org, user, id))),
            "flying" => {
                let left = answer.get(1).and_then(number).unwrap_or_default();
                Ok(Claimed::Flying(Duration::from_millis(left)))
            }
            other => Err(StoreError::Protocol(format!("claim answered {other:?}"))),
        }
    }

    /// Installs the record at `generation` unless the store holds that generation or a
    /// newer one: then returns what it holds.
    pub async fn install(
        &self,
        org: &str,
        user: Option<&str>,
        generation: u64,
        record: &[u8],
        refresh: Option<&[u8]>,
    ) -> Result<Installed, StoreError> {
        let s = &self.shared;
        let mut script = s.scripts.install.prepare_invoke();
        script
            .key(s.key("token", org, user))
            .arg(generation)
            .arg(record)
            .arg(refresh.unwrap_or_default())
            .arg(s.epoch_flag())
            .arg(s.channel())
            .arg(message("rotated", generation, org, user))
            .arg(millis(RECORD_TTL));
        let answer: Vec<Value> = s.invoke(&script).await?;
        match answer.first().and_then(text).as_deref() {
            Some("ok") => Ok(Installed::Done),
            Some("newer") => Ok(Installed::Newer(
                answer.get(1).and_then(number).unwrap_or_default(),
                answer.get(2).and_then(bytes),
            )),
            other => Err(StoreError::Protocol(format!("install answered {other:?}"))),
        }
    }

    /// Takes the key's sealed refresh token at `generation`, if it is sealed with one of
    /// `key_ids` (the keys this replica can open).
    pub async fn take(
        &self,
        org: &str,
        user: Option<&str>,
        generation: u64,
        key_ids: &[[u8; 4]],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let s = &self.shared;
        let mut script = s.scripts.take.prepare_invoke();
        script
            .key(s.key("token", org, user))
            .arg(generation)
            .arg(s.epoch_flag());
        for id in key_ids {
            script.arg(&id[..]);
        }
        let answer: Vec<Value> = s.invoke(&script).await?;
        match answer.first().and_then(text).as_deref() {
            Some("taken") => Ok(answer.get(1).and_then(bytes)),
            Some("none") => Ok(None),
            Some("foreign") => {
                warn!(org = %org, user = ?user, "the stored refresh token is sealed with a key this replica does not have; it is left for a replica that has it (give every replica the same store.encryption_key_env)");
                Ok(None)
            }
            other => Err(StoreError::Protocol(format!("take answered {other:?}"))),
        }
    }

    pub async fn read(
        &self,
        org: &str,
        user: Option<&str>,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let s = &self.shared;
        let key = s.key("token", org, user);
        let (generation, record): (Option<u64>, Option<Vec<u8>>) = s
            .run(|mut c| {
                let key = &key;
                async move { c.hmget(key, &["gen", "rec"]).await }
            })
            .await?;
        Ok(generation.zip(record))
    }

    pub async fn generations(&self, keys: &[(&str, Option<&str>)]) -> Result<Vec<u64>, StoreError> {
        let s = &self.shared;
        let mut pipe = redis::pipe();
        for (org, user) in keys {
            pipe.hget(s.key("token", org, *user), "gen");
        }
        let found: Vec<Option<u64>> = s
            .run(|mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        Ok(found.into_iter().map(Option::unwrap_or_default).collect())
    }

    pub async fn hold(
        &self,
        org: &str,
        user: Option<&str>,
        code: &str,
        message: &str,
        left: Duration,
    ) -> Result<(), StoreError> {
        let s = &self.shared;
        let key = s.key("hold", org, user);
        let value = format!("{code}\n{message}");
        let ms = millis(left).max(1);
        s.run(|mut c| {
            let (key, value) = (&key, &value);
            async move { c.pset_ex::<_, _, ()>(key, value, ms).await }
        })
        .await
    }
}

impl RedisStore {
    /// One place in the cluster's upstream budget for `host`: `Ok(())` to go now, or how
    /// long to wait (its GCRA of `interval` and `tolerance`, or its 429 hold).
    pub async fn budget_take(
        &self,
        host: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> Result<Result<(), Duration>, StoreError> {
        let s = &self.shared;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mut script = s.scripts.budget.prepare_invoke();
        script
            .key(format!("{}:budget:{host}", s.prefix))
            .key(format!("{}:budget-hold:{host}", s.prefix))
            .arg(micros(interval).max(1))
            .arg(micros(tolerance));
        let answer: Vec<Value> = s.invoke(&script).await?;
        match answer.first().and_then(text).as_deref() {
            Some("go") => Ok(Ok(())),
            Some("wait") => {
                let us = answer.get(1).and_then(number).unwrap_or_default();
                Ok(Err(Duration::from_micros(us.max(1))))
            }
            other => Err(StoreError::Protocol(format!("budget answered {other:?}"))),
        }
    }

    /// Holds every replica's requests to `host` for `hold` (a 429).
    pub async fn budget_hold(&self, host: &str, hold: Duration) -> Result<(), StoreError> {
        let s = &self.shared;
        let mut script = s.scripts.budget_hold.prepare_invoke();
        script
            .key(format!("{}:budget-hold:{host}", s.prefix))
            .arg(millis(hold).max(1));
        let _: i64 = s.invoke(&script).await?;
        Ok(())
    }
}

impl Shared {
    /// `P:KIND:ORG` or `P:KIND:ORG:USER` (org names hold no ':').
    fn key(&self, kind: &str, org: &str, user: Option<&str>) -> String {
        match user {
            None => format!("{}:{kind}:{org}", self.prefix),
            Some(user) => format!("{}:{kind}:{org}:{user}", self.prefix),
        }
    }

    fn channel(&self) -> String {
        format!("{}:rotations", self.prefix)
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let pattern = pattern.to_owned();
        // A whole scan may take longer than one command: it is many.
        let connection = self.primary.connection(self.timeout).await?;
        let mut connection = connection;
        let mut keys = Vec::new();
        let mut iter = connection
            .scan_match::<_, String>(&pattern)
            .await
            .map_err(|e| unreachable(&e))?;
        while let Some(key) = iter.next_item().await {
            keys.push(key.map_err(|e| unreachable(&e))?);
        }
        Ok(keys)
    }

    /// Every record under the prefix, as (org, user) and its sealed record.
    async fn load(&self) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        let start = format!("{}:token:", self.prefix);
        let keys = self.scan(&format!("{start}*")).await?;
        let mut records = Vec::with_capacity(keys.len());
        for batch in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.hget(key, "rec");
            }
            let found: Vec<Option<Vec<u8>>> = self
                .run(|mut c| {
                    let pipe = &pipe;
                    async move { pipe.query_async(&mut c).await }
                })
                .await?;
            for (key, record) in batch.iter().zip(found) {
                let Some(rest) = key.strip_prefix(&start) else {
                    continue;
                };
                let (org, user) = rest.split_once(':').unwrap_or((rest, ""));
                if let Some(record) = record {
                    records.push(((org.to_owned(), user.to_owned()), record));
                }
            }
        }
        info!(records = records.len(), "read the Redis store");
        Ok(records)
    }
}
