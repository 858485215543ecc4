//! The audit of tokens handed out: who got which token, from where, and how often, at a
//! cost that does not grow with the call rate. The first hand-out of a token's generation
//! to a caller from an address is logged at once (a stolen API key used from a new address
//! shows at once); repeats of the same are counted and written as one summary line with
//! the count and the first and last time: when the generation is replaced, every
//! `audit.summary_interval`, and at shutdown. The counts of all lines add up to the tokens
//! handed out. `audit.every_call` logs one line per hand-out instead. (A little over 400
//! lines: the counting table and the summaries that drain it are one structure.)

use crate::sync::LockUnpoisoned;
use std::{
    hash::BuildHasher,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticated,
    broker::{KeyRef, SharedToken, Token, TokenKey},
    secret::Fingerprint,
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

/// The most (caller, address, key) combinations counted at once (32 bytes each, about 4
/// MiB for 100,000 keys); beyond it every count is written out and counting starts afresh.
const MAX_TRACKED: usize = 250_000;
/// The most (caller, address) pairs told apart; beyond it, likewise.
const MAX_AUDIENCES: usize = 65_536;

/// A token handed out to a caller.
#[derive(Debug, Clone, Copy)]
pub struct HandOut<'a> {
    pub caller: &'a Arc<Authenticated>,
    /// The caller's address; `None` over a Unix socket.
    pub peer: Option<IpAddr>,
    pub rpc: &'static str,
    pub key: &'a KeyRef,
    pub token: &'a SharedToken,
    /// The request the proxy sent with the token, if that is how it was used.
    pub proxied: Option<Proxied<'a>>,
}

/// A request the proxy sent to the platform with a token.
#[derive(Debug, Clone, Copy)]
pub struct Proxied<'a> {
    pub method: &'a str,
    /// The path, without its query (which may carry personal data).
    pub path: &'a str,
    /// The platform's status, or the proxy's own when the platform gave none.
    pub status: u16,
}

/// The audit: the hand-outs counted since their last line.
#[derive(Debug)]
pub struct Audit {
    policy: AuditPolicy,
    hasher: DefaultHashBuilder,
    /// When counting began: the counts' times are seconds after it.
    epoch: SystemTime,
    counts: Mutex<Counts>,
}

/// What the lock guards.
#[derive(Debug, Default)]
struct Counts {
    /// Each (caller, address) pair seen, named in a count by its place here.
    audiences: Vec<Audience>,
    /// The place of each pair, by the caller's address in memory (its `Arc` is held above).
    places: HashMap<(usize, Option<IpAddr>), u32>,
    table: HashTable<Count>,
}

/// A caller from an address.
#[derive(Debug)]
struct Audience {
    caller: Arc<Authenticated>,
    peer: Option<IpAddr>,
}

/// The hand-outs of one generation of a key to one audience: 32 bytes, as a broker that
/// holds 100,000 user tokens counts 100,000 of them (BENCHMARKS.md).
#[derive(Debug)]
struct Count {
    key: KeyRef,
    audience: u32,
    generation: u32,
    fingerprint: Fingerprint,
    /// Hand-outs since the last line.
    repeats: u32,
    /// Seconds after the epoch of the first and last of those.
    first_s: u32,
    last_s: u32,
}

impl Counts {
    /// The place of the audience of `h`, added if new.
    fn audience(&mut self, h: &HandOut<'_>) -> u32 {
        let audiences = &mut self.audiences;
        *self
            .places
            .entry((Arc::as_ptr(h.caller) as usize, h.peer))
            .or_insert_with(|| {
                audiences.push(Audience {
                    caller: Arc::clone(h.caller),
                    peer: h.peer,
                });
                // At most MAX_AUDIENCES.
                u32::try_from(audiences.len() - 1).unwrap_or(u32::MAX)
            })
    }

    /// Every summary; the counts are forgotten.
    fn take_all(&mut self) -> Vec<Summary> {
        let Self {
            audiences,
            places,
            table,
        } = self;
        let summaries = table
            .iter_mut()
            .filter_map(|count| take_summary(audiences, count))
            .collect();
        table.clear();
        audiences.clear();
        places.clear();
        summaries
    }
}

/// Whether `count` counts the hand-outs of `h`'s key to `h`'s audience.
fn counts_for(audiences: &[Audience], count: &Count, h: &HandOut<'_>) -> bool {
    count.key.same(h.key) && {
        let audience = &audiences[count.audience as usize];
        Arc::ptr_eq(&audience.caller, h.caller) && audience.peer == h.peer
    }
}

/// The summary line of `count`'s repeats, if any; counting starts again.
fn take_summary(audiences: &[Audience], count: &mut Count) -> Option<Summary> {
    if count.repeats == 0 {
        return None;
    }
    let audience = &audiences[count.audience as usize];
    let summary = Summary {
        caller: Arc::clone(&audience.caller),
        peer: audience.peer,
        key: count.key.clone(),
        generation: count.generation,
        fingerprint: count.fingerprint,
        count: count.repeats,
        first_s: count.first_s,
        last_s: count.last_s,
    };
    count.repeats = 0;
    Some(summary)
}

/// Repeats to write as one line (built under the lock, written after it).
struct Summary {
    caller: Arc<Authenticated>,
    peer: Option<IpAddr>,
    key: KeyRef,
    generation: u32,
    fingerprint: Fingerprint,
    count: u32,
    first_s: u32,
    last_s: u32,
}

impl Summary {
    fn write(&self, epoch: SystemTime) {
        let key = self.key.key();
        let at = |s: u32| humantime::format_rfc3339_seconds(epoch + Duration::from_secs(s.into()));
        tracing::info!(
            target: "tokenbroker::audit",
            caller = self.caller.name(),
            peer = %Peer(self.peer),
            org = %key.org,
            user_id = key.user.as_deref().unwrap_or(""),
            fingerprint = %self.fingerprint,
            generation = self.generation,
            count = self.count,
            first = %at(self.first_s),
            last = %at(self.last_s),
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
    /// Shutdown: everything is written and forgotten.
    All,
}

impl Audit {
    pub fn new(policy: AuditPolicy) -> Self {
        Self {
            policy,
            hasher: DefaultHashBuilder::default(),
            epoch: SystemTime::now(),
            counts: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock_unpoisoned()
    }

    fn hash(&self, caller: &Arc<Authenticated>, peer: Option<IpAddr>, key: &KeyRef) -> u64 {
        self.hasher
            .hash_one((Arc::as_ptr(caller) as usize, peer, key.id()))
    }

    /// Seconds since the epoch, now.
    fn now_s(&self) -> u32 {
        let elapsed = SystemTime::now()
            .duration_since(self.epoch)
            .unwrap_or_default();
        u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX)
    }

    /// Records a token handed out: a line at once if it is the first of its generation to
    /// this caller from this address (or with `every_call`), else one more repeat.
    pub fn handed_out(&self, h: HandOut<'_>) {
        if self.policy.every_call {
            first_line(&h);
            return;
        }
        let now = self.now_s();
        let generation = u32::try_from(h.token.generation).unwrap_or(u32::MAX);
        let hash = self.hash(h.caller, h.peer, h.key);
        let mut counts = self.lock();
        let Counts {
            audiences, table, ..
        } = &mut *counts;
        let summary = match table.find_mut(hash, |c| counts_for(audiences, c, &h)) {
            Some(count)
                if count.generation == generation && count.fingerprint == h.token.fingerprint =>
            {
                if count.repeats == 0 {
                    count.first_s = now;
                }
                count.repeats = count.repeats.saturating_add(1);
                count.last_s = now;
                return;
            }
            // A new generation for this caller and address: the old one's repeats first.
            Some(count) => {
                let summary = take_summary(audiences, count);
                count.generation = generation;
                count.fingerprint = h.token.fingerprint;
                count.last_s = now;
                summary.into_iter().collect()
            }
            None => self.insert(&mut counts, hash, generation, now, &h),
        };
        drop(counts);
        for summary in &summary {
            summary.write(self.epoch);
        }
        first_line(&h);
    }

    /// Starts counting the hand-outs of `h`'s generation to its audience; when the table
    /// is full, it is emptied first and its summaries returned.
    fn insert(
        &self,
        counts: &mut Counts,
        hash: u64,
        generation: u32,
        now: u32,
        h: &HandOut<'_>,
    ) -> Vec<Summary> {
        let mut summaries = Vec::new();
        if counts.table.len() >= MAX_TRACKED || counts.audiences.len() >= MAX_AUDIENCES {
            summaries = counts.take_all();
            tracing::warn!(
                target: "tokenbroker::audit",
                tracked = MAX_TRACKED,
                audiences = MAX_AUDIENCES,
                "audit: too many callers, addresses and keys to count at once; wrote every count now"
            );
        }
        let audience = counts.audience(h);
        let Counts {
            audiences, table, ..
        } = counts;
        table.insert_unique(
            hash,
            Count {
                key: h.key.clone(),
                audience,
                generation,
                fingerprint: h.token.fingerprint,
                repeats: 0,
                first_s: now,
                last_s: now,
            },
            |c| {
                let a = &audiences[c.audience as usize];
                self.hash(&a.caller, a.peer, &c.key)
            },
        );
        summaries
    }

    /// Writes the repeats counted since their last line (see [`Flush`]).
    pub fn flush(&self, how: Flush) {
        let summaries = {
            let mut counts = self.lock();
            match how {
                Flush::All => counts.take_all(),
                Flush::Interval => {
                    let interval =
                        u32::try_from(self.policy.summary_interval.as_secs()).unwrap_or(u32::MAX);
                    let idle_before = self.now_s().saturating_sub(interval);
                    let mut summaries = Vec::new();
                    let Counts {
                        audiences, table, ..
                    } = &mut *counts;
                    table.retain(|count| {
                        summaries.extend(take_summary(audiences, count));
                        count.last_s >= idle_before
                    });
                    summaries
                }
            }
        };
        for summary in &summaries {
            summary.write(self.epoch);
        }
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

/// The line of a first hand-out (and of every hand-out with `every_call`).
fn first_line(h: &HandOut<'_>) {
    let key = h.key.key();
    // A use by the proxy also names the request (fields left out of other lines).
    let request = h.proxied;
    tracing::info!(
        target: "tokenbroker::audit",
        caller = h.caller.name(),
        peer = %Peer(h.peer),
        rpc = h.rpc,
        org = %key.org,
        user_id = key.user.as_deref().unwrap_or(""),
        method = request.map(|r| r.method),
        path = request.map(|r| r.path),
        status = request.map(|r| r.status),
        fingerprint = %h.token.fingerprint,
        generation = h.token.generation,
        "{}",
        if request.is_some() { "token used by the proxy" } else { "token handed out" }
    );
}

/// The audit line of a token WatchTokens streams send to a caller: a stream's first token
/// (`streams` 1), or a rotation, one line for all `streams` of the caller watching the key.
pub fn streamed(caller: &str, key: &TokenKey, token: &Token, streams: usize) {
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
