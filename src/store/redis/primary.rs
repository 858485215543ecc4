//! The way to the Redis primary: one URL, or the one the sentinels name now (looked up
//! again after it stops answering as one); every command run on it within the timeout,
//! once more on a new connection when the first was found broken; the errors it can end in.

use std::{
    sync::RwLock,
    time::{Duration, Instant},
};

use redis::{
    Client, RedisError,
    aio::{ConnectionManager, ConnectionManagerConfig},
    sentinel::SentinelClient,
};

use super::{super::StoreError, Shared};
use crate::sync::RwLockUnpoisoned;

/// The way to the primary: one URL, or whichever the sentinels name.
pub(super) struct Primary {
    pub(super) target: Target,
    /// The connection in use; `None` until the first command, or after a Sentinel primary
    /// stopped answering as one (found again on the next command).
    pub(super) current: RwLock<Option<ConnectionManager>>,
    pub(super) config: ConnectionManagerConfig,
    /// Held while a connection is made; when the last attempt failed.
    pub(super) connecting: tokio::sync::Mutex<Option<Instant>>,
}

/// After a failed attempt to connect, how long commands fail at once before the next.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

pub(super) enum Target {
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

pub(super) fn unreachable(e: &RedisError) -> StoreError {
    StoreError::Unreachable(e.to_string())
}

pub(super) fn timed_out(timeout: Duration) -> StoreError {
    StoreError::Unreachable(format!("no answer within {}ms", timeout.as_millis()))
}

impl Primary {
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel(_))
    }

    /// A connection to the primary, made (or, with Sentinel, found) if there is none: by
    /// one caller at a time, the others taking its connection; for a moment after a
    /// failed attempt, callers fail at once rather than queue up to try again.
    pub(super) async fn connection(
        &self,
        timeout: Duration,
    ) -> Result<ConnectionManager, StoreError> {
        if let Some(connection) = self.current.read_unpoisoned().clone() {
            return Ok(connection);
        }
        let mut last_failure = tokio::time::timeout(timeout, self.connecting.lock())
            .await
            .map_err(|_| timed_out(timeout))?;
        if let Some(connection) = self.current.read_unpoisoned().clone() {
            return Ok(connection);
        }
        if let Some(at) = *last_failure
            && at.elapsed() < RECONNECT_PAUSE
        {
            return Err(StoreError::Unreachable(
                "not answering; trying again shortly".into(),
            ));
        }
        let made = async {
            let client = self.client(timeout).await?;
            tokio::time::timeout(
                timeout,
                client.get_connection_manager_with_config(self.config.clone()),
            )
            .await
            .map_err(|_| timed_out(timeout))?
            .map_err(|e| open_error(&e))
        };
        match made.await {
            Ok(connection) => {
                *last_failure = None;
                *self.current.write_unpoisoned() = Some(connection.clone());
                Ok(connection)
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// A client for the primary (with Sentinel, the one the sentinels name now).
    pub(super) async fn client(&self, timeout: Duration) -> Result<Client, StoreError> {
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
    pub(super) fn failed(&self, e: &RedisError) {
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

/// A connection problem: a refused user or password is a setting to change.
pub(super) fn open_error(e: &RedisError) -> StoreError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        StoreError::Redis(format!(
            "{e}; check the user and password (in store.redis_url, or store.redis_sentinel's username and password_env)"
        ))
    } else {
        unreachable(e)
    }
}

/// How one try of a command failed: on a broken connection (worth one more try on a new
/// one), or otherwise.
enum Attempt {
    Broken(StoreError),
    Failed(StoreError),
}

impl Shared {
    /// Runs one prepared script on the primary (see [`Shared::run`]).
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.run(|mut c| async move { script.invoke_async(&mut c).await })
            .await
    }

    /// `"1"` when the scripts stamp and check the primary's epoch (under Sentinel).
    pub(super) fn epoch_flag(&self) -> &'static str {
        if self.primary.is_sentinel() { "1" } else { "0" }
    }

    /// Runs one command (or script, or pipeline) on the primary, within the timeout. A
    /// connection found broken (a restarted Redis, a primary that moved) is made again and
    /// the command tried once more: each command here may run twice without harm (a take
    /// that ran and lost its answer leaves no refresh token to take a second time).
    pub(super) async fn run<T, F, Fut>(&self, command: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match self.run_once(&command).await {
            Err(Attempt::Broken(_)) => match self.run_once(&command).await {
                Err(Attempt::Broken(e) | Attempt::Failed(e)) => Err(e),
                Ok(value) => Ok(value),
            },
            Err(Attempt::Failed(e)) => Err(e),
            Ok(value) => Ok(value),
        }
    }

    async fn run_once<T, F, Fut>(&self, command: &F) -> Result<T, Attempt>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let connection = self
            .primary
            .connection(self.timeout)
            .await
            .map_err(Attempt::Failed)?;
        match tokio::time::timeout(self.timeout, command(connection)).await {
            Err(_) if self.primary.is_sentinel() => {
                // A primary that stopped answering (its connection still trying the old
                // address after a failover, say): look it up again, and try there.
                *self.primary.current.write_unpoisoned() = None;
                Err(Attempt::Broken(timed_out(self.timeout)))
            }
            Err(_) => Err(Attempt::Failed(timed_out(self.timeout))),
            Ok(Err(e)) => {
                self.primary.failed(&e);
                if e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.code() == Some("READONLY")
                {
                    Err(Attempt::Broken(unreachable(&e)))
                } else if e.is_io_error() || e.is_timeout() {
                    Err(Attempt::Failed(unreachable(&e)))
                } else {
                    Err(Attempt::Failed(StoreError::Protocol(e.to_string())))
                }
            }
            Ok(Ok(value)) => Ok(value),
        }
    }
}
