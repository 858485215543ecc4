//! The gate every TokenService call and every proxied request passes: who is calling (API
//! key, client certificate, Unix peer uid) and from where, whether its address has failed
//! too often, whether it is within its rate limit, and, once the org is known, whether it
//! may do this. Each transport reads what a request presents; the policy is here, once.
//! What bounds the broker's work is the broker's own (`broker::Limits`): a call answered
//! from the cache is never refused for being one of many.

use crate::sync::{LockUnpoisoned, RwLockUnpoisoned};
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::{
    auth::{AuthError, Authenticated, Callers, Permission, Presented},
    metrics::Metrics,
};

/// Failed authentications an address may have in one [`FAILURE_WINDOW`]; past them, its
/// calls are refused without a look at what they present until the window ends.
pub const FAILURES_ALLOWED: u32 = 20;
/// The window failed authentications are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// Addresses tracked at most (the oldest windows go first past it).
const MAX_TRACKED_PEERS: usize = 10_000;

/// Authentication and policy for the service.
#[derive(Debug)]
pub struct Gate {
    /// Swapped whole by a reload.
    callers: RwLock<Arc<Callers>>,
    failures: Failures,
    metrics: Arc<Metrics>,
}

/// Failed authentications by peer address, in fixed windows.
#[derive(Debug, Default)]
struct Failures {
    by_peer: Mutex<HashMap<IpAddr, Window>>,
    /// Some address is past its allowance: calls look the map up (none do otherwise).
    any_throttled: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.by_peer.lock_unpoisoned()
    }

    /// How long `peer` is still refused, if it is.
    fn throttled(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        if !self.any_throttled.load(Ordering::Relaxed) {
            return None;
        }
        let window = *self.lock().get(&peer)?;
        let end = window.start + FAILURE_WINDOW;
        (window.count > FAILURES_ALLOWED && now < end).then(|| end - now)
    }

    /// Counts a failed authentication from `peer`.
    fn failed(&self, peer: IpAddr, now: Instant) {
        let mut by_peer = self.lock();
        if by_peer.len() >= MAX_TRACKED_PEERS && !by_peer.contains_key(&peer) {
            by_peer.retain(|_, w| now < w.start + FAILURE_WINDOW);
            if by_peer.len() >= MAX_TRACKED_PEERS {
                return;
            }
        }
        let window = by_peer.entry(peer).or_insert(Window {
            start: now,
            count: 0,
        });
        if now >= window.start + FAILURE_WINDOW {
            *window = Window {
                start: now,
                count: 0,
            };
        }
        window.count += 1;
        if window.count > FAILURES_ALLOWED {
            self.any_throttled.store(true, Ordering::Relaxed);
        }
    }
}

/// A request let through: its caller, and the address it called from (`None` over a Unix
/// socket), for the audit.
pub struct Admitted {
    pub caller: Arc<Authenticated>,
    pub peer: Option<IpAddr>,
}

impl Gate {
    pub fn new(callers: Callers, metrics: Arc<Metrics>) -> Self {
        Self {
            callers: RwLock::new(Arc::new(callers)),
            failures: Failures::default(),
            metrics,
        }
    }

    /// Authenticates the sender of a request from `peer` (`None` over a Unix socket) by
    /// what `present` reads from it, and admits it within the caller's rate limit, or
    /// refuses it. `present` runs only when callers are configured; it fails for a
    /// credential sent but unreadable, which is refused, never passed over for another (the
    /// connection's uid or certificate).
    pub fn admit<'p>(
        &self,
        peer: Option<IpAddr>,
        present: impl FnOnce() -> Result<Presented<'p>, AuthError>,
    ) -> Result<Admitted, AuthError> {
        let callers = self.callers.read_unpoisoned();
        // With no callers configured anyone local may ask: what a request presents is not
        // looked at (three lookups fewer on every call).
        let caller = if callers.is_open() {
            callers.authenticate(&Presented::default())?
        } else {
            // No clock read on a call while no address is throttled.
            if let Some(peer) = peer
                && self.failures.any_throttled.load(Ordering::Relaxed)
                && let Some(left) = self.failures.throttled(peer, Instant::now())
            {
                self.metrics.auth_failure("throttled");
                return Err(AuthError::RateLimited(format!(
                    "more than {FAILURES_ALLOWED} failed authentications from {peer} in {}s; retry in {}s",
                    FAILURE_WINDOW.as_secs(),
                    left.as_secs() + 1
                )));
            }
            let refused = |e: AuthError| {
                self.metrics.auth_failure("refused");
                if let Some(peer) = peer {
                    self.failures.failed(peer, Instant::now());
                }
                e
            };
            match present().and_then(|presented| callers.authenticate(&presented)) {
                Ok(caller) => caller,
                Err(e @ AuthError::Unauthenticated(_)) => return Err(refused(e)),
                Err(e) => return Err(e),
            }
        };
        drop(callers);
        caller.admit()?;
        Ok(Admitted { caller, peer })
    }

    /// Replaces the callers (a reload). Requests in flight finish as they began.
    pub fn set_callers(&self, callers: Callers) {
        *self.callers.write_unpoisoned() = Arc::new(callers);
    }
}

impl Admitted {
    /// Whether the caller may use `permission` on `org`.
    pub fn authorize(&self, permission: Permission, org: &str) -> Result<(), AuthError> {
        self.caller.authorize(permission, org)
    }
}

/// The DNS and URI subject alternative names of a DER certificate (TLS already verified it).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_address_past_its_failures_is_refused_until_the_window_ends() {
        let failures = Failures::default();
        let (peer, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..FAILURES_ALLOWED {
            failures.failed(peer, Instant::now());
        }
        assert_eq!(
            failures.throttled(peer, Instant::now()),
            None,
            "within its allowance"
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        failures.failed(peer, Instant::now());
        assert_eq!(
            failures.throttled(peer, Instant::now()),
            Some(Duration::from_secs(6)),
            "to the end of the window"
        );
        assert_eq!(
            failures.throttled(other, Instant::now()),
            None,
            "per address"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            failures.throttled(peer, Instant::now()),
            None,
            "a new window"
        );
        failures.failed(peer, Instant::now());
        assert_eq!(
            failures.throttled(peer, Instant::now()),
            None,
            "counted afresh"
        );
    }
}
