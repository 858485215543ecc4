//! The upstream budget at its defaults (10/s, burst 10), against a sandbox that throttles
//! like the platform (15/s, burst 20: a 429 beyond): a burst of cold users asked at once,
//! and a restart holding many stored user tokens while callers go on using some of them,
//! through every stored token's expiry. These brokers run at the default budget, unlike
//! the rest of the benchmark.

use crate::*;

/// The platform's throttling as seen in the wild.
const THROTTLE: &str = r#"{"kind": "throttle", "per_second": 15, "burst": 20}"#;

pub(crate) async fn run(
    size: &Size,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let burst = cold_burst(size, table).await;
    let restart = if size.quick {
        // Minutes of wall clock by its nature (a token lifetime); the full run has it.
        Value::Null
    } else {
        restart(size, table).await
    };
    figures.insert(
        "budget".into(),
        json!({"cold_burst": burst, "restart": restart}),
    );
}

/// 1,000 cold users at once (100 in a smoke run), each caller's deadline 10 minutes.
async fn cold_burst(size: &Size, table: &mut Table) -> Value {
    let users = size.cold_users.max(40);
    let platform = sandbox(users, "1h");
    throttle(&platform).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = free_port();
    let b = broker_with_budget(
        dir.path(),
        &platform,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    )
    .await_ready()
    .await;
    let chans = channels(&b.addr, 4).await;
    let ids: Vec<String> = (1..=users).map(|n| format!("EMP-{n:05}")).collect();
    let started = Instant::now();
    let calls = ids.iter().enumerate().map(|(i, id)| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        async move {
            let mut request = tonic::Request::new(GetUserTokenRequest {
                user_id: id.clone(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(600));
            let answer = c.get_user_token(request).await;
            (answer.is_ok(), started.elapsed().as_secs_f64())
        }
    });
    let answers = join_all(calls).await;
    let answered = answers.iter().filter(|a| a.0).count();
    let last_s = answers.iter().map(|a| a.1).fold(0.0, f64::max);
    let stats = stats(&platform).await;
    let throttled = count(&stats, "throttled");
    let requests = count(&stats, "client_credentials")
        + count(&stats, "authorization_grant")
        + count(&stats, "authorization_code");
    let org_wait = metric(metrics, "upstream_budget_wait_seconds", "org_cold").await;
    let caller_wait = metric(metrics, "upstream_budget_wait_seconds", "caller").await;
    table.row(
        &format!(
            "budget: {users} cold users at once, default budget, sandbox throttling 15/s burst 20"
        ),
        format!(
            "{answered} answered in {last_s:.0}s, {throttled} 429s, {requests} requests; org token waited {org_wait:.2}s (callers {caller_wait:.0}s in all)"
        ),
        "all answered, 0 429s",
        answered == users && throttled == 0,
    );
    json!({
        "users": users,
        "answered": answered,
        "last_answer_s": last_s,
        "throttled": throttled,
        "upstream_requests": requests,
        "org_token_wait_s": org_wait,
        "caller_wait_s": caller_wait,
    })
}

/// A broker holding 100,000 stored user tokens of 5 minutes is restarted at the default
/// budget; callers then use 300 of them every second for longer than a token's life, and
/// at the end 100 of the others come back.
async fn restart(size: &Size, table: &mut Table) -> Value {
    const LIFETIME_S: u64 = 300;
    const USED: usize = 300;
    const LATE: usize = 100;
    let held = size.users_held;
    let platform = sandbox(held, &format!("{LIFETIME_S}s"));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = "[store]\npath = \"tokens.redb\"\nencryption_key_env = \"BENCH_STORE_KEY\"\n";
    // Filled with the benchmark's raised budget: the state a long-running broker built.
    let filler = broker_in(dir.path(), &platform, store).await_ready().await;
    let ids: &'static [String] = Box::leak((1..=held).map(|n| format!("EMP-{n:05}")).collect());
    let filling = Instant::now();
    fill(&channels(&filler.addr, 4).await, ids).await;
    let fill_s = filling.elapsed().as_secs_f64();
    drop(filler);

    throttle(&platform).await;
    let metrics = free_port();
    let before = stats(&platform).await;
    let b = broker_with_budget(
        dir.path(),
        &platform,
        &format!("{store}[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    )
    .await_ready()
    .await;
    let chans = channels(&b.addr, 4).await;
    let used = &ids[..USED];
    let (mut calls, mut errors, mut expired) = (0u64, 0u64, 0u64);
    let (mut refreshes_last, mut busiest) = (count(&before, "refresh_token"), 0u64);
    let started = Instant::now();
    // Every used key once a second, until every stored token has expired and then some.
    while started.elapsed() < Duration::from_secs(LIFETIME_S + 30) {
        let round = Instant::now();
        let answers = join_all(used.iter().enumerate().map(|(i, id)| {
            let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
            async move {
                c.get_user_token(GetUserTokenRequest {
                    user_id: id.clone(),
                    ..Default::default()
                })
                .await
            }
        }))
        .await;
        for answer in answers {
            calls += 1;
            match answer {
                Ok(a) => {
                    let expires = a
                        .into_inner()
                        .token
                        .and_then(|t| t.expires_at)
                        .map_or(0, |e| e.seconds * 1000 + i64::from(e.nanos) / 1_000_000);
                    expired += u64::from(expires <= now_ms());
                }
                Err(_) => errors += 1,
            }
        }
        let refreshes = count(&stats(&platform).await, "refresh_token");
        busiest = busiest.max(refreshes - refreshes_last);
        refreshes_last = refreshes;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(round.elapsed())).await;
    }
    let misses = metric(metrics, "cache_misses", "").await;
    let during = stats(&platform).await;
    let delta = |name: &str| count(&during, name) - count(&before, name);
    let (refreshed, granted, throttled) = (
        delta("refresh_token"),
        delta("authorization_grant"),
        delta("throttled"),
    );
    // Users of the other stored tokens come back after their tokens expired: the refresh
    // token each left in the store serves them.
    let late = &ids[held - LATE..];
    let mut c = TokenServiceClient::new(chans[0].clone());
    let mut late_errors = 0;
    for id in late {
        let answer = c
            .get_user_token(GetUserTokenRequest {
                user_id: id.clone(),
                ..Default::default()
            })
            .await;
        late_errors += u64::from(answer.is_err());
    }
    let after = stats(&platform).await;
    let late_refreshes = count(&after, "refresh_token") - count(&during, "refresh_token");
    let late_grants = count(&after, "authorization_grant") - count(&during, "authorization_grant");
    let over_budget = metric(metrics, "renewals_over_budget", "").await;
    table.row(
        &format!(
            "budget: restart holding {held} stored user tokens ({LIFETIME_S}s tokens), {USED} in use, default budget, throttling sandbox"
        ),
        format!(
            "{expired} expired tokens and {errors} errors in {calls} calls; {refreshed} refreshes (busiest second {busiest}), {granted} grants, {throttled} 429s, {misses:.0} cache misses, {over_budget:.0} over budget"
        ),
        "0 expired, 0 errors, 0 429s",
        expired == 0 && errors == 0 && throttled == 0,
    );
    table.row(
        &format!("budget: then {LATE} of the unused users come back, their tokens expired"),
        format!("{late_refreshes} refreshes, {late_grants} grants, {late_errors} errors"),
        "1 refresh each, 0 grants",
        late_refreshes == LATE as u64 && late_grants == 0 && late_errors == 0,
    );
    json!({
        "held": held,
        "fill_s": fill_s,
        "lifetime_s": LIFETIME_S,
        "used": USED,
        "calls": calls,
        "errors": errors,
        "expired_tokens_served": expired,
        "refreshes": refreshed,
        "busiest_second_refreshes": busiest,
        "grants": granted,
        "throttled": throttled,
        "cache_misses": misses,
        "renewals_over_budget": over_budget,
        "late_users": LATE,
        "late_refreshes": late_refreshes,
        "late_grants": late_grants,
        "late_errors": late_errors,
    })
}

/// Makes the sandbox throttle like the platform.
async fn throttle(sandbox: &Process) {
    reqwest::Client::new()
        .post(format!("http://{}/sandbox/faults", sandbox.addr))
        .header("content-type", "application/json")
        .body(THROTTLE)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the throttle fault");
}

/// A loopback port free now (for the broker's metrics listener).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The broker's metric `tokenbroker_{name}…` on the sample whose labels hold `label`.
async fn metric(port: u16, name: &str, label: &str) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let prefix = format!("tokenbroker_{name}");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
