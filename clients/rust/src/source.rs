//! A token source: one `WatchTokens` stream for one key, kept open by a task of its own,
//! and `token()`, which answers from what the stream last said or asks the broker itself.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::Code;

use crate::{
    Error, backoff,
    connection::{Client, Connection},
    error::Gone,
    proto::{
        GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest, Token, TokenEventReason,
        WatchTokensRequest, WatchTokensResponse,
    },
    state::{AccessToken, Arrival, Held, State},
};

/// How long [`TokenSource::token`] waits for a first token.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a token the source asks for itself must have left (`min_valid_for`): more than
/// the [`EXPIRY_MARGIN`](crate::EXPIRY_MARGIN), so the broker renews one that has less
/// rather than hand over a token the source could not use.
const FETCH_MIN_VALID: Duration = Duration::from_secs(6);

/// The current token of one key (an org's token, or one user's), kept current by a
/// `WatchTokens` stream. Cheap to clone; the stream ends when the last clone is dropped or
/// [`TokenSource::close`] is called. Needs a tokio runtime.
#[derive(Clone, Debug)]
pub struct TokenSource {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: Key,
    client: Client,
    state: watch::Sender<State>,
    stream: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stream.abort();
    }
}

/// The key a source follows.
#[derive(Clone, Debug)]
struct Key {
    org: String,
    user: Option<String>,
}

impl TokenSource {
    /// Follows the token of `org` (empty: the broker's only org).
    pub fn org(connection: &Connection, org: impl Into<String>) -> Self {
        Self::start(
            connection,
            Key {
                org: org.into(),
                user: None,
            },
        )
    }

    /// Follows the token that acts as `user` (a person id or ExternalSourceID) in `org`.
    pub fn user(connection: &Connection, org: impl Into<String>, user: impl Into<String>) -> Self {
        let key = Key {
            org: org.into(),
            user: Some(user.into()),
        };
        Self::start(connection, key)
    }

    fn start(connection: &Connection, key: Key) -> Self {
        let (state, _) = watch::channel(State::default());
        let client = connection.client();
        let stream = tokio::spawn(follow(client.clone(), key.clone(), state.clone()));
        Self {
            inner: Arc::new(Inner {
                key,
                client,
                state,
                stream,
            }),
        }
    }

    /// The current token, waiting up to [`DEFAULT_TIMEOUT`] for the first; see
    /// [`TokenSource::token_within`].
    pub async fn token(&self) -> Result<AccessToken, Error> {
        self.token_within(DEFAULT_TIMEOUT).await
    }

    /// The current token; never one within 5 s of its expiry.
    ///
    /// - A valid token held is returned at once, with no call.
    /// - Before the first arrives, it waits for the stream up to `timeout`. If the stream
    ///   fails first, it asks the broker itself (`GetOrgToken`/`GetUserToken`) within
    ///   what is left; if nothing came in time, it returns `DEADLINE_EXCEEDED`. It asks
    ///   the broker too when the token held has expired (the stream has been down that
    ///   long).
    /// - After a `REVOKED` or `UNAVAILABLE` event, and until the next token, it returns
    ///   [`Error::Event`] at once.
    pub async fn token_within(&self, timeout: Duration) -> Result<AccessToken, Error> {
        let deadline = Instant::now() + timeout;
        let mut updates = self.inner.state.subscribe();
        loop {
            {
                let state = updates.borrow_and_update();
                if state.closed {
                    return Err(closed());
                }
                match &state.held {
                    Held::Token(token) if token.usable_at(SystemTime::now()) => {
                        return Ok(token.clone());
                    }
                    Held::Token(_) => break,
                    Held::Gone { reason, detail } => {
                        return Err(Error::Event {
                            reason: *reason,
                            detail: detail.clone(),
                        });
                    }
                    Held::Nothing if state.stream_error.is_some() => break,
                    Held::Nothing => {}
                }
            }
            match tokio::time::timeout_at(deadline, updates.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        self.fetch(deadline, timeout).await
    }

    /// Asks the broker for a new token because `stale` was rejected (`Refresh` naming it):
    /// many callers that saw the same token rejected cost one rotation, and one that
    /// names a token already replaced gets the current one. The new token is held.
    pub async fn refresh(&self, stale: &AccessToken) -> Result<AccessToken, Error> {
        if self.inner.state.borrow().closed {
            return Err(closed());
        }
        let key = &self.inner.key;
        let mut request = tonic::Request::new(RefreshRequest {
            org: key.org.clone(),
            user_id: key.user.clone().unwrap_or_default(),
            stale_access_token: stale.secret().to_owned(),
        });
        request.set_timeout(DEFAULT_TIMEOUT);
        let answer = self.inner.client.clone().refresh(request).await?;
        let token = held_token(answer.into_inner().token)?;
        self.offer(Arrival::Called {
            token: token.clone(),
            stale: Some(stale.secret().to_owned()),
        });
        Ok(token)
    }

    /// Ends the stream now, rather than when the last clone is dropped; from then on
    /// `token()` and `refresh()` return `CANCELLED`.
    pub fn close(&self) {
        self.inner.stream.abort();
        self.inner.state.send_modify(|state| state.closed = true);
    }

    /// `GetOrgToken` / `GetUserToken` within what is left of `deadline`.
    async fn fetch(&self, deadline: Instant, timeout: Duration) -> Result<AccessToken, Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let last = self.inner.state.borrow().stream_error.clone();
            let why = last.map_or_else(String::new, |s| {
                format!("; the stream's last error: {}", s.message())
            });
            return Err(Error::Status {
                code: Code::DeadlineExceeded,
                message: format!("no token from the broker within {timeout:?}{why}"),
            });
        }
        let key = &self.inner.key;
        let mut client = self.inner.client.clone();
        let token = match &key.user {
            None => {
                let mut request = tonic::Request::new(GetOrgTokenRequest {
                    org: key.org.clone(),
                    min_valid_for: Some(min_valid()),
                });
                request.set_timeout(left);
                client.get_org_token(request).await?.into_inner().token
            }
            Some(user) => {
                let mut request = tonic::Request::new(GetUserTokenRequest {
                    org: key.org.clone(),
                    user_id: user.clone(),
                    min_valid_for: Some(min_valid()),
                });
                request.set_timeout(left);
                client.get_user_token(request).await?.into_inner().token
            }
        };
        let token = held_token(token)?;
        self.offer(Arrival::Called {
            token: token.clone(),
            stale: None,
        });
        Ok(token)
    }

    fn offer(&self, arrival: Arrival) {
        self.inner
            .state
            .send_modify(|state| state.apply(arrival, SystemTime::now()));
    }
}

/// The stream task: watches `key` for as long as the source lives, reconnecting with
/// jittered exponential backoff (reset by every message).
async fn follow(mut client: Client, key: Key, state: watch::Sender<State>) {
    let mut failures = 0u32;
    loop {
        let request = WatchTokensRequest {
            org: key.org.clone(),
            user_ids: key.user.iter().cloned().collect(),
        };
        let ended = match client.watch_tokens(request).await {
            Ok(answer) => {
                let mut stream = answer.into_inner();
                let mut first = true;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            failures = 0;
                            let arrival = arrival(message, first);
                            first = false;
                            state.send_modify(|s| {
                                s.stream_error = None;
                                if let Some(arrival) = arrival {
                                    s.apply(arrival, SystemTime::now());
                                }
                            });
                        }
                        Ok(None) => {
                            break tonic::Status::unavailable("the broker ended the stream");
                        }
                        Err(status) => break status,
                    }
                }
            }
            Err(status) => status,
        };
        tracing::debug!(org = %key.org, code = ?ended.code(), message = ended.message(), "tokenbroker watch ended; reconnecting");
        state.send_modify(|s| s.stream_error = Some(ended));
        tokio::time::sleep(backoff::delay(failures, rand::random())).await;
        failures = failures.saturating_add(1);
    }
}

/// What a stream message means for the held state (`None`: nothing to hold).
fn arrival(message: WatchTokensResponse, first: bool) -> Option<Arrival> {
    let gone = |reason| Arrival::Gone {
        reason,
        detail: message.detail.clone(),
    };
    match message.reason() {
        TokenEventReason::Revoked => Some(gone(Gone::Revoked)),
        TokenEventReason::Unavailable => Some(gone(Gone::Unavailable)),
        _ => {
            let token = held_token(message.token).ok()?;
            Some(if first {
                Arrival::Initial(token)
            } else {
                Arrival::Update(token)
            })
        }
    }
}

fn closed() -> Error {
    Error::Status {
        code: Code::Cancelled,
        message: "the token source is closed".into(),
    }
}

fn min_valid() -> prost_types::Duration {
    prost_types::Duration {
        seconds: FETCH_MIN_VALID.as_secs() as i64,
        nanos: 0,
    }
}

/// The token of an answer; an answer without one is the broker's fault.
fn held_token(token: Option<Token>) -> Result<AccessToken, Error> {
    let token = token.ok_or_else(|| Error::Status {
        code: Code::Internal,
        message: "the broker's answer carried no token".into(),
    })?;
    let expires_at = token.expires_at.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    });
    Ok(AccessToken::new(
        token.access_token,
        expires_at,
        token.generation,
    ))
}
