//! WatchTokens in the domain: a stream of a set of keys' tokens, first the current one of
//! each, then every new token and every loss, latest value first. Slow readers skip
//! generations, never see an older token after a newer one, and never slow anyone down:
//! each key is a `tokio::sync::watch` channel.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures::Stream;
use tokio_stream::{StreamMap, wrappers::WatchStream};

use super::{Gone, Held, SharedToken, TokenKey, plan::Planner, slot::Slot, stats::Counters};

/// One message of a watch stream.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A key's token when the stream opened.
    Initial(TokenKey, SharedToken),
    /// A new token for a key.
    Token(TokenKey, SharedToken),
    /// A key's token expired and could not be renewed.
    Gone(Arc<Gone>),
}

/// The events of one WatchTokens stream. Dropping it releases every subscription at once.
pub struct TokenEvents {
    initial: VecDeque<WatchEvent>,
    changes: StreamMap<usize, WatchStream<Held>>,
    // Declared after `changes`, so the receivers are gone when the guard tells the slots.
    subscribed: Subscribed,
}

/// Counts the stream while it lives and, when it goes, starts its keys' idle countdown.
struct Subscribed {
    slots: Vec<Arc<Slot>>,
    planner: Planner,
    stats: Arc<Counters>,
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.touch(tokio::time::Instant::now());
            self.planner.plan(slot);
        }
        self.stats.stream_closed();
    }
}

impl TokenEvents {
    /// Events for `slots`, whose receivers were subscribed before their tokens were fetched.
    pub(super) fn new(
        slots: Vec<Arc<Slot>>,
        receivers: Vec<tokio::sync::watch::Receiver<Held>>,
        planner: Planner,
        stats: Arc<Counters>,
    ) -> Self {
        stats.stream_opened();
        let mut initial = VecDeque::with_capacity(receivers.len());
        let mut changes = StreamMap::with_capacity(receivers.len());
        for (i, mut receiver) in receivers.into_iter().enumerate() {
            // The newest value at this instant; every later one arrives as a change.
            match receiver.borrow_and_update().clone() {
                Held::Token(token) => {
                    initial.push_back(WatchEvent::Initial(slots[i].key.clone(), token));
                }
                Held::Gone(gone) => initial.push_back(WatchEvent::Gone(gone)),
                Held::Empty => {}
            }
            changes.insert(i, WatchStream::from_changes(receiver));
        }
        Self {
            initial,
            changes,
            subscribed: Subscribed {
                slots,
                planner,
                stats,
            },
        }
    }
}

impl Stream for TokenEvents {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        if let Some(event) = self.initial.pop_front() {
            return Poll::Ready(Some(event));
        }
        loop {
            match Pin::new(&mut self.changes).poll_next(cx) {
                Poll::Ready(Some((i, Held::Token(token)))) => {
                    let key = self.subscribed.slots[i].key.clone();
                    return Poll::Ready(Some(WatchEvent::Token(key, token)));
                }
                Poll::Ready(Some((_, Held::Gone(gone)))) => {
                    return Poll::Ready(Some(WatchEvent::Gone(gone)));
                }
                Poll::Ready(Some((_, Held::Empty))) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
