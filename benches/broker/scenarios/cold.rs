//! Cold keys: many callers of a cold org key, cold users, Refresh with one stale token, and the memory of callers waiting on one cold key.

use crate::*;

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    // Not the default: by default the broker fetches the org token at start, and the
    // key must be cold when the callers arrive.
    let cold = || broker(platform, "[cache]\nprefetch_org_tokens = false");
    let (b, _d) = cold().await_ready().await;
    let chans = channels(&b.addr, 10).await;
    let before = stats(platform).await;
    let n = size.cold_callers;
    let calls = (0..n).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        async move { c.get_org_token(GetOrgTokenRequest::default()).await.is_ok() }
    });
    let ok = join_all(calls).await.into_iter().filter(|ok| *ok).count();
    let after = stats(platform).await;
    let upstream = count(&after, "client_credentials") - count(&before, "client_credentials")
        + count(&after, "refresh_token")
        - count(&before, "refresh_token");
    table.row(
        &format!("{n} concurrent GetOrgToken on a cold key (prefetch_org_tokens = false)"),
        format!("{upstream} upstream, {ok}/{n} ok"),
        "exactly 1",
        upstream == 1 && ok == n,
    );
    figures.insert(
        "cold_org".into(),
        json!({"callers": n, "ok": ok, "upstream_requests": upstream}),
    );

    // 4. Cold users: each asked by 10 callers at once.
    let before = stats(platform).await;
    let cold_users = size.cold_users;
    let calls = (0..cold_users * 10).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        let user = format!("EMP-{:05}", i % cold_users + 1);
        async move {
            c.get_user_token(GetUserTokenRequest {
                user_id: user,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    });
    let ok = join_all(calls).await.into_iter().filter(|ok| *ok).count();
    let after = stats(platform).await;
    let grants = count(&after, "authorization_grant") - count(&before, "authorization_grant");
    let exchanges = count(&after, "authorization_code") - count(&before, "authorization_code");
    table.row(
        &format!("{cold_users} users x 10 concurrent cold GetUserToken"),
        format!("{grants} grants + {exchanges} exchanges"),
        &format!("exactly {cold_users} + {cold_users}"),
        grants == cold_users as u64 && exchanges == cold_users as u64 && ok == cold_users * 10,
    );
    figures.insert("cold_users".into(), json!({"users": cold_users, "callers": cold_users * 10, "ok": ok, "grants": grants, "exchanges": exchanges}));

    // 5. Many Refresh calls reporting one stale token: one rotation.
    let stale = TokenServiceClient::new(chans[0].clone())
        .get_org_token(GetOrgTokenRequest::default())
        .await
        .expect("org")
        .into_inner()
        .token
        .expect("token")
        .access_token;
    let before = stats(platform).await;
    let calls = (0..size.refreshers).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        let stale = stale.clone();
        async move {
            c.refresh(RefreshRequest {
                stale_access_token: stale,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    });
    let ok = join_all(calls).await.into_iter().filter(|ok| *ok).count();
    let after = stats(platform).await;
    let rotations = ["client_credentials", "refresh_token"]
        .iter()
        .map(|k| count(&after, k) - count(&before, k))
        .sum::<u64>();
    table.row(
        &format!(
            "{} concurrent Refresh carrying one stale token",
            size.refreshers
        ),
        format!("{rotations} rotation(s)"),
        "exactly 1",
        rotations == 1 && ok == size.refreshers,
    );
    figures.insert(
        "refresh_storm".into(),
        json!({"callers": size.refreshers, "ok": ok, "rotations": rotations}),
    );
    drop(chans);
    drop(b);

    // 6. What a waiting caller costs: many callers of one cold key while the platform
    // takes 30 s to answer, the broker's RSS growth divided by their number, read once
    // its metrics count them all waiting. Not the default: the org token is not fetched
    // at start (the key must be cold), the platform may take 60 s (so that 100,000
    // calls can be sent before it answers), and metrics are on (to count them).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let waiting_toml = format!(
        "upstream.request_timeout = \"60s\"\n[cache]\nprefetch_org_tokens = false\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\""
    );
    let (b, _d) = broker(platform, &waiting_toml).await_ready().await;
    let n = size.waiters;
    // Enough connections for every call to be a stream on one (1,256 each by default).
    let chans = channels(&b.addr, n.div_ceil(1_000)).await;
    let quiet_rss = b.rss_mib();
    let answer_in = Duration::from_secs(if size.quick { 5 } else { 30 });
    let slow = json!({"kind": "latency", "millis": answer_in.as_millis() as u64, "target": "client_credentials", "times": 1});
    let http = reqwest::Client::new();
    http.post(format!("http://{}/sandbox/faults", platform.addr))
        .json(&slow)
        .send()
        .await
        .expect("fault injected");
    let sent = Instant::now();
    let waiting: Vec<_> = (0..n)
        .map(|i| {
            let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
            tokio::spawn(
                async move { c.get_org_token(GetOrgTokenRequest::default()).await.is_ok() },
            )
        })
        .collect();
    let waiting_now = || async {
        let text = http
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("tokenbroker_waiting_callers "))
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let mut counted = 0;
    while counted < n && sent.elapsed() + Duration::from_secs(2) < answer_in {
        tokio::time::sleep(Duration::from_millis(200)).await;
        counted = waiting_now().await.unwrap_or(0);
    }
    let waiting_rss = b.rss_mib();
    let ok = join_all(waiting)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    let per_caller = (waiting_rss - quiet_rss) * 1024.0 * 1024.0 / counted.max(1) as f64;
    table.row(
        &format!("{n} callers waiting on one cold key: broker memory per waiting caller (non-default, see README)"),
        format!(
            "{per_caller:.0} bytes ({counted} waiting: {quiet_rss:.1} -> {waiting_rss:.1} MiB), {ok}/{n} ok"
        ),
        "all wait, all answered",
        ok == n && counted == n,
    );
    figures.insert(
        "waiting_callers".into(),
        json!({"callers": n, "counted_waiting": counted, "ok": ok, "quiet_rss_mib": quiet_rss, "waiting_rss_mib": waiting_rss, "bytes_per_caller": per_caller}),
    );
    drop(chans);
    drop(b);
}
