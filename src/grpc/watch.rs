//! The WatchTokens response stream: broker events as protobuf messages, ended with
//! UNAVAILABLE when the server shuts down, and counted against its connection's limit.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures::{Future, Stream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::{
    broker::{GoneReason, TokenEvents, WatchEvent},
    proto::{TokenEventReason, WatchTokensResponse},
};

/// Open streams per connection (keyed by the peer's address, which names one connection).
#[derive(Debug, Default)]
pub struct ConnectionStreams {
    open: Mutex<HashMap<SocketAddr, usize>>,
}

/// One stream's place in its connection's count; released on drop.
pub struct StreamPermit {
    registry: Arc<ConnectionStreams>,
    peer: Option<SocketAddr>,
}

impl ConnectionStreams {
    /// Takes a place for a new stream from `peer`, if it has fewer than `limit` open.
    pub fn acquire(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        limit: usize,
    ) -> Option<StreamPermit> {
        if let Some(peer) = peer {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let count = open.entry(peer).or_insert(0);
            if *count >= limit {
                return None;
            }
            *count += 1;
        }
        Some(StreamPermit {
            registry: Arc::clone(self),
            peer,
        })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut open = self.registry.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&peer);
            }
        }
    }
}

/// The stream tonic sends.
pub struct WatchResponses {
    events: TokenEvents,
    /// For the audit line of every token sent.
    caller: String,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    _permit: StreamPermit,
}

impl WatchResponses {
    pub fn new(
        events: TokenEvents,
        shutdown: CancellationToken,
        permit: StreamPermit,
        caller: String,
    ) -> Self {
        Self {
            events,
            caller,
            // A child token per stream: polling the server's one token from every stream
            // would contend on its lock at each message of a fan-out.
            shutdown: Box::pin(shutdown.child_token().cancelled_owned()),
            ended: false,
            _permit: permit,
        }
    }
}

impl Stream for WatchResponses {
    type Item = Result<WatchTokensResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // Events first: shutdown is looked at (and its wake-up registered) only when none is
        // ready, once per message rather than at every poll of a fan-out.
        let polled = Pin::new(&mut self.events).poll_next(cx);
        if polled.is_pending() && self.shutdown.as_mut().poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "tokenbroker is shutting down; reconnect (to another instance, or to this one when it is back)",
            ))));
        }
        if let Poll::Ready(Some(WatchEvent::Initial(key, token) | WatchEvent::Token(key, token))) =
            &polled
        {
            super::gate::audit(
                &self.caller,
                "WatchTokens",
                &key.org,
                key.user.as_deref(),
                token,
            );
        }
        polled.map(|event| event.map(|e| Ok(message(e))))
    }
}

fn message(event: WatchEvent) -> WatchTokensResponse {
    let (key, token, reason) = match event {
        WatchEvent::Initial(key, token) => (key, token, TokenEventReason::Initial),
        WatchEvent::Token(key, token) => {
            let reason = TokenEventReason::from(token.reason);
            (key, token, reason)
        }
        WatchEvent::Gone(gone) => {
            let reason = match gone.reason {
                GoneReason::Revoked => TokenEventReason::Revoked,
                GoneReason::Unavailable => TokenEventReason::Unavailable,
            };
            return WatchTokensResponse {
                token: None,
                reason: reason.into(),
                org: gone.key.org.to_string(),
                user_id: gone.key.user.as_deref().unwrap_or_default().to_owned(),
                detail: gone.detail.clone(),
            };
        }
    };
    let user = key.user.as_deref();
    WatchTokensResponse {
        org: key.org.to_string(),
        user_id: user.unwrap_or_default().to_owned(),
        token: Some(super::convert::token_message(&key.org, user, &token)),
        reason: reason.into(),
        detail: String::new(),
    }
}
