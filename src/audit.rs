//! The audit of tokens handed out: who got which token, from where, and how often, at a
//! cost that does not grow with the call rate. The first hand-out of a token's generation
//! to a caller from an address is logged at once (a stolen API key used from a new address
//! shows at once); repeats of the same are counted and written as one summary line with
//! the count and the first and last time: when the generation is replaced, every
//! `audit.summary_interval`, and at shutdown. The counts of all lines add up to the tokens
//! handed out. `audit.every_call` logs one line per hand-out instead.

use std::{
    hash::BuildHasher,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hashbrown::{DefaultHashBuilder, HashTable};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticated,
    broker::{KeyRef, SharedToken, Token, TokenKey},
};

/// How tokens handed out are audited (`[audit]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditPolicy {
    /// How often the repeats counted since the last line are written
    /// (`audit.summary_interval`).
    pub summary_interval: Duration,
    /// One line for every hand-out, for rules that demand it (`audit.every_call`).
    pub every_call: bool,
}

impl Default for AuditPolicy {
    fn default() -> Self {
        Self {
            summary_interval: Duration::from_secs(60),
            every_call: false,
        }
    }
}

/// The most (caller, address, key) combinations counted at once (about 64 bytes each);
/// beyond it every count is written out and counting starts afresh.
const MAX_TRACKED: usize = 250_000;

/// A token handed out to a caller.
#[derive(Debug, Clone, Copy)]
pub struct HandOut<'a> {
    pub caller: &'a Arc<Authenticated>,
    /// The caller's address; `None` over a Unix socket.
    pub peer: Option<IpAddr>,
    pub rpc: &'static str,
    pub key: &'a KeyRef,
    pub token: &'a SharedToken,
}

/// The audit: the hand-outs counted since their last line.
#[derive(Debug)]
pub struct Audit {
    policy: AuditPolicy,
    hasher: DefaultHashBuilder,
    counts: Mutex<HashTable<Count>>,
}

/// The hand-outs of one generation of a key to one caller from one address.
#[derive(Debug)]
struct Count {
    caller: Arc<Authenticated>,
    peer: Option<IpAddr>,
    key: KeyRef,
    /// The generation counted.
    token: SharedToken,
    /// Hand-outs since the last line.
    repeats: u64,
    /// Milliseconds since the Unix epoch of the first and last of those.
    first_ms: u64,
    last_ms: u64,
}

impl Count {
    fn is(&self, h: &HandOut<'_>) -> bool {
        Arc::ptr_eq(&self.caller, h.caller) && self.peer == h.peer && self.key.same(h.key)
    }

    /// The summary line of the repeats counted, if any; counting starts again.
    fn take_summary(&mut self) -> Option<Summary> {
        if self.repeats == 0 {
            return None;
        }
        let summary = Summary {
            caller: Arc::clone(&self.caller),
            peer: self.peer,
            key: self.key.clone(),
            token: Arc::clone(&self.token),
            count: self.repeats,
            first_ms: self.first_ms,
            last_ms: self.last_ms,
        };
        self.repeats = 0;
        Some(summary)
    }
}

/// Repeats to write as one line (built under the lock, written after it).
struct Summary {
    caller: Arc<Authenticated>,
    peer: Option<IpAddr>,
    key: KeyRef,
    token: SharedToken,
    count: u64,
    first_ms: u64,
    last_ms: u64,
}

impl Summary {
    fn write(&self) {
        let key = self.key.key();
        tracing::info!(
            target: "tokenbroker::audit",
            caller = self.caller.caller.name.as_str(),
            peer = %Peer(self.peer),
            org = %key.org,
            user_id = key.user.as_deref().unwrap_or(""),
            fingerprint = %self.token.fingerprint,
            generation = self.token.generation,
            count = self.count,
            first = %time(self.first_ms),
            last = %time(self.last_ms),
            "token handed out again"
        );
    }
}

/// Why counts are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// The summary interval passed: counts are written, and combinations unused for a
    /// whole interval are forgotten (their next hand-out is logged as a first one).
    Interval,
    /// Shutdown, or the table is full: everything is written and forgotten.
    All,
}

impl Audit {
    pub fn new(policy: AuditPolicy) -> Self {
        Self {
            policy,
            hasher: DefaultHashBuilder::default(),
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashTable<Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hash(&self, caller: &Arc<Authenticated>, peer: Option<IpAddr>, key: &KeyRef) -> u64 {
        self.hasher
            .hash_one((Arc::as_ptr(caller) as usize, peer, key.id()))
    }

    /// Records a token handed out: a line at once if it is the first of its generation to
    /// this caller from this address (or with `every_call`), else one more repeat.
    pub fn handed_out(&self, h: HandOut<'_>) {
        if self.policy.every_call {
            first_line(&h);
            return;
        }
        let now = now_ms();
        let hash = self.hash(h.caller, h.peer, h.key);
        let mut counts = self.lock();
        let replaced = match counts.find_mut(hash, |c| c.is(&h)) {
            Some(count) if Arc::ptr_eq(&count.token, h.token) => {
                if count.repeats == 0 {
                    count.first_ms = now;
                }
                count.repeats += 1;
                count.last_ms = now;
                return;
            }
            // A new generation for this caller and address: the old one's repeats first.
            Some(count) => {
                let summary = count.take_summary();
                count.token = Arc::clone(h.token);
                count.last_ms = now;
                summary
            }
            None => {
                let full = if counts.len() >= MAX_TRACKED {
                    let summaries = take_all(&mut counts);
                    counts.clear();
                    Some(summaries)
                } else {
                    None
                };
                counts.insert_unique(
                    hash,
                    Count {
                        caller: Arc::clone(h.caller),
                        peer: h.peer,
                        key: h.key.clone(),
                        token: Arc::clone(h.token),
                        repeats: 0,
                        first_ms: now,
                        last_ms: now,
                    },
                    |c| self.hash(&c.caller, c.peer, &c.key),
                );
                drop(counts);
                if let Some(summaries) = full {
                    tracing::warn!(
                        target: "tokenbroker::audit",
                        tracked = MAX_TRACKED,
                        "audit: too many callers, addresses and keys to count at once; wrote every count now"
                    );
                    summaries.iter().for_each(Summary::write);
                }
                first_line(&h);
                return;
            }
        };
        drop(counts);
        if let Some(summary) = replaced {
            summary.write();
        }
        first_line(&h);
    }

    /// Writes the repeats counted since their last line (see [`Flush`]).
    pub fn flush(&self, how: Flush) {
        let summaries = {
            let mut counts = self.lock();
            match how {
                Flush::All => {
                    let summaries = take_all(&mut counts);
                    counts.clear();
                    summaries
                }
                Flush::Interval => {
                    let idle_before =
                        now_ms().saturating_sub(duration_ms(self.policy.summary_interval));
                    let mut summaries = Vec::new();
                    counts.retain(|count| {
                        summaries.extend(count.take_summary());
                        count.last_ms >= idle_before
                    });
                    summaries
                }
            }
        };
        summaries.iter().for_each(Summary::write);
    }

    /// Writes the counts every summary interval until `shutdown` (the server writes the
    /// rest with [`Flush::All`] once its calls have drained).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if self.policy.every_call {
            return;
        }
        let mut tick = tokio::time::interval(self.policy.summary_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.flush(Flush::Interval),
            }
        }
    }
}

fn take_all(counts: &mut HashTable<Count>) -> Vec<Summary> {
    counts.iter_mut().filter_map(Count::take_summary).collect()
}

/// The line of a first hand-out (and of every hand-out with `every_call`).
fn first_line(h: &HandOut<'_>) {
    let key = h.key.key();
    tracing::info!(
        target: "tokenbroker::audit",
        caller = h.caller.caller.name.as_str(),
        peer = %Peer(h.peer),
        rpc = h.rpc,
        org = %key.org,
        user_id = key.user.as_deref().unwrap_or(""),
        fingerprint = %h.token.fingerprint,
        generation = h.token.generation,
        "token handed out"
    );
}

/// The audit line of a token a WatchTokens stream sends first.
pub fn stream_initial(caller: &str, key: &TokenKey, token: &Token) {
    tracing::info!(
        target: "tokenbroker::audit",
        caller,
        rpc = "WatchTokens",
        org = %key.org,
        user_id = key.user.as_deref().unwrap_or(""),
        fingerprint = %token.fingerprint,
        generation = token.generation,
        "token handed out"
    );
}

/// The audit line of a rotation that WatchTokens streams carry to a caller: one for all
/// `streams` of the caller watching the key.
pub fn stream_rotation(caller: &str, key: &TokenKey, token: &Token, streams: usize) {
    tracing::info!(
        target: "tokenbroker::audit",
        caller,
        rpc = "WatchTokens",
        org = %key.org,
        user_id = key.user.as_deref().unwrap_or(""),
        fingerprint = %token.fingerprint,
        generation = token.generation,
        streams,
        "token handed out"
    );
}

/// A peer address as the audit writes it.
struct Peer(Option<IpAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => write!(f, "{ip}"),
            None => f.write_str("unix"),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A time in milliseconds since the Unix epoch, as RFC 3339.
fn time(ms: u64) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
}
