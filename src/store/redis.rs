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

use std::{
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use futures::StreamExt;
use redis::{
    AsyncCommands, Client, IntoConnectionInfo, RedisError, Script, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
    io::tcp::TcpSettings,
    sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType},
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{RedisSettings, RedisTarget, StoreError, file::Key};
use crate::sync::{LockUnpoisoned, RwLockUnpoisoned};

/// How long a record lives after its last install: a key nobody asked for in this long
/// is fetched anew. (A shared record is never removed because one replica dropped it.)
const RECORD_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The messages waiting for the broker; past it they are dropped and a resync is asked.
const EVENTS_QUEUED: usize = 4096;

/// The primary's replication id, as the scripts compare it (Sentinel only).
const REPLID: &str = "local function replid()
  return string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or ''
end
";

/// KEYS: record, hold, lease. ARGV: the generation known, lease id, lease ms.
const CLAIM: &str = "local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen > tonumber(ARGV[1]) then
  return {'newer', gen, redis.call('HGET', KEYS[1], 'rec')}
end
local hold = redis.call('GET', KEYS[2])
if hold then return {'held', hold, redis.call('PTTL', KEYS[2])} end
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'fly'} end
return {'flying', redis.call('PTTL', KEYS[3])}
";

/// KEYS: record. ARGV: generation, record, refresh token ('' none), '1' to stamp the
/// epoch, channel, message, ttl ms. Writes only over an older generation (or none).
const INSTALL: &str = "local cur = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if cur >= tonumber(ARGV[1]) then
  return {cur, redis.call('HGET', KEYS[1], 'rec')}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'rec', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'rt', ARGV[3]) end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'epoch', replid()) end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return {0}
";

/// KEYS: record. ARGV: generation, '1' to check the epoch. The refresh token leaves the
/// record here, or nowhere; one written under another primary is removed, not returned.
const TAKE: &str =
    "if tonumber(redis.call('HGET', KEYS[1], 'gen') or '-1') ~= tonumber(ARGV[1]) then
  return false
end
local rt = redis.call('HGET', KEYS[1], 'rt')
if not rt then return false end
redis.call('HDEL', KEYS[1], 'rt')
if ARGV[2] == '1' and redis.call('HGET', KEYS[1], 'epoch') ~= replid() then return false end
return rt
";

/// KEYS: lease. ARGV: lease id, lease ms.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// KEYS: lease. ARGV: lease id, channel, message.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// What another replica did, or a moment to compare every key held with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new token was installed for the key, at `generation`.
    Rotated {
        org: String,
        user: Option<String>,
        generation: u64,
    },
    /// A replica's flight for the key ended (its outcome, if any, is in the store).
    Released { org: String, user: Option<String> },
    /// Messages may have been missed (a new subscription): re-read every key held.
    Resync,
}

/// One replica's right to fly for a key, renewed every third of its period while held and
/// released (waking the replicas that wait) when dropped.
#[derive(Debug)]
pub struct Lease {
    _release: oneshot::Sender<()>,
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
}

/// The way to the primary: one URL, or whichever the sentinels name.
struct Primary {
    target: Target,
    /// The connection in use; `None` until the first command, or after a Sentinel primary
    /// stopped answering as one (found again on the next command).
    current: RwLock<Option<ConnectionManager>>,
    config: ConnectionManagerConfig,
}

enum Target {
    Url(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.target {
            Target::Url(_) => "url",
            Target::Sentinel(_) => "sentinel",
        };
        f.debug_struct("Primary").field("target", &kind).finish()
    }
}

fn unreachable(e: &RedisError) -> StoreError {
    StoreError::Unreachable(e.to_string())
}

fn timed_out(timeout: Duration) -> StoreError {
    StoreError::Unreachable(format!("no answer within {}ms", timeout.as_millis()))
}

impl Primary {
    fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel(_))
    }

    /// A connection to the primary, made (or, with Sentinel, found) if there is none.
    async fn connection(&self, timeout: Duration) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.current.read_unpoisoned().clone() {
            return Ok(connection);
        }
        let client = self.client(timeout).await?;
        let connection = tokio::time::timeout(
            timeout,
            client.get_connection_manager_with_config(self.config.clone()),
        )
        .await
        .map_err(|_| timed_out(timeout))?
        .map_err(|e| open_error(&e))?;
        *self.current.write_unpoisoned() = Some(connection.clone());
        Ok(connection)
    }

    /// A client for the primary (with Sentinel, the one the sentinels name now).
    async fn client(&self, timeout: Duration) -> Result<Client, StoreError> {
        match &self.target {
            Target::Url(client) => Ok(client.clone()),
            Target::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                tokio::time::timeout(timeout, sentinel.async_get_client())
                    .await
                    .map_err(|_| timed_out(timeout))?
                    .map_err(|e| unreachable(&e))
            }
        }
    }

    /// After a failed command: with Sentinel, a server that stopped answering, or that
    /// answers as a replica now, is looked up again on the next command. (A standalone
    /// connection reconnects by itself.)
    fn failed(&self, e: &RedisError) {
        let moved = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.code() == Some("READONLY");
        if self.is_sentinel() && moved {
            *self.current.write_unpoisoned() = None;
        }
    }
}

/// A connection problem at start: a refused password is a setting to change.
fn open_error(e: &RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        StoreError::Open {
            path: "the Redis store".into(),
            detail: format!("{e}; check the user and password in store.redis_url"),
        }
    } else {
        unreachable(e)
    }
}

impl RedisStore {
    /// Connects to the Redis `settings` names, starts the subscriber and reads every
    /// record. A Redis that does not answer does not stop the broker: it starts with no
    /// stored tokens and uses the store once it answers. A refused password does.
    pub async fn open(settings: &RedisSettings) -> Result<(Self, Vec<(Key, Vec<u8>)>), StoreError> {
        let invalid = |e: RedisError| StoreError::Open {
            path: "the Redis store".into(),
            detail: e.to_string(),
        };
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
            RedisTarget::Sentinel { master, urls } => {
                let urls: Vec<&str> = urls.iter().map(|u| u.expose()).collect();
                let node = SentinelNodeConnectionInfo::default().set_tcp_settings(tcp());
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
            },
        });
        let records = match shared.load().await {
            Ok(records) => records,
            Err(e @ StoreError::Open { .. }) => return Err(e),
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
        let answer: Vec<Value> = s
            .run(|mut c| async move { script.invoke_async(&mut c).await })
            .await?;
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
            "fly" => Ok(Claimed::Fly(self.lease(org, user, id))),
            "flying" => {
                let left = answer.get(1).and_then(number).unwrap_or_default();
                Ok(Claimed::Flying(Duration::from_millis(left)))
            }
            other => Err(StoreError::Protocol(format!("claim answered {other:?}"))),
        }
    }

    /// The lease `id` now held on the key: renewed until dropped, then released.
    fn lease(&self, org: &str, user: Option<&str>, id: String) -> Lease {
        let (release, released) = oneshot::channel();
        let shared = Arc::clone(&self.shared);
        let key = shared.key("lease", org, user);
        let message = message("released", 0, org, user);
        tokio::spawn(async move {
            let mut released = released;
            let every = shared.lease / 3;
            loop {
                tokio::select! {
                    _ = &mut released => break,
                    () = tokio::time::sleep(every) => {
                        let mut script = shared.scripts.renew.prepare_invoke();
                        script.key(&key).arg(&id).arg(millis(shared.lease));
                        let renewed: Result<i64, _> =
                            shared.run(|mut c| async move { script.invoke_async(&mut c).await }).await;
                        if let Err(e) = renewed {
                            debug!(error = %e, "could not renew a lease");
                        }
                    }
                }
            }
            let mut script = shared.scripts.release.prepare_invoke();
            script.key(&key).arg(&id).arg(shared.channel()).arg(message);
            let released: Result<i64, _> = shared
                .run(|mut c| async move { script.invoke_async(&mut c).await })
                .await;
            if let Err(e) = released {
                debug!(error = %e, "could not release a lease; it lapses by itself");
            }
        });
        Lease { _release: release }
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
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let s = &self.shared;
        let mut script = s.scripts.install.prepare_invoke();
        script
            .key(s.key("token", org, user))
            .arg(generation)
            .arg(record)
            .arg(refresh.unwrap_or_default())
            .arg(if s.primary.is_sentinel() { "1" } else { "0" })
            .arg(s.channel())
            .arg(message("rotated", generation, org, user))
            .arg(millis(RECORD_TTL));
        let answer: Vec<Value> = s
            .run(|mut c| async move { script.invoke_async(&mut c).await })
            .await?;
        match answer.first().and_then(number) {
            Some(0) => Ok(None),
            Some(generation) => Ok(Some((
                generation,
                answer.get(1).and_then(bytes).unwrap_or_default(),
            ))),
            None => Err(StoreError::Protocol("install answered nothing".into())),
        }
    }

    pub async fn take(
        &self,
        org: &str,
        user: Option<&str>,
        generation: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let s = &self.shared;
        let mut script = s.scripts.take.prepare_invoke();
        script
            .key(s.key("token", org, user))
            .arg(generation)
            .arg(if s.primary.is_sentinel() { "1" } else { "0" });
        let answer: Value = s
            .run(|mut c| async move { script.invoke_async(&mut c).await })
            .await?;
        Ok(bytes(&answer))
    }

    pub async fn read(
        &self,
        org: &str,
        user: Option<&str>,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let s = &self.shared;
        let key = s.key("token", org, user);
        let (generation, record): (Option<u64>, Option<Vec<u8>>) = s
            .run(|mut c| async move { c.hmget(&key, &["gen", "rec"]).await })
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
            .run(|mut c| async move { pipe.query_async(&mut c).await })
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
        s.run(|mut c| async move { c.pset_ex::<_, _, ()>(&key, value, ms).await })
            .await
    }

    /// Removes every record of `org`, in the background.
    pub fn remove_org(&self, org: &str) {
        let shared = Arc::clone(&self.shared);
        let org = org.to_owned();
        tokio::spawn(async move {
            let pattern = format!("{}:token:{org}:*", shared.prefix);
            let mut keys = match shared.scan(&pattern).await {
                Ok(keys) => keys,
                Err(e) => {
                    warn!(org = %org, error = %e, "could not remove the org's tokens from the Redis store");
                    return;
                }
            };
            keys.push(shared.key("token", &org, None));
            for batch in keys.chunks(1000) {
                let batch = batch.to_vec();
                let removed: Result<(), _> =
                    shared.run(|mut c| async move { c.del(batch).await }).await;
                if let Err(e) = removed {
                    warn!(org = %org, error = %e, "could not remove the org's tokens from the Redis store");
                    return;
                }
            }
        });
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

    /// Runs one command (or script, or pipeline) on the primary, within the timeout.
    async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let connection = self.primary.connection(self.timeout).await?;
        match tokio::time::timeout(self.timeout, command(connection)).await {
            Err(_) => {
                // A primary that stopped answering: with Sentinel, look it up again.
                if self.primary.is_sentinel() {
                    *self.primary.current.write_unpoisoned() = None;
                }
                Err(timed_out(self.timeout))
            }
            Ok(Err(e)) => {
                self.primary.failed(&e);
                Err(
                    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                        unreachable(&e)
                    } else {
                        StoreError::Protocol(e.to_string())
                    },
                )
            }
            Ok(Ok(value)) => Ok(value),
        }
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
                .run(|mut c| async move { pipe.query_async(&mut c).await })
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

/// The subscriber's task: subscribes, asks for a resync (messages may have been missed
/// before), forwards every message; when the connection ends, subscribes again after a
/// backoff. Ends when the broker stops listening.
async fn subscribe(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen(&shared, &events).await {
            Ok(()) => return,
            Err(e) => {
                debug!(error = %e, "the subscription to the Redis store ended; subscribing again");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if events.is_closed() {
            return;
        }
    }
}

/// One subscription, until its connection ends (`Err`) or the broker stops (`Ok`).
async fn listen(shared: &Shared, events: &mpsc::Sender<Event>) -> Result<(), StoreError> {
    let client = shared.primary.client(shared.timeout).await?;
    let mut pubsub = tokio::time::timeout(shared.timeout, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out(shared.timeout))?
        .map_err(|e| unreachable(&e))?;
    tokio::time::timeout(shared.timeout, pubsub.subscribe(shared.channel()))
        .await
        .map_err(|_| timed_out(shared.timeout))?
        .map_err(|e| unreachable(&e))?;
    if events.send(Event::Resync).await.is_err() {
        return Ok(());
    }
    let mut messages = pubsub.into_on_message();
    let mut lost = false;
    while let Some(message) = messages.next().await {
        let Some(event) = parse(message.get_payload_bytes()) else {
            continue;
        };
        if lost && events.try_send(Event::Resync).is_ok() {
            lost = false;
        }
        match events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => lost = true,
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
        }
    }
    Err(StoreError::Unreachable(
        "the subscription's connection ended".into(),
    ))
}

/// `KIND\nGENERATION\nORG[\nUSER]` (ids hold no control characters).
fn message(kind: &str, generation: u64, org: &str, user: Option<&str>) -> String {
    match user {
        None => format!("{kind}\n{generation}\n{org}"),
        Some(user) => format!("{kind}\n{generation}\n{org}\n{user}"),
    }
}

fn parse(payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, '\n');
    let (kind, generation, org) = (parts.next()?, parts.next()?, parts.next()?);
    let (org, user) = (org.to_owned(), parts.next().map(str::to_owned));
    match kind {
        "rotated" => Some(Event::Rotated {
            org,
            user,
            generation: generation.parse().ok()?,
        }),
        "released" => Some(Event::Released { org, user }),
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other).and_then(|t| t.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_they_were_written() {
        let rotated = message("rotated", 7, "acme", Some("EMP 1:x"));
        assert_eq!(
            parse(rotated.as_bytes()),
            Some(Event::Rotated {
                org: "acme".into(),
                user: Some("EMP 1:x".into()),
                generation: 7
            })
        );
        let released = message("released", 0, "acme", None);
        assert_eq!(
            parse(released.as_bytes()),
            Some(Event::Released {
                org: "acme".into(),
                user: None
            })
        );
        assert_eq!(parse(b"nonsense"), None);
    }
}
