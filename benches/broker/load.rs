//! The load: tonic clients over a few connections, phases of one call for a fixed time,
//! and the interleaved comparison with Health/Check that every speed figure is.

use super::*;

pub(crate) async fn channels(addr: &str, n: usize) -> Vec<Channel> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            Endpoint::from_shared(format!("http://{addr}"))
                .expect("url")
                .connect()
                .await
                .expect("connect"),
        );
    }
    out
}

/// Latencies (µs) and throughput of one phase.
#[derive(Default)]
pub(crate) struct Phase {
    pub(crate) latencies: Vec<u64>,
    pub(crate) calls: u64,
    pub(crate) elapsed: Duration,
}

#[derive(Clone, Copy)]
pub(crate) enum Call {
    Health,
    OrgToken,
    /// GetUserToken for these ids, made beforehand so the client spends no time on them.
    UserToken(&'static [String]),
}

/// `concurrency` callers over `channels` doing `call` for `length`.
pub(crate) async fn phase(
    channels: &[Channel],
    concurrency: usize,
    length: Duration,
    call: Call,
) -> Phase {
    // For a system-wide profile cut into phases (`perf record -a -k CLOCK_REALTIME`).
    if std::env::var_os("BENCH_TRACE_PHASES").is_some() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "PHASE {} {:.6}",
            match call {
                Call::Health => "health",
                Call::OrgToken => "org",
                Call::UserToken(_) => "user",
            },
            t.as_secs_f64()
        );
    }
    let started = Instant::now();
    let end = started + length;
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = (0..concurrency).map(|i| {
        let channel = channels[i % channels.len()].clone();
        let errors = Arc::clone(&errors);
        tokio::spawn(async move {
            let mut health = HealthClient::new(channel.clone());
            let mut tokens = TokenServiceClient::new(channel);
            let mut latencies = Vec::with_capacity(4096);
            let mut n = i;
            while Instant::now() < end {
                let t = Instant::now();
                let ok = match call {
                    Call::Health => health
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await
                        .is_ok(),
                    Call::OrgToken => tokens
                        .get_org_token(GetOrgTokenRequest::default())
                        .await
                        .is_ok(),
                    Call::UserToken(ids) => {
                        n = (n * 7919 + 13) % ids.len();
                        tokens
                            .get_user_token(GetUserTokenRequest {
                                user_id: ids[n].clone(),
                                ..Default::default()
                            })
                            .await
                            .is_ok()
                    }
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(t.elapsed().as_micros() as u64);
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for latencies in join_all(tasks).await {
        all.extend(latencies.expect("caller task"));
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "calls failed during a speed phase"
    );
    Phase {
        calls: all.len() as u64,
        latencies: all,
        elapsed: started.elapsed(),
    }
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// Health/Check and `call` in alternating phases; the figures of each, and their ratios
/// pooled over all rounds (the figure judged), with the spread of each round's own ratios
/// (a Health/Check phase and the measured phase next to it, in turn first and second).
pub(crate) async fn versus_health(
    channels: &[Channel],
    concurrency: usize,
    size: &Size,
    call: Call,
) -> Value {
    let (mut health, mut measured) = (Phase::default(), Phase::default());
    let mut rounds = Vec::with_capacity(size.rounds);
    // One warm-up phase each, not counted.
    phase(channels, concurrency, size.phase / 2, Call::Health).await;
    phase(channels, concurrency, size.phase / 2, call).await;
    for round in 0..size.rounds {
        // Every other round runs the measured phase first (A B, B A, ...), so that neither
        // RPC always follows the other: drift over a pair and whatever one phase leaves
        // behind for the next (the log writer's backlog, say) fall on both alike.
        let (mut h, mut m) = if round % 2 == 0 {
            let h = phase(channels, concurrency, size.phase, Call::Health).await;
            (h, phase(channels, concurrency, size.phase, call).await)
        } else {
            let m = phase(channels, concurrency, size.phase, call).await;
            (
                phase(channels, concurrency, size.phase, Call::Health).await,
                m,
            )
        };
        let (hs, ms) = (summary(&mut h), summary(&mut m));
        rounds.push(json!({
            "throughput_ratio": ratio(&ms, &hs, "calls_per_second"),
            "p99_ratio": ratio(&ms, &hs, "p99_us"),
        }));
        for (into, p) in [(&mut health, h), (&mut measured, m)] {
            into.calls += p.calls;
            into.elapsed += p.elapsed;
            into.latencies.extend(p.latencies);
        }
    }
    let (h, m) = (summary(&mut health), summary(&mut measured));
    let spread = |name: &str| {
        let mut values: Vec<f64> = rounds.iter().filter_map(|r| r[name].as_f64()).collect();
        values.sort_by(f64::total_cmp);
        let median = match values.len() {
            0 => 0.0,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        json!({
            "min": values.first().copied().unwrap_or(0.0),
            "median": median,
            "max": values.last().copied().unwrap_or(0.0),
        })
    };
    json!({
        "concurrency": concurrency,
        "health": h,
        "measured": m,
        "throughput_ratio": ratio(&m, &h, "calls_per_second"),
        "p99_ratio": ratio(&m, &h, "p99_us"),
        "rounds_throughput_ratio": spread("throughput_ratio"),
        "rounds_p99_ratio": spread("p99_ratio"),
        "rounds": rounds,
    })
}

/// Calls per second of a phase.
pub(crate) fn per_s(p: &Phase) -> f64 {
    p.calls as f64 / p.elapsed.as_secs_f64()
}

/// `call` with 64 callers on `a` and on `b` in interleaved phases of the same run (after a
/// warm-up of each), their order alternating each round: both totals.
pub(crate) async fn interleaved(
    size: &Size,
    a: &[Channel],
    b: &[Channel],
    call: Call,
) -> (Phase, Phase) {
    let (mut on_a, mut on_b) = (Phase::default(), Phase::default());
    phase(a, 64, size.phase / 2, call).await;
    phase(b, 64, size.phase / 2, call).await;
    for round in 0..size.rounds {
        for first in [round % 2 == 0, round % 2 != 0] {
            let (chans, into) = if first {
                (a, &mut on_a)
            } else {
                (b, &mut on_b)
            };
            let p = phase(chans, 64, size.phase, call).await;
            into.calls += p.calls;
            into.elapsed += p.elapsed;
        }
    }
    (on_a, on_b)
}

/// One forced rotation (a Refresh over `rotate_on`) and the moments, in µs after it was
/// asked for, at which each of `streams` got its message (within 10 s). Every stream waits
/// in one set of futures, polled once before the rotation so each is registered: the
/// client spends as little as it can of the shared cores, and nothing is set up after the
/// clock starts.
pub(crate) async fn rotation_delivered(
    streams: &mut [tonic::Streaming<tokenbroker::proto::WatchTokensResponse>],
    rotate_on: &Channel,
) -> Vec<u64> {
    let n = streams.len();
    let mut waits: futures::stream::FuturesUnordered<_> = streams
        .iter_mut()
        .map(|s| async move { matches!(s.message().await, Ok(Some(_))).then(Instant::now) })
        .collect();
    assert!(
        futures::poll!(futures::StreamExt::next(&mut waits)).is_pending(),
        "a message before the rotation"
    );
    // The rotation names the token held as stale: a Refresh naming none would be answered
    // from the cache within renewal.min_rotation_interval of the last rotation.
    let stale = TokenServiceClient::new(rotate_on.clone())
        .get_org_token(tokenbroker::proto::GetOrgTokenRequest::default())
        .await
        .expect("the org token")
        .into_inner()
        .token
        .expect("a token")
        .access_token;
    let started = Instant::now();
    let collect = async {
        let mut arrived_in = Vec::with_capacity(n);
        while let Ok(Some(arrived)) = tokio::time::timeout_at(
            (started + Duration::from_secs(10)).into(),
            futures::StreamExt::next(&mut waits),
        )
        .await
        {
            if let Some(at) = arrived {
                arrived_in.push(at.duration_since(started).as_micros() as u64);
            }
        }
        arrived_in
    };
    let rotate = async {
        TokenServiceClient::new(rotate_on.clone())
            .refresh(RefreshRequest {
                stale_access_token: stale,
                ..Default::default()
            })
            .await
            .expect("forced rotation")
    };
    tokio::join!(collect, rotate).0
}

/// GetUserToken for every id, 256 callers at a time.
pub(crate) async fn fill(chans: &[Channel], ids: &'static [String]) {
    let next = Arc::new(AtomicU64::new(0));
    let callers = (0..256).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        let next = Arc::clone(&next);
        tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(id) = ids.get(n) else { break };
                c.get_user_token(GetUserTokenRequest {
                    user_id: id.clone(),
                    ..Default::default()
                })
                .await
                .expect("fill");
            }
        })
    });
    join_all(callers).await;
}
