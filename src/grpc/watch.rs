//! The WatchTokens response stream: broker events as protobuf messages, ended with
//! UNAVAILABLE when the server shuts down, counted against its connection's limit, and
//! audited once per caller and rotation.

use crate::sync::LockUnpoisoned;
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::{Future, Stream};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::budget::Share;
use crate::{
    broker::{GoneReason, TokenEvents, TokenKey, WatchEvent},
    grpc::wire::{TokenEventReason, WatchTokensResponse},
};

/// Open WatchTokens streams per connection (keyed by the peer's address, which names one
/// connection). Each connection's count is shared by its streams and its writer
/// ([`super::coalesce`]), which consolidates writes only where streams push.
#[derive(Debug, Default)]
pub struct ConnectionStreams {
    open: Mutex<HashMap<SocketAddr, Weak<AtomicUsize>>>,
}

/// One stream's place in its connection's count; released on drop.
pub struct StreamPermit {
    count: Option<Arc<AtomicUsize>>,
}

impl ConnectionStreams {
    /// The count of the connection from `peer`: made when it is accepted, and kept by its
    /// writer and its streams.
    pub fn connection(&self, peer: SocketAddr) -> Arc<AtomicUsize> {
        let mut open = self.open.lock_unpoisoned();
        if let Some(count) = open.get(&peer).and_then(Weak::upgrade) {
            return count;
        }
        // Closed connections leave dead entries: sweep them whenever the map doubles.
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|_, count| count.strong_count() > 0);
        }
        let count = Arc::new(AtomicUsize::new(0));
        open.insert(peer, Arc::downgrade(&count));
        count
    }

    /// Takes a place for a new stream from `peer`, if it has fewer than `limit` open.
    pub fn acquire(&self, peer: Option<SocketAddr>, limit: usize) -> Option<StreamPermit> {
        let count = peer.map(|peer| self.connection(peer));
        if let Some(count) = &count
            && count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .is_err()
        {
            return None;
        }
        Some(StreamPermit { count })
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(count) = &self.count {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The rotations WatchTokens streams have audited: the last generation audited per caller
/// and key, shared by all of that caller's streams of the key.
///
/// A stream's first token is audited like any call's answer. A rotation reaches every
/// open stream at once, and all of one caller's lines would say the same thing: it is
/// audited once per caller, key and generation, with the number of the caller's streams
/// that carry it. (10,000 identical lines per rotation also cost a fan-out a third of its
/// CPU, and the log pipeline megabytes.)
#[derive(Debug, Default)]
pub struct RotationAudits {
    last: Mutex<HashMap<(String, TokenKey), Arc<AtomicU64>>>,
}

impl RotationAudits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, TokenKey), Arc<AtomicU64>>> {
        self.last.lock_unpoisoned()
    }
}

/// One stream's share of [`RotationAudits`]; its entries go when their last stream does.
struct AuditShare {
    audits: Arc<RotationAudits>,
    caller: String,
    /// The shared last-audited generation of each key this stream has sent a rotation of.
    keys: HashMap<TokenKey, Arc<AtomicU64>>,
}

impl AuditShare {
    /// Whether this stream is the first of its caller's to send `generation` of `key`, and
    /// how many of the caller's streams of the key are open.
    fn first_to_send(&mut self, key: &TokenKey, generation: u64) -> Option<usize> {
        let last = match self.keys.get(key) {
            Some(last) => last,
            None => {
                let shared = Arc::clone(
                    self.audits
                        .lock()
                        .entry((self.caller.clone(), key.clone()))
                        .or_default(),
                );
                self.keys.entry(key.clone()).or_insert(shared)
            }
        };
        // Not "at most": a key that is removed and added again starts at generation 1.
        (last.swap(generation, Ordering::AcqRel) != generation).then(|| Arc::strong_count(last) - 1)
    }
}

impl Drop for AuditShare {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut audits = self.audits.lock();
        for (key, last) in self.keys.drain() {
            // Shared only with the map (its clones are made under this lock): the last one.
            if Arc::strong_count(&last) == 2 {
                audits.remove(&(self.caller.clone(), key));
            }
        }
    }
}

/// The stream tonic sends.
pub struct WatchResponses {
    events: TokenEvents,
    /// For the audit lines of the tokens sent.
    audit: AuditShare,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    ended: bool,
    /// Its places: in its connection's count, among the server's streams, and its keys
    /// among those watched.
    _places: (StreamPermit, Share, Share),
}

impl WatchResponses {
    pub fn new(
        events: TokenEvents,
        shutdown: CancellationToken,
        places: (StreamPermit, Share, Share),
        caller: String,
        audits: Arc<RotationAudits>,
    ) -> Self {
        Self {
            events,
            audit: AuditShare {
                audits,
                caller,
                keys: HashMap::new(),
            },
            // A child token per stream: polling the server's one token from every stream
            // would contend on its lock at each message of a fan-out.
            shutdown: Box::pin(shutdown.child_token().cancelled_owned()),
            ended: false,
            _places: places,
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
        match &polled {
            Poll::Ready(Some(WatchEvent::Initial(key, token))) => {
                crate::audit::streamed(&self.audit.caller, key, token, 1)
            }
            Poll::Ready(Some(WatchEvent::Token(key, token))) => {
                if let Some(streams) = self.audit.first_to_send(key, token.generation) {
                    crate::audit::streamed(&self.audit.caller, key, token, streams);
                }
            }
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn share(audits: &Arc<RotationAudits>, caller: &str) -> AuditShare {
        AuditShare {
            audits: Arc::clone(audits),
            caller: caller.to_owned(),
            keys: HashMap::new(),
        }
    }

    fn key(user: Option<&str>) -> TokenKey {
        TokenKey {
            org: "acme".into(),
            user: user.map(Into::into),
        }
    }

    #[test]
    fn a_rotation_is_audited_once_per_caller_and_key_with_its_stream_count() {
        let audits = Arc::new(RotationAudits::default());
        let (mut a, mut b, mut other) = (
            share(&audits, "payroll"),
            share(&audits, "payroll"),
            share(&audits, "erp"),
        );
        let org = key(None);
        // Each stream registers the key with its first rotation; the first to send counts
        // the caller's streams that have.
        assert_eq!(a.first_to_send(&org, 2), Some(1));
        assert_eq!(b.first_to_send(&org, 2), None);
        assert_eq!(other.first_to_send(&org, 2), Some(1), "another caller");
        assert_eq!(b.first_to_send(&org, 3), Some(2), "the next rotation");
        assert_eq!(a.first_to_send(&org, 3), None);
        assert_eq!(a.first_to_send(&key(Some("e1")), 3), Some(1), "another key");
        // A key removed and added again starts over at generation 1: still audited.
        assert_eq!(a.first_to_send(&org, 1), Some(2));
        drop(a);
        assert_eq!(audits.lock().len(), 2, "b and erp still hold the org key");
        drop((b, other));
        assert!(
            audits.lock().is_empty(),
            "entries go with their last stream"
        );
    }
}
