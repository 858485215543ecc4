//! Keeping tokens fresh: one timer task for the whole broker looks at each slot when it is
//! due ([`super::timer`]), renews its token ahead of expiry (at the time
//! [`super::RenewalPolicy`] chose when it was issued), backs off after failures, announces a
//! token that expired unrenewed to its watchers, and drops user tokens that nobody watches
//! or used within the idle window. What to do and when is decided in [`super::plan`].

use std::sync::{Arc, Weak};

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::HoldKind;

use super::{
    BrokerError, Gone, GoneReason, Held, SharedToken,
    budget::Priority,
    flight::SingleFlight,
    org::Org,
    orgs::Orgs,
    plan::{Action, action},
    slot::Slot,
    want::Want,
};

/// The renewal timer's task: looks at each slot of `orgs` when it is due, until `stop` or
/// until the broker is dropped. It holds the engine and the orgs only while it acts, so
/// that dropping the last broker ends it.
pub(super) async fn run(engine: Weak<SingleFlight>, orgs: Weak<Orgs>, stop: CancellationToken) {
    let Some(timer) = engine.upgrade().map(|e| Arc::clone(e.planner.timer())) else {
        return;
    };
    loop {
        let (due, next) = timer.due(Instant::now());
        if !due.is_empty() {
            let (Some(engine), Some(orgs)) = (engine.upgrade(), orgs.upgrade()) else {
                return;
            };
            for slot in due {
                // The slot's org, unless it was removed or no longer holds the slot.
                if let Some(org) = orgs.get(&slot.key.org).filter(|org| org.holds(&slot)) {
                    look(&engine, org, slot);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = timer.earlier_entry() => {}
            () = sleep_until_or_forever(next) => {}
        }
    }
}

/// Acts on a slot that came due.
fn look(engine: &Arc<SingleFlight>, org: Arc<Org>, slot: Arc<Slot>) {
    let held = slot.held();
    let planner = &engine.planner;
    match action(&planner.view(&slot), Instant::now()) {
        Action::Wait => planner.plan(&slot),
        Action::Drop => drop_user_slot(engine, &org, &slot),
        Action::AnnounceGone => {
            if let Held::Token(token) = &held
                && let Some(e) = slot.state().last_error().cloned()
            {
                announce_gone(&slot, token, &e);
            }
            planner.plan(&slot);
        }
        Action::Renew => {
            let engine = Arc::clone(engine);
            tokio::spawn(async move {
                renew(&engine, &org, &slot, held).await;
                engine.planner.plan(&slot);
            });
        }
    }
}

/// One renewal (or fetch of a missing token) in the background.
async fn renew(engine: &Arc<SingleFlight>, org: &Arc<Org>, slot: &Arc<Slot>, held: Held) {
    let renewed = match &held {
        Held::Token(token) => {
            let want = Want::Renewal { of: token };
            engine.token(org, slot, want, Priority::Renewal).await
        }
        Held::Gone(_) | Held::Empty => {
            engine
                .token(org, slot, Want::Usable, Priority::Prefetch)
                .await
        }
    };
    engine.stats.renewal(renewed.is_ok());
    if let Err(e) = renewed {
        warn!(key = %slot.key, error = %e, "background renewal failed; will retry");
        if let Held::Token(token) = &held
            && !token.is_valid(Instant::now())
        {
            announce_gone(slot, token, &e);
        }
    }
}

fn drop_user_slot(engine: &SingleFlight, org: &Org, slot: &Arc<Slot>) {
    if org.users.remove(slot) {
        debug!(key = %slot.key, "user token idle; dropped");
        engine.stats.eviction();
        if let Some(store) = &engine.store {
            store.remove(&slot.key.org, slot.key.user.as_deref());
        }
    }
    slot.retire();
}

/// Tells the key's watchers that `expired` is gone and why.
fn announce_gone(slot: &Slot, expired: &SharedToken, error: &BrokerError) {
    let reason = match error {
        BrokerError::UnknownUser { .. }
        | BrokerError::CredentialsRejected { .. }
        | BrokerError::Misconfigured { .. }
        | BrokerError::NotRotatable { .. }
        | BrokerError::Held {
            kind: HoldKind::Credentials | HoldKind::UnknownUser,
            ..
        } => GoneReason::Revoked,
        _ => GoneReason::Unavailable,
    };
    let gone = Gone {
        key: slot.key.clone(),
        reason,
        detail: error.to_string(),
        generation: expired.generation,
    };
    if slot.announce_gone(expired, gone) {
        warn!(key = %slot.key, ?reason, error = %error, "token expired and could not be renewed");
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Broker, CachePolicy, Limits};
    use super::*;
    use crate::upstream::{self, Upstream};

    /// The renewal timer holds no broker while it waits: dropping the last clone ends it,
    /// and `shutdown` ends it too.
    #[tokio::test]
    async fn the_renewal_timer_ends_with_its_broker() {
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let new_broker = || {
            let upstream = Upstream::new(Duration::from_secs(1), Arc::new(upstream::Unobserved))
                .expect("an HTTP client");
            Broker::new(vec![], upstream, CachePolicy::default(), Limits::default())
        };
        let wait_for = |n: usize| async move {
            for _ in 0..200 {
                if alive() == n {
                    return true;
                }
                tokio::task::yield_now().await;
            }
            false
        };
        let broker = new_broker();
        assert_eq!(alive(), before + 1, "one timer task");
        let clone = broker.clone();
        drop(broker);
        tokio::task::yield_now().await;
        assert_eq!(alive(), before + 1, "a clone keeps it");
        drop(clone);
        assert!(wait_for(before).await, "dropping the last clone ends it");
        let broker = new_broker();
        broker.shutdown();
        assert!(wait_for(before).await, "shutdown ends it");
    }
}
