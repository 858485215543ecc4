//! Rotation messages: what a replica publishes after each install (and a lease's release),
//! the subscriber that hands them to the broker, and their format. Pub/sub is at most once,
//! so every (re)subscription first asks the broker to re-read every key it holds.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;

use super::{
    Shared,
    primary::{timed_out, unreachable},
};
use crate::store::StoreError;

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

/// The subscriber's task: subscribes, asks for a resync (messages may have been missed
/// before), forwards every message; when the connection ends, subscribes again after a
/// backoff. Ends when the broker stops listening.
pub(super) async fn subscribe(shared: Arc<Shared>, events: mpsc::Sender<Event>) {
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
    let (mut sink, mut messages) = pubsub.split();
    // A connection that died without a word (a network cut) is noticed by a ping, and
    // subscribed again; messages dropped on a full queue ask for a resync on the next tick.
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost = false;
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            _ = tick.tick() => {
                if lost && events.try_send(Event::Resync).is_ok() {
                    lost = false;
                }
                let pong = tokio::time::timeout(shared.timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return Err(StoreError::Unreachable("the subscription's connection does not answer".into()));
                }
                continue;
            }
        };
        let Some(message) = message else {
            return Err(StoreError::Unreachable(
                "the subscription's connection ended".into(),
            ));
        };
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
}

/// How often the subscription's connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);

/// `KIND\nGENERATION\nORG[\nUSER]` (ids hold no control characters).
pub(super) fn message(kind: &str, generation: u64, org: &str, user: Option<&str>) -> String {
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
