//! When the renewal timer next looks at a slot, and what it does then: two pure functions
//! of a slot's [`View`] (tested without a clock), and the [`Planner`] that reads a slot's
//! view and files its next look on the one timer.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{CachePolicy, Held, slot::Slot, timer::Timer};

/// Files each slot's next look on the broker's one timer. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Planner {
    timer: Arc<Timer<Slot>>,
    /// `cache.prefetch_org_tokens`.
    prefetch: bool,
    /// `cache.user_idle_timeout`.
    user_idle_timeout: Duration,
}

impl Planner {
    pub fn new(policy: &CachePolicy) -> Self {
        Self {
            timer: Arc::default(),
            prefetch: policy.prefetch_org_tokens,
            user_idle_timeout: policy.user_idle_timeout,
        }
    }

    /// The timer the plans go on (served by `renew::run`).
    pub fn timer(&self) -> &Arc<Timer<Slot>> {
        &self.timer
    }

    /// What the renewal timer needs to know of `slot` now.
    pub fn view(&self, slot: &Slot) -> View {
        let held = match slot.held() {
            Held::Empty => HeldKind::Empty,
            Held::Token(t) => HeldKind::Token {
                renew_at: slot.renew_at(&t),
                expires: t.expires(),
            },
            Held::Gone(_) => HeldKind::Gone,
        };
        let is_user = slot.key.user.is_some();
        let watched = slot.watchers() > 0;
        let state = slot.state();
        View {
            held,
            is_user,
            watched,
            prefetch: self.prefetch,
            retry_at: state.retry_at(),
            failing: state.last_error().is_some(),
            idle_at: (is_user && !watched).then(|| slot.last_used() + self.user_idle_timeout),
            dormant: is_user && !watched && !slot.used(),
        }
    }

    /// Sets when the renewal timer next looks at `slot`, from what it holds now.
    pub fn plan(&self, slot: &Arc<Slot>) {
        if slot.is_retired() {
            return;
        }
        let at = next_wake(&self.view(slot), Instant::now());
        self.timer.set(slot, at);
    }
}

/// What the renewal timer needs to know of a slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct View {
    pub held: HeldKind,
    /// A user token (idle ones are dropped); else the org token.
    pub is_user: bool,
    /// Some WatchTokens stream watches the key.
    pub watched: bool,
    /// Org tokens are fetched at start, and again until they are had.
    pub prefetch: bool,
    /// No flight before this, after a failure.
    pub retry_at: Option<Instant>,
    /// The last flight failed and no token has come since.
    pub failing: bool,
    /// When the key counts as idle (an unwatched user token).
    pub idle_at: Option<Instant>,
    /// A user token restored from the store that nobody used or watched since: it is
    /// kept for the idle window, but renewed only once used (a restart does not renew
    /// every stored token, wanted or not).
    pub dormant: bool,
}

/// The part of what a slot holds that timing depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum HeldKind {
    Empty,
    Token {
        renew_at: Option<Instant>,
        expires: Option<Instant>,
    },
    Gone,
}

/// What the timer does with a due slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing yet: look again at [`next_wake`].
    Wait,
    /// Drop the idle user token.
    Drop,
    /// The token expired while renewals failed: tell its watchers.
    AnnounceGone,
    /// Renew the token, or fetch the missing one.
    Renew,
}

impl View {
    /// When a flight is due: the token's planned renewal, not before a failure's hold ends;
    /// for a lost or missing token that someone needs, at the failures' pace.
    fn due(&self, now: Instant) -> Option<Instant> {
        let needed = match self.held {
            HeldKind::Token { .. } if self.dormant => return None,
            HeldKind::Token { renew_at, .. } => {
                return renew_at.map(|at| self.retry_at.map_or(at, |r| r.max(at)));
            }
            HeldKind::Gone => !self.is_user || self.watched,
            HeldKind::Empty => !self.is_user && self.prefetch,
        };
        needed.then(|| self.retry_at.unwrap_or(now))
    }

    /// The expiry of a token that could not be renewed: its watchers are told then.
    fn failed_expiry(&self) -> Option<Instant> {
        match self.held {
            HeldKind::Token { expires, .. } if self.failing => expires,
            _ => None,
        }
    }
}

/// When the timer should next look at a slot in `view`.
pub(super) fn next_wake(view: &View, now: Instant) -> Option<Instant> {
    [view.due(now), view.failed_expiry(), view.idle_at]
        .into_iter()
        .flatten()
        .min()
}

/// What to do with a slot in `view` at `now`.
pub(super) fn action(view: &View, now: Instant) -> Action {
    if view.idle_at.is_some_and(|at| now >= at) {
        Action::Drop
    } else if view.failed_expiry().is_some_and(|at| now >= at) {
        Action::AnnounceGone
    } else if view.due(now).is_some_and(|at| now >= at) {
        Action::Renew
    } else {
        Action::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    fn user_with_token(t0: Instant) -> View {
        View {
            held: HeldKind::Token {
                renew_at: Some(at(t0, 1800)),
                expires: Some(at(t0, 3600)),
            },
            is_user: true,
            watched: false,
            prefetch: true,
            retry_at: None,
            failing: false,
            idle_at: Some(at(t0, 900)),
            dormant: false,
        }
    }

    #[test]
    fn a_restored_token_nobody_used_is_kept_for_the_idle_window_but_not_renewed() {
        let t0 = Instant::now();
        // Restored at t0 with its renewal 10 s away (or already past): no renewal comes
        // due while it is dormant, only its idle drop.
        let dormant = View {
            held: HeldKind::Token {
                renew_at: Some(at(t0, 10)),
                expires: Some(at(t0, 600)),
            },
            dormant: true,
            ..user_with_token(t0)
        };
        assert_eq!(next_wake(&dormant, t0), Some(at(t0, 900)));
        assert_eq!(action(&dormant, at(t0, 100)), Action::Wait);
        assert_eq!(action(&dormant, at(t0, 900)), Action::Drop);
        // Once used, it renews at its time (or at once, if that has passed).
        let used = View {
            dormant: false,
            ..dormant
        };
        assert_eq!(next_wake(&used, at(t0, 100)), Some(at(t0, 10)));
        assert_eq!(action(&used, at(t0, 100)), Action::Renew);
    }

    #[test]
    fn an_unwatched_user_token_idle_before_its_renewal_is_dropped_unrenewed() {
        let t0 = Instant::now();
        let view = user_with_token(t0);
        assert_eq!(next_wake(&view, t0), Some(at(t0, 900)));
        assert_eq!(action(&view, at(t0, 899)), Action::Wait);
        assert_eq!(action(&view, at(t0, 900)), Action::Drop);
    }

    #[test]
    fn a_watched_or_used_token_is_renewed_at_its_time() {
        let t0 = Instant::now();
        let watched = View {
            watched: true,
            idle_at: None,
            ..user_with_token(t0)
        };
        assert_eq!(next_wake(&watched, t0), Some(at(t0, 1800)));
        assert_eq!(action(&watched, at(t0, 1800)), Action::Renew);
        let used = View {
            idle_at: Some(at(t0, 2000)),
            ..user_with_token(t0)
        };
        assert_eq!(action(&used, at(t0, 1800)), Action::Renew);
    }

    #[test]
    fn a_failure_holds_the_renewal_and_a_failed_token_is_announced_at_expiry() {
        let t0 = Instant::now();
        let failing = View {
            held: HeldKind::Token {
                renew_at: Some(at(t0, 10)),
                expires: Some(at(t0, 20)),
            },
            is_user: false,
            idle_at: None,
            retry_at: Some(at(t0, 30)),
            failing: true,
            ..user_with_token(t0)
        };
        // The hold ends after the expiry: the expiry comes first, and is announced.
        assert_eq!(next_wake(&failing, t0), Some(at(t0, 20)));
        assert_eq!(action(&failing, at(t0, 15)), Action::Wait);
        assert_eq!(action(&failing, at(t0, 20)), Action::AnnounceGone);
        let held_only = View {
            failing: false,
            ..failing
        };
        assert_eq!(next_wake(&held_only, t0), Some(at(t0, 30)));
        assert_eq!(action(&held_only, at(t0, 29)), Action::Wait);
        assert_eq!(action(&held_only, at(t0, 30)), Action::Renew);
    }

    #[test]
    fn missing_and_lost_tokens_are_fetched_only_when_someone_needs_them() {
        let t0 = Instant::now();
        let org_empty = View {
            held: HeldKind::Empty,
            is_user: false,
            idle_at: None,
            ..user_with_token(t0)
        };
        assert_eq!(next_wake(&org_empty, t0), Some(t0));
        assert_eq!(action(&org_empty, t0), Action::Renew);
        let no_prefetch = View {
            prefetch: false,
            ..org_empty
        };
        assert_eq!(next_wake(&no_prefetch, t0), None);
        let org_gone = View {
            held: HeldKind::Gone,
            retry_at: Some(at(t0, 5)),
            ..no_prefetch
        };
        assert_eq!(next_wake(&org_gone, t0), Some(at(t0, 5)));
        let user_gone = View {
            held: HeldKind::Gone,
            ..user_with_token(t0)
        };
        assert_eq!(next_wake(&user_gone, t0), Some(at(t0, 900)));
        let watched_gone = View {
            watched: true,
            idle_at: None,
            ..user_gone
        };
        assert_eq!(action(&watched_gone, t0), Action::Renew);
        let long_lived = View {
            held: HeldKind::Token {
                renew_at: None,
                expires: None,
            },
            ..org_empty
        };
        assert_eq!(next_wake(&long_lived, t0), None);
    }
}
